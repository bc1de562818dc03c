"""The HTTP discipline both news APIs share: backoff on 429/5xx honouring ``Retry-After``, one clear
line for a refused key, and no secret in any message.

Marketaux takes its key as the ``api_token`` query parameter (its documented scheme), so a URL may
hold a secret: messages name the provider and path only, never the URL, and httpx's own request
log (which prints URLs at INFO) is kept at WARNING.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import msgspec
import structlog

log = structlog.get_logger("tapeline.news")

for _name in ("httpx", "httpcore"):  # their INFO/DEBUG lines carry full URLs, i.e. Marketaux's api_token
    logging.getLogger(_name).setLevel(logging.WARNING)


class NewsSourceError(ValueError):
    """A news provider cannot be used as configured (missing or refused key, bad request); one line."""


class NewsUnavailable(RuntimeError):
    """The provider kept failing (429/5xx/network) after every retry; the feed tries again next poll."""


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def error_text(body: Any) -> str:
    """A decoded error body, short: Marketaux ``{"error": {"code", "message"}}``, Tiingo ``{"detail": ...}``."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return f"{err.get('code', '')}: {err.get('message', '')}".strip(": ")[:160]
        for key in ("detail", "message", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])[:160]
    return " ".join(str(body).split())[:160]


def error_detail(resp: httpx.Response) -> str:
    """The provider's own error text from a response, else the start of the body."""
    try:
        return error_text(msgspec.json.decode(resp.content))
    except msgspec.DecodeError:
        return " ".join(resp.text.split())[:160]


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    initial_s: float
    max_s: float
    retries: int


async def get_json(
    client: httpx.AsyncClient,
    provider: str,
    path: str,
    *,
    params: Mapping[str, str | int],
    headers: Mapping[str, str] | None = None,
    key_hint: str,
    backoff: Backoff,
) -> Any:
    """GET ``path`` and decode JSON. 429 and 5xx (and network errors) are retried with exponential
    backoff and jitter, waiting at least ``Retry-After`` (even beyond ``max_s``); 402 (a spent
    plan) raises :class:`NewsUnavailable` at once; 401/403 raise :class:`NewsSourceError`
    naming ``key_hint`` (the variable to fix); other 4xx raise it with the provider's message."""
    delay = backoff.initial_s
    for attempt in range(backoff.retries + 1):
        try:
            resp = await client.get(path, params=params, headers=headers)
        except httpx.TransportError as e:
            reason, wait = f"network error {type(e).__name__}", delay
        else:
            status = resp.status_code
            if status < 400:
                try:
                    return msgspec.json.decode(resp.content)
                except msgspec.DecodeError:
                    reason, wait = f"HTTP {status} with a body that is not JSON", delay
            elif status in (401, 403):
                raise NewsSourceError(
                    f"{provider}: the API refused the key (HTTP {status} {error_detail(resp)}); "
                    f"check {key_hint} in the environment or .env"
                )
            elif status == 402:  # Marketaux: the plan's daily usage is spent; retrying now cannot help
                raise NewsUnavailable(f"{provider}: usage limit reached (HTTP 402 {error_detail(resp)})")
            elif status == 429 or status >= 500:
                hinted = retry_after_s(resp.headers.get("Retry-After"))
                reason = f"HTTP {status} {error_detail(resp)}"
                wait = max(min(backoff.max_s, delay), hinted) if hinted is not None else delay
            else:
                raise NewsSourceError(f"{provider}: {path} answered HTTP {status} {error_detail(resp)}")
        if attempt == backoff.retries:
            raise NewsUnavailable(f"{provider}: {path} failed {attempt + 1} times, last: {reason}")
        wait = max(wait, min(backoff.max_s, delay)) * (1 + random.random() * 0.1)
        log.warning("news request retried", provider=provider, path=path, reason=reason, wait_s=round(wait, 2))
        await asyncio.sleep(wait)
        delay = min(backoff.max_s, delay * 2)
    raise AssertionError("unreachable")
