"""The ``tapeline`` command: demo, up, status, replay, query, decisions, schemas, feed."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import msgspec
import structlog
import typer
from nats.errors import NoRespondersError
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tapeline import ops
from tapeline.adapters.runner import FeedStats, run_feed
from tapeline.adapters.sim import SimFeed
from tapeline.bus.auth import IdentityError, authorization_config, identity_for, passwords_from_env
from tapeline.bus.connection import NatsConnectError, NatsSettings, redact_url
from tapeline.bus.consumer import ConsumerLost
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.lock import DirectoryInUse, owner
from tapeline.bus.logging import configure_logging
from tapeline.bus.metrics import serve_metrics
from tapeline.bus.publisher import Publisher
from tapeline.bus.server import EmbeddedNats
from tapeline.config import DEFAULT_METRICS_PORT, ConfigError, Market, Settings, load_settings
from tapeline.feeds import ConfigOpt, config_exit, feed_app
from tapeline.models_cli import models_app
from tapeline.perf import perf_app
from tapeline.pipeline import ROLES, Pipeline, swap_subject
from tapeline.projections.query import QueryError, QueryResult, query_file, query_remote
from tapeline.projections.table import ReadModelChanged
from tapeline.replay.rebuild import NotEnoughSpace, check_space, verify
from tapeline.schemas.codec import decode
from tapeline.schemas.events import DecisionEnvelope
from tapeline.schemas.export import export_json_schemas
from tapeline.schemas.subjects import FAMILIES, decisions_bucket, decode_token, encode_token
from tapeline.sentiment_cli import evaluate_offline
from tapeline.session import nats_session, running_embedded

app = typer.Typer(
    help="Tapeline: an event-sourced trading-intelligence pipeline on NATS JetStream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts name config sections like [feeds.files]; Rich markup would eat them
)
schemas_app = typer.Typer(help="Event schemas.", rich_markup_mode=None)
app.add_typer(schemas_app, name="schemas")
app.add_typer(feed_app, name="feed", help="Run one market-data feed against NATS.")
app.add_typer(perf_app, name="perf")  # tapeline/perf.py
eval_app = typer.Typer(help="Evaluate sentiment scoring.")
app.add_typer(eval_app, name="eval")
app.add_typer(models_app, name="models")  # sentiment training (sentiment_cli), the price model (models_cli)
console = Console()
log = structlog.get_logger("tapeline")

NatsOpt = Annotated[str, typer.Option("--nats", help="NATS URL (default: TAPELINE_NATS_URL or embedded)")]
PrefixOpt = Annotated[str | None, typer.Option("--prefix", help="subject prefix (namespace)")]


T = TypeVar("T")


def _run(main: Coroutine[Any, Any, T]) -> T:
    """Run a command; no NATS connection is one line naming the server and the cause, exit 2."""
    try:
        return asyncio.run(main)
    except NatsConnectError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    except ConsumerLost as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    except CommandFailed as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    except DirectoryInUse as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


class CommandFailed(Exception):
    """A one-shot command that could not do what was asked (not a bug): one line, exit 1."""


def _settings(config: Path, *, feed: Market | None = None, **overrides: Any) -> Settings:
    """Load and validate, or exit 2 with one line naming the file/key and the fix (never a traceback)."""
    try:
        s = load_settings(config, feed=feed, **overrides)
    except ConfigError as e:
        config_exit(e)
    configure_logging(s.log_level)
    return s


# ----------------------------------------------------------------------------- demo


@app.command()
def demo(
    config: ConfigOpt = Path("tapeline.toml"),
    files: Annotated[
        bool, typer.Option("--files", help="replay the [feeds.files] files (default: the samples in ../shared/data)")
    ] = False,
    ticks: Annotated[int | None, typer.Option(help="simulated ticks")] = None,
    batch_ticks: Annotated[
        bool | None,
        typer.Option(
            help="ticks in batch messages (default: the batch_ticks setting; unset: the simulator and files batch)"
        ),
    ] = None,
    keep: Annotated[bool, typer.Option(help="keep the previous demo's data")] = False,
) -> None:
    """Run the whole pipeline on an embedded NATS server; leaves everything in ./.tapeline/."""
    s = _settings(config, feed="files" if files else "sim")
    if s.log_level == "info":
        configure_logging("warning")  # the live display is the demo's output; warnings still show
    if ticks is not None:
        s = msgspec.structs.replace(s, sim=msgspec.structs.replace(s.sim, ticks=ticks))
    holder = owner(s.data_path / "nats")
    if holder is not None:
        typer.echo(f"{s.data_path} is in use by PID {holder}: stop it first, or set data_dir elsewhere", err=True)
        raise typer.Exit(2)
    if s.data_path.exists() and not keep:
        shutil.rmtree(s.data_path)
    _serve_metrics(s.metrics_port)
    server = EmbeddedNats(s.data_path / "nats")
    url = _start(server)
    try:
        ok = asyncio.run(_demo(s, url, files=files, batch_ticks=s.batch_ticks if batch_ticks is None else batch_ticks))
    except ReadModelChanged as e:  # only with --keep: a fresh demo has no old tables
        _refused(e)
    finally:
        server.stop()
    p = s.prefix
    console.print(
        f"\n[bold]Everything is in {s.data_path}/[/] (JetStream store, DuckDB projection, logs).\n"
        "Inspect it:\n"
        f'  ./dev query "SELECT ticker, verdict, confidence, reasoning FROM latest_decisions"\n'
        f"  ./dev status                    # streams, consumer lag, checkpoints\n"
        f"  ./dev decisions NVDA            # latest verdict from the KV bucket\n"
        f"  ./dev serve --port 4222         # bring the server back, then with the nats CLI:\n"
        f"      nats -s nats://127.0.0.1:4222 stream ls\n"
        f"      nats -s nats://127.0.0.1:4222 stream view {p.upper()}_DECISION\n"
        f"      nats -s nats://127.0.0.1:4222 sub '{p}.decision.>' --last\n"
        f"      nats -s nats://127.0.0.1:4222 kv get {decisions_bucket(p)} NVDA\n"
    )
    if not ok:
        raise typer.Exit(1)


async def _demo(s: Settings, url: str, *, files: bool, batch_ticks: bool | None) -> bool:
    from tapeline.bus.connection import connect

    nc = await connect(NatsSettings(url=url, name="tapeline-demo"))
    configs = s.components()
    configs.update(demo_overrides(configs, files=files))
    pipeline = Pipeline(
        nc,
        s.prefix,
        configs=configs,
        db_path=s.duckdb_path,
        selected=ROLES,
        retention=s.retention,
        projector=s.projector,
    )
    await pipeline.start()
    publisher = await Publisher(nc, s.prefix, role="feed").start()
    feed: Any
    if files:
        from tapeline.adapters.sources import files_feed

        feed = files_feed(s.feeds)
        total = None
    else:
        feed = SimFeed(s.sim.symbols, seed=s.sim.seed, ticks=s.sim.ticks, mean_gap_ms=s.sim.mean_gap_ms)
        total = s.sim.ticks
    stats = FeedStats()
    started = time.perf_counter()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )
    t_feed = progress.add_task("feed → JetStream", total=total, info="")
    t_proj = progress.add_task("handlers, projections", total=None, info="")
    feed_task = asyncio.create_task(run_feed(feed, publisher, batch_ticks=batch_ticks, stats=stats))
    api = JetStreamApi(nc)
    with Live(progress, console=console, refresh_per_second=8):
        while True:
            await asyncio.sleep(0.25)
            made = {r.component.name: sum(getattr(k, "emitted", 0) for k in r.sinks) for r in pipeline.runners}
            committed = sum(sink.events for sink in pipeline.sinks)
            progress.update(
                t_feed,
                completed=stats.events,
                info=f"{stats.events / max(1e-9, time.perf_counter() - started):,.0f} ev/s",
            )
            progress.update(
                t_proj,
                completed=committed,
                info=f"made {made.get('bars', 0):,} bars → {made.get('momentum', 0):,} signals → "
                f"{made.get('decision', 0):,} decisions; {committed:,} rows committed",
            )
            if feed_task.done():
                if feed_task.exception():
                    raise feed_task.exception()  # type: ignore[misc]
                if await _caught_up(api, pipeline):
                    break
    elapsed = time.perf_counter() - started
    await publisher.close()
    _summary(pipeline, stats.events, elapsed)
    await pipeline.stop()
    console.print("\n[bold]Replay check[/]: rebuilding the DuckDB projection from sequence 1 …")
    checks, rs = await verify(
        nc,
        s.prefix,
        s.duckdb_path,
        s.data_path / "replay" / f"verify-{int(time.time())}.duckdb",
        live_vectors_dir=s.vectors_path,
    )
    _print_checks(checks, rs.events, rs.seconds)
    await nc.drain()
    return all(c.ok for c in checks)


async def _caught_up(api: JetStreamApi, pipeline: Pipeline) -> bool:
    """Every handler idle with nothing pending, every projection at its stream's last sequence.

    Read models do not ack (ack policy ``none``: ``num_ack_pending`` is always 0), so each runtime also
    says it has committed all it was delivered."""
    if not all(r.idle.is_set() and r.committed for r in pipeline.consumers):
        return False
    for sink in pipeline.sinks:
        info = await api.stream_info(sink.stream)
        if info and int(info["state"]["last_seq"]) > sink.last_seq:
            return False
    for rt in pipeline.consumers:
        ci = await api.consumer_info(rt.stream, rt.durable)
        if ci and (ci.get("num_pending") or ci.get("num_ack_pending")):
            return False
    return True


def demo_overrides(configs: dict[str, Any], *, files: bool) -> dict[str, Any]:
    """What the demo changes in the configured components, and why.

    It never calls a paid LLM API with its headlines, whatever keys the shell holds: the offline scorer
    only. Its prices are simulated or historical, so its orders must never reach a real broker: execution
    is always the paper broker (fills at the next tick). The simulator moves about 1% a minute (some 300%
    a year), so the scanner's "calm" part scores near 0 and no candidate reaches grade A: with the
    simulator the demo scans at grade B.
    """
    out = {
        "news_llm": msgspec.structs.replace(configs["news_llm"], provider="offline"),
        "execution": msgspec.structs.replace(configs["execution"], broker="paper"),
    }
    if not files:
        out["scanner"] = msgspec.structs.replace(configs["scanner"], min_grade="B")
    return out


def _summary(pipeline: Pipeline, fed: int, elapsed: float) -> None:
    assert pipeline.db is not None
    con = pipeline.db.con
    t = Table(title=f"Demo: {fed:,} events fed in {elapsed:.1f}s ({fed / elapsed:,.0f}/s end to end)")
    t.add_column("table")
    t.add_column("rows", justify="right")
    for name in ("ticks", "bars", "news", "signals", "decisions", "orders", "fills", "dead_letters"):
        row = con.execute(f"SELECT count(*) FROM {name}").fetchone()
        t.add_row(name, f"{row[0] if row else 0:,}")
    for vs in pipeline.vector_sinks:
        t.add_row(f"lancedb: {vs.projection.table}", f"{vs.projection.store.count(vs.projection.table):,}")
    console.print(t)
    d = Table(title="Latest decision per symbol")
    for c in ("ticker", "verdict", "confidence", "ensemble", "reasoning"):
        d.add_column(c)
    for ticker, verdict, conf, score, why in con.execute(
        "SELECT ticker, verdict, confidence, ensemble_score, reasoning FROM latest_decisions ORDER BY ticker"
    ).fetchall():
        color = {"BUY": "green", "SELL": "red"}.get(verdict, "yellow")
        d.add_row(ticker, f"[{color}]{verdict}[/]", f"{conf:.2f}", f"{score:+.2f}", why)
    console.print(d)


def _refused(e: ReadModelChanged) -> NoReturn:
    """A read model that changed since it was built: one line with the fix, exit 2."""
    console.print(f"[red]{escape(str(e))}[/]", soft_wrap=True)
    raise typer.Exit(2) from None


def _print_checks(checks: list[Any], events: int, seconds: float) -> None:
    t = Table(title=f"Replay verification: {events:,} events rebuilt in {seconds:.1f}s")
    for c in ("table", "live", "rebuilt", ""):
        t.add_column(c)
    marks = {"ok": "[green]✓[/]", "MISMATCH": "[red]✗ MISMATCH[/]"}
    for c in checks:
        t.add_row(c.table, c.live, c.rebuilt, marks.get(c.verdict, f"[yellow]{c.verdict}[/]"))
    console.print(t)


# ----------------------------------------------------------------------------- up / serve


@app.command()
def up(
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    only: Annotated[
        list[str] | None, typer.Option("--only", help=f"roles ({', '.join(ROLES)}) or component names to run")
    ] = None,
    standby: Annotated[
        bool, typer.Option("--standby/--no-standby", help="wait while another process runs an ordered role")
    ] = True,
    prefix: PrefixOpt = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus port (0: off)")] = None,
    drain_timeout: Annotated[
        float,
        typer.Option(
            help="seconds from SIGINT/SIGTERM to exit, even with NATS gone: work in flight gets all but "
            "2/5 of it (at most 4 s), kept to close the connection and exit"
        ),
    ] = 10.0,
) -> None:
    """Run handlers and projections against NATS until stopped (SIGINT/SIGTERM drain gracefully).

    An external server that is not up yet is retried for TAPELINE_NATS_START_RETRY_S (30) seconds.
    Metrics: on metrics_port; with `--only ROLE` and the default port (9464), on 9465 + the role's place
    in the role list, so one process per role on a host needs no flags; --metrics-port overrides.
    """
    from tapeline.alloc import for_long_running

    for_long_running()  # RSS flat in the soak (tapeline/alloc.py)
    s = _settings(config, prefix=prefix, nats_url=nats or None, metrics_port=metrics_port)
    try:  # the NATS identity of these roles (bus.auth)
        identity = identity_for(only or ROLES)
    except IdentityError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    selected = tuple(only or ROLES)
    port = s.metrics_port
    if metrics_port is None and only and s.metrics_port == DEFAULT_METRICS_PORT and only[0] in ROLES:
        port = s.metrics_port + 1 + ROLES.index(only[0])
    _serve_metrics(port)
    _run(_up(s, selected, standby, drain_timeout, identity))


def _serve_metrics(port: int) -> None:
    try:
        serve_metrics(port)
    except OSError as e:
        typer.echo(f"metrics port {port} is not free ({e.strerror}): pass --metrics-port N (0: off)", err=True)
        raise typer.Exit(2) from None


async def _up(s: Settings, roles: tuple[str, ...], standby: bool, drain_s: float, identity: str = "") -> None:
    from tapeline.bus.lease import LeaseHeld, LeaseLost

    close_s = min(2.0, drain_s / 5)  # of the budget, for closing the connection; as much again to exit
    session = nats_session(s.nats_url, s.data_path, name="tapeline-up", retry=True, close_s=close_s, identity=identity)
    async with session as (nc, url):
        try:
            pipeline = Pipeline(
                nc,
                s.prefix,
                configs=s.components(),
                db_path=s.duckdb_path,
                selected=roles,
                retention=s.retention,
                standby=standby,
                projector=s.projector,
            )
        except ValueError as e:
            console.print(f"[red]{e}[/]")
            raise typer.Exit(2) from None
        stop = asyncio.Event()  # before start-up, so a signal during it drains too
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.create_task(pipeline.start())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([starting, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped while starting (a standby, or a server that went away): abandon it
            pipeline.request_stop()
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        elif starting.exception() is not None:
            exc = starting.exception()
            await pipeline.stop()
            if isinstance(exc, ReadModelChanged):  # refused at start: the user rebuilds it
                _refused(exc)
            raise exc  # type: ignore[misc]
        shown = redact_url(url)
        if not stop.is_set():
            console.print(f"[bold]tapeline up[/] on {shown} prefix={s.prefix} roles={','.join(roles)}; Ctrl-C to stop")
        waiter = asyncio.create_task(pipeline.wait())
        await asyncio.wait([waiter, stopped], return_when=asyncio.FIRST_COMPLETED)
        try:  # bounded: a server that is gone, or forgot our requests, must not keep us here
            async with asyncio.timeout(drain_s - 2 * close_s):
                await pipeline.stop()
        except TimeoutError:
            log.warning("drain timed out; unacknowledged work will be redelivered", drain_timeout_s=drain_s)
        if waiter.done() and not waiter.cancelled() and waiter.exception():
            exc = waiter.exception()
            if isinstance(exc, LeaseHeld | LeaseLost):
                console.print(f"[red]{exc}[/]")
                raise typer.Exit(2)
            raise exc  # type: ignore[misc]


@app.command()
def serve(
    config: ConfigOpt = Path("tapeline.toml"),
    port: Annotated[int, typer.Option(help="client port")] = 4222,
) -> None:
    """Run the embedded NATS server on the demo's data (for the nats CLI) until Ctrl-C."""
    s = _settings(config)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # delivered to sigwait below, not fatal meanwhile
    passwords = passwords_from_env()  # TAPELINE_NATS_PASSWORD_<IDENTITY> set: only those users get in
    auth = authorization_config(s.prefix, passwords) if passwords else ""
    server = EmbeddedNats(s.data_path / "nats", port=port, extra_config=auth)
    url = _start(server)
    console.print(f"nats-server on [bold]{url}[/] (monitoring {server.monitor_url}); Ctrl-C or SIGTERM stops it")
    try:
        signal.sigwait(stop_signals)
    finally:
        server.stop()


def _start(server: EmbeddedNats) -> str:
    """Start an embedded server, or one line naming the process that owns its store."""
    try:
        return server.start()
    except DirectoryInUse as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


# ----------------------------------------------------------------------------- status


@app.command()
def status(config: ConfigOpt = Path("tapeline.toml"), nats: NatsOpt = "", prefix: PrefixOpt = None) -> None:
    """Streams, message counts, consumer lag and projection checkpoints."""
    s = _settings(config, prefix=prefix, nats_url=nats or None)
    _run(_status(s))


async def _status(s: Settings) -> None:
    async with nats_session(s.nats_url, s.data_path, name="tapeline-status") as (nc, _):
        api = JetStreamApi(nc)
        streams = Table(title=f"Streams ({s.prefix})")
        for c in ("stream", "messages", "bytes", "first", "last", "consumers"):
            streams.add_column(c, justify="right" if c != "stream" else "left")
        consumers = Table(title="Consumers")
        for c in ("stream", "consumer", "pending", "ack pending", "redelivered", "ack floor"):
            consumers.add_column(c, justify="right" if c not in ("stream", "consumer") else "left")
        last_seq: dict[str, int] = {}
        for fam in FAMILIES:
            name = fam.stream(s.prefix)
            info = await api.stream_info(name)
            if info is None:
                continue
            st = info["state"]
            last_seq[name] = int(st["last_seq"])
            streams.add_row(
                name,
                f"{st['messages']:,}",
                f"{st['bytes']:,}",
                str(st["first_seq"]),
                str(st["last_seq"]),
                str(st.get("consumer_count", 0)),
            )
            for cname in sorted(await api.consumer_names(name)):
                ci = await api.consumer_info(name, cname)
                if ci:
                    consumers.add_row(
                        name,
                        cname,
                        f"{ci['num_pending']:,}",
                        f"{ci['num_ack_pending']:,}",
                        f"{ci['num_redelivered']:,}",
                        _ack_floor(ci),
                    )
        console.print(streams)
        console.print(consumers)
        res = await _query(
            nc, s, "SELECT read_model, stream, last_seq, events, updated_ns FROM _checkpoints ORDER BY stream, 1"
        )
        cps = Table(title="Projection checkpoints (DuckDB, per read model)")
        for c in ("read model", "stream", "checkpoint", "lag", "events", "updated"):
            cps.add_column(c)
        for model, stream, seq, events, updated in res.rows:
            lag = last_seq.get(str(stream), int(str(seq))) - int(str(seq))
            when = datetime.fromtimestamp(int(str(updated)) / 1e9, UTC).strftime("%H:%M:%S")
            cps.add_row(str(model), str(stream), str(seq), f"{lag:,}", f"{int(str(events)):,}", when)
        console.print(cps)


def _ack_floor(ci: dict[str, Any]) -> str:
    """A consumer's ack floor; a read model's (ack policy none) would only follow deliveries: its position is
    its checkpoint (the table below for DuckDB)."""
    if (ci.get("config") or {}).get("ack_policy") == "none":
        return "n/a (ack none)"
    return str(ci["ack_floor"]["stream_seq"])


async def _query(nc: Any, s: Settings, sql: str) -> QueryResult:
    try:
        return await query_remote(nc, s.prefix, sql, timeout=1.5)
    except Exception:  # no projector answering: read the file
        try:
            return await asyncio.to_thread(query_file, s.duckdb_path, sql)
        except QueryError as e:
            return QueryResult([], [], error=str(e))


# ----------------------------------------------------------------------------- query / replay / decisions


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="a read-only SQL query")],
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """Read-only SQL over the projections, live (through the projector) or from the file."""
    s = _settings(config, prefix=prefix, nats_url=nats or None)
    res = _run(_query_cmd(s, sql))
    if res.error:
        console.print(f"[red]{escape(res.error)}[/]", soft_wrap=True)
        raise typer.Exit(1)
    if json_out:
        for row in res.rows:
            sys.stdout.write(msgspec.json.encode(dict(zip(res.columns, row, strict=True))).decode() + "\n")
        return
    t = Table()
    for c in res.columns:
        t.add_column(c)
    for row in res.rows:
        t.add_row(*(str(v) for v in row))
    console.print(t)
    if res.truncated:
        console.print("[yellow]truncated at 10,000 rows; add LIMIT or use --json[/]")


async def _query_cmd(s: Settings, sql: str) -> QueryResult:
    external = NatsSettings.from_env(s.nats_url).url  # the config's URL, else TAPELINE_NATS_URL
    if not external and running_embedded(s.data_path) is None:  # nothing runs: read the file
        try:
            return await asyncio.to_thread(query_file, s.duckdb_path, sql)
        except QueryError as e:
            return QueryResult([], [], error=str(e))
    try:
        async with nats_session(s.nats_url, s.data_path, name="tapeline-query") as (nc, _):
            return await _query(nc, s, sql)
    except QueryError as e:
        return QueryResult([], [], error=str(e))


@app.command()
def replay(
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
    verify_: Annotated[
        bool, typer.Option("--verify", help="compare per-table hashes with the live projection")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="rebuild into this new DuckDB file")] = None,
    until: Annotated[
        str | None, typer.Option(help="point in time (ISO 8601, UTC): state as the system knew it")
    ] = None,
    swap: Annotated[bool, typer.Option("--swap", help="replace the live projection with the verified rebuild")] = False,
) -> None:
    """Rebuild the DuckDB projection from sequence 1 into a fresh file; --verify exits 1 on a mismatch."""
    s = _settings(config, prefix=prefix, nats_url=nats or None)
    if swap and (until or not verify_):
        console.print("[red]--swap needs --verify and no --until: only a verified, complete rebuild goes live[/]")
        raise typer.Exit(2)
    until_ns = _parse_time(until) if until else None
    target = out or s.data_path / "replay" / f"rebuild-{int(time.time())}.duckdb"
    try:
        check_space(target, s.duckdb_path, s.vectors_path)
    except NotEnoughSpace as e:
        console.print(f"[red]{e}[/]", soft_wrap=True)
        raise typer.Exit(2) from None
    ok = _run(_replay(s, target, verify_, until_ns, swap))
    if not ok:
        raise typer.Exit(1)


def _parse_time(text: str) -> int:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        console.print(f"[red]--until: {text!r} is not ISO 8601, e.g. 2026-01-01T00:30:00[/]")
        raise typer.Exit(2) from None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1e9)


async def _replay(s: Settings, target: Path, check: bool, until_ns: int | None, swap: bool) -> bool:
    from tapeline.replay.rebuild import rebuild

    async with nats_session(s.nats_url, s.data_path, name="tapeline-replay") as (nc, _):
        with Progress(
            TextColumn("rebuilding"),
            BarColumn(),
            TextColumn("{task.completed:,} events"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("rebuild", total=None)

            def tick(n: int) -> None:
                bar.update(task, completed=n)

            if check:
                checks, stats = await verify(
                    nc, s.prefix, s.duckdb_path, target, live_vectors_dir=s.vectors_path, progress=tick
                )
            else:
                stats = await rebuild(
                    nc, s.prefix, target, vectors_dir=target.with_suffix(".vectors"), until_ns=until_ns, progress=tick
                )
                checks = []
        console.print(f"rebuilt {stats.events:,} events into {target} in {stats.seconds:.2f}s ({stats.rate:,.0f}/s)")
        if not check:
            return True
        _print_checks(checks, stats.events, stats.seconds)
        ok = all(c.ok for c in checks)
        if ok and swap:
            if not await _swap(nc, s, target):
                return False
            console.print(f"[green]swapped[/] {s.duckdb_path} ← {target}")
            console.print(
                f"(vectors rebuilt in {target.with_suffix('.vectors')} are verified, not swapped: stop the "
                "vectors role and move that directory to swap them)"
            )
        return ok


SWAP_WAIT_S = 300.0  # a swap waits for the batch in hand, then closes and reopens the file


async def _swap(nc: Any, s: Settings, target: Path, *, wait_s: float = SWAP_WAIT_S, every_s: float = 10.0) -> bool:
    """Put a verified rebuild live; True once it is.

    A running projector swaps it between two batches. Only when no projector listens at all
    (NATS "no responders") does this command rename the file itself. A projector that is slow to
    answer still has the file open: renaming under it would lose the rebuild or its writes, so
    this waits, with a progress line every ``every_s``, and after ``wait_s`` fails without
    touching either file.
    """
    subject = swap_subject(s.prefix)
    path = str(os.path.abspath(target))  # noqa: ASYNC240 - no I/O
    request = asyncio.ensure_future(nc.request(subject, path.encode(), timeout=wait_s))
    start = time.monotonic()
    while not (await asyncio.wait({request}, timeout=every_s))[0]:
        console.print(f"waiting for the projector to swap ({time.monotonic() - start:.0f}s of {wait_s:.0f}s)")
    try:
        answer: str = request.result().data.decode()
    except NoRespondersError:  # no projector: nothing has the file open
        os.replace(target, s.duckdb_path)
        return True
    except TimeoutError:
        console.print(
            f"[red]swap: the projector on {subject} did not answer within {wait_s:.0f}s; it runs, so "
            f"{s.duckdb_path} was left alone and the rebuild stays at {target}. It may still swap (its log "
            "says 'projection swapped'); otherwise retry when it is less busy, or stop it and retry[/]"
        )
        return False
    if answer != "ok":
        console.print(f"[red]swap failed: {answer}[/]")
    return answer == "ok"


@app.command("what-if")
def what_if_cmd(
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
    name: Annotated[str, typer.Option(help="isolated namespace: outputs go under <prefix>-whatif-<name>")] = "run1",
    momentum_window: Annotated[int | None, typer.Option(help="bars in the momentum window")] = None,
    momentum_interval: Annotated[str | None, typer.Option(help="bar interval momentum reads, e.g. 5m")] = None,
    threshold: Annotated[float | None, typer.Option(help="decision threshold on the ensemble score")] = None,
    until: Annotated[str | None, typer.Option(help="only inputs recorded up to this time (ISO 8601, UTC)")] = None,
    show: Annotated[int, typer.Option(help="verdict changes to list")] = 20,
) -> None:
    """Replay recorded inputs through another configuration of the system and diff the decisions."""
    s = _settings(config, prefix=prefix, nats_url=nats or None)
    alt = s.components()
    m, b, d = alt["momentum"], alt["bars"], alt["decision"]
    interval = momentum_interval or m.interval
    alt["momentum"] = msgspec.structs.replace(m, window=momentum_window or m.window, interval=interval)
    alt["bars"] = msgspec.structs.replace(b, intervals=sorted({*b.intervals, interval}))
    alt["decision"] = d if threshold is None else msgspec.structs.replace(d, threshold=threshold)
    target = f"{s.prefix}-whatif-{name}"
    until_ns = _parse_time(until) if until else None
    _run(_what_if(s, alt, target, until_ns, show))


async def _what_if(s: Settings, alt: Any, target: str, until_ns: int | None, show: int) -> None:
    from tapeline.replay.whatif import what_if
    from tapeline.system import build

    async with nats_session(s.nats_url, s.data_path, name="tapeline-whatif") as (nc, _):
        report = await what_if(nc, s.prefix, target, build(alt), until_ns=until_ns, progress=console.print)
    console.print(
        f"what-if [bold]{target}[/]: {report.inputs:,} recorded inputs → {report.derived:,} derived events "
        f"in {report.seconds:.1f}s; decisions {report.decisions_recorded:,} recorded vs {report.decisions_what_if:,}"
    )
    t = Table(title=f"Verdicts that changed ({len(report.changes):,})")
    for c in ("symbol", "time (UTC)", "recorded", "what-if"):
        t.add_column(c)
    for ch in report.changes[:show]:
        when = datetime.fromtimestamp(ch.ts_event / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
        t.add_row(ch.symbol, when, ch.recorded, ch.what_if)
    console.print(t)
    p = Table(title="Decision P&L (unit position per verdict, marked at bar closes)")
    for c in ("symbol", "recorded", "what-if", "difference"):
        p.add_column(c, justify="right" if c != "symbol" else "left")
    for sym in sorted(set(report.pnl_recorded) | set(report.pnl_what_if)):
        a, b = report.pnl_recorded.get(sym, 0.0), report.pnl_what_if.get(sym, 0.0)
        p.add_row(sym, f"{a:+.4f}", f"{b:+.4f}", f"{b - a:+.4f}")
    console.print(p)
    console.print(f"inspect: tapeline status --prefix {target}; nats sub '{target}.decision.>' --all")


def _pct(v: object) -> str:
    return f"{float(v):+.2%}" if isinstance(v, int | float) else "—"


def _when(ns: object) -> str:
    return datetime.fromtimestamp(int(str(ns)) / 1e9, UTC).strftime("%Y-%m-%d %H:%M")


def _vector_store(config: Path) -> Any:
    """The live LanceDB read models (readers may open them beside the writer), or a clear exit."""
    from tapeline.projections.vectors import VectorStore

    s = _settings(config)
    if not s.vectors_path.exists():
        console.print(f"[red]no vectors at {s.vectors_path}: run `./dev demo` or `tapeline up` first[/]")
        raise typer.Exit(1)
    return VectorStore(s.vectors_path)


@app.command()
def similar(
    symbol: Annotated[str, typer.Argument(help="the symbol whose current (or --at) situation to match")],
    at: Annotated[str | None, typer.Option("--at", help="the situation at this time (ISO 8601, UTC)")] = None,
    k: Annotated[int, typer.Option("-k", help="how many")] = 10,
    interval: Annotated[str | None, typer.Option(help="bar interval (default: the symbol's)")] = None,
    config: ConfigOpt = Path("tapeline.toml"),
) -> None:
    """The most similar past market situations (LanceDB market-state vectors) and what happened next."""
    from tapeline.projections.vectors import similar_situations

    rows = similar_situations(_vector_store(config), symbol, _parse_time(at) if at else None, k, interval=interval)
    if not rows:
        console.print(f"[yellow]no market state for {symbol} yet (it needs 61 bars of history)[/]")
        raise typer.Exit(1)
    t = Table(title=f"Situations most like {symbol}{' at ' + at if at else ' now'}")
    for c in ("symbol", "bar close (UTC)", "distance", "close", "next bar", "next 5", "next 20"):
        t.add_column(c, justify="left" if c in ("symbol", "bar close (UTC)") else "right")
    for r in rows:
        t.add_row(
            r["symbol"],
            _when(r["ts_event"]),
            f"{r['distance']:.3f}",
            f"{r['close']:.4g}",
            _pct(r["fwd_ret_1"]),
            _pct(r["fwd_ret_5"]),
            _pct(r["fwd_ret_20"]),
        )
    console.print(t)
    known = [r["fwd_ret_20"] for r in rows if r["fwd_ret_20"] is not None]
    if known:
        up = sum(1 for v in known if v > 0)
        console.print(f"after 20 bars: {up}/{len(known)} went up; mean {sum(known) / len(known):+.2%}")


@app.command("search-news")
def search_news_cmd(
    text: Annotated[str, typer.Argument(help="what the news should be about")],
    k: Annotated[int, typer.Option("-k", help="how many")] = 10,
    config: ConfigOpt = Path("tapeline.toml"),
) -> None:
    """Find news by meaning (all-MiniLM-L6-v2 embeddings in LanceDB), with what the price did next."""
    from tapeline.models.embedder import TextEmbedder
    from tapeline.projections.vectors import search_news

    rows = search_news(_vector_store(config), TextEmbedder(), text, k)
    t = Table(title=f"News nearest to {text!r}")
    for c in ("score", "published (UTC)", "tickers", "title", "next bar", "next 20"):
        t.add_column(c)
    for r in rows:
        t.add_row(
            f"{r['score']:.3f}",
            _when(r["ts_event"]),
            ",".join(r["tickers"]),
            r["title"],
            _pct(r["fwd_ret_1"]),
            _pct(r["fwd_ret_20"]),
        )
    console.print(t)


@app.command()
def decisions(
    symbol: Annotated[str | None, typer.Argument(help="a symbol, e.g. NVDA (all symbols if omitted)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream new decisions as they are published")] = False,
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
    date: Annotated[str | None, typer.Option("--date", help="the last verdict of that trade date (YYYY-MM-DD)")] = None,
) -> None:
    """The latest verdict per symbol from the decisions KV bucket (--date: of one day); --follow streams new ones."""
    s = _settings(config, prefix=prefix, nats_url=nats or None)
    if date is not None:
        _check_trade_date(symbol, date)
    _run(_decisions(s, symbol, follow, date))


def _check_trade_date(symbol: str | None, date: str) -> None:
    try:
        ok = datetime.strptime(date, "%Y-%m-%d").date().isoformat() == date
    except ValueError:
        ok = False
    if not ok or not symbol:
        typer.echo(
            f"--date {date!r}: give a symbol and an ISO trade date, e.g. decisions NVDA --date 2026-05-11", err=True
        )
        raise typer.Exit(2)


def _decision_row(t: Table, env: DecisionEnvelope) -> None:
    y = env.synthesis
    color = {"BUY": "green", "SELL": "red"}.get(y.verdict, "yellow")
    when = datetime.fromtimestamp(env.ts_event / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
    t.add_row(
        env.target.ticker,
        when,
        f"[{color}]{y.verdict}[/]",
        f"{y.confidence:.2f}",
        f"{y.ensemble_score:+.2f}",
        y.reasoning,
    )


def _decision_table() -> Table:
    t = Table(title="Decisions")
    for c in ("ticker", "as of (UTC)", "verdict", "confidence", "ensemble", "reasoning"):
        t.add_column(c)
    return t


async def _keys(kv: Any) -> list[str]:
    from nats.js.errors import NoKeysError

    try:
        return list(await kv.keys())
    except NoKeysError:
        return []


async def _decisions(s: Settings, symbol: str | None, follow: bool, date: str | None = None) -> None:
    from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError

    async with nats_session(s.nats_url, s.data_path, name="tapeline-decisions") as (nc, _):
        try:
            kv = await nc.jetstream().key_value(decisions_bucket(s.prefix))
        except BucketNotFoundError:
            raise CommandFailed(
                f"no decisions on this server yet (prefix {s.prefix!r}): run `tapeline demo` or `tapeline up` first"
            ) from None
        try:  # "<ticker>" keys hold the latest verdict, "<ticker>.<date>" the last of a day
            keys = [encode_token(symbol)] if symbol else sorted(k for k in await kv.keys() if "." not in k)
        except NoKeysError:
            keys = []
        if symbol and date:
            keys = [f"{encode_token(symbol)}.{date}"]
        t = _decision_table()
        for key in keys:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                known = ", ".join(decode_token(k) for k in sorted(await _keys(kv)) if "." not in k) or "none"
                when = f" on {date}" if date else ""
                raise CommandFailed(f"no decision for {symbol!r}{when} (symbols with decisions: {known})") from None
            for ev in decode(entry.value or b"").events:
                if isinstance(ev, DecisionEnvelope):
                    _decision_row(t, ev)
        console.print(t)
        if not follow:
            return
        subject = f"{s.prefix}.decision.{encode_token(symbol) if symbol else '*'}"
        console.print(f"following {subject} (Ctrl-C to stop)")
        sub = await nc.subscribe(subject)
        try:
            async for msg in sub.messages:
                for ev in decode(msg.data).events:
                    if isinstance(ev, DecisionEnvelope):
                        row = _decision_table()
                        _decision_row(row, ev)
                        console.print(row)
        except asyncio.CancelledError:
            pass


@app.command()
def halt(
    operator: Annotated[str, typer.Option("--operator", help="who halts (default: $USER)")] = "",
    note: Annotated[str, typer.Option("--note", help="why")] = "",
    scope: Annotated[str, typer.Option("--scope", help="all, account:<a>, symbol:<s> or venue:<v>")] = "all",
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
) -> None:
    """Stop new orders now (a hard breaker) and cancel working ones; `tapeline resume` ends it."""
    from tapeline import control

    s = _settings(config, prefix=prefix, nats_url=nats or None)
    _run(control.halt(s, operator or os.environ.get("USER", "operator"), note, scope))


@app.command()
def resume(
    operator: Annotated[str, typer.Option("--operator", help="who resumes (recorded in the event)")],
    note: Annotated[str, typer.Option("--note", help="why it is safe to trade again")],
    breaker: Annotated[str, typer.Option("--breaker", help="only this breaker, e.g. halt")] = "",
    scope: Annotated[str, typer.Option("--scope", help="only this scope, e.g. account:paper")] = "",
    include_soft: Annotated[bool, typer.Option("--all", help="soft breakers too")] = False,
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
) -> None:
    """Resume tripped hard breakers (halt, consecutive losses); exit 1 if none matched."""
    from tapeline import control

    if not operator.strip() or not note.strip():
        typer.echo("resume: --operator and --note must not be empty; say who resumes and why", err=True)
        raise typer.Exit(2)
    s = _settings(config, prefix=prefix, nats_url=nats or None)
    if not _run(control.resume(s, operator, note, breaker, scope, include_soft)):
        raise typer.Exit(1)


@app.command()
def web(
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
    host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port (0: any free port)")] = 8765,
) -> None:
    """The live dashboard: decisions, prices, portfolio, risk, ops, news, chat (control: TAPELINE_OPERATOR_TOKEN)."""
    from tapeline.web.app import serve

    s = _settings(config, prefix=prefix, nats_url=nats or None)
    try:
        _run(serve(s, host, port, console))
    except OSError as e:
        typer.echo(f"web: cannot listen on {host}:{port} ({e.strerror or e}): pass --port N (0: any free)", err=True)
        raise typer.Exit(2) from None


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help='e.g. "latest decision for NVDA", "why did we sell ORCL"')],
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
) -> None:
    """Ask the system (Gemini or OpenAI with tools when GEMINI_API_KEY or OPENAI_API_KEY is set, else offline
    intents); recorded as an event."""
    from tapeline.ask import ask_command

    s = _settings(config, prefix=prefix, nats_url=nats or None)
    answer = _run(ask_command(s, question))
    console.print(escape(answer.answer), soft_wrap=True)
    if answer.error:
        raise typer.Exit(1)


@app.command()
def rebalance(
    now: Annotated[bool, typer.Option("--now", help="compute a plan now from the read models")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run/--execute", help="--execute publishes the plan and intents")
    ] = True,
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
) -> None:
    """The latest [rebalance] plan, or --now a new one (printed; --execute also sends its intents)."""
    from tapeline.rebalance_cli import rebalance as run_rebalance

    if not dry_run and not now:
        typer.echo("--execute sends a new plan: add --now (without it the latest stored plan is shown)", err=True)
        raise typer.Exit(2)
    s = _settings(config, prefix=prefix, nats_url=nats or None)
    try:
        _run(run_rebalance(s, now=now, execute=now and not dry_run))
    except QueryError as e:
        typer.echo(f"{e}".splitlines()[0] + ": run `tapeline demo` or `tapeline up` first", err=True)
        raise typer.Exit(1) from None


@app.command()
def backtest(
    name: Annotated[
        str, typer.Option(help="isolated namespace <prefix>-backtest-<name>, DuckDB file <name>.duckdb")
    ] = "run1",
    png: Annotated[Path, typer.Option(help="chart of equity vs buy and hold, and drawdown")] = Path("backtest.png"),
    threshold: Annotated[float | None, typer.Option(help="decision threshold on the ensemble score")] = None,
    momentum_window: Annotated[int | None, typer.Option(help="bars in the momentum window")] = None,
    publish: Annotated[bool, typer.Option(help="publish every event under the isolated namespace")] = True,
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
) -> None:
    """Replay the [feeds.files] files through decisions, risk and a paper broker; report vs buy and hold."""
    from tapeline.adapters.files import FileImportError
    from tapeline.backtest import run_backtest

    s = _settings(config, feed="files", prefix=prefix, nats_url=nats or None)
    alt = s.components()
    if threshold is not None:
        alt["decision"] = msgspec.structs.replace(alt["decision"], threshold=threshold)
    if momentum_window is not None:
        alt["momentum"] = msgspec.structs.replace(alt["momentum"], window=momentum_window)
    try:
        _run(run_backtest(s, alt, name, png, publish))
    except (FileImportError, ValueError) as e:
        typer.echo(str(e).splitlines()[0], err=True)
        raise typer.Exit(2) from None


# ----------------------------------------------------------------------------- operations (tapeline/ops.py)

app.command("backup")(ops.backup_cmd)
app.command("restore")(ops.restore_cmd)
app.command("provision")(ops.provision_cmd)
app.command("auth-config")(ops.auth_config_cmd)


@schemas_app.command("export")
def schemas_export(directory: Annotated[Path, typer.Argument(help="output directory")]) -> None:
    """Write one JSON Schema per event type."""
    try:
        paths = export_json_schemas(directory)
    except OSError as e:
        typer.echo(f"cannot write schemas to {directory}: {e.strerror or e}; choose a writable directory", err=True)
        raise typer.Exit(2) from None
    for path in paths:
        console.print(str(path))


@eval_app.command("sentiment")
def eval_sentiment(
    file: Annotated[
        Path | None, typer.Argument(help="SemEval-2017 Task 5 JSON: score it with the offline model")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="compare by: variant (the A/B prompts)")] = None,
    gold: Annotated[Path | None, typer.Option(help="SemEval-2017 Task 5 JSON: adds the cosine metric")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="offline ONNX head for FILE (default: shipped)")] = None,
    config: ConfigOpt = Path("tapeline.toml"),
) -> None:
    """FILE: the offline model's SemEval cosine, MAE, sign agreement. Without FILE: compare the sentiment
    variants over the recorded LLM calls and scores (no provider call)."""
    from tapeline.sentiment_report import sentiment_by_variant

    if file is not None:
        evaluate_offline(file, model, console, extra=by or gold)
        return
    if by not in (None, "variant"):
        typer.echo(f"--by {by!r}: only 'variant' is supported", err=True)
        raise typer.Exit(2)
    sentiment_by_variant(_settings(config).duckdb_path, gold, console)


def main() -> None:
    app()
