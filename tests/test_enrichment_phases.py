"""Market phases on hand-made bar series (one per Wyckoff phase), warm-up rows, the nudge manifest and
the extra features computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest

from tapeline.bus.inprocess import InProcessRunner
from tapeline.config import ConfigError, load_settings
from tapeline.handlers.enrichment import WINDOW, EnrichmentConfig, MarketFeatures, bar_features
from tapeline.handlers.phases import ManifestError, classify, load_manifest
from tapeline.schemas.events import Bar, Enrichment
from tapeline.schemas.features import ENRICHMENT_FEATURES
from tapeline.schemas.ids import derive_event_id

T0 = 1_767_225_600_000_000_000
DAY_NS = 86_400_000_000_000


def _bars(log_returns: list[float], *, symbol: str = "SYN", volume: float = 1000.0) -> list[Bar]:
    """Bars from a start price of 100 following the given one-bar log returns; each bar opens at the
    previous close and spans 0.5% on either side of its close."""
    closes = [100.0]
    for r in log_returns:
        closes.append(closes[-1] * math.exp(r))
    return [
        Bar(
            event_id=derive_event_id(T0 + (i + 1) * DAY_NS, "test-bar", symbol, i),
            ts_event=T0 + (i + 1) * DAY_NS,
            ts_init=T0 + (i + 1) * DAY_NS,
            source="test",
            symbol=symbol,
            interval="1d",
            start_ns=T0 + i * DAY_NS,
            open=closes[i - 1] if i else c,
            high=c * 1.005,
            low=c * 0.995,
            close=c,
            volume=volume,
        )
        for i, c in enumerate(closes)
    ]


def _wiggle(n: int, drift: float, size: float = 0.004) -> list[float]:
    """n log returns: a drift plus a ±size zigzag, so volatility is never zero."""
    return [drift + (size if i % 2 else -size) for i in range(n)]


SERIES = {
    # a steady advance: 60 bars up 0.5% a bar
    "markup": _wiggle(60, 0.005),
    # a steady decline
    "markdown": _wiggle(60, -0.005),
    # a decline for 40 bars, then a flat range for 20 with shrinking swings
    "accumulation": _wiggle(40, -0.006) + _wiggle(10, 0.0, 0.004) + _wiggle(10, 0.0, 0.002),
    # an advance for 40 bars, then a flat range
    "distribution": _wiggle(40, 0.006) + _wiggle(10, 0.0, 0.004) + _wiggle(10, 0.0, 0.002),
}


@pytest.mark.parametrize("phase", list(SERIES))
def test_each_phase_from_a_hand_made_series(phase: str) -> None:
    bars = _bars(SERIES[phase])
    assert len(bars) == WINDOW
    got, confidence = classify(bar_features(bars))
    assert got == phase
    assert 0.6 <= confidence <= 1.0  # a textbook series: most of the evidence agrees


def test_confidence_falls_as_the_evidence_weakens() -> None:
    strong = classify(bar_features(_bars(_wiggle(60, 0.005))))
    weak_rets = _wiggle(40, 0.0) + _wiggle(20, 0.001)  # the same phase, a barely-trending 20 bars
    weak = classify(bar_features(_bars(weak_rets)))
    assert strong[0] == weak[0] == "markup" and weak[1] < strong[1]


def test_the_extra_features_by_hand() -> None:
    """Up moves of +0.9%, down moves of -0.1%: RSI = (0.9*7 - 0.1*7) / (7*1.0) = 0.8; the open at the
    previous close: no gap; the prior 40 bars flat."""
    rets = _wiggle(40, 0.0) + [0.009 if i % 2 else -0.001 for i in range(20)]
    bars = _bars(rets)
    f = bar_features(bars)
    assert list(f) == list(ENRICHMENT_FEATURES)
    assert f["rsi_14"] == pytest.approx(0.8, rel=1e-4)
    assert f["gap"] == pytest.approx(0.0, abs=1e-6)
    assert f["ret_prior_40"] == pytest.approx(0.0, abs=1e-4)
    sigma = 0.005  # returns alternate +0.9% and -0.1%: a stdev of 0.5%
    assert f["rv_20"] == pytest.approx(sigma, rel=1e-4)
    assert f["dist_vwap_20"] > 0  # a rising close sits above its 20-bar VWAP
    gapped = [*bars[:-1], _with_open(bars[-1], bars[-2].close * math.exp(2 * sigma))]
    assert bar_features(gapped)["gap"] == pytest.approx(2.0, rel=1e-3)  # a gap of two sigmas


def _with_open(bar: Bar, price: float) -> Bar:
    return msgspec.structs.replace(bar, open=price, high=max(bar.high, price))


async def test_warm_up_rows_are_marked_not_guessed_and_nudges_carry_the_manifest_version() -> None:
    bars = _bars(SERIES["markdown"] + _wiggle(5, -0.005))
    out = await InProcessRunner([MarketFeatures()], "tape").run(bars)
    manifest = load_manifest()
    assert len(out) == len(bars) and all(isinstance(e, Enrichment) for e in out)
    warm_up, rest = out[: WINDOW - 1], out[WINDOW - 1 :]
    for e in warm_up:
        assert isinstance(e, Enrichment)
        assert (e.warmup, e.features, e.phase, e.confidence) == (True, {}, "", 0.0)
        assert e.nudges == manifest.nudges["warmup"] and e.manifest_version == manifest.version
    for e in rest:
        assert isinstance(e, Enrichment)
        assert not e.warmup and e.phase == "markdown" and e.nudges == manifest.nudges["markdown"]
        assert e.manifest_version == manifest.version and set(e.features) == set(ENRICHMENT_FEATURES)


async def test_a_custom_manifest_travels_on_the_events(tmp_path: Path) -> None:
    path = tmp_path / "nudges.toml"
    hints = {p: [f"{p} hint"] for p in ("accumulation", "markup", "distribution", "markdown", "warmup")}
    body = "\n".join(f'{k} = ["{v[0]}"]' for k, v in hints.items())
    path.write_text(f'version = "ops-7"\n[nudges]\n{body}\n')
    handler = MarketFeatures(EnrichmentConfig(manifest=str(path)))
    out = await InProcessRunner([handler], "tape").run(_bars(SERIES["markup"]))
    last = out[-1]
    assert isinstance(last, Enrichment) and last.manifest_version == "ops-7" and last.nudges == ["markup hint"]


def test_a_bad_manifest_is_one_line_naming_the_key(tmp_path: Path) -> None:
    incomplete = tmp_path / "partial.toml"
    incomplete.write_text('version = "1"\n[nudges]\nmarkup = ["x"]\n')
    with pytest.raises(ManifestError, match="needs a version and nudges for"):
        load_manifest(incomplete)
    config = tmp_path / "tapeline.toml"
    config.write_text(f'[enrichment]\nmanifest = "{tmp_path / "absent.toml"}"\n')
    with pytest.raises(ConfigError, match=r"enrichment.manifest: .*absent.toml is missing") as e:
        load_settings(config)
    assert "\n" not in str(e.value)
