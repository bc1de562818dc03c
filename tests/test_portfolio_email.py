"""Alerts by e-mail through the notifier gateway, against a local SMTP server speaking the protocol."""

from __future__ import annotations

import pytest
import structlog

from tapeline.adapters.alerts import NotifierConfig, NotifierGateway, make_alert
from tapeline.bus.components import stamp_results
from tapeline.schemas.events import Notification
from tests.standins.smtp import SmtpServer
from tests.test_alerts_webhook import WebhookServer


def config(port: int, **kw: object) -> NotifierConfig:
    base: dict[str, object] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_starttls": False,
        "smtp_from": "tapeline@example.org",
        "smtp_to": ["desk@example.org", "risk@example.org"],
        "backoff_s": 0.01,
        "webhook_url_env": "TAPELINE_TEST_NO_WEBHOOK",
    }
    return NotifierConfig(**{**base, **kw})  # type: ignore[arg-type]


async def test_alert_mailed_once_with_auth_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAPELINE_SMTP_PASSWORD", "s3cret-pw")
    async with SmtpServer(user="bot", password="s3cret-pw", data_replies=["451 4.3.0 try again"]) as srv:
        gw = NotifierGateway(config(srv.port, smtp_user="bot"))
        assert gw.active() and not gw.webhook_on
        alert = make_alert("portfolio", "breaker", "daily loss limit hit", severity="critical", symbol="NVDA")
        with structlog.testing.capture_logs() as logs:
            (n,) = stamp_results(gw, alert, await gw.perform(alert))
        assert isinstance(n, Notification)
        assert (n.channel, n.delivered, n.attempts, n.alert_id) == ("email", True, 2, alert.event_id)
        (sender, rcpts, msg), *_ = srv.messages
        assert len(srv.messages) == 1 and sender == "tapeline@example.org"
        assert rcpts == ["desk@example.org", "risk@example.org"]
        assert msg["Subject"] == "[Tapeline] [CRITICAL] breaker NVDA"
        assert "daily loss limit hit" in msg.get_payload() and alert.key in msg.get_payload()
        assert "AUTH" in srv.commands
        assert "s3cret-pw" not in repr(logs) + repr(n) + repr(gw.email)


async def test_refusal_is_recorded_and_below_severity_is_not_sent() -> None:
    async with SmtpServer(data_replies=["554 5.7.1 rejected"]) as srv:
        gw = NotifierGateway(config(srv.port))
        refused = make_alert("f", "x", "bad", severity="critical")
        (n,) = await gw.perform(refused)
        assert isinstance(n, Notification) and not n.delivered and "554" in n.detail and n.attempts == 1
        info = make_alert("f", "y", "fyi", severity="info")
        (m,) = await gw.perform(info)
        assert isinstance(m, Notification) and not m.delivered and "min_severity" in m.detail
        assert srv.messages == []


async def test_webhook_first_then_mail_and_a_failing_webhook_mails_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    async with SmtpServer() as srv, WebhookServer([(500, {}, b"")] * 2) as hook:
        monkeypatch.setenv("TAPELINE_TEST_WEBHOOK", hook.url)
        gw = NotifierGateway(config(srv.port, webhook_url_env="TAPELINE_TEST_WEBHOOK", retries=1))
        alert = make_alert("f", "z", "both channels", severity="warning")
        with pytest.raises(Exception, match="failed after 2 attempts"):
            await gw.perform(alert)  # the runner retries this request later
        assert srv.messages == []  # so nothing may have been mailed yet
        out = await gw.perform(alert)  # the webhook answers 204 now
        assert [(n.channel, n.delivered) for n in out if isinstance(n, Notification)] == [
            ("webhook", True),
            ("email", True),
        ]
        assert len(srv.messages) == 1 and len(hook.bodies) == 3
        await gw.aclose()


def test_smtp_configuration_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="smtp_from and smtp_to"):
        NotifierConfig(smtp_host="mail.example.org")
    with pytest.raises(ValueError, match="smtp_password_env"):
        NotifierConfig(smtp_password_env="hunter2!")
