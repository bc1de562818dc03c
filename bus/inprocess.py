"""The in-process runner: the same declared components, events routed by subject in memory.

What FastStream's ``TestBroker`` does for its apps, for ours: no server, no acks, just the
subject routing. Each event goes to every handler and gateway whose declared subscriptions match
its subject, and their outputs are routed in turn (breadth first), so every component sees its
input in the order the JetStream runner would give it, and outputs carry the same ids (both
runners stamp through :func:`bus.components.react` / :func:`stamp_results`).

Gateways never call out here unless ``live_gateways`` is set (fast tests of gateway logic
against stand-ins): their results come from ``recorded`` (events stored by a live run, looked
up by the ids results of a request must have), so replay and what-if reproduce effects without
making them. A request with no recorded result yields nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from tapeline.bus.components import react, result_ids, stamp_results
from tapeline.schemas.components import Component, Gateway, Handler
from tapeline.schemas.events import AnyEvent, Event


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` the rest."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


class InProcessRunner:
    def __init__(
        self,
        components: Sequence[Component],
        prefix: str,
        *,
        recorded: Iterable[Event] = (),
        live_gateways: bool = False,
    ) -> None:
        self.prefix = prefix
        self.components = [c for c in components if isinstance(c, Handler | Gateway)]
        self._routes = [(c, [s.pattern(prefix) for s in c.consumes]) for c in self.components]
        self.recorded = {e.event_id: e for e in recorded}
        self.live_gateways = live_gateways
        self.calls = 0  # gateway effects performed (only with live_gateways)

    def _targets(self, event: AnyEvent) -> list[Component]:
        subject = event.subject(self.prefix)
        return [c for c, pats in self._routes if any(subject_matches(p, subject) for p in pats)]

    def _recorded_results(self, gw: Gateway, request: AnyEvent) -> list[Event]:
        out: list[Event] = []
        i = 0
        while True:
            found = self.recorded.get(result_ids(gw, request, i + 1)[i])
            if found is None:
                return out
            out.append(found)
            i += 1

    async def run(self, inputs: Iterable[AnyEvent]) -> list[Event]:
        """Every event derived from ``inputs``, in the order produced."""
        derived: list[Event] = []
        for event in inputs:
            queue: deque[AnyEvent] = deque([event])
            while queue:
                ev = queue.popleft()
                for c in self._targets(ev):
                    outs: list[Event] = []
                    if isinstance(c, Handler):
                        outs = react(c, ev)
                    elif isinstance(c, Gateway) and c.wants(ev):
                        if self.live_gateways:
                            self.calls += 1
                            outs = stamp_results(c, ev, await c.perform(ev))
                        else:
                            outs = self._recorded_results(c, ev)
                    derived.extend(outs)
                    queue.extend(outs)  # type: ignore[arg-type]
        return derived
