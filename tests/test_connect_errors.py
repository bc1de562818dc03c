"""A bad NATS server, URL or password: one line naming the server (no credentials), exit 2, quickly.

One-shot commands try once; `up` and feeds retry for TAPELINE_NATS_START_RETRY_S, one line per
attempt, never for a refused password.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tapeline.bus.connection import NatsSettings, connect
from tapeline.bus.server import EmbeddedNats
from tests.helpers import TAPELINE, wait_until, write_config

PASSWORD = "s3cret-Pw"
FEW_SECONDS = 10.0  # "within a few seconds", with room for a busy machine and Python start-up


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    srv = EmbeddedNats(
        tmp_path_factory.mktemp("auth"), extra_config=f'authorization {{ user: alice, password: "{PASSWORD}" }}'
    )
    srv.start()
    yield srv
    srv.stop()


def _refused_url() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{s.getsockname()[1]}"


def run(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TAPELINE_")}
    started = time.monotonic()
    out = subprocess.run(
        [*TAPELINE, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**clean, **env}
    )
    return out, time.monotonic() - started


def assert_one_line(out: subprocess.CompletedProcess[str], took: float, *, names: str, cause: str) -> None:
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert took < FEW_SECONDS, f"took {took:.1f}s"
    assert len(text.strip().splitlines()) == 1, text
    assert "Traceback" not in text and PASSWORD not in text, text
    assert names in text and cause in text, text


@pytest.mark.parametrize("command", [["status"], ["query", "SELECT 1"], ["decisions"], ["replay"]])
def test_one_shot_commands_fail_at_once_on_an_unreachable_server(tmp_path: Path, command: list[str]) -> None:
    url = _refused_url()
    out, took = run(tmp_path, *command, "--nats", url)
    assert_one_line(out, took, names=url, cause="connection refused")


@pytest.mark.parametrize(
    ("url", "cause"),
    [
        (f"nats://alice:{PASSWORD}@127.0.0.1:notaport", "invalid NATS URL 'nats://alice:***@127.0.0.1:notaport'"),
        ("http://127.0.0.1:4222", "scheme 'http' is not nats"),
        ("nats://:4222", "no host"),
    ],
)
def test_a_malformed_url_is_named_with_the_problem(tmp_path: Path, url: str, cause: str) -> None:
    out, took = run(tmp_path, "status", "--nats", url)
    assert_one_line(out, took, names="invalid NATS URL", cause=cause)


@pytest.mark.parametrize(
    ("command", "how"), [(["status"], "env"), (["replay"], "url"), (["up", "--only", "projector"], "env")]
)
def test_a_wrong_password_is_reported_once_never_retried(
    tmp_path: Path, auth_server: EmbeddedNats, command: list[str], how: str
) -> None:
    if how == "env":
        url, env = auth_server.url, {"TAPELINE_NATS_USER": "alice", "TAPELINE_NATS_PASSWORD": f"not-{PASSWORD}"}
    else:
        url, env = auth_server.url.replace("nats://", f"nats://alice:{PASSWORD}x@"), {}
    cfg = write_config(tmp_path, "auth", url)  # `up` reads the URL from its config
    out, took = run(tmp_path, *command, "-c", str(cfg), "--nats", url, TAPELINE_NATS_START_RETRY_S="60", **env)
    shown = auth_server.url if how == "env" else auth_server.url.replace("nats://", "nats://alice:***@")
    assert_one_line(out, took, names=shown, cause="authorization failed")


def test_up_retries_a_missing_server_for_a_bounded_time(tmp_path: Path) -> None:
    url = _refused_url()
    cfg = write_config(tmp_path, "retry", url)
    out, took = run(tmp_path, "up", "-c", str(cfg), TAPELINE_NATS_START_RETRY_S="2")
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert out.returncode == 2 and 2 <= took < 2 + FEW_SECONDS, f"rc {out.returncode} after {took:.1f}s"
    assert "Traceback" not in out.stderr
    assert all("NATS not reachable yet; retrying" in line for line in lines[:-1]) and len(lines) >= 2, lines
    assert lines[-1].startswith(f"cannot connect to NATS at {url}: connection refused"), lines


def test_up_shows_its_server_without_the_password(tmp_path: Path, auth_server: EmbeddedNats) -> None:
    url = auth_server.url.replace("nats://", f"nats://alice:{PASSWORD}@")
    cfg = write_config(tmp_path, "shown", "")
    log = tmp_path / "up.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [*TAPELINE, "up", "-c", str(cfg), "--only", "projector"],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "TAPELINE_NATS_URL": url, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 60
        while "tapeline up" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)  # polling the log for the start line, not timing anything
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "nats://alice:***@127.0.0.1" in text, text
    assert PASSWORD not in text


async def test_credentials_refused_on_reconnect_end_the_connection(tmp_path: Path) -> None:
    """The server comes back with another password: reconnecting would fail forever, so the client closes."""
    srv = EmbeddedNats(tmp_path / "nats", extra_config='authorization { user: alice, password: "one" }')
    srv.start()
    try:
        nc = await connect(NatsSettings(url=srv.url, user="alice", password="one"))
        srv.extra_config = 'authorization { user: alice, password: "two" }'
        srv.stop()
        srv.start()
        await wait_until(lambda: nc.is_closed, timeout=30)
    finally:
        srv.stop()
