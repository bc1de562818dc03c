"""LanceDB vector projections on real files: forward returns, crash safety, checksums, search."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import numpy as np
import pytest

from tapeline.adapters.files import read_bars
from tapeline.handlers.enrichment import WINDOW, market_features
from tapeline.models.embedder import TextEmbedder
from tapeline.projections.vectors import (
    FWD_COLUMNS,
    HORIZONS,
    MARKET_RETURNS,
    MARKET_STATES,
    NEWS_VECTORS,
    TAIL,
    DecisionVectors,
    MarketReturns,
    MarketStates,
    NewsVectors,
    VectorStore,
    search_decisions,
    search_news,
    similar_situations,
)
from tapeline.schemas.events import Bar, DecisionEnvelope, Enrichment, Event, NewsItem, Synthesis, Target, Verdict
from tapeline.schemas.features import ENRICHMENT_FEATURES, MARKET_DIM, MARKET_FEATURES
from tests.vector_support import DAY_NS, embedder, enrichments, headlines


@pytest.fixture(scope="session")
def text_embedder(tmp_path_factory: pytest.TempPathFactory) -> TextEmbedder:
    return embedder("onnx", tmp_path_factory.getbasetemp() / "models")


@pytest.fixture
def nvda(shared_data: Path) -> list[Bar]:
    return list(read_bars(shared_data / "bars" / "nvda-daily-1999-2014.csv", "NVDA", interval="1d").events)  # type: ignore[arg-type]


@pytest.fixture
def nvda_states(nvda: list[Bar]) -> list[Enrichment]:
    """The warm rows (test_read_models shows warm-up rows are skipped)."""
    return [e for e in enrichments(nvda) if not e.warmup]


def _project(store: VectorStore, bars: list[Bar], states: list[Enrichment]) -> None:
    """Both market read models, each from its own stream (sequences as if alone on it)."""
    MarketReturns(store).run(enumerate(bars, 1))
    MarketStates(store).run(enumerate(states, 1))


def _news(shared_data: Path, base_ts: int) -> list[NewsItem]:
    return [
        NewsItem(
            event_id=f"news-{i:04d}",
            ts_event=base_ts + i * DAY_NS,
            ts_init=base_ts + i * DAY_NS,
            source="semeval",
            provider="semeval2017",
            article_id=str(h["id"]),
            title=h["title"],
            tickers=["NVDA"],
        )
        for i, h in enumerate(headlines(shared_data))
    ]


def test_market_returns_equal_later_closes(tmp_path: Path, nvda: list[Bar]) -> None:
    store = VectorStore(tmp_path / "v")
    proj = MarketReturns(store)
    assert proj.run((i + 1, b) for i, b in enumerate(nvda)) == len(nvda)
    t = store.scan(MARKET_RETURNS, ["bar_event_id", *FWD_COLUMNS]).to_pylist()
    by_id = {r["bar_event_id"]: r for r in t}
    assert len(by_id) == len(nvda)
    for i, bar in enumerate(nvda):
        row = by_id[bar.event_id]
        for h, col in zip(HORIZONS, FWD_COLUMNS, strict=True):
            if i + h < len(nvda):
                assert math.isclose(row[col], nvda[i + h].close / bar.close - 1, rel_tol=1e-12, abs_tol=1e-15)
            else:
                assert row[col] is None  # not known yet


def test_market_states_store_the_enrichment_features(
    tmp_path: Path, nvda: list[Bar], nvda_states: list[Enrichment]
) -> None:
    """A row per bar with a full window: exactly the vector the features of that window give."""
    store = VectorStore(tmp_path / "v")
    assert MarketStates(store).run(enumerate(nvda_states, 1)) == len(nvda_states) == len(nvda) - WINDOW + 1
    rows = {r["bar_event_id"]: r for r in store.scan(MARKET_STATES, None).to_pylist()}
    assert len(rows) == len(nvda_states)
    for i in range(WINDOW - 1, len(nvda), 97):
        row = rows[nvda[i].event_id]
        assert (row["symbol"], row["interval"], row["ts_event"]) == ("NVDA", "1d", nvda[i].ts_event)
        assert np.array_equal(np.array(row["vector"], np.float32), market_features(nvda[: i + 1]))
    assert nvda[WINDOW - 2].event_id not in rows  # too little history: no state


def test_an_enrichment_that_cannot_make_a_row_is_poison(tmp_path: Path, nvda_states: list[Enrichment]) -> None:
    proj = MarketStates(VectorStore(tmp_path / "v"))
    proj.start()
    partial = dict(nvda_states[0].features)
    del partial[MARKET_FEATURES[3]]
    with pytest.raises(ValueError, match="lacks features"):
        proj.apply(1, msgspec.structs.replace(nvda_states[0], features=partial))
    with pytest.raises(ValueError, match="names no bar"):
        proj.apply(2, msgspec.structs.replace(nvda_states[0], causation_id=""))
    assert len(nvda_states[0].features) == len(ENRICHMENT_FEATURES) > MARKET_DIM


def test_crash_between_add_and_checkpoint_duplicates_nothing(tmp_path: Path, nvda: list[Bar]) -> None:
    bars = nvda[:3000]
    events: list[tuple[int, Event]] = [(i + 1, b) for i, b in enumerate(bars)]
    ref = VectorStore(tmp_path / "ref")
    MarketReturns(ref).run(events)

    store = VectorStore(tmp_path / "crash")
    first = MarketReturns(store)
    first.run(events[:1200])  # commits 1000 rows, then the 200-row tail on the final forced flush
    assert store.checkpoint(MARKET_RETURNS).last_seq == 1200
    # The next batch's rows (and forward-return updates) land, then the process dies before its checkpoint.
    write_checkpoint = store.write_checkpoint
    store.write_checkpoint = lambda *a, **k: None  # type: ignore[method-assign]
    for seq, ev in events[1200:2300]:
        first.apply(seq, ev)
    first.flush(force=True)
    store.write_checkpoint = write_checkpoint  # type: ignore[method-assign]
    assert store.count(MARKET_RETURNS) == 2300 and store.checkpoint(MARKET_RETURNS).last_seq == 1200

    reopened = VectorStore(tmp_path / "crash")
    resumed = MarketReturns(reopened)
    assert resumed.start() == 1200
    assert reopened.count(MARKET_RETURNS) == 1200
    resumed.run(events)  # the stream redelivers from the start; rows at or below the checkpoint are skipped
    assert reopened.count(MARKET_RETURNS) == len(bars)
    ids = reopened.scan(MARKET_RETURNS, ["bar_event_id"])["bar_event_id"].to_pylist()
    assert len(set(ids)) == len(ids)
    assert reopened.checksum(MARKET_RETURNS) == ref.checksum(MARKET_RETURNS)


def test_restart_repairs_forward_returns_of_the_tail(tmp_path: Path, nvda: list[Bar]) -> None:
    """Rows committed, the forward-return update lost: a restart recomputes them from the rows present."""
    store = VectorStore(tmp_path / "v")
    MarketReturns(store, batch_rows=1000).run((i + 1, b) for i, b in enumerate(nvda[:500]))
    store.table(MARKET_RETURNS).update(values={"fwd_ret_1": None, "fwd_ret_5": None})  # as if never updated
    proj = MarketReturns(store)
    proj.start()
    proj.run((i + 1, b) for i, b in enumerate(nvda[:520]))
    ref = VectorStore(tmp_path / "ref")
    MarketReturns(ref).run((i + 1, b) for i, b in enumerate(nvda[:520]))
    tail = {r["bar_event_id"]: r for r in store.scan(MARKET_RETURNS, None).to_pylist()}
    want = {r["bar_event_id"]: r for r in ref.scan(MARKET_RETURNS, None).to_pylist()}
    for bar in nvda[500 - TAIL : 520]:  # the restored tail is repaired; older rows stay as they were
        assert tail[bar.event_id]["fwd_ret_1"] == want[bar.event_id]["fwd_ret_1"]


def test_text_projections_checksum_reproducible_and_search(
    tmp_path: Path, shared_data: Path, nvda: list[Bar], text_embedder: TextEmbedder
) -> None:
    base = nvda[1000].ts_event - DAY_NS // 2
    news = _news(shared_data, base)
    cases: list[tuple[Verdict, str]] = [
        ("SELL", "Guidance cut and a profit warning; momentum has turned negative."),
        ("BUY", "Strong earnings beat, raised outlook, and rising volume on breakouts."),
        ("HOLD", ""),  # no reasoning: no row
    ]
    decisions = [
        DecisionEnvelope(
            event_id=f"dec-{i}",
            ts_event=base + i * DAY_NS,
            ts_init=base + i * DAY_NS,
            source="test",
            target=Target(ticker="NVDA", trade_date="2003-01-01"),
            synthesis=Synthesis(verdict=v, confidence=0.6, ensemble_score=0.1, reasoning=r),
        )
        for i, (v, r) in enumerate(cases)
    ]
    checks = []
    for name, batch in (("a", 1000), ("b", 97)):  # different batch boundaries, same content
        store = VectorStore(tmp_path / name)
        nv = NewsVectors(store, text_embedder, batch_rows=batch)
        assert nv.run((i + 1, n) for i, n in enumerate(news)) == len(news)
        DecisionVectors(store, text_embedder).run((i + 1, d) for i, d in enumerate(decisions))
        checks.append(store.checksum(NEWS_VECTORS))
    assert checks[0] == checks[1] and checks[0].startswith(f"{len(news)}:")
    assert store.checkpoint(NEWS_VECTORS).model == text_embedder.version

    MarketReturns(store).run((i + 1, b) for i, b in enumerate(nvda))
    hits = search_news(store, text_embedder, "stock falls after profit warning", k=10)
    assert len(hits) == 10 and hits[0]["score"] >= hits[-1]["score"]
    assert "Weir leads FTSE lower after oil price profits warning" in [h["title"] for h in hits]
    first = hits[0]
    bar_idx = next(i for i, b in enumerate(nvda) if b.ts_event >= first["ts_event"])
    assert first["fwd_symbol"] == "NVDA"
    assert math.isclose(first["fwd_ret_5"], nvda[bar_idx + 5].close / nvda[bar_idx].close - 1, rel_tol=1e-12)

    dec = search_decisions(store, text_embedder, "company warns profits will fall", k=5)
    assert [d["verdict"] for d in dec] == ["SELL", "BUY"]


def test_similar_situations_are_past_and_carry_outcomes(
    tmp_path: Path, nvda: list[Bar], nvda_states: list[Enrichment]
) -> None:
    store = VectorStore(tmp_path / "v")
    _project(store, nvda, nvda_states)
    at = nvda[2500].ts_event
    rows = similar_situations(store, "NVDA", at, k=10)
    assert len(rows) == 10
    assert all(r["ts_event"] <= nvda[2500 - 20].ts_event for r in rows)  # outcome known at the query time
    assert [r["distance"] for r in rows] == sorted(r["distance"] for r in rows)
    close_at = {b.ts_event: b.close for b in nvda}
    idx = {b.ts_event: i for i, b in enumerate(nvda)}
    for r in rows:
        assert r["close"] == close_at[r["ts_event"]] and r["bar_event_id"] == nvda[idx[r["ts_event"]]].event_id
        assert math.isclose(r["fwd_ret_20"], nvda[idx[r["ts_event"]] + 20].close / close_at[r["ts_event"]] - 1)
    latest = similar_situations(store, "NVDA", None, k=3)
    assert len(latest) == 3
    assert similar_situations(store, "ORCL", None) == []


def test_index_above_threshold_keeps_search_working(
    tmp_path: Path, nvda: list[Bar], nvda_states: list[Enrichment]
) -> None:
    store = VectorStore(tmp_path / "v")
    _project(store, nvda, nvda_states)
    before = similar_situations(store, "NVDA", nvda[3000].ts_event, k=5)
    assert not store.ensure_index(MARKET_STATES)  # 4k rows: below the documented threshold
    assert store.ensure_index(MARKET_STATES, min_rows=1000) and store.has_index(MARKET_STATES)
    after = similar_situations(store, "NVDA", nvda[3000].ts_event, k=5)
    assert len(after) == 5
    assert len({r["bar_event_id"] for r in after} & {r["bar_event_id"] for r in before}) >= 3
    checksum = store.checksum(MARKET_STATES)
    store.optimize(MARKET_STATES)
    assert store.checksum(MARKET_STATES) == checksum  # layout and index never change content
