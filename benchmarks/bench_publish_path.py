"""Micro-benchmarks of the publish path (issue 14, session 7): CPU µs per output, no server.

* send: ``Publisher.send`` of a group of stamped alerts (subject, encoding, header block, the window,
  the ``HPUB`` frame queued for the socket) on a client that is not connected (no I/O: what the
  calls themselves cost); ``--group`` outputs per call, as a handler's batch publishes them;
* ack: ``Publisher._on_ack`` of each output's JetStream publish ack (``{"stream":..,"seq":..}``), the
  group completed;
* stamp: ``_stamped`` of one output (``msgspec.structs.replace`` + ``derive_event_id``);
* tick_id: a simulated tick's id (``schemas.ids.tick_id``), what a feed pays per tick.

Run one copy of this script against either tree for A/B (it only uses public names of both):
``cd /tmp && PYTHONPATH=/work/main .venv/bin/python benchmarks/bench_publish_path.py``.
Prints the best of ``--repeat`` for each (the least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import Echo, best_us

from tapeline.adapters.sim import SimFeed
from tapeline.bus.components import _stamped
from tapeline.bus.connection import TapelineClient
from tapeline.bus.publisher import Publisher
from tapeline.schemas.components import draft
from tapeline.schemas.events import Alert, Event
from tapeline.schemas.ids import tick_id


def bench_send_ack(outputs: list[Event], group: int, repeat: int) -> tuple[float, float]:
    """``Publisher.send`` of every output in groups, then every publish ack to ``_on_ack``."""
    nc = TapelineClient()
    pub = Publisher(nc, "peer", role="bench", window=len(outputs) + 1)
    pub._inbox, pub._inbox_b = "_INBOX.bench", b"_INBOX.bench"  # what start() sets (the branch keeps both)
    groups = [outputs[i : i + group] for i in range(0, len(outputs), group)]
    acks = [(f"_INBOX.bench.{i}".encode(), b'{"stream":"PEER_OPS","seq":%d}' % i) for i in range(1, len(outputs) + 1)]
    loop = asyncio.new_event_loop()

    async def send() -> None:
        pub._next = 0
        for g in groups:
            await pub.send(g)
        nc._pending.clear()
        nc._pending_data_size = 0

    def ack() -> None:
        on_ack = pub._on_ack
        for subject, data in acks:
            on_ack(subject, b"", data, None)
        assert not pub._inflight

    def one() -> None:  # send and ack the lot; the ack part is timed separately below
        loop.run_until_complete(send())
        ack()

    try:
        both = best_us(one, len(outputs), repeat)
        acked = []
        for _ in range(repeat):
            loop.run_until_complete(send())
            acked.append(best_us(ack, len(outputs), 1))
        return both - min(acked), min(acked)
    finally:
        loop.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--group", type=int, default=500, help="outputs per Publisher.send call")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    n, repeat = args.n, args.repeat
    ticks = list(SimFeed(["NVDA", "ORCL", "AAPL", "MSFT", "BRK.B"], ticks=n, seed=5).generate())
    comp = Echo()
    drafts = [
        draft(Alert, ts_event=t.ts_event, severity="info", kind="echo", key=t.symbol, message=f"{t.symbol} {t.last}")
        for t in ticks
    ]
    pairs = list(zip(ticks, drafts, strict=True))
    outputs = [_stamped(comp, t, [a], t.event_id, 0)[0] for t, a in pairs]
    gc.freeze()  # as the runtime does once it runs (bus.runtime.settle_gc): collections skip the inputs
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}; CPU µs per message, best of {repeat}")
    send, ack = bench_send_ack(outputs, args.group, repeat)
    print(f"  send (group of {args.group})   {send:6.2f}")
    print(f"  ack                   {ack:6.2f}")
    us = best_us(lambda: [_stamped(comp, t, [a], t.event_id, 0) for t, a in pairs], n, repeat)
    print(f"  _stamped, one output  {us:6.2f}")
    keys = [(t.venue, t.symbol, t.ts_event, t.seq) for t in ticks]
    print(f"  tick_id               {best_us(lambda: [tick_id(*k) for k in keys], n, repeat):6.2f}")


if __name__ == "__main__":
    main()
