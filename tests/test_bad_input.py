"""Bad configuration and bad files: one clear line naming the key or the file, and nothing good lost."""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from structlog.testing import capture_logs

from tapeline.adapters.files import FileFeed, FileImportError, FileSource, read_bars, read_ticks
from tapeline.adapters.runner import run_feed
from tapeline.adapters.sources import files_feed
from tapeline.bus.jetstream import JetStreamApi, JetStreamError
from tapeline.bus.publisher import Publisher
from tapeline.config import ConfigError, Settings, load_settings
from tapeline.pipeline import Pipeline
from tapeline.schemas.events import Alert, Bar
from tapeline.schemas.subjects import DECISION, MD, OPS, encode_token
from tapeline.system import COMPONENTS
from tests.helpers import stored, wait_until

# ------------------------------------------------------------------ configuration: every bound, by walking the structs

# Numbers that may take any value: the simulator's seed. Dict values are checked by hand (the decoder
# cannot name their key): decision.weights.<agent> >= 0, watchdog.expected.<feed> > 0.
UNBOUNDED = {"sim.seed"}
REQUIRED = {"name": "raw", "symbol": "X", "path": "x.csv", "market": "files"}
# The top level of tapeline.toml: the fixed settings and one section per declared component.
TOP: dict[str, Any] = {f.encode_name: f.type for f in msgspec.inspect.type_info(Settings).fields} | {
    c.name: msgspec.inspect.type_info(c.Config) for c in COMPONENTS
}


def _numbers(t: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every int/float field under ``t`` as (dotted key, its type info); lists of structs as ``[0]``."""
    if isinstance(t, msgspec.inspect.UnionType):
        t = next(x for x in t.types if not isinstance(x, msgspec.inspect.NoneType))
    if isinstance(t, msgspec.inspect.StructType):
        for f in t.fields:
            yield from _numbers(f.type, f"{key}.{f.encode_name}" if key else f.encode_name)
    elif isinstance(t, msgspec.inspect.ListType) and isinstance(t.item_type, msgspec.inspect.StructType):
        yield from _numbers(t.item_type, f"{key}[0]")
    elif isinstance(t, (msgspec.inspect.IntType, msgspec.inspect.FloatType)):
        yield key, t


def _raw(key: str, value: object) -> dict[str, Any]:
    """The TOML-shaped dict that sets ``key`` (``feeds.mt5[0].batch``) to ``value``, required keys filled in."""
    raw: dict[str, Any] = {}
    node = raw
    *parents, last = key.split(".")
    types = TOP
    for part in parents:
        name = part.removesuffix("[0]")
        t = types[name]
        if part.endswith("[0]"):
            t = t.item_type
            child: dict[str, Any] = {f.encode_name: REQUIRED[f.encode_name] for f in t.fields if f.required}
            node[name] = [child]
        else:
            child = {f.encode_name: REQUIRED[f.encode_name] for f in t.fields if f.required}
            node[name] = child
        node = child
        types = {f.encode_name: f.type for f in t.fields}
    node[last] = value
    return raw


NUMBERS = [n for name, t in TOP.items() for n in _numbers(t, name)]


def test_the_walk_finds_every_section() -> None:
    keys = {k for k, _ in NUMBERS}
    assert {"clock.interval_s", "feeds.mt5[0].heartbeat_s", "feeds.files.chunk", "retention.md_max_age_s"} <= keys
    assert {
        "metrics_port",
        "momentum.window",
        "sim.ticks",
        "feeds.ibkr.contracts[0].volume_multiplier",
    } <= keys
    assert {"bars.max_future_s", "decision.max_age_s", "watchdog.missed_intervals", "notifier.retries"} <= keys


@pytest.mark.parametrize(("key", "t"), NUMBERS, ids=[k for k, _ in NUMBERS])
def test_every_number_is_bounded_below_and_a_bad_one_names_its_key(key: str, t: Any) -> None:
    if key in UNBOUNDED:
        assert t.ge is None and t.gt is None
        return
    assert t.ge is not None or t.gt is not None, f"{key} has no lower bound: a bad value would pass"
    too_low = t.ge - 1 if t.ge is not None else t.gt
    with pytest.raises(ConfigError) as e:
        load_settings(None, **_raw(key, too_low))  # as the TOML would give it
    message = str(e.value)
    assert message.startswith(f"{key}: ") and "\n" not in message, message
    if t.le is not None or t.lt is not None:
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_settings(None, **_raw(key, (t.le if t.le is not None else t.lt) + 1))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("clock.interval_s", 0.5),  # a clock below a second: an event a tick into a stream that never expires
        ("feeds.mt5[0].heartbeat_s", 0.1),
        ("feeds.ibkr.heartbeat_s", 0.5),
        ("feeds.mt5[0].poll_interval_s", 0.0),
        ("retention.duplicate_window_s", 0),
        ("retention.md_max_age_s", 0),  # market data must age out
        ("feeds.files.chunk", 0),
        ("feeds.mt5[0].batch", -1),
        ("momentum.window", 1),
        ("feeds.ibkr.port", 65536),
    ],
)
def test_values_that_would_write_without_bound_are_refused(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_settings(None, **_raw(key, value))


def test_checks_beyond_the_types_name_their_key(tmp_path: Path) -> None:
    cfg = tmp_path / "tapeline.toml"
    for toml, key in [
        ("[decision]\nweights = { momentum = -1.0 }", "decision.weights.momentum"),
        ("[watchdog]\nexpected = { ibkr = -5.0 }", "watchdog.expected.ibkr"),
        ("[retention]\nmd_max_bytes = 0", "retention.md_max_bytes"),
        ("[retention]\nduplicate_window_s = 7200\nmd_max_age_s = 3600", "retention.duplicate_window_s"),
        ('[[feeds.mt5]]\nname = "raw"\nreconnect_initial_s = 9\nreconnect_max_s = 3', "feeds.mt5[0].reconnect_max_s"),
        ('[[feeds.files.sources]]\npath = "x.csv"\nsymbol = "X"\ninterval = "1y"', "feeds.files.sources[0].interval"),
    ]:
        cfg.write_text(toml + "\n")
        with pytest.raises(ConfigError) as e:
            load_settings(cfg)
        assert key in str(e.value) and "\n" not in str(e.value), (toml, str(e.value))


def test_a_bad_command_line_value_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "tapeline.toml"
    cfg.write_text("metrics_port = 9000\n")
    with pytest.raises(ConfigError, match=r"^metrics_port: Expected `int` <= 65535"):
        load_settings(cfg, metrics_port=70_000)
    cfg.write_text("metrics_port = 70000\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(cfg))}: metrics_port: "):
        load_settings(cfg)


def test_config_does_not_import_the_mt5_feed() -> None:
    import subprocess
    import sys

    code = (
        "import sys, tapeline.adapters.config as c; c.validate_feeds(c.FeedsConfig()); "
        "sys.exit('tapeline.adapters.mt5' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ------------------------------------------------------------------ daily files decide out of the box


def test_momentum_follows_the_market_source(tmp_path: Path) -> None:
    def interval(s: Settings) -> str:
        return str(s.components()["momentum"].interval)

    assert interval(load_settings(None, feed="files")) == "1d"  # the sample set: mostly daily
    assert interval(load_settings(None, feed="sim")) == "1m"
    assert interval(load_settings(None)) == "1d"  # the active set (legacy) is files
    cfg = tmp_path / "tapeline.toml"
    cfg.write_text('[momentum]\ninterval = "1m"\n')
    assert interval(load_settings(cfg, feed="files")) == "1m"  # what the user says wins
    cfg.write_text('[[feeds.files.sources]]\npath = "m.csv"\nsymbol = "X"\ninterval = "5m"\n')
    assert interval(load_settings(cfg)) == "5m"
    cfg.write_text('[feeds.sources]\nactive = "live"\n')
    assert interval(load_settings(cfg)) == "1m"


async def test_shipped_daily_files_yield_decisions(
    tmp_path: Path, shared_data: Path, nc: Client, provisioned: str, publisher: Publisher
) -> None:
    cfg = tmp_path / "tapeline.toml"
    cfg.write_text(
        f'prefix = "{provisioned}"\n'
        + "".join(
            f'[[feeds.files.sources]]\npath = "{shared_data / "bars" / name}"\nsymbol = "{sym}"\n'
            for name, sym in (("nvda-daily-1999-2014.csv", "NVDA"), ("orcl-daily-1995-2014.csv", "ORCL"))
        )
    )
    s = load_settings(cfg, feed="files")  # as `tapeline feed files` and `tapeline up` read it: no [momentum]
    pipeline = Pipeline(nc, s.prefix, configs=s.components(), db_path=tmp_path / "p.duckdb", selected=("handlers",))
    await pipeline.start()
    try:
        await run_feed(files_feed(s.feeds), publisher)
        api = JetStreamApi(nc)

        async def decided(symbol: str) -> bool:
            subject = f"{provisioned}.decision.{encode_token(symbol)}"
            try:
                await api.call(f"STREAM.MSG.GET.{DECISION.stream(provisioned)}", {"last_by_subj": subject})
            except JetStreamError:
                return False
            return True

        await wait_until(lambda: decided("NVDA"), timeout=120, every=0.5)
        await wait_until(lambda: decided("ORCL"), timeout=120, every=0.5)
    finally:
        await pipeline.stop()


# ------------------------------------------------------------------ bad files

GOOD = "time,open,high,low,close,volume\n2024-01-02,10,11,9,10.5,100\n"
LAST = "2024-01-04,10,11,9,10.5,100\n"


def _one_line(message: str, *names: str) -> None:
    assert "\n" not in message and len(message) < 400 and message.isascii(), message
    for n in names:
        assert n in message, (n, message)


def test_a_huge_field_rejects_its_line_not_the_file(tmp_path: Path) -> None:
    p = tmp_path / "huge.csv"
    p.write_text(GOOD + "2024-01-03,10,11,9,10.5," + "9" * 10_000_000 + "\n" + LAST)
    r = read_bars(p, "X")
    assert [b.start_ns for b in r.events] == [1_704_153_600 * 10**9, 1_704_326_400 * 10**9]  # lines 2 and 4
    assert [x.line for x in r.rejected] == [3] and "field" in r.rejected[0].reason
    head, line = r.report().splitlines()  # the alert's text: the file, then one line per rejected row
    assert "huge.csv: 2 imported, 1 rejected of 3 rows" in head and line.startswith("  line 3: ")


def test_long_garbage_is_escaped_and_cut_in_reasons(tmp_path: Path) -> None:
    p = tmp_path / "long.csv"
    p.write_text(GOOD + "2024-01-03,10,11,9,\x1b[31m" + "z" * 100_000 + ",100\n" + LAST)
    r = read_bars(p, "X")
    assert len(r.events) == 2 and [x.line for x in r.rejected] == [3]
    reason = r.rejected[0].reason
    assert len(reason) < 120 and "\x1b" not in reason and "\\x1b" in reason, reason


def test_non_utf8_bytes_reject_their_row(tmp_path: Path) -> None:
    p = tmp_path / "latin1.csv"
    p.write_bytes(GOOD.encode() + b"2024-01-03,10,11,9,10\xe9,100\n" + LAST.encode())
    r = read_bars(p, "X")
    assert len(r.events) == 2 and [(x.line, "UTF-8" in x.reason) for x in r.rejected] == [(3, True)]


def test_gzip_is_read_and_a_truncated_one_keeps_what_came_before(tmp_path: Path) -> None:
    rows = "".join(f"2024-02-{d:02d},10,11,9,10.5,100\n" for d in range(1, 29))
    p = tmp_path / "bars.csv.gz"
    p.write_bytes(gzip.compress((GOOD + rows).encode()))
    assert len(read_bars(p, "X").events) == 29 and not read_bars(p, "X").rejected
    p.write_bytes(p.read_bytes()[:-40])
    r = read_bars(p, "X")
    assert 0 < len(r.events) < 29 and len(r.rejected) == 1 and "breaks off" in r.rejected[0].reason


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (os.urandom(20_000), "binary data"),
        (b"PK\x03\x04" + os.urandom(500), "zip"),
        (b"BZh91AY&SY" + os.urandom(500), "bzip2"),
        ("time,open\n".encode("utf-16"), "UTF-16"),
        (b"when,what\n2024-01-02,1\n", "no time column"),
        (b"time,price\n2024-01-02,1\n", "open, high, low and close"),
    ],
)
def test_a_file_that_cannot_be_imported_is_one_line_naming_it(tmp_path: Path, content: bytes, problem: str) -> None:
    p = tmp_path / "input.csv"
    p.write_bytes(content)
    with pytest.raises(FileImportError) as e:
        read_bars(p, "X")
    _one_line(str(e.value), str(p), problem)


def test_ticks_header_and_parquet_problems_name_the_file(tmp_path: Path) -> None:
    p = tmp_path / "ticks.csv"
    p.write_text("time,volume\n2024-01-02,1\n")
    with pytest.raises(FileImportError, match=r"ticks\.csv: tick files need"):
        read_ticks(p, "X")
    q = tmp_path / "bars.parquet"
    q.write_text(GOOD)
    with pytest.raises(FileImportError) as e:
        read_bars(q, "X")
    _one_line(str(e.value), str(q), "not a readable Parquet file")
    with pytest.raises(FileImportError, match="is a directory"):
        read_bars(tmp_path, "X")


def test_empty_and_header_only_files_say_so(tmp_path: Path) -> None:
    empty, header = tmp_path / "empty.csv", tmp_path / "header.csv"
    empty.write_text("")
    header.write_text("time,open,high,low,close\n\n")
    assert (read_bars(empty, "X").note, read_ticks(empty, "X").note) == ("empty file", "empty file")
    r = read_bars(header, "X")
    assert (r.events, r.rows, r.note) == ([], 0, "header only, no data rows")


async def test_file_feed_reports_each_bad_file_and_keeps_every_good_row(
    tmp_path: Path, nc: Client, provisioned: str, publisher: Publisher
) -> None:
    files = {
        "good.csv": GOOD.encode() + LAST.encode(),
        "binary.csv": os.urandom(20_000),
        "empty.csv": b"",
        "header.csv": b"time,open,high,low,close\n",
        "mixed.csv": GOOD.encode() + b"2024-01-03,x,11,9,10.5,100\n" + LAST.encode(),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "folder.csv").mkdir()
    sources = [FileSource(tmp_path / n, n.split(".")[0].upper()) for n in [*files, "folder.csv"]]
    feed = FileFeed(sources)
    with capture_logs() as logs:
        await run_feed(feed, publisher)
    bars = [e for e in await stored(nc, MD.stream(provisioned)) if isinstance(e, Bar)]
    assert sorted(b.symbol for b in bars) == ["GOOD", "GOOD", "MIXED", "MIXED"]
    alerts = {(a.kind, a.severity, a.key.rsplit(":", 1)[1]) for a in await _alerts(nc, provisioned)}
    assert alerts == {
        ("file_unreadable", "critical", str(tmp_path / "binary.csv")),
        ("file_unreadable", "critical", str(tmp_path / "folder.csv")),
        ("file_empty", "warning", str(tmp_path / "empty.csv")),
        ("file_empty", "warning", str(tmp_path / "header.csv")),
        ("rows_rejected", "warning", str(tmp_path / "mixed.csv")),
    }
    problems = [e for e in logs if e["log_level"] in ("warning", "error")]
    assert {(e["event"], Path(e["path"]).name) for e in problems} == {
        ("file not imported", "binary.csv"),
        ("file not imported", "folder.csv"),
        ("file has no data", "empty.csv"),
        ("file has no data", "header.csv"),
        ("row rejected", "mixed.csv"),
    }
    for e in problems:
        _one_line(str(e.get("reason", "")))
    assert len(feed.failed) == 2


async def _alerts(nc: Client, prefix: str) -> list[Alert]:
    return [e for e in await stored(nc, OPS.stream(prefix)) if isinstance(e, Alert)]
