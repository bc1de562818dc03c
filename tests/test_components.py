"""The declared system on both runners, leases, and scale-out (real nats-server)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from tapeline.adapters.alerts import make_alert
from tapeline.adapters.runner import run_feed
from tapeline.adapters.sim import SimFeed
from tapeline.bus.inprocess import InProcessRunner
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.lease import Lease, LeaseHeld, leases_bucket, leases_stream_config
from tapeline.bus.publisher import Publisher
from tapeline.pipeline import Pipeline
from tapeline.schemas.components import Component, Handler, Snapshot, draft
from tapeline.schemas.events import Alert, AnyEvent, DecisionEnvelope, Event, Notification
from tapeline.schemas.subjects import DECISION, INTEL, MD, OPS
from tapeline.system import COMPONENTS, build, durables
from tests.helpers import (
    FAST,
    TAPELINE,
    caught_up,
    consumer_state,
    start_tapeline,
    stored,
    stream_last_seq,
    wait_until,
    write_config,
)
from tests.test_alerts_webhook import WebhookServer


def _comparable(e: Event) -> dict[str, Any]:
    """Everything but what is measured at run time: ts_init, and a decision's phase timings."""
    d: dict[str, Any] = msgspec.to_builtins(e)
    d.pop("ts_init")
    if isinstance(e, DecisionEnvelope):
        d.pop("phase_timings")
        d["decision"].pop("phase_timings")  # the S4 contract body's copy
    return d


async def test_one_recorded_scenario_gives_identical_events_on_both_runners(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    ticks = list(SimFeed(["A", "B", "BRK.B"], ticks=3000, seed=21, mean_gap_ms=40).generate())
    p = Pipeline(nc, provisioned, configs=FAST, db_path=tmp_path / "p.duckdb", selected=["handlers", "projector"])
    await p.start()
    await run_feed(SimFeed(["A", "B", "BRK.B"], ticks=3000, seed=21, mean_gap_ms=40), publisher)
    await wait_until(lambda: caught_up(nc, p), timeout=120)
    await p.stop()
    live = [
        e
        for fam, subject in ((MD, f"{provisioned}.md.bar.>"), (INTEL, ">"), (DECISION, ">"))
        for e in await stored(nc, fam.stream(provisioned), subject)
    ]
    in_memory = await InProcessRunner(build(FAST, ["handlers"]), provisioned).run(ticks)
    assert len(live) > 100 and any(isinstance(e, DecisionEnvelope) for e in live)

    def key(e: Event) -> tuple[str, str]:
        return (e.tag, e.event_id)

    assert sorted(map(_comparable, live), key=lambda d: (d["type"], d["event_id"])) == sorted(
        map(_comparable, in_memory), key=lambda d: (d["type"], d["event_id"])
    )
    assert sorted(map(key, live)) == sorted(map(key, in_memory))


def test_durable_names_come_from_the_declaration() -> None:
    names = {d for c in build(FAST, [c.name for c in COMPONENTS]) for _, d in durables(c, "tape")}
    assert {"bars_md", "momentum_md", "decision_intel", "watchdog_ops", "notifier_ops"} <= names


async def test_a_second_holder_waits_as_a_standby_and_takes_over(nc: Client, provisioned: str) -> None:
    first = Lease(nc, provisioned, "bars_md", ttl_s=1.0)
    second = Lease(nc, provisioned, "bars_md", ttl_s=1.0)
    assert await first.try_acquire() == ""
    with pytest.raises(LeaseHeld):
        await second.acquire(wait=False)
    waiting = asyncio.create_task(second.acquire())
    await first.renew()  # the holder keeps it: the standby must still be waiting
    assert not waiting.done()
    await first.release()
    assert await asyncio.wait_for(waiting, 30)
    await second.release()


async def test_taking_a_lease_outlasts_a_moment_when_its_bucket_does_not_answer(nc: Client, provisioned: str) -> None:
    """A cluster electing the bucket's leader answers "no responders" for a moment (CI, stop 23)."""
    api = JetStreamApi(nc)
    await api.call(f"STREAM.DELETE.KV_{leases_bucket(provisioned)}")
    lease = Lease(nc, provisioned, "bars_md", ttl_s=5.0)
    lease.patience_s = 300.0  # a busy machine must not turn this test into a race with the patience
    put = asyncio.create_task(lease._put(0, lease.holder.encode()))
    await wait_until(lambda: lease.unanswered >= 1, timeout=60)  # asked, and asked again
    assert not put.done()
    await api.ensure_stream(leases_stream_config(provisioned, 5.0))
    revision = await asyncio.wait_for(put, 30)
    assert revision == 1
    assert (await lease._last())[1:] == (lease.holder, True)


async def test_two_up_processes_share_an_ordered_role_safely(
    nc: Client, provisioned: str, nats_url: str, tmp_path: Path, publisher: Publisher
) -> None:
    """A second `up` with the same ordered role waits as a standby; killing the first hands over."""
    cfg = write_config(tmp_path, provisioned, nats_url)
    first = start_tapeline("up", "-c", str(cfg), "--only", "bars", log=tmp_path / "first.log")
    await wait_until(lambda: _holder(nc, provisioned, "bars_md"), timeout=120)
    refused = await asyncio.to_thread(
        subprocess.run,
        [*TAPELINE, "up", "-c", str(cfg), "--only", "bars", "--no-standby"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "running in another process" in refused.stderr + refused.stdout
    second = start_tapeline("up", "-c", str(cfg), "--only", "bars", log=tmp_path / "second.log")
    await wait_until(lambda: "standby" in (tmp_path / "second.log").read_text(), timeout=120)
    await publisher.publish(list(SimFeed(["A"], ticks=300, seed=2, mean_gap_ms=40).generate()))
    first.send_signal(signal.SIGKILL)
    first.wait()
    # The standby takes over when the dead holder's lease expires, and finishes the work.
    stream = MD.stream(provisioned)

    async def done() -> bool:
        info = await consumer_state(nc, stream, "bars_md")
        taken = "lease taken" in (tmp_path / "second.log").read_text()
        acked = info is not None and info["num_pending"] == 0 and info["ack_floor"]["stream_seq"] >= 300
        return taken and acked and await stream_last_seq(nc, stream) >= 300

    await wait_until(done, timeout=120)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0


async def _holder(nc: Client, prefix: str, name: str) -> bool:
    rev, _, live = await Lease(nc, prefix, name)._last()
    return live and rev > 0


async def test_two_processes_share_a_stateless_gateway_and_handle_each_input_once(
    nc: Client, provisioned: str, nats_url: str, tmp_path: Path, publisher: Publisher
) -> None:
    """The notifier (stateless) on one shared durable in two processes: every alert posted exactly once."""
    async with WebhookServer([]) as srv:
        cfg = write_config(tmp_path, provisioned, nats_url)
        env = {"TAPELINE_ALERT_WEBHOOK_URL": srv.url}
        procs = [
            start_tapeline("up", "-c", str(cfg), "--only", "notifier", log=tmp_path / f"n{i}.log", env=env)
            for i in (1, 2)
        ]
        for i in (1, 2):
            await wait_until(lambda i=i: "tapeline up" in (tmp_path / f"n{i}.log").read_text(), timeout=120)
        alerts = [make_alert("f", f"k{i}", f"alert {i}", severity="critical") for i in range(200)]
        for i in range(0, 200, 20):
            await publisher.publish(alerts[i : i + 20])
        notified = f"{provisioned}.ops.notify.>"
        await wait_until(lambda: _count(nc, OPS.stream(provisioned), notified, 200), timeout=120)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(timeout=60) == 0
        records = [e for e in await stored(nc, OPS.stream(provisioned), notified) if isinstance(e, Notification)]
        assert sorted(n.alert_id for n in records) == sorted(a.event_id for a in alerts)
        assert len(srv.bodies) == 200, "each alert posted exactly once"


async def _count(nc: Client, stream: str, subject: str, n: int) -> bool:
    return len(await stored(nc, stream, subject)) >= n


class _Counting(Handler):
    name = "counting"

    def handle(self, event: AnyEvent) -> list[Event]:
        return []


def test_a_component_must_be_fully_declared() -> None:
    from tapeline.schemas.components import check_declaration

    class Nameless(Component):
        kind = "handler"
        role = "handlers"

    with pytest.raises(TypeError, match="name"):
        check_declaration(Nameless)
    check_declaration(_Counting)


class _RunningCount(Handler):
    """Stateful: each tick's output carries how many ticks it has seen, so applying one twice shows."""

    name = "running_count"

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def handle(self, event: AnyEvent) -> list[Event]:
        self.seen += 1
        text = f"seen {self.seen}"
        return [draft(Alert, ts_event=event.ts_event, severity="warning", kind="count", key="count", message=text)]


async def test_a_batch_retried_in_place_after_a_failed_publish_is_applied_once(nc: Client, provisioned: str) -> None:
    """The runtime retries an ordered batch in place when its outputs cannot be published: the handler's
    state must not see the batch twice (here: the outputs' stream is gone, then provisioned again)."""
    from tapeline.bus.components import HandlerSink
    from tapeline.bus.consumer import Delivery
    from tapeline.bus.jetstream import JetStreamApi
    from tapeline.bus.publisher import PublishError
    from tapeline.bus.runtime import Received
    from tapeline.pipeline import provision_system

    ticks = list(SimFeed(["A"], ticks=5, seed=3).generate())
    batch = [Received(Delivery(t.subject(provisioned), b"", b"", "", i + 1, 1, 0, 0), [t]) for i, t in enumerate(ticks)]
    handler = _RunningCount()
    publisher = await Publisher(nc, provisioned, role="retry-test", ack_timeout=0.5, max_attempts=2).start()
    try:
        await JetStreamApi(nc).call(f"STREAM.DELETE.{OPS.stream(provisioned)}")
        sink = HandlerSink(handler, publisher)
        with pytest.raises(PublishError):
            await sink.process(batch)
        await provision_system(nc, provisioned)
        await sink.process(batch)  # the same batch again, as the runtime retries it in place
    finally:
        await publisher.close()
    assert handler.seen == 5
    alerts = await stored(nc, OPS.stream(provisioned))
    assert sorted(a.message for a in alerts if isinstance(a, Alert)) == [f"seen {n}" for n in range(1, 6)]


class _SnapshottedCount(_RunningCount):
    name = "snapshotted_count"
    state = Snapshot()

    def snapshot(self) -> bytes:
        return str(self.seen).encode()

    def restore(self, data: bytes) -> None:
        self.seen = int(data)


async def test_no_snapshot_holds_a_batch_whose_outputs_are_not_published(nc: Client, provisioned: str) -> None:
    """A snapshot saved while a batch is handled but unpublished (retried in place, or given up at a stop)
    would pair that batch's state with the older position: a restart would apply the batch twice."""
    from tapeline.bus.components import ComponentRunner, HandlerSink, SnapshotStore
    from tapeline.bus.consumer import Delivery
    from tapeline.bus.jetstream import JetStreamApi
    from tapeline.bus.publisher import PublishError
    from tapeline.bus.runtime import Received
    from tapeline.pipeline import provision_system

    ticks = list(SimFeed(["A"], ticks=3, seed=3).generate())
    batch = [Received(Delivery(t.subject(provisioned), b"", b"", "", i + 1, 1, 0, 0), [t]) for i, t in enumerate(ticks)]
    handler = _SnapshottedCount()
    publisher = await Publisher(nc, provisioned, role="snap-test", ack_timeout=0.5, max_attempts=2).start()
    try:
        runner = ComponentRunner(nc, publisher, handler, provisioned)
        sink = HandlerSink(handler, publisher)
        runner.sinks.append(sink)
        await JetStreamApi(nc).call(f"STREAM.DELETE.{OPS.stream(provisioned)}")
        with pytest.raises(PublishError):
            await sink.process(batch)
        assert sink.unfinished and handler.seen == 3
        await runner._save_snapshot("snap-test", 0)
        assert await SnapshotStore(nc, provisioned).load("snap-test") is None
        await provision_system(nc, provisioned)
        await sink.process(batch)  # published now
        await runner._save_snapshot("snap-test", 3)
    finally:
        await publisher.close()
    saved = await SnapshotStore(nc, provisioned).load("snap-test")
    assert saved is not None and saved.seq == 3 and saved.state == b"3"
