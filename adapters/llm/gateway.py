"""The ``news_llm`` gateway: each news item with tickers -> one LLM call, recorded as an ``LlmCall``.

The article's variant (its prompt) comes from the configured split, by a hash of the article's
id, so a re-run assigns the same one. The call (request, raw reply or error, provider, model,
prompt version, variant, request hash, tokens, latency, attempts) is stored before anything uses
it; the ``sentiment_parser`` handler derives the scores from the stored call. So replay and
what-if re-run the parser on recorded calls and never reach a provider (the in-process runner
answers the gateway from the recorded ``LlmCall``, looked up by the id it must have).

Result ids come from (gateway, version, request key); the request key is a hash of the news
event's id and the prompt version, computable without a provider or a key. The provider is
``auto`` (Gemini if ``GEMINI_API_KEY``/``GOOGLE_API_KEY`` is set, else OpenAI if
``OPENAI_API_KEY`` is, else the packaged offline scorer, ``adapters/llm/offline.py``) or named.
A provider that fails after its retries is recorded as an
``LlmCall`` with ``error`` set (the parser turns it into neutral scores and an alert).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Annotated, ClassVar, Literal, NamedTuple

import msgspec
import structlog

from tapeline.adapters.llm.base import LlmProvider, LlmRequest, RetryPolicy
from tapeline.adapters.llm.keys import gemini_key, openai_key
from tapeline.adapters.llm.prompts import Prompt, PromptError, assign_variant, clean_tickers, load_prompt
from tapeline.schemas.components import Consumes, Gateway, draft
from tapeline.schemas.events import AnyEvent, Event, LlmCall, NewsItem

log = structlog.get_logger("tapeline.llm")


class NewsLlmConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    provider: Literal["auto", "gemini", "openai", "offline"] = "auto"
    model: str = ""  # empty: the provider's default (gemini-2.5-flash, gpt-4o-mini)
    gemini_base_url: str = ""  # empty: Google's endpoint
    openai_base_url: str = ""  # empty: OpenAI's endpoint (e.g. http://host/v1 for a compatible server)
    variants: dict[str, Annotated[float, msgspec.Meta(gt=0)]] = msgspec.field(default_factory=lambda: {"v1": 1.0})
    prompt_dir: str = ""  # empty: the prompts shipped with Tapeline (adapters/llm/prompts)
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    backoff_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    max_backoff_s: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.0

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError('variants: name at least one prompt, e.g. {"v1" = 1.0}')
        for name in self.variants:
            try:
                load_prompt(name, self.prompt_dir)
            except PromptError as e:
                raise ValueError(f"variants: {e}") from None

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(retries=self.retries, backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s)


class ProviderSpec(NamedTuple):
    make: Callable[[NewsLlmConfig], LlmProvider]
    available: Callable[[], bool]  # its key is set, its model is installed


PROVIDERS: dict[str, ProviderSpec] = {
    "gemini": ProviderSpec(lambda c: _gemini(c), lambda: bool(gemini_key())),
    "openai": ProviderSpec(lambda c: _openai(c), lambda: bool(openai_key())),
    "offline": ProviderSpec(lambda c: _offline(), lambda: True),  # the model ships with the package
}

# Each provider's SDK is imported only when that provider is chosen (each takes ~1.5 s to import).


def _gemini(c: NewsLlmConfig) -> LlmProvider:
    from tapeline.adapters.llm.gemini import GeminiProvider

    return GeminiProvider(
        c.model, base_url=c.gemini_base_url, timeout_s=c.timeout_s, retry=c.retry, temperature=c.temperature
    )


def _openai(c: NewsLlmConfig) -> LlmProvider:
    from tapeline.adapters.llm.openai_ import OpenAIProvider

    return OpenAIProvider(
        c.model, base_url=c.openai_base_url, timeout_s=c.timeout_s, retry=c.retry, temperature=c.temperature
    )


def _offline() -> LlmProvider:
    from tapeline.adapters.llm.offline import OfflineProvider  # loads the embedder: only when chosen

    return OfflineProvider()


AUTO_ORDER = ("gemini", "openai", "offline")


def resolve_provider(config: NewsLlmConfig) -> str | None:
    """The provider to use: the named one if it is available, else (auto) the first available."""
    names = AUTO_ORDER if config.provider == "auto" else (config.provider,)
    return next((n for n in names if n in PROVIDERS and PROVIDERS[n].available()), None)


def request_hash(provider: str, request: LlmRequest) -> str:
    """Identity of the exact request sent (provider, model, instructions, message, schema)."""
    body = json.dumps([provider, request.model, request.system, request.user, request.schema], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def article_key(news: NewsItem) -> str:
    """What the A/B split hashes: the provider's article id (the event id if there is none)."""
    return f"{news.provider}:{news.article_id}" if news.article_id else news.event_id


class NewsLlmGateway(Gateway):
    """News -> one LLM call per article (with tickers), recorded as an LlmCall before it is used."""

    name: ClassVar[str] = "news_llm"
    role: ClassVar[str] = "intel"
    Config: ClassVar[type[msgspec.Struct]] = NewsLlmConfig
    emits: ClassVar[tuple[type[Event], ...]] = (LlmCall,)
    consumes = (Consumes(NewsItem),)

    def __init__(self, config: NewsLlmConfig | None = None, *, provider: LlmProvider | None = None) -> None:
        super().__init__(config)
        c: NewsLlmConfig = self.config
        self.prompts: dict[str, Prompt] = {n: load_prompt(n, c.prompt_dir) for n in c.variants}
        self._provider = provider

    def active(self) -> bool:
        return self._provider is not None or resolve_provider(self.config) is not None

    @property
    def provider(self) -> LlmProvider:
        if self._provider is None:
            name = resolve_provider(self.config)
            if name is None:
                raise RuntimeError(f"news_llm: no LLM provider available for provider = {self.config.provider!r}")
            self._provider = PROVIDERS[name].make(self.config)
            log.info("llm provider", provider=name, model=self._provider.model)
        return self._provider

    def wants(self, event: AnyEvent) -> bool:
        return isinstance(event, NewsItem) and bool(clean_tickers(event.tickers))

    def prompt_for(self, news: NewsItem) -> Prompt:
        return self.prompts[assign_variant(article_key(news), self.config.variants)]

    def request_key(self, event: AnyEvent) -> str:
        assert isinstance(event, NewsItem)
        return hashlib.sha256(f"{event.event_id}|{self.prompt_for(event).version}".encode()).hexdigest()[:24]

    async def perform(self, event: AnyEvent) -> Sequence[Event]:
        assert isinstance(event, NewsItem)
        prompt = self.prompt_for(event)
        tickers = clean_tickers(event.tickers)
        p = self.provider
        article = {"id": event.article_id, "title": event.title, "summary": event.summary}
        req = prompt.request(self.config.model or p.model, article, tickers)
        reply = await p.complete(req)
        if reply.error:
            log.warning("llm call failed", provider=p.name, news_id=event.event_id, error=reply.error[:200])
        return [
            draft(
                LlmCall,
                # event time of the news it scores: decisions combine it with the market data of that
                # moment (in replays and backtests too); when the call ran is ts_init
                ts_event=event.ts_event,
                provider=p.name,
                model=req.model,
                prompt_version=prompt.version,
                variant=prompt.name,
                request_hash=request_hash(p.name, req),
                news_id=event.event_id,
                response_text=reply.text,
                error=reply.error,
                latency_ms=reply.latency_ms,
                input_tokens=reply.input_tokens,
                output_tokens=reply.output_tokens,
                request=json.dumps({"system": req.system, "user": req.user, "schema": req.schema}),
                tickers=tickers,
                attempts=reply.attempts,
            )
        ]

    async def aclose(self) -> None:
        if self._provider is not None:
            await self._provider.aclose()
