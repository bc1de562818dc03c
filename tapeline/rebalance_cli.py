"""``tapeline rebalance``: the latest plan, or ``--now`` a plan computed at once from the read models.

``--now`` reads what the rebalance handler keeps in its state from DuckDB (the last ``lookback``+1
bar closes per symbol, sentiment scores of the last ``sentiment_days``, the model agent's latest
signals, the account's fills) and runs the same :func:`handlers.rebalance.plan`. It only prints
(``--dry-run``, the default); ``--execute`` also publishes the :class:`RebalancePlan` and one
:class:`OrderIntent` per BUY/SELL item, which go through the risk gate like any other intent.
Without ``--now`` it shows the latest stored plan (the ``rebalance_items`` table).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from tapeline.config import Settings
from tapeline.handlers.rebalance import Inputs, RebalanceConfig, client_order_id, plan
from tapeline.perf import Rows, quote, with_rows
from tapeline.schemas.events import Event, OrderIntent, PlanItem, RebalancePlan
from tapeline.schemas.ids import new_event_id

console = Console()


async def read_inputs(rows: Rows, cfg: RebalanceConfig, now_ns: int) -> Inputs:
    inp = Inputs()
    n = cfg.lookback + 1
    for sym, close in await rows(
        f"SELECT symbol, close FROM (SELECT symbol, close, ts_event, row_number() OVER "
        f"(PARTITION BY symbol ORDER BY ts_event DESC) AS k FROM bars WHERE interval = {quote(cfg.interval)}) "
        f"WHERE k <= {n} ORDER BY symbol, ts_event"
    ):
        inp.closes.setdefault(str(sym), []).append(float(close))
    since = now_ns - int(cfg.sentiment_days * 86_400 * 10**9)
    for ticker, ts, value in await rows(
        f"SELECT ticker, epoch_ns(ts_event), score * relevance FROM sentiment WHERE epoch_ns(ts_event) >= {since}"
    ):
        inp.sentiment.setdefault(str(ticker), []).append((int(ts), float(value)))
    for sym, strength in await rows(
        "SELECT symbol, arg_max(strength, ts_event) FROM signals WHERE agent = 'model' GROUP BY symbol"
    ):
        inp.model[str(sym)] = float(strength)
    acct = quote(cfg.account)
    for sym, qty in await rows(f"SELECT symbol, quantity FROM positions WHERE account = {acct} AND quantity != 0"):
        inp.positions[str(sym)] = float(qty)
    got = await rows(
        "SELECT coalesce(sum(CASE side WHEN 'BUY' THEN -quantity * price ELSE quantity * price END "
        f"- commission), 0) FROM fills WHERE account = {acct}"
    )
    inp.cash = float(got[0][0]) if got else 0.0
    return inp


def plan_table(title: str, items: list[PlanItem]) -> Table:
    t = Table(title=title)
    for c in ("symbol", "action", "target", "current", "delta qty", "momentum", "sentiment"):
        t.add_column(c, justify="left" if c in ("symbol", "action") else "right")
    for i in items:
        color = {"BUY": "green", "SELL": "red"}.get(i.action, "yellow")
        t.add_row(
            i.symbol,
            f"[{color}]{i.action}[/]",
            f"{i.target_weight:.1%}",
            f"{i.current_weight:.1%}",
            f"{i.delta_quantity:+,.4g}",
            f"{i.momentum:+.2%}",
            f"{i.sentiment:+.3f}",
        )
    return t


def plan_events(cfg: RebalanceConfig, items: list[PlanItem], now_ns: int) -> list[Event]:
    """The plan and its intents as a human's input (new ids; the order ids are per account, time, symbol)."""
    common: dict[str, Any] = {"ts_event": now_ns, "ts_init": now_ns, "source": "cli"}
    p = RebalancePlan(event_id=new_event_id(now_ns), account=cfg.account, items=items, **common)
    out: list[Event] = [p]
    for i in items:
        if i.action == "HOLD":
            continue
        out.append(
            OrderIntent(
                event_id=new_event_id(now_ns),
                causation_id=p.event_id,
                correlation_id=p.event_id,
                account=cfg.account,
                symbol=i.symbol,
                client_order_id=client_order_id(cfg.account, now_ns, i.symbol),
                side="BUY" if i.delta_quantity > 0 else "SELL",
                quantity=abs(i.delta_quantity),
                reason=f"rebalance --now to {i.target_weight:.1%} (from {i.current_weight:.1%})",
                **common,
            )
        )
    return out


async def rebalance(s: Settings, *, now: bool, execute: bool) -> int:
    """Print (and with ``execute`` publish) a plan; the number of items."""
    cfg: RebalanceConfig = s.components()["rebalance"]
    items: list[PlanItem] = []
    when = time.time_ns()

    async def work(rows: Rows) -> None:
        nonlocal items, when
        if now:
            items = plan(cfg, await read_inputs(rows, cfg, when), when)
            return
        got = await rows(
            "SELECT symbol, action, target_weight, current_weight, delta_quantity, momentum, sentiment, "
            "epoch_ns(ts_event) FROM rebalance_items WHERE plan_id = (SELECT arg_max(plan_id, seq) FROM "
            f"rebalance_items WHERE account = {quote(cfg.account)}) ORDER BY seq, target_weight DESC"
        )
        items = [PlanItem(symbol=r[0], action=r[1], target_weight=r[2], current_weight=r[3], delta_quantity=r[4],
                          momentum=r[5], sentiment=r[6]) for r in got]  # fmt: skip
        when = int(got[0][7]) if got else 0

    await with_rows(s, work)
    stamp = datetime.fromtimestamp(when / 1e9, UTC).strftime("%Y-%m-%d %H:%M UTC") if when else "never"
    if not items:
        console.print(
            f"no rebalance plan for {cfg.account}: "
            + ("no symbol has enough bars yet" if now else "none stored yet (run with --now)")
        )
        return 0
    mode = "" if not now else " (executed)" if execute else " (dry run: nothing sent)"
    console.print(plan_table(f"Rebalance of {cfg.account} at {stamp}{mode}", items))
    if now and execute:
        from tapeline.control import publish_control
        from tapeline.session import nats_session

        async with nats_session(s.nats_url, s.data_path, name="tapeline-rebalance") as (nc, _):
            events = plan_events(cfg, items, when)
            await publish_control(nc, s.prefix, events)
        console.print(f"published the plan and {len(events) - 1} order intents under {s.prefix}")
    return len(items)
