"""The `tapeline` command as a user runs it: config errors, schema export, decisions, metrics."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from nats.aio.client import Client

from tapeline.adapters.sim import SimFeed
from tapeline.bus.publisher import Publisher
from tapeline.schemas.events import EVENT_TYPES
from tapeline.schemas.subjects import FAMILIES, decisions_bucket
from tests.helpers import TAPELINE, start_tapeline, wait_until, write_config


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TAPELINE, *args], capture_output=True, text=True, timeout=120)


def assert_one_line_error(out: subprocess.CompletedProcess[str], *names: str) -> None:
    """Exit 2, a single line on stderr that names every one of ``names``, nothing on stdout, no traceback."""
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text, text
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and not out.stdout.strip(), text
    assert lines[0].startswith("configuration error: "), text
    for name in names:
        assert name in lines[0], (name, text)


def invoke(*args: str) -> tuple[int, list[str]]:
    """The CLI in-process: exit code and output lines; any exception other than an exit fails the test."""
    from typer.testing import CliRunner

    from tapeline.cli import app

    r = CliRunner().invoke(app, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.output.strip().splitlines()


BAD_CONFIGS = [
    ('prefix = "Bad Prefix"', ["prefix"]),
    ("no_such_key = 1", ["no_such_key", "unknown key"]),
    ("[clock]\ninterval = 2", ["clock.interval", "did you mean 'interval_s'"]),
    ('[bars]\nintervals = ["1m"]\n[momentum]\ninterval = "5m"', ["momentum.interval", "bars.intervals"]),
    ('[bars]\nintervals = ["90x"]', ["bars.intervals"]),
    ("[momentum]\nwindow = 0", ["momentum.window", ">= 2"]),
    ("metrics_port = 70000", ["metrics_port", "<= 65535"]),
    ('log_level = "verbose"', ["log_level", "debug"]),
    ('[[feeds.mt5]]\nname = "Raw Feed"\nsymbols = ["EURUSD"]', ["feeds.mt5[0].name"]),
    ('[[feeds.mt5]]\nname = "raw"\nheartbeat_s = 0', ["feeds.mt5[0].heartbeat_s", ">= 1.0"]),
    ('[[feeds.mt5]]\nname = "raw"\nbatch = 0', ["feeds.mt5[0].batch", ">= 1", "10000"]),
    ("[clock]\ninterval_s = -1", ["clock.interval_s", ">= 1.0", "default is 10.0"]),
    ("[clock]\ninterval_s = 0.001", ["clock.interval_s", ">= 1.0"]),
    ("[watchdog]\nexpected = { ibkr = 0 }", ["watchdog.expected.ibkr", "> 0"]),
    ("[feeds.ibkr]\nport = 0", ["feeds.ibkr.port", "7497"]),
    ("[feeds.ibkr]\nheartbeat_s = -5", ["feeds.ibkr.heartbeat_s"]),
    ("[feeds.ibkr]\nreconnect_max_s = 0.5", ["feeds.ibkr.reconnect_max_s", "reconnect_initial_s"]),
    ("[feeds.files]\nchunk = 0", ["feeds.files.chunk", ">= 1"]),
    ("[retention]\nduplicate_window_s = -120", ["retention.duplicate_window_s", ">= 1"]),
    ("[retention]\nrecord_duplicate_window_s = 0", ["retention.record_duplicate_window_s"]),
    ("[retention]\nmd_max_age_s = -1", ["retention.md_max_age_s"]),
    ("[retention]\nreplica = 3", ["retention.replica", "did you mean 'replicas'"]),
    ("a = [", ["tapeline.toml", "not valid TOML"]),
    ('[handlers]\nbar_intervals = ["1m"]', ["handlers", "split by component", "[momentum]"]),
    ("[feeds.watchdog]\nclock_s = 1", ["feeds.watchdog", "[clock] interval_s"]),
]
# The reported ones also as a user runs them: a real process, so a traceback would show.
REPORTED = [0, 11, 12, 17, 18, 22, 23]


@pytest.mark.parametrize(("toml", "names"), [BAD_CONFIGS[i] for i in REPORTED])
def test_bad_configuration_stops_start_up_naming_the_key(tmp_path: Path, toml: str, names: list[str]) -> None:
    cfg = tmp_path / "tapeline.toml"
    cfg.write_text(toml + "\n")
    assert_one_line_error(run("up", "-c", str(cfg)), *names)


def test_every_bad_value_gives_one_line_naming_its_key(tmp_path: Path) -> None:
    cfg = tmp_path / "tapeline.toml"
    for toml, names in BAD_CONFIGS:
        cfg.write_text(toml + "\n")
        code, lines = invoke("up", "-c", str(cfg))
        assert code == 2 and len(lines) == 1 and lines[0].startswith("configuration error: "), (toml, lines)
        assert all(n in lines[0] for n in names), (toml, names, lines[0])


def test_config_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'prefix = "caf\xe9"\n')
    assert_one_line_error(run("up", "-c", str(latin1)), "latin1.toml", "not UTF-8")
    assert_one_line_error(run("status", "--config", str(tmp_path)), str(tmp_path), "is a directory")


def test_a_named_config_must_exist_the_default_may_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_one_line_error(run("up", "-c", "/nonexistent.toml"), "/nonexistent.toml", "no such file")
    for args in (["status", "--config", "typo.toml"], ["feed", "files", "-c", str(tmp_path / "typo.toml")]):
        code, lines = invoke(*args)
        assert code == 2 and len(lines) == 1 and "typo.toml: no such file" in lines[0], lines
    # no tapeline.toml here: the defaults apply, so the file feed's next check speaks (its sample data)
    monkeypatch.chdir(tmp_path)
    code, lines = invoke("feed", "files", "--nats", "nats://127.0.0.1:1")
    assert code == 2 and len(lines) == 1 and "feeds.files.data_dir" in lines[0] and "tapeline.toml" not in lines[0]


def test_missing_source_file_is_named_with_its_key(tmp_path: Path) -> None:
    cfg = tmp_path / "tapeline.toml"
    cfg.write_text(f'[[feeds.files.sources]]\npath = "{tmp_path / "gone.csv"}"\nsymbol = "X"\n')
    out = run("feed", "files", "-c", str(cfg), "--nats", "nats://127.0.0.1:1")
    assert_one_line_error(out, "feeds.files.sources[0].path", "gone.csv", "does not exist")
    cfg.write_text(f'[[feeds.files.sources]]\npath = "{tmp_path}"\nsymbol = "X"\n')
    code, lines = invoke("demo", "--files", "-c", str(cfg))
    assert code == 2 and len(lines) == 1 and "feeds.files.sources[0].path" in lines[0] and "not a file" in lines[0]


def test_schemas_export_writes_one_schema_per_event(tmp_path: Path) -> None:
    out = run("schemas", "export", str(tmp_path / "schemas"))
    assert out.returncode == 0, out.stderr
    files = sorted(p.name for p in (tmp_path / "schemas").glob("*.schema.json"))
    events = [f for f in files if not f.startswith("stream.")]
    assert len(events) == len(EVENT_TYPES) and "decision.schema.json" in files
    assert {f"stream.{fam.key}.schema.json" for fam in FAMILIES} <= set(files)
    decision = json.loads((tmp_path / "schemas" / "decision.schema.json").read_text())
    assert decision["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"target", "synthesis", "agent_signals"} <= set(decision["$defs"]["DecisionEnvelope"]["properties"])


def test_stream_schemas_validate_single_and_batch_messages_and_refuse_others(tmp_path: Path) -> None:
    import jsonschema

    from tapeline.schemas.codec import encode
    from tapeline.schemas.export import export_json_schemas

    export_json_schemas(tmp_path)
    md = json.loads((tmp_path / "stream.md.schema.json").read_text())
    ticks = list(SimFeed(["NVDA"], ticks=3, seed=1).generate())
    jsonschema.validate(json.loads(encode(ticks[0])), md)
    jsonschema.validate(json.loads(encode(ticks)), md)  # the batch form
    newer = json.loads(encode(ticks[0])) | {"added_by_a_newer_producer": 1}
    jsonschema.validate(newer, md)  # events are open: consumers ignore fields they do not know
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(encode(ticks[0])) | {"type": "decision"}, md)  # not a type of this stream
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in json.loads(encode(ticks[0])).items() if k != "symbol"}, md)


def test_schemas_export_to_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = run("schemas", "export", str(blocker / "schemas"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and str(blocker / "schemas") in out.stderr, out.stderr


async def test_decisions_before_any_pipeline_ran_is_one_line(nats_url: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "empty", nats_url)
    out = await asyncio.to_thread(run, "decisions", "NVDA", "-c", str(cfg))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "no decisions on this server yet" in out.stderr, out.stderr


def test_help_texts_show_config_section_names() -> None:
    assert "[feeds.files]" in run("demo", "--help").stdout
    assert "[[feeds.mt5]]" in run("feed", "mt5", "--help").stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_up_serves_metrics_and_decisions_are_looked_up(
    nc: Client, provisioned: str, publisher: Publisher, nats_url: str, tmp_path: Path
) -> None:
    port = _free_port()
    cfg = write_config(tmp_path, provisioned, nats_url)
    cfg.write_text(
        cfg.read_text().replace("metrics_port = 0", f"metrics_port = {port}")
        + '[bars]\nintervals = ["1s"]\n[momentum]\ninterval = "1s"\nwindow = 3\n'
    )
    proc = start_tapeline(
        "up", "-c", str(cfg), "--only", "handlers", "--only", "projector", "--only", "vectors", log=tmp_path / "up.log"
    )
    try:
        await publisher.publish(list(SimFeed(["BRK.B"], ticks=3000, seed=5, mean_gap_ms=20).generate()))

        def metrics() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    return str(r.read().decode())
            except OSError:
                return ""

        text = ""

        async def decided() -> bool:  # the page that shows it is the one checked below
            nonlocal text
            text = await asyncio.to_thread(metrics)
            m = re.search(r'tapeline_events_consumed_total\{consumer="decision_intel"\} (\S+)', text)
            return m is not None and float(m.group(1)) > 0

        await wait_until(decided, timeout=60)
        # labelled counters exist at 0 before anything happened to them (panels read 0, not "No data")
        assert 'tapeline_events_failed_total{consumer="decision_intel",outcome="dead"} 0.0' in text
        assert re.search(r'tapeline_component_events_total\{component="decision",outcome="(BUY|SELL|HOLD)"\}', text)
        await wait_until(
            lambda: 'tapeline_projection_lag_messages{projection="market_returns"' in metrics(), timeout=60
        )
        for name in (
            "tapeline_events_published_total",
            "tapeline_handler_batch_seconds_bucket",
            "tapeline_consumer_pending_messages",
            "tapeline_projection_lag_messages",
        ):
            assert name in text, name
        out = await asyncio.to_thread(run, "decisions", "BRK.B", "-c", str(cfg))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "BRK.B" in out.stdout and any(v in out.stdout for v in ("BUY", "HOLD", "SELL"))
        unknown = await asyncio.to_thread(run, "decisions", "UNKNOWN", "-c", str(cfg))
        assert unknown.returncode == 1 and "Traceback" not in unknown.stderr, unknown.stderr
        assert unknown.stderr.strip().splitlines() == ["no decision for 'UNKNOWN' (symbols with decisions: BRK.B)"], (
            unknown.stderr
        )
        kv = await nc.jetstream().key_value(decisions_bucket(provisioned))
        day = json.loads((await kv.get("BRK=2EB")).value or b"{}")["target"]["trade_date"]

        async def indexed() -> bool:
            return f"BRK=2EB.{day}" in await kv.keys()

        await wait_until(indexed, timeout=60)
        dated = await asyncio.to_thread(run, "decisions", "BRK.B", "--date", day, "-c", str(cfg))
        assert dated.returncode == 0 and "BRK.B" in dated.stdout, dated.stdout + dated.stderr
        other = await asyncio.to_thread(run, "decisions", "BRK.B", "--date", "1999-01-04", "-c", str(cfg))
        assert other.returncode == 1 and "no decision for 'BRK.B' on 1999-01-04" in other.stderr, other.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "up.log").read_text()[-2000:]


@pytest.mark.parametrize(
    "args", [["NVDA", "--date", "2026-13-01"], ["NVDA", "--date", "tomorrow"], ["--date", "2026-05-11"]]
)
def test_decisions_date_must_be_an_iso_date_with_a_symbol(args: list[str]) -> None:
    code, lines = invoke("decisions", *args)
    assert code == 2 and len(lines) == 1 and "--date" in lines[0] and "2026-05-11" in lines[0], lines


def test_the_demo_never_reaches_a_real_broker_and_scans_the_simulator_at_grade_b(tmp_path: Path) -> None:
    from tapeline.cli import demo_overrides
    from tapeline.config import load_settings

    cfg = tmp_path / "tapeline.toml"
    cfg.write_text('[execution]\nbroker = "mt5"\n[scanner]\nmin_grade = "A+"\n')
    configs = load_settings(cfg).components()
    assert configs["execution"].broker == "mt5"
    sim = demo_overrides(configs, files=False)
    assert sim["execution"].broker == "paper" and sim["scanner"].min_grade == "B"
    assert sim["news_llm"].provider == "offline"  # never a paid LLM, whatever keys the shell holds
    files = demo_overrides(configs, files=True)
    assert files["execution"].broker == "paper" and "scanner" not in files  # real prices: the configured grade
