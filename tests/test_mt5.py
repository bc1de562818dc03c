"""MT5 feed against a stand-in MetaTrader5 module serving real recorded ticks, into a real JetStream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from nats.aio.client import Client

from tapeline.adapters.config import Mt5TerminalConfig
from tapeline.adapters.mt5 import Mt5Feed, Mt5Unavailable, TickCursor, parse_session, resume_cursors
from tapeline.adapters.runner import batch_safe, run_feed
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.publisher import Publisher
from tapeline.schemas.events import Alert, AnyEvent, Heartbeat, Tick
from tapeline.schemas.subjects import MD, OPS
from tests.helpers import stored, wait_stored, wait_until
from tests.standins.metatrader5 import (
    TICK_DTYPE,
    MetaTrader5StandIn,
    quote_ticks_from_csv,
    trade_ticks_from_csv,
)

SECRET = "s3cret-pw-never-logged"


def real_ticks(shared_data: Path) -> dict[str, np.ndarray]:
    return {
        "US500": trade_ticks_from_csv(shared_data / "ticks" / "index-future-ticks-2015-09-23.csv"),
        "EURGBP": quote_ticks_from_csv(shared_data / "ticks" / "fx-bidask-2010-03-02.csv"),
    }


def cfg(name: str = "raw", symbols: tuple[str, ...] = ("US500", "EURGBP"), **kw: object) -> Mt5TerminalConfig:
    base: dict[str, object] = {
        "name": name, "login": 5001, "server": "Demo-Server", "symbols": list(symbols), "poll_interval_s": 0.01,
        "heartbeat_s": 0.2, "default_session": "always", "no_tick_alert_s": 3600.0, "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.2,
    }  # fmt: skip
    base.update(kw)
    return Mt5TerminalConfig(**base)  # type: ignore[arg-type]


def start_of(ticks: dict[str, np.ndarray]) -> dict[str, TickCursor]:
    return {s: TickCursor(int(a["time_msc"][0]) - 1, 0) for s, a in ticks.items()}


def ticks_of(events: list[AnyEvent], symbol: str) -> list[Tick]:
    return [e for e in events if isinstance(e, Tick) and e.symbol == symbol]


def expected(arr: np.ndarray) -> list[tuple[int, int, float, float, float, float, float, int]]:
    out, prev, seq = [], -1, 0
    for r in arr:
        msc = int(r["time_msc"])
        seq = seq + 1 if msc == prev else 0
        prev = msc
        out.append((msc * 1_000_000, seq, float(r["bid"]), float(r["ask"]), float(r["last"]), float(r["volume"]),
                    float(r["volume_real"]), int(r["flags"])))  # fmt: skip
    return out


def as_rows(ticks: list[Tick]) -> list[tuple[int, int, float, float, float, float, float, int]]:
    return [(t.ts_event, t.seq, t.bid, t.ask, t.last, t.volume, t.volume_real, t.flags) for t in ticks]


def test_stand_in_has_the_real_tick_dtype(shared_data: Path) -> None:
    a = real_ticks(shared_data)["US500"]
    assert a.dtype.names == ("time", "bid", "ask", "last", "volume", "time_msc", "flags", "volume_real")
    assert a.dtype == TICK_DTYPE and len(a) == 135


async def test_incremental_pull_no_gap_no_duplicate(
    shared_data: Path, nc: Client, publisher: Publisher, provisioned: str
) -> None:
    data = real_ticks(shared_data)
    mt5 = MetaTrader5StandIn(data, login=5001, password=SECRET, server="Demo-Server")
    feed = Mt5Feed(cfg(), mt5=mt5, password=SECRET, resume=start_of(data))
    task = asyncio.create_task(run_feed(feed, publisher))
    # release in uneven steps; 21 splits the two ticks that share 20:58:22.316 across polls
    for step in (5, 16, 1, 1, 30, 7, 75):
        mt5.release("US500", step)
        mt5.release("EURGBP", 2)
        target = mt5.visible["US500"]
        await wait_until(lambda t=target: feed.cursors["US500"].msc == int(data["US500"]["time_msc"][t - 1])
                         and feed.hb.events >= 0)  # fmt: skip
    subj = f"{provisioned}.md.tick.mt5-raw.>"
    evs = await wait_stored(nc, MD.stream(provisioned), subj, lambda e: len(e) == 145)
    task.cancel()
    us, fx = ticks_of(evs, "US500"), ticks_of(evs, "EURGBP")
    assert as_rows(us) == expected(data["US500"])
    assert as_rows(fx) == expected(data["EURGBP"])
    assert len({e.event_id for e in evs}) == 145
    assert all(t.account == "5001" and t.venue == "mt5-raw" for t in us)
    # the same-millisecond pair: seq 0 then 1, even though they arrived in different polls
    assert [(t.seq, t.last) for t in us if t.ts_event == 1443041902316 * 1_000_000] == [(0, 3068.0), (1, 3069.0)]
    # every request used a timezone-aware UTC datetime (naive ones would have returned None)
    assert mt5.date_froms and all(d.utcoffset() is not None and d.utcoffset().total_seconds() == 0
                                  for d in mt5.date_froms)  # fmt: skip
    assert mt5.calls["initialize"] == 1 and mt5.calls.get("login", 0) == 0
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_restart_mid_session_no_duplicate_no_gap(
    shared_data: Path, nc: Client, publisher: Publisher, provisioned: str
) -> None:
    data = real_ticks(shared_data)
    mt5 = MetaTrader5StandIn(data, login=5001, password=SECRET, server="Demo-Server")
    mt5.release("US500", 22)  # stop right between the two ticks of one millisecond
    subj = f"{provisioned}.md.tick.mt5-raw.US500"
    stream = MD.stream(provisioned)

    first = Mt5Feed(cfg(symbols=("US500",)), mt5=mt5, password=SECRET, resume=start_of(data))
    task = asyncio.create_task(run_feed(first, publisher))
    await wait_stored(nc, stream, subj, lambda e: len(e) == 22)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    mt5.release("US500", 200)
    cursors = await resume_cursors(nc, provisioned, "mt5-raw", ["US500"])
    assert cursors["US500"] == TickCursor(1443041902316, 1)
    second = Mt5Feed(cfg(symbols=("US500",)), mt5=mt5, password=SECRET, resume=cursors)
    task = asyncio.create_task(run_feed(second, publisher))
    await wait_stored(nc, stream, subj, lambda e: len(e) >= 135)
    seen = time.time_ns()  # then let it poll on: a beat after this, so any tick sent twice is stored
    await wait_stored(nc, OPS.stream(provisioned), f"{provisioned}.ops.heartbeat.>",
                      lambda e: any(h.ts_event > seen for h in e))  # fmt: skip
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    evs = await stored(nc, stream, subj)
    assert as_rows(ticks_of(evs, "US500")) == expected(data["US500"])  # nothing missing, nothing twice
    # resumed from the stream, it may batch its bursts (adapters.runner.batch_safe), and it did
    info = await JetStreamApi(nc).call(f"STREAM.INFO.{stream}", {"subjects_filter": subj})
    assert info["state"]["subjects"][subj] < 135

    # A restart that forgot its cursor re-sends from the start. A tick the first run stored one per
    # message has the same id, and JetStream drops it; a tick inside a batch message would be stored
    # again, which is why only a feed started from the stream's cursors batches.
    third = Mt5Feed(cfg(symbols=("US500",)), mt5=mt5, password=SECRET, resume=start_of(data))
    assert not batch_safe(first) and batch_safe(second) and not batch_safe(third)
    agen = third.stream()
    batch = await anext(agen)
    await agen.aclose()
    res = await publisher.publish([e for e in batch if isinstance(e, Tick)][:22])
    assert res.stored == 0 and res.duplicates == 22
    assert len(await stored(nc, stream, subj)) == 135


async def test_two_terminals_side_by_side(
    shared_data: Path, nc: Client, publisher: Publisher, provisioned: str
) -> None:
    data = real_ticks(shared_data)
    raw = MetaTrader5StandIn(data, login=5001, password=SECRET, server="Demo-Server")
    orders = MetaTrader5StandIn(data, login=7002, password="other", server="Demo-Server")
    raw.release_all()
    orders.release_all()
    f1 = Mt5Feed(cfg("raw"), mt5=raw, password=SECRET, resume=start_of(data))
    f2 = Mt5Feed(cfg("orders", login=7002), mt5=orders, password="other", resume=start_of(data))
    tasks = [asyncio.create_task(run_feed(f, publisher)) for f in (f1, f2)]
    stream = MD.stream(provisioned)
    a = await wait_stored(nc, stream, f"{provisioned}.md.tick.mt5-raw.>", lambda e: len(e) == 145)
    b = await wait_stored(nc, stream, f"{provisioned}.md.tick.mt5-orders.>", lambda e: len(e) == 145)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert not {e.event_id for e in a} & {e.event_id for e in b}
    assert {t.account for t in ticks_of(b, "US500")} == {"7002"}


async def test_disconnect_alert_stale_recover(
    shared_data: Path, nc: Client, publisher: Publisher, provisioned: str
) -> None:
    data = real_ticks(shared_data)
    mt5 = MetaTrader5StandIn(data, login=5001, password=SECRET, server="Demo-Server")
    mt5.release("US500", 50)
    feed = Mt5Feed(cfg(symbols=("US500",)), mt5=mt5, password=SECRET, resume=start_of(data))
    task = asyncio.create_task(run_feed(feed, publisher))
    ops, md = OPS.stream(provisioned), MD.stream(provisioned)
    await wait_stored(nc, md, f"{provisioned}.md.>", lambda e: len(e) == 50)

    # 1) the terminal loses its trade server: terminal_info().connected is False
    mt5.connected = False
    t0 = time.time_ns()
    alerts = await wait_stored(nc, ops, f"{provisioned}.ops.alert.>", lambda e: len(e) >= 1)
    a = alerts[0]
    assert isinstance(a, Alert) and a.kind == "terminal_disconnected" and not a.resolved
    hbs = await wait_stored(nc, ops, f"{provisioned}.ops.heartbeat.>",
                            lambda e: any(isinstance(h, Heartbeat) and h.stale for h in e))  # fmt: skip
    # Within two heartbeat intervals, counted in the feed's own beats (a loaded machine slows both):
    # at most the one beat already under way when the terminal dropped comes before the alert.
    assert len([h for h in hbs if isinstance(h, Heartbeat) and t0 < h.ts_event < a.ts_event]) <= 1
    stale = [h for h in hbs if isinstance(h, Heartbeat) and h.stale]
    assert stale[0].connected is False and stale[0].ts_event > t0
    mt5.release("US500", 30)  # ticks arriving while disconnected must not be lost
    mt5.connected = True
    await wait_stored(nc, ops, f"{provisioned}.ops.alert.>",
                      lambda e: any(isinstance(x, Alert) and x.resolved for x in e))  # fmt: skip

    # 2) the terminal process dies: IPC errors, shutdown, re-initialize with backoff, symbol_select again
    mt5.alive = False
    await wait_stored(nc, ops, f"{provisioned}.ops.alert.>", lambda e: len(e) >= 3)
    mt5.release("US500", 200)
    mt5.alive = True
    await wait_until(lambda: mt5.calls.get("initialize", 0) >= 2 and feed.initialized, timeout=60)
    evs = await wait_stored(nc, md, f"{provisioned}.md.>", lambda e: len(e) == 135)
    back = (await wait_stored(nc, ops, f"{provisioned}.ops.alert.>", lambda e: len(e) >= 4))[3]
    await wait_stored(nc, ops, f"{provisioned}.ops.heartbeat.>",
                      lambda e: any(h.ts_event > back.ts_event for h in e))  # a beat after recovering  # fmt: skip
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert as_rows(ticks_of(evs, "US500")) == expected(data["US500"])
    assert mt5.calls["symbol_select"] >= 2  # resubscribed after re-initialising
    all_alerts = [x for x in await stored(nc, ops, f"{provisioned}.ops.alert.>") if isinstance(x, Alert)]
    assert [(x.kind, x.resolved) for x in all_alerts] == [
        ("terminal_disconnected", False), ("terminal_disconnected", True),
        ("terminal_disconnected", False), ("terminal_disconnected", True),
    ]  # fmt: skip
    last_hb = [h for h in await stored(nc, ops, f"{provisioned}.ops.heartbeat.>") if isinstance(h, Heartbeat)][-1]
    assert not last_hb.stale and last_hb.connected and last_hb.lag_ns > 0


async def test_login_failure_alert_and_no_secret_in_events(
    shared_data: Path, nc: Client, publisher: Publisher, provisioned: str
) -> None:
    data = real_ticks(shared_data)
    mt5 = MetaTrader5StandIn(data, login=5001, password=SECRET, server="Demo-Server")
    mt5.release_all()
    feed = Mt5Feed(cfg(symbols=("EURGBP",)), mt5=mt5, password="wrong-" + SECRET, resume=start_of(data))
    task = asyncio.create_task(run_feed(feed, publisher))
    ops = OPS.stream(provisioned)
    alerts = await wait_stored(nc, ops, f"{provisioned}.ops.alert.>", lambda e: len(e) >= 1)
    assert isinstance(alerts[0], Alert) and alerts[0].kind == "login_failed" and alerts[0].severity == "critical"
    feed._password = SECRET  # the operator fixes the environment; the feed retries with backoff
    await wait_stored(nc, MD.stream(provisioned), f"{provisioned}.md.>", lambda e: len(e) == 10)
    await wait_stored(nc, ops, f"{provisioned}.ops.alert.>", lambda e: len(e) >= 2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    everything = await stored(nc, ops) + await stored(nc, MD.stream(provisioned))
    assert all(SECRET not in repr(e) for e in everything)
    assert SECRET not in repr(feed)


async def test_no_ticks_in_session_versus_closed_market(
    shared_data: Path, nc: Client, publisher: Publisher, provisioned: str
) -> None:
    data = real_ticks(shared_data)
    data["CLOSED"] = data["EURGBP"].copy()
    mt5 = MetaTrader5StandIn(data, login=5001, password=SECRET, server="Demo-Server")
    mt5.trade_mode["CLOSED"] = 0  # SYMBOL_TRADE_MODE_DISABLED
    c = cfg(symbols=("US500", "CLOSED"), no_tick_alert_s=0.3)
    feed = Mt5Feed(c, mt5=mt5, password=SECRET, resume=start_of(data))
    task = asyncio.create_task(run_feed(feed, publisher))
    ops = OPS.stream(provisioned)
    alerts = await wait_stored(nc, ops, f"{provisioned}.ops.alert.>", lambda e: len(e) >= 1)
    a = alerts[0]
    assert isinstance(a, Alert) and (a.kind, a.symbol, a.severity) == ("no_ticks", "US500", "warning")
    mt5.release("US500", 3)
    resolved = (await wait_stored(nc, ops, f"{provisioned}.ops.alert.>", lambda e: len(e) >= 2))[1]
    await wait_stored(nc, ops, f"{provisioned}.ops.heartbeat.>",
                      lambda e: any(h.ts_event > resolved.ts_event for h in e))  # checked on since  # fmt: skip
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    kinds = [(x.kind, x.symbol, x.resolved) for x in await stored(nc, ops, f"{provisioned}.ops.alert.>")
             if isinstance(x, Alert)]  # fmt: skip
    assert kinds == [("no_ticks", "US500", False), ("no_ticks", "US500", True)]  # nothing for the closed market


def test_sessions() -> None:
    s = parse_session("mon-fri 13:30-20:00; sun 22:00-24:00")
    mon_14h = 1_704_722_400 * 10**9  # Monday 2024-01-08 14:00 UTC
    assert s.is_open(mon_14h)
    assert not s.is_open(mon_14h - 2 * 3600 * 10**9)  # 12:00
    assert not s.is_open(mon_14h - 2 * 86400 * 10**9)  # Saturday
    assert s.is_open(mon_14h - 15 * 3600 * 10**9)  # Sunday 23:00
    for bad in ("mon-fry 10:00-11:00", "mon 10:00", "mon 11:00-10:00", ""):
        with pytest.raises(ValueError):
            parse_session(bad)


async def test_missing_module_fails_at_start_with_a_clear_message() -> None:
    feed = Mt5Feed(cfg(), mt5=None, password="")
    with pytest.raises(Mt5Unavailable, match="only for Windows"):
        await anext(feed.stream())
