"""The per-message shortcuts give exactly what the long way gives: subject tokens (cached), output ids
(stamped from a pre-joined key), delivery fields (read lazily from the reply subject)."""

from __future__ import annotations

from typing import ClassVar

import pytest

from tapeline.bus.components import _stamped
from tapeline.bus.consumer import parse_delivery
from tapeline.bus.publisher import headers_for
from tapeline.schemas import subjects
from tapeline.schemas.components import Consumes, Handler, draft
from tapeline.schemas.events import Alert, AnyEvent, Event, Tick
from tapeline.schemas.ids import derive_event_id, new_event_id
from tapeline.schemas.subjects import decode_token, encode_token


def test_token_cache_gives_the_same_tokens_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    values = ["NVDA", "BRK.B", "€uro", "a b", "x=y", "-_-"]
    first = [encode_token(v) for v in values]
    assert first == ["NVDA", "BRK=2EB", "=E2=82=ACuro", "a=20b", "x=3Dy", "-_-"]
    assert [encode_token(v) for v in values] == first  # from the cache now
    assert [decode_token(t) for t in first] == values
    for _ in range(2):
        with pytest.raises(ValueError, match="empty"):
            encode_token("")
    monkeypatch.setattr(subjects, "_TOKENS_MAX", 100)
    for i in range(1_000):
        assert encode_token(f"S.{i}") == f"S=2E{i}"
        assert len(subjects._TOKENS) <= 100


def test_rendered_subjects_unchanged() -> None:
    tick = Tick(event_id="x", ts_event=1, ts_init=1, source="s", venue="sim", symbol="BRK.B", last=1.0)
    for _ in range(2):  # the second time from the cache
        assert tick.subject("tape") == "tape.md.tick.sim.BRK=2EB"
    alert = draft(Alert, ts_event=1, severity="warning", kind="k", key="k", message="m")
    assert alert.subject("a.b") == "a.b.ops.alert.warning"


class Echo(Handler):
    name: ClassVar[str] = "echo_ids"
    role: ClassVar[str] = "test"
    version: ClassVar[int] = 3
    emits: ClassVar[tuple[type[Event], ...]] = (Alert,)
    consumes = (Consumes(Tick),)

    def handle(self, event: AnyEvent) -> list[Event]:
        return []


def test_stamped_ids_are_derive_event_id_of_name_version_key_index() -> None:
    cause = Tick(event_id=new_event_id(), ts_event=10**18, ts_init=1, source="s", venue="v", symbol="S")
    drafts = [
        draft(Alert, ts_event=10**18 + i * 10**6, severity="info", kind="k", key="k", message="m") for i in range(3)
    ]
    for key, ts in ((cause.event_id, 0), ("request-key", 5 * 10**17)):
        out = _stamped(Echo(), cause, drafts, key, ts)
        want = [derive_event_id(ts or d.ts_event, "echo_ids", 3, key, i) for i, d in enumerate(drafts)]
        assert [e.event_id for e in out] == want
        assert {(e.causation_id, e.correlation_id, e.source) for e in out} == {
            (cause.event_id, cause.event_id, "echo_ids")
        }
    assert _stamped(Echo(), cause, [], cause.event_id, 0) == []


@pytest.mark.parametrize(
    ("reply", "want"),
    [
        (b"$JS.ACK.S_MD.dur.3.1234.1200.1763850000000000001.77", (3, 1234, 77, 1763850000000000001)),
        (b"$JS.ACK.hub.ACC.S_MD.dur.2.55.50.1763850000000000002.0.r4nd", (2, 55, 0, 1763850000000000002)),
        (b"$JS.ACK.hub.ACC.S_MD.dur.1.9.9.1763850000000000003.4", (1, 9, 4, 1763850000000000003)),
    ],
)
def test_delivery_fields_from_the_reply(reply: bytes, want: tuple[int, int, int, int]) -> None:
    d = parse_delivery(b"t.md.tick.v.S", reply, b"{}", None)
    for _ in range(2):  # parsed on first use, then kept
        assert (d.deliveries, d.stream_seq, d.pending, d.ts_ns) == want
        assert (d.subject, d.reply, d.data, d.headers) == ("t.md.tick.v.S", reply.decode(), b"{}", b"")


def test_header_block_per_event() -> None:
    tick = Tick(event_id="T1", ts_event=1, ts_init=1, source="s", venue="v", symbol="S")
    alert = Alert(
        event_id="A1", ts_event=1, ts_init=1, source="s", severity="info", kind="k", key="k", message="m",
        correlation_id="C", causation_id="T1",
    )  # fmt: skip
    for _ in range(2):  # the second time with the cached type lines
        assert headers_for(tick) == (
            b"NATS/1.0\r\nNats-Msg-Id: T1\r\nContent-Type: application/json\r\nTapeline-Type: tick\r\n\r\n"
        )
        assert headers_for(alert, 3, {"X-A": "1"}) == (
            b"NATS/1.0\r\nNats-Msg-Id: A1+3\r\nContent-Type: application/json\r\nTapeline-Type: alert\r\n"
            b"Correlation-Id: C\r\nCausation-Id: T1\r\nTapeline-Count: 3\r\nX-A: 1\r\n\r\n"
        )
