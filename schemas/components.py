"""The component contract (DESIGN §4): what a component declares, whatever runs it.

A component is declared once, by its class: ``name``, ``version``, the event *types* it consumes
and emits (subjects come from each type's template, never from strings), its typed ``Config``
(read from the ``tapeline.toml`` section of its name), its ``role`` (the process group that runs
it) and its :data:`StatePolicy`. Two runners execute the same declaration: the JetStream runner
(``bus.runtime``) and the in-process runner (``bus.inprocess``). This module is pure declaration,
no I/O, so handlers (which may import only ``schemas``) can build on it.

Kinds:

* :class:`Feed`: brings the outside world in; ids from the source's own identity.
* :class:`Handler`: a pure reaction ``event -> [events]``; outputs are drafts the runner stamps
  with deterministic ids (hash of name, version, cause, output index).
* :class:`Gateway`: performs one effect per request (HTTP, LLM, broker, webhook) and returns its
  result as drafts; result ids derive from (gateway, request key), the runner checks that no result
  is stored before calling out, and replay reads recorded results instead of calling.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import msgspec

from tapeline.schemas.events import AnyEvent, Event
from tapeline.schemas.subjects import FAMILIES, StreamFamily

E = TypeVar("E", bound=Event)
Kind = Literal["feed", "handler", "gateway", "read_model"]

_NAME = re.compile(r"[a-z][a-z0-9_]*")


# ---------------------------------------------------------------- state policies


class Stateless(msgspec.Struct, frozen=True, tag="stateless"):
    """No state: any process may take any message; scales out on a shared durable."""


class Window(msgspec.Struct, frozen=True, tag="window"):
    """State is a function of the input whose ``ts_event`` lies within ``seconds`` (event time) of the
    newest one. After a restart the runner replays that window (outputs discarded) before resuming."""

    seconds: float


class Replay(msgspec.Struct, frozen=True, tag="replay"):
    """State depends on all input since ``from_seq``: a restart replays it all (outputs discarded)."""

    from_seq: int = 1


class Snapshot(msgspec.Struct, frozen=True, tag="snapshot"):
    """Unbounded state, saved with the stream position it belongs to (a KV bucket) after acked batches,
    at most every ``every_s`` seconds; a restart restores it and resumes right after that position."""

    every_s: float = 5.0


StatePolicy = Stateless | Window | Replay | Snapshot


class NoConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """For components with nothing to configure."""


# ---------------------------------------------------------------- subscriptions


class Consumes(msgspec.Struct, frozen=True):
    """An event type a component reads, optionally narrowed on subject fields (``interval="1m"``)."""

    event: type[Event]
    fixed: dict[str, str] = {}

    def pattern(self, prefix: str) -> str:
        return self.event.subject_pattern(prefix, **self.fixed)

    @property
    def family(self) -> StreamFamily:
        return family_named(self.event.family)


def family_named(key: str) -> StreamFamily:
    for fam in FAMILIES:
        if fam.key == key:
            return fam
    raise ValueError(f"no stream family {key!r}")


def filters_by_family(consumes: Sequence[Consumes], prefix: str) -> dict[StreamFamily, list[str]]:
    """Filter subjects grouped by stream, without duplicates (two types may share a subject)."""
    out: dict[StreamFamily, list[str]] = {}
    for c in consumes:
        subjects = out.setdefault(c.family, [])
        p = c.pattern(prefix)
        if p not in subjects:
            subjects.append(p)
    return out


# ---------------------------------------------------------------- components


class Component:
    """What every component declares. Subclasses set the class attributes; ``consumes`` may be set
    per instance when it depends on configuration."""

    kind: ClassVar[Kind]
    name: ClassVar[str]
    version: ClassVar[int] = 1  # bump when the meaning of outputs changes: they then get new ids
    role: ClassVar[str]  # the process group that runs it (`tapeline up --only <role>`)
    Config: ClassVar[type[msgspec.Struct]] = NoConfig
    emits: ClassVar[tuple[type[Event], ...]] = ()
    state: StatePolicy = Stateless()
    consumes: tuple[Consumes, ...] = ()

    def __init__(self, config: Any = None) -> None:
        self.config: Any = config if config is not None else self.Config()
        self.counters: dict[str, int] = {}  # monotonic counts by outcome, exported as a metric
        # current values: name -> {key -> value} over a bounded set of keys (e.g. configured feeds),
        # exported as the gauge tapeline_<component>_<name>{key=...}
        self.gauges: dict[str, dict[str, float]] = {}

    def active(self) -> bool:
        """Whether this component runs at all here (e.g. a notifier without its URL does not)."""
        return True

    @property
    def ordered(self) -> bool:
        """Stateful components see their input in stream order, one active instance at a time."""
        return not isinstance(self.state, Stateless)

    def snapshot(self) -> bytes:
        """State as bytes (components with a :class:`Snapshot` policy)."""
        raise NotImplementedError(f"{self.name} declares no snapshot")

    def restore(self, data: bytes) -> None:
        raise NotImplementedError(f"{self.name} declares no snapshot")


class Feed(Component):
    """Brings the outside world in (ticks, news, clock); ids from the source's own identity."""

    kind: ClassVar[Kind] = "feed"

    def stream(self) -> AsyncIterator[list[Event]]:
        raise NotImplementedError


class Handler(Component):
    """A pure reaction: no I/O, state only from events seen. Build outputs with :func:`draft`."""

    kind: ClassVar[Kind] = "handler"
    role: ClassVar[str] = "handlers"
    urgent: ClassVar[bool] = False  # on the tick -> decision path: its consumer goes first in its process

    def handle(self, event: AnyEvent) -> Sequence[Event]:
        raise NotImplementedError


class Gateway(Component):
    """One effect per request. ``perform`` does it and returns the result as drafts — at least one,
    the record of the effect (a failure it reports is a result too; raising means "retry later").
    It is never called in replay, and never twice for a request whose result is stored."""

    kind: ClassVar[Kind] = "gateway"
    # A request in progress is kept alive (+WPI) every third of this; a dead process's request is
    # redelivered after it. Short for effects that must be taken over quickly (broker orders).
    ack_wait_s: ClassVar[float] = 30.0
    # Requests fetched at once; each counts a delivery if the process dies (1: only the one in progress).
    batch: ClassVar[int] = 100
    # Deliveries before a failing request is dead-lettered; -1: never (retried with backoff, at most a
    # minute apart, until it succeeds), for effects whose outcome must not be given up (broker orders).
    max_deliver: ClassVar[int] = 5

    def wants(self, event: AnyEvent) -> bool:
        """Whether this event is a request (others are acked without an effect)."""
        return True

    def request_key(self, event: AnyEvent) -> str:
        """The identity of the effect; result ids derive from it (default: the request's id)."""
        return event.event_id

    async def perform(self, event: AnyEvent) -> Sequence[Event]:
        raise NotImplementedError

    async def open(self, nc: Any, prefix: str) -> None:
        """Called once by the JetStream runner before the first request, with its bus connection:
        for a gateway whose effect needs the bus (a broker order's reservation). Default: nothing."""

    def reports(self) -> AsyncIterator[Sequence[Event]] | None:
        """Events the outside world reports on its own after an effect (a broker's fills): the runner
        publishes them as they come. Their ids come from the source's identity, as a feed's do."""
        return None


class Rejected(ValueError):
    """Raised by a component for input it must never process (e.g. a tick stamped in 2100): the
    runner dead-letters the message with this reason at once, without retries."""


def draft(cls: type[E], **fields: Any) -> E:
    """An output event without identity; the runner fills event_id, ts_init, source, causation."""
    fields.setdefault("source", "")
    return cls(event_id="", ts_init=0, **fields)


def check_declaration(cls: type[Component]) -> None:
    """Fail early and clearly on a component class that is not fully declared."""
    for attr in ("kind", "name", "role"):
        if not isinstance(getattr(cls, attr, None), str):
            raise TypeError(f"component {cls.__name__} must declare {attr!r}")
    if not _NAME.fullmatch(cls.name):
        raise TypeError(f"component name {cls.name!r}: use lower-case letters, digits and '_'")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, msgspec.Struct)):
        raise TypeError(f"component {cls.name}: Config must be a msgspec.Struct")


def durable_name(component: str, family: StreamFamily) -> str:
    """The durable consumer of a component on one stream: the only place such names are made."""
    return f"{component}_{family.key}"
