"""The JetStream runner of the declared system (``tapeline.system``) for one prefix.

``selected`` picks what this process runs: roles (``handlers``, ``notifier``, ``projector``,
``vectors``) or single components by name, so the same code serves the all-in-one demo and
separate processes that fail, lag and scale independently. Feeds run as tasks, handlers and
gateways through :class:`bus.components.ComponentRunner`, read models as ordered consumers behind
a lease. Every consumer name comes from the declaration.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from tapeline.adapters.runner import run_feed
from tapeline.bus.components import ComponentRunner, snapshots_stream_config
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.lease import Lease, leases_stream_config
from tapeline.bus.publisher import Publisher
from tapeline.bus.runtime import ConsumerRuntime
from tapeline.bus.topology import Retention, provision
from tapeline.config import ProjectorConfig
from tapeline.projections.decision_index import decision_index_binding
from tapeline.projections.duckdb import LIVE_NATIVE_MIN_BYTES, DbLimits, ProjectionDb, ProjectionSink
from tapeline.projections.query import QueryService
from tapeline.projections.runtimes import Binding, projection_bindings, vector_bindings
from tapeline.schemas.components import Component, Feed, Gateway, Handler
from tapeline.system import ROLES, build, check_selection

if TYPE_CHECKING:  # LanceDB and the model runtime take a second to import: only the vectors role pays it
    from tapeline.projections.vectors import VectorSink

log = structlog.get_logger("tapeline")
LEASE_TTL_S = 15.0


def swap_subject(prefix: str) -> str:
    return f"{prefix}.svc.swap"


async def provision_system(nc: Client, prefix: str, retention: Retention | None = None) -> None:
    """Streams, the decisions bucket, and the leases and snapshots buckets the runner needs.

    ``retention`` goes to :func:`provision` as given: None there means no market-data byte cap
    (tests, what-if namespaces), so it is not replaced by the defaults here.
    """
    await provision(nc, prefix, retention)
    replicas = (retention or Retention()).replicas
    api = JetStreamApi(nc)
    await api.ensure_stream(leases_stream_config(prefix, LEASE_TTL_S, replicas))
    await api.ensure_stream(snapshots_stream_config(prefix, replicas))


class Pipeline:
    """Start/stop the selected part of the system as asyncio tasks, with a graceful drain."""

    def __init__(
        self,
        nc: Client,
        prefix: str,
        *,
        configs: Mapping[str, Any],
        db_path: Path,
        selected: Sequence[str] = ("handlers", "projector"),
        vectors_path: Path | None = None,
        retention: Retention | None = None,
        standby: bool = True,
        projector: ProjectorConfig | None = None,
    ) -> None:
        check_selection(selected)
        self.nc = nc
        self.prefix = prefix
        self.db_path = db_path
        self.vectors_path = vectors_path or db_path.parent / "vectors"  # as Settings.vectors_path
        self.selected = tuple(selected)
        self.retention = retention
        self.standby = standby
        p = projector or ProjectorConfig()  # tests and benchmarks run with the shipped defaults
        self.db_limits = DbLimits(p.memory_limit_mb, p.checkpoint_mb, p.threads)
        self.components: list[Component] = [c for c in build(configs, self.selected) if c.active()]
        self.runners: list[ComponentRunner] = []
        self.runtimes: list[ConsumerRuntime] = []  # read models (component runtimes live in their runners)
        self.sinks: list[ProjectionSink] = []
        self.vector_sinks: list[VectorSink] = []
        self.db: ProjectionDb | None = None
        self.query: QueryService | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._projection: list[tuple[ConsumerRuntime, asyncio.Task[None]]] = []
        self._leases: list[Lease] = []
        self._swap_sub: object = None
        self._stopping = False
        self.publisher = Publisher(nc, prefix, role="pipeline")

    @property
    def consumers(self) -> list[ConsumerRuntime]:
        """Every consumer runtime running now (handlers, gateways, read models)."""
        return [rt for r in self.runners for rt in r.runtimes] + self.runtimes

    async def start(self) -> None:
        await provision_system(self.nc, self.prefix, self.retention)
        await self.publisher.start()
        for c in self.components:
            if isinstance(c, Feed):
                self._tasks.append(asyncio.create_task(self._feed(c), name=c.name))
            elif isinstance(c, Handler | Gateway):
                runner = ComponentRunner(
                    self.nc, self.publisher, c, self.prefix, standby=self.standby, lease_ttl_s=LEASE_TTL_S
                )
                self.runners.append(runner)
                self._tasks.append(asyncio.create_task(runner.run(), name=c.name))
        if "vectors" in self.selected:
            from tapeline.models.embedder import TextEmbedder
            from tapeline.projections.vectors import VectorStore

            for b in vector_bindings(self.prefix, VectorStore(self.vectors_path), TextEmbedder()):
                self.vector_sinks.append(b.sink)
                self._start_read_model(b)
        if "projector" in self.selected:
            self._open_projection()
            assert self.query is not None
            await self.query.start()
            self._swap_sub = await self.nc.subscribe(swap_subject(self.prefix), cb=self._on_swap)
            # the per-(ticker, trade date) decision lookup in the decisions KV bucket
            self._start_read_model(Binding(*await decision_index_binding(self.nc, self.prefix)))
        await self._settled()
        log.info(
            "pipeline started",
            prefix=self.prefix,
            selected=self.selected,
            components=[c.name for c in self.components],
            consumers=[rt.durable for rt in self.consumers],
        )

    async def _settled(self) -> None:
        """Until every runner's consumers run (or wait as standbys); a runner that failed raises."""
        tasks = {t.get_name(): t for t in self._tasks}
        for r in self.runners:
            task = tasks[r.component.name]
            settled = asyncio.create_task(r.settled.wait())
            await asyncio.wait([settled, task], return_when=asyncio.FIRST_COMPLETED)
            settled.cancel()
            if task.done() and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]

    async def _feed(self, feed: Feed) -> None:
        await run_feed(feed, self.publisher)

    def _start_read_model(self, b: Binding) -> tuple[ConsumerRuntime, asyncio.Task[None]]:
        rt = ConsumerRuntime(self.nc, self.publisher, b.spec, b.sink, start_seq=b.start_seq)
        self.runtimes.append(rt)
        task = asyncio.create_task(self._leased(rt), name=b.spec.durable)
        self._tasks.append(task)
        return rt, task

    async def _leased(self, rt: ConsumerRuntime) -> None:
        """Run an ordered read-model consumer while holding its lease (a standby waits)."""
        lease = Lease(self.nc, self.prefix, rt.durable, ttl_s=LEASE_TTL_S)
        if not await lease.acquire(wait=self.standby, stopping=lambda: self._stopping or rt.loop.stopping):
            return
        keeper = asyncio.create_task(lease.keep())
        run = asyncio.create_task(rt.run())
        try:
            done, _ = await asyncio.wait([run, keeper], return_when=asyncio.FIRST_COMPLETED)
            if keeper in done:
                rt.stop()
                await run
                keeper.result()  # raises LeaseLost
            await run
        finally:
            keeper.cancel()
            await lease.release()

    def _open_projection(self) -> None:
        # pyarrow imports pandas the first time it builds an array (~0.35 s of CPU): pay it now, not in
        # the first commit, where it competed with the handlers' first chains for the cores
        pa.array([0])
        self.db = ProjectionDb(self.db_path, limits=self.db_limits)
        self.sinks = []
        for b in projection_bindings(
            self.prefix, self.db, alerts=self.publisher, native=True, native_min_bytes=LIVE_NATIVE_MIN_BYTES
        ):
            self._projection.append(self._start_read_model(b))
            self.sinks.append(b.sink)
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
        """Until a task fails (re-raised) or all stop."""
        if not self._tasks:
            await asyncio.Event().wait()
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if not t.cancelled() and t.exception():
                raise t.exception()  # type: ignore[misc]

    def request_stop(self) -> None:
        """Stop waiting (standbys) and consuming; :meth:`stop` then drains."""
        self._stopping = True
        for r in self.runners:
            r.stop()
        for rt in self.runtimes:
            rt.stop()

    async def stop(self) -> None:
        self._stopping = True
        if self._swap_sub is not None:
            await self._swap_sub.unsubscribe()  # type: ignore[attr-defined]
        for r in self.runners:
            r.stop()
        for rt in self.runtimes:
            rt.stop()
        for t in self._tasks:
            if t.get_name() in {c.name for c in self.components if isinstance(c, Feed)}:
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.query:
            await self.query.stop()
        await self.publisher.close()
        for c in self.components:
            close = getattr(c, "aclose", None)
            if close is not None:
                await close()
        if self.db:
            self.db.close()
        log.info("pipeline stopped", prefix=self.prefix)


__all__ = ["ROLES", "Pipeline", "provision_system", "swap_subject"]
