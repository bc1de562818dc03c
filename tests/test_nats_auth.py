"""NATS identities: every identity x every action against a real server with the generated config.

Exactly the allowed cells must succeed; a denied action is recognised by the server's permissions
violation (reported to the client's error callback), an allowed one by its real effect (a stream
ack, a message received, an API answer). Then the pipeline runs with each process on its own
identity, to show the permissions are enough for the real thing, not just for the probes.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest
from nats.aio.client import Client
from rich.console import Console
from rich.table import Table

from tapeline.adapters.runner import run_feed
from tapeline.adapters.sim import SimFeed
from tapeline.bus.auth import IDENTITIES, authorization_config, deploy_config, identity_for
from tapeline.bus.connection import NatsConnectError, NatsSettings, close_connection, connect
from tapeline.bus.publisher import Publisher
from tapeline.bus.server import EmbeddedNats
from tapeline.pipeline import Pipeline, provision_system
from tapeline.projections.query import query_remote
from tapeline.schemas.subjects import DECISION, MD, ORDER, decisions_bucket
from tests.helpers import FAST, caught_up, wait_until

ACTIONS = (
    "publish orders",
    "publish ticks",
    "read decisions",
    "KV get",
    "stream purge",
    "direct get",
    "create consumer",
    "subscribe >",
)
ALLOWED = {
    "feed": {"publish ticks"},
    "handler": {"KV get", "direct get", "create consumer"},
    "projector": {"KV get", "direct get", "create consumer"},
    "execution": {"publish orders", "KV get", "direct get", "create consumer"},
    "reader": {"read decisions", "KV get"},
    "operator": {"read decisions", "KV get", "direct get", "create consumer"},
    "admin": set(ACTIONS) - {"publish orders"},
}
DEADLINE_S = 90.0
T = TypeVar("T")


@pytest.fixture
def secured(tmp_path: Path) -> tuple[str, str, dict[str, str]]:
    """A server with every identity (random passwords) for a fresh prefix; (url, prefix, passwords)."""
    prefix = f"sec{secrets.token_hex(3)}"
    passwords = {i: secrets.token_urlsafe(16) for i in IDENTITIES}
    server = EmbeddedNats(tmp_path / "nats", extra_config=authorization_config(prefix, passwords))
    url = server.start()
    conf = tmp_path / "nats" / "nats-server.conf"
    assert conf.stat().st_mode & 0o777 == 0o600
    log = (tmp_path / "nats" / "nats-server.log").read_text()
    assert not any(pw in log for pw in passwords.values())
    yield url, prefix, passwords  # type: ignore[misc]
    server.stop()


async def _as(url: str, user: str, password: str) -> tuple[Client, list[str]]:
    """A connection as ``user`` through our connect() (private inbox), with its async errors recorded."""
    nc = await connect(NatsSettings(url=url, user=user, password=password, name=f"test-{user}"))
    errors: list[str] = []
    original = nc._error_cb

    async def record(exc: Exception) -> None:
        errors.append(str(exc))
        await original(exc)

    nc._error_cb = record
    return nc, errors


async def _within(what: str, aw: Awaitable[T], seconds: float = DEADLINE_S) -> T:
    """``aw``'s result, or the test fails naming ``what`` after ``seconds``.

    The task is cancelled but not awaited: a step that swallows its cancellation (asyncio's
    ``wait_for`` can, in a race) must not hang the test past pytest's timeout with no clue.
    """
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        raise AssertionError(f"{what}: no outcome within {seconds:.0f}s")
    return task.result()


async def _outcome(what: str, errors: list[str], attempt: Callable[[], Awaitable[bool]]) -> bool:
    """True when ``attempt`` succeeds, False on a permissions violation, whichever comes first."""
    task = asyncio.ensure_future(attempt())
    deadline = time.monotonic() + DEADLINE_S
    while not task.done():
        if any("permissions violation" in e.lower() for e in errors):
            task.cancel()  # not awaited past a bound (see _within)
            await asyncio.wait({task}, timeout=5.0)
            return False
        if time.monotonic() > deadline:
            task.cancel()
            raise AssertionError(f"{what}: neither done nor denied within {DEADLINE_S:.0f}s")
        await asyncio.sleep(0.01)
    return task.result()


async def _api_ok(nc: Client, subject: str, body: dict[str, object] | None = None) -> bool:
    reply = await nc.request(subject, msgspec.json.encode(body) if body is not None else b"", timeout=DEADLINE_S)
    return "error" not in msgspec.json.decode(reply.data) if reply.data else reply.headers is not None


async def _received(nc: Client, admin: Client, subject: str, publish_on: str) -> bool:
    """Subscribe to ``subject``; the admin publishes until one arrives (a denied one never does)."""
    sub = await nc.subscribe(subject)
    try:
        await nc.flush()
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            await admin.publish(publish_on, b"probe")
            try:
                await sub.next_msg(timeout=0.2)
                return True
            except TimeoutError:
                continue
        raise AssertionError(f"no probe on {publish_on} reached a subscriber of {subject}")
    finally:
        if not nc.is_closed:
            await sub.unsubscribe()  # no probe left pending in its queue for the drain to wait on


def _actions(nc: Client, admin: Client, p: str) -> dict[str, Callable[[], Awaitable[bool]]]:
    bucket = decisions_bucket(p)
    return {
        "publish orders": lambda: _api_ok(nc, f"{p}.order.submitted.ACC.NVDA", {}),
        "publish ticks": lambda: _api_ok(nc, f"{p}.md.tick.sim.NVDA", {}),
        "read decisions": lambda: _received(nc, admin, f"{p}.decision.>", f"{p}.decision.PROBE"),
        "KV get": lambda: _api_ok(nc, f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.NVDA"),
        "stream purge": lambda: _api_ok(nc, f"$JS.API.STREAM.PURGE.{MD.stream(p)}"),
        "direct get": lambda: _api_ok(nc, f"$JS.API.DIRECT.GET.{ORDER.stream(p)}", {"seq": 1}),
        "create consumer": lambda: _api_ok(
            nc, f"$JS.API.CONSUMER.CREATE.{MD.stream(p)}", {"stream_name": MD.stream(p), "config": {}}
        ),
        "subscribe >": lambda: _received(nc, admin, ">", f"probe.{secrets.token_hex(4)}"),
    }


async def test_every_identity_can_do_exactly_what_it_is_allowed(secured: tuple[str, str, dict[str, str]]) -> None:
    url, p, pw = secured
    admin, _ = await _as(url, "admin", pw["admin"])
    execution, _ = await _as(url, "execution", pw["execution"])
    try:
        await provision_system(admin, p)
        assert await _api_ok(execution, f"{p}.order.submitted.ACC.NVDA", {})  # for the direct get
        assert await _api_ok(admin, f"{p}.decision.NVDA", {})  # sourced into the KV bucket
        bucket = decisions_bucket(p)
        await wait_until(lambda: _api_ok(admin, f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.NVDA"))
        got: dict[str, dict[str, bool]] = {}
        for identity in IDENTITIES:
            nc, errors = await _within(f"connect as {identity}", _as(url, identity, pw[identity]))
            try:
                got[identity] = {}
                for action, attempt in _actions(nc, admin, p).items():
                    errors.clear()
                    got[identity][action] = await _outcome(f"{identity}: {action}", errors, attempt)
            finally:
                await _within(f"close {identity}", close_connection(nc))
        wrong = [(i, a) for i in IDENTITIES for a in ACTIONS if got[i][a] != (a in ALLOWED[i])]
        if wrong:
            t = Table("identity", *ACTIONS, title="NATS permission matrix (got; ! = not as expected)")
            for i in IDENTITIES:
                t.add_row(i, *(("yes" if got[i][a] else "no") + ("!" if (i, a) in wrong else "") for a in ACTIONS))
            console = Console(width=200, record=True)
            console.print(t)
            pytest.fail(f"permission matrix differs in {wrong}\n{console.export_text()}")
        with pytest.raises(NatsConnectError, match="authorization failed"):
            await connect(NatsSettings(url=url, name="anonymous"))
        with pytest.raises(NatsConnectError, match="authorization failed"):
            await connect(NatsSettings(url=url, user="reader", password="wrong", name="guess"))
    finally:
        await _within("close execution", close_connection(execution))
        await _within("close admin", close_connection(admin))


async def test_the_pipeline_runs_with_each_process_on_its_own_identity(
    secured: tuple[str, str, dict[str, str]], tmp_path: Path
) -> None:
    url, p, pw = secured
    conns: dict[str, Client] = {}
    for identity in ("admin", "feed", "handler", "projector", "reader", "operator"):
        conns[identity], _ = await _as(url, identity, pw[identity])
    try:
        await provision_system(conns["admin"], p)  # stream admin: the admin, once
        db = tmp_path / "p.duckdb"
        handlers = Pipeline(conns["handler"], p, configs=FAST, db_path=tmp_path / "h.duckdb", selected=["handlers"])
        projector = Pipeline(conns["projector"], p, configs=FAST, db_path=db, selected=["projector"])
        conns["execution"], _ = await _as(url, "execution", pw["execution"])
        others = [  # every other role on the identity `up --only ROLE` uses
            Pipeline(conns[identity_for([r])], p, configs=FAST, db_path=tmp_path / f"{r}.duckdb", selected=[r])
            for r in ("risk", "portfolio", "execution")
        ]
        await handlers.start()
        await projector.start()
        for o in others:
            await o.start()
        feed = await Publisher(conns["feed"], p, role="feed").start()
        await run_feed(SimFeed(["NVDA", "ORCL"], ticks=3000, seed=5), feed)
        await feed.close()
        await wait_until(lambda: caught_up(conns["handler"], handlers), timeout=90)
        await wait_until(lambda: caught_up(conns["projector"], projector), timeout=90)
        for o in others:  # a role without a permission it needs would stall here
            await wait_until(lambda o=o: caught_up(conns["admin"], o), timeout=90)
        res = await query_remote(conns["operator"], p, "SELECT count(*) FROM decisions")
        assert not res.error and res.rows[0][0] > 0
        kv = await conns["reader"].jetstream().key_value(decisions_bucket(p))
        assert (await kv.get("NVDA")).value
        js = conns["reader"].jetstream()
        sub = await js.subscribe(f"{p}.decision.>", stream=DECISION.stream(p), ordered_consumer=True)
        assert (await sub.next_msg(timeout=DEADLINE_S)).data
        await sub.unsubscribe()
        await handlers.stop()
        await projector.stop()
        for o in others:
            await o.stop()
    finally:
        for nc in conns.values():
            await close_connection(nc)


def test_identity_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAPELINE_NATS_USER", raising=False)
    monkeypatch.setenv("TAPELINE_NATS_PASSWORD_FEED", "f-secret")
    s = NatsSettings.from_env("nats://127.0.0.1:4222", identity="feed")
    assert (s.user, s.password) == ("feed", "f-secret") and "f-secret" not in repr(s)
    assert NatsSettings.from_env("nats://127.0.0.1:4222", identity="handler").user == ""  # no password: no identity
    monkeypatch.setenv("TAPELINE_NATS_USER", "alice")
    assert NatsSettings.from_env("nats://127.0.0.1:4222", identity="feed").user == "alice"  # explicit user wins


def test_the_committed_deploy_config_is_the_generated_one() -> None:
    committed = Path(__file__).resolve().parents[1] / "deploy" / "nats-auth.conf"
    assert committed.read_text() == deploy_config("tape"), "regenerate: tapeline auth-config > deploy/nats-auth.conf"
