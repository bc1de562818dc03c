"""The pinned MiniLM embedder: both backends agree, vectors are reproducible, meaning is found."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tapeline.models.embedder import (
    DEFAULT_BACKEND,
    DIM,
    MODEL_VERSION,
    WEIGHTS_SHA256,
    TextEmbedder,
    int8_path,
    onnx_path,
)
from tests.vector_support import embedder, headlines

QUERY = "stock falls after profit warning"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export per test session, shared by every test file (export takes a few seconds)."""
    return tmp_path_factory.getbasetemp() / "models"


@pytest.fixture(scope="session")
def onnx_embedder(model_cache: Path) -> TextEmbedder:
    return embedder("onnx", model_cache)


@pytest.fixture(scope="session")
def int8_embedder(model_cache: Path) -> TextEmbedder:
    return embedder("onnx-int8", model_cache)


@pytest.fixture(scope="session")
def torch_embedder(model_cache: Path) -> TextEmbedder:
    return embedder("torch", model_cache)


def test_version_is_pinned_to_the_weights(onnx_embedder: TextEmbedder, model_cache: Path) -> None:
    assert onnx_embedder.version == MODEL_VERSION == f"all-MiniLM-L6-v2@{WEIGHTS_SHA256[:12]}"
    assert onnx_path(model_cache).is_file()
    assert onnx_embedder.fingerprint.endswith("/onnx")


def test_shape_dtype_and_unit_length(onnx_embedder: TextEmbedder) -> None:
    v = onnx_embedder.embed(["Nvidia beats estimates", "", "x" * 5000])
    assert v.shape == (3, DIM) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert onnx_embedder.embed([]).shape == (0, DIM)


def test_torch_and_onnx_agree_on_real_headlines(
    onnx_embedder: TextEmbedder, torch_embedder: TextEmbedder, shared_data: Path
) -> None:
    titles = [h["title"] for h in headlines(shared_data)]
    a = onnx_embedder.embed(titles)
    b = torch_embedder.embed(titles)
    cos = (a * b).sum(axis=1)
    assert cos.min() > 1 - 1e-3, f"worst cosine {cos.min()}"


def test_onnx_vectors_do_not_depend_on_batching(onnx_embedder: TextEmbedder, shared_data: Path) -> None:
    """A rebuild batches events differently; every vector must still come out bit for bit the same."""
    titles = [h["title"] for h in headlines(shared_data)][:200]
    whole = onnx_embedder.embed(titles)
    alone = np.concatenate([onnx_embedder.embed([t]) for t in titles[:40]])
    odd = np.concatenate([onnx_embedder.embed(titles[i : i + 7]) for i in range(0, 200, 7)])
    assert np.array_equal(whole[:40], alone)
    assert np.array_equal(whole, odd)


def test_profit_warning_query_finds_the_matching_headlines(onnx_embedder: TextEmbedder, shared_data: Path) -> None:
    rows = headlines(shared_data)
    titles = [h["title"] for h in rows]
    sims = onnx_embedder.embed(titles) @ onnx_embedder.embed([QUERY])[0]
    rank = {t: i for i, t in enumerate(np.array(titles)[np.argsort(-sims)])}
    match = "Weir leads FTSE lower after oil price profits warning"
    assert rank[match] < 10, f"matching headline ranked {rank[match]} of {len(titles)}"
    for unrelated in (
        "Barclays 'bad bank' chief to step down",
        "Morrisons book second consecutive quarter of sales growth",
        "Glencore to refinance its short-term debt early, shares rise",
    ):
        assert rank[match] < rank[unrelated]
    top10 = np.argsort(-sims)[:10]
    assert np.mean([rows[i]["sentiment"] for i in top10]) < np.mean([r["sentiment"] for r in rows]) - 0.2


def test_cached_vectors_equal_fresh_ones(onnx_embedder: TextEmbedder, model_cache: Path, shared_data: Path) -> None:
    titles = [h["title"] for h in headlines(shared_data)[:40]]
    repeated = titles[:10] + titles + titles[5:15]  # duplicates inside one call and across calls
    first = onnx_embedder.embed(repeated)
    again = onnx_embedder.embed(list(reversed(repeated)))[::-1]
    fresh = TextEmbedder("onnx", cache_dir=model_cache, cache_size=0).embed(repeated)
    assert np.array_equal(first, again) and np.array_equal(first, fresh)


def test_int8_version_names_the_quantised_artefact(int8_embedder: TextEmbedder, model_cache: Path) -> None:
    """Vector tables record the version: int8 vectors must never be appended to float ones, or vice versa."""
    sha = hashlib.sha256(int8_path(model_cache).read_bytes()).hexdigest()
    assert int8_embedder.version == f"{MODEL_VERSION}+int8@{sha[:12]}" != MODEL_VERSION
    assert DEFAULT_BACKEND == "onnx-int8" and int8_embedder.fingerprint.endswith("/onnx-int8")


def test_int8_is_close_to_the_float_vectors(
    int8_embedder: TextEmbedder, onnx_embedder: TextEmbedder, shared_data: Path
) -> None:
    titles = [h["title"] for h in headlines(shared_data)]
    a = int8_embedder.embed(titles)
    cos = (a * onnx_embedder.embed(titles)).sum(axis=1)
    assert a.dtype == np.float32 and a.shape == (len(titles), DIM)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert cos.min() >= 0.99, f"worst cosine {cos.min()}"


def test_int8_vectors_do_not_depend_on_batching(int8_embedder: TextEmbedder, shared_data: Path) -> None:
    titles = [h["title"] for h in headlines(shared_data)][:120]
    whole = int8_embedder.embed(titles)
    alone = np.concatenate([int8_embedder.embed([t]) for t in titles[:30]])
    odd = np.concatenate([int8_embedder.embed(titles[i : i + 7]) for i in range(0, 120, 7)])
    assert np.array_equal(whole[:30], alone) and np.array_equal(whole, odd)
