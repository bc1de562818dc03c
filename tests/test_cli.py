"""The `tapeline` command as a user runs it: config errors, schema export, decisions, metrics."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from nats.aio.client import Client

from adapters.sim import SimFeed
from bus.publisher import Publisher
from tests.helpers import TAPELINE, start_tapeline, wait_until, write_config


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TAPELINE, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ('prefix = "Bad Prefix"', "prefix"),
        ("no_such_key = 1", "no_such_key"),
        ('[bars]\nintervals = ["1m"]\n[momentum]\ninterval = "5m"', "momentum.interval"),
        ('[bars]\nintervals = ["90x"]', "bars"),
        ('[handlers]\nbar_intervals = ["1m"]', "split by component"),
        ("metrics_port = 70000", "metrics_port"),
        ('[[feeds.mt5]]\nname = "Raw Feed"\nsymbols = ["EURUSD"]', "feeds.mt5"),
    ],
)
def test_bad_configuration_stops_start_up_naming_the_key(tmp_path: Path, toml: str, names: str) -> None:
    cfg = tmp_path / "tapeline.toml"
    cfg.write_text(toml + "\n")
    out = run("up", "-c", str(cfg))
    assert out.returncode == 2
    assert "configuration error" in out.stdout and names in out.stdout, out.stdout + out.stderr


def test_schemas_export_writes_one_schema_per_event(tmp_path: Path) -> None:
    out = run("schemas", "export", str(tmp_path / "schemas"))
    assert out.returncode == 0, out.stderr
    files = sorted(p.name for p in (tmp_path / "schemas").glob("*.schema.json"))
    assert len(files) == 23 and "decision.schema.json" in files
    decision = json.loads((tmp_path / "schemas" / "decision.schema.json").read_text())
    assert {"target", "synthesis", "agent_signals"} <= set(decision["$defs"]["DecisionEnvelope"]["properties"])


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
    proc = start_tapeline("up", "-c", str(cfg), "--only", "handlers", "--only", "projector", log=tmp_path / "up.log")
    try:
        await publisher.publish(list(SimFeed(["BRK.B"], ticks=3000, seed=5, mean_gap_ms=20).generate()))

        def metrics() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return str(r.read().decode())
            except OSError:
                return ""

        await wait_until(lambda: 'tapeline_events_consumed_total{consumer="h_decision_intel"}' in metrics(), 30)
        text = metrics()
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
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "up.log").read_text()[-2000:]
