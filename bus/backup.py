"""Backup and restore of a namespace's streams with JetStream's own snapshot API.

nats-py has no helper for it, so this speaks the protocol the ``nats`` CLI uses:

* backup: ``$JS.API.STREAM.SNAPSHOT.<stream>`` with a ``deliver_subject`` (our inbox). The answer
  carries the stream's config and state; the server then sends the snapshot (a tar archive of the
  store, s2-compressed) in chunks to that subject, each with a reply subject we answer for flow
  control; an empty message (status 204 on current servers) ends it. Written as
  ``DIR/<stream>/backup.json`` (config and state) and ``DIR/<stream>/stream.tar.s2``, the layout
  ``nats stream backup`` writes.
* restore: ``$JS.API.STREAM.RESTORE.<stream>`` with that config and state; the server answers a
  subject to which the archive is sent in chunks, each a request it acknowledges, then an empty
  request whose answer is the restored stream's info. The stream must not exist yet.

A snapshot is a consistent copy of the store (messages, sequence numbers, headers and
``Nats-Msg-Id`` exactly as stored), taken while the server runs. Consumers are included, so the
durables resume where they were.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from tapeline.bus.jetstream import JetStreamApi, JetStreamError

CHUNK = 128 * 1024
BACKUP_META = "backup.json"
BACKUP_DATA = "stream.tar.s2"


class BackupError(RuntimeError):
    """A backup or restore could not complete; the message names the stream and the cause."""


async def backup_stream(nc: Client, stream: str, target: Path, *, timeout: float = 60.0) -> int:  # noqa: ASYNC109
    """Snapshot ``stream`` into ``target/<stream>/``; returns the bytes written."""
    out_dir = target / stream
    out_dir.mkdir(parents=True, exist_ok=True)
    deliver = nc.new_inbox()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    size = 0
    with open(out_dir / BACKUP_DATA, "wb") as data:  # noqa: ASYNC230 - chunks arrive one at a time

        async def on_chunk(msg: Msg) -> None:
            nonlocal size
            status = (msg.headers or {}).get("Status", "")
            if status and status not in ("200", "204"):  # 204: the end, as an empty message is
                desc = (msg.headers or {}).get("Description", "")
                if not done.done():
                    done.set_exception(BackupError(f"snapshot of {stream} failed: {status} {desc}".strip()))
                return
            if not msg.data or status == "204":
                if not done.done():
                    done.set_result(None)
                return
            data.write(msg.data)
            size += len(msg.data)
            if msg.reply:
                await nc.publish(msg.reply, b"")

        sub = await nc.subscribe(deliver, cb=on_chunk)
        try:
            reply = await JetStreamApi(nc, timeout=timeout).call(
                f"STREAM.SNAPSHOT.{stream}", {"deliver_subject": deliver, "chunk_size": CHUNK, "jsck": False}
            )
            await asyncio.wait_for(done, timeout)
        except (JetStreamError, TimeoutError) as e:
            raise BackupError(f"snapshot of {stream} failed: {e or 'no end of snapshot in time'}") from None
        finally:
            await sub.unsubscribe()
    meta = {"config": reply["config"], "state": reply["state"]}
    (out_dir / BACKUP_META).write_text(json.dumps(meta, indent=2))
    return size


async def restore_stream(nc: Client, source: Path, *, timeout: float = 60.0) -> dict[str, Any]:  # noqa: ASYNC109
    """Restore the stream backed up in ``source`` (a ``<stream>`` directory); returns its new info."""
    meta = json.loads((source / BACKUP_META).read_text())
    name = meta["config"]["name"]
    api = JetStreamApi(nc, timeout=timeout)
    if await api.stream_info(name) is not None:
        raise BackupError(f"cannot restore {name}: the stream exists on this server; delete it or use a fresh server")
    try:
        reply = await api.call(f"STREAM.RESTORE.{name}", {"config": meta["config"], "state": meta["state"]})
    except JetStreamError as e:
        raise BackupError(f"restore of {name} refused: {e}") from None
    deliver = reply["deliver_subject"]
    with open(source / BACKUP_DATA, "rb") as data:  # noqa: ASYNC230 - read chunk by chunk between requests
        while chunk := data.read(CHUNK):
            await nc.request(deliver, chunk, timeout=timeout)
    done = await nc.request(deliver, b"", timeout=timeout)
    info: dict[str, Any] = msgspec.json.decode(done.data)
    if info.get("error"):
        raise BackupError(f"restore of {name} failed: {info['error'].get('description', info['error'])}")
    return info


async def backup(nc: Client, streams: list[str], target: Path) -> dict[str, int]:
    """Snapshot every existing stream of ``streams`` into ``target``; ``{stream: bytes}``."""
    api = JetStreamApi(nc)
    sizes: dict[str, int] = {}
    for name in streams:
        if await api.stream_info(name) is not None:
            sizes[name] = await backup_stream(nc, name, target)
    if not sizes:
        raise BackupError(f"no stream to back up: none of {', '.join(streams)} exists on this server")
    return sizes


async def restore(nc: Client, source: Path) -> dict[str, int]:
    """Restore every stream backed up in ``source``; ``{stream: messages}``.

    Sourced streams (the decisions KV bucket) come after the streams they source from.
    """
    dirs = sorted(d for d in source.iterdir() if (d / BACKUP_META).exists())  # noqa: ASYNC240 - a few entries
    if not dirs:
        raise BackupError(f"{source} holds no backup ({BACKUP_META} per stream); give the directory `backup` wrote")
    dirs.sort(key=lambda d: bool(json.loads((d / BACKUP_META).read_text())["config"].get("sources")))
    restored: dict[str, int] = {}
    for d in dirs:
        info = await restore_stream(nc, d)
        restored[info["config"]["name"]] = int(info["state"]["messages"])
    return restored
