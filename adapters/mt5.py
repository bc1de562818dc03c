"""MetaTrader 5 tick feed: the pull loop done right.

* ``initialize`` (with login, password, server) once; ``login`` again only when the terminal
  reports another account. A lost terminal (``terminal_info()`` is ``None`` or an IPC error) is
  shut down and re-initialised with exponential backoff.
* ``symbol_select(symbol, True)`` for every symbol, then ``copy_ticks_from`` with a
  timezone-aware UTC ``datetime`` and ``COPY_TICKS_ALL``. ``copy_ticks_range`` fills a second
  that holds more ticks than one ``batch``.
* Incremental, with no gap and no duplicate: a per-symbol cursor ``(time_msc, n)`` remembers the
  newest millisecond published and how many ticks of that millisecond were published. The next
  poll asks from that millisecond's second again (the terminal resolves ``date_from`` to whole
  seconds) and skips what it has already seen, so several ticks in one millisecond arriving in
  different polls are neither lost nor repeated. ``seq`` is the tick's index within its
  millisecond; ids derive from (venue, account, symbol, time, seq), so a restarted feed
  republishes identical ids. :func:`resume_cursors` rebuilds the cursors from the last tick on
  each subject in JetStream, so a restart continues exactly where the stream ends.
* Every tick field is kept: bid, ask, last, volume, volume_real, flags, time_msc (as ts_event).
  MT5 stamps ticks in the broker's server time; ``server_time_offset_s`` converts to UTC.
* Warm-up: once connected, before the first tick, the completed ``bar_interval`` bars of the last
  ``warmup_days`` (``copy_rates_range``; server time -> UTC), as IBKR's feed does with its
  historical bars; the history store (when enabled) merges and keeps them.
* Heartbeat every ``heartbeat_s`` with the lag (now - newest tick) and ``stale``/``connected``.
* Alerts: ``login_failed`` (initialize/login refused), ``terminal_disconnected``
  (``terminal_info().connected`` is false, or the terminal is gone), ``no_ticks`` (no tick for
  ``no_tick_alert_s`` while the symbol is in its trading session; a closed market, by the
  session table or ``trade_mode == SYMBOL_TRADE_MODE_DISABLED``, raises nothing). Each is resolved
  by an ``info`` alert with ``resolved=True`` when it is over.

The MetaTrader5 package exists only for Windows and keeps one terminal connection per process,
so one process runs one terminal; two accounts (e.g. a raw-data and an orders account) run as two
processes with venues ``mt5-<name>`` and therefore separate subjects. Calls into the terminal are
blocking IPC; they run on one dedicated worker thread per feed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog

from tapeline.adapters.alerts import AlertLatch, HeartbeatClock
from tapeline.adapters.config import MT5_TIMEFRAMES, Mt5TerminalConfig
from tapeline.adapters.sessions import parse_session
from tapeline.schemas.events import Bar, Event, Tick
from tapeline.schemas.ids import bar_id, tick_id
from tapeline.schemas.intervals import interval_ns

log = structlog.get_logger("tapeline.feed")
T = TypeVar("T")

# terminal IPC failures (last_error codes): the terminal is gone, re-initialise
_IPC_ERRORS = {-10000, -10001, -10002, -10003, -10004, -10005}
_AUTH_FAILED = -6
SYMBOL_TRADE_MODE_DISABLED = 0


class Mt5Unavailable(RuntimeError):
    """The MetaTrader5 package cannot be used here."""


def load_mt5_module() -> Any:
    """Import MetaTrader5 or explain why it cannot be used."""
    try:
        import MetaTrader5  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise Mt5Unavailable(
            "the MetaTrader5 package is not installed. It exists only for Windows (64-bit Python) "
            "and needs a running MetaTrader 5 terminal: on Windows run `pip install MetaTrader5` "
            "(or install tapeline there, which pulls it in via its platform marker). On Linux/macOS, "
            "run the MT5 feed on a Windows host that publishes to the same NATS, or use `tapeline feed ibkr|files|sim`."
        ) from None
    return MetaTrader5


# ------------------------------------------------------------------ cursors


@dataclass(frozen=True, slots=True)
class TickCursor:
    """Newest published millisecond (terminal time, ms) and how many ticks of it were published."""

    msc: int
    count: int


class StoredCursors(dict[str, TickCursor]):
    """Cursors read from the stream (:func:`resume_cursors`), not made by hand: a feed started from
    them continues after the ticks stored, never sends one again, and so may batch its bursts."""


async def resume_cursors(
    nc: Any, prefix: str, venue: str, symbols: list[str], *, server_time_offset_s: int = 0
) -> StoredCursors:
    """Cursors from the last tick stored on each symbol's subject (none for a symbol with none)."""
    import base64

    from tapeline.bus.jetstream import JetStreamApi, JetStreamError
    from tapeline.schemas.codec import decode
    from tapeline.schemas.subjects import MD

    api = JetStreamApi(nc)
    out = StoredCursors()
    for sym in symbols:
        subject = Tick.subject_pattern(prefix, venue=venue, symbol=sym)
        try:
            reply = await api.call(f"STREAM.MSG.GET.{MD.stream(prefix)}", {"last_by_subj": subject})
        except JetStreamError:
            continue  # nothing stored for this symbol yet
        data = base64.b64decode(reply["message"].get("data") or b"")
        ticks = [e for e in decode(data).events if isinstance(e, Tick)]
        if ticks:
            t = max(ticks, key=lambda x: (x.ts_event, x.seq))
            out[sym] = TickCursor(t.ts_event // 1_000_000 + server_time_offset_s * 1000, t.seq + 1)
    return out


# ------------------------------------------------------------------ the feed


class Mt5Feed:
    """One MT5 terminal's ticks, heartbeats and alerts (the feed protocol).

    ``mt5``: the MetaTrader5 module, or a stand-in with the same functions (tests inject one);
    ``None`` imports the real one at start and fails with a clear message where it cannot exist.
    ``password``: defaults to the environment variable ``cfg.password_var``; never logged.
    ``resume``: cursors from :func:`resume_cursors`; symbols without one start at now - backfill_s.
    """

    def __init__(
        self,
        cfg: Mt5TerminalConfig,
        *,
        mt5: Any = None,
        password: str | None = None,
        resume: Mapping[str, TickCursor] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.venue
        self.venue = cfg.venue
        self.account = str(cfg.login) if cfg.login else ""
        self._mt5 = mt5
        self._password = password if password is not None else os.environ.get(cfg.password_var, "")
        self.cursors: dict[str, TickCursor] = dict(resume or {})
        # resumed after what the stream holds, it never sends a stored tick again: its bursts may batch
        self.batch_safe = isinstance(resume, StoredCursors)
        self.clock = clock
        self.sessions = {s: parse_session(cfg.sessions.get(s, cfg.default_session)) for s in cfg.symbols}
        self.latch = AlertLatch(self.name, clock)
        self.hb = HeartbeatClock(self.name, cfg.heartbeat_s, clock)
        self.offset_ms = cfg.server_time_offset_s * 1000
        self.initialized = False
        self.connected = False
        self.last_tick_ns: dict[str, int] = {}  # newest tick time per symbol (UTC ns)
        self.last_rx_ns: dict[str, int] = {}  # when (our clock) ticks last arrived per symbol
        self.started_ns = 0
        self.published = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mt5-{cfg.name}")
        self._backoff = cfg.reconnect_initial_s
        self._retry_at = 0
        self._warmed = cfg.warmup_days == 0

    def __repr__(self) -> str:
        return f"Mt5Feed(venue={self.venue!r}, login={self.cfg.login}, server={self.cfg.server!r})"

    async def _call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kw))

    def _error(self) -> tuple[int, str]:
        err = self._mt5.last_error()
        return int(err[0]), str(err[1])

    # -------------------------------------------------------------- connection

    async def _connect(self) -> list[Event]:
        """initialize (+ login) once; alerts on failure. Sets ``initialized``."""
        m = self._mt5
        kw: dict[str, Any] = {"timeout": self.cfg.timeout_ms, "portable": self.cfg.portable}
        if self.cfg.path:
            kw["path"] = self.cfg.path
        if self.cfg.login:
            kw |= {"login": self.cfg.login, "password": self._password, "server": self.cfg.server}
        ok = await self._call(m.initialize, **kw)
        if not ok:
            code, text = self._error()
            await self._call(m.shutdown)
            kind = "login_failed" if code == _AUTH_FAILED else "terminal_disconnected"
            log.error("mt5 initialize failed", feed=self.name, code=code, error=text, login=self.cfg.login)
            return list(self.latch.raise_(kind, f"MT5 initialize failed for login {self.cfg.login}: {code} {text}"))
        if self.cfg.login:
            acc = await self._call(m.account_info)
            if acc is None or int(getattr(acc, "login", 0)) != self.cfg.login:
                ok = await self._call(
                    m.login,
                    self.cfg.login,
                    password=self._password,
                    server=self.cfg.server,
                    timeout=self.cfg.timeout_ms,
                )
                if not ok:
                    code, text = self._error()
                    await self._call(m.shutdown)
                    log.error("mt5 login failed", feed=self.name, code=code, error=text, login=self.cfg.login)
                    return list(self.latch.raise_("login_failed", f"MT5 login {self.cfg.login} failed: {code} {text}"))
        out: list[Event] = list(self.latch.resolve("login_failed", "MT5 login succeeded"))
        for sym in self.cfg.symbols:
            if not await self._call(m.symbol_select, sym, True):
                code, text = self._error()
                out += self.latch.raise_(
                    "symbol_unavailable", f"symbol_select({sym}) failed: {code} {text}", severity="warning", symbol=sym
                )
        self.initialized = True
        self._backoff = self.cfg.reconnect_initial_s
        log.info("mt5 connected", feed=self.name, login=self.cfg.login, symbols=len(self.cfg.symbols))
        return out

    async def _drop(self) -> None:
        """Forget the terminal after IPC loss; the next loop re-initialises after a backoff."""
        if self.initialized:
            await self._call(self._mt5.shutdown)
        self.initialized = False
        self.connected = False
        self._retry_at = self.clock() + int(self._backoff * 1e9)
        self._backoff = min(self._backoff * 2, self.cfg.reconnect_max_s)

    async def _check_terminal(self) -> list[Event]:
        info = await self._call(self._mt5.terminal_info)
        if info is None:
            code, text = self._error()
            await self._drop()
            return self.latch.raise_("terminal_disconnected", f"MT5 terminal lost: {code} {text}")
        if not bool(info.connected):
            self.connected = False
            return self.latch.raise_(
                "terminal_disconnected", "MT5 terminal is not connected to the trade server (terminal_info().connected)"
            )
        self.connected = True
        return self.latch.resolve("terminal_disconnected", "MT5 terminal connected again")

    # -------------------------------------------------------------- ticks

    def _start_cursor(self, sym: str) -> TickCursor:
        cur = self.cursors.get(sym)
        if cur is None:
            start_ms = (self.clock() - int(self.cfg.backfill_s * 1e9)) // 1_000_000
            cur = TickCursor(start_ms + self.offset_ms, 0)
            self.cursors[sym] = cur
        return cur

    async def _fetch(self, sym: str, cur: TickCursor) -> Any:
        m = self._mt5
        from_dt = datetime.fromtimestamp(cur.msc / 1000, UTC)
        arr = await self._call(m.copy_ticks_from, sym, from_dt, self.cfg.batch, m.COPY_TICKS_ALL)
        if arr is not None and len(arr) >= self.cfg.batch and int(arr[-1]["time_msc"]) // 1000 == cur.msc // 1000:
            # one second holds more than a batch: take that whole second by range
            sec = cur.msc // 1000
            arr = await self._call(
                m.copy_ticks_range,
                sym,
                datetime.fromtimestamp(sec, UTC),
                datetime.fromtimestamp(sec + 1, UTC),
                m.COPY_TICKS_ALL,
            )
        return arr

    def _convert(self, sym: str, cur: TickCursor, arr: Any) -> tuple[list[Tick], TickCursor]:
        """New ticks after ``cur`` (skipping the ones already seen) and the advanced cursor."""
        out: list[Tick] = []
        now = time.time_ns()
        msc_col = arr["time_msc"]
        prev_msc, seq = cur.msc, cur.count - 1
        seen_at_cursor = 0
        for i in range(len(arr)):
            msc = int(msc_col[i])
            if msc < cur.msc:
                continue
            if msc == cur.msc:
                seen_at_cursor += 1
                if seen_at_cursor <= cur.count:
                    continue
            if msc == prev_msc:
                seq += 1
            else:
                prev_msc, seq = msc, 0
            r = arr[i]
            ts = (msc - self.offset_ms) * 1_000_000
            out.append(
                Tick(
                    event_id=tick_id(self.venue, sym, ts, seq, self.account),
                    ts_event=ts,
                    ts_init=now,
                    source=self.venue,
                    venue=self.venue,
                    symbol=sym,
                    account=self.account,
                    bid=float(r["bid"]),
                    ask=float(r["ask"]),
                    last=float(r["last"]),
                    volume=float(r["volume"]),
                    volume_real=float(r["volume_real"]),
                    flags=int(r["flags"]),
                    seq=seq,
                )
            )
        if not out:
            return out, cur
        return out, TickCursor(prev_msc, seq + 1)

    async def _poll_symbol(self, sym: str) -> tuple[list[Event], bool]:
        """New ticks of one symbol; False if the terminal was lost."""
        events: list[Event] = []
        for _ in range(1000):  # drain a backlog, batch by batch
            cur = self._start_cursor(sym)
            arr = await self._fetch(sym, cur)
            if arr is None:
                code, text = self._error()
                if code in _IPC_ERRORS:
                    await self._drop()
                    events += self.latch.raise_("terminal_disconnected", f"MT5 terminal lost: {code} {text}")
                    return events, False
                log.warning("copy_ticks_from failed", feed=self.name, symbol=sym, code=code, error=text)
                return events, True
            ticks, new = self._convert(sym, cur, arr)
            self.cursors[sym] = new
            if ticks:
                events.extend(ticks)
                self.last_tick_ns[sym] = ticks[-1].ts_event
                self.last_rx_ns[sym] = self.clock()
                self.hb.saw(len(ticks), ticks[-1].ts_event)
            if len(arr) < self.cfg.batch or not ticks:
                break
        return events, True

    async def fetch_bars(self, sym: str, days: int) -> list[Bar]:
        """Completed ``bar_interval`` bars of the last ``days`` (``copy_rates_range``): the warm-up.

        Prices as the terminal builds its bars (bid for quote-driven symbols); volume is
        ``real_volume`` where the broker reports it, else ``tick_volume``; server time -> UTC.
        """
        m = self._mt5
        iv = self.cfg.bar_interval
        step = interval_ns(iv)
        now = self.clock()
        t_to = now + self.offset_ms * 1_000_000
        t_from = t_to - days * 86_400_000_000_000
        rates = await self._call(
            m.copy_rates_range,
            sym,
            MT5_TIMEFRAMES[iv],
            datetime.fromtimestamp(t_from // 1_000_000_000, UTC),
            datetime.fromtimestamp(t_to // 1_000_000_000, UTC),
        )
        if rates is None:
            code, text = self._error()
            log.warning("copy_rates_range failed", feed=self.name, symbol=sym, code=code, error=text)
            return []
        out: list[Bar] = []
        for r in rates:
            start = (int(r["time"]) - self.cfg.server_time_offset_s) * 1_000_000_000
            if start + step > now:  # the bar in progress: the live ticks make it
                continue
            real = float(r["real_volume"])
            out.append(
                Bar(
                    event_id=bar_id(sym, iv, start, start + step),
                    ts_event=start + step,
                    ts_init=now,
                    source=self.venue,
                    symbol=sym,
                    interval=iv,
                    start_ns=start,
                    open=float(r["open"]),
                    high=float(r["high"]),
                    low=float(r["low"]),
                    close=float(r["close"]),
                    volume=real if real > 0 else float(r["tick_volume"]),
                    ticks=int(r["tick_volume"]),
                    venue=self.venue,
                )
            )
        return out

    async def _warm_up(self) -> list[Event]:
        self._warmed = True
        out: list[Event] = []
        for sym in self.cfg.symbols:
            bars = await self.fetch_bars(sym, self.cfg.warmup_days)
            log.info("mt5 warm-up bars", feed=self.name, symbol=sym, bars=len(bars))
            out += bars
        return out

    async def _session_checks(self) -> list[Event]:
        out: list[Event] = []
        now = self.clock()
        limit = int(self.cfg.no_tick_alert_s * 1e9)
        for sym in self.cfg.symbols:
            open_ = self.sessions[sym].is_open(now)
            if open_:
                info = await self._call(self._mt5.symbol_info, sym)
                if info is not None and int(getattr(info, "trade_mode", 4)) == SYMBOL_TRADE_MODE_DISABLED:
                    open_ = False
            if not open_:
                out += self.latch.resolve("no_ticks", f"{sym}: market closed", symbol=sym)
                continue
            last = max(self.last_rx_ns.get(sym, 0), self.started_ns)
            if now - last > limit:
                out += self.latch.raise_(
                    "no_ticks",
                    f"{sym}: no tick for {(now - last) / 1e9:.0f}s during its trading session",
                    severity="warning",
                    symbol=sym,
                )
            else:
                out += self.latch.resolve("no_ticks", f"{sym}: ticks again", symbol=sym)
        return out

    # -------------------------------------------------------------- loop

    async def stream(self) -> AsyncIterator[list[Event]]:
        if self._mt5 is None:
            self._mt5 = load_mt5_module()
        self.started_ns = self.clock()
        try:
            while True:
                events: list[Event] = []
                if not self.initialized and self.clock() >= self._retry_at:
                    events += await self._connect()
                    if not self.initialized:
                        self._retry_at = self.clock() + int(self._backoff * 1e9)
                        self._backoff = min(self._backoff * 2, self.cfg.reconnect_max_s)
                if self.initialized:
                    events += await self._check_terminal()
                if self.initialized and self.connected and not self._warmed:
                    events += await self._warm_up()
                    if events:  # the warm-up bars before any tick
                        self.published += len(events)
                        yield events
                        events = []
                if self.initialized and self.connected:
                    for sym in self.cfg.symbols:
                        got, alive = await self._poll_symbol(sym)
                        events += got
                        if not alive:
                            break
                    if self.initialized:
                        events += await self._session_checks()
                if self.hb.due():
                    stale = not (self.initialized and self.connected)
                    events.append(self.hb.beat(connected=not stale, stale=stale, symbols=len(self.cfg.symbols)))
                if events:
                    self.published += len(events)
                    yield events
                await asyncio.sleep(min(self.cfg.poll_interval_s, self.hb.seconds_to_next() + 0.001))
        finally:
            if self.initialized:
                await self._call(self._mt5.shutdown)
            self._pool.shutdown(wait=False)
