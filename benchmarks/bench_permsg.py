"""Micro-benchmarks of the per-message path (issue 14, session 5): CPU µs per message, no server.

* parser: a read loop's worth of pull deliveries (``MSG <subject> <sid> $JS.ACK... <n>`` + a 330-byte
  tick) fed in 32 KiB reads to nats-py's ``Parser`` and to our ``LeanParser``, each message to a raw
  handler that keeps it (as ``PullLoop._on_msg`` does);
* parse_delivery: the JetStream reply subject split into a ``Delivery``;
* render: an Alert's and a Tick's subject (``SubjectTemplate.render``);
* stamp: ``_stamped`` of one output (``msgspec.structs.replace`` + ``derive_event_id``);
* headers: an output's NATS header block (``bus.publisher.headers_for``);
* publish_raw: an ack queued for the socket (a client not connected: no I/O, what the call itself costs).

Run: PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_permsg.py [--n 100000] [--repeat 5]
Prints the best of ``--repeat`` for each (the least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nats.protocol.parser import Parser
from timing import Echo, best_us

from tapeline.adapters.sim import SimFeed
from tapeline.bus.components import _stamped
from tapeline.bus.connection import TapelineClient
from tapeline.bus.consumer import parse_delivery
from tapeline.bus.protocol import LeanParser
from tapeline.bus.publisher import headers_for
from tapeline.schemas.codec import encode
from tapeline.schemas.components import draft
from tapeline.schemas.events import Alert, Tick

ACK = b"$JS.ACK.PEER_MD.ours_ack_0.1.%d.%d.1763850000000000000.%d"


def bench_parser(parser: type[Parser], ticks: list[Tick], repeat: int) -> float:
    frames = []
    for i, t in enumerate(ticks, 1):
        body = encode(t)
        frames.append(b"MSG peer.md.tick.%s 7 %s %d\r\n%s\r\n" % (t.symbol.encode(), ACK % (i, i, 0), len(body), body))
    stream = b"".join(frames)
    reads = [stream[i : i + 32768] for i in range(0, len(stream), 32768)]
    nc = TapelineClient()
    kept: list[bytes] = []
    nc._raw_handlers[7] = lambda s, r, d, h: kept.append(d)
    nc._ps = parser(nc)

    async def run() -> None:
        kept.clear()
        for r in reads:
            await nc._ps.parse(r)
        assert len(kept) == len(ticks)

    loop = asyncio.new_event_loop()
    try:
        return best_us(lambda: loop.run_until_complete(run()), len(ticks), repeat)
    finally:
        loop.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n, repeat = args.n, args.repeat
    ticks = list(SimFeed(["NVDA", "ORCL", "AAPL", "MSFT", "BRK.B"], ticks=n, seed=5).generate())
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}; CPU µs per message, best of {repeat}")
    print(f"  parser: nats-py Parser {bench_parser(Parser, ticks, repeat):6.2f}")
    print(f"  parser: LeanParser     {bench_parser(LeanParser, ticks, repeat):6.2f}")
    replies = [ACK % (i, i, n - i) for i in range(n)]
    subj, data = b"peer.md.tick.NVDA", encode(ticks[0])
    us = best_us(lambda: [parse_delivery(subj, r, data, None) for r in replies], n, repeat)
    print(f"  parse_delivery         {us:6.2f}")
    alerts = [draft(Alert, ts_event=t.ts_event, severity="info", kind="echo", key=t.symbol, message="m") for t in ticks]
    print(f"  render Alert subject   {best_us(lambda: [a.subject('peer') for a in alerts], n, repeat):6.2f}")
    print(f"  render Tick subject    {best_us(lambda: [t.subject('peer') for t in ticks], n, repeat):6.2f}")
    comp = Echo()
    pairs = list(zip(ticks, alerts, strict=True))
    us = best_us(lambda: [_stamped(comp, t, [a], t.event_id, 0) for t, a in pairs], n, repeat)
    print(f"  _stamped, one output   {us:6.2f}")
    stamped = [_stamped(comp, t, [a], t.event_id, 0)[0] for t, a in pairs]
    print(f"  headers_for            {best_us(lambda: [headers_for(e) for e in stamped], n, repeat):6.2f}")
    print(f"  publish_raw (an ack)   {bench_publish_raw(replies, repeat):6.2f}")


def bench_publish_raw(replies: list[bytes], repeat: int) -> float:
    nc = TapelineClient()
    subjects = [r.decode() for r in replies]

    async def run() -> None:
        for s in subjects:
            await nc.publish_raw(s, b"+ACK")
        nc._pending.clear()
        nc._pending_data_size = 0

    loop = asyncio.new_event_loop()
    try:
        return best_us(lambda: loop.run_until_complete(run()), len(replies), repeat)
    finally:
        loop.close()


if __name__ == "__main__":
    main()
