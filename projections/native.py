"""Rows made by DuckDB from the raw message bodies: the hot tables skip Python objects altogether.

A read model's rows are normally made in Python (decode each event into its struct, build tuples,
Arrow, insert). For the tick table that path costs more than the whole budget of a fast rebuild
(docs/performance.md), so here the same declaration is also written in SQL: DuckDB's bundled JSON
extension parses the bodies (``read_json`` over a run of them written as one array; ``json_transform``
over an Arrow column of them to classify after a refusal) and the row expression mirrors
:data:`projections.tables.TICKS` column for column.

The fast path must never change a result. DuckDB's JSON conversions are more lenient than msgspec's
(``"5"`` becomes 5, ``5.5`` an integer 6, ``true`` 1, ``null`` a NULL, ``NaN`` is accepted, a duplicate key
keeps its first value), so a body is taken only
when all of this holds, and goes through the Python path (today's decode, skip, dead letter) otherwise:

- in Python, on the bytes: the tag prefix, ASCII, no backslash (no escapes: a string's bytes are its
  value), and a *skeleton* (the body without its printable characters but ``":,{}[]\\``) equal to that
  of ``n`` events of the event's shape: exactly that many keys per object, the string-valued ones
  quoted, no nested object or array, no trailing comma;
- in SQL, per event: every numeric field, read as its JSON text, is a number by name (so the rest,
  counted by the skeleton, are the strings), integers fit BIGINT, floats are finite, ``type`` is the tag and
  ``version`` the current one, no field is missing. A violation raises inside the INSERT; the caller
  then classifies the bodies one by one (:meth:`NativeRows.classify_sql`) and sends the rejected ones
  to Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import msgspec
import numpy as np
import pyarrow as pa

from tapeline.projections.table import Table
from tapeline.projections.tables import TICKS
from tapeline.schemas.events import CURRENT_VERSION, Event, Tick

STRING, INT, FLOAT = "VARCHAR", "BIGINT", "DOUBLE"
_DELETE = bytes(sorted(set(range(0x21, 0x7F)) - set(b'":,{}[]\\'))) + b" "
"""What the skeleton drops: every printable character but JSON's structure, and the space."""


class NativeRejected(Exception):
    """A body the fast path took is not one it may take (found inside the INSERT): classify and redo."""


@dataclass(frozen=True)
class NativeRows:
    """A table's row declaration in SQL over one event type's JSON (mirrors ``table.rows``)."""

    table: Table
    event: type[Event]
    select: tuple[str, ...]  # one SQL expression per column of ``table``, over the event ``e`` (``e._s``: stream seq)
    fields: tuple[tuple[str, str], ...] = field(init=False)  # (name, kind) in encoding order, the tag first
    prefix: bytes = field(init=False)
    prefixes: tuple[bytes, bytes] = field(init=False)  # one event, a batch
    skeleton: bytes = field(init=False)
    _skeletons: dict[int, bytes] = field(init=False, default_factory=dict, compare=False, repr=False)  # by n

    def __post_init__(self) -> None:
        if len(self.select) != len(self.table.columns):
            raise ValueError(f"native rows of {self.table.name}: {len(self.select)} expressions for its columns")
        kinds = {str: STRING, int: INT, float: FLOAT}
        fields = [("type", STRING)]
        for f in msgspec.structs.fields(self.event):
            if f.type not in kinds or f.encode_name != f.name:
                raise ValueError(f"native rows of {self.table.name}: field {f.name} is not a plain str/int/float")
            fields.append((f.name, kinds[f.type]))
        object.__setattr__(self, "fields", tuple(fields))
        tag = self.event.__struct_config__.tag
        object.__setattr__(self, "prefix", json.dumps({"type": tag}, separators=(",", ":"))[:-1].encode())
        object.__setattr__(self, "prefixes", (self.prefix, b"[" + self.prefix))
        one = "{" + ",".join('"":""' if kind == STRING else '"":' for _, kind in self.fields) + "}"
        object.__setattr__(self, "skeleton", one.encode())

    @property
    def tag(self) -> str:
        return str(self.event.__struct_config__.tag)

    def candidate(self, data: bytes) -> bool:
        """The cheap first look (the reader asks it): the body starts like one or a batch of these events."""
        return data.startswith(self.prefixes)

    def events_in(self, data: bytes) -> int:
        """How many events the body holds if the fast path may take it (the byte checks), else 0."""
        if not (self.candidate(data) and data.isascii() and b"\\" not in data):
            return 0
        sk = data.translate(None, _DELETE)
        if data[0] != 0x5B:  # "{": one event
            return 1 if sk == self.skeleton else 0
        n = (len(sk) - 1) // (len(self.skeleton) + 1)
        return n if n >= 1 and sk == self._batch_skeleton(n) else 0

    def _batch_skeleton(self, n: int) -> bytes:
        sk = self._skeletons.get(n)
        if sk is None:
            sk = self._skeletons[n] = b"[" + b",".join([self.skeleton] * n) + b"]"
        return sk

    def _transform(self) -> str:
        """Strings as text, numbers as their JSON text: DuckDB's numeric conversions are too lenient."""
        spec = {name: STRING if kind == STRING else "JSON" for name, kind in self.fields}
        return json.dumps([spec], separators=(",", ":"))

    def _event(self, j: str) -> str:
        """SQL: the struct ``e`` from the transformed event ``j``; a number whose text is not of its kind is NULL.

        An integer text must be one (not ``5.0``, ``1e5``, ``true``, ``"5"``); a float is any finite number
        (not ``NaN``, ``1e400``, ``true``, ``"5"``). So every numeric field holds a number, by name; the
        skeleton leaves exactly as many non-string values as there are numeric fields, so every string
        field holds a string (DuckDB would turn a number into its text).
        """
        conv = [f"{name} := {self._convert(name, kind, f'{j}.{name}')}" for name, kind in self.fields]
        return f"struct_pack({', '.join(conv)})"

    @staticmethod
    def _convert(name: str, kind: str, expr: str) -> str:
        """SQL: the value of field ``name`` from its text ``expr`` (NULL when the text is not of its kind)."""
        t = f"{expr}::VARCHAR"  # never the JSON value itself: DuckDB casts JSON true to 1
        if kind == STRING:
            return t
        if kind == INT:
            return f"CASE WHEN TRY_CAST({t} AS BIGINT)::VARCHAR = {t} THEN TRY_CAST({t} AS BIGINT) END"
        return f"CASE WHEN isfinite(TRY_CAST({t} AS DOUBLE)) THEN TRY_CAST({t} AS DOUBLE) END"

    def _ok(self, e: str) -> str:
        """SQL: the event ``e`` is exactly what msgspec decodes: the current version, no field missing."""
        version = CURRENT_VERSION[self.tag]  # type: ignore[index]
        checks = [f"{e}.type = '{self.tag}'", f"{e}.version = {version}"]
        checks += [f"{e}.{name} IS NOT NULL" for name, _ in self.fields]
        return " AND ".join(checks)

    def _json(self) -> str:
        """SQL: a body's events as a list of structs of JSON texts (one event is a list of one)."""
        body = "CASE WHEN starts_with(body, '[') THEN body ELSE '[' || body || ']' END"
        return f"json_transform({body}, '{self._transform()}')"

    def insert_sql(self, parts: list[tuple[str, str]]) -> str:
        """INSERT the rows of the JSON arrays of events in the files of ``parts`` (each written from
        :meth:`Bodies.json_array`, with the name of its ``seqs`` relation: column ``_s``, each event's stream
        sequence at its position); raises inside DuckDB if one may not be taken.

        ``read_json`` parses straight into columns: ~3x less CPU than ``json_transform`` over a column of
        bodies (docs/performance.md). Several parts are a UNION ALL that DuckDB parses on as many threads
        when its connection need not preserve insertion order. The caller compares the count it returns
        with the events it gave.
        """
        columns = {name: STRING if kind == STRING else "JSON" for name, kind in self.fields}
        spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"
        conv = ", ".join(f"{self._convert(name, kind, name)} AS {name}" for name, kind in self.fields)
        sources = []
        for path, seqs in parts:
            quoted = path.replace("'", "''")
            source = f"read_json('{quoted}', format = 'array', columns = {spec})"
            sources.append(f"SELECT s._s, {conv} FROM {source} POSITIONAL JOIN {seqs} s")
        return (
            f"INSERT INTO {self.table.name} SELECT {', '.join(self.select)} FROM ({' UNION ALL '.join(sources)}) e "
            f"WHERE CASE WHEN e._s IS NOT NULL AND {self._ok('e')} THEN true "
            f"ELSE error('not a {self.tag} the fast path may take') END"
        )

    def classify_sql(self, source: str) -> str:
        """The sequences in ``source`` whose bodies the fast path may not take (one by one, never raising)."""
        ok = self._ok(f"({self._event('j')})")
        return (
            f"SELECT seq FROM (SELECT seq, n, TRY({self._json()}) AS js FROM {source}) WHERE js IS NULL "
            f"OR len(js) <> n OR NOT list_bool_and(list_transform(js, lambda j: coalesce({ok}, false)))"
        )


class Bodies:
    """A run of bodies the fast path takes, in stream order (a JSON array to insert, an Arrow table to classify)."""

    def __init__(self, spec: NativeRows) -> None:
        self.spec = spec
        self.seqs: list[int] = []
        self.bodies: list[bytes] = []
        self.counts: list[int] = []

    def add(self, seq: int, body: bytes, events: int) -> None:
        self.seqs.append(seq)
        self.bodies.append(body)
        self.counts.append(events)

    @property
    def events(self) -> int:
        return sum(self.counts)

    def split(self, parts: int) -> list[Bodies]:
        """This run cut into up to ``parts`` runs of about equal events, in order (whole bodies each)."""
        total, taken, out = self.events, 0, [Bodies(self.spec)]
        for seq, body, n in zip(self.seqs, self.bodies, self.counts, strict=True):
            if out[-1].counts and len(out) < parts and taken + n / 2 > total * len(out) / parts:  # nearest cut
                out.append(Bodies(self.spec))
            out[-1].add(seq, body, n)
            taken += n
        return out

    def json_array(self) -> list[bytes | memoryview]:
        """One JSON array of every event (a batch's brackets dropped), in order, as the pieces to write one
        after the other: joining them first cost a copy of every body (~0.5 µs per batched tick)."""
        out: list[bytes | memoryview] = [b","] * (2 * len(self.bodies) + 1)
        out[1::2] = [memoryview(b)[1:-1] if b[0] == 0x5B else b for b in self.bodies]
        out[0], out[-1] = b"[", b"]"
        return out

    def event_seqs(self) -> pa.Table:
        """Column ``_s``: the stream sequence of each event of :meth:`json_array`, position by position.

        Made from the array's buffer: ``pa.array``/``pa.table`` import pandas on their first call (0.4-0.5 s,
        a fixed cost a rebuild of ticks alone pays nowhere else: ~20% of a 100k-tick one-per-message one).
        """
        seqs = np.repeat(np.asarray(self.seqs, dtype=np.int64), self.counts)
        column = pa.Array.from_buffers(pa.int64(), len(seqs), [None, pa.py_buffer(seqs)])
        return pa.Table.from_arrays([column], names=["_s"])

    def arrow(self) -> pa.Table:
        """Columns seq, body (text: the byte checks made sure it is ASCII), n (events in the body)."""
        return pa.table(
            {
                "seq": pa.array(self.seqs, pa.int64()),
                "body": pa.array(self.bodies, pa.binary()).cast(pa.string()),
                "n": pa.array(self.counts, pa.int64()),
            }
        )


TICKS_NATIVE = NativeRows(
    TICKS,
    Tick,
    (
        "e._s",  # the stream sequence (the event's own ``seq`` is e.seq)
        "e.event_id",
        "make_timestamp_ns(e.ts_event)",
        "make_timestamp_ns(e.ts_init)",
        "e.source",
        "e.venue",
        "e.account",
        "e.symbol",
        "e.bid",
        "e.ask",
        "e.last",
        "e.volume",
        "e.volume_real",
        "e.flags",
        "e.seq",
    ),
)
"""``ticks`` (:data:`projections.tables.TICKS`) in SQL: the same columns, types and values."""

NATIVE: dict[str, NativeRows] = {TICKS_NATIVE.table.name: TICKS_NATIVE}
