"""Configuration sections of the market-data feeds (``[feeds]`` in tapeline.toml).

Every struct forbids unknown keys, so a typo stops start-up with the key's path. Secrets are
never here: the MT5 password and the webhook URL come from the environment variables named by
``password_env`` / ``webhook_url_env``. :func:`validate_feeds` checks what msgspec's types cannot
and names the key and the fix. See docs/feeds.md and tapeline.example.toml.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec


class FeedConfigError(ValueError):
    """A ``[feeds]`` value is invalid; the message names the key and the fix."""


class Mt5TerminalConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One MetaTrader 5 terminal/account (``[[feeds.mt5]]``). One process runs one terminal."""

    name: str  # subject-safe id: venue becomes "mt5-<name>", e.g. "mt5-raw"
    login: int = 0  # 0: use the account the terminal is already logged into
    server: str = ""
    password_env: str = ""  # env var holding the password; default TAPELINE_MT5_<NAME>_PASSWORD
    path: str = ""  # terminal64.exe of this terminal (each account runs its own terminal)
    portable: bool = False
    timeout_ms: int = 60_000
    symbols: list[str] = []
    poll_interval_s: float = 0.25
    heartbeat_s: float = 5.0
    batch: int = 10_000  # ticks per copy_ticks_from call
    backfill_s: float = 0.0  # on a first start (nothing published yet), also pull this much history
    server_time_offset_s: int = 0  # broker server time minus UTC (MT5 stamps ticks in server time)
    no_tick_alert_s: float = 120.0  # in session, no tick for this long -> alert
    default_session: str = "mon-fri 00:00-24:00"  # UTC; see docs/feeds.md for the syntax
    sessions: dict[str, str] = {}  # symbol -> session spec
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0

    @property
    def venue(self) -> str:
        return f"mt5-{self.name}"

    @property
    def password_var(self) -> str:
        return self.password_env or f"TAPELINE_MT5_{self.name.upper().replace('-', '_')}_PASSWORD"


class IbkrContractConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    symbol: str
    sec_type: str = "STK"
    exchange: str = "SMART"
    currency: str = "USD"
    primary_exchange: str = ""
    local_symbol: str = ""
    # IB reports US equity volume in round lots of 100; None: 100 for STK in USD, else 1.
    volume_multiplier: float | None = None

    @property
    def multiplier(self) -> float:
        if self.volume_multiplier is not None:
            return self.volume_multiplier
        return 100.0 if self.sec_type == "STK" and self.currency == "USD" else 1.0


class IbkrConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 7497  # 7497 TWS paper, 7496 TWS live, 4002/4001 IB Gateway
    client_id: int = 1
    client_id_rotation_start: int = 99  # error 326 (id in use): try 99, 100, ...
    client_id_max_tries: int = 10
    account: str = ""
    readonly: bool = True
    connect_timeout_s: float = 10.0
    generic_ticks: str = "233"  # 233 = RTVolume (last trade price, size, time, day volume)
    market_data_type: int = 1  # 1 live, 2 frozen, 3 delayed, 4 delayed-frozen
    contracts: list[IbkrContractConfig] = []
    heartbeat_s: float = 5.0
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0
    warmup_days: int = 30
    bar_size: str = "1 min"
    bar_interval: str = "1m"  # the Bar.interval the bar_size maps to
    what_to_show: str = "TRADES"
    use_rth: bool = True
    venue: str = "ibkr"


class FileSourceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    path: str
    symbol: str
    kind: Literal["bars", "ticks"] = "bars"
    interval: str = "1d"


class FilesConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sources: list[FileSourceConfig] = []  # empty: the sample files under data_dir
    data_dir: str = "../shared/data"
    chunk: int = 1000
    venue: str = "file"


class HistoryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The Parquet bar store: warm-up on start and self-healing appends of live bars."""

    enabled: bool = False
    store_dir: str = ".tapeline/history"
    warmup_days: int = 30
    compact_after_parts: int = 64


class AlertsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    webhook_url_env: str = "TAPELINE_ALERT_WEBHOOK_URL"  # the URL (with its token) is a secret
    min_severity: Literal["info", "warning", "critical"] = "warning"
    retries: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 10.0
    username: str = "Tapeline"


class WatchdogConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    expected: dict[str, float] = {}  # feed name -> heartbeat interval (s); others learnt from heartbeats
    missed_intervals: int = 3  # alert when no heartbeat for this many intervals
    clock_s: float = 1.0  # how often the watchdog clock ticks


class SourceChoice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    market: Literal["files", "ibkr", "mt5", "sim"]
    history: Literal["files", "ibkr", "mt5", "none"] = "none"
    news: Literal["files", "fnspid", "tiingo", "marketaux", "none"] = "none"


class SourceSetConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The legacy/live switch: ``active`` picks a set; no code change between them."""

    active: Literal["legacy", "live"] = "legacy"
    legacy: SourceChoice = SourceChoice(market="files", history="files", news="fnspid")
    live: SourceChoice = SourceChoice(market="ibkr", history="ibkr", news="tiingo")


class FeedsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[feeds]``: MT5 terminals, IBKR, files, history store, alerts, watchdog, source set."""

    mt5: list[Mt5TerminalConfig] = []
    ibkr: IbkrConfig = IbkrConfig()
    files: FilesConfig = FilesConfig()
    history: HistoryConfig = HistoryConfig()
    alerts: AlertsConfig = AlertsConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    sources: SourceSetConfig = SourceSetConfig()


_NAME = re.compile(r"[a-z][a-z0-9_-]*")
_ENV = re.compile(r"[A-Z_][A-Z0-9_]*")


def _positive(key: str, value: float, hint: str) -> None:
    if not value > 0:
        raise FeedConfigError(f"{key}: must be > 0 (got {value}); {hint}")


def validate_feeds(cfg: FeedsConfig) -> FeedsConfig:
    """Checks beyond the types; raises :class:`FeedConfigError` naming the key and the fix."""
    from adapters.mt5 import parse_session  # local: config must not import adapters eagerly
    from schemas.intervals import interval_ns

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
        for key, val in (("poll_interval_s", t.poll_interval_s), ("heartbeat_s", t.heartbeat_s)):
            _positive(f"{k}.{key}", val, "e.g. 0.25 for polling, 5 for heartbeats")
        if t.batch < 1:
            raise FeedConfigError(f"{k}.batch: must be at least 1, e.g. 10000")
        for key, spec in [("default_session", t.default_session)] + [
            (f"sessions.{s}", v) for s, v in t.sessions.items()
        ]:
            try:
                parse_session(spec)
            except ValueError as e:
                raise FeedConfigError(f"{k}.{key}: {e}") from None
    ib = cfg.ibkr
    if not 0 < ib.port < 65536:
        raise FeedConfigError(f"feeds.ibkr.port: {ib.port} is not a port; TWS uses 7497 (paper) / 7496 (live)")
    if ib.client_id < 0 or ib.client_id_rotation_start < 0:
        raise FeedConfigError("feeds.ibkr.client_id: client ids are non-negative integers, e.g. 1")
    _positive("feeds.ibkr.heartbeat_s", ib.heartbeat_s, "e.g. 5")
    try:
        interval_ns(ib.bar_interval)
    except ValueError as e:
        raise FeedConfigError(f"feeds.ibkr.bar_interval: {e}") from None
    for i, c in enumerate(ib.contracts):
        if c.volume_multiplier is not None and c.volume_multiplier <= 0:
            raise FeedConfigError(
                f"feeds.ibkr.contracts[{i}].volume_multiplier: must be > 0; "
                "100 for US stocks in round lots, 1 otherwise"
            )
    for i, s in enumerate(cfg.files.sources):
        try:
            interval_ns(s.interval)
        except ValueError as e:
            raise FeedConfigError(f"feeds.files.sources[{i}].interval: {e}") from None
    if not _ENV.fullmatch(cfg.alerts.webhook_url_env):
        raise FeedConfigError(
            f"feeds.alerts.webhook_url_env: {cfg.alerts.webhook_url_env!r} must be the NAME of an environment "
            "variable (e.g. 'TAPELINE_ALERT_WEBHOOK_URL'); the URL contains a token and stays out of files"
        )
    if cfg.watchdog.missed_intervals < 1:
        raise FeedConfigError("feeds.watchdog.missed_intervals: must be at least 1, e.g. 3")
    for feed, iv in cfg.watchdog.expected.items():
        _positive(f"feeds.watchdog.expected.{feed}", iv, "the feed's heartbeat interval in seconds")
    return cfg
