"""One owner per data directory; `serve` stops its server on SIGTERM; one metrics port per role process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tapeline.bus.lock import DirectoryInUse, owner
from tapeline.bus.server import EmbeddedNats
from tapeline.session import running_embedded
from tests.helpers import TAPELINE, start_tapeline, wait_until


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TAPELINE, *args], capture_output=True, text=True, timeout=120)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _config(tmp_path: Path, **extra: str) -> Path:
    extra = {"metrics_port": "0", **extra}
    cfg = tmp_path / "tapeline.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n' + "".join(f"{k} = {v}\n" for k, v in extra.items()))
    return cfg


def test_a_second_server_on_the_same_store_is_refused_naming_the_owner(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "nats"):
        assert owner(tmp_path / "nats") == os.getpid()
        with pytest.raises(DirectoryInUse, match=f"in use by PID {os.getpid()}"):
            EmbeddedNats(tmp_path / "nats").start()
    assert owner(tmp_path / "nats") is None  # stopping releases it


async def test_serve_stops_its_server_on_sigterm_and_holds_the_directory(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    serve = start_tapeline("serve", "-c", str(cfg), "--port", "-1", log=tmp_path / "serve.log")
    await wait_until(lambda: running_embedded(tmp_path / "data") is not None, timeout=60)
    server_pid = int(next((tmp_path / "data" / "nats").glob("nats-server_*.ports")).stem.rsplit("_", 1)[1])
    assert owner(tmp_path / "data" / "nats") == serve.pid

    second = await asyncio.to_thread(run, "serve", "-c", str(cfg), "--port", "-1")
    demo = await asyncio.to_thread(run, "demo", "-c", str(cfg))
    for out in (second, demo):
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and f"in use by PID {serve.pid}" in out.stderr, out.stderr
    assert (tmp_path / "data" / "nats" / "jetstream").exists()  # the demo did not wipe it

    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()
    await wait_until(lambda: not _alive(server_pid), timeout=30)


def test_a_metrics_port_in_use_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = _config(tmp_path, metrics_port=str(port), nats_url='"nats://127.0.0.1:1"')
        out = subprocess.run([*TAPELINE, "up", "-c", str(cfg)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"metrics port {port} is not free (Address already in use): pass --metrics-port N (0: off)"
    ]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_the_embedded_server_leaves_half_the_cores_to_python_unless_told(
    nats_server: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    half = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert _environ(nats_server.pid)["GOMAXPROCS"] == half
    monkeypatch.setenv("GOMAXPROCS", "3")
    with EmbeddedNats(tmp_path / "nats") as server:
        assert _environ(server.pid)["GOMAXPROCS"] == "3"
