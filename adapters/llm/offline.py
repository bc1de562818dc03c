"""The ``offline`` provider: the packaged sentiment model (models/sentiment.py) answering in the
strict reply format, so the parser, the recorded ``LlmCall`` and replay work exactly as with an LLM.

It scores the headline once and gives every asked ticker that score (it cannot tell tickers apart):
``relevance`` 1.0, ``impact`` = |score|. Used when no LLM key is set, and by the demo.
"""

from __future__ import annotations

import asyncio
import json
import time

from tapeline.adapters.llm.base import LlmReply, LlmRequest
from tapeline.models.sentiment import load_sentiment_model


class OfflineProvider:
    name = "offline"

    def __init__(self) -> None:
        self._model = load_sentiment_model()
        self.model = self._model.version

    async def complete(self, request: LlmRequest) -> LlmReply:
        started = time.perf_counter()
        [score] = await asyncio.to_thread(self._model.score, [request.title or request.article])
        value = round(max(-1.0, min(1.0, score)), 4)
        scores = [{"ticker": t, "score": value, "relevance": 1.0, "impact": abs(value)} for t in request.tickers]
        return LlmReply(text=json.dumps({"scores": scores}), latency_ms=(time.perf_counter() - started) * 1000)

    async def aclose(self) -> None:
        return None
