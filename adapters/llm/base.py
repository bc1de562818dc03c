"""The provider interface: one request in, one reply (or the error) out, never an exception for
what the provider did.

A provider turns an :class:`LlmRequest` (system text, user text with the article in its delimited
data field, the output JSON Schema, plus the plain article and tickers for scorers that are not
chat models) into an :class:`LlmReply`: the raw text, token counts, latency, attempts, or the
error after bounded retries. The gateway records the reply as an ``LlmCall`` event whatever it
is; only a bug in our code raises. :func:`with_retries` is the one retry loop (429, 5xx, timeouts,
connection errors; backoff doubling up to a cap), so every provider behaves alike.

An offline provider is a small class: ``name = "offline"``, ``model`` = the scorer's version,
and ``complete`` returning ``LlmReply(text=json.dumps({"scores": [...]}))`` in the strict format.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
import structlog

log = structlog.get_logger("tapeline.llm")


class LlmRequest(msgspec.Struct, frozen=True, kw_only=True):
    system: str
    user: str
    schema: dict[str, Any]
    model: str
    article: str = ""  # title and summary, plain (for scorers that are not chat models)
    title: str = ""  # the headline alone (what the offline scorer was trained on)
    tickers: list[str] = []


class LlmReply(msgspec.Struct, frozen=True, kw_only=True):
    text: str = ""
    error: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    attempts: int = 1


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """What one HTTP attempt gave: the reply text and tokens, or a failure (retry it or not)."""

    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    error: str = ""
    retry: bool = False


class LlmProvider(Protocol):
    name: str  # "gemini" | "openai" | "offline": the LlmCall's provider (and its subject token)
    model: str

    async def complete(self, request: LlmRequest) -> LlmReply: ...

    async def aclose(self) -> None: ...


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    retries: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 20.0


async def with_retries(
    provider: str,
    policy: RetryPolicy,
    attempt: Callable[[], Awaitable[Attempt]],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> LlmReply:
    """Run ``attempt`` until it succeeds, fails for good, or ``policy.retries`` retries are spent."""
    started = time.perf_counter()
    delay = policy.backoff_s
    n = 0
    while True:
        n += 1
        got = await attempt()
        if not got.error or not got.retry or n > policy.retries:
            return LlmReply(
                text=got.text,
                error=got.error if not got.error or not got.retry else f"{got.error} (after {n} attempts)",
                input_tokens=got.input_tokens,
                output_tokens=got.output_tokens,
                latency_ms=(time.perf_counter() - started) * 1e3,
                attempts=n,
            )
        log.warning("llm retry", provider=provider, attempt=n, error=got.error, wait_s=round(delay, 3))
        await asyncio.sleep(delay)
        delay = min(delay * 2, policy.max_backoff_s)


def retryable_status(code: int) -> bool:
    return code in (408, 409, 429) or code >= 500
