"""The portfolio role on a real nats-server: fills and bars -> equity/daily P&L gauges and alerts,
state kept across a restart (snapshot over two streams)."""

from __future__ import annotations

from pathlib import Path

import msgspec
from nats.aio.client import Client
from prometheus_client import REGISTRY

from tapeline.bus.publisher import Publisher
from tapeline.pipeline import Pipeline
from tapeline.schemas.events import Alert, Event
from tapeline.schemas.ids import new_event_id
from tapeline.schemas.subjects import OPS
from tests.helpers import wait_stored, wait_until
from tests.test_portfolio import bar, fill


def stamped(events: list[Event]) -> list[Event]:
    return [
        msgspec.structs.replace(e, event_id=new_event_id(e.ts_event), ts_init=e.ts_event, source="test") for e in events
    ]


def gauge(name: str, key: str) -> float | None:
    return REGISTRY.get_sample_value(f"tapeline_portfolio_{name}", {"key": key})


async def test_portfolio_role_exports_equity_and_alerts_and_survives_a_restart(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    prefix = provisioned
    account = f"acct-{prefix[-6:]}"  # the gauge is process-wide: a key of this test's own
    p = Pipeline(nc, prefix, configs={}, db_path=tmp_path / "p.duckdb", selected=["portfolio"])
    await p.start()
    await publisher.publish(stamped([bar("NVDA", 0, 100.0), fill("NVDA", 0, "BUY", 200, 100.0, account=account)]))
    await publisher.publish(stamped([bar("NVDA", 0, 105.0, hour=21)]))
    # 100,000 - 20,000 - 1 fee + 200 x 105
    await wait_until(lambda: gauge("equity", account) == 100_999.0, 90)
    assert gauge("daily_pnl", account) == 999.0
    alerts = await wait_stored(
        nc, OPS.stream(prefix), f"{prefix}.ops.alert.>", lambda evs: any(isinstance(e, Alert) for e in evs), 60
    )
    (a,) = [e for e in alerts if isinstance(e, Alert)]
    assert a.kind == "position_change" and account in a.message and "$20,000" in a.message
    await p.stop()

    p = Pipeline(nc, prefix, configs={}, db_path=tmp_path / "p.duckdb", selected=["portfolio"])
    await p.start()
    try:
        await publisher.publish(stamped([bar("NVDA", 1, 110.0)]))  # a new UTC day: the summary of day 0
        await wait_until(lambda: gauge("equity", account) == 101_999.0, 90)  # positions came back from the snapshot
        assert gauge("daily_pnl", account) == 1_000.0
        evs = await wait_stored(
            nc,
            OPS.stream(prefix),
            f"{prefix}.ops.alert.>",
            lambda evs: any(isinstance(e, Alert) and e.kind == "daily_pnl" for e in evs),
            60,
        )
        summary = next(e for e in evs if isinstance(e, Alert) and e.kind == "daily_pnl")
        assert "equity $100,999.00" in summary.message and "+999.00" in summary.message
        assert sum(isinstance(e, Alert) and e.kind == "position_change" for e in evs) == 1  # not repeated
    finally:
        await p.stop()
