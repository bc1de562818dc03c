"""The SemEval-2017 Task 5 headlines as demo news, paired with the demo's price symbols.

The file (``id, company, title, sentiment``; Cortis et al., 2017) has companies but no tickers and
no dates, so the pairing is made up, deterministically and documented:

* a company maps to a symbol by :data:`KNOWN` when that symbol is in play (Berkshire Hathaway ->
  ``BRK.B``, Oracle -> ``ORCL``, ...), else to ``symbols[blake2b(company) % len(symbols)]``, so one
  company always lands on the same symbol;
* headlines with the same normalised title are one item (the file repeats some, once for two
  companies), with every company's symbol;
* each symbol's items, in file order, are spread evenly over that symbol's span (its price file's
  first..last time, or the configured start..end).

Entries that are not objects with a non-empty ``title`` and ``company`` are rejected with their
1-based entry number. The gold ``sentiment`` stays in the file: it is the scorer's answer key, not news.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import msgspec

from tapeline.adapters.files import FileImportError, Rejection, sample
from tapeline.adapters.news.dedup import news_id, normalise_title
from tapeline.adapters.news.fnspid import NewsImport
from tapeline.schemas.events import NewsItem

PROVIDER = "semeval"
KNOWN = {
    "berkshire hathaway": "BRK.B",
    "oracle": "ORCL",
    "nvidia": "NVDA",
    "apple": "AAPL",
    "microsoft": "MSFT",
}


def assign_symbol(company: str, symbols: list[str]) -> str:
    """The symbol a company's headlines are paired with (see the module docstring)."""
    name = normalise_title(company)
    for known, symbol in KNOWN.items():
        if name.startswith(known) and symbol in symbols:
            return symbol
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return symbols[int.from_bytes(digest, "big") % len(symbols)]


def read_semeval(path: Path, symbols: list[str], spans: dict[str, tuple[int, int]]) -> NewsImport:
    """Headlines as NewsItems on ``symbols``, each symbol's spread over ``spans[symbol]``."""
    if not symbols:
        raise ValueError("semeval: no symbols to pair the headlines with")
    try:
        raw = msgspec.json.decode(path.read_bytes())
    except FileNotFoundError:
        raise FileImportError(f"{path}: no such file") from None
    except (OSError, msgspec.DecodeError) as e:
        raise FileImportError(f"{path}: not a readable JSON file ({sample(str(e))})") from None
    if not isinstance(raw, list):
        raise FileImportError(f"{path}: expected a JSON array of {{id, company, title, sentiment}} objects")
    result = NewsImport(items=[], path=str(path), rows=len(raw))
    groups: dict[str, tuple[str, str, list[str]]] = {}  # normalised title -> (id, title, symbols)
    for n, entry in enumerate(raw, 1):
        if not isinstance(entry, dict):
            result.rejected.append(Rejection(n, "entry is not an object"))
            continue
        title = " ".join(str(entry.get("title") or "").split())
        company = str(entry.get("company") or "").strip()
        if not normalise_title(title) or not company:
            result.rejected.append(Rejection(n, f"needs a title and a company, got {sample(str(entry))}"))
            continue
        symbol = assign_symbol(company, symbols)
        key = normalise_title(title)
        if key in groups:
            if symbol not in groups[key][2]:
                groups[key][2].append(symbol)
            continue
        groups[key] = (str(entry.get("id", n)), title, [symbol])
    by_symbol: dict[str, list[tuple[str, str, list[str]]]] = {}
    for g in groups.values():
        by_symbol.setdefault(g[2][0], []).append(g)
    now = time.time_ns()
    for symbol, items in by_symbol.items():
        start, end = spans[symbol]
        step = (end - start) // len(items)
        for i, (article, title, tickers) in enumerate(items):
            published = start + step * i + step // 2
            result.items.append(
                NewsItem(
                    event_id=news_id(published, "", title),
                    ts_event=published,
                    ts_init=now,
                    source=PROVIDER,
                    provider=PROVIDER,
                    article_id=article,
                    title=title,
                    tickers=tickers,
                    published_ns=published,
                )
            )
    result.items.sort(key=lambda it: it.published_ns)
    return result
