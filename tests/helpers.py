"""Test utilities: waiting, reading a stream back, running `tapeline` as a real process."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from bus.jetstream import JetStreamApi
from bus.reader import read_stream
from handlers.bars import BarsConfig
from handlers.momentum import MomentumConfig
from schemas.events import AnyEvent
from tapeline.pipeline import Pipeline

TAPELINE = [sys.executable, "-m", "tapeline"]
# Handlers tuned for tests: 1-second bars and a short momentum window, so a few thousand ticks decide.
FAST: dict[str, Any] = {"bars": BarsConfig(intervals=["1s"]), "momentum": MomentumConfig(interval="1s", window=3)}


async def wait_until(cond: Callable[[], object], timeout: float = 30.0, every: float = 0.05) -> None:  # noqa: ASYNC109
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
    nc: Client, stream: str, subject: str, pred: Callable[[list[AnyEvent]], bool], within: float = 5.0
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
    """Every projection at its stream's last sequence and every consumer idle."""
    for sink in pipeline.sinks:
        if await stream_last_seq(nc, sink.stream) != sink.last_seq:
            return False
    return all(r.idle.is_set() for r in pipeline.consumers)


async def consumer_state(nc: Client, stream: str, durable: str) -> dict[str, Any] | None:
    """A consumer's info, or None while it does not exist (ordered consumers re-create it on start)."""
    return await JetStreamApi(nc).consumer_info(stream, durable)


async def stream_last_seq(nc: Client, stream: str) -> int:
    info = await JetStreamApi(nc).stream_info(stream)
    return int(info["state"]["last_seq"]) if info else 0


def write_config(tmp: Path, prefix: str, nats_url: str, **extra: str) -> Path:
    lines = [f'prefix = "{prefix}"', f'nats_url = "{nats_url}"', f'data_dir = "{tmp / "data"}"', "metrics_port = 0"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    path = tmp / "tapeline.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


STARTED: list[subprocess.Popen[bytes]] = []  # reaped after each test by conftest, whatever the outcome


def start_tapeline(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as f:
        proc = subprocess.Popen([*TAPELINE, *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    STARTED.append(proc)
    return proc
