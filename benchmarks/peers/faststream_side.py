"""FastStream's side of benchmarks/bench_peers.py; runs in the peers' own venv (.venv-peers), never ours.

Binds to a durable the parent created (same consumer config as ours), consumes ``--n`` messages,
decodes each JSON body the FastStream way (the handler's annotated ``dict`` parameter), acks it after
the handler returns (``AckPolicy.ACK``) and, with ``--publish``, first publishes one output per input
to JetStream and waits for its ack. Prints ``{"eps": ...}``: n / (time from subscribing until
the consumer has nothing pending or unacknowledged).

Configurations (FastStream 0.7.8, ``broker.subscriber`` options):
* ``batch``: ``PullSub(batch_size, batch=True)``, the handler gets a list (FastStream's fastest
  NATS consumption mode); publishes of a batch are awaited together.
* ``pull``: ``PullSub(batch_size)``, one handler call per message, a fetched batch run concurrently.
* ``workers``: ``PullSub(batch_size)`` plus ``max_workers`` (a pool of concurrent handler tasks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from typing import Any

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub


def alert(body: dict[str, Any]) -> dict[str, Any]:
    """The output: what our echo handler emits for a tick (an info alert naming it)."""
    return {
        "type": "alert",
        "event_id": body["event_id"] + "e",
        "ts_event": body["ts_event"],
        "ts_init": time.time_ns(),
        "source": "peer_echo",
        "severity": "info",
        "kind": "echo",
        "key": body["symbol"],
        "message": f"{body['symbol']} {body['last']}",
        "causation_id": body["event_id"],
    }


async def run(args: argparse.Namespace) -> float:
    broker = NatsBroker(args.url, logger=None)
    done = asyncio.Event()
    seen = 0
    out_stream = JStream(args.out_stream, declare=False)

    def count(k: int) -> None:
        nonlocal seen
        seen += k
        if seen >= args.n:
            done.set()

    async def publish(body: dict[str, Any]) -> None:
        """One output, its JetStream ack awaited (a generous timeout: a busy machine is slow, not failing)."""
        await broker.publish(alert(body), args.out_subject, stream=out_stream.name, timeout=60)

    opts: dict[str, Any] = {
        "stream": JStream(args.stream, declare=False),
        "durable": args.durable,
        "ack_policy": AckPolicy.ACK,
    }
    if args.config == "batch":

        @broker.subscriber(args.subject, pull_sub=PullSub(args.batch, timeout=1.0, batch=True), **opts)
        async def on_batch(bodies: list[dict[str, Any]]) -> None:
            try:
                if args.publish:
                    await asyncio.gather(*(publish(b) for b in bodies))
            finally:  # a handler that failed was still acked (AckPolicy.ACK): its work is over
                count(len(bodies))

    else:
        if args.config == "workers":
            opts["max_workers"] = args.workers

        @broker.subscriber(args.subject, pull_sub=PullSub(args.batch, timeout=1.0), **opts)
        async def on_msg(body: dict[str, Any]) -> None:
            try:
                if args.publish:
                    await publish(body)
            finally:
                count(1)

    await broker.connect()
    js = broker.connection.jetstream()  # FastStream's own nats-py connection
    t0 = time.perf_counter()
    await broker.start()
    await done.wait()
    while True:  # the last acks are part of the work
        info = await js.consumer_info(args.stream, args.durable)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    with contextlib.suppress(TimeoutError):  # its pull loop can outlive a stop; the figure is taken
        await asyncio.wait_for(broker.stop(), 10)
    return args.n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--subject", required=True)
    ap.add_argument("--durable", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--config", choices=("batch", "pull", "workers"), default="batch")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--publish", action="store_true")
    ap.add_argument("--out-stream", default="")
    ap.add_argument("--out-subject", default="")
    args = ap.parse_args()
    print(json.dumps({"eps": asyncio.run(run(args))}), flush=True)
    os._exit(0)  # not waiting for threads or tasks FastStream may leave behind


if __name__ == "__main__":
    main()
