"""Prometheus metrics of message flow. Labels are bounded: handler/consumer/projection names."""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS_PUBLISHED = Counter(
    "tapeline_events_published_total", "Events acknowledged by JetStream, by publisher role", ["role"]
)
EVENTS_DUPLICATE = Counter(
    "tapeline_events_duplicate_total", "Publishes JetStream dropped as duplicates (same event id)", ["role"]
)
PUBLISH_RETRIES = Counter(
    "tapeline_publish_retries_total",
    "Messages a publisher sends again, by role and reason: timeout (no ack in time), reconnect (acks lost "
    "with the connection), no_responders (JetStream not there: no stream, or a server stopping)",
    ["role", "reason"],
)
EVENTS_CONSUMED = Counter("tapeline_events_consumed_total", "Events processed, by consumer", ["consumer"])
EVENTS_FAILED = Counter(
    "tapeline_events_failed_total",
    "Messages that failed, by consumer and outcome (retry|dead)",
    ["consumer", "outcome"],
)
EVENTS_SKIPPED = Counter(
    "tapeline_events_skipped_total", "Events of an unknown (future) schema version, skipped", ["consumer"]
)
BATCH_SECONDS = Histogram(
    "tapeline_handler_batch_seconds",
    "Time to process one pulled batch, output published or committed, by consumer",
    ["consumer"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENT_LATENCY = Histogram(
    "tapeline_event_latency_seconds",
    "Time from an event being recorded (ts_init) to being processed, by consumer",
    ["consumer"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONSUMER_PENDING = Gauge(
    "tapeline_consumer_pending_messages", "Messages in the stream not yet delivered to the consumer", ["consumer"]
)
PROJECTION_CHECKPOINT = Gauge(
    "tapeline_projection_checkpoint_sequence",
    "Last stream sequence committed by a projection",
    ["projection", "stream"],
)
PROJECTION_LAG = Gauge(
    "tapeline_projection_lag_messages", "Stream messages not yet committed by a projection", ["projection", "stream"]
)
STORE_FULL = Counter(
    "tapeline_store_full_total",
    "Publishes JetStream refused because its store is full (err_code 10023/10047), by publisher role",
    ["role"],
)
PUBLISH_TIMEOUTS = Counter(
    "tapeline_publish_timeouts_total",
    "Publishes given up without acks (server unreachable, or its disk full), by publisher role",
    ["role"],
)
DISK_FULL = Counter(
    "tapeline_disk_full_total", "DuckDB commits that failed for lack of disk space, by projection", ["projection"]
)
PROJECTION_MEMORY = Gauge(
    "tapeline_projection_memory_bytes",
    "Memory DuckDB's buffer manager holds for a projection database (bounded by [projector] memory_limit_mb)",
    ["projection"],
)
STALLED = Gauge(
    "tapeline_stalled",
    "1 while a component waits for space (kind: store_full, publish_timeout, disk_full) to store its work",
    ["component", "kind"],
)


def serve_metrics(port: int, host: str = "") -> None:
    """Expose ``/metrics`` on loopback (``TAPELINE_METRICS_HOST`` to widen, e.g. in a container); 0 disables it."""
    if port:
        start_http_server(port, addr=host or os.environ.get("TAPELINE_METRICS_HOST", "127.0.0.1"))


COMPONENT_EVENTS = Counter(
    "tapeline_component_events_total",
    "Events a component counted by outcome (e.g. bars: late ticks; rejected input).",
    ["component", "outcome"],
)


_COMPONENT_GAUGES: dict[str, Gauge] = {}


def component_gauge(component: str, name: str) -> Gauge:
    """The gauge ``tapeline_<component>_<name>{key}`` a component's ``gauges[name]`` is mirrored into."""
    metric = f"tapeline_{component}_{name}"
    if metric not in _COMPONENT_GAUGES:
        _COMPONENT_GAUGES[metric] = Gauge(metric, f"{component}: current {name.replace('_', ' ')}, by key", ["key"])
    return _COMPONENT_GAUGES[metric]


def zero_consumer_counters(consumer: str) -> None:
    """Create a consumer's labelled series at 0, so panels and rate() read 0 rather than "No data"."""
    EVENTS_CONSUMED.labels(consumer)
    EVENTS_SKIPPED.labels(consumer)
    for outcome in ("retry", "dead"):
        EVENTS_FAILED.labels(consumer, outcome)


def zero_publisher_counters(role: str) -> None:
    """Create a publisher's labelled series at 0 (see :func:`zero_consumer_counters`)."""
    for c in (EVENTS_PUBLISHED, EVENTS_DUPLICATE, STORE_FULL, PUBLISH_TIMEOUTS):
        c.labels(role)
    for reason in ("timeout", "reconnect", "no_responders"):
        PUBLISH_RETRIES.labels(role, reason)
