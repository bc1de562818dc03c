"""The handler contract (DESIGN §4): subjects in, a pure reaction ``event -> list[Event]``.

A handler does no I/O. It builds its outputs with :func:`draft`; the runtime stamps identity
(deterministic ``event_id`` from handler name, version, cause and output index; ``ts_init``;
causation and correlation), so handlers stay pure and re-runs publish identical ids.
State a handler keeps is a function of events it has seen; after a restart the runtime replays
the last ``warmup_s`` of its input (outputs discarded) to rebuild it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

from schemas.events import AnyEvent, Event

E = TypeVar("E", bound=Event)

_INTERVAL = re.compile(r"(\d+)([smhd])")
_UNIT_NS = {"s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}


def draft(cls: type[E], **fields: Any) -> E:
    """An output event without identity; the runtime fills event_id, ts_init, source, causation."""
    fields.setdefault("source", "")
    return cls(event_id="", ts_init=0, **fields)


def interval_ns(interval: str) -> int:
    """``"5s"``, ``"1m"``, ``"1h"``, ``"1d"`` in nanoseconds; anything else is a configuration error."""
    m = _INTERVAL.fullmatch(interval)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"invalid bar interval {interval!r}: use a positive number and s, m, h or d, e.g. '1m'")
    return int(m.group(1)) * _UNIT_NS[m.group(2)]


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
