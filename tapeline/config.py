"""Configuration: ``tapeline.toml`` decoded and validated with msgspec; secrets only from the environment.

A bad value stops start-up with a message naming the key and how to fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from adapters.config import FeedConfigError, FeedsConfig, validate_feeds
from bus.topology import Retention
from schemas.subjects import validate_prefix
from tapeline.system import COMPONENTS


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the fix."""


class SimConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    symbols: list[str] = msgspec.field(default_factory=lambda: ["NVDA", "ORCL", "AAPL", "MSFT", "BRK.B"])
    seed: int = 7
    ticks: int = 50_000
    mean_gap_ms: float = 250.0


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The fixed sections; a loaded file also has one section per declared component (``[bars]``, ...)."""

    prefix: str = "tape"
    nats_url: str = ""  # empty: embedded server; secrets via TAPELINE_NATS_* env vars
    data_dir: str = ".tapeline"
    metrics_port: int = 9464
    log_level: str = "info"
    batch_ticks: bool = False
    retention: Retention = Retention()
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

    def components(self) -> dict[str, Any]:
        """Each declared component's configuration, by component name."""
        return {c.name: getattr(self, c.name) for c in COMPONENTS}


# What a file decodes into: Settings plus one section per declared component.
_WithComponents: type[Settings] = msgspec.defstruct(  # type: ignore[assignment]
    "Settings",
    [(c.name, c.Config, msgspec.field(default_factory=c.Config)) for c in COMPONENTS],
    bases=(Settings,),
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
)

_MOVED = {
    "handlers": "[handlers] was split by component: use [bars] intervals, [momentum] window/interval, "
    "[decision] threshold/weights (see tapeline.example.toml)",
}


def _check(s: Settings) -> Settings:
    try:
        validate_prefix(s.prefix)
    except ValueError as e:
        raise ConfigError(f"prefix: {e}") from None
    if not 0 <= s.metrics_port < 65536:
        raise ConfigError(f"metrics_port: {s.metrics_port} is not a port; use 0 to disable or e.g. 9464")
    momentum, bars = s.components()["momentum"], s.components()["bars"]
    if momentum.interval not in bars.intervals:
        raise ConfigError(
            f"momentum.interval: {momentum.interval!r} is not produced; add it to bars.intervals {bars.intervals}"
        )
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
    for key, why in _MOVED.items():
        if key in raw:
            raise ConfigError(f"{path or 'settings'}: {why}")
    try:
        settings = msgspec.convert(raw, _WithComponents)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{path or 'settings'}: {e} (see tapeline.example.toml for valid keys)") from None
    return _check(settings)
