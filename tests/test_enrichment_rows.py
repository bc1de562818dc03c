"""Enrichment keeps each series' window as rows of one array, shifted per bar (issue 14, session 8), derived
from the snapshotted lists: after a restore at any point, and from lists longer than a window (which the
handler never writes but a restore could hold), every output is the same bytes as the reference's."""

from __future__ import annotations

import msgspec

from tapeline.handlers.enrichment import WINDOW, MarketFeatures, _Series
from tests.test_enrichment_exact import RefMarketFeatures, _outcome, _series


def test_restored_anywhere_emits_the_same() -> None:
    """A restart every 97 bars (a new handler, state from the snapshot only), and every 89 bars the same
    handler rewound to a snapshot 89 bars old, then fed on (its rows must follow the restored lists)."""
    ref, new = RefMarketFeatures(), MarketFeatures()
    emitted, older = 0, new.snapshot()
    for n, bar in enumerate(b for bars in _series() for b in bars):
        if n % 97 == 0:
            data = new.snapshot()
            new = MarketFeatures()
            new.restore(data)
        if n % 89 == 0:
            new.restore(older)
            ref.restore(older)
            older = new.snapshot()
        got, want = _outcome(new.handle, bar), _outcome(ref.handle, bar)
        assert got == want, (n, bar)
        emitted += got.startswith(b"\x91")
    assert emitted > 3000
    assert new.snapshot() == msgspec.msgpack.encode(ref._series)


def test_lists_longer_than_a_window() -> None:
    bars = next(_series())
    ref, new = RefMarketFeatures(), MarketFeatures()
    for bar in bars[: WINDOW + 10]:
        ref.handle(bar)
        new.handle(bar)
    longer = {
        k: _Series(s.ts_event, s.high * 2, s.low * 2, s.close * 2, s.volume * 2, s.open) for k, s in ref._series.items()
    }
    data = msgspec.msgpack.encode(longer)
    ref.restore(data)
    new.restore(data)
    for bar in bars[WINDOW + 10 : WINDOW + 40]:
        assert _outcome(new.handle, bar) == _outcome(ref.handle, bar)
