"""OpenAI through ``openai``: chat completions with a strict ``json_schema`` response format.

``AsyncOpenAI(base_url=..., api_key=..., max_retries=0)`` (our :func:`with_retries` retries, as
for every provider) and ``chat.completions.create(messages=[system, user], response_format=
{"type": "json_schema", "json_schema": {"name", "strict": True, "schema"}})``. The key comes from
``OPENAI_API_KEY`` and is scrubbed from any error text kept.
"""

from __future__ import annotations

import openai

from tapeline.adapters.llm.base import Attempt, LlmReply, LlmRequest, RetryPolicy, retryable_status, with_retries
from tapeline.adapters.llm.keys import openai_key

DEFAULT_MODEL = "gpt-4o-mini"


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        base_url: str = "",
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        temperature: float = 0.0,
    ) -> None:
        self.model = model or DEFAULT_MODEL
        self.retry = retry or RetryPolicy()
        self.temperature = temperature
        self._key = openai_key()
        self._client = openai.AsyncOpenAI(
            api_key=self._key, base_url=base_url or None, timeout=timeout_s, max_retries=0
        )

    def __repr__(self) -> str:
        return f"OpenAIProvider(model={self.model!r})"

    async def complete(self, request: LlmRequest) -> LlmReply:
        async def attempt() -> Attempt:
            try:
                r = await self._client.chat.completions.create(
                    model=request.model or self.model,
                    messages=[{"role": "system", "content": request.system}, {"role": "user", "content": request.user}],
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": "sentiment", "strict": True, "schema": request.schema},
                    },
                    temperature=self.temperature,
                )
            except openai.APIStatusError as e:
                return Attempt(
                    error=self._scrub(f"HTTP {e.status_code}: {e.message}"), retry=retryable_status(e.status_code)
                )
            except Exception as e:  # network, timeout, a body that is not JSON: the outside world failed
                return Attempt(error=self._scrub(f"{type(e).__name__}: {e}"), retry=True)
            tin = r.usage.prompt_tokens if r.usage else 0
            tout = r.usage.completion_tokens if r.usage else 0
            if not r.choices:
                return Attempt(error="no choices in the reply", input_tokens=tin, output_tokens=tout)
            msg = r.choices[0].message
            if msg.refusal or not msg.content:
                return Attempt(
                    error=f"refused: {msg.refusal or 'empty content'}"[:500], input_tokens=tin, output_tokens=tout
                )
            return Attempt(text=msg.content, input_tokens=tin, output_tokens=tout)

        return await with_retries(self.name, self.retry, attempt)

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    async def aclose(self) -> None:
        await self._client.close()
