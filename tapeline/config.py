"""Configuration: ``tapeline.toml`` decoded and validated with msgspec; secrets only from the environment.

A bad value stops start-up with a message naming the key and how to fix it.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from adapters.config import FeedConfigError, FeedsConfig, validate_feeds
from bus.topology import Retention
from schemas.subjects import validate_prefix


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the fix."""


class HandlersConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    bar_intervals: list[str] = msgspec.field(default_factory=lambda: ["1m"])
    momentum_interval: str = "1m"
    momentum_window: int = 20
    decision_threshold: float = 0.25
    decision_weights: dict[str, float] = msgspec.field(default_factory=lambda: {"momentum": 1.0, "sentiment": 1.0})


class SimConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    symbols: list[str] = msgspec.field(default_factory=lambda: ["NVDA", "ORCL", "AAPL", "MSFT", "BRK.B"])
    seed: int = 7
    ticks: int = 50_000
    mean_gap_ms: float = 250.0


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    prefix: str = "tape"
    nats_url: str = ""  # empty: embedded server; secrets via TAPELINE_NATS_* env vars
    data_dir: str = ".tapeline"
    metrics_port: int = 9464
    log_level: str = "info"
    batch_ticks: bool = False
    retention: Retention = Retention()
    handlers: HandlersConfig = HandlersConfig()
    sim: SimConfig = SimConfig()
    feeds: FeedsConfig = FeedsConfig()

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def duckdb_path(self) -> Path:
        return self.data_path / "projections" / "tapeline.duckdb"

    @property
    def vectors_path(self) -> Path:
        return self.data_path / "projections" / "vectors"


def _check(s: Settings) -> Settings:
    try:
        validate_prefix(s.prefix)
    except ValueError as e:
        raise ConfigError(f"prefix: {e}") from None
    if not 0 <= s.metrics_port < 65536:
        raise ConfigError(f"metrics_port: {s.metrics_port} is not a port; use 0 to disable or e.g. 9464")
    from schemas.intervals import interval_ns

    for key, iv in [("handlers.bar_intervals", x) for x in s.handlers.bar_intervals] + [
        ("handlers.momentum_interval", s.handlers.momentum_interval)
    ]:
        try:
            interval_ns(iv)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    if s.handlers.momentum_interval not in s.handlers.bar_intervals:
        raise ConfigError(
            f"handlers.momentum_interval: {s.handlers.momentum_interval!r} is not produced; "
            f"add it to handlers.bar_intervals {s.handlers.bar_intervals}"
        )
    if s.handlers.momentum_window < 2:
        raise ConfigError("handlers.momentum_window: must be at least 2")
    try:
        validate_feeds(s.feeds)
    except FeedConfigError as e:
        raise ConfigError(str(e)) from None
    return s


def load_settings(path: Path | None = None, **overrides: object) -> Settings:
    """Read ``tapeline.toml`` (if present), apply CLI overrides, validate."""
    raw: dict[str, object] = {}
    if path is not None and path.exists():
        try:
            raw = msgspec.toml.decode(path.read_bytes())
        except msgspec.DecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{path or 'settings'}: {e} (see tapeline.example.toml for valid keys)") from None
    return _check(settings)
