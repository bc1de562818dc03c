"""Connecting to NATS: embedded by default, or an external server by URL with auth and TLS.

Secrets (password, token) come only from the environment, never from files we write or logs.
"""

from __future__ import annotations

import os
import ssl

import msgspec
import nats
from nats.aio.client import Client


class NatsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach NATS. ``url`` empty means: start the embedded server."""

    url: str = ""
    user: str = ""
    password: str = msgspec.field(default="", name="password")
    token: str = ""
    creds_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    name: str = "tapeline"

    @classmethod
    def from_env(cls, url: str = "", name: str = "tapeline") -> NatsSettings:
        """Read ``TAPELINE_NATS_*`` variables; an explicit ``url`` wins over the environment."""
        env = os.environ.get
        return cls(
            url=url or env("TAPELINE_NATS_URL", ""),
            user=env("TAPELINE_NATS_USER", ""),
            password=env("TAPELINE_NATS_PASSWORD", ""),
            token=env("TAPELINE_NATS_TOKEN", ""),
            creds_file=env("TAPELINE_NATS_CREDS", ""),
            tls_ca=env("TAPELINE_NATS_TLS_CA", ""),
            tls_cert=env("TAPELINE_NATS_TLS_CERT", ""),
            tls_key=env("TAPELINE_NATS_TLS_KEY", ""),
            name=name,
        )

    def __repr__(self) -> str:  # never print secrets
        auth = "yes" if self.password or self.token or self.creds_file else "no"
        return f"NatsSettings(url={self.url!r}, user={self.user!r}, auth={auth})"


def _tls_context(s: NatsSettings) -> ssl.SSLContext | None:
    if not (s.tls_ca or s.tls_cert):
        return None
    ctx = ssl.create_default_context(cafile=s.tls_ca or None)
    if s.tls_cert:
        ctx.load_cert_chain(s.tls_cert, s.tls_key or None)
    return ctx


async def connect(settings: NatsSettings) -> Client:
    """Open a connection that reconnects forever; larger pending buffer for the publish fast path."""
    if not settings.url:
        raise ValueError("no NATS URL: pass --nats URL, set TAPELINE_NATS_URL, or use the embedded server")
    return await nats.connect(
        servers=[u.strip() for u in settings.url.split(",")],
        name=settings.name,
        user=settings.user or None,
        password=settings.password or None,
        token=settings.token or None,
        user_credentials=settings.creds_file or None,
        tls=_tls_context(settings),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        pending_size=64 * 1024 * 1024,
        flush_timeout=30,
    )
