"""LanceDB read models (DESIGN §5): market-condition vectors and text embeddings, with checkpoints.

Tables
------
- ``market_states``: one row per :class:`~schemas.events.Enrichment` (INTEL stream): the market feature
  vector (:data:`~schemas.features.MARKET_FEATURES`) of a bar, keyed by the bar's id (the enrichment's
  ``causation_id``). The ``enrichment`` handler computes the features; its warm-up rows (too little
  history, ``warmup=True``, no features) are skipped, so every row is "warm"; this read model only stores them.
- ``market_returns``: one row per bar (every symbol and interval, MD stream), with the bar's OHLCV and the
  forward returns ``fwd_ret_{1,5,20}``, filled in when bar t+1, t+5, t+20 arrive (``close[t+h] / close[t]
  - 1``, the bar's ``close`` field as published). It has no vector column.
- ``news_vectors``: one row per :class:`~schemas.events.NewsItem`, the title (plus summary, if any)
  embedded with the pinned all-MiniLM-L6-v2 (:mod:`models.embedder`).
- ``decision_vectors``: one row per :class:`~schemas.events.DecisionEnvelope` whose synthesis has
  reasoning, the reasoning embedded.

Each table reads exactly one stream. What happened after a market state, news item or decision is not
stored on its row: :func:`similar_situations` and :func:`search_news` join it from ``market_returns`` by
bar id or time at query time, so it is always current. (One table fed by two streams would need a join
that holds whatever arrives first across two checkpoints; LanceDB has no cross-table transaction to make
that crash-safe, and rebuilds and ``--verify`` work per table and stream.)

Read-model discipline (the same as the DuckDB tables)
----------------------------------------------------
Each table is a declaration (:class:`TableSpec`: name, events, schema, version, schema hash). Its
checkpoint records the schema hash and the pinned embedding model; on start a table whose stored hash,
columns, model or stream differ from the declaration is refused (:class:`~projections.table.ReadModelChanged`)
until it is rebuilt: delete its ``<name>.lance`` directory and it backfills from the stream, as a table
added to a stream with history does. :class:`VectorSink` dead-letters a message whose rows cannot be
built (poison) and lets the runtime acknowledge messages only once their rows are committed
(``committed_seq``); it commits at least every few seconds, and on idle and stop.

Checkpoints and crash safety
----------------------------
LanceDB commits each ``add`` atomically but has no transaction across tables, so a checkpoint cannot be
written in the same commit as the rows. Every row carries the ``stream_seq`` of the event that produced
it, and the sidecar table ``_checkpoints`` holds (table, stream, last_seq, model, schema_hash). A batch is
written as add rows -> update earlier rows' forward returns -> write checkpoint. On start,
:meth:`VectorStore.recover` deletes rows above the checkpoint (a batch that crashed before its checkpoint),
and the market-state projection recomputes the forward returns of each series' tail from the rows present,
so a crash at any point loses nothing and duplicates nothing; the stream redelivers from ``last_seq + 1``.
A ``_checkpoints`` written before schema hashes existed gets the column on open.
The alternative, ``merge_insert`` on the event id for every batch, is idempotent without the delete but
costs a join per batch; ``benchmarks/bench_lancedb.py`` measures both (add + checkpoint ~1.3x faster
at 50k rows, and the gap grows with the table; recover() on start takes a few ms).

Vector search
-------------
Below :data:`INDEX_MIN_ROWS` rows a table is searched exhaustively (exact; ~80-100 ms for 100k x 384-d on
2 cores, ~8 ms for 100k x 12-d, so the text tables get an index at 20k rows and market_states at 100k).
Above it :meth:`VectorStore.ensure_index` builds IVF_SQ with sqrt(n) partitions (≈9-12 s for 100k x
384-d; p50 ≈ 3.5 ms with 20 probes; recall@10 0.95-0.99 on clustered, embedding-like data, ~0.2 on uniform
random 384-d noise); IVF_PQ took ~105 s to build and had worse recall. Rows added after the index are
searched exhaustively until :meth:`VectorStore.optimize` folds them in.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from numpy.typing import NDArray

from tapeline.bus.metrics import PROJECTION_CHECKPOINT, PROJECTION_LAG
from tapeline.bus.reader import Received
from tapeline.bus.runtime import Failure
from tapeline.models.embedder import DIM as TEXT_DIM
from tapeline.models.embedder import TextEmbedder
from tapeline.projections.table import ReadModelChanged, schema_hash
from tapeline.schemas.events import Bar, DecisionEnvelope, Enrichment, Event, NewsItem
from tapeline.schemas.features import MARKET_DIM, MARKET_FEATURES

log = structlog.get_logger(__name__)

HORIZONS: tuple[int, ...] = (1, 5, 20)
FWD_COLUMNS: tuple[str, ...] = tuple(f"fwd_ret_{h}" for h in HORIZONS)
TAIL = HORIZONS[-1] + 1  # bars of a series whose forward returns may still change
MIN_BATCH_ROWS = 1000
INDEX_MIN_ROWS: dict[str, int] = {"market_states": 100_000, "news_vectors": 20_000, "decision_vectors": 20_000}
"""Row counts above which a table gets an ANN index (exhaustive search stays under ~20 ms below them)."""
CHECKPOINTS = "_checkpoints"
MARKET_STATES = "market_states"
MARKET_RETURNS = "market_returns"
NEWS_VECTORS = "news_vectors"
DECISION_VECTORS = "decision_vectors"


# ---------------------------------------------------------------- schemas


def _vec(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)


def market_schema(dim: int = MARKET_DIM) -> pa.Schema:
    return pa.schema(
        [
            pa.field("bar_event_id", pa.string(), nullable=False),
            pa.field("symbol", pa.string(), nullable=False),
            pa.field("interval", pa.string(), nullable=False),
            pa.field("ts_event", pa.int64(), nullable=False),
            pa.field("stream_seq", pa.int64(), nullable=False),
            pa.field("vector", _vec(dim)),
        ]
    )


def returns_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("bar_event_id", pa.string(), nullable=False),
            pa.field("symbol", pa.string(), nullable=False),
            pa.field("interval", pa.string(), nullable=False),
            pa.field("ts_event", pa.int64(), nullable=False),
            pa.field("stream_seq", pa.int64(), nullable=False),
            pa.field("open", pa.float64()),
            pa.field("high", pa.float64()),
            pa.field("low", pa.float64()),
            pa.field("close", pa.float64()),
            pa.field("volume", pa.float64()),
            *[pa.field(c, pa.float64(), nullable=True) for c in FWD_COLUMNS],
        ]
    )


def news_schema(dim: int = TEXT_DIM) -> pa.Schema:
    return pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("stream_seq", pa.int64(), nullable=False),
            pa.field("ts_event", pa.int64(), nullable=False),
            pa.field("provider", pa.string()),
            pa.field("title", pa.string()),
            pa.field("tickers", pa.list_(pa.string())),
            pa.field("vector", _vec(dim)),
        ]
    )


def decision_schema(dim: int = TEXT_DIM) -> pa.Schema:
    return pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("stream_seq", pa.int64(), nullable=False),
            pa.field("symbol", pa.string(), nullable=False),
            pa.field("ts_event", pa.int64(), nullable=False),
            pa.field("verdict", pa.string()),
            pa.field("reasoning", pa.string()),
            pa.field("vector", _vec(dim)),
        ]
    )


CHECKPOINT_SCHEMA = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),
        pa.field("stream", pa.string(), nullable=False),
        pa.field("last_seq", pa.int64(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("written_ns", pa.int64(), nullable=False),
        pa.field("schema_hash", pa.string(), nullable=False),  # last: older checkpoint tables get it appended
    ]
)


@dataclass(frozen=True)
class TableSpec:
    """A LanceDB read model's declaration: events it reads, schema and version; key, metric, index threshold
    (no metric: a table without vectors, e.g. ``market_returns``)."""

    name: str
    events: tuple[type[Event], ...]
    key: str
    schema: pa.Schema
    metric: Literal["l2", "cosine"] | None = None
    index_min_rows: int = 0
    version: int = 1  # bump when rows change meaning without a schema change: forces a rebuild
    schema_hash: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema_hash", schema_hash(self.version, _fields(self.schema)))


def _fields(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    return [(f.name, f.type) for f in schema]


def vector_tables(market_dim: int = MARKET_DIM, text_dim: int = TEXT_DIM) -> dict[str, TableSpec]:
    """The LanceDB read models (the dimensions are parameters for tests and benchmarks)."""
    specs = (
        TableSpec(
            MARKET_STATES,
            (Enrichment,),
            "bar_event_id",
            market_schema(market_dim),
            "l2",
            INDEX_MIN_ROWS[MARKET_STATES],
            version=2,  # 2: rows from Enrichment events; OHLCV and forward returns moved to market_returns
        ),
        TableSpec(NEWS_VECTORS, (NewsItem,), "event_id", news_schema(text_dim), "cosine", INDEX_MIN_ROWS[NEWS_VECTORS]),
        TableSpec(
            DECISION_VECTORS,
            (DecisionEnvelope,),
            "event_id",
            decision_schema(text_dim),
            "cosine",
            INDEX_MIN_ROWS[DECISION_VECTORS],
        ),
        TableSpec(MARKET_RETURNS, (Bar,), "bar_event_id", returns_schema()),
    )
    return {s.name: s for s in specs}


@dataclass(frozen=True)
class Checkpoint:
    """Last stream sequence whose rows are committed, the embedding model and the schema that wrote them."""

    table: str
    stream: str = ""
    last_seq: int = 0
    model: str = ""
    schema_hash: str = ""  # empty: written before schema hashes existed


def vector_column(vectors: NDArray[np.float32], dim: int) -> pa.FixedSizeListArray:
    """An Arrow fixed-size-list column from an ``(n, dim)`` float32 array (zero-copy)."""
    flat = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dim)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# ---------------------------------------------------------------- the store

REOPEN_AFTER_COMPACTION = True
"""Reconnect and reopen the tables after each compaction; a flag so ``benchmarks/bench_vector_memory.py``
can compare (a LanceDB connection's memory grows with the versions written through its handles)."""
TRIM_AFTER_COMPACTION = True
"""``malloc_trim(0)`` after each compaction: glibc hands freed pages of its heaps back to the kernel."""


def _trim_heap() -> None:
    """Return free glibc heap pages to the kernel (no-op where the C library has no ``malloc_trim``)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


class VectorStore:
    """A LanceDB directory holding the vector tables and their checkpoints. Throw it away to rebuild."""

    def __init__(self, path: Path | str, *, market_dim: int = MARKET_DIM, text_dim: int = TEXT_DIM) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._db = lancedb.connect(str(self.path))
        self.specs = vector_tables(market_dim, text_dim)
        self._tables: dict[str, Any] = {}
        # the tables of one process commit from worker threads and share the checkpoints table: a
        # compaction must not race a checkpoint write, so writes and compactions take turns
        self._writing = threading.Lock()
        self._opening = threading.Lock()  # two threads opening one table would make two handles
        if self.exists(CHECKPOINTS) and "schema_hash" not in self.table(CHECKPOINTS).schema.names:
            with self._writing:  # written before schema hashes existed
                self._writable(CHECKPOINTS).add_columns({"schema_hash": "''"})

    def exists(self, name: str) -> bool:
        return (self.path / f"{name}.lance").is_dir()

    def rebuild_fix(self, name: str) -> str:
        """How to rebuild one vector table: it backfills from its stream when it is missing."""
        return f"stop the vectors role and delete {self.path / f'{name}.lance'}; it rebuilds from the stream on start"

    def table(self, name: str) -> Any:
        """The LanceDB table ``name``, created empty on first use (an existing one opens as it is).

        For reads. A write takes its handle while it holds ``_writing`` (:meth:`_writable`): compaction
        swaps the handles under that lock, and a handle opened without a read-consistency interval does
        not see writes made through another one.
        """
        tbl = self._tables.get(name)
        if tbl is None:
            with self._opening:
                tbl = self._tables.get(name)
                if tbl is None:
                    tbl = self._tables[name] = self._open(name)
        return tbl

    def _open(self, name: str) -> Any:
        if self.exists(name):
            return self._db.open_table(name)
        schema = CHECKPOINT_SCHEMA if name == CHECKPOINTS else self.specs[name].schema
        return self._db.create_table(name, schema=schema, exist_ok=True)

    def _writable(self, name: str) -> Any:
        """The handle to write ``name`` through; the caller holds ``_writing``."""
        assert self._writing.locked()
        return self.table(name)

    # -- checkpoints

    def checkpoint(self, name: str) -> Checkpoint:
        rows = self.scan(CHECKPOINTS, None, where=f"table = {_quote(name)}").to_pylist()
        if not rows:
            return Checkpoint(name)
        r = rows[0]
        return Checkpoint(name, r["stream"], int(r["last_seq"]), r["model"], r["schema_hash"])

    def write_checkpoint(self, name: str, *, stream: str, last_seq: int, model: str = "") -> None:
        """Record ``last_seq`` for ``name`` (the caller holds ``_writing``)."""
        row = pa.table(
            {
                "table": [name],
                "stream": [stream],
                "last_seq": [last_seq],
                "model": [model],
                "written_ns": [time.time_ns()],
                "schema_hash": [self.specs[name].schema_hash],
            },
            schema=CHECKPOINT_SCHEMA,
        )
        self._writable(CHECKPOINTS).merge_insert(
            "table"
        ).when_matched_update_all().when_not_matched_insert_all().execute(row)

    def check(self, name: str) -> Checkpoint:
        """The checkpoint, once the table is known to match its declaration (else :class:`ReadModelChanged`).

        A missing table starts from 0 whatever its old checkpoint said: deleting it is how it is rebuilt.
        """
        spec = self.specs[name]
        cp = self.checkpoint(name)
        if not self.exists(name):
            if cp.last_seq:
                with self._writing:
                    self._writable(CHECKPOINTS).delete(f"table = {_quote(name)}")
            return Checkpoint(name)
        stored = self.shape_hash(cp)
        if stored != spec.schema_hash:
            raise ReadModelChanged(name, stored, spec.schema_hash, fix=self.rebuild_fix(name))
        return cp

    def shape_hash(self, cp: Checkpoint) -> str:
        """The schema hash an existing table's rows were written under, to compare with its declaration.

        The stored one, unless the table's columns differ from the declaration (then theirs); a checkpoint
        from before hashes existed stands for version 1 of the columns the table has.
        """
        spec = self.specs[cp.table]
        actual = _fields(self.table(cp.table).schema)
        stored = cp.schema_hash or schema_hash(1, actual)
        if stored == spec.schema_hash and actual != _fields(spec.schema):
            stored = schema_hash(spec.version, actual)
        return stored

    def recover(self, name: str) -> Checkpoint:
        """Drop rows above the checkpoint (a batch whose checkpoint never landed); return the checkpoint."""
        cp = self.check(name)
        stray = self.count(name, f"stream_seq > {cp.last_seq}")
        if stray:
            with self._writing:
                self._writable(name).delete(f"stream_seq > {cp.last_seq}")
            log.warning("vector_rows_above_checkpoint_dropped", table=name, rows=stray, checkpoint=cp.last_seq)
        return cp

    # -- writes

    def commit(
        self,
        name: str,
        rows: pa.Table | None,
        *,
        stream: str,
        last_seq: int,
        model: str = "",
        updates: pa.Table | None = None,
    ) -> None:
        """Add ``rows``, apply ``updates`` (partial rows matched on the table's key), then checkpoint."""
        spec = self.specs[name]
        with self._writing:
            tbl = self._writable(name)
            if rows is not None and rows.num_rows:
                tbl.add(rows.select(spec.schema.names).cast(spec.schema))
            if updates is not None and updates.num_rows:
                tbl.merge_insert(spec.key).when_matched_update_all().execute(updates)
            self.write_checkpoint(name, stream=stream, last_seq=last_seq, model=model)

    # -- reads

    def count(self, name: str, where: str | None = None) -> int:
        return int(self.table(name).count_rows(where))

    def scan(self, name: str, columns: Sequence[str] | None, *, where: str | None = None) -> pa.Table:
        """All rows (optionally filtered), only ``columns`` (None: all). Not for vector search."""
        q = self.table(name).search()
        if where:
            q = q.where(where)
        if columns is not None:
            q = q.select(list(columns))
        result: pa.Table = q.limit(None).to_arrow()
        return result

    def search(
        self,
        name: str,
        vector: Sequence[float] | NDArray[np.float32],
        k: int = 10,
        *,
        where: str | None = None,
        columns: Sequence[str] | None = None,
        nprobes: int = 20,
    ) -> list[dict[str, Any]]:
        """The ``k`` nearest rows to ``vector`` (``_distance`` ascending), filtered before ranking."""
        spec = self.specs[name]
        if spec.metric is None:
            raise ValueError(f"{name} has no vectors to search")
        cols = list(columns) if columns is not None else [n for n in spec.schema.names if n != "vector"]
        q = self.table(name).search(np.asarray(vector, dtype=np.float32)).distance_type(spec.metric)
        q = q.nprobes(nprobes)
        if where:
            q = q.where(where, prefilter=True)
        rows: list[dict[str, Any]] = q.select([*cols, "_distance"]).limit(k).to_arrow().to_pylist()
        return rows

    # -- maintenance

    def has_index(self, name: str) -> bool:
        return any("vector" in ix.columns for ix in self.table(name).list_indices())

    def ensure_index(self, name: str, *, min_rows: int | None = None) -> bool:
        """Build the ANN index once the table has ``min_rows`` rows; True if an index exists afterwards."""
        from lancedb.index import IvfSq

        spec = self.specs[name]
        if spec.metric is None:
            raise ValueError(f"{name} has no vectors to index")
        if self.has_index(name):
            return True
        n = self.count(name)
        if n < (spec.index_min_rows if min_rows is None else min_rows):
            return False
        t0 = time.perf_counter()
        parts = max(1, min(1024, int(math.sqrt(n))))
        with self._writing:  # once per table: the other tables' commits wait these seconds
            self._writable(name).create_index("vector", config=IvfSq(distance_type=spec.metric, num_partitions=parts))
        log.info("vector_index_built", table=name, rows=n, partitions=parts, seconds=round(time.perf_counter() - t0, 2))
        return True

    def optimize(self, name: str, *, keep_versions: timedelta = timedelta(minutes=10)) -> None:
        """Compact small fragments, fold new rows into the index, drop versions older than ``keep_versions``.

        Then every table gets a fresh handle on a fresh connection (a long-lived connection keeps memory
        for the versions written through it: +96 MiB per 1,000 commits, +49 reconnected) and the C heap
        is trimmed (see :data:`REOPEN_AFTER_COMPACTION`).
        """
        with self._writing:
            for n in (name, CHECKPOINTS):
                self._writable(n).optimize(cleanup_older_than=keep_versions)
            if REOPEN_AFTER_COMPACTION:  # a new connection: the old one's caches go with its last handle
                with self._opening:  # no handle opened before this lands in the cache after it
                    self._db = lancedb.connect(str(self.path))
                    self._tables.clear()  # every table reopens on next use, at its latest version
        if TRIM_AFTER_COMPACTION:
            _trim_heap()

    def checksum(self, name: str, upto_seq: int | None = None) -> str:
        """``"<rows>:<sha256 prefix>"`` over rows sorted by key: key, vector rounded to 1e-4 (tables with
        vectors), forward returns (``market_returns``).

        Equal for two builds of the same events (embeddings are bit-reproducible on one machine; the
        rounding absorbs last-bit differences between CPUs in all but rare cases). Index and fragment
        layout do not enter it.
        """
        spec = self.specs[name]
        vector = ["vector"] if spec.metric is not None else []
        extra = list(FWD_COLUMNS) if name == MARKET_RETURNS else []
        where = f"stream_seq <= {int(upto_seq)}" if upto_seq is not None else None
        t = self.scan(name, [spec.key, *vector, *extra], where=where)
        h = hashlib.sha256(f"{name}:{t.num_rows}".encode())
        if t.num_rows:
            t = t.take(pc.sort_indices(t, [(spec.key, "ascending")]))
            for key in t[spec.key].to_pylist():
                h.update(key.encode())
                h.update(b"\0")
            if vector:
                vec = t["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
                h.update((np.round(vec.astype(np.float64), 4) + 0.0).astype(np.float32).tobytes())
            for col in extra:
                vals = t[col].to_numpy(zero_copy_only=False).astype(np.float64)
                h.update((np.round(vals, 10) + 0.0).tobytes())  # nulls are NaN: hashed as such
        return f"{t.num_rows}:{h.hexdigest()[:32]}"


# ---------------------------------------------------------------- projections


class VectorProjection:
    """Buffers rows from a stream's events and commits them in batches with a checkpoint.

    Drive it with ``start()`` (returns the checkpoint; resume the consumer at ``+1``), ``apply(seq, ev)``
    per message, and ``flush()`` after each fetch (commits once :attr:`batch_rows` rows wait) or
    ``flush(force=True)`` when idle or stopping. Acknowledge messages only up to the returned sequence.
    """

    table: ClassVar[str]

    def __init__(self, store: VectorStore, *, stream: str, batch_rows: int = MIN_BATCH_ROWS, model: str = "") -> None:
        self.store = store
        self.stream = stream
        self.batch_rows = max(1, batch_rows)
        self.model = model
        self._checkpoint = 0
        self._seen = 0  # highest sequence applied (rows may still be buffered)
        self._started = False
        self._torn = False  # a commit failed after it may have added rows: recover before the retry

    @property
    def checkpoint(self) -> int:
        return self._checkpoint

    @property
    def pending(self) -> int:
        """Rows waiting for the next commit."""
        raise NotImplementedError

    @property
    def seen(self) -> int:
        """Highest sequence applied (its rows may still be buffered)."""
        return self._seen

    def start(self) -> int:
        cp = self.store.check(self.table)
        fix = self.store.rebuild_fix(self.table)
        if cp.last_seq and cp.model and self.model and cp.model != self.model:
            raise ReadModelChanged(self.table, cp.model, self.model, what="model", fix=fix)
        if cp.last_seq and cp.stream and cp.stream != self.stream:
            raise ReadModelChanged(self.table, cp.stream, self.stream, what="stream", fix=fix)
        cp = self.store.recover(self.table)
        self._checkpoint = self._seen = cp.last_seq
        self._restore()
        self._started = True
        return cp.last_seq

    def _restore(self) -> None:
        """Rebuild in-memory state from the committed rows (after :meth:`VectorStore.recover`)."""

    def apply(self, seq: int, event: Event) -> None:
        if not self._started:
            raise RuntimeError("call start() first")
        if seq <= self._checkpoint or seq < self._seen:
            return  # at or below the checkpoint (a redelivery): already projected
        self._seen = seq  # several events may share one sequence (a batched message)
        if isinstance(event, self.store.specs[self.table].events):
            self._take(seq, event)

    def advance(self, seq: int) -> None:
        """Count ``seq`` as applied even if it made no row (skipped, dead-lettered): the checkpoint covers it."""
        self._seen = max(self._seen, seq)

    def _take(self, seq: int, event: Event) -> None:
        raise NotImplementedError

    def flush(self, *, force: bool = False) -> int:
        """Commit if enough rows wait (or ``force``); return the committed sequence."""
        if self._seen == self._checkpoint or (not force and self.pending < self.batch_rows):
            return self._checkpoint
        t0 = time.perf_counter()
        rows, updates = self._build()
        if self._torn:  # the last commit failed half-way: its rows may be in, above the checkpoint
            self.store.recover(self.table)
        self._torn = True
        self.store.commit(self.table, rows, stream=self.stream, last_seq=self._seen, model=self.model, updates=updates)
        self._torn = False
        self._committed()
        log.debug(
            "vector_batch_committed",
            table=self.table,
            rows=0 if rows is None else rows.num_rows,
            updates=0 if updates is None else updates.num_rows,
            last_seq=self._seen,
            ms=round((time.perf_counter() - t0) * 1000, 1),
        )
        self._checkpoint = self._seen
        return self._checkpoint

    def _build(self) -> tuple[pa.Table | None, pa.Table | None]:
        raise NotImplementedError

    def _committed(self) -> None:
        raise NotImplementedError

    def run(self, events: Iterable[tuple[int, Event]]) -> int:
        """Project a whole sequence of (stream_seq, event) — a rebuild — and commit the tail."""
        if not self._started:
            self.start()
        for seq, ev in events:
            if seq > self._seen and self.pending >= self.batch_rows:
                self.flush()  # only between messages: a checkpoint never splits a batched message
            self.apply(seq, ev)
        return self.flush(force=True)


def news_text(item: NewsItem) -> str:
    """What gets embedded for a news item: the title, and the summary when the provider sent one."""
    return f"{item.title}. {item.summary}" if item.summary else item.title


class NewsVectors(VectorProjection):
    """``news_vectors``: one embedded row per NewsItem."""

    table = NEWS_VECTORS

    def __init__(
        self, store: VectorStore, embedder: TextEmbedder, *, stream: str = "NEWS", batch_rows: int = MIN_BATCH_ROWS
    ) -> None:
        super().__init__(store, stream=stream, batch_rows=batch_rows, model=embedder.version)
        self.embedder = embedder
        self._buf: list[tuple[int, NewsItem]] = []
        self._ids: set[str] = set()  # a message redelivered before the commit is not buffered twice

    @property
    def pending(self) -> int:
        return len(self._buf)

    def _take(self, seq: int, event: Event) -> None:
        if isinstance(event, NewsItem) and event.event_id not in self._ids:
            self._ids.add(event.event_id)
            self._buf.append((seq, event))

    def _build(self) -> tuple[pa.Table | None, pa.Table | None]:
        if not self._buf:
            return None, None
        items = [e for _, e in self._buf]
        vecs = self.embedder.embed([news_text(e) for e in items])
        spec = self.store.specs[self.table]
        return pa.table(
            {
                "event_id": [e.event_id for e in items],
                "stream_seq": [s for s, _ in self._buf],
                "ts_event": [e.ts_event for e in items],
                "provider": [e.provider for e in items],
                "title": [e.title for e in items],
                "tickers": [list(e.tickers) for e in items],
                "vector": vector_column(vecs, self.embedder.dim),
            },
            schema=spec.schema,
        ), None

    def _committed(self) -> None:
        self._buf.clear()
        self._ids.clear()


class DecisionVectors(VectorProjection):
    """``decision_vectors``: the reasoning of each DecisionEnvelope, embedded (empty reasoning: no row)."""

    table = DECISION_VECTORS

    def __init__(
        self, store: VectorStore, embedder: TextEmbedder, *, stream: str = "DECISION", batch_rows: int = MIN_BATCH_ROWS
    ) -> None:
        super().__init__(store, stream=stream, batch_rows=batch_rows, model=embedder.version)
        self.embedder = embedder
        self._buf: list[tuple[int, DecisionEnvelope]] = []
        self._ids: set[str] = set()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def _take(self, seq: int, event: Event) -> None:
        if (
            isinstance(event, DecisionEnvelope)
            and event.synthesis.reasoning.strip()
            and event.event_id not in self._ids
        ):
            self._ids.add(event.event_id)
            self._buf.append((seq, event))

    def _build(self) -> tuple[pa.Table | None, pa.Table | None]:
        if not self._buf:
            return None, None
        items = [e for _, e in self._buf]
        vecs = self.embedder.embed([e.synthesis.reasoning for e in items])
        return pa.table(
            {
                "event_id": [e.event_id for e in items],
                "stream_seq": [s for s, _ in self._buf],
                "symbol": [e.target.ticker for e in items],
                "ts_event": [e.ts_event for e in items],
                "verdict": [e.synthesis.verdict for e in items],
                "reasoning": [e.synthesis.reasoning for e in items],
                "vector": vector_column(vecs, self.embedder.dim),
            },
            schema=self.store.specs[self.table].schema,
        ), None

    def _committed(self) -> None:
        self._buf.clear()
        self._ids.clear()


class MarketStates(VectorProjection):
    """``market_states``: the feature vector of each :class:`~schemas.events.Enrichment`, keyed by its bar.

    Stores what the ``enrichment`` handler computed, nothing more: the vector is the enrichment's
    ``features`` in :data:`~schemas.features.MARKET_FEATURES` order. An enrichment without a
    ``causation_id`` (its bar) or with a feature missing cannot make a row: it is poison.
    """

    table = MARKET_STATES

    def __init__(self, store: VectorStore, *, stream: str = "INTEL", batch_rows: int = MIN_BATCH_ROWS) -> None:
        super().__init__(store, stream=stream, batch_rows=batch_rows, model=f"features-v1:{MARKET_DIM}")
        self._buf: list[tuple[int, Enrichment, NDArray[np.float32]]] = []
        self._ids: set[str] = set()  # a message redelivered before the commit is not buffered twice

    @property
    def pending(self) -> int:
        return len(self._buf)

    def _take(self, seq: int, event: Event) -> None:
        if not isinstance(event, Enrichment) or event.warmup or event.causation_id in self._ids:
            return
        if not event.causation_id:
            raise ValueError(f"enrichment {event.event_id} names no bar (causation_id)")
        missing = [n for n in MARKET_FEATURES if n not in event.features]
        if missing:
            raise ValueError(f"enrichment {event.event_id} lacks features {missing}")
        vec = np.array([event.features[n] for n in MARKET_FEATURES], dtype=np.float32)
        self._ids.add(event.causation_id)
        self._buf.append((seq, event, vec))

    def _build(self) -> tuple[pa.Table | None, pa.Table | None]:
        if not self._buf:
            return None, None
        b = self._buf
        return pa.table(
            {
                "bar_event_id": [e.causation_id for _, e, _ in b],
                "symbol": [e.symbol for _, e, _ in b],
                "interval": [e.interval for _, e, _ in b],
                "ts_event": [e.ts_event for _, e, _ in b],
                "stream_seq": [s for s, _, _ in b],
                "vector": vector_column(np.stack([v for _, _, v in b]), MARKET_DIM),
            },
            schema=self.store.specs[self.table].schema,
        ), None

    def _committed(self) -> None:
        self._buf.clear()
        self._ids.clear()


@dataclass(eq=False)
class _BarRow:
    bar_event_id: str
    symbol: str
    interval: str
    ts_event: int
    stream_seq: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    fwd: list[float | None] = field(default_factory=lambda: [None] * len(HORIZONS))
    committed: bool = False


def _fwd(later: float, now: float) -> float | None:
    """Simple forward return ``later / now - 1`` (None for a zero price)."""
    return later / now - 1 if now else None


class MarketReturns(VectorProjection):
    """``market_returns``: a row per bar, forward returns filled in as later bars arrive.

    Keeps the last :data:`TAIL` bars of each (symbol, interval) in memory; on start it reloads them
    from the table and recomputes their forward returns, which repairs a crash between the add and the
    update. Bars must arrive in time order per series; an older or repeated bar is skipped with a warning.
    """

    table = MARKET_RETURNS

    def __init__(self, store: VectorStore, *, stream: str = "MD", batch_rows: int = MIN_BATCH_ROWS) -> None:
        super().__init__(store, stream=stream, batch_rows=batch_rows)
        self._series: dict[tuple[str, str], deque[_BarRow]] = {}
        self._buf: list[_BarRow] = []
        self._dirty: dict[str, _BarRow] = {}

    @property
    def pending(self) -> int:
        return len(self._buf)

    def _restore(self) -> None:
        self._series.clear()
        self._buf.clear()
        self._dirty.clear()
        cols = [
            "bar_event_id",
            "symbol",
            "interval",
            "ts_event",
            "stream_seq",
            "open",
            "high",
            "low",
            "close",
            "volume",
            *FWD_COLUMNS,
        ]
        t = self.store.scan(self.table, cols)
        if not t.num_rows:
            return
        t = t.take(pc.sort_indices(t, [("symbol", "ascending"), ("interval", "ascending"), ("ts_event", "ascending")]))
        sym = t["symbol"].to_pylist()
        itv = t["interval"].to_pylist()
        ends = [i for i in range(1, len(sym)) if (sym[i], itv[i]) != (sym[i - 1], itv[i - 1])] + [len(sym)]
        start = 0
        for end in ends:
            tail = t.slice(max(start, end - TAIL), end - max(start, end - TAIL)).to_pylist()
            dq: deque[_BarRow] = deque(maxlen=TAIL)
            for r in tail:
                dq.append(
                    _BarRow(
                        r["bar_event_id"],
                        r["symbol"],
                        r["interval"],
                        r["ts_event"],
                        r["stream_seq"],
                        r["open"],
                        r["high"],
                        r["low"],
                        r["close"],
                        r["volume"],
                        [r[c] for c in FWD_COLUMNS],
                        committed=True,
                    )
                )
            rows = list(dq)
            for i, row in enumerate(rows):
                want = [_fwd(rows[i + hz].close, row.close) if i + hz < len(rows) else None for hz in HORIZONS]
                if want != row.fwd:
                    row.fwd = want
                    self._dirty[row.bar_event_id] = row
            self._series[(sym[start], itv[start])] = dq
            start = end
        if self._dirty:
            log.info("market_returns_repaired", rows=len(self._dirty))

    def _take(self, seq: int, event: Event) -> None:
        if not isinstance(event, Bar):
            return
        key = (event.symbol, event.interval)
        dq = self._series.get(key)
        if dq is None:
            dq = self._series[key] = deque(maxlen=TAIL)
        if dq and event.ts_event <= dq[-1].ts_event:
            log.warning("bar_out_of_order_skipped", symbol=event.symbol, interval=event.interval, seq=seq)
            return
        row = _BarRow(
            event.event_id,
            event.symbol,
            event.interval,
            event.ts_event,
            seq,
            event.open,
            event.high,
            event.low,
            event.close,
            event.volume,
        )
        dq.append(row)
        n = len(dq)
        for j, hz in enumerate(HORIZONS):
            if n > hz:
                prior = dq[n - 1 - hz]
                prior.fwd[j] = _fwd(event.close, prior.close)
                if prior.committed:
                    self._dirty[prior.bar_event_id] = prior
        self._buf.append(row)

    def _build(self) -> tuple[pa.Table | None, pa.Table | None]:
        spec = self.store.specs[self.table]
        rows = None
        if self._buf:
            b = self._buf
            cols: dict[str, Any] = {
                "bar_event_id": [r.bar_event_id for r in b],
                "symbol": [r.symbol for r in b],
                "interval": [r.interval for r in b],
                "ts_event": [r.ts_event for r in b],
                "stream_seq": [r.stream_seq for r in b],
                "open": [r.open for r in b],
                "high": [r.high for r in b],
                "low": [r.low for r in b],
                "close": [r.close for r in b],
                "volume": [r.volume for r in b],
            }
            for j, c in enumerate(FWD_COLUMNS):
                cols[c] = pa.array([r.fwd[j] for r in b], type=pa.float64())
            rows = pa.table(cols, schema=spec.schema)
        updates = None
        if self._dirty:
            d = list(self._dirty.values())
            ucols: dict[str, Any] = {"bar_event_id": [r.bar_event_id for r in d]}
            for j, c in enumerate(FWD_COLUMNS):
                ucols[c] = pa.array([r.fwd[j] for r in d], type=pa.float64())
            updates = pa.table(ucols)
        return rows, updates

    def _committed(self) -> None:
        for r in self._buf:
            r.committed = True
        self._buf.clear()
        self._dirty.clear()


# ---------------------------------------------------------------- queries the CLI calls


def _state_rows(store: VectorStore, symbol: str, at_ns: int | None, interval: str | None) -> pa.Table:
    where = f"symbol = {_quote(symbol)}"
    if interval:
        where += f" AND `interval` = {_quote(interval)}"
    if at_ns is not None:
        where += f" AND ts_event <= {int(at_ns)}"
    t = store.scan(MARKET_STATES, ["bar_event_id", "interval", "ts_event"], where=where)
    return t.take(pc.sort_indices(t, [("ts_event", "ascending")]))


def market_state_at(
    store: VectorStore, symbol: str, at_ns: int | None = None, *, interval: str | None = None
) -> dict[str, Any] | None:
    """The symbol's latest market state at or before ``at_ns`` (None: the latest), with its vector."""
    t = _state_rows(store, symbol, at_ns, interval)
    if not t.num_rows:
        return None
    bar_id = t["bar_event_id"][-1].as_py()
    rows = store.scan(MARKET_STATES, None, where=f"bar_event_id = {_quote(bar_id)}").to_pylist()
    return rows[0] if rows else None


def bar_outcomes(store: VectorStore, bar_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``close`` and forward returns of the given bars, from ``market_returns`` (bars not there yet: absent)."""
    if not bar_ids:
        return {}
    where = f"bar_event_id IN ({', '.join(_quote(b) for b in bar_ids)})"
    t = store.scan(MARKET_RETURNS, ["bar_event_id", "close", *FWD_COLUMNS], where=where)
    return {r.pop("bar_event_id"): r for r in t.to_pylist()}


def similar_situations(
    store: VectorStore, symbol: str, at_ns: int | None = None, k: int = 10, *, interval: str | None = None
) -> list[dict[str, Any]]:
    """The ``k`` past market states nearest to ``symbol``'s state at ``at_ns``, with their forward returns.

    Candidates are states of the same interval, any symbol, that ended at least 20 bars of ``symbol``
    before the query bar: their 20-bar outcome was known at the query time (no look-ahead), and the
    query's own overlapping windows, which are trivially similar, are excluded. Each row has
    ``symbol, interval, ts_event, close, fwd_ret_1, fwd_ret_5, fwd_ret_20, distance, bar_event_id``;
    close and returns are joined from ``market_returns`` (None while that bar is not projected yet).
    """
    t = _state_rows(store, symbol, at_ns, interval)
    if not t.num_rows:
        return []
    query = market_state_at(store, symbol, at_ns, interval=interval)
    if query is None:
        return []
    ts = t["ts_event"].to_numpy()
    horizon = HORIZONS[-1]
    cutoff = int(ts[-1 - horizon]) if len(ts) > horizon else int(ts[0]) - 1
    where = f"`interval` = {_quote(query['interval'])} AND ts_event <= {cutoff}"
    cols = ["symbol", "interval", "ts_event", "bar_event_id"]
    found = store.search(MARKET_STATES, query["vector"], k, where=where, columns=cols)
    outcomes = bar_outcomes(store, [r["bar_event_id"] for r in found])
    rows = []
    for r in found:
        known = outcomes.get(r["bar_event_id"], {})
        rows.append(
            {
                "symbol": r["symbol"],
                "interval": r["interval"],
                "ts_event": r["ts_event"],
                "close": known.get("close"),
                **{c: known.get(c) for c in FWD_COLUMNS},
                "bar_event_id": r["bar_event_id"],
                "distance": float(r["_distance"]),
            }
        )
    return rows


def forward_returns_after(
    store: VectorStore, symbol: str, ts_ns: int, *, interval: str | None = None
) -> dict[str, Any] | None:
    """Forward returns from the first bar of ``symbol`` that closed at or after ``ts_ns`` (None if no bar yet)."""
    where = f"symbol = {_quote(symbol)} AND ts_event >= {int(ts_ns)}"
    if interval:
        where += f" AND `interval` = {_quote(interval)}"
    t = store.scan(MARKET_RETURNS, ["interval", "ts_event", *FWD_COLUMNS], where=where)
    if not t.num_rows:
        return None
    first: dict[str, Any] = t.take([int(pc.index(t["ts_event"], pc.min(t["ts_event"])).as_py())]).to_pylist()[0]
    return {"symbol": symbol, "bar_ts": first["ts_event"], **{c: first[c] for c in FWD_COLUMNS}}


def search_news(store: VectorStore, embedder: TextEmbedder, text: str, k: int = 10) -> list[dict[str, Any]]:
    """News whose meaning is nearest to ``text``: ``event_id, ts_event, provider, title, tickers, score``
    (cosine similarity, 1 is identical) and, when bars of the first ticker exist, ``fwd_symbol`` and its
    ``fwd_ret_{1,5,20}`` from the first bar closing after the news.
    """
    vec = embedder.embed([text])[0]
    rows = store.search(NEWS_VECTORS, vec, k)
    for r in rows:
        r["score"] = 1.0 - float(r.pop("_distance"))
        r.pop("stream_seq", None)
        fwd = forward_returns_after(store, r["tickers"][0], r["ts_event"]) if r["tickers"] else None
        r["fwd_symbol"] = fwd["symbol"] if fwd else None
        for c in FWD_COLUMNS:
            r[c] = fwd[c] if fwd else None
    return rows


def search_decisions(store: VectorStore, embedder: TextEmbedder, text: str, k: int = 10) -> list[dict[str, Any]]:
    """Decisions whose reasoning is nearest in meaning to ``text`` (``score`` = cosine similarity)."""
    rows = store.search(DECISION_VECTORS, embedder.embed([text])[0], k)
    for r in rows:
        r["score"] = 1.0 - float(r.pop("_distance"))
        r.pop("stream_seq", None)
    return rows


OPTIMIZE_EVERY_COMMITS = 100
"""A live vector table gets its index once it has ``index_min_rows`` rows (checked this often), and is
compacted after this many commits, which also folds new rows into the index: every commit adds a LanceDB fragment and a
version, and a process that never compacts grows (412 -> 434 MiB in a 10-minute soak; 1,200 small adds
took a bare process from 220 to 805 MiB, 239 to 373 MiB with compaction)."""
KEEP_VERSIONS = timedelta(minutes=2)
"""Versions older than this are dropped on compaction: a reader holds a version for one query at most."""


class VectorSink:
    """Runs a :class:`VectorProjection` on the consumer runtime (``bus.runtime.Sink``).

    Rows commit in batches of at least ``batch_rows`` (LanceDB likes big adds), between messages so
    a commit never splits one; and, once a message has waited ``commit_every_s`` uncommitted, at the
    end of the fetch (well inside the consumer's 30 s ack wait); and on idle or stop. The runtime
    acknowledges only up to :attr:`committed_seq`, so nothing is acked while merely buffered. A
    message whose rows cannot be built is poison: it is dead-lettered and the rest go on (rows of
    its earlier events, if any, stay). The consumer is ordered: it restarts at the committed
    checkpoint + 1, so rows still buffered at a crash are simply projected again.
    """

    def __init__(
        self,
        projection: VectorProjection,
        *,
        stop_at_seq: int | None = None,
        until_ns: int | None = None,
        commit_every_s: float = 2.0,
        optimize_every: int = OPTIMIZE_EVERY_COMMITS,
    ) -> None:
        self.projection = projection
        self.last_seq = projection.start()
        self.stop_at_seq = stop_at_seq
        self.until_ns = until_ns
        self.commit_every_s = commit_every_s
        self.optimize_every = optimize_every
        self.optimized = 0  # how many times the table was compacted by this sink
        self.done = asyncio.Event()
        self._waiting_since: float | None = None  # when the oldest uncommitted message was applied
        self._commits = 0  # commits since the last compaction

    @property
    def committed_seq(self) -> int:
        """The last sequence whose rows are committed: how far the runtime may acknowledge."""
        return self.projection.checkpoint

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        proj = self.projection
        failures: dict[int, Failure] = {}
        for j, rec in enumerate(batch):
            seq = rec.delivery.stream_seq
            if seq <= proj.seen:
                continue  # already applied: a batch retried in place
            if (self.stop_at_seq is not None and seq > self.stop_at_seq) or (
                self.until_ns is not None and rec.delivery.ts_ns > self.until_ns
            ):
                self.done.set()
                break
            if proj.pending >= proj.batch_rows:
                await self._flush(force=False)
            try:
                for ev in rec.events:
                    proj.apply(seq, ev)
            except Exception as exc:  # a row that cannot be built is poison: dead-letter it, keep going
                log.warning("vector row failed", table=proj.table, seq=seq, error=repr(exc))
                failures[j] = Failure(f"vector row failed: {type(exc).__name__}: {exc}", retry=False)
            proj.advance(seq)
            if self._waiting_since is None:
                self._waiting_since = time.monotonic()
        if self.stop_at_seq is not None and batch and batch[-1].delivery.stream_seq >= self.stop_at_seq:
            self.done.set()
        overdue = self._waiting_since is not None and time.monotonic() - self._waiting_since >= self.commit_every_s
        await self._flush(force=overdue or self.done.is_set())
        if batch:  # lag = not yet delivered + delivered but not yet committed
            last = batch[-1].delivery
            PROJECTION_CHECKPOINT.labels(proj.table, proj.stream).set(proj.checkpoint)
            PROJECTION_LAG.labels(proj.table, proj.stream).set(last.pending + max(0, last.stream_seq - proj.checkpoint))
        return failures

    async def _flush(self, *, force: bool) -> None:
        before = self.last_seq
        self.last_seq = await asyncio.to_thread(self.projection.flush, force=force)
        if self.last_seq == self.projection.seen:
            self._waiting_since = None
        if self.last_seq > before:
            self._commits += 1
            if self._commits >= self.optimize_every:
                proj = self.projection
                if proj.store.specs[proj.table].metric is not None:  # once big enough, searched through an index
                    await asyncio.to_thread(proj.store.ensure_index, proj.table)
                await asyncio.to_thread(proj.store.optimize, proj.table, keep_versions=KEEP_VERSIONS)
                self._commits = 0
                self.optimized += 1

    async def idle(self) -> None:
        await self._flush(force=True)

    async def close(self) -> None:
        await self.idle()
