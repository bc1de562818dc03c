"""The scanner: every BUY/SELL decision scored as a trade candidate on the Q* scale (0-10).

    Q* = 10 x (0.40 confidence + 0.30 agreement + 0.15 liquidity + 0.15 calm)

* ``confidence``: the decision's synthesis confidence (0..1);
* ``agreement``: the share of the decision's agent signals that point the verdict's way
  (BULLISH for BUY, BEARISH for SELL; 0 without signals);
* ``liquidity``: average dollar volume of the last 20 bars / ``liquidity_usd``, capped at 1;
* ``calm``: ``target_vol`` / the annualised volatility of the last 20 bars, capped at 1 (0 without bars).

Grades (the seeds' scale): A+ >= 8.5, A >= 7.0, B >= 5.5, C below. A candidate below ``min_grade`` is
skipped: its :class:`Scan` has ``passed=False``. HOLD decisions are not candidates. The skip rate
(skipped / scanned since the scanner's state began) is in every Scan's ``skip_rate`` and reasoning and
in the metric ``tapeline_scanner_skip_ratio{key="all"}``.

State: the bars of ``interval`` per symbol and the counts, snapshotted; it reads decisions and bars
(two streams, each in its own order): a decision is scored with the bars seen when it arrives.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

import msgspec

from tapeline.handlers.market import BarBook, bars_per_year
from tapeline.schemas.components import Consumes, Handler, Snapshot, draft
from tapeline.schemas.events import AnyEvent, Bar, DecisionEnvelope, Event, Scan
from tapeline.schemas.intervals import interval_ns

Grade = Literal["A+", "A", "B", "C"]
GRADES: tuple[tuple[Grade, float], ...] = (("A+", 8.5), ("A", 7.0), ("B", 5.5), ("C", 0.0))
WEIGHTS = {"confidence": 0.40, "agreement": 0.30, "liquidity": 0.15, "calm": 0.15}


def grade_of(score: float) -> Grade:
    return next(g for g, floor in GRADES if score >= floor)


class ScannerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    interval: str = "1m"  # bars for liquidity and volatility
    min_grade: Grade = "A"  # candidates below it are skipped
    liquidity_usd: Annotated[float, msgspec.Meta(gt=0)] = 1_000_000.0  # average $ volume per bar that scores 1
    target_vol: Annotated[float, msgspec.Meta(gt=0)] = 0.30  # annualised volatility at or below which calm = 1

    def __post_init__(self) -> None:
        try:
            interval_ns(self.interval)
        except ValueError as e:
            raise ValueError(f"interval: {e}") from None


class _Counts(msgspec.Struct):
    bars: BarBook
    scanned: int = 0
    skipped: int = 0


class Scanner(Handler):
    name: ClassVar[str] = "scanner"
    version: ClassVar[int] = 1
    role: ClassVar[str] = "risk"
    Config: ClassVar[type[msgspec.Struct]] = ScannerConfig
    emits: ClassVar[tuple[type[Event], ...]] = (Scan,)
    state = Snapshot()

    def __init__(self, config: ScannerConfig | None = None) -> None:
        super().__init__(config)
        cfg: ScannerConfig = self.config
        self.consumes = (Consumes(DecisionEnvelope), Consumes(Bar, {"interval": cfg.interval}))
        self.floor = dict(GRADES)[cfg.min_grade]
        self.per_year = bars_per_year(cfg.interval)
        self.s = _Counts(bars=BarBook(keep=21))

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.s)

    def restore(self, data: bytes) -> None:
        self.s = msgspec.msgpack.decode(data, type=_Counts)

    def parts(self, d: DecisionEnvelope) -> dict[str, float]:
        """The four components of Q*, each in 0..1."""
        cfg: ScannerConfig = self.config
        sym = d.target.ticker
        want = "BULLISH" if d.synthesis.verdict == "BUY" else "BEARISH"
        sigs = d.agent_signals
        conf = d.synthesis.confidence
        sigma = self.s.bars.sigma(sym) * math.sqrt(self.per_year)
        return {
            "confidence": min(1.0, max(0.0, conf)) if math.isfinite(conf) else 0.0,
            "agreement": sum(s.signal == want for s in sigs) / len(sigs) if sigs else 0.0,
            "liquidity": min(1.0, self.s.bars.dollar_volume(sym) / cfg.liquidity_usd),
            "calm": min(1.0, cfg.target_vol / sigma) if sigma > 0 else 0.0,
        }

    def handle(self, event: AnyEvent) -> list[Event]:
        if isinstance(event, Bar):
            self.s.bars.add(event)
            return []
        if not isinstance(event, DecisionEnvelope) or event.synthesis.verdict == "HOLD":
            return []
        parts = self.parts(event)
        score = round(10 * sum(WEIGHTS[k] * v for k, v in parts.items()), 3)
        grade = grade_of(score)
        passed = score >= self.floor
        self.s.scanned += 1
        self.s.skipped += not passed
        skip_rate = self.s.skipped / self.s.scanned
        self.counters["passed" if passed else "skipped"] = self.counters.get("passed" if passed else "skipped", 0) + 1
        self.gauges["skip_ratio"] = {"all": skip_rate}
        shown = ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
        cfg: ScannerConfig = self.config
        what = "sized" if passed else f"skipped (below {cfg.min_grade})"
        reasoning = (
            f"Q* {score:.2f} grade {grade}: {shown}; {what}; skip rate {skip_rate:.0%} "
            f"({self.s.skipped} of {self.s.scanned})"
        )
        return [
            draft(
                Scan,
                ts_event=event.ts_event,
                symbol=event.target.ticker,
                decision_id=event.event_id,
                verdict=event.synthesis.verdict,
                confidence=parts["confidence"],
                score=score,
                grade=grade,
                passed=passed,
                parts={k: round(v, 6) for k, v in parts.items()},
                skip_rate=round(skip_rate, 6),
                reasoning=reasoning,
            )
        ]
