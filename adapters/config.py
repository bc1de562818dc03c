"""Configuration sections of the market-data feeds (``[feeds]`` in tapeline.toml).

Every struct forbids unknown keys, so a typo stops start-up with the key's path. Bounds are
``msgspec.Meta`` constraints, checked while decoding, so the error names the key too; nothing may
write without bound (an interval, window, batch or heartbeat of zero or less is refused, and
heartbeats, which land in the never-expiring ops stream, at most once a second). Secrets are never
here: the MT5 password comes from the environment variable named by ``password_env``.
:func:`validate_feeds` checks what the types cannot and names the key and the fix. The watchdog,
its clock and the alert notifier are components with their own sections (``[watchdog]``,
``[clock]``, ``[notifier]``). See docs/feeds.md and tapeline.example.toml.

Imports no feed: session specs are parsed by ``adapters.sessions``, which the MT5 feed uses too.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from tapeline.adapters.sessions import parse_session
from tapeline.schemas.intervals import interval_ns


class FeedConfigError(ValueError):
    """A ``[feeds]`` value is invalid; the message names the key and the fix."""


# Bounds msgspec checks while decoding, so its error names the key (``feeds.ibkr.heartbeat_s``).
Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Text = Annotated[str, msgspec.Meta(min_length=1)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
# Heartbeats are events in the ops stream, which never expires: at most one a second.
EverySeconds = Annotated[float, msgspec.Meta(ge=1.0)]


# Bar intervals MetaTrader 5 has a timeframe for (the TIMEFRAME_* constants' values).
MT5_TIMEFRAMES = {
    **{f"{m}m": m for m in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)},
    **{f"{h}h": 16384 + h for h in (1, 2, 3, 4, 6, 8, 12)},
    "1d": 16408,
}


class Mt5TerminalConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One MetaTrader 5 terminal/account (``[[feeds.mt5]]``). One process runs one terminal."""

    name: str  # subject-safe id: venue becomes "mt5-<name>", e.g. "mt5-raw"
    login: NonNegativeInt = 0  # 0: use the account the terminal is already logged into
    server: str = ""
    password_env: str = ""  # env var holding the password; default TAPELINE_MT5_<NAME>_PASSWORD
    path: str = ""  # terminal64.exe of this terminal (each account runs its own terminal)
    portable: bool = False
    timeout_ms: Count = 60_000
    symbols: list[Text] = []
    poll_interval_s: Annotated[float, msgspec.Meta(ge=0.01)] = 0.25
    heartbeat_s: EverySeconds = 5.0
    batch: Count = 10_000  # ticks per copy_ticks_from call
    backfill_s: NonNegative = 0.0  # on a first start (nothing published yet), also pull this much history
    # broker server time minus UTC (MT5 stamps ticks in server time); within a day
    server_time_offset_s: Annotated[int, msgspec.Meta(ge=-86_400, le=86_400)] = 0
    no_tick_alert_s: Positive = 120.0  # in session, no tick for this long -> alert
    default_session: str = "mon-fri 00:00-24:00"  # UTC; see docs/feeds.md for the syntax
    sessions: dict[str, str] = {}  # symbol -> session spec
    reconnect_initial_s: Positive = 1.0
    reconnect_max_s: Positive = 60.0
    warmup_days: NonNegativeInt = 30  # on connect: copy_rates_range bars of the last N days (0: none)
    bar_interval: str = "1m"  # the warm-up bars' interval: an MT5 timeframe (see MT5_TIMEFRAMES)

    @property
    def venue(self) -> str:
        return f"mt5-{self.name}"

    @property
    def password_var(self) -> str:
        return self.password_env or f"TAPELINE_MT5_{self.name.upper().replace('-', '_')}_PASSWORD"


class IbkrContractConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    symbol: Text
    sec_type: Text = "STK"
    exchange: Text = "SMART"
    currency: Text = "USD"
    primary_exchange: str = ""
    local_symbol: str = ""
    # IB reports US equity volume in round lots of 100; None: 100 for STK in USD, else 1.
    volume_multiplier: Positive | None = None

    @property
    def multiplier(self) -> float:
        if self.volume_multiplier is not None:
            return self.volume_multiplier
        return 100.0 if self.sec_type == "STK" and self.currency == "USD" else 1.0


class IbkrConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: Text = "127.0.0.1"
    port: Port = 7497  # 7497 TWS paper, 7496 TWS live, 4002/4001 IB Gateway
    client_id: NonNegativeInt = 1
    client_id_rotation_start: NonNegativeInt = 99  # error 326 (id in use): try 99, 100, ...
    client_id_max_tries: Count = 10
    account: str = ""
    readonly: bool = True
    connect_timeout_s: Positive = 10.0
    generic_ticks: str = "233"  # 233 = RTVolume (last trade price, size, time, day volume)
    market_data_type: Annotated[int, msgspec.Meta(ge=1, le=4)] = 1  # 1 live, 2 frozen, 3 delayed, 4 delayed-frozen
    contracts: list[IbkrContractConfig] = []
    heartbeat_s: EverySeconds = 5.0
    reconnect_initial_s: Positive = 1.0
    reconnect_max_s: Positive = 60.0
    warmup_days: NonNegativeInt = 30
    bar_size: Text = "1 min"
    bar_interval: str = "1m"  # the Bar.interval the bar_size maps to
    what_to_show: Text = "TRADES"
    use_rth: bool = True
    venue: Text = "ibkr"


class FileSourceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    path: Text
    symbol: Text
    kind: Literal["bars", "ticks"] = "bars"
    interval: str = "1d"


class FilesConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sources: list[FileSourceConfig] = []  # empty: the sample files under data_dir
    data_dir: Text = "../shared/data"
    chunk: Count = 1000  # events per published batch
    venue: Text = "file"


class HistoryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The Parquet bar store: warm-up on start and self-healing appends of live bars."""

    enabled: bool = False
    store_dir: Text = ".tapeline/history"
    warmup_days: NonNegativeInt = 30
    compact_after_parts: Annotated[int, msgspec.Meta(ge=2)] = 64


class PolygonSourceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One Polygon aggregates file (API keys ``t,o,h,l,c,v,vw,n`` or flat-file columns)."""

    path: Text
    symbol: str = ""  # the file's ticker when it has no ticker column (or to keep only that one)
    symbols: list[Text] = []  # keep only these tickers of a multi-ticker file (empty: all)
    interval: str = "1d"


class PolygonConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[feeds.polygon]``: Polygon-style aggregate files, the legacy set's bar history."""

    sources: list[PolygonSourceConfig] = []
    chunk: Count = 1000


class TiingoPricesConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[feeds.tiingo]``: Tiingo end-of-day prices (daily bars) for the live set."""

    symbols: list[Text] = []  # empty: the market feed's symbols (IBKR contracts, MT5 symbols)
    key_env: Text = "TIINGO_API_KEY"  # the NAME of the variable holding the token
    base_url: Text = "https://api.tiingo.com"
    adjusted: bool = True  # adjOpen..adjVolume (splits and dividends, CRSP method) instead of raw prices
    warmup_days: Count = 30  # on start: the last N days
    poll_days: Count = 5  # each poll: the last N days (covers weekends and holidays)
    poll_interval_s: Annotated[float, msgspec.Meta(ge=60.0)] = 3600.0
    timeout_s: Positive = 30.0
    retries: NonNegativeInt = 4  # 429/5xx/network: retried with backoff, then tried again next poll
    backoff_initial_s: Positive = 1.0
    backoff_max_s: Positive = 60.0


class YFinanceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[feeds.yfinance]``: Yahoo Finance bars via yfinance for the live set."""

    symbols: list[Text] = []  # empty: the market feed's symbols
    interval: Literal["1m", "5m", "15m", "30m", "1h", "1d"] = "1d"
    adjusted: bool = True  # auto_adjust: splits and dividends
    warmup_days: Count = 30
    poll_days: Count = 5
    poll_interval_s: Annotated[float, msgspec.Meta(ge=60.0)] = 3600.0
    cache_dir: str = ""  # empty: <data_dir>/yfinance (its SQLite caches, one per data directory)


BarSource = Literal["polygon", "tiingo", "yfinance"]
NewsSource = Literal["files", "fnspid", "tiingo", "marketaux", "none"]


class SourceChoice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    market: Literal["files", "ibkr", "mt5", "sim"]
    history: Literal["files", "ibkr", "mt5", "none"] = "none"
    # one source or several (live: Marketaux and Tiingo); "files"/"fnspid": the [news.files] files
    news: NewsSource | list[NewsSource] = "none"
    # bar sources beside the market feed: legacy Polygon files; live Tiingo daily and yfinance
    bars: list[BarSource] = []


class SourceSetConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The legacy/live switch: ``active`` picks a set; no code change between them."""

    active: Literal["legacy", "live"] = "legacy"
    legacy: SourceChoice = SourceChoice(market="files", history="files", news="fnspid", bars=["polygon"])
    live: SourceChoice = SourceChoice(
        market="ibkr", history="ibkr", news=["marketaux", "tiingo"], bars=["tiingo", "yfinance"]
    )


class FeedsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[feeds]``: MT5 terminals, IBKR, files, history store, source set."""

    mt5: list[Mt5TerminalConfig] = []
    ibkr: IbkrConfig = IbkrConfig()
    files: FilesConfig = FilesConfig()
    history: HistoryConfig = HistoryConfig()
    sources: SourceSetConfig = SourceSetConfig()
    polygon: PolygonConfig = PolygonConfig()
    tiingo: TiingoPricesConfig = TiingoPricesConfig()
    yfinance: YFinanceConfig = YFinanceConfig()


_NAME = re.compile(r"[a-z][a-z0-9_-]*")
_ENV = re.compile(r"[A-Z_][A-Z0-9_]*")


def _interval(key: str, value: str) -> None:
    try:
        interval_ns(value)
    except ValueError as e:
        raise FeedConfigError(f"{key}: {e}") from None


def _backoff(key: str, initial: float, most: float) -> None:
    if most < initial:
        raise FeedConfigError(
            f"{key}.reconnect_max_s: {most} is below reconnect_initial_s {initial}; "
            "the backoff doubles from the initial delay up to the maximum, e.g. 1 and 60"
        )


def _backoff_s(key: str, initial: float, most: float) -> None:
    if most < initial:
        raise FeedConfigError(f"{key}.backoff_max_s: {most} is below backoff_initial_s {initial}; e.g. 1 and 60")


def validate_feeds(cfg: FeedsConfig) -> FeedsConfig:
    """Checks beyond the types and bounds; raises :class:`FeedConfigError` naming the key and the fix."""
    names: set[str] = set()
    for i, t in enumerate(cfg.mt5):
        k = f"feeds.mt5[{i}]"
        if not _NAME.fullmatch(t.name):
            raise FeedConfigError(f"{k}.name: {t.name!r} must be lower-case letters, digits, '-' or '_', e.g. 'raw'")
        if t.name in names:
            raise FeedConfigError(f"{k}.name: {t.name!r} is used twice; give each terminal its own name")
        names.add(t.name)
        if t.password_env and not _ENV.fullmatch(t.password_env):
            raise FeedConfigError(
                f"{k}.password_env: {t.password_env!r} is not an environment variable name; "
                "put the NAME of the variable here (e.g. 'MT5_RAW_PASSWORD'), never the password"
            )
        _backoff(k, t.reconnect_initial_s, t.reconnect_max_s)
        for key, spec in [("default_session", t.default_session)] + [
            (f"sessions.{s}", v) for s, v in t.sessions.items()
        ]:
            try:
                parse_session(spec)
            except ValueError as e:
                raise FeedConfigError(f"{k}.{key}: {e}") from None
    _interval("feeds.ibkr.bar_interval", cfg.ibkr.bar_interval)
    _backoff("feeds.ibkr", cfg.ibkr.reconnect_initial_s, cfg.ibkr.reconnect_max_s)
    for i, src in enumerate(cfg.files.sources):
        _interval(f"feeds.files.sources[{i}].interval", src.interval)
    for i, p in enumerate(cfg.polygon.sources):
        _interval(f"feeds.polygon.sources[{i}].interval", p.interval)
    for i, t in enumerate(cfg.mt5):
        if t.bar_interval not in MT5_TIMEFRAMES:
            raise FeedConfigError(
                f"feeds.mt5[{i}].bar_interval: {t.bar_interval!r} is not an MT5 timeframe; "
                f"use one of {', '.join(MT5_TIMEFRAMES)}"
            )
    if not _ENV.fullmatch(cfg.tiingo.key_env):
        raise FeedConfigError(
            f"feeds.tiingo.key_env: {cfg.tiingo.key_env!r} is not an environment variable name; "
            "put the NAME of the variable here (e.g. 'TIINGO_API_KEY'), never the token"
        )
    _backoff_s("feeds.tiingo", cfg.tiingo.backoff_initial_s, cfg.tiingo.backoff_max_s)
    return cfg
