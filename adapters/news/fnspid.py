"""FNSPID news CSV files, validated row by row like the market-data importer.

FNSPID (Financial News and Stock Price Integration Dataset, Dong et al. 2024,
github.com/Zdong104/FNSPID) ships news as CSV with the columns ``Date, Article_title,
Stock_symbol, Url, Publisher, Author, Article, Lsa_summary, Luhn_summary, Textrank_summary,
Lexrank_summary``; ``Date`` reads ``2023-12-16 23:00:00 UTC``. Column names are matched as in
``adapters.files`` (case, spaces and ``_`` ignored); ``Date``, ``Article_title`` and
``Stock_symbol`` are required, the rest optional. Files are usually newest first: items are sorted
by time, never rejected as out of order.

A row is rejected, with the file line it starts on and the reason, when it has the wrong number of
fields, no title, an unparseable or future date, a symbol that is not a ticker, or a URL that is not
http(s); or when it repeats an earlier row (same story and same symbol). The same story listed under
several symbols (FNSPID has one row per symbol) becomes one item with all the tickers. A file that
cannot be read at all raises :class:`~tapeline.adapters.files.FileImportError` naming it.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tapeline.adapters.files import (
    FileImportError,
    Rejection,
    Row,
    _csv_lines,
    _norm,
    _parquet_rows,
    _sniff,
    parse_time_ns,
    sample,
)
from tapeline.adapters.news.dedup import news_id, normalise_title, story_key
from tapeline.schemas.events import NewsItem

PROVIDER = "fnspid"
COLUMNS = ("date", "articletitle", "stocksymbol", "url", "publisher", "author", "article",
           "lsasummary", "luhnsummary", "textranksummary", "lexranksummary")  # fmt: skip
REQUIRED = ("date", "articletitle", "stocksymbol")
SUMMARIES = ("lsasummary", "luhnsummary", "textranksummary", "lexranksummary")
SUMMARY_CHARS = 1000
_TICKER = re.compile(r"[A-Z0-9][A-Z0-9.\-]{0,14}")
_FUTURE_NS = 86_400 * 10**9  # a day of clock skew


@dataclass(slots=True)
class NewsImport:
    """What a news file gave: items sorted by time, and the rows that were rejected."""

    items: list[NewsItem]
    rejected: list[Rejection] = field(default_factory=list)
    path: str = ""
    rows: int = 0
    note: str = ""

    def report(self, limit: int = 20) -> str:
        head = f"{self.path}: {len(self.items)} items, {len(self.rejected)} rejected of {self.rows} rows"
        if self.note:
            head += f" ({self.note})"
        lines = [f"  line {r.line}: {r.reason}" for r in self.rejected[:limit]]
        if len(self.rejected) > limit:
            lines.append(f"  ... and {len(self.rejected) - limit} more")
        return "\n".join([head, *lines])


class _Bad(ValueError):
    pass


@dataclass(slots=True)
class _Story:
    line: int
    published: int
    title: str
    url: str
    summary: str
    key: str
    tickers: list[str]


@contextmanager
def _rows(path: Path) -> Iterator[tuple[list[str], Iterator[Row]]]:
    kind = _sniff(path)
    if kind == "parquet":
        yield _parquet_rows(path)
        return
    opened = (
        gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="")  # noqa: SIM115 - closed by the with below
        if kind == "gzip"
        else path.open(newline="", encoding="utf-8-sig", errors="replace")
    )
    with opened as fh:
        rows = _csv_lines(fh)
        first = next(rows, None)
        if first is None:
            yield [], iter(())
            return
        line, values = first
        if isinstance(values, str):
            raise FileImportError(f"{path}: line {line}: the header cannot be read: {values}")
        yield [_norm(v) for v in values], rows


def _published(text: str, now: int) -> int:
    s = text.strip()
    if s.upper().endswith(" UTC"):
        s = s[:-4]
    try:
        t = parse_time_ns(s)
    except ValueError as e:
        raise _Bad(f"Date: {e}") from None
    if t > now + _FUTURE_NS:
        raise _Bad(f"Date: {sample(text)} is in the future")
    return t


def _url(text: str) -> str:
    url = text.strip()
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _Bad(f"Url: {sample(url)} is not an http(s) URL")
    return url


def _summary(row: dict[str, str]) -> str:
    text = next((row[c].strip() for c in SUMMARIES if row.get(c, "").strip()), "")
    return text[:SUMMARY_CHARS]


def read_fnspid(path: Path, *, provider: str = PROVIDER) -> NewsImport:
    """Import one FNSPID CSV (plain, gzip or Parquet); see the module docstring for the rules."""
    result = NewsImport(items=[], path=str(path))
    now = time.time_ns()
    with _rows(path) as (header, rows):
        if not header:
            result.note = "empty file"
            return result
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise FileImportError(
                f"{path}: not an FNSPID news file: no {', '.join(missing)} column(s); "
                f"expected {', '.join(COLUMNS)}; the header reads {sample(','.join(header))}"
            )
        stories: dict[str, _Story] = {}
        seen: dict[tuple[str, str], int] = {}  # (key, symbol) -> line
        for line, values in rows:
            result.rows += 1
            try:
                if isinstance(values, str):
                    raise _Bad(values)
                if len(values) != len(header):
                    raise _Bad(f"expected {len(header)} fields, got {len(values)}")
                row = dict(zip(header, values, strict=True))
                title = " ".join(row["articletitle"].split())
                if not normalise_title(title):
                    raise _Bad("Article_title: empty")
                published = _published(row["date"], now)
                symbol = row["stocksymbol"].strip().upper()
                if symbol and not _TICKER.fullmatch(symbol):
                    raise _Bad(f"Stock_symbol: {sample(row['stocksymbol'])} is not a ticker")
                url = _url(row.get("url", ""))
                key = story_key(url, title)
                if (key, symbol) in seen:
                    raise _Bad(f"duplicate of line {seen[key, symbol]}")
            except _Bad as e:
                result.rejected.append(Rejection(line, str(e)))
                continue
            seen[key, symbol] = line
            if key in stories:
                if symbol and symbol not in stories[key].tickers:
                    stories[key].tickers.append(symbol)
                continue
            stories[key] = _Story(line, published, title, url, _summary(row), key, [symbol] if symbol else [])
    if not result.rows:
        result.note = "header only, no data rows"
    for st in sorted(stories.values(), key=lambda st: (st.published, st.line)):
        result.items.append(
            NewsItem(
                event_id=news_id(st.published, st.url, st.title, key=st.key),
                ts_event=st.published,
                ts_init=now,
                source=provider,
                provider=provider,
                article_id=hashlib.blake2b(st.key.encode(), digest_size=8).hexdigest(),
                title=st.title,
                tickers=st.tickers,
                summary=st.summary,
                url=st.url,
                published_ns=st.published,
            )
        )
    return result


__all__ = ["COLUMNS", "NewsImport", "read_fnspid"]
