"""Which processes run: handlers and projections wired onto the bus for one prefix.

``roles`` selects what this process runs ("handlers", "projector"), so the same code serves the
all-in-one demo and separate processes that fail, lag and scale independently.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from adapters.config import WatchdogConfig
from bus.publisher import Publisher
from bus.runtime import ConsumerRuntime, ReactionSink
from bus.topology import Retention, provision
from handlers.bars import BarAggregator
from handlers.base import Handler
from handlers.decision import DecisionSynthesis
from handlers.momentum import MomentumSignal
from handlers.watchdog import HeartbeatWatchdog
from projections.duckdb import ProjectionDb, ProjectionSink
from projections.query import QueryService
from projections.runtimes import projection_runtimes, vector_runtimes
from schemas.subjects import FAMILIES, StreamFamily
from tapeline.config import HandlersConfig

if TYPE_CHECKING:  # LanceDB and the model runtime take a second to import: only the vectors role pays it
    from projections.vectors import VectorSink

log = structlog.get_logger("tapeline")
ROLES = ("handlers", "projector", "vectors")


def build_handlers(cfg: HandlersConfig, watchdog: WatchdogConfig | None = None) -> list[Handler]:
    wd = watchdog or WatchdogConfig()
    return [
        BarAggregator(cfg.bar_intervals),
        MomentumSignal(window=cfg.momentum_window, interval=cfg.momentum_interval),
        DecisionSynthesis(weights=cfg.decision_weights, threshold=cfg.decision_threshold),
        HeartbeatWatchdog(wd.expected, missed_intervals=wd.missed_intervals),
    ]


def _by_family(subjects: Sequence[str]) -> dict[StreamFamily, list[str]]:
    out: dict[StreamFamily, list[str]] = defaultdict(list)
    for s in subjects:
        head = s.split(".", 1)[0]
        fam = next((f for f in FAMILIES if f.key == head), None)
        if fam is None:
            raise ValueError(f"subject {s!r} is in no stream family")
        out[fam].append(s)
    return out


def handler_runtimes(nc: Client, publisher: Publisher, prefix: str, handler: Handler) -> list[ConsumerRuntime]:
    sink = ReactionSink(handler, publisher)
    runtimes = []
    for fam, subjects in _by_family(handler.subjects).items():
        runtimes.append(
            ConsumerRuntime(
                nc,
                publisher,
                stream=fam.stream(prefix),
                durable=f"h_{handler.name}_{fam.key}",
                filter_subjects=[f"{prefix}.{s}" for s in subjects],
                sink=sink,
                ack_policy="all" if handler.warmup_s > 0 else "explicit",
                batch=1000,
                warmup=handler if handler.warmup_s else None,
                warmup_s=handler.warmup_s,
                ordered=handler.warmup_s > 0,
            )
        )
    return runtimes


def swap_subject(prefix: str) -> str:
    return f"{prefix}.svc.swap"


class Pipeline:
    """Start/stop a set of consumer runtimes as asyncio tasks, with a graceful drain."""

    def __init__(
        self,
        nc: Client,
        prefix: str,
        *,
        handlers: HandlersConfig,
        db_path: Path,
        roles: Sequence[str] = ("handlers", "projector"),
        vectors_path: Path | None = None,
        retention: Retention | None = None,
        watchdog: WatchdogConfig | None = None,
    ) -> None:
        bad = set(roles) - set(ROLES)
        if bad:
            raise ValueError(f"unknown role(s) {sorted(bad)}: choose from {ROLES}")
        self.nc = nc
        self.prefix = prefix
        self.handlers_cfg = handlers
        self.db_path = db_path
        self.vectors_path = vectors_path or db_path.parent / "vectors"  # as Settings.vectors_path
        self.vector_sinks: list[VectorSink] = []
        self.roles = tuple(roles)
        self.retention = retention
        self.watchdog = watchdog
        self.runtimes: list[ConsumerRuntime] = []
        self.sinks: list[ProjectionSink] = []
        self.handlers: list[Handler] = []
        self.db: ProjectionDb | None = None
        self.query: QueryService | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._projection: list[tuple[ConsumerRuntime, asyncio.Task[None]]] = []
        self._swap_sub: object = None
        self.publisher = Publisher(nc, prefix, role="pipeline")

    async def start(self) -> None:
        await provision(self.nc, self.prefix, self.retention)
        await self.publisher.start()
        if "handlers" in self.roles:
            self.handlers = build_handlers(self.handlers_cfg, self.watchdog)
            for h in self.handlers:
                self.runtimes += handler_runtimes(self.nc, self.publisher, self.prefix, h)
        if "vectors" in self.roles:
            from projections.embedder import TextEmbedder
            from projections.vectors import VectorStore

            store = VectorStore(self.vectors_path)
            embedder = TextEmbedder()
            for rt, vsink in vector_runtimes(self.nc, self.publisher, self.prefix, store, embedder):
                self.runtimes.append(rt)
                self.vector_sinks.append(vsink)
        self._tasks = [asyncio.create_task(rt.run(), name=rt.durable) for rt in self.runtimes]
        if "projector" in self.roles:
            self._open_projection()
            assert self.query is not None
            await self.query.start()
            self._swap_sub = await self.nc.subscribe(swap_subject(self.prefix), cb=self._on_swap)
        log.info("pipeline started", prefix=self.prefix, roles=self.roles, consumers=[r.durable for r in self.runtimes])

    def _open_projection(self) -> None:
        self.db = ProjectionDb(self.db_path)
        self.sinks = []
        for rt, sink in projection_runtimes(self.nc, self.publisher, self.prefix, self.db):
            task = asyncio.create_task(rt.run(), name=rt.durable)
            self._projection.append((rt, task))
            self.runtimes.append(rt)
            self._tasks.append(task)
            self.sinks.append(sink)
        if self.query is None:
            self.query = QueryService(self.nc, self.prefix, self.db.con)
        self.query.con = self.db.con

    async def _close_projection(self) -> None:
        for rt, _ in self._projection:
            rt.stop()
        await asyncio.gather(*(t for _, t in self._projection), return_exceptions=True)
        for rt, task in self._projection:
            self.runtimes.remove(rt)
            self._tasks.remove(task)
        self._projection = []
        if self.db:
            self.db.close()
            self.db = None

    async def swap(self, rebuilt: Path) -> None:
        """Atomically replace the live DuckDB file with a (verified) rebuild and resume from its checkpoints."""
        if not os.path.exists(rebuilt):  # noqa: ASYNC240 - one stat
            raise FileNotFoundError(f"no rebuild at {rebuilt}")
        await self._close_projection()
        os.replace(rebuilt, self.db_path)  # atomic on one filesystem
        self._open_projection()
        log.info("projection swapped", path=str(self.db_path), source=str(rebuilt))

    async def _on_swap(self, msg: Msg) -> None:
        try:
            await self.swap(Path(msg.data.decode()))
            await msg.respond(b"ok")
        except Exception as e:
            await msg.respond(f"error: {e}".encode())

    async def wait(self) -> None:
        """Until a runtime fails (re-raised) or all stop."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception():
                raise t.exception()  # type: ignore[misc]

    async def stop(self) -> None:
        if self._swap_sub is not None:
            await self._swap_sub.unsubscribe()  # type: ignore[attr-defined]
        for rt in self.runtimes:
            rt.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.query:
            await self.query.stop()
        await self.publisher.close()
        if self.db:
            self.db.close()
        log.info("pipeline stopped", prefix=self.prefix)
