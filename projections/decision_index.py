"""The per-(ticker, trade date) decision lookup: a read model into the decisions KV bucket.

The bucket already holds the latest envelope per ticker (key ``<ticker token>``): its stream sources
the decision stream through a subject transform. The trade date is not in the subject, so no
transform can key by it; this read model consumes the decision stream in order and puts each
envelope, byte for byte as published, under ``<ticker token>.<YYYY-MM-DD>``: the last decision of
that day wins. ``nats kv get tape_decisions NVDA.2026-05-11`` answers the seed contract's point
lookup (:mod:`tapeline.contract`).

Its position is saved like a component snapshot (``<prefix>_snapshots``, key ``decision_index_decision``)
after each batch; a restart resumes right after it. Puts are idempotent (latest value per key), so
replaying part of the stream again (or all of it: delete that key) leaves the same lookups.
"""

from __future__ import annotations

from nats.aio.client import Client

from tapeline.bus.components import SnapshotStore
from tapeline.bus.reader import Received
from tapeline.bus.runtime import ConsumerSpec, Failure
from tapeline.schemas.codec import encode
from tapeline.schemas.components import durable_name
from tapeline.schemas.events import DecisionEnvelope
from tapeline.schemas.subjects import DECISION, decisions_bucket, encode_token

NAME = "decision_index"


def date_key(ticker: str, trade_date: str) -> str:
    """The KV key of a (ticker, trade date): ``<ticker token>.<YYYY-MM-DD>``."""
    return f"{encode_token(ticker)}.{trade_date}"


class DecisionIndex:
    """Sink: puts each batch's last envelope per (ticker, trade date), then saves its position."""

    def __init__(self, nc: Client, prefix: str) -> None:
        self.js = nc.jetstream()
        self.bucket = decisions_bucket(prefix)
        self.durable = durable_name(NAME, DECISION)
        self.store = SnapshotStore(nc, prefix)
        self.indexed = 0

    async def start_seq(self) -> int:
        saved = await self.store.load(self.durable)
        return saved.seq + 1 if saved else 1

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        latest: dict[str, bytes] = {}
        for rec in batch:
            envelopes = [e for e in rec.events if isinstance(e, DecisionEnvelope) and e.target.trade_date]
            for env in envelopes:  # a message is one envelope: keep its bytes as published
                data = rec.delivery.data if len(rec.events) == 1 else encode(env)
                latest[date_key(env.target.ticker, env.target.trade_date)] = data
        for key, data in latest.items():
            await self.js.publish(f"$KV.{self.bucket}.{key}", data)
        self.indexed += len(latest)
        if batch:
            await self.store.save(self.durable, batch[-1].delivery.stream_seq, b"")
        return {}


async def decision_index_binding(nc: Client, prefix: str) -> tuple[ConsumerSpec, DecisionIndex, int]:
    """(consumer spec, sink, start sequence) of the index, resuming after its saved position."""
    sink = DecisionIndex(nc, prefix)
    spec = ConsumerSpec(
        stream=DECISION.stream(prefix),
        durable=sink.durable,
        filter_subjects=(DecisionEnvelope.subject_pattern(prefix),),
        ordered=True,
        acks="none",  # its position is the saved snapshot, where the durable is re-created: no acks
        batch=1000,
    )
    return spec, sink, await sink.start_seq()
