"""Test utilities: waiting, reading a stream back, running `tapeline` as a real process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.client import Client

from bus.consumer import PullLoop
from bus.jetstream import JetStreamApi
from schemas.codec import decode
from schemas.events import AnyEvent

TAPELINE = [sys.executable, "-m", "tapeline"]


async def wait_until(cond: Callable[[], Awaitable[bool]], timeout: float = 30.0, every: float = 0.1) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


async def read_stream(nc: Client, stream: str, subject: str) -> list[tuple[int, AnyEvent]]:
    """Every (stream sequence, event) on ``subject`` in ``stream``, via an ephemeral consumer."""
    api = JetStreamApi(nc)
    info = await api.stream_info(stream)
    if not info or info["state"]["messages"] == 0:
        return []
    name = await api.create_ordered_consumer(
        stream,
        {
            "deliver_policy": "all",
            "ack_policy": "none",
            "filter_subjects": [subject],
            "mem_storage": True,
            "inactive_threshold": 10_000_000_000,
        },
    )
    loop = PullLoop(nc, stream, name, batch=5000, idle_s=0.3)
    await loop.start()
    out: list[tuple[int, AnyEvent]] = []
    try:
        while True:
            batch = await loop.next_batch()
            if not batch:
                break
            for d in batch:
                out.extend((d.stream_seq, e) for e in decode(d.data).events)
    finally:
        await loop.stop()
        await api.delete_consumer(stream, name)
    return out


async def stream_last_seq(nc: Client, stream: str) -> int:
    info = await JetStreamApi(nc).stream_info(stream)
    return int(info["state"]["last_seq"]) if info else 0


def write_config(tmp: Path, prefix: str, nats_url: str, **extra: str) -> Path:
    lines = [f'prefix = "{prefix}"', f'nats_url = "{nats_url}"', f'data_dir = "{tmp / "data"}"', "metrics_port = 0"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    path = tmp / "tapeline.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_tapeline(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as f:
        return subprocess.Popen([*TAPELINE, *args], stdout=f, stderr=subprocess.STDOUT, env=env)
