"""Gemini through ``google-genai``: JSON output constrained by the prompt's JSON Schema.

``Client(api_key=..., http_options=HttpOptions(base_url=..., api_version="v1beta"))`` and
``aio.models.generate_content`` with ``response_mime_type="application/json"`` and
``response_json_schema`` (the schema verbatim: the SDK's ``response_schema`` rewrites a dict
schema into its own OpenAPI subset and drops ``additionalProperties``). The SDK's own retries are
off (no ``retry_options``): :func:`with_retries` does them, like every provider's. The key comes
from ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY`` and is scrubbed from any error text kept.
"""

from __future__ import annotations

from google import genai
from google.genai import errors, types

from tapeline.adapters.llm.base import Attempt, LlmReply, LlmRequest, RetryPolicy, retryable_status, with_retries
from tapeline.adapters.llm.keys import gemini_key

DEFAULT_MODEL = "gemini-2.5-flash"


class GeminiProvider:
    name = "gemini"

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
        self._key = gemini_key()
        options = types.HttpOptions(api_version="v1beta", timeout=int(timeout_s * 1000), base_url=base_url or None)
        self._client = genai.Client(api_key=self._key, http_options=options)

    def __repr__(self) -> str:
        return f"GeminiProvider(model={self.model!r})"

    async def complete(self, request: LlmRequest) -> LlmReply:
        config = types.GenerateContentConfig(
            system_instruction=request.system,
            response_mime_type="application/json",
            response_json_schema=request.schema,
            temperature=self.temperature,
        )

        async def attempt() -> Attempt:
            try:
                r = await self._client.aio.models.generate_content(
                    model=request.model or self.model, contents=request.user, config=config
                )
            except errors.APIError as e:
                return Attempt(
                    error=self._scrub(f"HTTP {e.code} {e.status}: {e.message}"), retry=retryable_status(e.code)
                )
            except Exception as e:  # network, timeout, a body that is not JSON: the outside world failed
                return Attempt(error=self._scrub(f"{type(e).__name__}: {e}"), retry=True)
            usage = r.usage_metadata
            tin = (usage.prompt_token_count or 0) if usage else 0
            tout = (usage.candidates_token_count or 0) if usage else 0
            text = r.text
            if not text:
                reason = (
                    r.candidates[0].finish_reason if r.candidates else getattr(r.prompt_feedback, "block_reason", "")
                )
                return Attempt(
                    error=f"no text in the reply (finish/block reason {reason})", input_tokens=tin, output_tokens=tout
                )
            return Attempt(text=text, input_tokens=tin, output_tokens=tout)

        return await with_retries(self.name, self.retry, attempt)

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    async def aclose(self) -> None:
        await self._client.aio.aclose()
