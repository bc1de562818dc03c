"""The handler contract (DESIGN §4): subjects in, a pure reaction ``event -> list[Event]``.

A handler does no I/O. It builds its outputs with :func:`draft`; the runtime stamps identity
(deterministic ``event_id`` from handler name, version, cause and output index; ``ts_init``;
causation and correlation), so handlers stay pure and re-runs publish identical ids.
State a handler keeps is a function of events it has seen; after a restart the runtime replays
the last ``warmup_s`` of its input (outputs discarded) to rebuild it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

from schemas.events import AnyEvent, Event

E = TypeVar("E", bound=Event)


def draft(cls: type[E], **fields: Any) -> E:
    """An output event without identity; the runtime fills event_id, ts_init, source, causation."""
    fields.setdefault("source", "")
    return cls(event_id="", ts_init=0, **fields)


class Handler:
    """Base class: set ``name``, ``version`` and ``subjects`` (relative to the prefix), implement ``handle``.

    Bump ``version`` when the reaction changes meaning: outputs then get new ids.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    subjects: tuple[str, ...] = ()
    outputs: ClassVar[tuple[str, ...]] = ()  # subjects it publishes on (relative): checked on a restart
    warmup_s: float = 0.0

    def handle(self, event: AnyEvent) -> Sequence[Event]:
        raise NotImplementedError
