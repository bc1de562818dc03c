"""Helpers shared by the micro-benchmarks (imported by name: a script's own folder is on sys.path)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tapeline.schemas.components import Consumes, Handler
from tapeline.schemas.events import Alert, AnyEvent, Event, Tick


def best_us(fn: Callable[[], Any], n: int, repeat: int) -> float:
    """Best CPU µs per item of ``repeat`` runs of ``fn`` (which handles ``n`` items): the run least
    disturbed by other processes."""
    out = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        out.append((time.process_time() - t) * 1e6 / n)
    return min(out)


class Echo(Handler):
    """A handler that reacts to ticks with nothing: what a micro-benchmark stamps and publishes around."""

    name = "bench_echo"
    role = "bench"
    emits = (Alert,)
    consumes = (Consumes(Tick),)

    def handle(self, event: AnyEvent) -> list[Event]:
        return []
