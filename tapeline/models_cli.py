"""``tapeline models train|deploy|rollback|list``: the price model's life cycle.

* ``train`` reads the bar files (``../shared/data/bars`` by default), computes the features with the
  ``enrichment`` handler itself (so training sees exactly what live scoring sees), evaluates walk-forward
  against two naive baselines, and writes ``price-<version>.onnx`` (:mod:`models.price`).
* ``deploy FILE|VERSION`` checks the model loads and its features match, copies it into the store
  (``[model] store``, default ``<data_dir>/models``) and publishes ``ModelDeployed`` on the INTEL
  stream; the ``model`` handler swaps when it reaches that event.
* ``rollback`` publishes ``ModelDeployed(rollback=True)`` for the version before the live one.
* ``list`` shows the stored models and which is live.

Deployments form a stack read back from the stream (the source of truth): a deploy pushes, a rollback
pops. User errors (no such file or version, a refused model, nothing to roll back to) are one line, exit 2.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from nats.aio.client import Client
from rich import box
from rich.console import Console
from rich.table import Table

from tapeline.adapters.files import default_sources, read_bars
from tapeline.config import ConfigError, Settings, load_settings
from tapeline.feeds import ConfigOpt, config_exit
from tapeline.handlers.enrichment import MarketFeatures
from tapeline.models.price import (
    MODEL,
    Dataset,
    ModelRefused,
    ModelStore,
    Series,
    WalkForward,
    default_classifier,
    export_onnx,
    file_sha256,
    load_model,
    make_dataset,
    read_meta,
    version_of,
    walk_forward,
)
from tapeline.schemas.events import Bar, Enrichment, ModelDeployed
from tapeline.schemas.ids import derive_event_id
from tapeline.schemas.subjects import INTEL
from tapeline.sentiment_cli import models_app as models_app

# One `tapeline models` group: the sentiment head's training lives in sentiment_cli, the price model here.
models_app.info.help = "Train the shipped models; deploy, roll back and list the price model."
console = Console()
ARTEFACTS = (Path(__file__).parent / "models").resolve() / "artefacts"  # the folder models/, not the link

NatsOpt = Annotated[str, typer.Option("--nats", help="NATS URL (default: TAPELINE_NATS_URL or embedded)")]
PrefixOpt = Annotated[str | None, typer.Option("--prefix", help="subject prefix (namespace)")]


def _fail(message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(2)


def _settings(config: Path, prefix: str | None) -> Settings:
    try:
        return load_settings(config, prefix=prefix)
    except ConfigError as e:
        config_exit(e)


# ---------------------------------------------------------------- train


def series_of(bars: Sequence[Bar]) -> Series:
    """A series' features as the ``enrichment`` handler emits them, one entry per bar."""
    handler = MarketFeatures()
    feats: list[dict[str, float] | None] = []
    for b in bars:
        (e,) = handler.handle(b)
        assert isinstance(e, Enrichment)
        feats.append(None if e.warmup else e.features)
    return Series(bars[0].symbol, bars[0].interval, [b.ts_event for b in bars], [b.close for b in bars], feats)


def train(series: Sequence[Series], *, horizon: int, folds: int) -> tuple[bytes, Dataset, WalkForward]:
    """Walk-forward evaluation, then the model fitted on every labelled row, exported."""
    ds = make_dataset(series, horizon)
    wf = walk_forward(ds, folds=folds)
    clf = default_classifier()
    clf.fit(ds.X, ds.y)
    return export_onnx(clf, ds, wf), ds, wf


def _day(ns: int) -> str:
    t = datetime.fromtimestamp(ns / 1e9, UTC)
    return t.strftime("%Y-%m-%d" if t.hour == t.minute == 0 else "%Y-%m-%d %H:%M")


def _report(ds: Dataset, wf: WalkForward) -> None:
    title = f"Walk-forward, model vs naive baselines: P(close[t+{ds.horizon}] > close[t]), {len(ds.y):,} rows"
    t = Table(title=title)
    for col in (
        "test window",
        "train rows",
        "test rows",
        "model hit",
        "model AUC",
        "always-majority hit",
        "momentum hit",
        "momentum AUC",
    ):
        t.add_column(col, justify="right")
    for f in wf.folds:
        t.add_row(
            f"{_day(f.start_ts)}..{_day(f.end_ts)}",
            f"{f.n_train:,}",
            f"{f.model.n:,}",
            f"{f.model.hit_rate:.3f}",
            f"{f.model.auc:.3f}",
            f"{f.majority.hit_rate:.3f}",
            f"{f.momentum.hit_rate:.3f}",
            f"{f.momentum.auc:.3f}",
        )
    o = wf.overall
    t.add_row(
        "all tested", "", f"{o['model'].n:,}", f"{o['model'].hit_rate:.3f}", f"{o['model'].auc:.3f}",
        f"{o['majority'].hit_rate:.3f}", f"{o['momentum'].hit_rate:.3f}", f"{o['momentum'].auc:.3f}",
        style="bold",
    )  # fmt: skip
    console.print(t)


@models_app.command("train")
def train_cmd(
    data: Annotated[Path | None, typer.Option(help="folder with bars/ (default: ../shared/data)")] = None,
    interval: Annotated[str, typer.Option(help="bar files of this interval: 1d (NVDA, ORCL) or 1m")] = "1d",
    horizon: Annotated[int, typer.Option(min=1, help="N: predict the sign of the N-bar forward return")] = 5,
    folds: Annotated[int, typer.Option(min=2, help="walk-forward test windows")] = 5,
    out: Annotated[Path, typer.Option(help="folder to write price-<version>.onnx into")] = ARTEFACTS,
) -> None:
    """Train on the real bar files, evaluate walk-forward against naive baselines, export ONNX."""
    sources = [s for s in default_sources(data) if s.kind == "bars" and s.interval == interval]
    missing = [s.path for s in sources if not s.path.exists()]
    if not sources or missing:
        why = f" ({missing[0]} is missing)" if missing else ""
        _fail(f"models train: no {interval} bar files{why}; give --data DIR with bars/")
    series = []
    for src in sources:
        bars = [b for b in read_bars(src.path, src.symbol, interval=src.interval).events if isinstance(b, Bar)]
        series.append(series_of(bars))
        console.print(f"{src.symbol}: {len(bars):,} {interval} bars from {src.path.name}")
    try:
        data_bytes, ds, wf = train(series, horizon=horizon, folds=folds)
    except ValueError as e:
        _fail(f"models train: {e}")
    _report(ds, wf)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{MODEL}-{version_of(file_sha256(data_bytes))}.onnx"
    path.write_bytes(data_bytes)
    console.print(f"wrote {path} ({len(data_bytes) / 1024:.0f} KiB); deploy it with: tapeline models deploy {path}")


# ---------------------------------------------------------------- deployments


@dataclass(frozen=True)
class Deployment:
    version: str
    sha256: str


async def history(nc: Client, prefix: str) -> list[ModelDeployed]:
    from tapeline.bus.reader import read_events

    got = await read_events(nc, INTEL.stream(prefix), [ModelDeployed.subject_pattern(prefix, model=MODEL)])
    return [e for _, e in got if isinstance(e, ModelDeployed)]


def live_stack(events: Sequence[ModelDeployed]) -> list[Deployment]:
    """Deployments still in force, oldest first; the last is live. A rollback pops down to its target."""
    stack: list[Deployment] = []
    for e in events:
        if e.rollback:
            while stack and stack[-1].sha256 != e.sha256:
                stack.pop()
        if not stack or stack[-1].sha256 != e.sha256:
            stack.append(Deployment(e.model_version, e.sha256))
    return stack


def rollback_target(stack: Sequence[Deployment], store: ModelStore) -> Deployment | None:
    """The newest deployment below the live one whose model is in the store and loads (a version
    the handler refused is passed over)."""
    for d in reversed(stack[:-1]):
        try:
            store.load(d.sha256)
        except ModelRefused:
            continue
        return d
    return None


async def _publish(
    settings: Settings, nats_url: str, event_of: Callable[[list[ModelDeployed]], ModelDeployed | None]
) -> ModelDeployed | None:
    """Publish what ``event_of`` makes of the deployment history (nothing if it returns None)."""
    from tapeline.bus.publisher import Publisher
    from tapeline.bus.topology import provision
    from tapeline.session import nats_session

    async with nats_session(nats_url, settings.data_path, "tapeline-models") as (nc, _):
        await provision(nc, settings.prefix, settings.retention)
        past = await history(nc, settings.prefix)
        ev = event_of(past)
        if ev is None:
            return None
        pub = await Publisher(nc, settings.prefix, role="models").start()
        try:
            await pub.publish([ev])
        finally:
            await pub.close()
        return ev


def _deployed(*, sha256: str, store: ModelStore, n: int, previous: str, rollback: bool = False) -> ModelDeployed:
    now = time.time_ns()
    return ModelDeployed(
        event_id=derive_event_id(now, "models", MODEL, sha256, n, rollback),
        ts_event=now,
        ts_init=now,
        source="tapeline-models",
        model=MODEL,
        model_version=version_of(sha256),
        sha256=sha256,
        path=str(store.path(sha256)),
        previous_version=previous,
        rollback=rollback,
    )


def _store(settings: Settings) -> ModelStore:
    return ModelStore(settings.components()["model"].store)


def _run(coro: Coroutine[Any, Any, ModelDeployed | None]) -> ModelDeployed | None:
    from tapeline.bus.connection import NatsConnectError

    try:
        return asyncio.run(coro)
    except NatsConnectError as e:
        _fail(str(e))


@models_app.command("deploy")
def deploy_cmd(
    target: Annotated[str, typer.Argument(help="a model file (.onnx) or a version in the store")],
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
) -> None:
    """Make a model the live one: checked, stored by content hash, announced with ModelDeployed."""
    s = _settings(config, prefix)
    store = _store(s)
    try:
        if Path(target).is_file():
            data = Path(target).read_bytes()
            sha = file_sha256(data)
        else:
            sha = store.find(target)
            data = store.get(sha)
        load_model(data, sha256=sha)
    except ModelRefused as e:
        _fail(f"models deploy: {target}: refused: {e}")
    store.put(data)

    def event(past: list[ModelDeployed]) -> ModelDeployed | None:
        stack = live_stack(past)
        if stack and stack[-1].sha256 == sha:
            return None
        return _deployed(sha256=sha, store=store, n=len(past), previous=stack[-1].version if stack else "")

    ev = _run(_publish(s, nats, event))
    if ev is None:
        console.print(f"{MODEL} {version_of(sha)} is already live")
    else:
        console.print(f"deployed {MODEL} {ev.model_version} (was {ev.previous_version or 'none'})")


@models_app.command("rollback")
def rollback_cmd(config: ConfigOpt = Path("tapeline.toml"), nats: NatsOpt = "", prefix: PrefixOpt = None) -> None:
    """Go back to the version deployed before the live one."""
    s = _settings(config, prefix)
    store = _store(s)
    problem: list[str] = []

    def event(past: list[ModelDeployed]) -> ModelDeployed | None:
        stack = live_stack(past)
        target = rollback_target(stack, store)
        if target is None:
            problem.append(f"models rollback: no earlier deployment of a loadable model ({len(stack)} in force)")
            return None
        return _deployed(sha256=target.sha256, store=store, n=len(past), previous=stack[-1].version, rollback=True)

    ev = _run(_publish(s, nats, event))
    if ev is None:
        _fail(problem[0])
    console.print(f"rolled back {MODEL} to {ev.model_version} (was {ev.previous_version})")


def _when(ns: int | None) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%m-%d %H:%M") if ns else ""


@models_app.command("list")
def list_cmd(config: ConfigOpt = Path("tapeline.toml"), nats: NatsOpt = "", prefix: PrefixOpt = None) -> None:
    """The models in the store with their walk-forward figures; ● marks the live one."""
    s = _settings(config, prefix)
    store = _store(s)

    async def past() -> list[ModelDeployed]:
        from tapeline.session import nats_session

        async with nats_session(nats, s.data_path, "tapeline-models") as (nc, _):
            return await history(nc, s.prefix)

    from tapeline.bus.connection import NatsConnectError

    try:
        events = asyncio.run(past())
    except NatsConnectError as e:
        _fail(str(e))
    stack = live_stack(events)
    live = stack[-1].sha256 if stack else ""
    last_deployed: dict[str, int] = {e.sha256: e.ts_event for e in events}
    t = Table(title=f"{MODEL} models in {store.root}", box=box.SIMPLE_HEAD)
    for col in ("live", "version", "bars", "trained", "AUC", "hit", "mom. AUC", "deployed"):
        t.add_column(col, no_wrap=True)
    for sha in sorted(set(store.shas()) | set(last_deployed), key=lambda h: last_deployed.get(h, 0)):
        meta = read_meta(store.path(sha).read_bytes()) if store.path(sha).exists() else {}
        wf = json.loads(meta.get("walk_forward", "{}") or "{}")
        model, mom = wf.get("model", {}), wf.get("momentum", {})
        t.add_row(
            "●" if sha == live else "",
            version_of(sha) if meta else f"{version_of(sha)} (missing)",
            f"{','.join(json.loads(meta.get('intervals', '[]')))} h={meta.get('horizon', '')}" if meta else "",
            f"{meta.get('train_from', '')[:4]}-{meta.get('train_to', '')[:4]}" if meta else "",
            f"{model['auc']:.3f}" if model else "",
            f"{model['hit_rate']:.3f}" if model else "",
            f"{mom['auc']:.3f}" if mom else "",
            datetime.fromtimestamp(last_deployed[sha] / 1e9, UTC).strftime("%m-%d %H:%M")
            if sha in last_deployed
            else "",
            style="bold green" if sha == live else None,
        )
    console.print(t)
    if not live:
        console.print("no model is live: tapeline models deploy FILE")
