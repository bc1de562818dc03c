"""``LeanParser`` (bus/protocol.py) against nats-py's own ``Parser``: the same byte stream, cut anywhere,
must give the same calls into the client, in the same order, with the same values (and the same protocol
error where there is one). The client is our real ``TapelineClient`` (not connected) recording what the
parser hands it: raw-handler deliveries, the stock message path, PING/PONG/INFO/-ERR."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from tapeline.bus.connection import TapelineClient
from tapeline.bus.protocol import LeanParser

RAW_SIDS = (1, 2)  # subscribe_raw subscriptions; sid 3 goes through the stock _process_msg


class Recorder(TapelineClient):
    def __init__(self, parser: type[Parser], reset_on_ping: bool = False) -> None:
        super().__init__()
        self._ps = parser(self)
        self.calls: list[tuple[Any, ...]] = []
        self.reset_on_ping = reset_on_ping
        for sid in RAW_SIDS:
            self._raw_handlers[sid] = lambda s, r, d, h, sid=sid: self.calls.append(
                ("raw", sid, bytes(s), bytes(r), type(d).__name__, d, h)
            )

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        if sid in self._raw_handlers:  # the base parser comes here; our override delivers raw
            await super()._process_msg(sid, subject, reply, data, headers)
        else:
            self.calls.append(("msg", sid, bytes(subject), bytes(reply), type(data).__name__, data, headers))

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))
        if self.reset_on_ping:  # what a protocol error handled mid-read does to the parser
            self._ps.reset()

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        self.calls.append(("info", json.dumps(info, sort_keys=True)))

    async def _process_err(self, err_msg: str) -> None:
        self.calls.append(("err", err_msg))


def msg(subject: str, sid: int, payload: bytes, reply: str = "") -> bytes:
    line = f"MSG {subject} {sid} {reply + ' ' if reply else ''}{len(payload)}\r\n".encode()
    return line + payload + b"\r\n"


def hmsg(subject: str, sid: int, headers: bytes, payload: bytes, reply: str = "") -> bytes:
    n = len(headers)
    line = f"HMSG {subject} {sid} {reply + ' ' if reply else ''}{n} {n + len(payload)}\r\n".encode()
    return line + headers + payload + b"\r\n"


ACK = "$JS.ACK.PEER_MD.c1.1.10.10.1700000000000000000.5"
HDR = b"NATS/1.0\r\nNats-Msg-Id: 01ABC\r\nTapeline-Type: tick\r\n\r\n"
STATUS = b"NATS/1.0 408 Request Timeout\r\n\r\n"

STREAM = b"".join(
    [
        b'INFO {"server_id":"x","max_payload":1048576}\r\n',
        msg("a.b", 1, b"hello"),
        msg("peer.md.tick.NVDA", 2, b'{"x":"\r\nMSG a 1 2\r\n"}', ACK),  # looks like frames inside
        b"PING\r\n",
        hmsg("_INBOX.x.1", 2, STATUS, b""),  # a status: headers only, no reply
        hmsg("peer.md.tick.ORCL", 3, HDR, b'{"y":1}', ACK),  # the stock path, with headers
        msg("empty", 1, b""),
        b"PONG\r\n",
        b"+OK\r\n",
        msg("a.c", 3, b"stock"),
        b"-ERR 'Permissions Violation for Subscription to \"x\"'\r\n",
        msg("after.err", 1, b"1"),
        b"MSG\ttab.sep 1 3\r\nabc\r\n",  # unusual but what the base regex accepts: left to it
        b"MSG  two.spaces 2  4\r\nabcd\r\n",
        hmsg("h.zero", 1, b"", b"no headers"),
        msg("back.to.fast", 2, b"xyz", "r.1"),
        b"PING\r\n",
        msg("last", 1, b"end"),
    ]
)


async def feed(parser: type[Parser], chunks: list[bytes], reset_on_ping: bool = False) -> list[tuple[Any, ...]]:
    nc = Recorder(parser, reset_on_ping)
    try:
        for c in chunks:
            await nc._ps.parse(c)
    except ProtocolError as e:
        nc.calls.append(("protocol error", str(e)))
    nc.calls.append(("left", bytes(nc._ps.buf)))
    return nc.calls


def cuts(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


async def same_calls(data: bytes, chunks: list[bytes], reset_on_ping: bool = False) -> list[tuple[Any, ...]]:
    want = await feed(Parser, chunks, reset_on_ping)
    got = await feed(LeanParser, chunks, reset_on_ping)
    assert got == want, f"chunks of sizes {[len(c) for c in chunks]}"
    return got


async def test_whole_stream_gives_every_call_in_order() -> None:
    calls = await same_calls(STREAM, [STREAM])
    kinds = [c[0] for c in calls]
    head = ["info", "raw", "raw", "ping", "raw", "msg", "raw", "pong", "msg", "err"]
    assert kinds == [*head, "raw", "raw", "raw", "raw", "raw", "ping", "raw", "left"]
    assert calls[2][3] == ACK.encode() and calls[2][5] == b'{"x":"\r\nMSG a 1 2\r\n"}'
    assert calls[4][6] == STATUS and calls[4][5] == b""  # status: raw headers, empty payload
    assert calls[5][6] == HDR and calls[5][5] == b'{"y":1}'
    assert calls[-1] == ("left", b"")


async def test_split_at_every_offset() -> None:
    for at in range(1, len(STREAM)):
        await same_calls(STREAM, cuts(STREAM, [at]))


async def test_split_byte_by_byte_and_in_random_pieces() -> None:
    await same_calls(STREAM, [STREAM[i : i + 1] for i in range(len(STREAM))])
    rnd = random.Random(14)
    for _ in range(300):
        await same_calls(STREAM, cuts(STREAM, rnd.sample(range(1, len(STREAM)), rnd.randint(2, 12))))


async def test_large_payloads_across_many_reads() -> None:
    big = bytes(range(256)) * 800  # 200 KiB, crosses several 32 KiB reads
    data = msg("big", 1, big) + hmsg("bigh", 3, HDR, big, "r") + msg("small", 2, b"s") + STREAM
    calls = await same_calls(data, [data[i : i + 32768] for i in range(0, len(data), 32768)])
    assert calls[0][5] == big and calls[1][5] == big
    rnd = random.Random(5)
    for _ in range(40):
        await same_calls(data, cuts(data, rnd.sample(range(1, len(data)), rnd.randint(1, 30))))


@pytest.mark.parametrize(
    "bad",
    [
        b"FOO bar\r\n",  # unknown operation
        b"MSG a x 3\r\nabc\r\n",  # a sid that is not a number
        b"MSG a 1 3 \r\nabc\r\n",  # space after the size: the base regex refuses it
        b"MSG a 1 r s 3\r\nabc\r\n",  # too many tokens
        b"HMSG a 1 9 3\r\nabc\r\n",  # headers longer than the message
        b"MSG a\r1 3\r\nabc\r\n",  # a lone CR in the line
        b"MSG a 1\n3\r\nabc\r\n",  # a lone LF in the line
        b"MSG a 1 3\r\rabc\r\n",  # CR CR
    ],
)
async def test_malformed_lines_behave_as_before(bad: bytes) -> None:
    data = msg("ok", 1, b"before") + bad + msg("never", 1, b"after")
    for at in range(1, len(data)):
        await same_calls(data, cuts(data, [at]))
    calls = await same_calls(data, [data])
    assert calls[0][:3] == ("raw", 1, b"ok")


async def test_reset_by_the_client_mid_read_stops_the_read() -> None:
    calls = await same_calls(STREAM, [STREAM], reset_on_ping=True)
    assert [c[0] for c in calls] == ["info", "raw", "raw", "ping", "left"]
    for at in range(1, len(STREAM), 7):
        await same_calls(STREAM, cuts(STREAM, [at]), reset_on_ping=True)
