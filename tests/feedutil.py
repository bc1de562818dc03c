"""Test helpers for feed tests: read back what JetStream stored (real server, real streams)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable

from nats.aio.client import Client

from bus.jetstream import JetStreamApi, JetStreamError
from schemas.codec import decode
from schemas.events import AnyEvent


async def stored(nc: Client, stream: str, subject: str = "") -> list[AnyEvent]:
    """Every event stored in ``stream`` (optionally under a subject filter), in stream order."""
    api = JetStreamApi(nc)
    info = await api.stream_info(stream)
    if info is None:
        return []
    last = int(info["state"]["last_seq"])
    seq = int(info["state"]["first_seq"])
    out: list[AnyEvent] = []
    while seq <= last:
        req: dict[str, object] = {"seq": seq}
        if subject:
            req["next_by_subj"] = subject
        try:
            reply = await api.call(f"STREAM.MSG.GET.{stream}", req)
        except JetStreamError:
            break
        msg = reply["message"]
        out.extend(decode(base64.b64decode(msg.get("data") or b"")).events)
        seq = int(msg["seq"]) + 1
    return out


async def wait_until(cond: Callable[[], object], within: float = 5.0, step: float = 0.02) -> None:
    """Poll ``cond`` until truthy; fail the test with a timeout otherwise."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(step)


async def wait_stored(
    nc: Client, stream: str, subject: str, pred: Callable[[list[AnyEvent]], bool], within: float = 5.0
) -> list[AnyEvent]:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while True:
        evs = await stored(nc, stream, subject)
        if pred(evs):
            return evs
        if loop.time() > end:
            raise AssertionError(f"stored events on {subject} never satisfied the condition: {len(evs)} events")
        await asyncio.sleep(0.05)
