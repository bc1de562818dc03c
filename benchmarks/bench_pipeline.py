"""End-to-end throughput and tick->decision latency on the simulator.

Processes, as deployed: nats-server (file store), `tapeline up --only projector`,
`tapeline up --only handlers`, and this script publishing ticks and timing.

* throughput: N ticks published as fast as the publisher goes; events/s = N / (time until the
  projector's MD checkpoint reaches the last tick). One event per message, then batched.
* latency: ticks paced at a fixed rate; for each decision, (time it arrives on the decision
  subject) - (ts_init of the tick that closed its bar). Reported as p50/p99. Ticks go one per message
  (a live venue's feed); ``--batched-feed`` sends them as a batching feed does (the simulator's default).

Run: .venv/bin/python benchmarks/bench_pipeline.py [--ticks 200000] [--rate 2000] [--budget] [--batched-feed]
(``--budget`` adds both pipeline modes with daily bars: ticks alone, so the rest is the derived events.
``--mode b2`` runs one throughput mode alone on a fresh server: for A/B runs, alternate the two trees'
``--mode`` runs rather than comparing whole runs, whose modes share one server and its history.)
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapeline.adapters.runner import publish_events
from tapeline.adapters.sim import SimFeed
from tapeline.bus.connection import NatsSettings, TapelineClient, connect
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.publisher import Publisher
from tapeline.bus.server import EmbeddedNats
from tapeline.bus.topology import provision
from tapeline.projections.query import query_remote
from tapeline.schemas.codec import decode
from tapeline.schemas.events import Tick

SYMBOLS = ["NVDA", "ORCL", "AAPL", "MSFT", "BRK.B", "AMD", "INTC", "IBM"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(role: str, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "tapeline", "up", "-c", str(cfg), "--only", role], stdout=f, stderr=subprocess.STDOUT
        )


async def wait_consumed(api: JetStreamApi, stream: str, durable: str, limit_s: float = 600) -> float:
    """When the consumer has nothing left to deliver or to have acknowledged."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        info = await api.consumer_info(stream, durable)
        if info and info["num_pending"] == 0 and info["num_ack_pending"] == 0 and info["delivered"]["stream_seq"]:
            return time.perf_counter()
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{durable} did not finish")


async def wait_committed(nc: TapelineClient, prefix: str, stream: str, last: int, consumed: float) -> float:
    """When the projector has committed every tick up to ``last``. Its consumer has ack policy none, so
    ``wait_consumed`` sees deliveries, not commits (with ``all`` an ack followed the commit): ask the
    projector's query service for its checkpoint. Returns ``consumed`` if it was committed by then."""
    sql = f"SELECT last_seq FROM _checkpoints WHERE read_model = 'ticks' AND stream = '{stream}'"
    first = True
    while True:
        res = await query_remote(nc, prefix, sql, timeout=10.0)
        if res.rows and int(res.rows[0][0]) >= last:
            return consumed if first else time.perf_counter()
        first = False
        await asyncio.sleep(0.01)


async def wait_ready(url: str, prefix: str, durables: tuple[str, ...], limit_s: float = 120) -> None:
    """Until the processes have created their consumers: start-up (imports) is not part of a measurement."""
    nc = await connect(NatsSettings(url=url))
    api = JetStreamApi(nc)
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            infos = [await api.consumer_info(f"{prefix.upper()}_MD", d) for d in durables]
            if all(infos):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"consumers {durables} not created within {limit_s} s")
    finally:
        await nc.drain()


async def throughput(url: str, prefix: str, ticks: list[Tick], batch_ticks: bool, handlers: bool) -> dict[str, float]:
    n = len(ticks)
    nc = await connect(NatsSettings(url=url))
    await provision(nc, prefix)
    api = JetStreamApi(nc)
    pub = await Publisher(nc, prefix, role="bench", window=8192).start()
    t0 = time.perf_counter()
    for i in range(0, n, 2000):
        await publish_events(pub, ticks[i : i + 2000], batch_ticks=batch_ticks)
    t_pub = time.perf_counter()
    stream = f"{prefix.upper()}_MD"
    info = await api.stream_info(stream)
    last = int(info["state"]["last_seq"]) if info else 0
    t_proj = await wait_consumed(api, stream, "projector_md")
    t_proj = await wait_committed(nc, prefix, stream, last, t_proj)
    t_bars = await wait_consumed(api, stream, "bars_md") if handlers else float("nan")
    await pub.close()
    await nc.drain()
    return {
        "publish_eps": n / (t_pub - t0),
        "e2e_eps": n / (t_proj - t0),
        "handler_eps": n / (t_bars - t0),
        "messages": float(last),
    }


class Hops(msgspec.Struct):
    """Tick->decision latencies: end to end, per hop, and the publish-ack round trip of the same run (ms);
    ``cpu_wait``: per decision, how long the handlers' event loop waited for a CPU (runnable, not running)
    between its tick and its arrival here."""

    total: list[float]
    hops: dict[str, list[float]]
    ack_rtt: list[float]
    cpu_wait: list[float] = []


def run_queue_ns(pid: int, thread: bool = False) -> tuple[int, int]:
    """(ns run on a CPU, ns waited runnable on a run queue) so far: of the main thread, or summed over all threads."""
    tasks = [] if thread else list(Path(f"/proc/{pid}/task").iterdir())
    paths = [f"/proc/{pid}/schedstat"] if thread else [str(t / "schedstat") for t in tasks]
    run = wait = 0
    for path in paths:
        try:
            fields = Path(path).read_text().split()
        except OSError:  # a thread that ended meanwhile
            continue
        run += int(fields[0])
        wait += int(fields[1])
    return run, wait


class WaitSampler(threading.Thread):
    """Samples a process's main thread (its event loop) every 2 ms: was a slow chain waiting for a CPU?"""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[int, int]] = []  # (wall ns, cumulative ns waited runnable)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.002):
            self.samples.append((time.time_ns(), run_queue_ns(self.pid, thread=True)[1]))

    def waited_ms(self, start_ns: int, end_ns: int) -> float:
        times = [t for t, _ in self.samples]
        a = self.samples[min(bisect.bisect_left(times, start_ns), len(times) - 1)][1]
        b = self.samples[min(bisect.bisect_left(times, end_ns), len(times) - 1)][1]
        return (b - a) / 1e6


async def latency(url: str, prefix: str, rate: int, seconds: float, handlers_pid: int, batch_ticks: bool) -> Hops:
    """Ticks paced at ``rate``; every bar, signal and decision is also seen here on a core subscription.

    Per hop: ``ts_init`` is stamped when a handler returns its outputs (before they are published), and
    this process notes when each output reaches it from the server, so a hop splits into *out* (stamped ->
    through the server) and *in* (through the server -> the next handler's output stamped: stored, pulled,
    decoded, handled). The publish-ack round trip is timed on one tick message of every chunk.
    ``batch_ticks``: the rest of a chunk goes as a feed that batches sends it (a batch message per symbol).
    """
    nc = await connect(NatsSettings(url=url))
    assert isinstance(nc, TapelineClient)
    await provision(nc, prefix)
    pub = await Publisher(nc, prefix, role="bench").start()
    tick_init: dict[str, int] = {}
    seen: dict[str, tuple[str, str, int, int]] = {}  # event id -> (tag, cause id, ts_init, received ns)
    decisions: list[str] = []
    rtt: list[float] = []

    raw: list[tuple[int, bytes]] = []

    def on_msg(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        raw.append((time.time_ns(), data))  # straight from the parser; decoded after the run

    for subject in ("md.bar.>", "intel.>", "decision.>"):
        await nc.subscribe_raw(f"{prefix}.{subject}", on_msg)
    # Event time runs 200x faster than wall time so 1-minute bars close every 0.3 s.
    feed = SimFeed(SYMBOLS, ticks=int(rate * seconds), seed=2, mean_gap_ms=200_000 / rate / 1)
    step = max(1, rate // 100)
    ticks = list(feed.generate())
    sampler = WaitSampler(handlers_pid)
    sampler.start()
    start_t = time.perf_counter()
    for i in range(0, len(ticks), step):
        # Each tick is stamped just before it is sent, as a feed does: the rest of the chunk only after
        # the first one's round trip has been timed (stamped before it, they counted that wait as latency).
        probe = [msgspec.structs.replace(ticks[i], ts_init=time.time_ns())]
        t0 = time.perf_counter()
        await pub.publish(probe)
        rtt.append((time.perf_counter() - t0) * 1e3)
        chunk = probe + [msgspec.structs.replace(t, ts_init=time.time_ns()) for t in ticks[i + 1 : i + step]]
        for t in chunk:
            tick_init[t.event_id] = t.ts_init
        await publish_events(pub, chunk[1:], batch_ticks=batch_ticks)
        target = start_t + (i + step) / rate
        await asyncio.sleep(max(0.0, target - time.perf_counter()))
    await asyncio.sleep(2)
    sampler.done.set()
    sampler.join()
    await pub.close()
    await nc.drain()
    for now, data in raw:
        for ev in decode(data).events:
            seen[ev.event_id] = (ev.tag, ev.causation_id, ev.ts_init, now)
            if ev.tag == "decision":
                decisions.append(ev.event_id)
    out = Hops([], {}, rtt)
    for dec in decisions:
        chain = [dec]  # decision, signal, ..., bar, back to the tick
        while chain[-1] in seen and len(chain) < 8:
            chain.append(seen[chain[-1]][1])
        tick = chain[-1]
        if tick not in tick_init:
            continue
        out.total.append((seen[dec][3] - tick_init[tick]) / 1e6)
        out.cpu_wait.append(sampler.waited_ms(tick_init[tick], seen[dec][3]))
        stamped_prev, name_prev = tick_init[tick], "tick"
        for eid in reversed(chain[:-1]):
            tag, _, ts_init, rx = seen[eid]
            out.hops.setdefault(f"{name_prev} → {tag} stamped", []).append((ts_init - stamped_prev) / 1e6)
            out.hops.setdefault(f"  {tag} stamped → through server", []).append((rx - ts_init) / 1e6)
            stamped_prev, name_prev = ts_init, tag
    return out


def pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100)[q - 1] if len(xs) >= 2 else float("nan")


MODES = [  # (name, prefix, batched ticks, roles)
    # DESIGN §6's path: publish -> JetStream file store -> handler -> DuckDB (the projector).
    ("§6 path, 1 event/msg", "b0", False, ("projector",)),
    # The whole pipeline: the bars handler also reads every tick, then momentum, decisions.
    ("pipeline, 1 event/msg", "b1", False, ("projector", "handlers")),
    ("pipeline, batched", "b2", True, ("projector", "handlers")),
    # --budget: the same, but no 1-minute bar closes: ticks alone (bars handler included)
    ("ticks only, 1 event/msg", "b3", False, ("projector", "handlers")),
    ("ticks only, batched", "b4", True, ("projector", "handlers")),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=2000, help="ticks/s for the latency run")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--latency-only", action="store_true", help="skip the throughput runs")
    ap.add_argument(
        "--batched-feed",
        action="store_true",
        help="latency run: send each 10 ms chunk of ticks as a batching feed does (one message per symbol; the "
        "simulator's and the file feeds' default) instead of one tick per message (IBKR's)",
    )
    ap.add_argument(
        "--budget",
        action="store_true",
        help="also run both pipeline modes with daily bars (no bar closes in the run): what ticks alone cost, so the "
        "rest of the pipeline's CPU per tick is its derived events (bars, features, signals, decisions)",
    )
    ap.add_argument(
        "--mode",
        choices=[prefix for _, prefix, _, _ in MODES],
        help="run this throughput mode alone, on a fresh server, without the latency run: far steadier "
        "figures for A/B runs (b0 §6 path, b1 pipeline 1/msg, b2 pipeline batched, b3/b4 ticks only)",
    )
    args = ap.parse_args()
    modes = [m for m in MODES if m[1] == args.mode] if args.mode else MODES[: 5 if args.budget else 3]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server = EmbeddedNats(tmp / "nats")
        url = server.start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            results = {}
            cpu: dict[str, dict[str, float]] = {}
            for name, prefix, batch, roles in [] if args.latency_only else modes:
                cfg = tmp / f"{prefix}.toml"
                cfg.write_text(
                    f'prefix = "{prefix}"\nnats_url = "{url}"\ndata_dir = "{tmp / prefix}"\nmetrics_port = 0\n'
                    + (  # simulated ticks make 1-minute bars; daily ones close not once in a run
                        '[momentum]\ninterval = "1d"\n[bars]\nintervals = ["1d"]\n'
                        if prefix in ("b3", "b4")
                        else '[momentum]\ninterval = "1m"\n'
                    )
                )
                procs = [start(r, cfg, tmp / f"{prefix}-{r}.log") for r in roles]
                durables = tuple("projector_md" if r == "projector" else "bars_md" for r in roles)
                asyncio.run(wait_ready(url, prefix, durables))
                pids = {"nats-server": server.pid, **{r: p.pid for r, p in zip(roles, procs, strict=True)}}
                pids["publisher (this)"] = os.getpid()
                ticks = list(SimFeed(SYMBOLS, ticks=args.ticks, seed=1).generate())  # not part of the measurement
                before = {k: cpu_seconds(p) for k, p in pids.items()}
                results[name] = asyncio.run(throughput(url, prefix, ticks, batch, "handlers" in roles))
                cpu[name] = {k: (cpu_seconds(p) - before[k]) / args.ticks * 1e6 for k, p in pids.items()}
                for p in procs:
                    p.terminate()
                    p.wait()
            if not args.mode:  # the latency run
                cfg = tmp / "lat.toml"
                cfg.write_text(
                    f'prefix = "lat"\nnats_url = "{url}"\ndata_dir = "{tmp / "lat"}"\nmetrics_port = 0\n'
                    '[momentum]\ninterval = "1m"\n'
                )
                procs = [start(r, cfg, tmp / f"lat-{r}.log") for r in ("projector", "handlers")]
                asyncio.run(wait_ready(url, "lat", ("projector_md", "bars_md")))
                pids = {"nats-server": server.pid, "projector": procs[0].pid, "handlers": procs[1].pid}
                before = {k: cpu_seconds(p) for k, p in pids.items()}
                queued = {k: run_queue_ns(p) for k, p in pids.items()}
                lat = asyncio.run(latency(url, "lat", args.rate, args.seconds, procs[1].pid, args.batched_feed))
                n_lat = int(args.rate * args.seconds)
                cpu["steady, batched feed" if args.batched_feed else "steady, 1 event/msg"] = {
                    k: (cpu_seconds(p) - before[k]) / n_lat * 1e6 for k, p in pids.items()
                }
                waits = {k: (run_queue_ns(p)[1] - queued[k][1]) / n_lat / 1e3 for k, p in pids.items()}
        finally:
            for p in procs:
                p.terminate()
                p.wait()
            server.stop()
    print(f"end-to-end pipeline, {args.ticks:,} simulated ticks, {len(SYMBOLS)} symbols, 2-core machine")
    print(f"{'mode':<24}{'publish ev/s':>14}{'→ DuckDB ev/s':>15}{'→ bars ev/s':>13}{'messages':>10}")
    for name, r in results.items():
        print(
            f"{name:<24}{r['publish_eps']:>14,.0f}{r['e2e_eps']:>15,.0f}{r['handler_eps']:>13,.0f}{r['messages']:>10,.0f}"
        )
    steady = "" if args.mode else f" (steady: the latency run, {args.rate:,} ticks/s, incl. 2 s idle after)"
    print(f"CPU per event (µs), by process{steady}:")
    for name, per in cpu.items():
        print(f"  {name:<22}" + "  ".join(f"{k} {v:.1f}" for k, v in per.items()) + f"  total {sum(per.values()):.1f}")
    if args.mode:
        return
    for mode in ("1 event/msg", "batched") if args.budget else ():
        whole, ticks = sum(cpu[f"pipeline, {mode}"].values()), sum(cpu[f"ticks only, {mode}"].values())
        print(
            f"  budget, {mode}: ticks alone {ticks:.1f} µs per tick (§6 path and the bars handler's reading), "
            f"derived events {whole - ticks:.1f} ({whole:.1f} in all)"
        )
    print(
        f"tick→decision latency at {args.rate:,} ticks/s: n={len(lat.total)} "
        f"p50={pct(lat.total, 50):.1f} ms  p99={pct(lat.total, 99):.1f} ms  "
        f"max={max(lat.total, default=float('nan')):.1f} ms"
    )
    print(
        "  waiting for a CPU (runnable, all threads), µs per tick: "
        + "  ".join(f"{k} {v:.1f}" for k, v in waits.items())
    )
    slowest = sorted(zip(lat.total, lat.cpu_wait, strict=True))[-max(1, len(lat.total) // 100) :]
    print(
        f"  handlers event loop waiting for a CPU within a chain: p50={pct(lat.cpu_wait, 50):.1f} ms  "
        f"p99={pct(lat.cpu_wait, 99):.1f} ms; slowest 1% of chains: {statistics.mean(t for t, _ in slowest):.1f} ms, "
        f"of which waiting {statistics.mean(w for _, w in slowest):.1f} ms"
    )
    print(
        f"JetStream publish-ack round trip (one tick message, same run): n={len(lat.ack_rtt)} "
        f"p50={pct(lat.ack_rtt, 50):.2f} ms  p99={pct(lat.ack_rtt, 99):.2f} ms"
    )
    print(f"{'hop (decisions whose chain reaches a tick)':<46}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}")
    for hop, xs in lat.hops.items():
        print(f"{hop:<46}{len(xs):>6}{pct(xs, 50):>9.2f}{pct(xs, 99):>9.2f}")


if __name__ == "__main__":
    main()
