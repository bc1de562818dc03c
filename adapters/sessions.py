"""Weekly trading sessions in UTC (``"mon-fri 13:30-20:00; sun 22:00-24:00"``, ``"always"``).

Its own module so the feed configuration can validate session specs without importing a feed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})")


@dataclass(frozen=True, slots=True)
class Session:
    """Weekly trading windows in UTC: (weekday 0=Mon, start minute, end minute)."""

    windows: tuple[tuple[int, int, int], ...]

    def is_open(self, ts_ns: int) -> bool:
        dt = datetime.fromtimestamp(ts_ns / 1e9, UTC)
        minute = dt.hour * 60 + dt.minute
        return any(d == dt.weekday() and a <= minute < b for d, a, b in self.windows)


def parse_session(spec: str) -> Session:
    """``"mon-fri 00:00-24:00"``, ``"mon-fri 13:30-20:00; sun 22:00-24:00"``, ``"always"``.

    Parts separated by ``;``: a day or day range, then one or more ``HH:MM-HH:MM`` spans (comma
    separated), UTC. ``"always"`` is every minute of the week.
    """
    spec = spec.strip().lower()
    if spec == "always":
        return Session(tuple((d, 0, 1440) for d in range(7)))
    windows: list[tuple[int, int, int]] = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        days_text, _, spans_text = part.partition(" ")
        a, _, b = days_text.partition("-")
        if a not in _DAYS or (b and b not in _DAYS):
            raise ValueError(f"session {part!r}: days must be like 'mon' or 'mon-fri'")
        first, last = _DAYS.index(a), _DAYS.index(b or a)
        days = list(range(first, last + 1)) if first <= last else [*range(first, 7), *range(0, last + 1)]
        spans = [s.strip() for s in spans_text.split(",") if s.strip()]
        if not spans:
            raise ValueError(f"session {part!r}: add a time span such as '09:30-16:00'")
        for span in spans:
            m = _SPAN.fullmatch(span)
            if not m:
                raise ValueError(f"session {part!r}: {span!r} is not HH:MM-HH:MM")
            h1, m1, h2, m2 = (int(x) for x in m.groups())
            start, end = h1 * 60 + m1, h2 * 60 + m2
            if not (0 <= start < end <= 1440 and m1 < 60 and m2 < 60):
                raise ValueError(f"session {part!r}: {span!r} must run forwards within 00:00-24:00")
            windows.extend((d, start, end) for d in days)
    if not windows:
        raise ValueError("empty session; use e.g. 'mon-fri 00:00-24:00' or 'always'")
    return Session(tuple(windows))
