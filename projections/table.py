"""One way to project: a read model is a declaration — which events, which table, how a row is made.

In the spirit of the ``eventsourcing`` library's projections: rows are a pure function of
(event, stream sequence); the framework does batching, Arrow inserts and the tracking record
(checkpoint) in the same transaction. Every row carries ``seq`` (its stream sequence), which
makes "state as of sequence N" a WHERE clause and replay verification exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from schemas.events import Event
from schemas.subjects import StreamFamily

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Table:
    name: str
    family: StreamFamily
    events: tuple[type[Event], ...]
    columns: tuple[tuple[str, pa.DataType], ...]
    rows: Callable[[Any, int], Iterable[Row]]  # (event, stream seq) -> rows
    doc: str = ""
    schema: pa.Schema = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema", pa.schema([pa.field(n, t) for n, t in self.columns]))
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
