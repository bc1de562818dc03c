"""A lean reader of the NATS protocol for the message hot path (issue 14, session 5).

nats-py's ``Parser`` matches a regular expression per ``MSG``/``HMSG`` line, copies every payload
twice (a ``bytearray`` slice, then ``bytes``), deletes each frame from the front of its buffer and
awaits a coroutine per message: at one event per message that was a fifth of a consumer's CPU.
``LeanParser`` walks each read with ``bytes.find``/``split`` instead, slices payloads straight out
of the read, and calls our raw handlers (``TapelineClient.subscribe_raw``) synchronously; messages
of other subscriptions still go through the client's ``_process_msg``.

It only takes what it can read exactly as the base parser would: a line it does not recognise
(``INFO``, ``-ERR``, ``+OK``, anything unusual in a ``MSG`` line, a protocol error), and everything
after it in that read, goes to the base parser, so every other case behaves as before by construction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

if TYPE_CHECKING:
    from tapeline.bus.connection import TapelineClient


class LeanParser(Parser):
    """Fast path for runs of ``MSG``/``HMSG`` frames (and ``PING``/``PONG``); the base parser for the rest."""

    def __init__(self, nc: TapelineClient) -> None:
        self._want = 0  # bytes the buffered partial frame needs before it is worth reading again
        self._resets = 0  # the client resets the parser on a protocol error or reconnect (maybe mid-read)
        super().__init__(nc)
        self._client = nc

    def reset(self) -> None:
        super().reset()
        self._want = 0
        self._resets += 1

    async def parse(self, data: bytes = b"") -> None:
        if self.state != AWAITING_CONTROL_LINE:  # the base parser is inside a message: it finishes it
            await super().parse(data)
            return
        buf = self.buf
        if buf:
            buf.extend(data)
            if len(buf) < self._want:
                return
            data = bytes(buf)
            buf.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        self._want = 0
        nc = self._client
        raw = nc._raw_handlers
        resets = self._resets
        end = len(data)
        pos = 0
        count = size_in = 0  # raw deliveries, for the client's stats (added once per read)
        try:
            while pos < end:
                # Byte values, not slices: 77 "M", 72 "H", 13 "\r", 10 "\n" (bytes.find and `in` with an int
                # skip the buffer protocol a bytes argument goes through: a third of the cost).
                first = data[pos]
                if first == 77 and data[pos + 1 : pos + 4] == b"SG ":
                    hmsg = 0
                elif first == 72 and data[pos + 1 : pos + 5] == b"MSG ":
                    hmsg = 1
                elif (head := data[pos : pos + 4]) in (b"PING", b"PONG") and data.startswith(b"\r\n", pos + 4):
                    pos += 6
                    await (nc._process_ping() if head[1] == 73 else nc._process_pong())  # 73: "I"
                    if self._resets != resets:
                        return
                    continue
                else:
                    break
                eol = data.find(13, pos)  # the line ends at its first "\r" ...
                if eol < 0 or eol + 1 == end:  # the line has not all arrived
                    buf.extend(memoryview(data)[pos:])
                    return
                if data[eol + 1] != 10:  # ... unless it is a lone "\r": the base parser reads such a line
                    break
                line = data[pos + 4 + hmsg : eol]
                args = line.split()
                n = len(args) - hmsg
                # Anything the base parser's regular expression might read differently is left to it.
                if (n != 3 and n != 4) or 10 in line or not 48 <= data[eol - 1] <= 57:
                    break
                size_b = args[-1]
                hlen_b = args[-2] if hmsg else b"0"
                if not (size_b.isdigit() and hlen_b.isdigit()):
                    break
                try:
                    sid = int(args[1])
                except ValueError:
                    break
                start = eol + 2
                stop = start + int(size_b)
                if stop + 2 > end:  # the payload has not all arrived
                    self._want = stop + 2 - pos
                    buf.extend(memoryview(data)[pos:])
                    return
                if hmsg:
                    hlen = int(hlen_b)
                    if start + hlen > stop:
                        break
                    hdr = data[start : start + hlen] if hlen else None
                    start += hlen
                else:
                    hdr = None
                payload = data[start:stop]
                pos = stop + 2
                handler = raw.get(sid)
                if handler is not None:
                    count += 1
                    size_in += stop - start
                    try:
                        handler(args[0], args[2] if n == 4 else b"", payload, hdr)
                    except Exception:  # a handler bug must not stop the connection's reader
                        nc.raw_handler_failed(args[0])
                else:
                    await nc._process_msg(sid, args[0], args[2] if n == 4 else b"", payload, hdr)  # type: ignore[arg-type]
                    if self._resets != resets:
                        return
        finally:
            if count:
                nc.stats["in_msgs"] += count
                nc.stats["in_bytes"] += size_in
        if pos < end:  # the base parser reads the rest
            buf.extend(memoryview(data)[pos:])
            await super().parse()
