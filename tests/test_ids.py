"""Event ids: the fast encoder gives exactly the base32hex strings ids always had (ids are stored forever)."""

from __future__ import annotations

import base64
import random

from tapeline.schemas.ids import _encode, derive_event_id, id_time_ms, new_event_id, tick_id


def test_encoder_matches_base32hex_reference() -> None:
    rng = random.Random(7)
    cases = [(0, bytes(10)), (2**48 - 1, b"\xff" * 10), (2**48 + 5, b"\x01" * 10)]  # the last wraps to 48 bits
    cases += [(rng.getrandbits(48), rng.randbytes(10)) for _ in range(2000)]
    for ms, low in cases:
        raw = (ms & 0xFFFF_FFFF_FFFF).to_bytes(6, "big") + low
        assert _encode(ms, low) == base64.b32hexencode(raw).decode("ascii")[:26]


def test_derived_ids_unchanged() -> None:
    """Values computed by the previous (base64-module) implementation: replays must find the same ids."""
    assert (
        derive_event_id(1763842000123456789, "bars", 3, "01KAB0000000000000000000XY", 0) == "06DAQB84VCENHHK5C1OP7V0S0K"
    )
    assert tick_id("sim", "BRK.B", 1763842000123456789, 7) == "06DAQB84VCI1QRJJAEF6MQLRF0"


def test_ids_sort_by_time_and_keep_it() -> None:
    a, b = new_event_id(1_000_000_000_000), new_event_id(1_000_001_000_000)
    assert a < b
    assert id_time_ms(a) == 1_000_000 and id_time_ms(b) == 1_000_001
