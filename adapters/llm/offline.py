"""The ``offline`` provider: the packaged sentiment model (models/sentiment.py) answering in the
strict reply format, so the parser, the recorded ``LlmCall`` and replay work exactly as with an LLM.

It scores the headline once per asked ticker, with that ticker masked in the text where it occurs
("AAPL"/"$AAPL" -> the model's placeholder, as the training headlines' company names were); a headline
that names none of them gets one score for all. ``relevance`` 1.0, ``impact`` = |score|. Used when no
LLM key is set, and by the demo.
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
        text = request.title or request.article
        raw = await asyncio.to_thread(self._model.score, [text] * len(request.tickers), list(request.tickers))
        values = [round(max(-1.0, min(1.0, s)), 4) for s in raw]
        scores = [
            {"ticker": t, "score": v, "relevance": 1.0, "impact": abs(v)}
            for t, v in zip(request.tickers, values, strict=True)
        ]
        return LlmReply(text=json.dumps({"scores": scores}), latency_ms=(time.perf_counter() - started) * 1000)

    async def aclose(self) -> None:
        return None
