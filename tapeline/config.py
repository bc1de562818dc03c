"""Configuration: ``tapeline.toml`` decoded and validated with msgspec; secrets only from the environment.

A bad value stops start-up with ONE line naming the key (``clock.interval_s``) and the fix.
Bounds are ``msgspec.Meta`` constraints on the structs (here, in ``adapters.config``, in each
component's config struct and ``bus.topology.Retention``), so the decoder finds them and names the
key; a component config's own check names its key relative to its section (``expected.ibkr: ...``
in ``[watchdog]``), which is completed here; :func:`_check` adds what types cannot say. The default
``tapeline.toml`` may be absent (defaults apply); a path the user names must exist (the CLI checks
it with :func:`require_config_file`).

``[momentum] interval = "auto"`` (the default) follows the market source: the file feed's bar
interval when the market source is ``files`` (``1d`` for the sample set), else the first of
``bars.intervals``. See :func:`momentum_interval_for`.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from tapeline.adapters.config import FeedConfigError, FeedsConfig, FilesConfig, Text, validate_feeds
from tapeline.bus.topology import Retention
from tapeline.dotenv import load_dotenv
from tapeline.handlers.bars import BarsConfig
from tapeline.handlers.model_agent import ModelAgentConfig
from tapeline.handlers.momentum import AUTO, MomentumConfig
from tapeline.schemas.intervals import interval_ns
from tapeline.schemas.subjects import validate_prefix
from tapeline.system import COMPONENTS

Market = Literal["files", "ibkr", "mt5", "sim"]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the fix."""


class SimConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    symbols: Annotated[list[Text], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["NVDA", "ORCL", "AAPL", "MSFT", "BRK.B"]
    )
    seed: int = 7
    ticks: Annotated[int, msgspec.Meta(ge=1)] = 50_000
    mean_gap_ms: Annotated[float, msgspec.Meta(gt=0)] = 250.0


class ProjectorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The DuckDB projector's memory (``projections.duckdb.DbLimits`` says why both are needed)."""

    memory_limit_mb: Annotated[int, msgspec.Meta(ge=32)] = 256
    checkpoint_mb: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 4
    threads: Annotated[int, msgspec.Meta(ge=0, le=256)] = 0  # DuckDB's threads; 0: one per core (its default)


DEFAULT_METRICS_PORT = 9464


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The fixed sections; a loaded file also has one section per declared component (``[bars]``, ...)."""

    prefix: str = "tape"
    nats_url: str = ""  # empty: embedded server; secrets via TAPELINE_NATS_* env vars
    data_dir: Text = ".tapeline"
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = DEFAULT_METRICS_PORT  # 0: off
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    batch_ticks: bool | None = None  # unset: batch-safe feeds batch their bursts (adapters.runner); true/false forces
    retention: Retention = Retention()
    projector: ProjectorConfig = ProjectorConfig()
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
    "feeds.watchdog": "[feeds.watchdog] moved: use [watchdog] expected/missed_intervals and [clock] interval_s "
    "(see tapeline.example.toml)",
    "feeds.alerts": "[feeds.alerts] moved to [notifier], same keys (see tapeline.example.toml)",
}


# ------------------------------------------------------------------ the market source and momentum


def active_market(feeds: FeedsConfig) -> Market:
    """The market source of the active source set (``[feeds.sources] active``)."""
    s = feeds.sources
    return (s.legacy if s.active == "legacy" else s.live).market


def file_bar_intervals(files: FilesConfig) -> list[str]:
    """The interval of every bar file the file feed reads (the listed sources, else the sample set)."""
    if files.sources:
        return [src.interval for src in files.sources if src.kind == "bars"]
    from tapeline.adapters.files import default_sources

    return [src.interval for src in default_sources(Path(files.data_dir)) if src.kind == "bars"]


def momentum_interval_for(s: Settings, market: Market) -> str:
    """What ``[momentum] interval = "auto"`` means: bars the market source delivers, so decisions follow.

    Files: the interval most bar files have (ties: the longer one), e.g. ``1d`` for daily files;
    otherwise (ticks): the first of ``bars.intervals``, which the bars handler makes.
    """
    if market == "files":
        counts = Counter(file_bar_intervals(s.feeds.files))
        if counts:
            return max(counts, key=lambda iv: (counts[iv], interval_ns(iv)))
    bars: BarsConfig = s.components()["bars"]
    return bars.intervals[0]


def _resolve_momentum(s: Settings, market: Market) -> Settings:
    momentum: MomentumConfig = s.components()["momentum"]
    if momentum.interval != AUTO:
        return s
    interval = momentum_interval_for(s, market)
    return msgspec.structs.replace(s, momentum=msgspec.structs.replace(momentum, interval=interval))


def _resolve_model_store(s: Settings) -> Settings:
    """``[model] store = ""`` means the model store in the data directory."""
    model: ModelAgentConfig = s.components()["model"]
    if model.store:
        return s
    store = str(s.data_path / "models")
    return msgspec.structs.replace(s, model=msgspec.structs.replace(model, store=store))  # type: ignore[call-arg]


# ------------------------------------------------------------------ news follows the source set


def _resolve_news(s: Settings, market: Market) -> Settings:
    """``[news] providers = "auto"`` becomes the active set's news; SemEval demo news follows the market."""
    from tapeline.adapters.files import default_sources
    from tapeline.adapters.news.feed import resolve_news
    from tapeline.adapters.sim import DEFAULT_START_NS

    sources = s.feeds.sources
    span = (DEFAULT_START_NS, DEFAULT_START_NS + int(s.sim.ticks * s.sim.mean_gap_ms * 1e6))
    news = resolve_news(
        s.components()["news"],
        sources.legacy if sources.active == "legacy" else sources.live,
        market=market,
        files=s.feeds.files,
        default_files=default_sources(Path(s.feeds.files.data_dir)),
        sim_symbols=s.sim.symbols,
        sim_span_ns=span,
    )
    return msgspec.structs.replace(s, news=news)  # type: ignore[call-arg]


# ------------------------------------------------------------------ checks beyond the types


def _check(s: Settings) -> None:
    try:
        validate_prefix(s.prefix)
    except ValueError as e:
        raise ConfigError(f"prefix: {e}") from None
    r = s.retention
    if r.md_max_bytes == 0:
        raise ConfigError("retention.md_max_bytes: 0 would keep nothing; use -1 (no byte limit) or a size in bytes")
    if r.duplicate_window_s > r.md_max_age_s:
        raise ConfigError(
            f"retention.duplicate_window_s: {r.duplicate_window_s} exceeds retention.md_max_age_s {r.md_max_age_s}; "
            "JetStream needs the duplicate window within the max age, e.g. 120"
        )
    try:
        validate_feeds(s.feeds)
    except FeedConfigError as e:
        raise ConfigError(str(e)) from None


def _check_momentum(s: Settings, market: Market) -> None:
    """Momentum's interval is made by the bars handler or, with the file feed, delivered by the bar files."""
    momentum: MomentumConfig = s.components()["momentum"]
    bars: BarsConfig = s.components()["bars"]
    delivered = file_bar_intervals(s.feeds.files) if market == "files" else []
    if momentum.interval not in bars.intervals and momentum.interval not in delivered:
        raise ConfigError(
            f"momentum.interval: {momentum.interval!r} is not produced; "
            f'add it to bars.intervals {bars.intervals} or set it to "auto"'
        )


def _where(p: Path) -> str:
    return "" if p.is_absolute() else f" (relative to {Path.cwd()})"


def check_file_sources(files: FilesConfig) -> None:
    """Every file the file feed will read exists: one line naming the key and the path if not."""
    for i, src in enumerate(files.sources):
        p = Path(src.path)
        key = f"feeds.files.sources[{i}].path"
        if not p.exists():
            raise ConfigError(f"{key}: {src.path} does not exist{_where(p)}; fix the path or remove this source")
        if not p.is_file():
            raise ConfigError(f"{key}: {src.path} is not a file; give the path of a CSV or Parquet file")
    if not files.sources:
        from tapeline.adapters.files import default_sources

        d = Path(files.data_dir)
        missing = [src.path for src in default_sources(d) if not src.path.is_file()]
        if missing:
            raise ConfigError(
                f"feeds.files.data_dir: {files.data_dir} has no {missing[0].relative_to(d)}{_where(d)}; point it "
                "at the sample data folder (../shared/data) or list your files as [[feeds.files.sources]]"
            )


# ------------------------------------------------------------------ reading and explaining


def _refuse_moved(raw: dict[str, Any]) -> None:
    """A section of the old layout is refused naming where its keys went (not just "unknown key")."""
    for key, why in _MOVED.items():
        node: Any = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            raise ConfigError(f"{key}: {why}")


def require_config_file(path: Path) -> None:
    """A config path the user named must exist (the default one may be absent: defaults apply)."""
    if not path.exists():
        raise ConfigError(f"{path}: no such file{_where(path)}; fix the path (without --config: the defaults)")


def _read(path: Path | None) -> dict[str, Any]:
    if path is None or not path.exists():
        return {}
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give the path of a TOML file such as tapeline.toml")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8 TOML") from None
    try:
        raw: dict[str, Any] = msgspec.toml.decode(text)
    except msgspec.DecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return raw


_AT = re.compile(r"(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_NAMED = re.compile(r"Object (?P<what>contains unknown|missing required) field `(?P<name>[^`]+)`")
_STEP = re.compile(r"([^.\[\]]+)|\[[^\]]*\]")
_OWN = re.compile(r"(\w+)[.:\[]")


def _type_at(key: str) -> tuple[Any, Any]:
    """The msgspec type info at a dotted key of the settings (component sections too) and its field."""
    t: Any = msgspec.inspect.type_info(_WithComponents)
    field: Any = None
    for m in _STEP.finditer(key):
        if isinstance(t, msgspec.inspect.UnionType):
            t = next((x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)), t)
        if m.group(1) is None:  # [i] or [...]
            t = getattr(t, "item_type", None) or getattr(t, "value_type", None)
            field = None
        elif isinstance(t, msgspec.inspect.StructType):
            field = next((f for f in t.fields if f.encode_name == m.group(1)), None)
            t = field.type if field else None
        else:
            return None, None
    return t, field


def _explain(e: msgspec.ValidationError) -> str:
    """msgspec's ``Expected `float` >= 1.0 - at `$.clock.interval_s``` as ``key: problem; fix``."""
    m = _AT.fullmatch(str(e))
    assert m is not None  # the pattern matches any text
    msg, key = m["msg"], (m["path"] or "").lstrip(".")
    named = _NAMED.match(msg)
    if named:
        t, _ = _type_at(key)
        key = f"{key}.{named['name']}" if key else named["name"]
        if named["what"] == "missing required":
            return f"{key}: missing; this key is required (see tapeline.example.toml)"
        known = [f.encode_name for f in t.fields] if isinstance(t, msgspec.inspect.StructType) else []
        close = difflib.get_close_matches(named["name"], known, n=1)
        fix = f"did you mean {close[0]!r}?" if close else "remove it"
        return f"{key}: unknown key; {fix} (tapeline.example.toml lists every key)"
    t, field = _type_at(key)
    own = _OWN.match(msg)  # a config struct's own check names its key within the struct: "expected.ibkr: ..."
    if own and isinstance(t, msgspec.inspect.StructType) and own[1] in {f.encode_name for f in t.fields}:
        return f"{key}.{msg}" if key else msg
    if isinstance(t, msgspec.inspect.LiteralType):
        return f"{key}: {msg}; use one of {', '.join(map(str, t.values))}"
    default = field.default if field is not None else msgspec.NODEFAULT
    if field is not None and field.default_factory is not msgspec.NODEFAULT:
        default = field.default_factory()
    if isinstance(default, (int, float, str, list)):
        return f"{key}: {msg}; the default is {msgspec.json.encode(default).decode()}"
    return f"{key}: {msg} (see tapeline.example.toml)"


def load_settings(
    path: Path | None = None,
    *,
    feed: Market | Literal["active"] | None = None,
    **overrides: object,
) -> Settings:
    """Read ``tapeline.toml``, apply CLI overrides, validate; raises :class:`ConfigError` (one line).

    An absent ``path`` means the defaults (see :func:`require_config_file` for one the user named).
    ``feed``: the market feed this process runs (``"active"``: the active set's); its files must
    exist and momentum follows it. Without one, momentum follows the active source set.
    """
    load_dotenv(Path(".env"), *([path.parent / ".env"] if path is not None else []))
    raw = _read(path)
    from_file = set(raw)
    given = {k: v for k, v in overrides.items() if v is not None}
    raw.update(given)
    try:
        _refuse_moved(raw)
        settings = msgspec.convert(raw, _WithComponents)
        _check(settings)
        market: Market = active_market(settings.feeds) if feed is None or feed == "active" else feed
        settings = _resolve_momentum(settings, market)
        settings = _resolve_news(settings, market)
        settings = _resolve_model_store(settings)
        _check_momentum(settings, market)
        if feed is not None and market == "files":
            check_file_sources(settings.feeds.files)
    except (msgspec.ValidationError, ConfigError) as e:
        message = _explain(e) if isinstance(e, msgspec.ValidationError) else str(e)
        top = re.split(r"[.:\[]", message, maxsplit=1)[0]  # the section or key the message starts with
        where = f"{path}: " if top in from_file and top not in given else ""  # a command-line value: just the key
        raise ConfigError(f"{where}{message}") from None
    return settings
