"""Soak: a steady tick rate for a long while; nothing lost, few redeliveries, lag recovers, memory flat.

Processes, as deployed: an embedded nats-server (file store), one ``tapeline up --only <role>`` per
role the demo runs (every role of tapeline/system.py) and a feed (this script in ``--feed`` mode)
publishing simulated ticks at a steady rate the way feeds do (``adapters.runner.publish_events``;
ticks that arrive together share a batch message unless ``--one-per-message``). By default ten
times the demo's rate (the simulator's ``[sim] mean_gap_ms``: one tick per 250 ms of market time,
4 ticks/s if played in real time, so 40 ticks/s) for ten minutes.

The RSS (``VmRSS`` from /proc) of every process is sampled every ``--sample`` seconds. Printed at
the end, per process: RSS after warm-up (``--warmup``), at the end, max, the slope (least squares
over the samples after warm-up, MiB/min), the growth it predicts over the measured window, a verdict
and a sparkline of the whole run; ``--plot FILE.png`` draws it too when matplotlib is installed.
Verdicts: ``flat`` (growth <= 2% of the RSS after warm-up, or 2 MiB); ``bounded`` (nats-server only:
growth within what its streams' current file-store blocks can hold, see :func:`block_bound_mib`);
``cached`` (projector only: its RSS less DuckDB's buffer pool is flat, and the pool stays under
``[projector] memory_limit_mb``, see :func:`duckdb_pool_kib`); ``levels off`` (grew in the first half
of the window, flat in the second); ``GROWS``.
Also: ticks published and projected, tick messages sent and stored, redeliveries (every consumer's
``num_redelivered`` over its deliveries) and lag (``num_pending`` + ``num_ack_pending``).
Pass: zero loss, redeliveries < 0.1%, lag back to 0 after the feed stops, no role process failed
(one that ends by itself with code 0, like ``news`` importing its files once, is left out), and
every process ``flat`` or ``bounded``. Exit 1 if any check fails. For ten measured minutes, give
``--minutes`` = 10 + the warm-up: ``--minutes 12 --warmup 120``.

Run (it loads the machine, so nice it):
    nice .venv/bin/python benchmarks/soak.py [--minutes 12 --warmup 120] [--rate 40] [--plot soak.png]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapeline.adapters.runner import publish_events
from tapeline.adapters.sim import SimFeed
from tapeline.bus.connection import NatsSettings, close_connection, connect
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.publisher import Publisher
from tapeline.bus.server import EmbeddedNats
from tapeline.bus.topology import provision
from tapeline.config import Settings, SimConfig
from tapeline.projections.query import query_remote
from tapeline.schemas.subjects import FAMILIES, MD
from tapeline.system import ROLES

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]  # the roles run from here: the default configuration's paths are relative to it
PREFIX = "soak"
DEMO_RATE = 1000 / SimConfig().mean_gap_ms  # ticks per second of market time in the demo's simulator
STATUS_S = 30.0  # progress line
DEFAULT_WARMUP_S = 60.0
WARMUP_S = DEFAULT_WARMUP_S  # --warmup sets it
FLAT = 0.02  # growth the slope predicts after warm-up, as a fraction of the RSS after warm-up ...
FLAT_MIB = 2.0  # ... or in MiB, whichever is larger (sampling noise of a small process)
GO_HEAP = 2.0  # nats-server's heap may reach twice its live data before Go collects (GOGC=100)
MIB = 1024 * 1024
LARGE_BLOCK, MEDIUM_BLOCK, MIN_BLOCK = 8 * MIB, 4 * MIB, 32_000  # nats-server filestore.go
MAX_REDELIVERED = 0.001
SPARK = " ▁▂▃▄▅▆▇█"
POOL_METRIC = "tapeline_projection_memory_bytes"


def rss_kib(pid: int) -> int:
    """Resident set size of a process (Linux /proc), in KiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def duckdb_pool_kib(metrics_port: int) -> int | None:
    """What the projector's DuckDB buffer pools hold, in KiB, from its own Prometheus endpoint
    (``tapeline_projection_memory_bytes``, which the projector samples itself every 10 s of commits);
    None if the endpoint does not answer.

    DuckDB keeps the table blocks it writes at each checkpoint cached until its pool reaches
    ``memory_limit``, so the projector's RSS rises with its files (~0.2 MiB/min at 40 ticks/s) by design,
    the way a database's cache does; the soak judges what is left when the pool is taken out. Read over
    HTTP, not through the query service: a query of the soak's own would run in the projector and add to it.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    held = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(POOL_METRIC + "{")]
    return int(sum(held) / 1024) if held else None


# ----------------------------------------------------------------------------- the feed process


async def feed(url: str, rate: float, seconds: float, batch_ticks: bool) -> None:
    """Publish ``rate`` ticks/s for ``seconds``, 10 steps a second, catching up if a step was late.

    Prints the number of ticks published as JSON at the end.
    """
    nc = await connect(NatsSettings(url=url, name="soak-feed"))
    await provision(nc, PREFIX)
    pub = await Publisher(nc, PREFIX, role="soak-feed").start()
    total = int(rate * seconds)
    ticks = SimFeed(ticks=total, seed=11, mean_gap_ms=SimConfig().mean_gap_ms).generate()
    sent = messages = 0
    start = time.monotonic()
    while sent < total:
        due = min(total, int(rate * (time.monotonic() - start)) + 1)
        batch = [next(ticks) for _ in range(due - sent)]
        if batch:
            messages += await publish_events(pub, batch, batch_ticks=batch_ticks)
            sent += len(batch)
        await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
    await pub.close()
    await close_connection(nc)
    print(json.dumps({"published": sent, "messages": messages}), flush=True)


# ----------------------------------------------------------------------------- the soak


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """This Python with ``args``; stderr (and stdout but for the feed, whose result is read) to ``log``.

    From the repository's root, wherever the soak was started: the default configuration's news files
    (``../shared/data``) are relative to it, and started elsewhere the news role found none and the soak
    ran without news, LLM calls and sentiment (session 9: projector ~215 MiB without them, ~470 with)."""
    with open(log, "ab") as f:
        out = subprocess.PIPE if "--feed" in args else f
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=f, cwd=ROOT)


@dataclass
class Rss:
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, KiB)

    def live(self, after_s: float = 0.0) -> list[tuple[float, int]]:
        return [(t, kib) for t, kib in self.samples if kib and t >= after_s]

    def base(self) -> int:
        """KiB at the first sample after warm-up."""
        later = self.live(WARMUP_S)
        return later[0][1] if later else 0

    def slope(self) -> float:
        """MiB per minute after warm-up (least squares); 0 with fewer than 3 samples."""
        pts = self.live(WARMUP_S)
        if len(pts) < 3:
            return 0.0
        n = len(pts)
        mt = sum(t for t, _ in pts) / n
        mk = sum(k for _, k in pts) / n
        var = sum((t - mt) ** 2 for t, _ in pts)
        return sum((t - mt) * (k - mk) for t, k in pts) / var * 60 / 1024 if var else 0.0

    def growth_mib(self) -> float:
        """What the slope predicts over the run after warm-up."""
        pts = self.live(WARMUP_S)
        return self.slope() * (pts[-1][0] - pts[0][0]) / 60 if pts else 0.0

    def tolerance_mib(self) -> float:
        return max(FLAT_MIB, FLAT * self.base() / 1024)

    def flat(self) -> bool:
        return bool(self.base()) and self.growth_mib() <= self.tolerance_mib()

    def levels_off(self) -> bool:
        """Growth in the first half of the measured window, none in the second (a step, then flat)."""
        pts = self.live(WARMUP_S)
        if len(pts) < 6:
            return False
        half = Rss(pts[len(pts) // 2 :])
        return half.slope() * (pts[-1][0] - pts[0][0]) / 60 <= self.tolerance_mib()

    def sparkline(self, width: int = 40) -> str:
        live = [kib for _, kib in self.live()]
        if not live:
            return ""
        step = max(1, len(live) // width)
        pts = [max(live[i : i + step]) for i in range(0, len(live), step)]
        lo, hi = min(pts), max(pts)
        return "".join(SPARK[int((p - lo) / (hi - lo) * (len(SPARK) - 1)) if hi > lo else 0] for p in pts)


def without_cache(rss: Rss, cache: Rss) -> Rss:
    """RSS less a cache sampled beside it (each RSS sample paired with the cache's latest sample before it)."""
    out, i, held = Rss(), 0, None
    for t, kib in rss.samples:
        while i < len(cache.samples) and cache.samples[i][0] <= t:
            held = cache.samples[i][1]
            i += 1
        if held is not None and kib:
            out.samples.append((t, kib - held))
    return out


def pool_max_mib(pool: Rss) -> float:
    return max((k for _, k in pool.samples), default=0) / 1024


def plot(rss: dict[str, Rss], path: Path) -> str:
    """A PNG of every process's RSS over time, when matplotlib is installed."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed: no plot (the sparklines above show the same)"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    for name, r in rss.items():
        pts = r.live()
        ax.plot([t / 60 for t, _ in pts], [k / 1024 for _, k in pts], label=name)
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS MiB")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return f"plot: {path}"


async def consumers(api: JetStreamApi) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for fam in FAMILIES:
        stream = fam.stream(PREFIX)
        for name in await api.consumer_names(stream):
            info = await api.consumer_info(stream, name)
            if info:
                out.append(info)
    return out


def lag(infos: list[dict[str, Any]]) -> tuple[int, int]:
    """(projector consumers' pending, handlers' and other read models' pending), ack-pending included."""
    proj = other = 0
    for i in infos:
        n = int(str(i["num_pending"])) + int(str(i["num_ack_pending"]))
        if str(i["name"]).startswith("projector_"):
            proj += n
        else:
            other += n
    return proj, other


def redeliveries(infos: list[dict[str, Any]]) -> tuple[int, int]:
    redelivered = sum(int(str(i["num_redelivered"])) for i in infos)
    delivered = sum(int(i["delivered"]["consumer_seq"]) for i in infos)
    return redelivered, delivered


def block_size(config: dict[str, Any]) -> int:
    """The file-store block size nats-server picks for a stream (``dynBlkSize`` and the stream's
    ``autoTuneFileStorageBlockSize`` in nats-server 2.15; only stream limits set it, no server option)."""
    max_bytes, max_msgs = int(config.get("max_bytes", -1)), int(config.get("max_msgs", -1))
    if max_bytes <= 0 and max_msgs > 0:
        max_bytes = max_msgs * max(int(config.get("max_msg_size", -1)), 1024 * 1024)  # server max payload
    if max_bytes <= 0:
        if int(config.get("max_msgs_per_subject", -1)) > 0:
            return MEDIUM_BLOCK  # key-value buckets
        return LARGE_BLOCK if config.get("retention", "limits") == "limits" else MEDIUM_BLOCK
    blk = max_bytes // 4 + 1
    blk += -blk % 100
    return MIN_BLOCK if blk <= MIN_BLOCK else LARGE_BLOCK if blk >= LARGE_BLOCK else MEDIUM_BLOCK


async def stream_writes(api: JetStreamApi) -> dict[str, tuple[int, int, int]]:
    """Per stream on the server: (last sequence, mean bytes per stored message, file-store block size)."""
    out = {}
    for name in await api.stream_names():
        info = await api.stream_info(name)
        if info:
            st = info["state"]
            mean = int(st.get("bytes", 0)) // max(1, int(st.get("messages", 0)))
            out[name] = (int(st.get("last_seq", 0)), mean, block_size(info["config"]))
    return out


def block_bound_mib(before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]) -> float:
    """How much nats-server's RSS may grow while its streams fill their current file-store blocks.

    nats-server keeps the block a stream is writing in memory until it is full (then the next one; a
    full block's cache expires): per stream at most ``min(block size, bytes appended)``, summed over
    the streams, times the Go heap's headroom. A bound by the number of streams, not by time.
    """
    total = 0
    for name, (seq, mean, blk) in after.items():
        appended = (seq - before.get(name, (0, 0, 0))[0]) * mean
        total += min(blk, appended)
    return GO_HEAP * total / MIB


async def stored_tick_messages(api: JetStreamApi) -> int:
    """Tick messages in the market-data stream (a batch message counts once)."""
    info = await api.call(f"STREAM.INFO.{MD.stream(PREFIX)}", {"subjects_filter": f"{PREFIX}.md.tick.>"})
    return sum(int(n) for n in (info["state"].get("subjects") or {}).values())


async def projected_ticks(nc: Client) -> int:
    res = await query_remote(nc, PREFIX, "SELECT count(*) FROM ticks", timeout=10)
    return int(res.rows[0][0]) if res.rows else -1


async def wait_started(procs: dict[str, subprocess.Popen[bytes]], logs: dict[str, Path], limit_s: float) -> None:
    """Until every role process has printed its start line (imports and consumers done)."""
    deadline = time.monotonic() + limit_s
    waiting = set(procs)
    while waiting:
        for role in list(waiting):
            if "tapeline up on" in logs[role].read_text(errors="replace"):
                waiting.discard(role)
            elif procs[role].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tapeline up --only {role} did not start; see {logs[role]}")
        await asyncio.sleep(0.5)


async def soak(args: argparse.Namespace) -> bool:
    rate, minutes, sample_s = float(args.rate), float(args.minutes), float(args.sample)
    seconds = minutes * 60
    tmp = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="tapeline-soak-"))
    server = EmbeddedNats(tmp / "nats")
    url = server.start()
    cfg = tmp / "tapeline.toml"
    cfg.write_text(f'prefix = "{PREFIX}"\nnats_url = "{url}"\ndata_dir = "{tmp / "data"}"\nmetrics_port = 0\n')
    roles = [r for r in ROLES if r in args.roles.split(",")] if args.roles else list(ROLES)
    batch = not args.one_per_message and Settings().batch_ticks
    print(
        f"soak: {rate:g} ticks/s ({rate / DEMO_RATE:g}x the demo's {DEMO_RATE:g}/s) for {minutes:g} min, "
        f"{'batched' if batch else 'one tick per message'}; roles {', '.join(roles)}; in {tmp}",
        flush=True,
    )
    logs = {role: tmp / f"up-{role}.log" for role in roles}
    pool_port = free_port()  # the projector's metrics: DuckDB's pool (see duckdb_pool_kib)
    procs = {
        role: spawn(
            ["-m", "tapeline", "up", "-c", str(cfg), "--only", role]
            + (["--metrics-port", str(pool_port)] if role == "projector" else []),
            logs[role],
        )
        for role in roles
    }
    pool = Rss()  # KiB DuckDB's buffer pools hold in the projector, sampled with its RSS
    pool_limit_mib = Settings().projector.memory_limit_mb
    nc = await connect(NatsSettings(url=url, name="soak-watch"))
    api = JetStreamApi(nc)
    ok = False
    try:
        await wait_started(procs, logs, limit_s=300)
        feed_args = [str(SCRIPT), "--feed", url, "--rate", str(rate), "--minutes", str(minutes)]
        feeder = spawn(feed_args + (["--one-per-message"] if not batch else []), tmp / "feed.log")
        pids = {"nats-server": server.pid, **{r: p.pid for r, p in procs.items()}, "feed": feeder.pid}
        rss = {name: Rss() for name in pids}
        lags: list[tuple[float, int, int]] = []
        writes_at_warmup: dict[str, tuple[int, int, int]] | None = None
        start = time.monotonic()
        next_sample = next_status = 0.0
        while feeder.poll() is None:
            now = time.monotonic() - start
            if writes_at_warmup is None and now >= WARMUP_S:
                writes_at_warmup = await stream_writes(api)
            if now >= next_sample:
                for name, pid in pids.items():
                    rss[name].samples.append((now, rss_kib(pid)))
                if "projector" in pids and (held := duckdb_pool_kib(pool_port)) is not None:
                    pool.samples.append((now, held))
                next_sample += sample_s
            if now >= next_status:
                infos = await consumers(api)
                proj, other = lag(infos)
                lags.append((now, proj, other))
                red, dlv = redeliveries(infos)
                total = sum(r.samples[-1][1] for r in rss.values()) / 1024
                print(
                    f"[{now:5.0f}s / {seconds:.0f}s] stored {await stored_tick_messages(api):,} tick messages, "
                    f"lag projector {proj:,} others {other:,}, redelivered {red}/{dlv:,}, "
                    f"RSS all processes {total:,.0f} MiB",
                    flush=True,
                )
                next_status += STATUS_S
            await asyncio.sleep(min(1.0, sample_s / 2))
        out, _ = feeder.communicate()
        if feeder.returncode != 0:
            raise RuntimeError(f"the feed failed ({feeder.returncode}); see {tmp / 'feed.log'}")
        fed = json.loads(out.decode().strip().splitlines()[-1])
        published = int(fed["published"])
        fed_s = time.monotonic() - start
        print(f"feed done after {fed_s:.0f}s: {published:,} ticks in {fed['messages']:,} messages; waiting for lag 0")
        recovered_s = -1.0
        drain_deadline = time.monotonic() + 300
        while time.monotonic() < drain_deadline:
            proj, other = lag(await consumers(api))
            if proj == 0 and other == 0:
                recovered_s = time.monotonic() - start - fed_s
                break
            await asyncio.sleep(0.5)
        while time.monotonic() < drain_deadline:  # read models do not ack: lag 0 is delivered, not yet committed
            if await projected_ticks(nc) >= published:
                break
            await asyncio.sleep(0.5)
        for name, pid in pids.items():
            if name != "feed":
                rss[name].samples.append((time.monotonic() - start, rss_kib(pid)))
        infos = await consumers(api)
        red, dlv = redeliveries(infos)
        stored = await stored_tick_messages(api)
        projected = await projected_ticks(nc)
        print(f"ticks: published {published:,} in {fed['messages']:,} messages, stored {stored:,} messages, "
              f"projected {projected:,} ticks")  # fmt: skip
        print(f"redeliveries: {red} of {dlv:,} deliveries ({red / max(1, dlv):.4%})")
        print(
            f"lag: max projector {max((p for _, p, _ in lags), default=0):,}, others "
            f"{max((o for _, _, o in lags), default=0):,}; "
            + (f"back to 0 {recovered_s:.1f}s after the feed stopped" if recovered_s >= 0 else "NOT back to 0 in 300s")
        )
        bound = block_bound_mib(writes_at_warmup or {}, await stream_writes(api))
        window = (rss["nats-server"].live(WARMUP_S) or [(0.0, 0)])[-1][0] - WARMUP_S
        print(
            f"RSS per process (MiB; warm-up = at {WARMUP_S:.0f}s, then {window / 60:.1f} min measured; growth: "
            f"the least-squares slope over them; flat: growth <= {FLAT:.0%} of warm-up RSS or {FLAT_MIB:g} MiB)"
        )
        print(f"  {'process':<12}{'warm-up':>9}{'end':>8}{'max':>8}{'MiB/min':>9}{'growth':>8}  {'verdict':<10}run")
        finished = {r: p.returncode for r, p in procs.items() if p.poll() is not None}  # e.g. news: files once
        verdicts: dict[str, str] = {}
        beside_pool = without_cache(rss.get("projector", Rss()), pool)
        for name, r in rss.items():
            if name in finished:
                print(f"  {name:<12}exited by itself (code {finished[name]}): left out")
                continue
            live = r.live()
            end, top = (live[-1][1], max(k for _, k in live)) if live else (0, 0)
            verdicts[name] = verdict = (
                "flat"
                if r.flat()
                else "bounded"
                if name == "nats-server" and r.growth_mib() <= bound
                else "cached"
                if name == "projector" and beside_pool.flat() and pool_max_mib(pool) <= pool_limit_mib
                else "levels off"
                if r.levels_off()
                else "GROWS"
            )
            print(
                f"  {name:<12}{r.base() / 1024:>9.1f}{end / 1024:>8.1f}{top / 1024:>8.1f}{r.slope():>+9.2f}"
                f"{r.growth_mib():>+8.1f}  {verdict:<10}{r.sparkline()}"
            )
        print(
            f"nats-server bound: {bound:.1f} MiB = {GO_HEAP:g} x the bytes its streams appended in the window, "
            "at most one file-store block each (8 MiB; 4 for key-value): it caches the block being written "
            "until it is full, so it grows until each stream's block is full ('bounded'), not flat"
        )
        if pool.samples:
            print(
                f"projector: DuckDB's buffer pool {pool.base() / 1024:.1f} → {pool.samples[-1][1] / 1024:.1f} MiB "
                f"(growth {pool.growth_mib():+.1f}, max {pool_max_mib(pool):.1f}, bounded by [projector] "
                f"memory_limit_mb = {pool_limit_mib}); RSS less the pool {beside_pool.base() / 1024:.1f} → "
                f"{beside_pool.live()[-1][1] / 1024 if beside_pool.live() else 0:.1f} MiB, growth "
                f"{beside_pool.growth_mib():+.1f} (flat within {beside_pool.tolerance_mib():.1f}: "
                f"{'yes' if beside_pool.flat() else 'NO'})"
            )
        else:
            print("projector: its metrics endpoint gave no DuckDB pool figure; judged on its RSS alone")
        if args.plot:
            print(plot(rss, args.plot))
        checks = {
            "zero loss": published == projected and stored == int(fed["messages"]),
            "redeliveries < 0.1%": red <= MAX_REDELIVERED * dlv,
            "lag recovered": recovered_s >= 0,
            "no role process failed": not any(finished.values()),
            "RSS flat (nats-server: within its block bound; projector: less DuckDB's bounded pool)": all(
                v in ("flat", "bounded", "cached") for v in verdicts.values()
            ),
        }
        print("checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in checks.items()))
        ok = all(checks.values())
    finally:
        await close_connection(nc)
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        server.stop()
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rate", type=float, default=10 * DEMO_RATE, help="ticks per second (default: 10x the demo)")
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the feed publishes")
    ap.add_argument(
        "--warmup",
        type=float,
        default=DEFAULT_WARMUP_S,
        help="seconds before RSS slopes are taken (nats-server fills a file-store block per stream first: 8 MiB)",
    )
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--roles", default="", help=f"comma-separated roles to run (default: all of {', '.join(ROLES)})")
    ap.add_argument("--one-per-message", action="store_true", help="publish one tick per message")
    ap.add_argument("--plot", type=Path, help="also draw the RSS curves into this PNG (needs matplotlib)")
    ap.add_argument("--keep", type=Path, help="work in this directory and leave it (default: a temporary one)")
    ap.add_argument("--feed", metavar="URL", help=argparse.SUPPRESS)  # the feed child process
    args = ap.parse_args()
    global WARMUP_S
    WARMUP_S = args.warmup
    if args.feed:
        asyncio.run(feed(args.feed, args.rate, args.minutes * 60, not args.one_per_message))
        return
    sys.exit(0 if asyncio.run(soak(args)) else 1)


if __name__ == "__main__":
    main()
