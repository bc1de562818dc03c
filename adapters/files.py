"""Bars and ticks from CSV and Parquet files: validated row by row, deterministic ids, a file feed.

Formats understood (column names are matched case-insensitively, spaces and ``_`` ignored):

* Yahoo-style daily bars ``Date,Open,High,Low,Close,Adj Close,Volume``. Prices use ``Close``;
  ``Adj Close`` is not kept. In the sample files ``Close`` is already split-adjusted (NVDA's
  1999 IPO-day close of $19.69 reads 1.640625: divided by 12 for the 2:1, 2:1, 2:1 and 3:2 splits of
  2000-2007), so splits do not look like crashes; ``Adj Close`` adds dividend adjustment only.
* Minute bars with separate ``Date`` and ``Time`` columns. A header that names ``Date`` but no
  ``Time`` while the rows carry exactly one value more (as in ``index-future-1min-2006.csv``) is
  read as ``Date,Time,...``. The row time is the bar's **close** time (the first bar of a 09:00
  session is stamped 09:01), so ``start_ns = time - interval``.
* Trade ticks ``Datetime,Open,High,Low,Close,Volume[,OpenInterest]`` with O=H=L=C: ``last`` is the
  close (the trade price), ``volume`` the size.
* Quotes ``TIMESTAMP,BID,ASK`` with ``dd/mm/yyyy HH:MM:SS`` times.
* The generic format (see docs/feeds.md): a header row, a time column named ``time``,
  ``timestamp``, ``datetime``, ``ts`` or ``date`` (optionally ``date`` + ``time``); bars need
  ``open,high,low,close`` and may have ``volume``; ticks need ``last`` (or ``price``/``close``)
  and/or ``bid``+``ask`` and may have ``volume``/``size``, ``flags``. Times are ISO 8601
  (``2015-09-23T20:57:42.146``, ``2024-01-02 09:30:00+00:00``), ``dd/mm/yyyy[ HH:MM:SS]`` or
  integer UNIX epoch (s, ms, µs or ns, told apart by magnitude). Times without an offset are UTC.

Every row is validated. A row is rejected (with its 1-based file line number and the reason) when
a field is not a number, is NaN or infinite, a price is zero or negative, a volume is negative,
high < low or open/close lie outside [low, high], ask < bid, the time cannot be parsed, the time
is earlier than the previous accepted row (out of order), or the row repeats an earlier one
(bars: same bar start; ticks: same time and same values). Good rows are imported; rejections are
returned (and the feed reports them as one warning alert per file).

A row the CSV parser cannot read (a field over the ``csv`` module's 131,072-character limit, bytes
that are not UTF-8) is rejected like any other bad row: the rest of the file is still imported.
A file that cannot be imported at all (missing, a directory, binary or compressed data other than
gzip, a header without the needed columns, unreadable Parquet) raises :class:`FileImportError` with
one line naming the file. gzip-compressed CSV is read as is. An empty or header-only file imports
nothing and says so (``ImportResult.note``; the feed logs a warning and publishes an alert).
File content in any message is escaped and cut to about 80 characters (:func:`sample`).

CSV is read with the standard ``csv`` module rather than ``pyarrow.csv`` on purpose: garbage rows
must be reported with their line numbers, which a columnar reader does not keep. Parquet is read
with pyarrow and goes through the same validation (``line`` is then the row index + 1).

Ids: ticks ``derive_event_id(ts, venue, symbol, ts, seq)`` (as every feed does) and bars
``derive_event_id(ts_event, "bar", symbol, interval, start_ns)``, independent of the venue so the
same bar from a file, the history store or a live source gets the same id and JetStream drops
the copy. Re-importing a file therefore yields identical ids.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import math
import time
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Literal

import msgspec
import structlog

from tapeline.schemas.events import Alert, Bar, Event, Severity, Tick
from tapeline.schemas.ids import bar_id, derive_event_id, tick_id
from tapeline.schemas.intervals import interval_ns

log = structlog.get_logger("tapeline.feed")

Kind = Literal["bars", "ticks"]
OutOfOrder = Literal["reject", "sort"]
Row = tuple[int, list[str] | str]  # (line number, the values or why the row cannot be read)


class FileImportError(ValueError):
    """A whole file cannot be imported; the message is one line naming the file and the cause."""


def sample(value: str | bytes, limit: int = 80) -> str:
    """File content as it may appear in a message or log: escaped (ASCII) and cut to ``limit`` characters."""
    return _clip(ascii(value), limit)


def _clip(text: str, limit: int = 80) -> str:
    """A library's error message on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Rejection(msgspec.Struct, frozen=True):
    """A row that was not imported: its 1-based line number in the file and why."""

    line: int
    reason: str


@dataclass(slots=True)
class ImportResult:
    """What a file gave: events sorted by ``ts_event`` and the rows that were rejected."""

    events: list[Bar] | list[Tick]
    rejected: list[Rejection] = field(default_factory=list)
    path: str = ""
    rows: int = 0  # data rows seen (blank lines excluded)
    note: str = ""  # why nothing could be imported: an empty or header-only file

    def report(self, limit: int = 20) -> str:
        """A human summary of the rejections, e.g. for an alert or the CLI."""
        head = f"{self.path}: {len(self.events)} imported, {len(self.rejected)} rejected of {self.rows} rows"
        if self.note:
            head += f" ({self.note})"
        lines = [f"  line {r.line}: {r.reason}" for r in self.rejected[:limit]]
        if len(self.rejected) > limit:
            lines.append(f"  ... and {len(self.rejected) - limit} more")
        return "\n".join([head, *lines])


# ------------------------------------------------------------------ parsing helpers


class _Bad(ValueError):
    """A row-level problem; the message is the rejection reason."""


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "").replace("_", "").lstrip("\ufeff")


_TIME_COLS = ("datetime", "timestamp", "time", "ts", "date")


def parse_time_ns(text: str, *, time_text: str = "") -> int:
    """Parse one of the supported time formats to UTC UNIX nanoseconds."""
    s = text.strip()
    if time_text:
        s = f"{s} {time_text.strip()}"
    if not s:
        raise _Bad("empty time")
    if s.lstrip("-").isdigit():
        v = int(s)
        # seconds until 5e9 (year 2128), then ms, µs, ns by magnitude
        if abs(v) < 5_000_000_000:
            return v * 1_000_000_000
        if abs(v) < 5_000_000_000_000:
            return v * 1_000_000
        if abs(v) < 5_000_000_000_000_000:
            return v * 1_000
        return v
    try:
        if "/" in s:  # dd/mm/yyyy[ HH:MM[:SS[.fff]]]
            date_part, _, clock = s.partition(" ")
            d, m, y = date_part.split("/")
            iso = f"{int(y):04d}-{int(m):02d}-{int(d):02d}" + (f"T{clock}" if clock else "")
            dt = datetime.fromisoformat(iso)
        else:
            dt = datetime.fromisoformat(s)
    except ValueError:
        raise _Bad(f"unparseable time {sample(s)}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _num(row: dict[str, str], col: str, *, price: bool) -> float:
    raw = row.get(col)
    if raw is None:
        raise _Bad(f"{col}: missing value")
    raw = raw.strip()
    try:
        v = float(raw)
    except ValueError:
        raise _Bad(f"{col}: not a number ({sample(raw)})") from None
    if math.isnan(v) or math.isinf(v):
        raise _Bad(f"{col}: {sample(raw)} is not a finite number")
    if price and v <= 0:
        raise _Bad(f"{col}: price must be positive, got {sample(raw)}")
    if not price and v < 0:
        raise _Bad(f"{col}: must not be negative, got {sample(raw)}")
    return v


def _opt(row: dict[str, str], col: str | None, *, price: bool) -> float:
    if col is None:
        return 0.0
    raw = row.get(col)
    if raw is None or not raw.strip():
        return 0.0
    return _num(row, col, price=price)


class _Columns:
    """Which normalised column holds what, for one file."""

    def __init__(self, names: Sequence[str], kind: Kind) -> None:
        self.names = list(names)
        present = set(names)

        def pick(*cands: str) -> str | None:
            return next((c for c in cands if c in present), None)

        self.time = pick("datetime", "timestamp", "ts", "time") if "date" not in present else "date"
        self.clock = "time" if self.time == "date" and "time" in present else None
        if self.time is None:
            raise ValueError(f"no time column; expected one of {', '.join(_TIME_COLS)} in the header")
        self.open = pick("open")
        self.high = pick("high")
        self.low = pick("low")
        self.close = pick("close")
        self.volume = pick("volume", "size", "vol")
        self.bid = pick("bid")
        self.ask = pick("ask")
        self.last = pick("last", "price", "close")
        self.flags = pick("flags")
        if kind == "bars" and None in (self.open, self.high, self.low, self.close):
            raise ValueError("bar files need open, high, low and close columns")
        if kind == "ticks" and self.last is None and (self.bid is None or self.ask is None):
            raise ValueError("tick files need a last/price/close column or bid and ask columns")


# First bytes of formats that are not CSV text, and what to do about them.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "zip data (or an Excel workbook), not CSV; extract or export the CSV first"),
    (b"BZh", "bzip2-compressed data; decompress it first (gzip is read as is)"),
    (b"\xfd7zXZ\x00", "xz-compressed data; decompress it first (gzip is read as is)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data; decompress it first (gzip is read as is)"),
    (b"\xff\xfe", "UTF-16 text; save it as UTF-8 CSV"),
    (b"\xfe\xff", "UTF-16 text; save it as UTF-8 CSV"),
)


def _sniff(path: Path) -> Literal["text", "gzip", "parquet"]:
    """What the file holds, from its first bytes; anything unusable raises :class:`FileImportError`."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8192)
    except FileNotFoundError:
        raise FileImportError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FileImportError(f"{path}: is a directory; give the path of a CSV or Parquet file") from None
    except OSError as e:
        raise FileImportError(f"{path}: cannot be read ({e.strerror})") from None
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"PAR1") or path.suffix.lower() in (".parquet", ".pq"):
        return "parquet"
    for magic, problem in _MAGIC:
        if head.startswith(magic):
            raise FileImportError(f"{path}: {problem}")
    if b"\x00" in head:
        raise FileImportError(f"{path}: binary data, not CSV text (it starts {sample(head[:24])})")
    return "text"


def _csv_lines(fh: Iterable[str]) -> Iterator[Row]:
    """Non-blank CSV rows with their line numbers; a row the parser cannot read comes as its reason."""
    reader = csv.reader(fh)
    while True:
        start = reader.line_num + 1  # a quoted field may span lines: report the line the row starts on
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # e.g. a field over the size limit: this row only, the reader goes on
            yield reader.line_num, f"unreadable CSV row: {_clip(str(e))}"
            continue
        except (OSError, EOFError, zlib.error) as e:  # truncated or corrupt gzip: keep what came before
            yield reader.line_num + 1, f"the file breaks off here ({_clip(str(e))}); nothing after it is read"
            return
        if not any(v.strip() for v in values):
            continue
        if any("\ufffd" in v for v in values):
            yield start, f"not UTF-8 text: {sample(','.join(values))}"
            continue
        yield start, values


def _csv_rows(path: Path, fh: Iterable[str]) -> tuple[list[str], Iterator[Row]]:
    """Normalised header and the data rows, fixing a header without Time."""
    rows = _csv_lines(fh)
    first = next(rows, None)
    if first is None:
        return [], iter(())
    line, values = first
    if isinstance(values, str):
        raise FileImportError(f"{path}: line {line}: the header cannot be read: {values}")
    header = [_norm(h) for h in values]
    peek = next(rows, None)
    if peek is None:
        return header, iter(())
    first_values = peek[1]
    if (
        not isinstance(first_values, str)
        and len(first_values) == len(header) + 1
        and "date" in header
        and "time" not in header
    ):
        header.insert(header.index("date") + 1, "time")
    return header, itertools.chain([peek], rows)


def _parquet_rows(path: Path) -> tuple[list[str], Iterator[Row]]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise FileImportError(f"{path}: not a readable Parquet file ({_clip(str(e))})") from None
    header = [_norm(n) for n in table.column_names]
    cols: list[list[str]] = []
    for col in table.columns:
        if pa.types.is_timestamp(col.type):
            ns = pc.cast(col.cast(pa.timestamp("ns", tz="UTC")), pa.int64())
            cols.append(["" if v is None else str(v) for v in ns.to_pylist()])
        elif pa.types.is_date(col.type):
            cols.append(["" if v is None else v.isoformat() for v in col.to_pylist()])
        else:
            cols.append(["" if v is None else str(v) for v in col.to_pylist()])

    def gen() -> Iterator[Row]:
        for i in range(table.num_rows):
            yield i + 1, [c[i] for c in cols]

    return header, gen()


@contextmanager
def _open_rows(path: Path) -> Iterator[tuple[list[str], Iterator[Row]]]:
    """The header and rows of a CSV (plain or gzip) or Parquet file, the file open while they are read."""
    kind = _sniff(path)
    if kind == "parquet":
        yield _parquet_rows(path)
        return
    # bad bytes become U+FFFD, so _csv_lines rejects just their row
    if kind == "gzip":
        with gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as gz:
            yield _csv_rows(path, gz)
    else:
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
            yield _csv_rows(path, fh)


def _columns(path: Path, header: list[str], kind: Kind) -> _Columns:
    try:
        return _Columns(header, kind)
    except ValueError as e:
        raise FileImportError(f"{path}: {e}; the header reads {sample(','.join(header))}") from None


def _fields(header: list[str], values: list[str] | str) -> dict[str, str]:
    """The row as column -> text; a row the parser could not read, or of the wrong width, is rejected."""
    if isinstance(values, str):
        raise _Bad(values)
    if len(values) != len(header):
        raise _Bad(f"expected {len(header)} fields, got {len(values)}")
    return dict(zip(header, values, strict=True))


def _empty(result: ImportResult, header: list[str]) -> ImportResult:
    result.note = "header only, no data rows" if header else "empty file"
    return result


# ------------------------------------------------------------------ readers


def read_bars(
    path: Path, symbol: str, *, interval: str = "1d", venue: str = "file", out_of_order: OutOfOrder = "reject"
) -> ImportResult:
    """Import bars from a CSV or Parquet file; see the module docstring for formats and rules.

    Daily files stamp a bar by its date: ``start_ns`` is 00:00 UTC of that date. Intraday files
    stamp it by its close time (``start_ns = time - interval``).
    """
    step = interval_ns(interval)
    with _open_rows(path) as (header, rows):
        return _bars(path, header, rows, symbol, interval, step, venue, out_of_order)


def _bars(
    path: Path,
    header: list[str],
    rows: Iterator[Row],
    symbol: str,
    interval: str,
    step: int,
    venue: str,
    out_of_order: OutOfOrder,
) -> ImportResult:
    result = ImportResult(events=[], path=str(path))
    if not header:
        return _empty(result, header)
    cols = _columns(path, header, "bars")
    daily = step >= 86_400_000_000_000 and cols.clock is None
    bars: list[Bar] = []
    seen: dict[int, int] = {}  # start_ns -> line
    last_start = -(2**63)
    now = time.time_ns()
    assert cols.open and cols.high and cols.low and cols.close
    for line, values in rows:
        result.rows += 1
        try:
            row = _fields(header, values)
            t = parse_time_ns(row[cols.time], time_text=row[cols.clock] if cols.clock else "")  # type: ignore[index]
            start = t if daily else t - step
            o = _num(row, cols.open, price=True)
            h = _num(row, cols.high, price=True)
            lo = _num(row, cols.low, price=True)
            c = _num(row, cols.close, price=True)
            v = _opt(row, cols.volume, price=False)
            if h < lo:
                raise _Bad(f"high {h} is below low {lo}")
            if not (lo <= o <= h and lo <= c <= h):
                raise _Bad(f"open {o} or close {c} outside low..high {lo}..{h}")
            if start in seen:
                raise _Bad(f"duplicate bar: same start as line {seen[start]}")
            if start < last_start and out_of_order == "reject":
                raise _Bad("out of order: earlier than the previous row")
        except _Bad as e:
            result.rejected.append(Rejection(line, str(e)))
            continue
        seen[start] = line
        last_start = max(last_start, start)
        ts_event = start + step
        bars.append(
            Bar(
                event_id=bar_id(symbol, interval, start, ts_event),
                ts_event=ts_event,
                ts_init=now,
                source=venue,
                symbol=symbol,
                interval=interval,
                start_ns=start,
                open=o,
                high=h,
                low=lo,
                close=c,
                volume=v,
                venue=venue,
            )
        )
    bars.sort(key=lambda b: b.ts_event)
    result.events = bars
    return result if result.rows else _empty(result, header)


def read_ticks(path: Path, symbol: str, *, venue: str = "file", out_of_order: OutOfOrder = "reject") -> ImportResult:
    """Import ticks from a CSV or Parquet file; see the module docstring for formats and rules.

    Ticks sharing a millisecond get ``seq`` 0, 1, ... in file order, so ids stay stable.
    """
    with _open_rows(path) as (header, rows):
        return _ticks(path, header, rows, symbol, venue, out_of_order)


def _ticks(
    path: Path, header: list[str], rows: Iterator[Row], symbol: str, venue: str, out_of_order: OutOfOrder
) -> ImportResult:
    result = ImportResult(events=[], path=str(path))
    if not header:
        return _empty(result, header)
    cols = _columns(path, header, "ticks")
    parsed: list[tuple[int, int, float, float, float, float, int]] = []  # t, line, bid, ask, last, vol, flags
    seen: dict[tuple[int, float, float, float, float], int] = {}
    last_t = -(2**63)
    for line, values in rows:
        result.rows += 1
        try:
            row = _fields(header, values)
            t = parse_time_ns(row[cols.time], time_text=row[cols.clock] if cols.clock else "")  # type: ignore[index]
            bid = _opt(row, cols.bid, price=True)
            ask = _opt(row, cols.ask, price=True)
            last = _opt(row, cols.last, price=True)
            if cols.last is not None and cols.bid is None and last == 0.0:
                raise _Bad(f"{cols.last}: missing value")
            if cols.bid is not None and cols.last is None and (bid == 0.0 or ask == 0.0):
                raise _Bad("bid/ask: missing value")
            if bid and ask and ask < bid:
                raise _Bad(f"ask {ask} is below bid {bid}")
            vol = _opt(row, cols.volume, price=False)
            flags = int(_opt(row, cols.flags, price=False))
            key = (t, bid, ask, last, vol)
            if key in seen:
                raise _Bad(f"duplicate of line {seen[key]}")
            if t < last_t and out_of_order == "reject":
                raise _Bad("out of order: earlier than the previous row")
        except _Bad as e:
            result.rejected.append(Rejection(line, str(e)))
            continue
        seen[key] = line
        last_t = max(last_t, t)
        parsed.append((t, line, bid, ask, last, vol, flags))
    parsed.sort(key=lambda p: (p[0], p[1]))
    now = time.time_ns()
    ticks: list[Tick] = []
    prev_ms, seq = -1, 0
    for t, _line, bid, ask, last, vol, flags in parsed:
        ms = t // 1_000_000
        seq = seq + 1 if ms == prev_ms else 0
        prev_ms = ms
        ticks.append(
            Tick(
                event_id=tick_id(venue, symbol, t, seq),
                ts_event=t,
                ts_init=now,
                source=venue,
                venue=venue,
                symbol=symbol,
                bid=bid,
                ask=ask,
                last=last,
                volume=vol,
                volume_real=vol,
                flags=flags,
                seq=seq,
            )
        )
    result.events = ticks
    return result if result.rows else _empty(result, header)


# ------------------------------------------------------------------ the feed


@dataclass(frozen=True, slots=True)
class FileSource:
    """One file to import: path, symbol, ``bars`` or ``ticks``, and the bar interval."""

    path: Path
    symbol: str
    kind: Kind = "bars"
    interval: str = "1d"


def default_sources(data_dir: Path | None = None) -> list[FileSource]:
    """The real sample files under ``../shared/data`` (or ``data_dir``)."""
    d = data_dir or _shared_data()
    return [
        FileSource(d / "bars" / "nvda-daily-1999-2014.csv", "NVDA", "bars", "1d"),
        FileSource(d / "bars" / "orcl-daily-1995-2014.csv", "ORCL", "bars", "1d"),
        FileSource(d / "bars" / "index-future-1min-2006.csv", "INDEXFUT", "bars", "1m"),
        FileSource(d / "ticks" / "index-future-ticks-2015-09-23.csv", "INDEXFUT", "ticks"),
        FileSource(d / "ticks" / "fx-bidask-2010-03-02.csv", "FX", "ticks"),
    ]


def _shared_data() -> Path:
    beside = Path(__file__).resolve().parents[2] / "shared" / "data"
    return beside if beside.exists() else Path("..") / "shared" / "data"


def read_source(src: FileSource, *, venue: str = "file") -> ImportResult:
    if src.kind == "ticks":
        return read_ticks(src.path, src.symbol, venue=venue)
    return read_bars(src.path, src.symbol, interval=src.interval, venue=venue)


def file_alert(
    feed: str, path: str, kind: str, message: str, *, severity: Severity = "warning", **ident: object
) -> Alert:
    """An alert about one file; the id derives from the file's path, mtime, ``kind`` and ``ident``,
    so re-importing the same file does not repeat the alert."""
    now = time.time_ns()
    try:
        ts = Path(path).stat().st_mtime_ns
    except OSError:
        ts = now
    return Alert(
        event_id=derive_event_id(ts, kind, feed, path, *ident.values()),
        ts_event=ts,
        ts_init=now,
        source=feed,
        severity=severity,
        kind=kind,
        key=f"{feed}:{kind}:{path}",
        message=message,
        feed=feed,
    )


def rejection_alert(result: ImportResult, feed: str) -> Alert:
    """One warning per file with rejected rows, listing them."""
    return file_alert(
        feed, result.path, "rows_rejected", result.report(), rejected=len(result.rejected), rows=result.rows
    )


class FileFeed:
    """Publishes the events of a set of files (the feed protocol: ``name`` and ``stream()``).

    ``FileFeed()`` reads the shared sample data; pass ``sources`` (or ``data_dir``) to choose.
    Each file's events are yielded in chunks of ``chunk`` in time order; a file with rejected
    rows also yields a warning :class:`Alert` listing them, an empty or header-only file a warning
    ``file_empty``. A file that cannot be imported at all is logged (one line), reported as a
    critical ``file_unreadable`` alert and skipped; the other files go on. Missing files raise
    :class:`FileImportError` at start, before anything is published.
    """

    batch_safe: ClassVar[bool] = True  # it replays identically: the same start yields the same bursts

    def __init__(
        self,
        sources: Sequence[FileSource] | None = None,
        *,
        data_dir: Path | None = None,
        name: str = "files",
        venue: str = "file",
        chunk: int = 1000,
    ) -> None:
        self.sources = list(sources) if sources is not None else default_sources(data_dir)
        self.name = name
        self.venue = venue
        self.chunk = chunk
        self.results: list[ImportResult] = []
        self.failed: list[str] = []  # one line per file that could not be imported

    @classmethod
    def from_paths(
        cls, paths: Iterable[tuple[Path, str]], *, kind: Kind = "bars", interval: str = "1d", **kw: object
    ) -> FileFeed:
        return cls([FileSource(Path(p), s, kind, interval) for p, s in paths], **kw)  # type: ignore[arg-type]

    async def stream(self) -> AsyncIterator[list[Event]]:
        missing = [str(s.path) for s in self.sources if not s.path.exists()]
        if missing:
            raise FileImportError(f"feed {self.name}: file(s) not found: {', '.join(missing)}")
        for src in self.sources:
            try:
                result = read_source(src, venue=self.venue)
            except FileImportError as e:
                self.failed.append(str(e))
                log.error("file not imported", feed=self.name, path=str(src.path), reason=str(e))
                yield [file_alert(self.name, str(src.path), "file_unreadable", str(e), severity="critical")]
                continue
            self.results.append(result)
            log.info(
                "file imported",
                feed=self.name,
                path=str(src.path),
                imported=len(result.events),
                rejected=len(result.rejected),
            )
            events: list[Event] = list(result.events)
            for i in range(0, len(events), self.chunk):
                yield events[i : i + self.chunk]
            if result.note:
                log.warning("file has no data", feed=self.name, path=str(src.path), reason=result.note)
                message = f"{result.path}: {result.note}, nothing imported"
                yield [file_alert(self.name, result.path, "file_empty", message)]
            if result.rejected:
                for r in result.rejected[:50]:
                    log.warning("row rejected", feed=self.name, path=str(src.path), line=r.line, reason=r.reason)
                yield [rejection_alert(result, self.name)]
