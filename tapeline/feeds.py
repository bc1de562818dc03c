"""``tapeline feed mt5|ibkr|files|sim|auto|news``: run one feed against a NATS URL.

Each command loads tapeline.toml (validated; a bad value stops with the key and the fix),
connects, provisions the streams idempotently and runs the feed with ``adapters.runner.run_feed``.
Secrets come from the environment only (TAPELINE_NATS_*, the MT5 password variable).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import structlog
import typer

from tapeline.adapters.runner import Feed, run_feed
from tapeline.config import ConfigError, Market, Settings, load_settings, require_config_file

if TYPE_CHECKING:
    from tapeline.adapters.config import Mt5TerminalConfig
    from tapeline.adapters.mt5 import StoredCursors

feed_app = typer.Typer(
    help="Run one market-data feed into NATS JetStream.", no_args_is_help=True, rich_markup_mode=None
)
log = structlog.get_logger("tapeline.feed")

NatsOpt = Annotated[str, typer.Option("--nats", help="NATS URL (or TAPELINE_NATS_URL)")]


def _given_config_exists(ctx: typer.Context, value: Path) -> Path:
    """A --config/-c path the user names must exist; the default tapeline.toml may be absent (defaults)."""
    source = ctx.get_parameter_source("config")
    if source is not None and source.name != "DEFAULT":
        try:
            require_config_file(value)
        except ConfigError as e:
            config_exit(e)
    return value


def config_exit(e: ConfigError) -> NoReturn:
    """The one line for a configuration error, and exit code 2."""
    typer.echo(f"configuration error: {e}".replace("\n", " "), err=True)
    raise typer.Exit(2)


ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="tapeline.toml", callback=_given_config_exists)]
PrefixOpt = Annotated[str | None, typer.Option("--prefix", help="subject prefix (namespace)")]


def _settings(config: Path, prefix: str | None, feed: Market | Literal["active"] | None = None) -> Settings:
    """Validated settings (``feed="files"`` also checks its files exist), or exit 2 with one line."""
    try:
        return load_settings(config, feed=feed, prefix=prefix)
    except ConfigError as e:
        config_exit(e)


async def _run(settings: Settings, nats_url: str, feed: Feed) -> None:
    from tapeline.bus.connection import NatsSettings, close_connection, connect
    from tapeline.bus.publisher import Publisher
    from tapeline.bus.topology import provision

    nats = NatsSettings.from_env(nats_url, name=f"tapeline-feed-{feed.name}", identity="feed")
    nc = await connect(nats, retry_for=nats.start_retry_s)
    try:
        await provision(nc, settings.prefix, settings.retention)
        pub = await Publisher(nc, settings.prefix, role=f"feed-{feed.name}").start()
        appender = None
        try:
            from tapeline.adapters.history import HistoryFeed

            if isinstance(feed, HistoryFeed):  # the store's owner also appends the bars the pipeline builds
                from tapeline.adapters.history_appender import HistoryAppender

                appender = HistoryAppender(nc, pub, settings.prefix, feed.store)
                await appender.start()
            stats = await run_feed(feed, pub, batch_ticks=settings.batch_ticks)
            log.info("feed finished", feed=feed.name, events=stats.events, messages=stats.messages)
        finally:
            if appender is not None:
                await appender.stop()
            await pub.close()
    finally:
        await close_connection(nc)


def _go(settings: Settings, nats_url: str, feed: Feed) -> None:
    from tapeline.alloc import for_long_running
    from tapeline.bus.connection import NatsConnectError

    for_long_running()  # a feed runs as long as `tapeline up` does
    try:
        asyncio.run(_run(settings, nats_url, feed))
    except KeyboardInterrupt:
        pass
    except (ValueError, NatsConnectError) as e:  # e.g. no NATS URL, no server, a wrong password
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


async def _mt5_cursors(s: Settings, nats: str, term: Mt5TerminalConfig) -> StoredCursors:
    """Where the terminal's ticks stop in the stream: the feed continues after them (never sends one twice)."""
    from tapeline.adapters.mt5 import resume_cursors
    from tapeline.bus.connection import NatsSettings, close_connection, connect

    settings = NatsSettings.from_env(nats, name="tapeline-mt5-resume", identity="feed")
    nc = await connect(settings, retry_for=settings.start_retry_s)
    try:
        return await resume_cursors(nc, s.prefix, term.venue, term.symbols,
                                    server_time_offset_s=term.server_time_offset_s)  # fmt: skip
    finally:
        await close_connection(nc)


@feed_app.command("mt5")
def mt5_cmd(
    nats: NatsOpt = "",
    config: ConfigOpt = Path("tapeline.toml"),
    prefix: PrefixOpt = None,
    terminal: Annotated[str | None, typer.Option("--terminal", help="[[feeds.mt5]] name")] = None,
) -> None:
    """MetaTrader 5 ticks of one terminal (Windows only; one terminal per process)."""
    from tapeline.adapters.mt5 import Mt5Feed, Mt5Unavailable, load_mt5_module
    from tapeline.adapters.sources import pick_terminal

    s = _settings(config, prefix)
    try:
        module = load_mt5_module()
        term = pick_terminal(s.feeds, terminal)
    except (Mt5Unavailable, LookupError) as e:
        typer.echo(f"cannot start the MT5 feed: {e}", err=True)
        raise typer.Exit(2) from None

    async def main() -> None:
        cursors = await _mt5_cursors(s, nats, term)
        from tapeline.adapters.sources import with_history

        series = [(sym, term.bar_interval) for sym in term.symbols] if term.warmup_days else []
        await _run(s, nats, with_history(s.feeds, Mt5Feed(term, mt5=module, resume=cursors), series))

    from tapeline.bus.connection import NatsConnectError

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())
    except NatsConnectError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


@feed_app.command("ibkr")
def ibkr_cmd(nats: NatsOpt = "", config: ConfigOpt = Path("tapeline.toml"), prefix: PrefixOpt = None) -> None:
    """Interactive Brokers quotes/trades (+ warm-up bars, history store when enabled)."""
    from tapeline.adapters.history import HistoryFeed, store_from_config
    from tapeline.adapters.ibkr import IbkrFeed

    s = _settings(config, prefix)
    if not s.feeds.ibkr.contracts:
        typer.echo("configuration error: feeds.ibkr.contracts is empty; add [[feeds.ibkr.contracts]] tables", err=True)
        raise typer.Exit(2)
    feed: Any = IbkrFeed(s.feeds.ibkr)
    if s.feeds.history.enabled:
        series = [(c.symbol, s.feeds.ibkr.bar_interval) for c in s.feeds.ibkr.contracts]
        feed = HistoryFeed(feed, store_from_config(s.feeds.history), series, days=s.feeds.history.warmup_days)
    _go(s, nats, feed)


@feed_app.command("files")
def files_cmd(nats: NatsOpt = "", config: ConfigOpt = Path("tapeline.toml"), prefix: PrefixOpt = None) -> None:
    """Bars and ticks from CSV/Parquet files ([feeds.files]); bad rows are reported as an alert."""
    from tapeline.adapters.sources import files_feed, files_series, with_history

    s = _settings(config, prefix, feed="files")
    _go(s, nats, with_history(s.feeds, files_feed(s.feeds), files_series(s.feeds)))


@feed_app.command("sim")
def sim_cmd(nats: NatsOpt = "", config: ConfigOpt = Path("tapeline.toml"), prefix: PrefixOpt = None) -> None:
    """The seeded simulator ([sim])."""
    from tapeline.adapters.sim import SimFeed

    s = _settings(config, prefix)
    _go(s, nats, SimFeed(tuple(s.sim.symbols), seed=s.sim.seed, ticks=s.sim.ticks, mean_gap_ms=s.sim.mean_gap_ms))


@feed_app.command("auto")
def auto_cmd(nats: NatsOpt = "", config: ConfigOpt = Path("tapeline.toml"), prefix: PrefixOpt = None) -> None:
    """The market feed of the active source set ([feeds.sources] active = legacy | live)."""
    from tapeline.adapters.sources import active_sources, market_feed, pick_terminal
    from tapeline.bus.connection import NatsConnectError

    s = _settings(config, prefix, feed="active")
    try:
        resume = None
        if active_sources(s.feeds).market == "mt5":  # continue after the stored ticks, as `feed mt5` does
            term = pick_terminal(s.feeds, None)
            try:
                resume = asyncio.run(_mt5_cursors(s, nats, term))
            except (ValueError, NatsConnectError) as e:
                typer.echo(str(e), err=True)
                raise typer.Exit(2) from None
        feed = market_feed(s.feeds, data_dir=s.data_path, resume=resume)
    except (LookupError, ValueError) as e:  # no such terminal; a vendor key missing (PriceSourceError)
        typer.echo(f"configuration error: {e}", err=True)
        raise typer.Exit(2) from None
    _go(s, nats, feed)


@feed_app.command("news")
def news_cmd(nats: NatsOpt = "", config: ConfigOpt = Path("tapeline.toml"), prefix: PrefixOpt = None) -> None:
    """News of the active source set ([news], [feeds.sources]): files once, or Marketaux/Tiingo polls."""
    from tapeline.adapters.news.feed import NewsFeed

    s = _settings(config, prefix, feed="active")
    feed = NewsFeed(s.components()["news"])
    if not feed.active():
        typer.echo("configuration error: no news providers selected ([news] providers, [feeds.sources])", err=True)
        raise typer.Exit(2)
    _go(s, nats, feed)
