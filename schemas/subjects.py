"""Subjects, stream families and the reversible symbol-to-token encoding (DESIGN §3).

Fixed tokens are lower-case; symbol tokens keep their case so the encoding stays reversible.
A symbol token may hold only ``[A-Za-z0-9_-]``, which is safe both as a NATS subject token and
as a KV key; every other character becomes ``=XX`` (its UTF-8 bytes in hex), so ``BRK.B`` is
``BRK=2EB`` and never two tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SAFE = re.compile(r"[A-Za-z0-9_\-]+")
_ESCAPED = re.compile(r"=([0-9A-F]{2})")
_PREFIX = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*")


def encode_token(value: str) -> str:
    """Make any non-empty string a single subject token (and KV key), reversibly."""
    if not value:
        raise ValueError("an empty string cannot be a subject token")
    if _SAFE.fullmatch(value):
        return value
    out: list[str] = []
    for ch in value:
        if _SAFE.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"={b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def decode_token(token: str) -> str:
    """Inverse of :func:`encode_token`."""
    if "=" not in token:
        return token
    raw = bytearray()
    i = 0
    while i < len(token):
        m = _ESCAPED.match(token, i)
        if m:
            raw.append(int(m.group(1), 16))
            i = m.end()
        else:
            raw.extend(token[i].encode("utf-8"))
            i += 1
    return raw.decode("utf-8")


@dataclass(frozen=True, slots=True)
class StreamFamily:
    """One JetStream stream: the subjects under the prefix it captures and whether it is a record."""

    key: str  # e.g. "md"; stream name is PREFIX_KEY upper-cased
    record: bool  # records never expire, deny delete/purge, discard new

    def stream(self, prefix: str) -> str:
        return f"{prefix}_{self.key}".upper().replace(".", "_").replace("-", "_")

    def subjects(self, prefix: str) -> str:
        return f"{prefix}.{self.key}.>"


MD = StreamFamily("md", record=False)
NEWS = StreamFamily("news", record=True)
INTEL = StreamFamily("intel", record=True)
DECISION = StreamFamily("decision", record=True)
ORDER = StreamFamily("order", record=True)
RISK = StreamFamily("risk", record=True)
OPS = StreamFamily("ops", record=True)
FAMILIES: tuple[StreamFamily, ...] = (MD, NEWS, INTEL, DECISION, ORDER, RISK, OPS)


def validate_prefix(prefix: str) -> str:
    """A prefix is lower-case dotted tokens; it names an isolated namespace."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"subject prefix {prefix!r} is invalid: use lower-case letters, digits, '-', '_' "
            "in dot-separated tokens starting with a letter, e.g. 'tape' or 'whatif.run1'"
        )
    return prefix


def family_of(subject: str, prefix: str) -> StreamFamily:
    """The stream family a subject under ``prefix`` belongs to."""
    head = subject[len(prefix) + 1 :].split(".", 1)[0]
    for fam in FAMILIES:
        if fam.key == head:
            return fam
    raise ValueError(f"subject {subject!r} belongs to no stream family under {prefix!r}")


def tick_subject(prefix: str, venue: str, symbol: str) -> str:
    """``<prefix>.md.tick.<venue>.<symbol>``: where a venue's ticks of a symbol are published."""
    return f"{prefix}.md.tick.{encode_token(venue)}.{encode_token(symbol)}"


def decisions_bucket(prefix: str) -> str:
    """KV bucket holding the latest decision envelope per symbol."""
    return f"{prefix}_decisions".replace(".", "_")
