"""Fixtures: one real nats-server (from the wheel) per test session; a fresh prefix per test.

A fresh prefix is a fresh namespace (streams, consumers, KV), so tests never see each other.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from tapeline.bus.connection import NatsSettings, connect
from tapeline.bus.publisher import Publisher
from tapeline.bus.server import EmbeddedNats
from tapeline.pipeline import provision_system
from tests.helpers import STARTED

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_counter = itertools.count(1)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reap_processes() -> Iterator[None]:
    """A test that fails half-way must not leave a `tapeline up` running."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture
def prefix() -> str:
    return f"t{os.getpid()}n{next(_counter)}"


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(NatsSettings(url=nats_url, name="tapeline-test"))
    yield client
    await client.drain()


@pytest.fixture
async def provisioned(nc: Client, prefix: str) -> str:
    """The test's prefix, with streams and KV applied."""
    await provision_system(nc, prefix)
    return prefix


@pytest.fixture
async def publisher(nc: Client, provisioned: str) -> AsyncIterator[Publisher]:
    pub = await Publisher(nc, provisioned, role="test").start()
    yield pub
    await pub.close()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (CI has ../shared beside the checkout)")
    return SHARED_DATA
