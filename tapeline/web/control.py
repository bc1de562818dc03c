"""Halt, resume and a manual rebalance from the page (or the chat): guarded, confirmed, recorded.

Control needs an operator token from the environment (``TAPELINE_OPERATOR_TOKEN``); without it the
server is view-only and refuses every control request. A request carries the token and the
operator's name and is done in two steps: the first answers with what would happen and a one-time
confirmation code (valid ``CONFIRM_S`` seconds, for that action and operator only); only the second,
with that code, acts. Every action that was confirmed is published as an :class:`OperatorAction`
event with the operator (what it did, or why it did nothing), next to the events that do it:
``CircuitBreakerTripped(breaker="halt")``, ``CircuitBreakerResumed`` (the same events as
``tapeline halt``/``resume``), and for a rebalance the plan and its order intents (the portfolio's
``tapeline rebalance --now --execute``, which then pass the risk gate like any intent).
The token is compared in constant time and never logged, echoed or stored.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client

from tapeline.config import Settings
from tapeline.control import halt_event, publish_control, resume_events, tripped_now
from tapeline.handlers.rebalance import RebalanceConfig, plan
from tapeline.rebalance_cli import plan_events, read_inputs
from tapeline.schemas.events import Event, OperatorAction
from tapeline.schemas.ids import new_event_id
from tapeline.web.data import Reader
from tapeline.web.server import HttpError, Request, WebServer, json_body

TOKEN_ENV = "TAPELINE_OPERATOR_TOKEN"
CONFIRM_S = 120.0
ACTIONS = {
    "halt": "Halt all trading: the risk gate rejects every new order and working orders are cancelled.",
    "resume": "Resume every tripped hard breaker (halt, consecutive losses): orders flow again.",
    "rebalance": "Rebalance now: compute the portfolio plan from the read models and send its order intents "
    "through the risk gate.",
}
log = structlog.get_logger("tapeline.web")


class ControlResult(msgspec.Struct, frozen=True):
    confirm: str = ""  # step one: the code to send back
    summary: str = ""
    detail: str = ""  # step two: what was done
    event_id: str = ""  # the OperatorAction


class Controls:
    """The control endpoints of one server."""

    def __init__(self, nc: Client, prefix: str, reader: Reader, settings: Settings | None, token: str) -> None:
        self.nc = nc
        self.prefix = prefix
        self.reader = reader
        self.settings = settings
        self._token = token
        self._pending: dict[str, tuple[str, str, float]] = {}  # code -> (action, operator, expires)

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def mount(self, server: WebServer) -> None:
        server.route("GET", "/api/control/info", self.info)
        server.route("POST", "/api/control", self.handle)

    async def info(self, req: Request) -> dict[str, Any]:
        why = "" if self.enabled else f"view-only: set {TOKEN_ENV} in the server's environment to allow control"
        return {"enabled": self.enabled, "why": why, "actions": ACTIONS}

    async def handle(self, req: Request) -> ControlResult:
        body = json_body(req)
        self.check_token(str(body.get("token", "")))
        action, operator = str(body.get("action", "")), str(body.get("operator", "")).strip()
        return await self.request(action, operator, str(body.get("note", "")), str(body.get("confirm", "")))

    def check_token(self, token: str) -> None:
        if not self.enabled:
            raise HttpError(403, f"view-only: this server has no operator token ({TOKEN_ENV})")
        if not hmac.compare_digest(token.encode(), self._token.encode()):
            raise HttpError(403, "wrong operator token")

    async def request(self, action: str, operator: str, note: str, confirm: str, origin: str = "web") -> ControlResult:
        """Step one (no ``confirm``): a code and what would happen. Step two: do it."""
        if action not in ACTIONS:
            raise HttpError(400, f"unknown action {action!r}: choose one of {', '.join(ACTIONS)}")
        if not operator:
            raise HttpError(400, "say who you are: operator must not be empty")
        now = time.monotonic()
        self._pending = {c: p for c, p in self._pending.items() if p[2] > now}
        if not confirm:
            code = secrets.token_urlsafe(12)
            self._pending[code] = (action, operator, now + CONFIRM_S)
            return ControlResult(confirm=code, summary=f"{ACTIONS[action]} Confirm as {operator}?")
        pending = self._pending.pop(confirm, None)
        if pending is None or pending[:2] != (action, operator):
            raise HttpError(400, "confirmation expired or not for this action and operator: start again")
        detail, effects = await self._effects(action, operator, note)
        now_ns = time.time_ns()
        record = OperatorAction(
            event_id=new_event_id(now_ns),
            ts_event=now_ns,
            ts_init=now_ns,
            source=origin,
            action=action,
            operator=operator,
            origin=origin,
            note=note,
            detail=detail,
        )
        await publish_control(self.nc, self.prefix, [record, *effects])
        log.info("control action", action=action, operator=operator, origin=origin, detail=detail)
        return ControlResult(detail=detail, event_id=record.event_id)

    async def _effects(self, action: str, operator: str, note: str) -> tuple[str, list[Event]]:
        if action == "halt":
            ev = halt_event(operator, note)
            return f"halted ({ev.breaker}, scope {ev.scope})", [ev]
        if action == "resume":
            events = resume_events(await tripped_now(self.nc, self.prefix), operator, note or "resumed from the page")
            if not events:
                return "nothing to resume: no hard breaker is tripped", []
            return "resumed " + ", ".join(f"{e.breaker}[{e.scope}]" for e in events), list(events)
        return await self._rebalance()

    async def _rebalance(self) -> tuple[str, list[Event]]:
        """The plan ``tapeline rebalance --now --execute`` would send, from the read models now."""
        cfg: RebalanceConfig = self.settings.components()["rebalance"] if self.settings else RebalanceConfig()
        now = time.time_ns()
        items = plan(cfg, await read_inputs(self.reader.rows, cfg, now), now)
        if not items:
            return f"no rebalance for {cfg.account}: no symbol has enough bars yet", []
        events = plan_events(cfg, items, now)
        return f"rebalance plan for {cfg.account}: {len(items)} items, {len(events) - 1} order intents", events


def operator_token() -> str:
    return os.environ.get(TOKEN_ENV, "")
