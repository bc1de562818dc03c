"""The default broker: records that an order would have been sent, and sends nothing."""

from __future__ import annotations

from tapeline.adapters.brokers.base import Broker
from tapeline.schemas.events import Event, OrderApproved


class DryRunBroker(Broker):
    """The gateway's ``OrderSubmitted(broker="dry-run")`` is the whole record: no order exists anywhere."""

    name = "dry-run"

    async def submit(self, order: OrderApproved, ref: str) -> list[Event]:
        return []

    async def lookup(self, order: OrderApproved, ref: str) -> list[Event] | None:
        return []  # known: nothing was ever sent, and nothing will be
