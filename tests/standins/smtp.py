"""A local SMTP server (RFC 5321 subset: EHLO/HELO, AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT).

Records each accepted message; ``data_replies`` scripts the answers to DATA (e.g. a 451 then
the default 250) so tests can see retries and refusals. No TLS: clients use ``smtp_starttls = false``.
"""

from __future__ import annotations

import asyncio
import base64
from email import message_from_bytes
from email.message import Message


class SmtpServer:
    def __init__(self, *, data_replies: list[str] | None = None, user: str = "", password: str = "") -> None:
        self.data_replies = list(data_replies or [])
        self.user, self.password = user, password
        self.messages: list[tuple[str, list[str], Message]] = []
        self.commands: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        sender, rcpts, authed = "", [], not self.user
        say("220 standin ESMTP ready")
        try:
            while raw := await reader.readline():
                cmd = raw.decode().rstrip("\r\n")
                verb = cmd.split(" ", 1)[0].upper()
                self.commands.append(verb)
                if verb == "EHLO":
                    say("250-standin greets you")
                    say("250-AUTH PLAIN")
                    say("250 8BITMIME")
                elif verb == "HELO" or verb in ("NOOP", "RSET"):
                    sender, rcpts = ("", []) if verb == "RSET" else (sender, rcpts)
                    say("250 OK")
                elif verb == "AUTH":
                    parts = cmd.split(" ")
                    _, user, password = base64.b64decode(parts[2]).decode().split("\0")
                    authed = (user, password) == (self.user, self.password)
                    say("235 2.7.0 Authentication successful" if authed else "535 5.7.8 Authentication failed")
                elif verb == "MAIL":
                    if not authed:
                        say("530 5.7.0 Authentication required")
                        continue
                    sender = cmd.split(":", 1)[1].split(">")[0].strip(" <")
                    say("250 OK")
                elif verb == "RCPT":
                    rcpts.append(cmd.split(":", 1)[1].split(">")[0].strip(" <"))
                    say("250 OK")
                elif verb == "DATA":
                    say("354 End data with <CR><LF>.<CR><LF>")
                    await writer.drain()
                    lines: list[bytes] = []
                    while (line := await reader.readline()) != b".\r\n":
                        lines.append(line[1:] if line.startswith(b"..") else line)
                    reply = self.data_replies.pop(0) if self.data_replies else "250 OK queued"
                    if reply.startswith("250"):
                        self.messages.append((sender, rcpts, message_from_bytes(b"".join(lines))))
                    sender, rcpts = "", []
                    say(reply)
                elif verb == "QUIT":
                    say("221 Bye")
                    await writer.drain()
                    break
                else:
                    say("502 5.5.2 Command not recognized")
                await writer.drain()
        finally:
            writer.close()

    async def __aenter__(self) -> SmtpServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
