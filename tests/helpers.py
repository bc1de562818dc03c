"""Test utilities: waiting, reading a stream back, running `tapeline` as a real process."""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.reader import read_stream
from tapeline.handlers.bars import BarsConfig
from tapeline.handlers.momentum import MomentumConfig
from tapeline.pipeline import Pipeline
from tapeline.projections.query import open_read_only, query_remote
from tapeline.schemas.events import AnyEvent
from tapeline.system import build, durables

TAPELINE = [sys.executable, "-m", "tapeline"]
# Handlers tuned for tests: 1-second bars and a short momentum window, so a few thousand ticks decide.
FAST: dict[str, Any] = {"bars": BarsConfig(intervals=["1s"]), "momentum": MomentumConfig(interval="1s", window=3)}


async def wait_until(cond: Callable[[], object], timeout: float = 60.0, every: float = 0.05) -> None:  # noqa: ASYNC109
    """Poll ``cond`` (plain or async) until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = cond()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


async def stored(nc: Client, stream: str, subject: str = "") -> list[AnyEvent]:
    """Every event stored in ``stream`` (optionally under a subject filter), in stream order."""
    return [e for _, e in await read_stream(nc, stream, subject)]


async def wait_stored(
    nc: Client, stream: str, subject: str, pred: Callable[[list[AnyEvent]], bool], within: float = 60.0
) -> list[AnyEvent]:
    """Poll the stream until ``pred`` holds for what is stored; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        evs = await stored(nc, stream, subject)
        if pred(evs):
            return evs
        if time.monotonic() > deadline:
            raise AssertionError(f"stored events on {subject} never satisfied the condition: {len(evs)} events")
        await asyncio.sleep(0.05)


async def caught_up(nc: Client, pipeline: Pipeline) -> bool:
    """Every projection at its stream's last sequence, every consumer idle with nothing pending on the server."""
    for sink in pipeline.sinks:
        if await stream_last_seq(nc, sink.stream) != sink.last_seq:
            return False
    if not pipeline.consumers or not all(r.idle.is_set() for r in pipeline.consumers):
        return False
    for r in pipeline.consumers:
        info = await consumer_state(nc, r.stream, r.durable)
        if info is None or info["num_pending"] or info["num_ack_pending"]:
            return False
    return True


async def consumer_state(nc: Client, stream: str, durable: str) -> dict[str, Any] | None:
    """A consumer's info, or None while it does not exist (ordered consumers re-create it on start)."""
    return await JetStreamApi(nc).consumer_info(stream, durable)


async def stream_last_seq(nc: Client, stream: str) -> int:
    info = await JetStreamApi(nc).stream_info(stream)
    return int(info["state"]["last_seq"]) if info else 0


async def ack_floor(nc: Client, stream: str, durable: str) -> int:
    """A consumer's ack floor (stream sequence), 0 while it does not exist."""
    info = await consumer_state(nc, stream, durable)
    return int(info["ack_floor"]["stream_seq"]) if info else 0


async def projected(nc: Client, prefix: str, stream: str, read_model: str = "ticks") -> int:
    """The projector's committed checkpoint of ``read_model`` on ``stream``, asked through its query service
    (its consumers do not ack: ack policy none); 0 before its first commit, -1 while it does not answer."""
    sql = f"SELECT last_seq FROM _checkpoints WHERE read_model = '{read_model}' AND stream = '{stream}'"
    try:
        res = await query_remote(nc, prefix, sql, timeout=2.0)
    except Exception:  # not up yet (no responders), or busy past the timeout
        return -1
    if res.error:
        return -1
    return int(res.rows[0][0]) if res.rows else 0


async def kill_when(
    proc: subprocess.Popen[bytes], progress: Callable[[], Awaitable[int]], what: str, *, above: int, within: float
) -> int:
    """SIGKILL ``proc`` as soon as ``progress()`` passes ``above``; returns the last value seen.

    The kill is timed by the process's own progress, not by the clock, so a slow machine only
    makes the test slower. Fails if the process dies first or never gets there within ``within``.
    """
    deadline = time.monotonic() + within
    seen = await progress()
    while seen <= above:
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited ({proc.returncode}) at {seen}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{what}: {seen} never passed {above} within {within}s")
        await asyncio.sleep(0.01)
        seen = await progress()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return seen


async def kill_when_acked(
    nc: Client, proc: subprocess.Popen[bytes], stream: str, durable: str, *, above: int, within: float = 120.0
) -> int:
    """SIGKILL ``proc`` as soon as its consumer's ack floor passes ``above``; returns that floor.
    (The old floor until the process re-creates the consumer.)"""
    return await kill_when(
        proc, lambda: ack_floor(nc, stream, durable), f"{durable} ack floor", above=above, within=within
    )


def projected_durably(nc: Client, prefix: str, stream: str) -> Callable[[], Awaitable[int]]:
    """A :func:`projected` that answers only what is surely in the file, even if the projector is SIGKILLed
    next: the checkpoint before the newest one seen. A commit can be visible to a query a moment before
    COMMIT returns (and a kill then loses it); the family's commits run one after another, so by the time a
    newer one shows, the one before it has returned."""
    seen = [-1]

    async def durable() -> int:
        now = await projected(nc, prefix, stream)
        if now > seen[-1]:
            seen.append(now)
        return seen[-2] if len(seen) > 2 else -1

    return durable


async def kill_when_projected(
    nc: Client, proc: subprocess.Popen[bytes], prefix: str, stream: str, *, above: int, within: float = 120.0
) -> int:
    """SIGKILL the projector ``proc`` as soon as its tick checkpoint on ``stream`` is past ``above`` in its
    file (:func:`projected_durably`); returns that checkpoint."""
    progress = projected_durably(nc, prefix, stream)
    return await kill_when(proc, progress, "projector checkpoint", above=above, within=within)


HANDLER_CHAIN = ("bars", "momentum", "decision")  # in the order events flow


async def handlers_drained(nc: Client, prefix: str) -> bool:
    """Ticks -> bars -> signals -> decisions all handled: each consumer, in that order, has nothing
    pending or unacknowledged. Handlers publish before they ack, so in that order a consumer's
    input is complete by the time it is checked. Consumer names come from the system declaration."""
    chain = build(FAST, HANDLER_CHAIN)
    for stream, durable in (d for c in chain for d in durables(c, prefix)):
        info = await consumer_state(nc, stream, durable)
        if not info or info["num_pending"] or info["num_ack_pending"]:
            return False
    return True


def random_point(rng: random.Random, current: int, end: int) -> int:
    """A stream position strictly after ``current``, at random in the first half of what is left.

    Strictly after: every kill lands at a new point. First half: work is still outstanding after
    it, even when the kill overshoots a little.
    """
    assert end - current >= 2, f"nothing left to kill in: {current} of {end}"
    return rng.randint(current + 1, current + (end - current) // 2)


def read_killed(db: Path, sql: str, params: list[object] | None = None) -> tuple[Any, ...]:
    """One row of ``sql`` over what a killed writer left, read from a copy (file and WAL).

    The copy keeps ``db`` and its WAL exactly as the kill left them, for the restart under test;
    the read goes through the reader's own recovery (:func:`projections.query.open_read_only`).
    """
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / db.name
        for src, dst in ((db, copy), (db.with_name(db.name + ".wal"), copy.with_name(copy.name + ".wal"))):
            if src.exists():
                shutil.copyfile(src, dst)
        return read_db(copy, sql, params)


def read_db(db: Path, sql: str, params: list[object] | None = None) -> tuple[Any, ...]:
    """One row of ``sql`` over a projection file no process writes, as ``tapeline query`` reads it."""
    con = open_read_only(db)
    try:
        return tuple(con.execute(sql, params or []).fetchone() or ())
    finally:
        con.close()


def write_config(tmp: Path, prefix: str, nats_url: str, **extra: str) -> Path:
    lines = [f'prefix = "{prefix}"', f'nats_url = "{nats_url}"', f'data_dir = "{tmp / "data"}"', "metrics_port = 0"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    path = tmp / "tapeline.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


STARTED: list[subprocess.Popen[bytes]] = []  # reaped after each test by conftest, whatever the outcome


def start_tapeline(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "ab") as f:
        proc = subprocess.Popen([*TAPELINE, *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    STARTED.append(proc)
    return proc
