"""Shared by the embedding and vector tests: one loaded model per test process, real data loaders."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tapeline.bus.components import react
from tapeline.handlers.enrichment import MarketFeatures
from tapeline.models.embedder import Backend, TextEmbedder
from tapeline.schemas.events import Bar, Enrichment

DAY_NS = 86_400 * 1_000_000_000


@functools.cache
def embedder(backend: Backend, cache_dir: Path) -> TextEmbedder:
    """Loading takes seconds: every test file's session fixture gets the same instance."""
    return TextEmbedder(backend, cache_dir=cache_dir)


def headlines(shared_data: Path) -> list[dict[str, Any]]:
    with (shared_data / "news" / "semeval2017-task5-headlines.json").open(encoding="utf-8") as f:
        rows: list[dict[str, Any]] = json.load(f)
    return rows


def enrichments(bars: Iterable[Bar]) -> list[Enrichment]:
    """The Enrichment events the ``enrichment`` handler emits for ``bars``, stamped as the runners stamp them."""
    handler = MarketFeatures()
    return [e for b in bars for e in react(handler, b) if isinstance(e, Enrichment)]
