"""Secrets canary: every secret the project reads holds a random marker; no marker may surface anywhere.

Real processes (demo, a feed, ``up``, status, query, replay) run against a nats-server that
requires a password, each secret variable set to a distinct canary. Afterwards no canary may be
in any output, log, stored event, JetStream store file, DuckDB or LanceDB file, the metrics page
or a webhook body. And SQL sent to the query service must not read files (the environment of the
projector is one ``read_text('/proc/self/environ')`` away otherwise).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import urllib.request
from pathlib import Path

import duckdb
import msgspec
import pytest

from tapeline.bus.connection import NatsSettings, close_connection, connect
from tapeline.bus.server import EmbeddedNats
from tapeline.projections.duckdb import ProjectionDb
from tapeline.projections.query import QueryError, open_read_only, query_file, run_query
from tapeline.schemas.subjects import FAMILIES, MD
from tests.helpers import TAPELINE, projected, start_tapeline, stored, stream_last_seq, wait_until
from tests.test_alerts_webhook import WebhookServer
from tests.test_cli import _free_port

FILE_READERS = [
    "SELECT content FROM read_text('{file}')",
    "SELECT * FROM read_csv('{file}')",
    "SELECT * FROM glob('{dir}/*')",
    "SELECT content FROM read_blob('{file}')",
]


@pytest.mark.parametrize("sql", FILE_READERS)
def test_queries_cannot_read_files_and_the_projector_still_writes(tmp_path: Path, sql: str) -> None:
    """Live (the projector's connection, which then still commits Arrow batches) and from the file."""
    canary = secrets.token_hex(12)
    (tmp_path / "secret.csv").write_text(f"key\n{canary}\n")
    sql = sql.format(file=tmp_path / "secret.csv", dir=tmp_path)
    db = ProjectionDb(tmp_path / "p.duckdb")
    try:
        with pytest.raises(QueryError, match=r"^refused: queries read the projection tables only") as live:
            run_query(db.con, sql)
        db.commit(
            "TAPE_MD", {"ticks": [(1, "id1", 1, 1, "sim", "sim", "", "NVDA", 1.0, 1.1, 1.05, 1.0, 1.0, 0, 0)]}, 1, {}
        )
        assert run_query(db.con, "SELECT count(*) FROM ticks").rows == [[1]]
        with pytest.raises(QueryError, match="only SELECT"):
            run_query(db.con, "SET enable_external_access = true")
        with pytest.raises(duckdb.InvalidInputException, match="locked"):
            db.con.execute("SET enable_external_access = true")  # not even outside the query path
    finally:
        db.close()
    with pytest.raises(QueryError, match=r"^refused: ") as from_file:
        query_file(tmp_path / "p.duckdb", sql)
    for e in (live, from_file):
        assert canary not in str(e.value) and "\n" not in str(e.value)


def _canaries() -> dict[str, str]:
    names = [
        "TAPELINE_NATS_URL",  # the password inside it
        "TAPELINE_NATS_USER",
        "TAPELINE_NATS_PASSWORD",
        "TAPELINE_NATS_TOKEN",
        "TAPELINE_NATS_CREDS",  # the creds file's content
        "TAPELINE_ALERT_WEBHOOK_URL",  # the token in its path and query
        "TAPELINE_MT5_RAW_PASSWORD",  # named by [[feeds.mt5]] name = "raw"
        "MARKETAUX_API_KEY",
        "TIINGO_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "OPENAI_API_KEY",
        "--nats",  # the password inside a --nats URL
    ]
    return {n: f"cnry{secrets.token_hex(10)}" for n in names}


def _leaks(canaries: dict[str, str], data: bytes | str) -> list[str]:
    raw = data.encode() if isinstance(data, str) else data
    return [name for name, c in canaries.items() if c.encode() in raw]


CONFIG = """
data_dir = "{data}"
metrics_port = 0
batch_ticks = false  # one tick per message: the test counts messages
[sim]
ticks = 3000
[bars]
intervals = ["1s"]
[momentum]
interval = "1s"
window = 3
[clock]
interval_s = 1
[watchdog]
expected = {{ ghost = 1.0 }}
[[feeds.mt5]]
name = "raw"
symbols = ["EURUSD"]
[news]
providers = []  # the demo scores news offline, with no key; news would only slow this test 3x
"""


async def test_no_secret_reaches_outputs_events_tables_files_metrics_or_webhooks(tmp_path: Path) -> None:
    c = _canaries()
    logs = tmp_path / "logs"
    logs.mkdir()
    creds = tmp_path / "user.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{c['TAPELINE_NATS_CREDS']}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\nSU{c['TAPELINE_NATS_CREDS']}\n------END USER NKEY SEED------\n"
    )
    users = [("urluser", c["TAPELINE_NATS_URL"]), (c["TAPELINE_NATS_USER"], c["TAPELINE_NATS_PASSWORD"])]
    users.append(("cliuser", c["--nats"]))
    listed = ", ".join(f'{{user: "{u}", password: "{p}"}}' for u, p in users)
    server = EmbeddedNats(tmp_path / "nats", extra_config=f"authorization {{ users: [ {listed} ] }}")
    server.start()
    hostport = server.url.removeprefix("nats://")
    cfg = tmp_path / "tapeline.toml"
    cfg.write_text(CONFIG.format(data=tmp_path / "data"))
    demo_cfg = tmp_path / "demo.toml"
    demo_cfg.write_text(CONFIG.format(data=tmp_path / "demo"))
    port = _free_port()
    async with WebhookServer([]) as hook:
        hook_token = c["TAPELINE_ALERT_WEBHOOK_URL"]
        base = {
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
            "TAPELINE_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{hook.port}/api/webhooks/1/{hook_token}?t={hook_token}",
            **{k: v for k, v in c.items() if k.endswith("_KEY") or k.startswith("TAPELINE_MT5")},
        }
        env_url = {**base, "TAPELINE_NATS_URL": f"nats://urluser:{c['TAPELINE_NATS_URL']}@{hostport}"}
        env_user = {**env_url, **{k: c[k] for k in ("TAPELINE_NATS_USER", "TAPELINE_NATS_PASSWORD")}}
        env_user["TAPELINE_NATS_TOKEN"] = c["TAPELINE_NATS_TOKEN"]  # set, unused: user/password take precedence
        env_creds = {**env_url, "TAPELINE_NATS_CREDS": str(creds)}
        results: dict[str, subprocess.CompletedProcess[str]] = {}

        async def run(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
            full = {**{k: v for k, v in os.environ.items() if not k.startswith("TAPELINE_")}, **env}
            out = await asyncio.to_thread(
                subprocess.run, [*TAPELINE, *args], capture_output=True, text=True, timeout=180, env=full
            )
            (logs / f"{name}.out").write_text(out.stdout)
            (logs / f"{name}.err").write_text(out.stderr)
            results[name] = out
            return out

        demo = await run("demo", env_user, "demo", "-c", str(demo_cfg))
        # Ran to its end. Exit 1 is its replay check disagreeing: on a busy machine the rebuild of a
        # LanceDB table sometimes comes back empty (seen on main too), a matter for the replay tests.
        assert demo.returncode in (0, 1) and "Replay verification" in demo.stdout, demo.stdout + demo.stderr

        up = start_tapeline("up", "-c", str(cfg), "--metrics-port", str(port), log=logs / "up.log", env=env_url)
        nc = await connect(
            NatsSettings(url=server.url, user=c["TAPELINE_NATS_USER"], password=c["TAPELINE_NATS_PASSWORD"])
        )
        try:
            await wait_until(lambda: "tapeline up on" in (logs / "up.log").read_text(), timeout=120)
            nats_arg = f"nats://cliuser:{c['--nats']}@{hostport}"
            feed = await run("feed", env_url, "feed", "sim", "-c", str(cfg), "--nats", nats_arg)
            assert feed.returncode == 0, feed.stderr
            md = MD.stream("tape")
            assert await stream_last_seq(nc, md) >= 3000

            async def all_projected() -> bool:
                return bool(hook.bodies) and await projected(nc, "tape", md) == await stream_last_seq(nc, md)

            await wait_until(all_projected, timeout=120)
            assert all(hook_token in p for p in hook.paths)  # the notifier used the URL from the environment
            metrics = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
            )
            assert b"tapeline_events_consumed_total" in metrics
            status = await run("status", env_user, "status", "-c", str(cfg))
            assert status.returncode == 0 and "TAPE_MD" in status.stdout, status.stdout + status.stderr
            ticks = await run("query", env_user, "query", "-c", str(cfg), "SELECT * FROM ticks LIMIT 5")
            assert ticks.returncode == 0 and ticks.stdout.count("sim") >= 5, ticks.stdout + ticks.stderr
            environ = "SELECT content FROM read_text('/proc/self/environ')"
            live = await run("query-environ-live", env_user, "query", "-c", str(cfg), environ)
            bad_creds = await run("status-creds", env_creds, "status", "-c", str(cfg))
            assert bad_creds.returncode == 2 and len(bad_creds.stderr.strip().splitlines()) == 1, bad_creds.stderr
            up.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(up.wait, 60) == 0, (logs / "up.log").read_text()[-3000:]
            from_file = await run("query-environ-file", env_user, "query", "-c", str(cfg), environ)
            for refused in (live, from_file):
                assert refused.returncode == 1, refused.stdout + refused.stderr
                lines = (refused.stdout + refused.stderr).strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("refused: "), lines
            replay = await run("replay", env_user, "replay", "--verify", "-c", str(cfg))
            assert replay.returncode in (0, 1) and "Replay verification" in replay.stdout, replay.stdout + replay.stderr

            events = [e for fam in FAMILIES for e in await stored(nc, fam.stream("tape"))]
            assert len(events) > 3000
            assert _leaks(c, b"\n".join(msgspec.json.encode(e) for e in events)) == []
        finally:
            await close_connection(nc)
            if up.poll() is None:
                up.kill()
            server.stop()
        assert _leaks(c, metrics) == [], "the metrics page"
        assert hook.bodies and _leaks(c, json.dumps(hook.bodies)) == [], hook.bodies

    for name, out in results.items():
        assert _leaks(c, out.stdout + out.stderr) == [], (name, out.stdout + out.stderr)
    _check_files(tmp_path, c, own={server.data_dir / "nats-server.conf", creds})


def _check_files(tmp_path: Path, c: dict[str, str], own: set[Path]) -> None:
    """Every DuckDB table's text and every file's bytes (stores, DuckDB, LanceDB, logs): no canary.

    ``own``: files the test wrote with secrets in them (the server's config must hold the passwords).
    """
    for db in [*tmp_path.glob("*/projections/*.duckdb"), *tmp_path.glob("*/replay/*.duckdb")]:
        con = open_read_only(db)
        try:
            text = [
                repr(con.execute(f'SELECT * FROM "{t}"').fetchall())
                for (t,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
            ]
        finally:
            con.close()
        assert _leaks(c, "".join(text)) == [], db
    scanned = [p for p in tmp_path.rglob("*") if p.is_file() and p not in own]
    for kind in ("*.blk", "*.duckdb", "*.lance", "*.log", "*.err"):
        assert any(p.match(kind) for p in scanned), kind
    leaked = {str(p.relative_to(tmp_path)): _leaks(c, p.read_bytes()) for p in scanned}
    assert {p: names for p, names in leaked.items() if names} == {}
