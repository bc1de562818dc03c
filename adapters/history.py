"""The historical bar store (Parquet, partitioned by symbol) with warm-up and self-healing.

Layout: ``<root>/symbol=<token>/interval=<iv>/part-<write time ns>-<hash>.parquet`` where
``<token>`` is the reversible subject token of the symbol (``BRK.B`` -> ``BRK=2EB``). A part is
written to a temporary name and renamed, so a crash leaves either the whole part or nothing.

* :meth:`HistoryStore.append` is idempotent: bars already stored with the same values are
  skipped, so appending the same bar twice (a redelivery, a restart, a warm-up overlapping what
  the store has) writes nothing. A bar stored with *different* values is replaced (later parts
  win on read). Many small parts are compacted into one once there are ``compact_after_parts``.
* :func:`merge_bars` merges stored history with bars fetched from the live source for the last
  ``days``: one bar per start time (the live source wins on overlap), sorted, and the *gap* when
  the store ends before the live window begins (those bars exist nowhere; reported, not invented).
* :class:`HistoryFeed` wraps a live feed: on start it publishes the merged history, then passes
  the live events through and appends every live :class:`Bar` to the store (self-healing).
  Bars it already published in this run are not published twice.

Bar ids do not depend on the venue (see :func:`adapters.files.bar_id`), so the same bar from the
store, a file or the live source has one id and JetStream drops copies.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from tapeline.adapters.alerts import make_alert
from tapeline.adapters.runner import Feed, batch_safe
from tapeline.schemas.events import Bar, Event
from tapeline.schemas.ids import bar_id
from tapeline.schemas.intervals import interval_ns
from tapeline.schemas.subjects import decode_token, encode_token

log = structlog.get_logger("tapeline.feed")
DAY_NS = 86_400_000_000_000
_COLUMNS = ("start_ns", "ts_event", "open", "high", "low", "close", "volume", "ticks", "venue")
Row = tuple[int, float, float, float, float, float, int, str]  # ts_event, o, h, l, c, v, ticks, venue
Fetch = Callable[[str, int], Awaitable[list[Bar]]]


def _row(b: Bar) -> Row:
    return (b.ts_event, b.open, b.high, b.low, b.close, b.volume, b.ticks, b.venue)


def _bar(symbol: str, interval: str, start: int, r: Row, now: int) -> Bar:
    ts, o, h, lo, c, v, n, venue = r
    return Bar(
        event_id=bar_id(symbol, interval, start, ts),
        ts_event=ts,
        ts_init=now,
        source="history",
        symbol=symbol,
        interval=interval,
        start_ns=start,
        open=o,
        high=h,
        low=lo,
        close=c,
        volume=v,
        ticks=n,
        venue=venue,
    )


class HistoryStore:
    """Bars on disk, one directory per symbol and interval."""

    def __init__(self, root: Path, *, compact_after_parts: int = 64) -> None:
        self.root = Path(root)
        self.compact_after_parts = compact_after_parts
        self._index: dict[tuple[str, str], dict[int, Row]] = {}

    def _dir(self, symbol: str, interval: str) -> Path:
        return self.root / f"symbol={encode_token(symbol)}" / f"interval={interval}"

    def parts(self, symbol: str, interval: str) -> list[Path]:
        d = self._dir(symbol, interval)
        return sorted(d.glob("part-*.parquet")) if d.exists() else []

    def series(self) -> list[tuple[str, str]]:
        """Every (symbol, interval) stored."""
        out = []
        for sd in sorted(self.root.glob("symbol=*")):
            for idir in sorted(sd.glob("interval=*")):
                out.append((decode_token(sd.name.split("=", 1)[1]), idir.name.split("=", 1)[1]))
        return out

    def _load_index(self, symbol: str, interval: str) -> dict[int, Row]:
        key = (symbol, interval)
        idx = self._index.get(key)
        if idx is not None:
            return idx
        import pyarrow.parquet as pq

        idx = {}
        for p in self.parts(symbol, interval):  # write order: later parts win
            t = pq.read_table(p, columns=list(_COLUMNS)).to_pydict()
            for i, start in enumerate(t["start_ns"]):
                idx[int(start)] = (
                    int(t["ts_event"][i]),
                    float(t["open"][i]),
                    float(t["high"][i]),
                    float(t["low"][i]),
                    float(t["close"][i]),
                    float(t["volume"][i]),
                    int(t["ticks"][i]),
                    str(t["venue"][i]),
                )
        self._index[key] = idx
        return idx

    def load(self, symbol: str, interval: str, *, since_ns: int = 0, until_ns: int | None = None) -> list[Bar]:
        """Stored bars with ``since_ns <= start_ns < until_ns``, sorted, one per start."""
        idx = self._load_index(symbol, interval)
        now = time.time_ns()
        return [
            _bar(symbol, interval, s, idx[s], now)
            for s in sorted(idx)
            if s >= since_ns and (until_ns is None or s < until_ns)
        ]

    def last_start(self, symbol: str, interval: str) -> int | None:
        idx = self._load_index(symbol, interval)
        return max(idx) if idx else None

    def append(self, bars: Iterable[Bar]) -> int:
        """Store bars not yet stored (or stored with other values). Returns how many were written."""
        groups: dict[tuple[str, str], list[Bar]] = {}
        for b in bars:
            groups.setdefault((b.symbol, b.interval), []).append(b)
        written = 0
        for (symbol, interval), group in groups.items():
            idx = self._load_index(symbol, interval)
            fresh: dict[int, Bar] = {}
            for b in group:
                if idx.get(b.start_ns) != _row(b):
                    fresh[b.start_ns] = b
            if not fresh:
                continue
            self._write(symbol, interval, [fresh[s] for s in sorted(fresh)])
            for s, b in fresh.items():
                idx[s] = _row(b)
            written += len(fresh)
            if len(self.parts(symbol, interval)) > self.compact_after_parts:
                self.compact(symbol, interval)
        return written

    def _write(self, symbol: str, interval: str, bars: Sequence[Bar]) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        d = self._dir(symbol, interval)
        d.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "start_ns": pa.array([b.start_ns for b in bars], pa.int64()),
                "ts_event": pa.array([b.ts_event for b in bars], pa.int64()),
                "open": pa.array([b.open for b in bars], pa.float64()),
                "high": pa.array([b.high for b in bars], pa.float64()),
                "low": pa.array([b.low for b in bars], pa.float64()),
                "close": pa.array([b.close for b in bars], pa.float64()),
                "volume": pa.array([b.volume for b in bars], pa.float64()),
                "ticks": pa.array([b.ticks for b in bars], pa.int64()),
                "venue": pa.array([b.venue for b in bars], pa.string()),
            }
        )
        digest = hashlib.blake2b(repr([(b.start_ns, _row(b)) for b in bars]).encode(), digest_size=6).hexdigest()
        final = d / f"part-{time.time_ns():020d}-{digest}.parquet"
        tmp = d / f".tmp-{final.name}"
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        return final

    def compact(self, symbol: str, interval: str) -> None:
        """Rewrite a series into one part (written before the old parts are removed)."""
        old = self.parts(symbol, interval)
        bars = self.load(symbol, interval)
        if len(old) <= 1 or not bars:
            return
        self._write(symbol, interval, bars)
        for p in old:
            p.unlink(missing_ok=True)
        log.info("history compacted", symbol=symbol, interval=interval, parts=len(old), bars=len(bars))


@dataclass(slots=True)
class Merge:
    bars: list[Bar]
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (from ns, to ns) not covered anywhere


def merge_bars(history: Sequence[Bar], live: Sequence[Bar], *, window_start_ns: int) -> Merge:
    """One bar per start (live wins), sorted; a gap if history ends before the live window."""
    by_start: dict[int, Bar] = {b.start_ns: b for b in history}
    by_start.update({b.start_ns: b for b in live})
    bars = [by_start[s] for s in sorted(by_start)]
    gaps: list[tuple[int, int]] = []
    if history and live:
        end = max(b.ts_event for b in history)
        first_live = min(b.start_ns for b in live)
        if end < window_start_ns and end < first_live:
            gaps.append((end, min(window_start_ns, first_live)))
    return Merge(bars, gaps)


async def warm_up(
    store: HistoryStore,
    symbol: str,
    interval: str,
    fetch: Fetch | None,
    *,
    days: int = 30,
    now_ns: int | None = None,
) -> Merge:
    """Load the store, fetch the last ``days`` from the live source, merge, store what was new."""
    now = time.time_ns() if now_ns is None else now_ns
    history = store.load(symbol, interval)
    live = await fetch(symbol, days) if fetch is not None else []
    m = merge_bars(history, live, window_start_ns=now - days * DAY_NS)
    added = store.append(live)
    log.info("history warm-up", symbol=symbol, interval=interval, stored=len(history), live=len(live),
             new=added, gaps=len(m.gaps))  # fmt: skip
    return m


def _fmt(ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="seconds")


class HistoryFeed:
    """Warm-up from the store (+ the live source's last ``days``), then live with self-healing."""

    def __init__(
        self,
        live: Feed | None,
        store: HistoryStore,
        series: Sequence[tuple[str, str]],
        *,
        fetch: Fetch | None = None,
        days: int = 30,
        chunk: int = 1000,
        clock: Callable[[], int] = time.time_ns,
        name: str | None = None,
    ) -> None:
        self.live = live
        self.batch_safe = live is None or batch_safe(live)  # stored bars replay the same
        self.store = store
        self.series = list(series)
        self.fetch = fetch
        self.days = days
        self.chunk = chunk
        self.clock = clock
        self.name = name or (live.name if live is not None else "history")
        self.published: dict[tuple[str, str, int], Row] = {}
        self.healed = 0
        self.gaps: list[tuple[str, int, int]] = []
        self._window = 0

    def _gap_alerts(self, symbol: str, gaps: list[tuple[int, int]]) -> list[Event]:
        out: list[Event] = []
        for a, b in gaps:
            self.gaps.append((symbol, a, b))
            out.append(
                make_alert(
                    self.name,
                    "history_gap",
                    f"{symbol}: no bars between {_fmt(a)} and {_fmt(b)} (store ends before the live window)",
                    severity="warning",
                    symbol=symbol,
                )
            )
        return out

    def _unpublished(self, bars: Iterable[Bar]) -> list[Bar]:
        out = []
        for b in bars:
            key = (b.symbol, b.interval, b.start_ns)
            if self.published.get(key) != _row(b):
                self.published[key] = _row(b)
                out.append(b)
        return out

    async def stream(self) -> AsyncIterator[list[Event]]:
        now = self.clock()
        self._window = now - self.days * DAY_NS
        last_stored: dict[tuple[str, str], int] = {}
        for symbol, interval in self.series:
            interval_ns(interval)
            m = await warm_up(self.store, symbol, interval, self.fetch, days=self.days, now_ns=now)
            if m.bars and self.fetch is None:
                last_stored[(symbol, interval)] = max(b.ts_event for b in m.bars)
            bars: list[Event] = list(self._unpublished(m.bars))
            for i in range(0, len(bars), self.chunk):
                yield bars[i : i + self.chunk]
            alerts = self._gap_alerts(symbol, m.gaps)
            if alerts:
                yield alerts
        if self.live is None:
            return
        async for events in self.live.stream():
            live_bars = [e for e in events if isinstance(e, Bar)]
            if not live_bars:
                yield list(events)
                continue
            self.healed += self.store.append(live_bars)
            out: list[Event] = []
            fresh = {id(b) for b in self._unpublished(live_bars)}
            for e in events:
                if isinstance(e, Bar):
                    end = last_stored.pop((e.symbol, e.interval), None)
                    if end is not None and end < self._window and end < e.start_ns:
                        out += self._gap_alerts(e.symbol, [(end, min(self._window, e.start_ns))])
                    if id(e) not in fresh:
                        continue
                out.append(e)
            if out:
                yield out


def store_from_config(cfg: Any) -> HistoryStore:
    """A store from ``feeds.history`` (``HistoryConfig``)."""
    return HistoryStore(Path(cfg.store_dir), compact_after_parts=cfg.compact_after_parts)
