"""The JetStream JSON API, spoken directly: configs here are exactly the server's wire format.

Using the raw API keeps provisioning declarative and complete (subject transforms, sources,
deny_purge...) without waiting for a client library to model each field.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from nats.aio.client import Client
from nats.errors import NoRespondersError, TimeoutError

log = structlog.get_logger("tapeline.bus")

_json = msgspec.json.Decoder()
_enc = msgspec.json.Encoder()

STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014


class JetStreamError(RuntimeError):
    """An error answer from the JetStream API, with its codes."""

    def __init__(self, api: str, code: int, err_code: int, description: str):
        super().__init__(f"{api}: {description} (code {code}, err_code {err_code})")
        self.code = code
        self.err_code = err_code


class JetStreamApi:
    """Thin request/reply wrapper over ``$JS.API.*``."""

    def __init__(self, nc: Client, timeout: float = 10.0):
        self.nc = nc
        self.timeout = timeout

    async def call(self, api: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        body = _enc.encode(payload) if payload is not None else b""
        try:
            msg = await self.nc.request(f"$JS.API.{api}", body, timeout=self.timeout)
        except NoRespondersError:
            raise JetStreamError(api, 503, 0, "JetStream is not enabled on this server") from None
        except TimeoutError:
            raise JetStreamError(api, 408, 0, f"no answer within {self.timeout}s") from None
        reply: dict[str, Any] = _json.decode(msg.data)
        err = reply.get("error")
        if err:
            raise JetStreamError(api, err.get("code", 0), err.get("err_code", 0), err.get("description", ""))
        return reply

    async def stream_info(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.call(f"STREAM.INFO.{name}")
        except JetStreamError as e:
            if e.err_code == STREAM_NOT_FOUND:
                return None
            raise

    async def stream_names(self) -> list[str]:
        reply = await self.call("STREAM.NAMES", {"offset": 0})
        return list(reply.get("streams") or [])

    async def ensure_stream(self, config: dict[str, Any]) -> str:
        """Create the stream, or update it where the declared config differs. Idempotent."""
        name = config["name"]
        info = await self.stream_info(name)
        if info is None:
            await self.call(f"STREAM.CREATE.{name}", config)
            return "created"
        current = info["config"]
        if config.get("num_replicas", 1) < current.get("num_replicas", 1):
            # never scale a stream down: a process with a default config must not undo a cluster's R3
            log.warning(
                "stream has more replicas than configured; keeping them",
                stream=name,
                replicas=current["num_replicas"],
                configured=config["num_replicas"],
            )
            config = {**config, "num_replicas": current["num_replicas"]}
        if all(_same(current.get(k), v) for k, v in config.items()):
            return "unchanged"
        await self.call(f"STREAM.UPDATE.{name}", {**current, **config})
        return "updated"

    async def consumer_info(self, stream: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.call(f"CONSUMER.INFO.{stream}.{name}")
        except JetStreamError as e:
            if e.err_code in (CONSUMER_NOT_FOUND, STREAM_NOT_FOUND):
                return None
            raise

    async def ensure_consumer(self, stream: str, config: dict[str, Any]) -> dict[str, Any]:
        """Create or update a durable consumer (``CONSUMER.CREATE`` is idempotent for equal configs)."""
        name = config["durable_name"]
        reply = await self.call(
            f"CONSUMER.CREATE.{stream}.{name}", {"stream_name": stream, "config": config, "action": ""}
        )
        return reply

    async def create_ordered_consumer(self, stream: str, config: dict[str, Any]) -> str:
        """An ephemeral consumer (for replay); returns its generated name."""
        reply = await self.call(f"CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": config})
        return str(reply["name"])

    async def delete_consumer(self, stream: str, name: str) -> None:
        try:
            await self.call(f"CONSUMER.DELETE.{stream}.{name}")
        except JetStreamError as e:
            if e.err_code not in (CONSUMER_NOT_FOUND, STREAM_NOT_FOUND):
                raise

    async def consumer_names(self, stream: str) -> list[str]:
        reply = await self.call(f"CONSUMER.NAMES.{stream}", {"offset": 0})
        return list(reply.get("consumers") or [])


def _same(current: Any, declared: Any) -> bool:
    if isinstance(declared, list) and isinstance(current, list):
        return len(declared) == len(current) and all(_same(c, d) for c, d in zip(current, declared, strict=True))
    if isinstance(declared, dict) and isinstance(current, dict):
        return all(_same(current.get(k), v) for k, v in declared.items())
    return bool(current == declared)
