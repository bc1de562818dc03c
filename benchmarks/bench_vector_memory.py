"""The vectors role's memory in isolation: RSS over many small LanceDB commits, per variant.

Each variant runs in a fresh process shaped like the vectors role: ``tapeline.cli`` imported (its
threads started), three tables committed concurrently from worker threads the way three
``VectorSink``s do (``asyncio.to_thread``): 5 news rows of 384-d vectors, 10 market states, 10 bars
with forward-return updates of earlier bars, each with its checkpoint; every table compacted every
100 of its commits (``OPTIMIZE_EVERY_COMMITS``). Printed: RSS after the warm-up rounds and at the
end, the growth per 1,000 rounds, glibc's arena count and the seconds per round.

Variants: ``base`` (one long-lived connection and handles, no trim), ``reconnect`` (a new connection
and handles after each compaction), ``trim`` (+ ``malloc_trim(0)`` after it), ``mallopt`` (+
``mallopt(M_ARENA_MAX, 2)`` in the process, as ``tapeline up`` does; all three: what ships), ``env``
(+ ``MALLOC_ARENA_MAX=2`` in the environment instead).

    nice .venv/bin/python benchmarks/bench_vector_memory.py [--rounds 1000] [--variants base,trim,mallopt]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {  # name: (reconnect, trim, mallopt, env)
    "base": (False, False, False, False),
    "reconnect": (True, False, False, False),
    "trim": (True, True, False, False),
    "mallopt": (True, True, True, False),
    "env": (True, True, False, True),
}
WARMUP_ROUNDS = 200


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(variant: str, rounds: int) -> None:
    import tapeline.cli  # noqa: F401  (the role's imports and their threads)
    from tapeline.alloc import arena_count, limit_arenas
    from tapeline.models.embedder import DIM as TEXT_DIM
    from tapeline.projections import vectors as v
    from tapeline.schemas.features import MARKET_DIM

    reconnect, trim, mallopt, _ = VARIANTS[variant]
    if mallopt:
        limit_arenas()
    v.REOPEN_AFTER_COMPACTION, v.TRIM_AFTER_COMPACTION = reconnect, trim
    tmp = tempfile.TemporaryDirectory(prefix="vecmem-")
    store = v.VectorStore(tmp.name)
    rng = np.random.default_rng(1)
    specs = store.specs

    def news(r: int) -> pa.Table:
        n = 5
        return pa.table(
            {
                "event_id": [f"n{r}-{i}" for i in range(n)],
                "stream_seq": [r] * n,
                "ts_event": [r * 1000 + i for i in range(n)],
                "provider": ["p"] * n,
                "title": ["t" * 80] * n,
                "tickers": [["AAPL"]] * n,
                "vector": v.vector_column(rng.random((n, TEXT_DIM), dtype=np.float32), TEXT_DIM),
            },
            schema=specs[v.NEWS_VECTORS].schema,
        )

    def states(r: int) -> pa.Table:
        n, dim = 10, MARKET_DIM
        return pa.table(
            {
                "bar_event_id": [f"b{r}-{i}" for i in range(n)],
                "symbol": [f"S{i}" for i in range(n)],
                "interval": ["1m"] * n,
                "ts_event": [r] * n,
                "stream_seq": [r] * n,
                "vector": v.vector_column(rng.random((n, dim), dtype=np.float32), dim),
            },
            schema=specs[v.MARKET_STATES].schema,
        )

    def bars(r: int) -> tuple[pa.Table, pa.Table | None]:
        n = 10
        cols: dict[str, object] = {
            "bar_event_id": [f"b{r}-{i}" for i in range(n)],
            "symbol": [f"S{i}" for i in range(n)],
            "interval": ["1m"] * n,
            "ts_event": [r] * n,
            "stream_seq": [r] * n,
            **{c: [100.0] * n for c in ("open", "high", "low", "close", "volume")},
            **{c: [None] * n for c in v.FWD_COLUMNS},
        }
        upd = None
        if r > 1:
            upd = pa.table(
                {"bar_event_id": [f"b{r - 1}-{i}" for i in range(n)], **{c: [0.01] * n for c in v.FWD_COLUMNS}}
            )
        return pa.table(cols, schema=specs[v.MARKET_RETURNS].schema), upd

    def commit(name: str, r: int) -> None:
        if name == v.MARKET_RETURNS:
            rows, upd = bars(r)
            store.commit(name, rows, stream="MD", last_seq=r, updates=upd)
        else:
            store.commit(name, news(r) if name == v.NEWS_VECTORS else states(r), stream="X", last_seq=r)
        if r % v.OPTIMIZE_EVERY_COMMITS == 0:
            store.optimize(name, keep_versions=v.KEEP_VERSIONS)

    names = (v.NEWS_VECTORS, v.MARKET_STATES, v.MARKET_RETURNS)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=6) as pool:
        for r in range(1, rounds + 1):
            for f in [pool.submit(commit, n, r) for n in names]:
                f.result()
            if r == WARMUP_ROUNDS:
                out["warm"], t0 = rss_mib(), time.perf_counter()
        out["s_per_round"] = (time.perf_counter() - t0) / max(1, rounds - WARMUP_ROUNDS)
    out["end"], out["arenas"] = rss_mib(), arena_count()
    tmp.cleanup()
    print(json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=1000, help="commits per table")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.rounds)
        return
    print(f"{'variant':<9}{'warm MiB':>10}{'end MiB':>9}{'MiB/1000 rounds':>17}{'arenas':>8}{'ms/round':>10}")
    for name in args.variants.split(","):
        env = dict(os.environ)
        env.pop("MALLOC_ARENA_MAX", None)
        if VARIANTS[name][3]:
            env["MALLOC_ARENA_MAX"] = "2"
        cmd = [sys.executable, __file__, "--child", name, "--rounds", str(args.rounds)]
        res = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True).stdout.decode().splitlines()[-1])
        per = (res["end"] - res["warm"]) / (args.rounds - WARMUP_ROUNDS) * 1000
        print(
            f"{name:<9}{res['warm']:>10.1f}{res['end']:>9.1f}{per:>+17.1f}{res['arenas']:>8}"
            f"{res['s_per_round'] * 1000:>10.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
