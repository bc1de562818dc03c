"""Source alternation: ``[feeds.sources] active = "legacy" | "live"`` picks a whole set of sources.

The legacy set is file based (bar/tick files and Polygon-style history in the Parquet store,
FNSPID-style news files); the live set is broker/vendor based (IBKR or MT5 market data, Tiingo or
Marketaux news). Switching is a config change only: :func:`active_sources` says what the
active set is and :func:`market_feed` builds its market-data feed. News is the ``news`` component
(``adapters.news.feed``); its ``providers = "auto"`` follows the active set's ``news`` entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapeline.adapters.config import FeedsConfig, SourceChoice
from tapeline.adapters.runner import Feed


def active_sources(cfg: FeedsConfig) -> SourceChoice:
    return cfg.sources.legacy if cfg.sources.active == "legacy" else cfg.sources.live


def market_feed(cfg: FeedsConfig, *, terminal: str | None = None, mt5: Any = None, ib: Any = None) -> Feed:
    """The active set's market-data feed, wrapped with the history store when enabled."""
    choice = active_sources(cfg)
    feed: Feed
    if choice.market == "files":
        feed = files_feed(cfg)
    elif choice.market == "ibkr":
        from tapeline.adapters.ibkr import IbkrFeed

        feed = IbkrFeed(cfg.ibkr, ib=ib)
    elif choice.market == "mt5":
        from tapeline.adapters.mt5 import Mt5Feed

        feed = Mt5Feed(pick_terminal(cfg, terminal), mt5=mt5)
    else:
        from tapeline.adapters.sim import SimFeed

        feed = SimFeed()
    if cfg.history.enabled and choice.history != "none":
        from tapeline.adapters.history import HistoryFeed, store_from_config

        series = [(c.symbol, cfg.ibkr.bar_interval) for c in cfg.ibkr.contracts] if choice.market == "ibkr" else []
        feed = HistoryFeed(feed, store_from_config(cfg.history), series, days=cfg.history.warmup_days)
    return feed


def files_feed(cfg: FeedsConfig) -> Feed:
    from tapeline.adapters.files import FileFeed, FileSource

    fc = cfg.files
    sources = [FileSource(Path(s.path), s.symbol, s.kind, s.interval) for s in fc.sources] or None
    return FileFeed(sources, data_dir=Path(fc.data_dir), venue=fc.venue, chunk=fc.chunk)


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
