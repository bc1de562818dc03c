"""Our nats-py 2.16 client (with bus/connection.py's overrides) against the official split clients
(``nats-core`` + ``nats-jetstream``, PyPI) and stock nats-py, one nats-server, one stream.

Three workloads, every side in turn within each round (A/B/C, A/B/C, ...):

* ack: consume-decode-ack from a JetStream pull consumer (same durable config for every side).
* pub: also publish one output alert per input to JetStream, with ``Nats-Msg-Id``, its publish ack
  awaited before the input is acked (what every handler does).
* core: core publish throughput, ``--n`` tick bodies to a subject no stream captures, then a flush.

Ours is bench_peers.py's path (``ConsumerRuntime``; ``ComponentRunner`` with an echo ``Handler``;
``TapelineClient.publish_raw``). Stock nats-py (its own plain ``nats.connect``, no overrides):
``pull_subscribe().fetch(500)``, ``msg.ack()``; pub gathers the batch's ``js.publish`` calls.
The split clients run as documented in their README (``consumer.fetch`` and ``consumer.messages``,
``msg.ack()``, ``js.publish``) in a subprocess of ``--python`` (an interpreter where ``nats.client`` and
``nats.jetstream`` import; they are no dependency of ours). Figures: messages/s and the client
process's CPU µs per message (``time.process_time``; for ours and stock nats-py, this process).

Run: .venv/bin/python benchmarks/bench_split_clients.py --python /tmp/split/venv/bin/python [--n 50000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CORE_SUBJECT = "peer.core.bench"  # no stream captures it: a core publish only
OUT_SUBJECT = "peer.ops.alert.info"
BATCH = 500


def echo_body(body: bytes, tag: str) -> tuple[bytes, str]:
    """The output our echo handler emits for a tick (an info alert naming it), encoded, and its id."""
    from tapeline.schemas.codec import decode, encode
    from tapeline.schemas.events import Alert, Tick

    tick = decode(body).events[0]
    assert isinstance(tick, Tick)
    event_id = f"{tick.event_id}{tag}"
    alert = Alert(
        event_id=event_id,
        ts_event=tick.ts_event,
        ts_init=time.time_ns(),
        source="peer_echo",
        causation_id=tick.event_id,
        severity="info",
        kind="echo",
        key=tick.symbol,
        message=f"{tick.symbol} {tick.last}",
    )
    return encode(alert), event_id


# ---------------------------------------------------------------- the split clients' side (subprocess)


async def split_side(a: argparse.Namespace) -> dict[str, float]:
    """One workload with nats-core + nats-jetstream, run in ``--python``; n / seconds and CPU µs/msg."""
    from tapeline.schemas.codec import decode

    client_mod: Any = importlib.import_module("nats.client")
    js_mod: Any = importlib.import_module("nats.jetstream")
    nc = await client_mod.connect(a.url)
    js = js_mod.new(nc)
    n = a.n
    t0, cpu0 = time.perf_counter(), time.process_time()
    if a.work == "core":
        for _ in range(n):
            await nc.publish(CORE_SUBJECT, a.body)
        await nc.flush(timeout=60)
    else:
        consumer = await js.get_consumer(a.stream, a.durable)
        seen = 0
        if a.mode == "messages":
            msgs = await consumer.messages(max_messages=a.batch)
            async for m in msgs:
                decode(m.data)
                await m.ack()
                seen += 1
                if seen >= n:
                    break
            await msgs.stop()
        while seen < n:  # fetch; in pub also the mode that batches publishes
            batch = await consumer.fetch(max_messages=a.batch, max_wait=5)
            got = [m async for m in batch]
            if a.work == "pub":
                outs = [echo_body(m.data, a.tag) for m in got]
                await asyncio.gather(
                    *(js.publish(OUT_SUBJECT, b, headers={"Nats-Msg-Id": i}, timeout=60) for b, i in outs)
                )
            for m in got:
                if a.work == "ack":
                    decode(m.data)
                await m.ack()
            seen += len(got)
        await nc.flush(timeout=60)
        while True:  # the last acks are part of the work
            info = await js.get_consumer_info(a.stream, a.durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.005)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await nc.close()
    return {"eps": n / elapsed, "cpu_us": cpu / n * 1e6}


async def run_split(
    py: str, url: str, n: int, work: str, durable: str = "", mode: str = "fetch", tag: str = "", batch: int = BATCH
) -> tuple[float, float]:
    from bench_peers import STREAM

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        f.write(sample_body())
        f.flush()
        args = [__file__, "--side", "--url", url, "--n", str(n), "--work", work, "--stream", STREAM]
        args += ["--durable", durable, "--mode", mode, "--tag", tag, "--batch", str(batch), "--body-file", f.name]
        proc = await asyncio.create_subprocess_exec(py, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"split side failed ({work} {mode}): {err.decode()[-2000:]}")
    r = json.loads(out.decode().strip().splitlines()[-1])
    return float(r["eps"]), float(r["cpu_us"])


# ---------------------------------------------------------------- ours and stock nats-py (this process)

_BODY: list[bytes] = []


def sample_body() -> bytes:
    """One tick's body, as the stream holds them (core publishes send it n times)."""
    if not _BODY:
        from tapeline.adapters.sim import SimFeed
        from tapeline.schemas.codec import encode

        _BODY.append(encode(next(iter(SimFeed(["NVDA"], ticks=1, seed=5).generate()))))
    return _BODY[0]


async def timed(coro: Any, n: int) -> tuple[float, float]:
    t0, cpu0 = time.perf_counter(), time.process_time()
    await coro
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return n / elapsed, cpu / n * 1e6


async def stock_work(url: str, n: int, work: str, durable: str, tag: str) -> tuple[float, float]:
    """Stock nats-py 2.16 (a plain ``nats.connect``, none of our overrides)."""
    import nats
    from bench_peers import STREAM, SUBJECT

    from tapeline.bus.jetstream import JetStreamApi
    from tapeline.schemas.codec import decode

    nc = await nats.connect(url)
    js = nc.jetstream()

    async def body() -> None:
        if work == "core":
            data = sample_body()
            for _ in range(n):
                await nc.publish(CORE_SUBJECT, data)
            await nc.flush(timeout=60)
            return
        psub = await js.pull_subscribe(SUBJECT, durable=durable, stream=STREAM)
        seen = 0
        while seen < n:
            got = await psub.fetch(BATCH, timeout=5)
            if work == "pub":
                outs = [echo_body(m.data, tag) for m in got]
                await asyncio.gather(
                    *(js.publish(OUT_SUBJECT, b, headers={"Nats-Msg-Id": i}, timeout=60) for b, i in outs)
                )
            for m in got:
                if work == "ack":
                    decode(m.data)
                await m.ack()
            seen += len(got)
        await nc.flush(timeout=60)
        api = JetStreamApi(nc)
        while True:
            info = await api.consumer_info(STREAM, durable)
            if info and info["num_pending"] == 0 and info["num_ack_pending"] == 0:
                break
            await asyncio.sleep(0.005)

    try:
        return await timed(body(), n)
    finally:
        await nc.close()


async def ours_core(nc: Any, n: int) -> tuple[float, float]:
    async def body() -> None:
        data = sample_body()
        for _ in range(n):
            await nc.publish_raw(CORE_SUBJECT, data)
        await nc.flush(timeout=60)

    return await timed(body(), n)


async def bench(
    py: str, url: str, n: int, rounds: int, modes: Sequence[tuple[str, int]]
) -> dict[str, list[tuple[float, float]]]:
    from bench_peers import OUR_CPU, PREFIX, STREAM, SUBJECT, ours_ack, ours_publish

    from tapeline.adapters.runner import publish_events
    from tapeline.adapters.sim import SimFeed
    from tapeline.bus.connection import NatsSettings, close_connection, connect
    from tapeline.bus.jetstream import JetStreamApi
    from tapeline.bus.publisher import Publisher
    from tapeline.bus.topology import durable_config, provision

    nc = await connect(NatsSettings(url=url, name="bench-split"))
    await provision(nc, PREFIX)
    api = JetStreamApi(nc)
    publisher = await Publisher(nc, PREFIX, role="bench-split", window=8192).start()
    ticks = list(SimFeed(["NVDA", "ORCL", "AAPL", "MSFT", "BRK.B"], ticks=n, seed=5).generate())
    for i in range(0, n, 2000):
        await publish_events(publisher, ticks[i : i + 2000], batch_ticks=False)
    results: dict[str, list[tuple[float, float]]] = {}

    def add(key: str, r: tuple[float, float]) -> None:
        results.setdefault(key, []).append(r)
        print(f"  {key:<44} {r[0]:>10,.0f} msg/s {r[1]:>8.1f} CPU µs/msg", flush=True)

    for r in range(rounds):
        print(f"round {r + 1} of {rounds}", flush=True)
        for name in ("stock_ack", "stock_pub", "split_pub", *(f"split_{i}_ack" for i in range(len(modes)))):
            await api.ensure_consumer(STREAM, durable_config(f"{name}_{r}", [SUBJECT]))
        eps = await ours_ack(nc, publisher, n, f"ours_ack_{r}")
        add("ack|ours: ConsumerRuntime", (eps, OUR_CPU["ack"][-1]))
        add("ack|stock nats-py fetch(500)", await stock_work(url, n, "ack", f"stock_ack_{r}", ""))
        for i, (m, b) in enumerate(modes):
            add(f"ack|split {m}({b})", await run_split(py, url, n, "ack", f"split_{i}_ack_{r}", m, batch=b))
        eps = await ours_publish(nc, publisher, n, r)
        add("pub|ours: ComponentRunner(Handler)", (eps, OUR_CPU["pub"][-1]))
        add("pub|stock nats-py fetch + gather(publish)", await stock_work(url, n, "pub", f"stock_pub_{r}", f"s{r}"))
        label = f"pub|split fetch({BATCH}) + gather(publish)"
        add(label, await run_split(py, url, n, "pub", f"split_pub_{r}", tag=f"x{r}"))
        add("core|ours: publish_raw", await ours_core(nc, n))
        add("core|stock nats-py publish", await stock_work(url, n, "core", "", ""))
        add("core|split publish", await run_split(py, url, n, "core"))
    await publisher.close()
    await close_connection(nc)
    return results


def report(results: dict[str, list[tuple[float, float]]], n: int, rounds: int, load: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def spread(xs: Sequence[float], fmt: str) -> str:
        return f"{min(xs):{fmt}}–{max(xs):{fmt}}" if len(xs) > 1 else f"{xs[0]:{fmt}}"

    table = Table(title=f"nats clients: {n:,} ticks, {rounds} rounds, one nats-server ({load})")
    for col in ("workload", "client"):
        table.add_column(col)
    for r in range(rounds):
        table.add_column(f"round {r + 1} msg/s · µs", justify="right")
    table.add_column("msg/s range", justify="right")
    table.add_column("CPU µs/msg range", justify="right")
    for key, xs in results.items():
        work, who = key.split("|")
        cells = [f"{e:,.0f} · {c:.1f}" for e, c in xs]
        table.add_row(work, who, *cells, spread([e for e, _ in xs], ",.0f"), spread([c for _, c in xs], ".1f"))
    Console(width=160).print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--python", default="", help="an interpreter where nats.client and nats.jetstream import")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--modes",
        default="fetch:500,messages:500,messages:5000",
        help="the split side's consume modes for ack, MODE:BATCH (fetch: one pull per batch; messages: a stream "
        "that asks for BATCH more when fewer than half are outstanding, checked every 100 ms)",
    )
    # the split side (internal: run under --python)
    ap.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    for opt in ("--url", "--work", "--stream", "--durable", "--mode", "--tag", "--body-file"):
        ap.add_argument(opt, default="", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        a.body = Path(a.body_file).read_bytes() if a.body_file else b""
        print(json.dumps(asyncio.run(split_side(a))), flush=True)
        return
    if not a.python:
        print(
            "bench_split_clients: --python PATH is required "
            "(an interpreter with nats-core and nats-jetstream installed)"
        )
        raise SystemExit(2)
    probe = (
        subprocess.run(
            [a.python, "-c", "import nats.client, nats.jetstream"], capture_output=True, text=True, check=False
        )
        if Path(a.python).exists()
        else None
    )
    if probe is None or probe.returncode != 0:
        print(
            f"bench_split_clients: the split clients are not installed for {a.python} "
            "(nats.client / nats.jetstream do not import); install nats-core and nats-jetstream into it"
        )
        raise SystemExit(2)
    from tapeline.bus.server import EmbeddedNats

    modes = [(m.split(":")[0], int(m.split(":")[1]) if ":" in m else BATCH) for m in a.modes.split(",") if m]
    with tempfile.TemporaryDirectory() as d:
        server = EmbeddedNats(Path(d) / "nats")
        url = server.start()
        try:
            results = asyncio.run(bench(a.python, url, a.n, a.rounds, modes))
        finally:
            server.stop()
    load = "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    report(results, a.n, a.rounds, load)


if __name__ == "__main__":
    main()
