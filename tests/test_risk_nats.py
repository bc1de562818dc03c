"""The risk role on a real nats-server: decision -> scan -> intent -> checks -> approved; halt, restart, resume."""

from __future__ import annotations

import itertools
from pathlib import Path

from nats.aio.client import Client

from tapeline.bus.components import HandlerSink, SnapshotStore
from tapeline.bus.publisher import Publisher
from tapeline.control import halt_event, publish_control, resume_events, tripped_now
from tapeline.handlers.risk import CHECKS
from tapeline.handlers.sizing import client_order_id
from tapeline.pipeline import Pipeline
from tapeline.schemas.events import AnyEvent, OrderApproved, OrderIntent, OrderRejected, RiskCheck, Scan
from tapeline.schemas.subjects import MD, ORDER, RISK
from tests.helpers import stored, wait_stored, wait_until
from tests.risk_support import decision, intent, walk

_n = itertools.count()


def _verdicts(evs: list[AnyEvent]) -> dict[str, OrderApproved | OrderRejected]:
    return {e.client_order_id: e for e in evs if isinstance(e, OrderApproved | OrderRejected)}


async def _answer(nc: Client, prefix: str, coid: str) -> OrderApproved | OrderRejected:
    evs = await wait_stored(nc, ORDER.stream(prefix), f"{prefix}.order.>", lambda evs: coid in _verdicts(evs), 60)
    return _verdicts(evs)[coid]


async def test_the_risk_role_approves_rejects_halts_and_keeps_its_state_across_a_restart(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    prefix = provisioned
    p = Pipeline(nc, prefix, configs={}, db_path=tmp_path / "p.duckdb", selected=["risk"])
    await p.start()
    bars = sorted(walk("AAA", 100, seed=1) + walk("BBB", 100, seed=2), key=lambda b: b.ts_event)
    t = bars[-1].ts_event
    last_bar = max((await publisher.publish(bars)).seqs)
    # Across streams there is no order: a component may read the decision (or the intent) before its bars.
    # Sizing prices the stop from its bars, risk checks it against its own: both must have seen them all.
    md = MD.stream(prefix)
    await wait_until(
        lambda: all(
            s.position >= last_bar
            for r in p.runners
            for spec, s in zip(r.specs, r.sinks, strict=False)
            if spec.stream == md and isinstance(s, HandlerSink)
        ),
        timeout=60,
    )
    d = decision("AAA", "BUY", 0.95, agree=3, ts=t + 1)
    await publisher.publish([d])
    coid = client_order_id("paper", d.event_id)
    first = await _answer(nc, prefix, coid)
    assert isinstance(first, OrderApproved) and first.quantity >= 1 and first.stop_loss < first.take_profit
    risk = await stored(nc, RISK.stream(prefix))
    assert any(isinstance(e, Scan) and e.passed and e.decision_id == d.event_id for e in risk)
    assert sum(isinstance(e, RiskCheck) and e.symbol == "AAA" for e in risk) == len(CHECKS)
    sized = [
        e for e in await stored(nc, ORDER.stream(prefix), f"{prefix}.order.intent.>") if isinstance(e, OrderIntent)
    ]
    assert [i.client_order_id for i in sized] == [coid] and sized[0].decision_id == d.event_id

    bad = [intent("AAA", -5, ts_event=t + 2), intent("ZZZ", 1, ts_event=t + 3), intent("BBB", 1e9, ts_event=t + 4)]
    await publisher.publish(bad)
    for i, check in zip(bad, ("quantity", "symbol", "order_size"), strict=True):
        ans = await _answer(nc, prefix, i.client_order_id)
        assert isinstance(ans, OrderRejected) and ans.broker == "risk" and f"{check}:" in ans.reason

    await publish_control(nc, prefix, [halt_event("ann", "test halt")])

    async def blocked() -> bool:  # new intents until the gate has read the halt
        i = intent("BBB", 1, ts_event=t + 10 + next(_n))
        await publisher.publish([i])
        ans = await _answer(nc, prefix, i.client_order_id)
        return isinstance(ans, OrderRejected) and "halt[all]" in ans.reason

    await wait_until(blocked, timeout=60)
    await p.stop()
    saved = await SnapshotStore(nc, prefix).load("risk")  # one snapshot, the position in each of its streams
    assert saved is not None and set(saved.positions) == {s.stream(prefix) for s in (ORDER, MD, RISK)}

    p = Pipeline(nc, prefix, configs={}, db_path=tmp_path / "p.duckdb", selected=["risk"])
    await p.start()
    after = intent("BBB", 1, ts_event=t + 1000)
    await publisher.publish([after])
    ans = await _answer(nc, prefix, after.client_order_id)
    assert isinstance(ans, OrderRejected) and "halt[all]" in ans.reason  # the halt survived the restart

    tripped = await tripped_now(nc, prefix)
    assert list(tripped) == [("halt", "all")]
    await publish_control(nc, prefix, resume_events(tripped, "ann", "all clear"))

    async def approved_again() -> bool:  # prices and history came back with the state: no new bars needed
        i = intent("BBB", 1, ts_event=t + 2000 + next(_n))
        await publisher.publish([i])
        return isinstance(await _answer(nc, prefix, i.client_order_id), OrderApproved)

    await wait_until(approved_again, timeout=60)
    assert await tripped_now(nc, prefix) == {}
    await p.stop()
