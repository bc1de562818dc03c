"""Session 8's rebuild cuts keep their properties: deliveries stay out of the garbage collector's sight
(a rebuild gathers 50k of them), and a run of native tick rows never imports pandas (0.4-0.5 s)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

from tapeline.bus.consumer import parse_delivery
from tapeline.bus.reader import Received, new_received


def test_a_delivery_is_untracked_compared_by_identity_and_hashable() -> None:
    reply = b"$JS.ACK.T_MD.c.2.41.7.1763850000000000000.9"
    d = parse_delivery(b"t.md.tick.sim.X", reply, b"{}", None)
    same = parse_delivery(b"t.md.tick.sim.X", reply, b"{}", None)
    assert not gc.is_tracked(d)
    assert d == d and d != same and len({d, same}) == 2  # identity, as the __slots__ class had
    assert (d.stream_seq, d.deliveries, d.pending, d.ts_ns, d.subject) == (
        41,
        2,
        9,
        1763850000000000000,
        "t.md.tick.sim.X",
    )
    domain = parse_delivery(b"s", b"$JS.ACK.dom.acc.T_MD.c.3.42.8.1763850000000000001.5.rnd", b"", b"NATS/1.0\r\n\r\n")
    assert (domain.stream_seq, domain.deliveries, domain.pending, domain.ts_ns) == (42, 3, 5, 1763850000000000001)
    raw = new_received(Received, (d, (), True))  # what the reader yields for a body it hands over undecoded
    assert raw.delivery is d and raw.raw and raw.events == ()


def test_native_sequence_column_does_not_import_pandas() -> None:
    code = textwrap.dedent(
        """
        import sys
        from tapeline.projections.native import TICKS_NATIVE, Bodies
        b = Bodies(TICKS_NATIVE)
        b.add(5, b"{}", 1)
        b.add(9, b"[]", 3)
        t = b.event_seqs()
        print(t.column("_s").to_pylist(), str(t.schema.field("_s").type), "pandas" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[5,", "9,", "9,", "9]", "int64", "False"]
