"""One way to project: a read model is a declaration — which events, which table, how a row is made.

In the spirit of the ``eventsourcing`` library's projections: rows are a pure function of
(event, stream sequence); the framework does batching, Arrow inserts and the tracking record
(read model, stream, last sequence, schema hash) in the same transaction. Every row carries
``seq`` (its stream sequence), which makes "state as of sequence N" a WHERE clause and replay
verification exact.

The schema hash (:func:`schema_hash`) is stored with each tracking record: a declaration whose
columns or ``version`` changed no longer matches its rows, so the projector refuses to start
(:class:`ReadModelChanged`) until the read model is rebuilt. Bump ``version`` when the rows a
declaration makes change meaning without a column change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from tapeline.schemas.events import Event
from tapeline.schemas.subjects import StreamFamily

Row = tuple[Any, ...]
REBUILD = "rebuild it with `tapeline replay --verify --swap`"


def schema_hash(version: int, columns: Iterable[tuple[str, pa.DataType]]) -> str:
    """Stable short hash of a declaration's shape: its version, column names and Arrow types."""
    text = f"v{version}|" + ",".join(f"{name}:{dtype}" for name, dtype in columns)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class ReadModelChanged(Exception):
    """A read model's stored shape (or stream, or embedding model) differs from its declaration.

    Its message is the one line the CLI prints: what changed, from what to what, and the fix.
    """

    def __init__(self, name: str, old: str, new: str, *, what: str = "schema", fix: str = REBUILD) -> None:
        super().__init__(f"read model '{name}' changed ({what} {old} -> {new}): {fix}")
        self.name = name


@dataclass(frozen=True)
class Table:
    name: str
    family: StreamFamily
    events: tuple[type[Event], ...]
    columns: tuple[tuple[str, pa.DataType], ...]
    rows: Callable[[Any, int], Iterable[Row]]  # (event, stream seq) -> rows
    doc: str = ""
    version: int = 1  # bump when rows change meaning without a column change: forces a rebuild
    schema: pa.Schema = field(init=False)
    schema_hash: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema", pa.schema([pa.field(n, t) for n, t in self.columns]))
        object.__setattr__(self, "schema_hash", schema_hash(self.version, self.columns))
        if self.columns[0][0] != "seq":
            raise ValueError(f"table {self.name}: the first column must be 'seq' (the stream sequence)")

    def to_arrow(self, rows: list[Row]) -> pa.Table:
        cols: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [() for _ in self.columns]
        return pa.Table.from_arrays(
            [pa.array(c, type=t) for c, (_, t) in zip(cols, self.columns, strict=True)], schema=self.schema
        )


@dataclass(frozen=True)
class View:
    """A derived read model defined in SQL over tables (e.g. positions from fills)."""

    name: str
    sql: str
    doc: str = ""
