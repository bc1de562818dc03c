"""Bar intervals: ``"5s"``, ``"1m"``, ``"1h"``, ``"1d"`` (they appear in Bar events and bar subjects)."""

from __future__ import annotations

import re

_INTERVAL = re.compile(r"(\d+)([smhd])")
_UNIT_NS = {"s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}


def interval_ns(interval: str) -> int:
    """``"5s"``, ``"1m"``, ``"1h"``, ``"1d"`` in nanoseconds; anything else is a configuration error."""
    m = _INTERVAL.fullmatch(interval)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"invalid bar interval {interval!r}: use a positive number and s, m, h or d, e.g. '1m'")
    return int(m.group(1)) * _UNIT_NS[m.group(2)]
