"""Source alternation: ``[feeds.sources] active = "legacy" | "live"`` picks a whole set of sources.

The legacy set is file based (bar/tick files, Polygon aggregate files, FNSPID-style news files); the
live set is broker/vendor based (IBKR or MT5 ticks, Tiingo daily prices and yfinance bars, Marketaux
and Tiingo news). Switching is a config change only: :func:`active_sources` says what the active
set is and :func:`market_feed` builds its whole price feed: the ``market`` feed plus the set's
``bars`` sources (``polygon``; ``tiingo``, ``yfinance``), run side by side as one
:class:`MergedFeed`, wrapped by the history store when it is enabled (warm-up first, then every
bar appended). News is the ``news`` component (``adapters.news.feed``); its ``providers = "auto"``
follows the active set's ``news`` entry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import structlog

from tapeline.adapters.config import FeedConfigError, FeedsConfig, SourceChoice
from tapeline.adapters.runner import Feed, batch_safe
from tapeline.schemas.events import Event

log = structlog.get_logger("tapeline.feed")


class MergedFeed:
    """Several feeds as one: batches as each yields them; done when all are done; one failing stops all."""

    def __init__(self, feeds: Sequence[Feed], *, name: str | None = None) -> None:
        self.feeds = list(feeds)
        self.name = name or self.feeds[0].name
        self.batch_safe = all(batch_safe(f) for f in self.feeds)

    async def stream(self) -> AsyncIterator[Sequence[Event]]:
        queue: asyncio.Queue[Sequence[Event] | BaseException | None] = asyncio.Queue(maxsize=8)

        async def pump(feed: Feed) -> None:
            try:
                async for events in feed.stream():
                    await queue.put(events)
                await queue.put(None)
            except Exception as e:  # handed to the consumer, which raises it
                await queue.put(e)

        tasks = [asyncio.create_task(pump(f), name=f"feed-{f.name}") for f in self.feeds]
        running = len(tasks)
        try:
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t


def active_sources(cfg: FeedsConfig) -> SourceChoice:
    return cfg.sources.legacy if cfg.sources.active == "legacy" else cfg.sources.live


def market_feed(
    cfg: FeedsConfig,
    *,
    data_dir: Path = Path(".tapeline"),
    terminal: str | None = None,
    mt5: Any = None,
    ib: Any = None,
    resume: Any = None,
    tiingo: dict[str, Any] | None = None,
    yfinance: dict[str, Any] | None = None,
) -> Feed:
    """The active set's whole price feed: its market feed and bar sources, with the history store.

    ``tiingo`` / ``yfinance``: extra arguments of their clients (tests pass a stand-in's client or
    a download function). A missing Tiingo key raises ``PriceSourceError`` (one line) here, before
    anything runs; a terminal that cannot be picked raises ``LookupError``.
    """
    choice = active_sources(cfg)
    feed: Feed
    series: list[tuple[str, str]] = []
    symbols: list[str] = []  # what the vendors default to
    if choice.market == "files":
        feed = files_feed(cfg)
        series = files_series(cfg)
    elif choice.market == "ibkr":
        from tapeline.adapters.ibkr import IbkrFeed

        feed = IbkrFeed(cfg.ibkr, ib=ib)
        series = [(c.symbol, cfg.ibkr.bar_interval) for c in cfg.ibkr.contracts]
        symbols = [c.symbol for c in cfg.ibkr.contracts if c.sec_type == "STK"]
    elif choice.market == "mt5":
        from tapeline.adapters.mt5 import Mt5Feed

        term = pick_terminal(cfg, terminal)
        feed = Mt5Feed(term, mt5=mt5, resume=resume)
        series = [(s, term.bar_interval) for s in term.symbols] if term.warmup_days else []
    else:
        from tapeline.adapters.sim import SimFeed

        feed = SimFeed()
    feeds = [feed, *bar_feeds(cfg, choice, symbols, data_dir, tiingo=tiingo, yfinance=yfinance)]
    for f in feeds[1:]:
        series += getattr(f, "series", lambda: [])()
    if len(feeds) > 1:
        feed = MergedFeed(feeds, name=feed.name)
    return with_history(cfg, feed, series) if choice.history != "none" else feed


def with_history(cfg: FeedsConfig, feed: Feed, series: Sequence[tuple[str, str]]) -> Feed:
    """``feed`` wrapped by the history store when ``[feeds.history] enabled``: the stored bars of
    ``series`` first (the warm-up), then the live events, every bar appended to the store."""
    if not cfg.history.enabled:
        return feed
    from tapeline.adapters.history import HistoryFeed, store_from_config

    return HistoryFeed(feed, store_from_config(cfg.history), list(dict.fromkeys(series)), days=cfg.history.warmup_days)


def bar_feeds(
    cfg: FeedsConfig,
    choice: SourceChoice,
    symbols: Sequence[str],
    data_dir: Path,
    *,
    tiingo: dict[str, Any] | None = None,
    yfinance: dict[str, Any] | None = None,
) -> list[Feed]:
    """The set's ``bars`` sources; one without files or symbols is left out (and logged)."""
    out: list[Feed] = []
    for name in dict.fromkeys(choice.bars):
        if name == "polygon":
            from tapeline.adapters.polygon import PolygonFeed, PolygonSource

            pc = cfg.polygon
            for i, src in enumerate(pc.sources):
                if not Path(src.path).is_file():
                    raise FeedConfigError(
                        f"feeds.polygon.sources[{i}].path: {src.path} is not a file (relative to {Path.cwd()}); "
                        "fix the path or remove this source"
                    )
            srcs = [PolygonSource(Path(s.path), s.symbol, tuple(s.symbols), s.interval) for s in pc.sources]
            if srcs:
                out.append(PolygonFeed(srcs, chunk=pc.chunk))
                continue
        elif name == "tiingo":
            from tapeline.adapters.tiingo_prices import tiingo_feed

            syms = list(cfg.tiingo.symbols) or list(symbols)
            if syms:
                out.append(tiingo_feed(cfg.tiingo, syms, **(tiingo or {})))
                continue
        else:
            from tapeline.adapters.yfinance_feed import yfinance_feed

            syms = list(cfg.yfinance.symbols) or list(symbols)
            if syms:
                out.append(yfinance_feed(cfg.yfinance, syms, data_dir, **(yfinance or {})))
                continue
        fix = "list [[feeds.polygon.sources]]" if name == "polygon" else f"set feeds.{name}.symbols"
        log.info("bar source left out: nothing to read", source=name, fix=fix)
    return out


def files_feed(cfg: FeedsConfig) -> Feed:
    from tapeline.adapters.files import FileFeed, FileSource

    fc = cfg.files
    sources = [FileSource(Path(s.path), s.symbol, s.kind, s.interval) for s in fc.sources] or None
    return FileFeed(sources, data_dir=Path(fc.data_dir), venue=fc.venue, chunk=fc.chunk)


def files_series(cfg: FeedsConfig) -> list[tuple[str, str]]:
    """(symbol, interval) of the file feed's bar files (the listed sources, else the sample set)."""
    from tapeline.adapters.files import FileSource, default_sources

    srcs = [FileSource(Path(s.path), s.symbol, s.kind, s.interval) for s in cfg.files.sources]
    return [(s.symbol, s.interval) for s in srcs or default_sources(Path(cfg.files.data_dir)) if s.kind == "bars"]


def pick_terminal(cfg: FeedsConfig, name: str | None) -> Any:
    """The ``[[feeds.mt5]]`` entry to run: by name, or the only one."""
    if not cfg.mt5:
        raise LookupError("feeds.mt5: no terminal configured; add a [[feeds.mt5]] table (see tapeline.example.toml)")
    if name is None:
        if len(cfg.mt5) > 1:
            names = ", ".join(t.name for t in cfg.mt5)
            raise LookupError(f"feeds.mt5: {len(cfg.mt5)} terminals ({names}); pick one with --terminal "
                              "(MetaTrader5 allows one terminal per process: run one process each)")  # fmt: skip
        return cfg.mt5[0]
    for t in cfg.mt5:
        if t.name == name:
            return t
    raise LookupError(f"feeds.mt5: no terminal named {name!r}; configured: {', '.join(t.name for t in cfg.mt5)}")
