"""`tapeline halt` and `tapeline resume` as real processes against a real nats-server."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from nats.aio.client import Client

from tapeline.schemas.events import CircuitBreakerResumed, CircuitBreakerTripped
from tapeline.schemas.subjects import RISK
from tests.helpers import TAPELINE, stored, write_config


async def _tapeline(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [*TAPELINE, *args], capture_output=True, text=True, timeout=120)


async def test_halt_then_resume_are_recorded_with_the_operator_and_resume_needs_something_tripped(
    nc: Client, provisioned: str, nats_url: str, tmp_path: Path
) -> None:
    cfg = str(write_config(tmp_path, provisioned, nats_url))
    halted = await _tapeline("halt", "-c", cfg, "--operator", "ann", "--note", "broker incident")
    assert halted.returncode == 0, halted.stderr
    assert "halt" in halted.stdout and "all" in halted.stdout
    resumed = await _tapeline("resume", "-c", cfg, "--operator", "bob", "--note", "broker confirmed")
    assert resumed.returncode == 0, resumed.stderr
    evs = await stored(nc, RISK.stream(provisioned), f"{provisioned}.risk.breaker.>")
    trip, back = evs
    assert isinstance(trip, CircuitBreakerTripped) and trip.breaker == "halt" and trip.hard
    assert "ann" in trip.reason and "broker incident" in trip.reason
    assert isinstance(back, CircuitBreakerResumed) and (back.breaker, back.scope, back.operator) == (
        "halt",
        "all",
        "bob",
    )
    assert back.note == "broker confirmed" and back.causation_id == trip.event_id
    again = await _tapeline("resume", "-c", cfg, "--operator", "bob", "--note", "again")
    assert again.returncode == 1 and "nothing to resume" in again.stdout
    empty = await _tapeline("resume", "-c", cfg, "--operator", "", "--note", "x")
    assert empty.returncode == 2 and "--operator" in empty.stderr and "Traceback" not in empty.stderr
