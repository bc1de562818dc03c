"""The offline sentiment scorer: it learns from real headlines, the shipped artefact is versioned by its
content, and ``tapeline eval sentiment`` reports the SemEval metric or one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tapeline.adapters.llm.base import LlmRequest
from tapeline.adapters.llm.offline import OfflineProvider
from tapeline.models.e5 import E5Embedder, model_path
from tapeline.models.sentiment import (
    ARTEFACT,
    MODEL_NAME,
    SentimentModelError,
    fix_mojibake,
    load_sentiment_model,
    read_metadata,
)
from tapeline.models.sentiment_company import DEFAULT_MASK, CompanyMask
from tapeline.models.sentiment_lexicon import DEFAULT_LEXICON
from tapeline.models.sentiment_train import (
    Headline,
    cosine,
    cross_validate,
    fit_augmented,
    fit_head,
    head_to_onnx,
    read_headlines,
    title_groups,
)
from tests.conftest import SHARED_DATA
from tests.test_cli import invoke

SUBSET = 300  # e5 encodes ~30-50 headlines/s per core: a subset keeps the module at seconds


@pytest.fixture(scope="module")
def e5() -> E5Embedder:
    return E5Embedder()


@pytest.fixture(scope="module")
def rows() -> list[Headline]:
    if not SHARED_DATA.exists():  # module scope: the function-scoped shared_data fixture does this check
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return read_headlines(SHARED_DATA / "news" / "semeval2017-task5-headlines.json")[:SUBSET]


@pytest.fixture(scope="module")
def subset(e5: E5Embedder, rows: list[Headline]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The first SUBSET SemEval titles (cleaned as the scorer cleans them), their e5 vectors, their gold scores."""
    titles = [fix_mojibake(h.title) for h in rows]
    return titles, e5.embed(titles), np.array([h.sentiment for h in rows])


@pytest.fixture(scope="module")
def masked(e5: E5Embedder, rows: list[Headline], subset: tuple[list[str], np.ndarray, np.ndarray]) -> np.ndarray:
    """The subset's e5 vectors with each headline's company masked (rows masking leaves alone: reused)."""
    titles, emb, _ = subset
    texts = [DEFAULT_MASK.apply(t, h.company) for t, h in zip(titles, rows, strict=True)]
    out = emb.copy()
    changed = [i for i, (m, t) in enumerate(zip(texts, titles, strict=True)) if m != t]
    out[changed] = e5.embed([texts[i] for i in changed])
    return out


def test_e5_vectors_are_unit_length_batch_invariant_and_pinned_by_the_weights_hash(e5: E5Embedder) -> None:
    texts = ["Acme profit soars to record", "Acme shares plunge", "Acme AGM in London"]
    batch = e5.embed(texts)
    assert batch.shape == (3, 384) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.vstack([e5.embed([t]) for t in texts]), batch)
    assert float(batch[0] @ batch[1]) < float(batch[0] @ batch[0]) - 0.05  # different texts, different vectors
    assert e5.embed([]).shape == (0, 384)
    assert e5.version.endswith("@" + hashlib.sha256(model_path().read_bytes()).hexdigest()[:12])
    assert os.environ["OMP_WAIT_POLICY"]  # set (PASSIVE unless chosen before): spinning threads starve on busy cores


def test_trained_on_a_subset_it_scores_held_out_headlines(
    subset: tuple[list[str], np.ndarray, np.ndarray],
    masked: np.ndarray,
    rows: list[Headline],
    e5: E5Embedder,
    tmp_path: Path,
) -> None:
    """Train on ~70% of the titles (company-masked + unmasked copies), score the rest through the exported
    ONNX head, with and without their companies: far above chance either way."""
    titles, emb, gold = subset
    test = title_groups(titles) % 10 >= 7  # whole titles held out: no duplicate leaks into training
    lex = DEFAULT_LEXICON.features(titles)
    head = fit_augmented(masked[~test], emb[~test], lex[~test], gold[~test])
    assert len(head.support) > (~test).sum() + 100  # the unmasked copies of the masked rows were added
    artefact = tmp_path / "head.onnx"
    artefact.write_bytes(head_to_onnx(head, DEFAULT_LEXICON, e5.version, DEFAULT_MASK))

    model = load_sentiment_model(artefact, embedder=e5)
    idx = np.flatnonzero(test)
    held_out = [titles[i] for i in idx]
    pred = np.array(model.score(held_out, [rows[i].company for i in idx]))
    assert len(held_out) > 60 and pred.shape == (len(held_out),)
    assert np.all(np.abs(pred) <= 1.0)
    np.testing.assert_allclose(pred, head.predict(masked[test], lex[test]), atol=1e-4)  # ONNX == numpy, masked
    assert cosine(pred, gold[test]) > 0.6  # chance is ~0; the shipped head measures ~0.75 in CV
    assert np.mean(np.sign(pred) == np.sign(gold[test])) > 0.7
    unmasked = np.array(model.score(held_out))
    np.testing.assert_allclose(unmasked, head.predict(emb[test], lex[test]), atol=1e-4)
    assert cosine(unmasked, gold[test]) > 0.6 and not np.allclose(unmasked, pred, atol=1e-3)
    assert model.version == f"{MODEL_NAME}@{hashlib.sha256(artefact.read_bytes()).hexdigest()[:12]}"


def test_company_masking_finds_names_tickers_suffixes_and_possessives() -> None:
    m = CompanyMask(placeholder="Company")
    assert (
        m.apply("Tesco's boss quits; Tesco PLC shares fall", "Tesco PLC") == "Company's boss quits; Company shares fall"
    )
    assert (
        m.apply("RBS fined as Royal Mail rises", "Royal Bank of Scotland Group plc")
        == "Company fined as Royal Mail rises"
    )
    assert m.apply("London shares rise", "London Stock Exchange Group") == "London shares rise"  # generic first word
    assert m.apply("Apple, Inc. beats; $AAPL jumps", "Apple Inc.") == "Company beats; $AAPL jumps"
    assert m.apply("$AAPL jumps, AAPL up", "AAPL") == "Company jumps, Company up"
    assert m.apply("a deal for A", "A") == "a deal for Company"  # tickers match case-sensitively
    assert m.apply("Pineapple rises", "Apple") == "Pineapple rises"  # whole words only
    assert m.apply("Acme rises", None) == m.apply("Acme rises", "") == "Acme rises"
    assert CompanyMask.from_json(m.to_json()) == m


def test_the_scorer_masks_the_company_given_with_each_text(e5: E5Embedder) -> None:
    """Companies change the score only where they occur; a ticker-per-text batch equals one-by-one calls."""
    model = load_sentiment_model()
    text = "Acme shares jump after Bolt cuts its forecast"
    acme, bolt, none, absent = model.score([text] * 4, ["Acme", "Bolt", None, "Zed"])
    assert none == absent == model.score([text])[0]
    assert acme != none and bolt != none and acme > bolt  # good news for Acme, bad for Bolt
    assert [acme] == model.score([text], ["Acme"]) and [bolt] == model.score([text], ["Bolt"])
    with pytest.raises(ValueError, match="2 texts but 1 companies"):
        model.score([text, text], ["Acme"])


def test_the_head_centres_on_its_training_rows(subset: tuple[list[str], np.ndarray, np.ndarray]) -> None:
    """The mean subtracted before re-normalising is the training rows', so CV folds never see test vectors."""
    titles, emb, gold = subset
    lex = DEFAULT_LEXICON.features(titles)
    head = fit_head(emb[:100], lex[:100], gold[:100])
    np.testing.assert_allclose(head.center, emb[:100].mean(0), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(head.support[:, :384], axis=1), 1.0, atol=1e-5)


def test_cross_validation_keeps_duplicate_titles_in_one_fold(
    subset: tuple[list[str], np.ndarray, np.ndarray],
) -> None:
    assert title_groups(["Acme rises", " acme RISES", "Acme falls"]).tolist() == [0, 0, 1]
    titles, emb, gold = subset
    titles, emb, gold = titles[:200], emb[:200], gold[:200]
    cv = cross_validate(emb, DEFAULT_LEXICON.features(titles), gold, titles, repeats=2)
    assert len(cv.cosines) == 20 and cv.low <= cv.mean <= cv.high
    assert cv.mean > 0.4, cv.summary()  # even 180 training headlines are far above chance


def test_shipped_artefact_loads_and_its_version_is_its_content_hash() -> None:
    model = load_sentiment_model()
    digest = hashlib.sha256(ARTEFACT.read_bytes()).hexdigest()
    assert model.version == f"{MODEL_NAME}@{digest[:12]}"
    meta = read_metadata()
    assert meta["version"] == model.version and meta["artefact_sha256"] == digest
    assert meta["cross_validation"]["cosine_mean"] > 0.745  # the SemEval-2017 task 5 track 2 best
    assert meta["cross_validation_unmasked"]["cosine_mean"] > 0.7
    good, bad, flat = model.score(
        [
            "Acme profit soars to record, shares jump",
            "Acme shares plunge after fraud probe and profit warning",
            "Acme to hold annual general meeting in London",
        ]
    )
    assert -1.0 <= bad < flat < good <= 1.0
    assert model.score([]) == []
    assert load_sentiment_model() is model  # loaded once per process


def test_an_artefact_for_another_embedder_or_no_file_is_refused(tmp_path: Path, e5: E5Embedder) -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(8, 384)).astype(np.float32)
    lex = rng.normal(size=(8, 7)).astype(np.float32)
    artefact = tmp_path / "other.onnx"
    head = fit_head(emb, lex, rng.uniform(-1, 1, 8))
    artefact.write_bytes(head_to_onnx(head, DEFAULT_LEXICON, "other-model@1", DEFAULT_MASK))
    with pytest.raises(SentimentModelError, match="trained on embedder other-model@1"):
        load_sentiment_model(artefact, embedder=e5)
    with pytest.raises(SentimentModelError, match="not found"):
        load_sentiment_model(tmp_path / "missing.onnx")


def test_mojibake_is_repaired_and_unrepairable_text_kept() -> None:
    assert fix_mojibake("Tesco to pay Â£8m") == "Tesco to pay £8m"
    assert fix_mojibake("power demand â€“ National Grid") == "power demand – National Grid"
    assert fix_mojibake("plain headline") == "plain headline"
    broken = "drinks in â€œobesity driveâ€\ud000"
    assert fix_mojibake(broken) == broken


def write(tmp_path: Path, entries: object) -> Path:
    path = tmp_path / "headlines.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def test_eval_sentiment_prints_the_semeval_metric(tmp_path: Path) -> None:
    rows = [
        {"id": 1, "company": "Acme", "title": "Acme profit soars 40% on record sales", "sentiment": 0.8},
        {"id": 2, "company": "Acme", "title": "Acme shares slump after profit warning", "sentiment": -0.7},
        {"id": 3, "company": "Bolt", "title": "Bolt fined Â£20m over fraud probe", "sentiment": -0.6},
        {"id": 4, "company": "Bolt", "title": "Bolt upgraded to buy, shares rise", "sentiment": 0.5},
    ]
    code, lines = invoke("eval", "sentiment", str(write(tmp_path, rows)))
    assert code == 0, lines
    text = "\n".join(lines)
    assert MODEL_NAME in text and "cosine" in text and "sign agreement" in text
    values = next(line for line in lines if line.startswith("│")).strip("│ ").split("│")
    count, cos, mae, signs = (v.strip() for v in values[:4])
    assert count == "4" and 0.7 < float(cos) <= 1.0 and 0 <= float(mae) < 0.6 and signs == "100.0%"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("{not json", "not JSON"),
        ('{"title": "x"}', "JSON list"),
        ('[{"title": "ok", "sentiment": 0.1}, {"title": "no score"}]', "entry 1: missing sentiment"),
        ('[{"title": "ok", "sentiment": 1.5}]', "entry 0: sentiment must be a number in [-1, 1]"),
        ('[{"title": "", "sentiment": 0}]', "entry 0: title must be a non-empty string"),
        ("[]", "no headlines"),
    ],
)
def test_eval_sentiment_bad_file_is_one_line(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    code, lines = invoke("eval", "sentiment", str(path))
    assert code == 2, lines
    assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0], lines


def test_eval_sentiment_file_with_variant_options_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, [{"title": "Acme profit rises", "sentiment": 0.5}])
    code, lines = invoke("eval", "sentiment", str(path), "--by", "variant")
    assert code == 2 and len(lines) == 1 and "drop FILE" in lines[0], lines


async def test_the_offline_provider_scores_each_asked_ticker_with_it_masked() -> None:
    """Two tickers named in one headline get their own scores (the right way round, if by a small margin: the
    training headlines rarely contrast two firms); a ticker not in the text gets the plain score."""
    provider = OfflineProvider()
    request = LlmRequest(
        system="",
        user="",
        schema={},
        model="",
        title="AAPL upgraded to buy while MSFT cut to sell",
        tickers=["AAPL", "MSFT", "IBM"],
    )
    scores = {s["ticker"]: s["score"] for s in json.loads((await provider.complete(request)).text)["scores"]}
    model = load_sentiment_model()
    assert scores["IBM"] == round(model.score([request.title])[0], 4)
    assert scores["AAPL"] > scores["MSFT"] + 0.02
