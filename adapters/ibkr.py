"""Interactive Brokers feed (ib_async, the maintained ib_insync API; ib_insync as a fallback).

* Connect with client-id rotation: the configured ``client_id`` first; if TWS answers error 326
  (id already in use) try ``client_id_rotation_start`` (99), 100, 101, ... up to
  ``client_id_max_tries`` ids.
* Warm-up: ``reqHistoricalDataAsync`` bars (``warmup_days`` x ``bar_size``) for every contract,
  published as :class:`Bar` events before live data (and usable by the history store).
* Live: ``reqMktData(contract, generic_ticks)``; the default generic list ``233`` (RTVolume) adds
  last trade price, size, time and the day's volume. Each ``pendingTickersEvent`` update becomes
  :class:`Tick` events: one per trade (``last`` = price, ``volume`` = size) carrying the current
  quote, or one quote tick when only bid/ask changed. Trades are counted from RTVolume ticks
  (type 48) when 233 is requested, from RT trade volume (77) with 375, else from last-price ticks
  (4), so a trade is never counted twice.
* Volume x100: TWS reports US-equity sizes and volumes in round lots of 100 shares. Each
  contract's ``volume_multiplier`` (default 100 for ``STK`` in ``USD``, 1 otherwise) scales trade
  sizes and historical bar volumes to shares; set it to 1 for an account/API version that already
  reports shares.
* Connectivity: error 1100 (TWS lost IB) marks data stale and raises ``broker_disconnected``;
  1101 (restored, data lost) and 1102 (restored, data kept) resolve it and resubscribe every
  contract (cancel + request; harmless after 1102, vital after 1101). 2103/2105/2157 (a data farm
  is down) raise ``data_farm_disconnected``, 2104/2106/2158 resolve it. A dropped socket
  (``disconnectedEvent``) raises ``broker_disconnected`` and reconnects with exponential backoff
  (``reconnect_initial_s`` doubling to ``reconnect_max_s``), then resubscribes.
* Heartbeat every ``heartbeat_s``; ``stale`` while disconnected or after 1100.

The IB object is injectable (tests drive the feed with a stand-in firing the same events and
error codes); by default ``ib_async.IB()`` is created lazily at start.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from typing import Any

import structlog

from tapeline.adapters.alerts import AlertLatch, HeartbeatClock
from tapeline.adapters.config import IbkrConfig, IbkrContractConfig
from tapeline.schemas.events import Bar, Event, Heartbeat, Tick
from tapeline.schemas.ids import bar_id, tick_id
from tapeline.schemas.intervals import interval_ns

log = structlog.get_logger("tapeline.feed")

CLIENT_ID_IN_USE = 326
CONNECTIVITY_LOST = 1100
RESTORED_DATA_LOST = 1101
RESTORED_DATA_KEPT = 1102
FARM_DOWN = {2103, 2105, 2157}
FARM_OK = {2104, 2106, 2158}
_BID_TYPES = {0, 1, 66, 69}
_ASK_TYPES = {2, 3, 67, 70}
# MT5-compatible flag bits, so consumers read one convention
FLAG_BID, FLAG_ASK, FLAG_LAST, FLAG_VOLUME = 2, 4, 8, 16


def load_ib_module() -> Any:
    """``ib_async``, or ``ib_insync`` where only the older package is installed."""
    try:
        import ib_async

        return ib_async
    except ImportError:
        try:
            import ib_insync

            return ib_insync
        except ImportError:
            raise RuntimeError("neither ib_async nor ib_insync is installed: `pip install ib_async`") from None


def _ns(t: datetime | date | None, default: int) -> int:
    if t is None:
        return default
    if isinstance(t, datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        return int(t.timestamp() * 1_000_000) * 1_000
    return int(datetime(t.year, t.month, t.day, tzinfo=UTC).timestamp()) * 1_000_000_000


def _ok(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x)) and x > 0


class IbkrFeed:
    """Ticks and warm-up bars from TWS / IB Gateway (the feed protocol)."""

    def __init__(
        self,
        cfg: IbkrConfig,
        *,
        ib: Any = None,
        warmup: bool = True,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.venue
        self.venue = cfg.venue
        self.ib = ib
        self.warmup = warmup
        self.clock = clock
        self.latch = AlertLatch(self.name, clock)
        self.hb = HeartbeatClock(self.name, cfg.heartbeat_s, clock)
        self.client_id: int | None = None
        self.connected = False
        self.stale = True
        self.resubscriptions = 0
        self.reconnects = 0
        self._queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        self._contracts: list[tuple[IbkrContractConfig, Any]] = []
        self._by_key: dict[Any, IbkrContractConfig] = {}
        self._seq: dict[str, tuple[int, int]] = {}  # symbol -> (ms, last seq)
        self._errors: list[tuple[int, int, str]] = []
        self._lost = asyncio.Event()
        self._closing = False
        self._subscribed = False
        gt = {g.strip() for g in cfg.generic_ticks.split(",") if g.strip()}
        self._trade_types = {48} if "233" in gt else {77} if "375" in gt else {4, 68}

    # -------------------------------------------------------------- contracts

    def _make_contract(self, c: IbkrContractConfig) -> Any:
        mod = load_ib_module()
        kw: dict[str, Any] = {
            "symbol": c.symbol,
            "secType": c.sec_type,
            "exchange": c.exchange,
            "currency": c.currency,
        }
        if c.primary_exchange:
            kw["primaryExchange"] = c.primary_exchange
        if c.local_symbol:
            kw["localSymbol"] = c.local_symbol
        return mod.Contract(**kw)

    def _cfg_of(self, contract: Any) -> IbkrContractConfig | None:
        key = getattr(contract, "conId", 0) or None
        if key and key in self._by_key:
            return self._by_key[key]
        return self._by_key.get(getattr(contract, "symbol", None))

    # -------------------------------------------------------------- events from IB

    def _on_error(self, req_id: int, code: int, text: str, contract: Any = None, *_: Any) -> None:
        self._errors.append((req_id, code, text))
        out: list[Event] = []
        if code == CONNECTIVITY_LOST:
            self.stale = True
            out += self.latch.raise_("broker_disconnected", f"IB error 1100: {text}")
        elif code in (RESTORED_DATA_LOST, RESTORED_DATA_KEPT):
            self.stale = not self.connected
            out += self.latch.resolve("broker_disconnected", f"IB error {code}: {text}")
            self._subscribe()
        elif code in FARM_DOWN:
            out += self.latch.raise_("data_farm_disconnected", f"IB {code}: {text}", severity="warning")
        elif code in FARM_OK:
            out += self.latch.resolve("data_farm_disconnected", f"IB {code}: {text}")
        elif code in (354, 10167, 10197):
            sym = getattr(contract, "symbol", "") or ""
            out += self.latch.raise_("market_data_unavailable", f"IB {code}: {text}", severity="warning", symbol=sym)
        elif code != CLIENT_ID_IN_USE:
            log.info("ib message", feed=self.name, req_id=req_id, code=code, text=text)
        if out:
            self._queue.put_nowait(out)

    def _on_disconnected(self) -> None:
        if self._closing:
            return
        self.connected = False
        self.stale = True
        self._lost.set()
        self._queue.put_nowait(list(self.latch.raise_("broker_disconnected", "connection to TWS/Gateway lost")))

    def _on_tickers(self, tickers: Any) -> None:
        out: list[Event] = []
        for t in tickers:
            out += self.ticks_from(t)
        if out:
            self._queue.put_nowait(out)

    def _next_seq(self, symbol: str, ts: int) -> int:
        ms = ts // 1_000_000
        last_ms, seq = self._seq.get(symbol, (-1, -1))
        seq = seq + 1 if ms == last_ms else 0
        self._seq[symbol] = (ms, seq)
        return seq

    def ticks_from(self, ticker: Any) -> list[Tick]:
        """Tick events of one ticker update (see module docstring)."""
        c = self._cfg_of(ticker.contract)
        if c is None:
            return []
        mult = c.multiplier
        now = time.time_ns()
        default_ts = _ns(getattr(ticker, "time", None), now)
        bid = float(ticker.bid) if _ok(ticker.bid) else 0.0
        ask = float(ticker.ask) if _ok(ticker.ask) else 0.0
        quote_flags = 0
        trades: list[tuple[int, float, float]] = []
        for td in getattr(ticker, "ticks", None) or []:
            if td.tickType in _BID_TYPES:
                quote_flags |= FLAG_BID
            elif td.tickType in _ASK_TYPES:
                quote_flags |= FLAG_ASK
            elif td.tickType in self._trade_types and _ok(td.price) and _ok(td.size):
                trades.append((_ns(td.time, default_ts), float(td.price), float(td.size) * mult))
        out: list[Tick] = []

        def tick(ts: int, last: float, vol: float, flags: int) -> Tick:
            seq = self._next_seq(c.symbol, ts)
            return Tick(
                event_id=tick_id(self.venue, c.symbol, ts, seq),
                ts_event=ts,
                ts_init=now,
                source=self.venue,
                venue=self.venue,
                symbol=c.symbol,
                bid=bid,
                ask=ask,
                last=last,
                volume=vol,
                volume_real=vol,
                flags=flags,
                seq=seq,
            )

        for i, (ts, price, size) in enumerate(trades):
            out.append(tick(ts, price, size, FLAG_LAST | FLAG_VOLUME | (quote_flags if i == 0 else 0)))
        if not trades and quote_flags:
            last = float(ticker.last) if _ok(ticker.last) else 0.0
            out.append(tick(default_ts, last, 0.0, quote_flags))
        if out:
            self.hb.saw(len(out), max(t.ts_event for t in out))
        return out

    # -------------------------------------------------------------- connection

    def _client_ids(self) -> list[int]:
        ids = [self.cfg.client_id]
        ids += [self.cfg.client_id_rotation_start + i for i in range(self.cfg.client_id_max_tries)]
        return list(dict.fromkeys(ids))

    async def connect(self) -> int:
        """Connect, rotating the client id on error 326. Returns the id in use."""
        ib = self.ib
        last: BaseException | None = None
        for cid in self._client_ids():
            mark = len(self._errors)
            try:
                await ib.connectAsync(
                    self.cfg.host,
                    self.cfg.port,
                    clientId=cid,
                    timeout=self.cfg.connect_timeout_s,
                    readonly=self.cfg.readonly,
                    account=self.cfg.account,
                )
            except (ConnectionError, OSError, TimeoutError) as e:
                last = e
                in_use = any(code == CLIENT_ID_IN_USE for _, code, _ in self._errors[mark:])
                self._closing = True
                try:
                    ib.disconnect()
                finally:
                    self._closing = False
                if in_use:
                    log.warning("ib client id in use, rotating", feed=self.name, client_id=cid)
                    continue
                raise
            self.client_id = cid
            self.connected = True
            if self.cfg.market_data_type != 1:
                ib.reqMarketDataType(self.cfg.market_data_type)
            log.info("ib connected", feed=self.name, host=self.cfg.host, port=self.cfg.port, client_id=cid)
            return cid
        raise ConnectionError(f"every client id tried is in use ({self._client_ids()}): {last}")

    async def _qualify(self) -> None:
        contracts = [self._make_contract(c) for c in self.cfg.contracts]
        try:
            qualified = await self.ib.qualifyContractsAsync(*contracts)
        except Exception as e:  # qualification is best effort; unqualified contracts still subscribe
            log.warning("ib qualify failed", feed=self.name, error=repr(e))
            qualified = contracts
        by_symbol = {getattr(q, "symbol", None): q for q in qualified if q is not None}
        self._contracts = []
        self._by_key = {}
        for c, raw in zip(self.cfg.contracts, contracts, strict=True):
            q = by_symbol.get(c.symbol, raw)
            self._contracts.append((c, q))
            self._by_key[c.symbol] = c
            if getattr(q, "conId", 0):
                self._by_key[q.conId] = c

    def _subscribe(self) -> None:
        """Request market data for every contract; cancel first if we had subscribed before."""
        if not self.connected:
            return
        again = self._subscribed
        for _c, contract in self._contracts:
            if again:
                try:
                    self.ib.cancelMktData(contract)
                except Exception as e:  # an unknown subscription is fine: we request it anew
                    log.debug("cancelMktData failed", error=repr(e))
            self.ib.reqMktData(contract, self.cfg.generic_ticks, False, False)
        self._subscribed = True
        if again:
            self.resubscriptions += 1
            log.info("ib resubscribed", feed=self.name, contracts=len(self._contracts))

    async def fetch_bars(self, symbol: str, days: int) -> list[Bar]:
        """Historical bars of one configured symbol for the last ``days`` (warm-up, history)."""
        found = [(c, k) for c, k in self._contracts if c.symbol == symbol]
        if not found:
            raise KeyError(f"{symbol} is not in feeds.ibkr.contracts")
        c, contract = found[0]
        step = interval_ns(self.cfg.bar_interval)
        bars = await self.ib.reqHistoricalDataAsync(
            contract,
            endDateTime="",
            durationStr=f"{days} D",
            barSizeSetting=self.cfg.bar_size,
            whatToShow=self.cfg.what_to_show,
            useRTH=self.cfg.use_rth,
            formatDate=2,
        )
        now = time.time_ns()
        out: list[Bar] = []
        for b in bars or []:
            start = _ns(b.date, 0)
            if not (_ok(b.open) and _ok(b.high) and _ok(b.low) and _ok(b.close)):
                continue
            ts = start + step
            out.append(
                Bar(
                    event_id=bar_id(c.symbol, self.cfg.bar_interval, start, ts),
                    ts_event=ts,
                    ts_init=now,
                    source=self.venue,
                    symbol=c.symbol,
                    interval=self.cfg.bar_interval,
                    start_ns=start,
                    open=float(b.open),
                    high=float(b.high),
                    low=float(b.low),
                    close=float(b.close),
                    volume=max(0.0, float(b.volume)) * c.multiplier,
                    ticks=int(getattr(b, "barCount", 0) or 0),
                    venue=self.venue,
                )
            )
        out.sort(key=lambda x: x.ts_event)
        return out

    # -------------------------------------------------------------- loop

    def _heartbeat(self) -> Heartbeat:
        return self.hb.beat(
            connected=self.connected, stale=self.stale or not self.connected, symbols=len(self.cfg.contracts)
        )

    async def _reconnect(self) -> AsyncIterator[list[Event]]:
        delay = self.cfg.reconnect_initial_s
        while True:
            if self.hb.due():
                yield [self._heartbeat()]
            try:
                await self.connect()
                break
            except (ConnectionError, OSError, TimeoutError) as e:
                log.warning("ib connect failed", feed=self.name, error=repr(e), retry_in_s=delay)
                self.stale = True
                alert = self.latch.raise_("broker_disconnected", f"cannot connect to TWS/Gateway: {type(e).__name__}")
                if alert:
                    yield list(alert)
            await asyncio.sleep(min(delay, max(0.001, self.hb.seconds_to_next())))
            delay = min(delay * 2, self.cfg.reconnect_max_s)
        self.reconnects += 1
        self._lost.clear()
        await self._qualify()
        self._subscribe()
        self.stale = False
        yield list(self.latch.resolve("broker_disconnected", f"reconnected as client {self.client_id}"))

    async def stream(self) -> AsyncIterator[list[Event]]:
        if self.ib is None:
            self.ib = load_ib_module().IB()
        ib = self.ib
        ib.errorEvent += self._on_error
        ib.disconnectedEvent += self._on_disconnected
        ib.pendingTickersEvent += self._on_tickers
        try:
            async for evs in self._reconnect():
                if evs:
                    yield evs
            if self.warmup:
                for c, _k in self._contracts:
                    bars = await self.fetch_bars(c.symbol, self.cfg.warmup_days)
                    log.info("ib warm-up bars", feed=self.name, symbol=c.symbol, bars=len(bars))
                    if bars:
                        yield list(bars)
            while True:
                if self._lost.is_set():
                    async for evs in self._reconnect():
                        if evs:
                            yield evs
                    continue
                if self.hb.due():
                    yield [self._heartbeat()]
                try:
                    events = await asyncio.wait_for(self._queue.get(), timeout=max(0.001, self.hb.seconds_to_next()))
                except TimeoutError:
                    continue
                while not self._queue.empty():
                    events += self._queue.get_nowait()
                yield events
        finally:
            ib.errorEvent -= self._on_error
            ib.disconnectedEvent -= self._on_disconnected
            ib.pendingTickersEvent -= self._on_tickers
            self._closing = True
            if ib.isConnected():
                ib.disconnect()
