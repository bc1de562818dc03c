"""Leases: one active instance per ordered consumer, others wait as hot standbys.

A lease is a key in the JetStream KV bucket ``<prefix>_leases`` whose stream keeps one message per
key for ``ttl_s`` (``max_age``). Taking it is a publish with ``Nats-Expected-Last-Subject-Sequence``
(0, or the revision of a delete marker), so two processes can never both win; the holder renews it
every third of the TTL with the revision it holds. If the holder dies, its key ages out and a
standby takes over within one TTL. A holder that fails to renew (it was paused longer than the
TTL and someone else took over) must stop at once: :meth:`Lease.keep` raises :class:`LeaseLost`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from tapeline.bus.jetstream import JetStreamApi, JetStreamError
from tapeline.bus.topology import latest_kv_config

log = structlog.get_logger("tapeline.bus")

WRONG_LAST_SEQUENCE = 10071
NO_MESSAGE = 10037
NO_RESPONDERS_PATIENCE_S = 10.0  # a cluster electing the bucket's leader, or a stream update propagating
_json = msgspec.json.Decoder()


class LeaseLost(RuntimeError):
    """Another process holds the lease now; this one must stop consuming."""


class LeaseHeld(RuntimeError):
    """The lease is held by another live process (raised only when not waiting as a standby)."""


def leases_bucket(prefix: str) -> str:
    return f"{prefix}_leases".replace(".", "_").replace("-", "_")


def leases_stream_config(prefix: str, ttl_s: float, replicas: int = 1) -> dict[str, Any]:
    return latest_kv_config(leases_bucket(prefix), max_age_s=ttl_s, replicas=replicas)


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def _dead_here(holder: str) -> bool:
    """The holder is a process of this host that no longer exists."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    def __init__(self, nc: Client, prefix: str, name: str, *, ttl_s: float = 15.0) -> None:
        self.nc = nc
        self.api = JetStreamApi(nc)
        self.bucket = leases_bucket(prefix)
        self.name = name
        self.subject = f"$KV.{self.bucket}.{name}"
        self.ttl_s = ttl_s
        self.holder = holder_id()
        self.revision = 0
        self.unanswered = 0  # puts met by "no responders" and asked again (see _request)
        self.patience_s = NO_RESPONDERS_PATIENCE_S

    async def _last(self) -> tuple[int, str, bool]:
        """(revision, holder, live) of the key's last message; (0, "", False) if none."""
        try:
            reply = await self.api.call(f"STREAM.MSG.GET.KV_{self.bucket}", {"last_by_subj": self.subject})
        except JetStreamError as e:
            if e.err_code == NO_MESSAGE:
                return 0, "", False
            raise
        msg = reply["message"]
        headers = base64.b64decode(msg.get("hdrs") or b"")
        deleted = b"KV-Operation: DEL" in headers or b"KV-Operation: PURGE" in headers
        holder = base64.b64decode(msg.get("data") or b"").decode("utf-8", "replace")
        return int(msg["seq"]), holder, not deleted

    async def _put(self, expected: int, data: bytes, op: str = "", *, patient: bool = True) -> int | None:
        headers = {"Nats-Expected-Last-Subject-Sequence": str(expected)}
        if op:
            headers["KV-Operation"] = op
        reply = await self._request(data, headers, self.patience_s if patient else 0.0)
        ack = _json.decode(reply.data)
        err = ack.get("error")
        if err:
            if err.get("err_code") == WRONG_LAST_SEQUENCE:
                return None
            raise JetStreamError(self.subject, err.get("code", 0), err.get("err_code", 0), err.get("description", ""))
        return int(ack["seq"])

    async def _request(self, data: bytes, headers: dict[str, str], patience_s: float) -> Msg:
        """Publish to the bucket and wait for its ack, asking again while nothing answers.

        "No responders" is transient where the bucket lives on a cluster: its stream's interest
        is briefly unknown to this node after a leader election or a stream update. The put is
        conditional on the revision, so asking again can never write twice.
        """
        deadline = asyncio.get_running_loop().time() + patience_s
        pause = 0.05
        while True:
            try:
                return await self.nc.request(self.subject, data, timeout=5.0, headers=headers)
            except NoRespondersError:
                if asyncio.get_running_loop().time() + pause > deadline:
                    raise
                self.unanswered += 1
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    async def try_acquire(self) -> str:
        """Take the lease if free; returns "" on success, else who holds it.

        A holder on this host whose process is gone (a crash, a SIGKILL) is not waited for: its
        lease is taken over at once. A holder elsewhere is given its TTL.
        """
        rev, holder, live = await self._last()
        if live and not _dead_here(holder):
            return holder
        got = await self._put(rev, self.holder.encode())
        if got is None:
            return "another process (it won the race)"
        self.revision = got
        return ""

    async def acquire(self, *, wait: bool = True, stopping: Callable[[], bool] = lambda: False) -> bool:
        """Take the lease; as a standby, wait until it is free (or raise :class:`LeaseHeld`).

        Returns False if ``stopping()`` turned true while waiting."""
        announced = False
        while True:
            holder = await self.try_acquire()
            if not holder:
                log.info("lease taken", lease=self.name, holder=self.holder)
                return True
            if stopping():
                return False
            if not wait:
                raise LeaseHeld(f"{self.name} is running in another process ({holder}); stop it first")
            if not announced:
                log.info("standby: waiting for the lease", lease=self.name, held_by=holder)
                announced = True
            await asyncio.sleep(self.ttl_s / 5)

    async def renew(self) -> None:
        got = await self._put(self.revision, self.holder.encode())
        if got is None:  # not the revision we wrote: aged out while the server was away, or taken over
            rev, holder, live = await self._last()
            if live and holder != self.holder:
                raise LeaseLost(f"lease {self.name} was taken over by {holder}")
            got = await self._put(rev, self.holder.encode())
            if got is None:
                raise LeaseLost(f"lease {self.name} was taken over by another process")
        self.revision = got

    async def keep(self) -> None:
        """Renew every third of the TTL until cancelled; raises :class:`LeaseLost` when another took it.

        While the server is unreachable nobody can take the lease (taking it needs the server), so
        failed renewals are retried, not taken as a loss: a server restart is routine.
        """
        warned = False
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self.renew()
                warned = False
            except LeaseLost:
                raise
            except Exception as exc:
                if not warned:
                    log.warning("lease renewal failed; retrying", lease=self.name, error=str(exc))
                    warned = True

    async def release(self) -> None:
        if not self.nc.is_connected:
            return  # it ages out
        try:
            await self._put(self.revision, b"", op="DEL", patient=False)  # stopping: no waiting
        except Exception as exc:  # it ages out anyway
            log.debug("lease release failed", lease=self.name, error=str(exc))
