"""The price model offline: walk-forward without look-ahead, ONNX export equal to the native model,
metadata and hashes, refusals, and the model agent's swaps through the in-process runner (replay)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import msgspec
import numpy as np
import pytest

from tapeline.adapters.files import read_bars
from tapeline.bus.inprocess import InProcessRunner
from tapeline.handlers.enrichment import MarketFeatures
from tapeline.handlers.model_agent import ModelAgent
from tapeline.models.price import (
    Dataset,
    ModelRefused,
    ModelStore,
    Series,
    default_classifier,
    export_onnx,
    file_sha256,
    load_model,
    make_dataset,
    version_of,
    walk_forward,
)
from tapeline.models_cli import ARTEFACTS, series_of, train
from tapeline.schemas.events import Alert, Bar, Enrichment, Event, ModelDeployed, Signal
from tapeline.schemas.features import ENRICHMENT_FEATURES

DAY = 86_400_000_000_000


def _synthetic(n: int = 700, horizon: int = 3, seed: int = 1) -> Dataset:
    """Two features, the label leaning on the first: a learnable, fast dataset."""
    rng = np.random.default_rng(seed)
    closes = [100.0]
    feats: list[dict[str, float] | None] = []
    for _ in range(n):
        closes.append(closes[-1] * math.exp(rng.normal(0, 0.01)))
    for i in range(n + 1):
        ahead = math.log(closes[min(i + horizon, n)] / closes[i])
        feats.append({"ret_1": ahead * 50 + rng.normal(0, 1), "ret_20": rng.normal(0, 1)})
    s = Series("SYN", "1d", [(i + 1) * DAY for i in range(n + 1)], closes, feats)
    return make_dataset([s], horizon, ("ret_1", "ret_20"))


def test_walk_forward_has_no_look_ahead() -> None:
    """Poison everything a fold must not see — labels not yet known when its window opens (the purged
    ones just before it included) and every feature from the window's end on — and its
    out-of-sample predictions do not move."""
    ds = _synthetic()
    wf = walk_forward(ds, folds=3)
    assert wf.overall["model"].auc > 0.6  # the model learns something real here ...
    for k, fold in enumerate(wf.folds):
        a, b = fold.test.start, fold.test.stop
        unknown = ds.label_ts > fold.start_ts
        # ... and the purge is real: labels still pending when the window opens (the row N bars back is known
        # at the close of the window's first bar, when that bar is scored)
        assert unknown[:a].sum() == ds.horizon - 1
        y = ds.y.copy()
        y[unknown] = 1 - y[unknown]
        X = ds.X.copy()
        X[b:] = np.random.default_rng(k).normal(0, 5, X[b:].shape)
        poisoned = walk_forward(_replace(ds, X=X, y=y), folds=3)
        np.testing.assert_array_equal(
            poisoned.p_up[a - wf.tested.start : b - wf.tested.start], wf.p_up[a - wf.tested.start : b - wf.tested.start]
        )
        assert poisoned.folds[k].n_train == fold.n_train


def _replace(ds: Dataset, **changes: object) -> Dataset:
    return dataclasses.replace(ds, **changes)  # type: ignore[arg-type]


def test_training_with_a_label_leak_would_be_caught() -> None:
    """The poisoning test above can fail: a walk-forward that trains on the purged rows sees their
    flipped labels and its predictions move."""
    ds = _synthetic()
    fold = walk_forward(ds, folds=3).folds[1]
    a = fold.test.start
    leaky = default_classifier().fit(ds.X[:a], ds.y[:a]).predict_proba(ds.X[a : fold.test.stop])[:, 1]
    y = ds.y.copy()
    unknown = ds.label_ts > fold.start_ts
    y[unknown] = 1 - y[unknown]
    moved = default_classifier().fit(ds.X[:a], y[:a]).predict_proba(ds.X[a : fold.test.stop])[:, 1]
    assert not np.array_equal(leaky, moved)


@pytest.fixture(scope="module")
def nvda_series() -> Series:
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "bars" / "nvda-daily-1999-2014.csv"
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    bars = [b for b in read_bars(path, "NVDA", interval="1d").events if isinstance(b, Bar)]
    return series_of(bars[:900])


@pytest.fixture(scope="module")
def trained(nvda_series: Series) -> tuple[bytes, Dataset]:
    data, ds, _ = train([nvda_series], horizon=5, folds=2)
    return data, ds


def test_onnx_export_scores_like_sklearn_and_carries_its_metadata(
    nvda_series: Series, trained: tuple[bytes, Dataset]
) -> None:
    data, ds = trained
    native = default_classifier().fit(ds.X, ds.y)
    model = load_model(data, sha256=file_sha256(data))
    assert model.feature_names == ENRICHMENT_FEATURES and model.horizon == 5 and model.intervals == ("1d",)
    np.testing.assert_allclose(model.p_up(ds.X), native.predict_proba(ds.X)[:, 1], atol=1e-5)
    assert model.version == file_sha256(data)[:12]
    assert model.meta["train_from"].startswith("1999-04") and model.meta["train_rows"] == str(len(ds.y))
    wf = json.loads(model.meta["walk_forward"])
    assert set(wf) == {"model", "majority", "momentum"} and 0 < wf["model"]["auc"] < 1
    again, _, _ = train([nvda_series], horizon=5, folds=2)
    assert again == data  # same data, same bytes, same version


def test_the_packaged_default_model_loads() -> None:
    (path,) = ARTEFACTS.glob("price-*.onnx")
    data = path.read_bytes()
    model = load_model(data)
    assert path.name == f"price-{version_of(file_sha256(data))}.onnx"
    assert model.intervals == ("1d",) and len(data) < 200_000


def test_models_that_must_not_serve_are_refused(trained: tuple[bytes, Dataset], tmp_path: Path) -> None:
    data, ds = trained
    with pytest.raises(ModelRefused, match="content hash"):
        load_model(data, sha256="0" * 64)
    with pytest.raises(ModelRefused, match="not an ONNX model"):
        load_model(b"not a model")
    import onnx

    onx = onnx.load_from_string(data)
    onx.graph.node[0].name = "tampered"
    with pytest.raises(ModelRefused, match="graph hash"):
        load_model(onx.SerializeToString())
    named = _replace(ds, feature_names=("bogus", *ds.feature_names[1:]))
    other = export_onnx(default_classifier().fit(ds.X, ds.y), named)
    with pytest.raises(ModelRefused, match=r"features \['bogus'\]"):
        load_model(other)
    with pytest.raises(ModelRefused, match="not in the model store"):
        ModelStore(tmp_path).load("ab" * 32)


def _deployed(sha: str, n: int) -> ModelDeployed:
    return ModelDeployed(
        event_id=f"DEPLOY{n:020d}",
        ts_event=n,
        ts_init=n,
        source="test",
        model="price",
        model_version=version_of(sha),
        sha256=sha,
    )


async def test_replay_scores_each_bar_with_the_version_live_at_that_point(
    trained: tuple[bytes, Dataset], tmp_path: Path, shared_data: Path
) -> None:
    """In stream order (the in-process runner, as replay runs it): no model -> nothing; model A;
    a refused deployment (alert, A keeps serving); model B; again, replayed, the same signals."""
    data_a, ds = trained
    data_b = export_onnx(default_classifier().fit(ds.X[:300], ds.y[:300]), ds)
    store = ModelStore(tmp_path / "store")
    sha_a, sha_b = store.put(data_a), store.put(data_b)
    bars = [
        b for b in read_bars(shared_data / "bars" / "orcl-daily-1995-2014.csv", "ORCL").events if isinstance(b, Bar)
    ]
    feats = MarketFeatures()
    enr: list[Enrichment] = []
    for b in bars[:140]:
        (e,) = feats.handle(b)
        assert isinstance(e, Enrichment)
        enr.append(msgspec.structs.replace(e, event_id=f"ENR{b.ts_event}", causation_id=b.event_id))
    stream: list[Event] = [
        *enr[:70],  # 60 warm-up rows and 10 before any model
        _deployed(sha_a, 1),
        *enr[70:90],
        _deployed("cd" * 32, 2),  # not in the store: refused
        *enr[90:110],
        _deployed(sha_b, 3),
        *enr[110:140],
    ]
    out = await InProcessRunner([ModelAgent(store=store)], "tape").run(stream)
    signals = [e for e in out if isinstance(e, Signal)]
    by_cause = {s.causation_id: s for s in signals}
    assert len(signals) == len(by_cause) == 70
    version = {e.event_id: f"{int(by_cause[e.event_id].metrics['model_version']):012x}" for e in enr[70:]}
    assert {version[e.event_id] for e in enr[70:110]} == {version_of(sha_a)}
    assert {version[e.event_id] for e in enr[110:]} == {version_of(sha_b)}
    alerts = [e for e in out if isinstance(e, Alert)]
    assert [(a.kind, a.severity, a.resolved) for a in alerts] == [
        ("model_refused", "critical", False),
        ("model_refused", "info", True),
    ]
    assert "not in the model store" in alerts[0].message and version_of(sha_a) in alerts[0].message
    replayed = await InProcessRunner([ModelAgent(store=store)], "tape").run(stream)
    assert [(e.event_id, getattr(e, "metrics", None)) for e in replayed] == [
        (e.event_id, getattr(e, "metrics", None)) for e in out
    ]
    p = by_cause[enr[-1].event_id].metrics["p_up"]
    row = np.array([[enr[-1].features[n] for n in ENRICHMENT_FEATURES]], dtype=np.float32)
    assert p == pytest.approx(float(load_model(data_b).p_up(row)[0]), abs=1e-6)


async def test_a_restart_restores_the_live_model_from_its_snapshot(
    trained: tuple[bytes, Dataset], tmp_path: Path
) -> None:
    data, _ = trained
    store = ModelStore(tmp_path)
    sha = store.put(data)
    first = ModelAgent(store=store)
    first.handle(_deployed(sha, 1))
    second = ModelAgent(store=store)
    second.restore(first.snapshot())
    assert second.live is not None and second.live.sha256 == sha
    enr = Enrichment(
        event_id="E1", ts_event=5, ts_init=5, source="t", symbol="X", interval="1d",
        features=dict.fromkeys(ENRICHMENT_FEATURES, 0.1),
    )  # fmt: skip
    assert second.handle(enr) == first.handle(enr)
    assert second.handle(msgspec.structs.replace(enr, interval="1m")) == []  # not what it was trained on
    assert second.counters == {"scored": 1, "other_interval": 1}


async def test_a_model_lost_from_the_store_at_restart_is_an_alert_not_a_crash(
    trained: tuple[bytes, Dataset], tmp_path: Path
) -> None:
    data, _ = trained
    store = ModelStore(tmp_path)
    sha = store.put(data)
    first = ModelAgent(store=store)
    first.handle(_deployed(sha, 1))
    store.path(sha).unlink()
    second = ModelAgent(store=store)
    second.restore(first.snapshot())
    enr = Enrichment(
        event_id="E1", ts_event=5, ts_init=5, source="t", symbol="X", interval="1d",
        features=dict.fromkeys(ENRICHMENT_FEATURES, 0.1),
    )  # fmt: skip
    (alert,) = second.handle(enr)
    assert isinstance(alert, Alert) and alert.severity == "critical" and "not in the model store" in alert.message
    assert second.handle(enr) == [] and second.counters == {"no_model": 2}
    store.put(data)
    (resolved,) = second.handle(_deployed(sha, 2))
    assert isinstance(resolved, Alert) and resolved.resolved


async def test_decisions_combine_the_model_vote_with_momentum(trained: tuple[bytes, Dataset], tmp_path: Path) -> None:
    from tapeline.handlers.decision import DecisionSynthesis
    from tapeline.schemas.events import DecisionEnvelope

    data, _ = trained
    store = ModelStore(tmp_path)
    sha = store.put(data)
    momentum = Signal(
        event_id="MOM1", ts_event=10, ts_init=10, source="momentum", symbol="X", agent="momentum",
        domain="technical", direction="BULLISH", strength=0.6, confidence=0.5,
    )  # fmt: skip
    enr = Enrichment(
        event_id="E2", ts_event=11, ts_init=11, source="t", symbol="X", interval="1d",
        features=dict.fromkeys(ENRICHMENT_FEATURES, -0.5),
    )  # fmt: skip
    runner = InProcessRunner([ModelAgent(store=store), DecisionSynthesis()], "tape")
    out = await runner.run([_deployed(sha, 1), momentum, enr])
    last = [e for e in out if isinstance(e, DecisionEnvelope)][-1]
    assert {s.agent for s in last.agent_signals} == {"momentum", "model"}
    assert "model_strength" in last.source_metrics and "momentum_strength" in last.source_metrics
