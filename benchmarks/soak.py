"""Soak: a steady tick rate for a long while; nothing lost, few redeliveries, lag recovers, memory flat.

Processes, as deployed: an embedded nats-server (file store), ``tapeline up`` (every role) and a
feed (this script in ``--feed`` mode) publishing simulated ticks at a steady rate. By default ten
times the demo's rate (the simulator's ``[sim] mean_gap_ms``: one tick per 250 ms of market time,
4 ticks/s if played in real time, so 40 ticks/s) for ten minutes.

Printed every 10 s and at the end: ticks published / stored / projected, redeliveries (the sum of
every consumer's ``num_redelivered`` over its deliveries), lag (``num_pending`` of the projector's
and of the handlers' consumers), and the RSS (``VmRSS``) of each process: first, after warm-up,
last, max. Pass: zero loss, redeliveries < 0.1%, lag back to 0 after the feed stops, and each
RSS's last sample within 20% of its value after warm-up. Exit 1 if any check fails.

Run: .venv/bin/python benchmarks/soak.py [--minutes 10] [--rate 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapeline.adapters.sim import SimFeed
from tapeline.bus.connection import NatsSettings, close_connection, connect
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.publisher import Publisher
from tapeline.bus.server import EmbeddedNats
from tapeline.bus.topology import provision
from tapeline.config import SimConfig
from tapeline.projections.query import query_remote
from tapeline.schemas.subjects import FAMILIES, MD

PREFIX = "soak"
DEMO_RATE = 1000 / SimConfig().mean_gap_ms  # ticks per second of market time in the demo's simulator
SAMPLE_S = 10.0
FLAT = 0.20  # last RSS within this fraction of the value after warm-up
MAX_REDELIVERED = 0.001


def rss_kib(pid: int) -> int:
    """Resident set size of a process (Linux /proc), in KiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# ----------------------------------------------------------------------------- the feed process


async def feed(url: str, rate: float, seconds: float) -> None:
    """Publish ``rate`` ticks/s for ``seconds``, 10 steps a second, catching up if a step was late.

    Prints the number of ticks stored (JetStream acknowledged) as JSON at the end.
    """
    nc = await connect(NatsSettings(url=url, name="soak-feed"))
    await provision(nc, PREFIX)
    pub = await Publisher(nc, PREFIX, role="soak-feed").start()
    total = int(rate * seconds)
    ticks = SimFeed(ticks=total, seed=11, mean_gap_ms=SimConfig().mean_gap_ms).generate()
    sent = stored = 0
    start = time.monotonic()
    while sent < total:
        due = min(total, int(rate * (time.monotonic() - start)) + 1)
        batch = [next(ticks) for _ in range(due - sent)]
        if batch:
            result = await pub.publish(batch)
            stored += result.stored + result.duplicates
            sent += len(batch)
        await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
    await pub.close()
    await close_connection(nc)
    print(json.dumps({"published": sent, "acked": stored}), flush=True)


# ----------------------------------------------------------------------------- the soak


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """This Python with ``args``; stderr (and stdout but for the feed, whose result is read) to ``log``."""
    with open(log, "ab") as f:
        out = subprocess.PIPE if "--feed" in args else f
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=f)


@dataclass
class Rss:
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, KiB)

    def after(self, warmup_s: float) -> int:
        later = [kib for t, kib in self.samples if t >= warmup_s and kib]
        return later[0] if later else 0

    def summary(self, warmup_s: float) -> str:
        live = [kib for _, kib in self.samples if kib]
        if not live:
            return "no samples"
        return (
            f"first {live[0] / 1024:.0f} MiB, after warm-up {self.after(warmup_s) / 1024:.0f}, "
            f"last {live[-1] / 1024:.0f}, max {max(live) / 1024:.0f}"
        )

    def flat(self, warmup_s: float) -> bool:
        live = [kib for _, kib in self.samples if kib]
        base = self.after(warmup_s)
        return bool(live and base) and abs(live[-1] - base) <= FLAT * base


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


async def stored_ticks(api: JetStreamApi) -> int:
    info = await api.call(f"STREAM.INFO.{MD.stream(PREFIX)}", {"subjects_filter": f"{PREFIX}.md.tick.>"})
    return sum(int(n) for n in (info["state"].get("subjects") or {}).values())


async def projected_ticks(nc: Client) -> int:
    res = await query_remote(nc, PREFIX, "SELECT count(*) FROM ticks", timeout=10)
    return int(res.rows[0][0]) if res.rows else -1


async def soak(rate: float, minutes: float, keep: Path | None) -> bool:
    seconds = minutes * 60
    warmup_s = max(SAMPLE_S, min(60.0, seconds / 5))
    tmp = keep or Path(tempfile.mkdtemp(prefix="tapeline-soak-"))
    server = EmbeddedNats(tmp / "nats")
    url = server.start()
    cfg = tmp / "tapeline.toml"
    cfg.write_text(f'prefix = "{PREFIX}"\nnats_url = "{url}"\ndata_dir = "{tmp / "data"}"\nmetrics_port = 0\n')
    print(f"soak: {rate:g} ticks/s ({rate / DEMO_RATE:g}x the demo's {DEMO_RATE:g}/s) for {minutes:g} min; in {tmp}")
    up = spawn(["-m", "tapeline", "up", "-c", str(cfg)], tmp / "up.log")
    nc = await connect(NatsSettings(url=url, name="soak-watch"))
    api = JetStreamApi(nc)
    ok = False
    try:
        deadline = time.monotonic() + 120
        while "tapeline up on" not in (tmp / "up.log").read_text():
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tapeline up did not start; see {tmp / 'up.log'}")
            await asyncio.sleep(0.2)
        feeder = spawn([__file__, "--feed", url, "--rate", str(rate), "--minutes", str(minutes)], tmp / "feed.log")
        pids = {"nats-server": server.pid, "up": up.pid, "feed": feeder.pid}
        rss = {name: Rss() for name in pids}
        lags: list[tuple[float, int, int]] = []
        start = time.monotonic()
        next_sample = 0.0
        while feeder.poll() is None:
            now = time.monotonic() - start
            if now >= next_sample:
                for name, pid in pids.items():
                    rss[name].samples.append((now, rss_kib(pid)))
                infos = await consumers(api)
                proj, other = lag(infos)
                lags.append((now, proj, other))
                red, dlv = redeliveries(infos)
                mem = ", ".join(f"{n} {rss[n].samples[-1][1] / 1024:.0f}" for n in pids)
                sys.stdout.write(
                    f"\r[{now:6.0f}s / {seconds:.0f}s] stored {await stored_ticks(api):,} ticks, "
                    f"lag projector {proj:,} handlers {other:,}, redelivered {red}/{dlv:,}, RSS MiB {mem}   \n"
                )
                next_sample += SAMPLE_S
            sys.stdout.write(f"\r[{now:6.0f}s / {seconds:.0f}s] feeding ...")
            sys.stdout.flush()
            await asyncio.sleep(1.0)
        out, _ = feeder.communicate()
        if feeder.returncode != 0:
            raise RuntimeError(f"the feed failed ({feeder.returncode}); see {tmp / 'feed.log'}")
        published = int(json.loads(out.decode().strip().splitlines()[-1])["published"])
        fed_s = time.monotonic() - start
        print(f"\nfeed done after {fed_s:.0f}s: {published:,} ticks published; waiting for lag to reach 0")
        recovered_s = -1.0
        drain_deadline = time.monotonic() + 300
        while time.monotonic() < drain_deadline:
            infos = await consumers(api)
            proj, other = lag(infos)
            if proj == 0 and other == 0:
                recovered_s = time.monotonic() - start - fed_s
                break
            await asyncio.sleep(0.5)
        for name, pid in pids.items():
            if name != "feed":
                rss[name].samples.append((time.monotonic() - start, rss_kib(pid)))
        infos = await consumers(api)
        red, dlv = redeliveries(infos)
        stored = await stored_ticks(api)
        projected = await projected_ticks(nc)
        print(f"ticks: published {published:,}, stored {stored:,}, projected {projected:,}")
        print(f"redeliveries: {red} of {dlv:,} deliveries ({red / max(1, dlv):.4%})")
        peak = max(lags, key=lambda x: x[1] + x[2]) if lags else (0.0, 0, 0)
        print(
            f"lag: max projector {max((p for _, p, _ in lags), default=0):,}, handlers "
            f"{max((o for _, _, o in lags), default=0):,} (worst at {peak[0]:.0f}s); "
            + (f"back to 0 {recovered_s:.1f}s after the feed stopped" if recovered_s >= 0 else "NOT back to 0 in 300s")
        )
        print(f"RSS (warm-up {warmup_s:.0f}s):")
        for name in pids:
            print(f"  {name:12} {rss[name].summary(warmup_s)}{'' if rss[name].flat(warmup_s) else '  NOT FLAT'}")
        checks = {
            "zero loss": published == stored == projected,
            "redeliveries < 0.1%": red <= MAX_REDELIVERED * dlv,
            "lag recovered": recovered_s >= 0,
            "RSS flat": all(rss[n].flat(warmup_s) for n in pids),
        }
        print("checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in checks.items()))
        ok = all(checks.values())
    finally:
        await close_connection(nc)
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
        server.stop()
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rate", type=float, default=10 * DEMO_RATE, help="ticks per second (default: 10x the demo)")
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the feed publishes")
    ap.add_argument("--keep", type=Path, help="work in this directory and leave it (default: a temporary one)")
    ap.add_argument("--feed", metavar="URL", help=argparse.SUPPRESS)  # the feed child process
    args = ap.parse_args()
    if args.feed:
        asyncio.run(feed(args.feed, args.rate, args.minutes * 60))
        return
    sys.exit(0 if asyncio.run(soak(args.rate, args.minutes, args.keep)) else 1)


if __name__ == "__main__":
    main()
