"""Getting a NATS connection for a command: an explicit URL, a running embedded server, or a new one."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from nats.aio.client import Client

from tapeline.bus.connection import NatsSettings, close_connection, connect
from tapeline.bus.server import EmbeddedNats


def running_embedded(data_dir: Path) -> str | None:
    """The URL of an embedded server already running on ``data_dir`` (from its ports file), if any."""
    for ports in (data_dir / "nats").glob("nats-server_*.ports"):
        pid = int(ports.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except OSError:
            continue
        try:
            return str(json.loads(ports.read_text())["nats"][0])
        except (ValueError, KeyError, IndexError):
            continue
    return None


@asynccontextmanager
async def nats_session(
    url: str,
    data_dir: Path,
    name: str = "tapeline",
    *,
    retry: bool = False,
    close_s: float = 5.0,
    identity: str = "operator",
) -> AsyncIterator[tuple[Client, str]]:
    """Connect to ``url``; else to the embedded server on ``data_dir``, starting it if needed.

    ``retry``: wait for an external server that is not up yet (long-running commands); one-shot
    commands fail at once (``NatsConnectError``). Closing never waits more than ``close_s``.
    ``identity``: the NATS user this command connects as when its password is set (``bus.auth``);
    one-shot commands inspect, as the operator.
    """
    settings = NatsSettings.from_env(url, name=name, identity=identity)
    server: EmbeddedNats | None = None
    if not settings.url:
        found = running_embedded(data_dir)
        if found is None:
            server = EmbeddedNats(data_dir / "nats")
            found = server.start()
        settings = NatsSettings.from_env(found, name=name, identity=identity)
    nc = await connect(settings, retry_for=settings.start_retry_s if retry and server is None else 0.0)
    try:
        yield nc, settings.url
    finally:
        await close_connection(nc, close_s)
        if server is not None:
            server.stop()
