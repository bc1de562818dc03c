"""Webhook notifier against a real local HTTP server (asyncio), scripted to fail then succeed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import msgspec
import pytest
import structlog
from nats.aio.client import Client

from tapeline.adapters.alerts import NotifierConfig, NotifierGateway, NotifyError, WebhookNotifier, make_alert
from tapeline.bus.components import ComponentRunner
from tapeline.bus.inprocess import InProcessRunner
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.publisher import Publisher
from tapeline.schemas.subjects import OPS
from tests.helpers import stored, wait_stored, wait_until


class WebhookServer:
    """Answers POSTs with scripted statuses (then 204) and records the JSON bodies."""

    def __init__(self, script: list[tuple[int, dict[str, str], bytes]]) -> None:
        self.script = list(script)
        self.bodies: list[dict[str, object]] = []
        self.paths: list[str] = []
        self.times: list[float] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            self.paths.append(lines[0].split(" ")[1])
            length = next(int(h.split(":", 1)[1]) for h in lines if h.lower().startswith("content-length"))
            body = await reader.readexactly(length)
            self.bodies.append(json.loads(body))
            self.times.append(asyncio.get_running_loop().time())
            status, headers, payload = self.script.pop(0) if self.script else (204, {}, b"")
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: {len(payload)}\r\n{extra}\r\n".encode() + payload)
            await writer.drain()
        finally:
            writer.close()

    async def __aenter__(self) -> WebhookServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/webhooks/123/TOKEN-secret"


@pytest.fixture
async def notifier_factory() -> AsyncIterator[list[WebhookNotifier]]:
    made: list[WebhookNotifier] = []
    yield made
    for n in made:
        await n.aclose()


async def test_discord_payload_after_retries(notifier_factory: list[WebhookNotifier]) -> None:
    script = [(500, {}, b"oops"), (429, {"content-type": "application/json"}, b'{"retry_after": 0.15}')]
    async with WebhookServer(script) as srv:
        n = WebhookNotifier(srv.url, retries=3, backoff_s=0.05)
        notifier_factory.append(n)
        alert = make_alert("mt5-raw", "terminal_disconnected", "terminal lost", severity="critical")
        with structlog.testing.capture_logs() as logs:
            assert await n.notify(alert) is True
        assert len(srv.bodies) == 3 and n.attempts == 3
        assert srv.times[2] - srv.times[1] >= 0.14  # honoured Discord's retry_after
        assert srv.times[1] - srv.times[0] >= 0.04  # backoff
        body = srv.bodies[-1]
        assert body["username"] == "Tapeline"
        assert "terminal_disconnected" in str(body["content"])
        embed = body["embeds"][0]  # type: ignore[index]
        assert embed["color"] == 0xE74C3C and embed["description"] == "terminal lost"
        assert all("TOKEN-secret" not in json.dumps(e) for e in logs)  # the URL token is never logged
        assert "TOKEN-secret" not in repr(n)


async def test_gives_up_and_does_not_retry_client_errors(notifier_factory: list[WebhookNotifier]) -> None:
    async with WebhookServer([(503, {}, b"")] * 3) as srv:
        n = WebhookNotifier(srv.url, retries=2, backoff_s=0.01)
        notifier_factory.append(n)
        with pytest.raises(NotifyError, match="after 3 attempts"):
            await n.notify(make_alert("f", "k", "m", severity="critical"))
        assert len(srv.bodies) == 3
    async with WebhookServer([(404, {}, b"")]) as srv:
        n = WebhookNotifier(srv.url, retries=5, backoff_s=0.01)
        notifier_factory.append(n)
        with pytest.raises(NotifyError, match="404"):
            await n.notify(make_alert("f", "k", "m", severity="critical"))
        assert len(srv.bodies) == 1


async def test_severity_filter_and_resolved_always_sent(notifier_factory: list[WebhookNotifier]) -> None:
    async with WebhookServer([]) as srv:
        n = WebhookNotifier(srv.url, min_severity="critical", backoff_s=0.01)
        notifier_factory.append(n)
        assert await n.notify(make_alert("f", "k", "just info", severity="warning")) is False
        assert await n.notify(make_alert("f", "k", "over", severity="info", resolved=True)) is True
        assert len(srv.bodies) == 1 and "RESOLVED" in str(srv.bodies[0]["content"])


async def test_notifier_gateway_posts_each_alert_once_and_replay_never_calls_out(
    nc: Client, provisioned: str, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook is a gateway: a failed post is retried, a stored result is never posted again
    (redelivery, restart beyond the duplicate window), and replay answers from the record only."""
    async with WebhookServer([(500, {}, b"")] * 2) as srv:
        monkeypatch.setenv("TAPELINE_ALERT_WEBHOOK_URL", srv.url)
        gw = NotifierGateway(NotifierConfig(retries=0, backoff_s=0.01))
        alerts = [make_alert("f", "a", "one", severity="critical"), make_alert("f", "b", "two", severity="critical")]
        await publisher.publish(alerts)
        runner = ComponentRunner(nc, publisher, gw, provisioned)
        runner.specs = [msgspec.structs.replace(sp, backoff_s=0.05) for sp in runner.specs]
        task = asyncio.create_task(runner.run())
        notified = f"{provisioned}.ops.notify.>"
        await wait_stored(nc, OPS.stream(provisioned), notified, lambda e: len(e) == 2, within=60)
        runner.stop()
        await task
        assert len(srv.bodies) == 4, "two refused by the 500s, then each alert delivered once"
        assert [n.delivered for n in await stored(nc, OPS.stream(provisioned), notified)] == [True, True]  # type: ignore[attr-defined]
        # A restart that lost every ack: the stored results are found, nothing is posted again.
        api = JetStreamApi(nc)
        (spec,) = runner.specs
        await api.delete_consumer(spec.stream, spec.durable)
        again = ComponentRunner(nc, publisher, NotifierGateway(NotifierConfig(retries=0)), provisioned)
        task = asyncio.create_task(again.run())
        await wait_until(lambda: again.runtimes and again.runtimes[0].processed == 2, timeout=60)
        again.stop()
        await task
        assert len(srv.bodies) == 4 and sum(s.performed for s in again.sinks) == 0  # type: ignore[union-attr]
        # Replay: the recorded notifications come back with the same ids; no call goes out.
        recorded = await stored(nc, OPS.stream(provisioned), notified)
        replayed = await InProcessRunner([gw], provisioned, recorded=recorded).run(alerts)  # type: ignore[arg-type]
        assert [e.event_id for e in replayed] == [e.event_id for e in recorded]
        assert await InProcessRunner([gw], provisioned).run(alerts) == []  # type: ignore[arg-type]
        assert len(srv.bodies) == 4
