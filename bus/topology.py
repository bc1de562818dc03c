"""Declarative streams, durable consumers and the decisions KV bucket (DESIGN §3).

Everything is derived from the subject prefix, so another prefix is an isolated namespace.
The decisions bucket is a JetStream KV whose stream *sources* the decision stream through a
subject transform: it fills itself, and recreating it rebuilds it from the source of truth.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import structlog
from nats.aio.client import Client

from tapeline.bus.jetstream import JetStreamApi, JetStreamError
from tapeline.schemas.subjects import DECISION, FAMILIES, StreamFamily, decisions_bucket

NS = 1_000_000_000
GIB = 1024**3
STORAGE_RESOURCES_EXCEEDED = 10047  # nats-server could not reserve a stream's max_bytes
log = structlog.get_logger("tapeline.bus")


_Seconds = Annotated[int, msgspec.Meta(gt=0)]


class Retention(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-family retention. Market data ages out (and is capped in bytes, discarding the oldest); records never expire.

    nats-server reserves a stream's ``max_bytes`` against its store limit when the stream is created,
    so every namespace with this retention claims ``md_max_bytes`` (see :func:`provision`).
    The bounds are checked while ``[retention]`` is decoded, so a bad value is refused naming its
    key: market data must age out (``md_max_age_s`` > 0), a duplicate window must be positive,
    ``md_max_bytes`` is -1 (no byte limit) or positive, replicas 1 to 5 (JetStream's maximum).
    """

    md_max_age_s: _Seconds = 30 * 24 * 3600
    md_max_bytes: Annotated[int, msgspec.Meta(ge=-1)] = 10 * GIB
    duplicate_window_s: _Seconds = 120
    record_duplicate_window_s: _Seconds = 3600
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    sync_always_records: bool = False  # documented for production; embedded default stays fast


def stream_config(family: StreamFamily, prefix: str, r: Retention) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": family.stream(prefix),
        "subjects": [family.subjects(prefix)],
        "retention": "limits",
        "storage": "file",
        "num_replicas": r.replicas,
        "allow_direct": True,
    }
    if family.record:
        cfg |= {
            "max_age": 0,
            "discard": "new",
            "deny_delete": True,
            "deny_purge": True,
            "duplicate_window": r.record_duplicate_window_s * NS,
        }
    else:
        cfg |= {
            "max_age": r.md_max_age_s * NS,
            "max_bytes": r.md_max_bytes,
            "discard": "old",
            "duplicate_window": r.duplicate_window_s * NS,
        }
    return cfg


def decisions_kv_config(prefix: str, r: Retention) -> dict[str, Any]:
    bucket = decisions_bucket(prefix)
    return {
        "name": f"KV_{bucket}",
        "subjects": [f"$KV.{bucket}.>"],
        "retention": "limits",
        "storage": "file",
        "num_replicas": r.replicas,
        "max_msgs_per_subject": 5,
        "discard": "new",
        "allow_rollup_hdrs": True,
        "deny_delete": True,
        "allow_direct": True,
        "max_age": 0,
        "duplicate_window": 120 * NS,
        "sources": [
            {
                "name": DECISION.stream(prefix),
                "subject_transforms": [{"src": f"{prefix}.decision.*", "dest": f"$KV.{bucket}.{{{{wildcard(1)}}}}"}],
            }
        ],
    }


def latest_kv_config(bucket: str, *, max_age_s: float = 0, replicas: int = 1) -> dict[str, Any]:
    """A JetStream KV bucket keeping only the latest value per key (leases, snapshots)."""
    return {
        "name": f"KV_{bucket}",
        "subjects": [f"$KV.{bucket}.>"],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "max_msgs_per_subject": 1,
        "max_age": int(max_age_s * NS),
        "discard": "old",
        "allow_rollup_hdrs": True,
        "allow_direct": True,
        "duplicate_window": int(min(max_age_s or 120, 120) * NS),
    }


AckPolicy = Literal["explicit", "all", "none"]


def durable_config(
    durable: str,
    filter_subjects: list[str],
    *,
    ack_policy: AckPolicy = "explicit",
    max_deliver: int = 5,
    ack_wait_s: float = 30.0,
    max_ack_pending: int = 50_000,
    start_seq: int | None = None,
) -> dict[str, Any]:
    start: dict[str, Any] = (
        {"deliver_policy": "by_start_sequence", "opt_start_seq": start_seq} if start_seq else {"deliver_policy": "all"}
    )
    return {
        "durable_name": durable,
        **start,
        "ack_policy": ack_policy,
        "ack_wait": int(ack_wait_s * NS),
        "max_deliver": max_deliver,
        "max_ack_pending": max_ack_pending,
        "max_waiting": 512,
        "replay_policy": "instant",
        "filter_subjects": filter_subjects,
        "inactive_threshold": 0,
    }


async def provision(nc: Client, prefix: str, retention: Retention | None = None) -> dict[str, str]:
    """Apply every stream and the KV bucket; returns what happened to each. Safe to run always.

    Without ``retention`` (an isolated namespace: tests, what-if) market data gets no byte limit, as
    each namespace would reserve ``md_max_bytes`` on the server. When the server cannot reserve it
    (its store limit is smaller), the market-data stream is kept without a byte limit and a warning
    says so: a configured cap must not stop the system from starting.
    """
    r = retention or Retention(md_max_bytes=-1)
    api = JetStreamApi(nc)
    done: dict[str, str] = {}
    for fam in FAMILIES:
        cfg = stream_config(fam, prefix, r)
        try:
            done[cfg["name"]] = await api.ensure_stream(cfg)
        except JetStreamError as e:
            if e.err_code != STORAGE_RESOURCES_EXCEEDED or fam.record or r.md_max_bytes <= 0:
                raise
            log.warning(
                "market data has no byte limit: nats-server cannot reserve [retention] md_max_bytes; lower it, "
                "or raise the server's max_file_store (default 75% of the disk's free space at its start)",
                stream=cfg["name"],
                md_max_bytes=r.md_max_bytes,
                error=str(e),
            )
            done[cfg["name"]] = await api.ensure_stream({**cfg, "max_bytes": -1})
    kv = decisions_kv_config(prefix, r)
    done[kv["name"]] = await api.ensure_stream(kv)
    return done
