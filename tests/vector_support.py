"""Shared by the embedding and vector tests: one loaded model per test process, real data loaders."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import json
from pathlib import Path
from typing import Any

from projections.embedder import Backend, TextEmbedder
from schemas.events import Bar

DAY_NS = 86_400 * 1_000_000_000


@functools.cache
def embedder(backend: Backend, cache_dir: Path) -> TextEmbedder:
    """Loading takes seconds: every test file's session fixture gets the same instance."""
    return TextEmbedder(backend, cache_dir=cache_dir)


def headlines(shared_data: Path) -> list[dict[str, Any]]:
    with (shared_data / "news" / "semeval2017-task5-headlines.json").open(encoding="utf-8") as f:
        rows: list[dict[str, Any]] = json.load(f)
    return rows


@functools.cache
def daily_bars(path: Path, symbol: str) -> list[Bar]:
    """Yahoo daily CSV -> Bars closing at the next midnight UTC; ``close`` is the split-adjusted close
    and open/high/low are scaled by the same factor, so returns across splits are real returns."""
    bars: list[Bar] = []
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            day = dt.datetime.strptime(r["Date"], "%Y-%m-%d").replace(tzinfo=dt.UTC)
            start = int(day.timestamp()) * 1_000_000_000
            adj = float(r["Adj Close"]) / float(r["Close"])
            bars.append(
                Bar(
                    event_id=f"{symbol}-1d-{r['Date']}",
                    ts_event=start + DAY_NS,
                    ts_init=start + DAY_NS,
                    source="test",
                    symbol=symbol,
                    interval="1d",
                    start_ns=start,
                    open=float(r["Open"]) * adj,
                    high=float(r["High"]) * adj,
                    low=float(r["Low"]) * adj,
                    close=float(r["Adj Close"]),
                    volume=float(r["Volume"]),
                )
            )
    return bars
