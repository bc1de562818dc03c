"""Alerts by e-mail over SMTP (``[notifier] smtp_*``): one message per alert, standard library only.

Sent from a worker thread with :mod:`smtplib`: ``EHLO``, ``STARTTLS`` when asked (or implicit TLS
on ``smtp_ssl``), ``AUTH`` when a user is set (the password only from the environment variable
named by ``smtp_password_env``, never logged), one message to every recipient. Temporary failures
(connection errors, 4xx replies) are retried with backoff; a permanent refusal (5xx) is final.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import structlog

from tapeline.schemas.events import Alert, Severity

log = structlog.get_logger("tapeline.notify")
_RANK = {"info": 0, "warning": 1, "critical": 2}


class EmailError(RuntimeError):
    """The SMTP server did not take the message: refused (``final``) or failed after all retries."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


def alert_message(alert: Alert, sender: str, to: list[str], *, prefix: str = "Tapeline") -> EmailMessage:
    state = "RESOLVED" if alert.resolved else alert.severity.upper()
    when = datetime.fromtimestamp(alert.ts_event / 1e9, UTC)
    msg = EmailMessage()
    msg["Subject"] = f"[{prefix}] [{state}] {alert.kind}" + (f" {alert.symbol}" if alert.symbol else "")
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = make_msgid(idstring=alert.event_id, domain="tapeline")
    msg.set_content(
        f"{alert.message}\n\nkind: {alert.kind}\nkey: {alert.key}\nseverity: {alert.severity}\n"
        f"resolved: {alert.resolved}\ntime: {when.isoformat()}\nevent: {alert.event_id}\n"
    )
    return msg


class SmtpNotifier:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        sender: str,
        to: list[str],
        user: str = "",
        password: str = "",
        starttls: bool = True,
        use_ssl: bool = False,
        retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        timeout_s: float = 10.0,
        min_severity: Severity = "warning",
    ) -> None:
        self.host, self.port = host, port
        self.sender, self.to = sender, to
        self._user, self._password = user, password
        self.starttls, self.use_ssl = starttls, use_ssl
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.timeout_s = timeout_s
        self.min_severity = min_severity
        self.sent = 0
        self.attempts = 0

    def __repr__(self) -> str:
        return f"SmtpNotifier(host={self.host!r}, port={self.port})"

    def wants(self, alert: Alert) -> bool:
        return alert.resolved or _RANK[alert.severity] >= _RANK[self.min_severity]

    def _send(self, msg: EmailMessage) -> None:
        ctx = ssl.create_default_context()
        smtp = (
            smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=ctx)
            if self.use_ssl
            else smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        )
        with smtp:
            smtp.ehlo()
            if self.starttls and not self.use_ssl:
                smtp.starttls(context=ctx)
                smtp.ehlo()
            if self._user:
                smtp.login(self._user, self._password)
            smtp.send_message(msg, from_addr=self.sender, to_addrs=self.to)

    async def notify(self, alert: Alert) -> bool:
        """Send one alert. True if sent, False if below ``min_severity``; raises :class:`EmailError`."""
        if not self.wants(alert):
            return False
        msg = alert_message(alert, self.sender, self.to)
        delay, last = self.backoff_s, ""
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                await asyncio.to_thread(self._send, msg)
            except smtplib.SMTPResponseException as e:
                last = f"SMTP {e.smtp_code}"
                if e.smtp_code >= 500:
                    raise EmailError(f"SMTP server {self.host} refused the alert: {last}", final=True) from None
            except smtplib.SMTPRecipientsRefused:
                raise EmailError(f"SMTP server {self.host} refused every recipient", final=True) from None
            except (smtplib.SMTPException, OSError) as e:
                last = type(e).__name__
            else:
                self.sent += 1
                return True
            if attempt == self.retries:
                break
            log.warning("smtp retry", host=self.host, attempt=attempt + 1, error=last, wait_s=round(delay, 3))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)
        raise EmailError(f"SMTP server {self.host} failed after {self.retries + 1} attempts: {last}")
