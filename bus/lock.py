"""One owner per data directory: an advisory ``flock`` on ``<dir>/.lock`` naming the owner's PID.

The kernel drops the lock when its owner dies (even by SIGKILL), so a stale lock never blocks anyone.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DirectoryInUse(RuntimeError):
    """Another live process owns the directory."""


def lock_path(directory: Path) -> Path:
    return directory / ".lock"


def owner(directory: Path) -> int | None:
    """PID of the live process holding ``directory``'s lock, or None if nobody holds it."""
    path = lock_path(directory)
    if not path.exists():
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
        return None


class DirectoryLock:
    """Hold ``directory`` for this process until :meth:`release`."""

    def __init__(self, directory: Path, what: str) -> None:
        self.directory = directory
        self.what = what  # named in the refusal, e.g. "the NATS store"
        self._file: int | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(self.directory), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DirectoryInUse(
                f"{self.what} {self.directory} is in use by PID {pid}; stop that process or use another data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._file = fd

    def release(self) -> None:
        fd, self._file = self._file, None
        if fd is not None:
            os.close(fd)  # closing drops the flock
