"""Peer comparison: our consumer runtime against FastStream and plain nats-py, one server, one stream.

One embedded nats-server (file store), one stream of ``--n`` simulated ticks (msgspec JSON, one per
message), each consumer on its own durable with the same config (explicit acks, as our stateless
handlers use). Two workloads:

* consume-decode-ack: decode each message into an event, ack it.
* consume-decode-publish-ack: also publish one output event per input to JetStream and wait for
  its ack before acking the input (what every handler does).

Ours runs as the product runs it (``bus.runtime.ConsumerRuntime``; ``bus.components.ComponentRunner``
with a one-line echo ``Handler``, deterministic ids and all). FastStream runs in its own venv
(``.venv-peers``, created on first use from benchmarks/peers/requirements.txt; never a dependency
of ours) as a subprocess, in each of its NATS consumption modes (benchmarks/peers/faststream_side.py);
the ratio is against its fastest. Plain nats-py ``pull_subscribe().fetch()`` + decode + ack is the
third reference. Each round runs every side once, in turn; the table shows every round and the range.

Run: .venv/bin/python benchmarks/bench_peers.py [--n 50000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapeline.adapters.runner import publish_events
from tapeline.adapters.sim import SimFeed
from tapeline.bus.components import ComponentRunner
from tapeline.bus.connection import NatsSettings, close_connection, connect
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.publisher import Publisher
from tapeline.bus.reader import Received
from tapeline.bus.runtime import ConsumerRuntime, ConsumerSpec, Failure
from tapeline.bus.server import EmbeddedNats
from tapeline.bus.topology import durable_config, provision
from tapeline.schemas.codec import decode
from tapeline.schemas.components import Consumes, Handler, draft
from tapeline.schemas.events import Alert, AnyEvent, Event, Tick
from tapeline.schemas.subjects import MD, OPS

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "peer"
STREAM = MD.stream(PREFIX)
SUBJECT = f"{PREFIX}.md.tick.>"
VENV = ROOT / ".venv-peers"
REQUIREMENTS = Path(__file__).resolve().parent / "peers" / "requirements.txt"
FS_SIDE = Path(__file__).resolve().parent / "peers" / "faststream_side.py"
FS_CONFIGS = ("batch", "pull", "workers")


def peers_python() -> Path:
    """The peers' venv interpreter; (re)creates the venv when missing or its requirements changed."""
    py = VENV / "bin" / "python"
    stamp = VENV / "requirements.txt"
    if not py.exists():
        print(f"creating {VENV} (FastStream, for this benchmark only)", flush=True)
        subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(VENV)], check=True)
    wanted = REQUIREMENTS.read_text()
    if not stamp.exists() or stamp.read_text() != wanted:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
        stamp.write_text(wanted)
    return py


class Echo(Handler):
    """consume-decode-publish-ack: one info alert per tick (outputs get deterministic ids)."""

    name: ClassVar[str] = "peer_echo"
    role: ClassVar[str] = "peers"
    emits: ClassVar[tuple[type[Event], ...]] = (Alert,)
    consumes = (Consumes(Tick),)

    def handle(self, event: AnyEvent) -> list[Event]:
        assert isinstance(event, Tick)
        msg = f"{event.symbol} {event.last}"
        return [draft(Alert, ts_event=event.ts_event, severity="info", kind="echo", key=event.symbol, message=msg)]


class CountSink:
    """consume-decode-ack: the runtime decodes and acks; this only counts."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self.done = asyncio.Event()

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        self.seen += sum(len(r.events) for r in batch)
        if self.seen >= self.n:
            self.done.set()
        return {}


async def settled(api: JetStreamApi, durable: str) -> None:
    """Until the consumer has nothing left to deliver or to have acknowledged (the last acks count)."""
    while True:
        info = await api.consumer_info(STREAM, durable)
        if info and info["num_pending"] == 0 and info["num_ack_pending"] == 0:
            return
        await asyncio.sleep(0.005)


OUR_CPU: dict[str, list[float]] = {}  # workload -> CPU µs per message of this process (ours), per round
SERVER_CPU: dict[str, list[float]] = {}  # workload -> nats-server's CPU µs per message during ours, per round
SERVER_PID = 0


def server_cpu() -> float:
    """nats-server's user + system CPU seconds so far (Linux /proc; 0 if unknown)."""
    if not SERVER_PID:
        return 0.0
    fields = Path(f"/proc/{SERVER_PID}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def ours_ack(nc: Any, publisher: Publisher, n: int, durable: str) -> float:
    sink = CountSink(n)
    rt = ConsumerRuntime(nc, publisher, ConsumerSpec(stream=STREAM, durable=durable, filter_subjects=(SUBJECT,)), sink)
    t0, cpu0, srv0 = time.perf_counter(), time.process_time(), server_cpu()
    task = asyncio.create_task(rt.run())
    await sink.done.wait()
    await settled(JetStreamApi(nc), durable)
    elapsed, cpu, srv = time.perf_counter() - t0, time.process_time() - cpu0, server_cpu() - srv0
    rt.stop()
    await task
    OUR_CPU.setdefault("ack", []).append(cpu / n * 1e6)
    SERVER_CPU.setdefault("ack", []).append(srv / n * 1e6)
    return n / elapsed


async def ours_publish(nc: Any, publisher: Publisher, n: int, round_: int) -> float:
    # A new component name per round: new output ids, so no round's outputs are deduplicated away.
    cls = type(f"Echo{round_}", (Echo,), {"name": f"peer_echo{round_}"})
    runner = ComponentRunner(nc, publisher, cls(), PREFIX, standby=False)
    task = asyncio.create_task(runner.run())
    # Timed from when its consumer runs: at start a runner first reads which outputs are already
    # stored (here every earlier round's and FastStream's alerts), a one-off that is not throughput.
    await runner.settled.wait()
    t0, cpu0, srv0 = time.perf_counter(), time.process_time(), server_cpu()
    rt = runner.runtimes[0]
    before = rt.processed
    while rt.processed < n:  # noqa: ASYNC110 - the runner has no event for "n handled"
        await asyncio.sleep(0.005)
    await settled(JetStreamApi(nc), rt.durable)
    elapsed, cpu, srv = time.perf_counter() - t0, time.process_time() - cpu0, server_cpu() - srv0
    runner.stop()
    await task
    OUR_CPU.setdefault("pub", []).append(cpu / (n - before) * 1e6)
    SERVER_CPU.setdefault("pub", []).append(srv / (n - before) * 1e6)
    return (n - before) / elapsed


async def nats_py_fetch(nc: Any, n: int, durable: str, batch: int = 500) -> float:
    """The plain client: ``pull_subscribe().fetch(batch)``, decode, ``msg.ack()``."""
    t0 = time.perf_counter()
    psub = await nc.jetstream().pull_subscribe(SUBJECT, durable=durable, stream=STREAM)
    seen = 0
    while seen < n:
        for m in await psub.fetch(batch, timeout=5):
            decode(m.data)
            await m.ack()
            seen += 1
    await settled(JetStreamApi(nc), durable)
    elapsed = time.perf_counter() - t0
    await psub.unsubscribe()
    return n / elapsed


async def faststream(py: Path, url: str, n: int, durable: str, config: str, publish: bool) -> float:
    args = [str(FS_SIDE), "--url", url, "--stream", STREAM, "--subject", SUBJECT, "--durable", durable]
    args += ["--n", str(n), "--config", config]
    if publish:
        args += ["--publish", "--out-stream", OPS.stream(PREFIX), "--out-subject", f"{PREFIX}.ops.alert.info"]
    proc = await asyncio.create_subprocess_exec(str(py), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"FastStream side failed ({config}): {err.decode()[-2000:]}")
    return float(json.loads(out.decode().strip().splitlines()[-1])["eps"])


async def bench(
    url: str, py: Path | None, n: int, rounds: int, configs: Sequence[str], works: Sequence[str] = ("ack", "pub")
) -> dict[str, list[float]]:
    nc = await connect(NatsSettings(url=url, name="bench-peers"))
    await provision(nc, PREFIX)
    api = JetStreamApi(nc)
    publisher = await Publisher(nc, PREFIX, role="bench-peers", window=8192).start()
    ticks = list(SimFeed(["NVDA", "ORCL", "AAPL", "MSFT", "BRK.B"], ticks=n, seed=5).generate())
    for i in range(0, n, 2000):
        await publish_events(publisher, ticks[i : i + 2000], batch_ticks=False)
    results: dict[str, list[float]] = {}

    def add(key: str, eps: float) -> None:
        results.setdefault(key, []).append(eps)
        print(f"  {key:<44} {eps:>10,.0f} msg/s", flush=True)

    for r in range(rounds):
        print(f"round {r + 1} of {rounds}", flush=True)
        for cfg in configs:  # every durable gets the same config as ours (explicit acks, max_ack_pending)
            for work in ("ack", "pub"):
                await api.ensure_consumer(STREAM, durable_config(f"fs_{cfg}_{work}_{r}", [SUBJECT]))
        await api.ensure_consumer(STREAM, durable_config(f"fetch_{r}", [SUBJECT]))
        if py is not None:
            add("ack|plain nats-py fetch(500)", await nats_py_fetch(nc, n, f"fetch_{r}"))
        if "ack" in works:
            add("ack|ours: ConsumerRuntime", await ours_ack(nc, publisher, n, f"ours_ack_{r}"))
        for cfg in configs if py is not None else ():
            add(f"ack|FastStream {cfg}", await faststream(py, url, n, f"fs_{cfg}_ack_{r}", cfg, publish=False))
        if "pub" in works:
            add("pub|ours: ComponentRunner(Handler)", await ours_publish(nc, publisher, n, r))
        for cfg in configs if py is not None else ():
            add(f"pub|FastStream {cfg}", await faststream(py, url, n, f"fs_{cfg}_pub_{r}", cfg, publish=True))
    await publisher.close()
    await close_connection(nc)
    return results


def spread(xs: Sequence[float]) -> str:
    return f"{min(xs):,.0f}–{max(xs):,.0f}" if len(xs) > 1 else f"{xs[0]:,.0f}"


def report(results: dict[str, list[float]], n: int, rounds: int, load: str) -> None:
    table = Table(title=f"peer comparison: {n:,} ticks, {rounds} rounds, same nats-server and stream ({load})")
    table.add_column("workload")
    table.add_column("consumer")
    for r in range(rounds):
        table.add_column(f"round {r + 1} msg/s", justify="right")
    table.add_column("range", justify="right")
    for key, xs in results.items():
        work, who = key.split("|")
        table.add_row(work, who, *(f"{x:,.0f}" for x in xs), spread(xs))
    ratios = Table(title="ratios per round (ours / peer); FastStream: its fastest mode in that round")
    ratios.add_column("ratio")
    ratios.add_column("per round", justify="right")
    ratios.add_column("goal", justify="right")

    def best(prefix: str, r: int) -> float:
        return max(xs[r] for k, xs in results.items() if k.startswith(prefix))

    ack = results["ack|ours: ConsumerRuntime"]
    pub = results["pub|ours: ComponentRunner(Handler)"]
    fetch = results["ack|plain nats-py fetch(500)"]
    ratios.add_row(
        "consume-decode-ack vs FastStream",
        ", ".join(f"{ack[r] / best('ack|FastStream', r):.1f}x" for r in range(rounds)),
        ">= 4x",
    )
    ratios.add_row(
        "consume-decode-publish-ack vs FastStream",
        ", ".join(f"{pub[r] / best('pub|FastStream', r):.1f}x" for r in range(rounds)),
        ">= 6x",
    )
    vs_fetch = ", ".join(f"{a / f:.1f}x" for a, f in zip(ack, fetch, strict=True))
    ratios.add_row("consume-decode-ack vs plain nats-py fetch", vs_fetch, "")
    for work, label in (("ack", "ours consume-decode-ack"), ("pub", "ours consume-decode-publish-ack")):
        per = ", ".join(f"{x:.1f}" for x in OUR_CPU.get(work, []))
        ratios.add_row(f"{label}: CPU µs per message (this process)", per, "")
        per = ", ".join(f"{x:.1f}" for x in SERVER_CPU.get(work, []))
        ratios.add_row(f"{label}: nats-server CPU µs per message", per, "")
    console = Console(width=120)
    console.print(table)
    console.print(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=50_000, help="messages in the stream (one tick each)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fs-configs", default=",".join(FS_CONFIGS), help=f"FastStream modes, of {FS_CONFIGS}")
    ap.add_argument(
        "--ours-only", action="store_true", help="only our side, with its CPU per message (A/B runs, profiling)"
    )
    ap.add_argument("--work", choices=("ack", "pub"), help="with --ours-only: only this workload (profiling)")
    args = ap.parse_args()
    works = (args.work,) if args.work and args.ours_only else ("ack", "pub")
    configs = [c for c in args.fs_configs.split(",") if c]
    py = None if args.ours_only else peers_python()
    with tempfile.TemporaryDirectory() as d:
        server = EmbeddedNats(Path(d) / "nats")
        url = server.start()
        global SERVER_PID
        SERVER_PID = server.pid
        try:
            results = asyncio.run(bench(url, py, args.n, args.rounds, configs, works))
        finally:
            server.stop()
    load = "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    if py is None:
        for work, key in (("ack", "ack|ours: ConsumerRuntime"), ("pub", "pub|ours: ComponentRunner(Handler)")):
            if work not in works:
                continue
            cpu = ", ".join(f"{x:.1f}" for x in OUR_CPU.get(work, []))
            srv = ", ".join(f"{x:.1f}" for x in SERVER_CPU.get(work, []))
            rates = ", ".join(f"{x:,.0f}" for x in results[key])
            print(f"ours {work}: msg/s {rates}; CPU µs/msg {cpu}, nats-server {srv} ({load})")
        return
    report(results, args.n, args.rounds, load)


if __name__ == "__main__":
    main()
