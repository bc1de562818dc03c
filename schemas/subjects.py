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
_TEMPLATE_TOKEN = re.compile(r"\{[^}]*\}|[^.]+")
_PREFIX = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*")


_TOKENS: dict[str, str] = {}  # value -> token: every event's subject encodes the same few symbols again
_TOKENS_MAX = 65_536  # bounded: cleared when full (a process seeing more distinct values just re-encodes)


def encode_token(value: str) -> str:
    """Make any non-empty string a single subject token (and KV key), reversibly."""
    token = _TOKENS.get(value)
    if token is not None:
        return token
    if not value:
        raise ValueError("an empty string cannot be a subject token")
    if _SAFE.fullmatch(value):
        token = value
    else:
        out: list[str] = []
        for ch in value:
            if _SAFE.fullmatch(ch):
                out.append(ch)
            else:
                out.extend(f"={b:02X}" for b in ch.encode("utf-8"))
        token = "".join(out)
    if len(_TOKENS) >= _TOKENS_MAX:
        _TOKENS.clear()
    _TOKENS[value] = token
    return token


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


class SubjectTemplate:
    """The one subject grammar: an event class declares ``family.kind.{field}.{field}``, relative to the prefix.

    ``{a.b}`` reads a nested field, ``{x:lower}`` lower-cases it; every field token goes through
    :func:`encode_token`, so any value is exactly one token. The same template gives an event's
    subject (:meth:`render`) and the filter that consumes the type (:meth:`pattern`), so no
    subject string is written anywhere else.
    """

    __slots__ = ("_fields", "_fmt", "family", "template")

    def __init__(self, template: str) -> None:
        self.template = template
        self.family = template.split(".", 1)[0]
        parts: list[str] = []
        self._fields: list[tuple[str, tuple[str, ...], bool]] = []  # (name, attribute path, lower)
        for tok in _TEMPLATE_TOKEN.findall(template):
            if tok.startswith("{") and tok.endswith("}"):
                name, _, flag = tok[1:-1].partition(":")
                self._fields.append((name, tuple(name.split(".")), flag == "lower"))
                parts.append("{}")
            else:
                parts.append(tok)
        self._fmt = "{}." + ".".join(parts)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self._fields)

    def render(self, event: object, prefix: str) -> str:
        values = []
        tokens = _TOKENS
        for _, path, lower in self._fields:
            v: object = event
            for attr in path:
                v = getattr(v, attr)
            text = v if type(v) is str else str(v)
            if lower:
                text = text.lower()
            values.append(tokens.get(text) or encode_token(text))
        return self._fmt.format(prefix, *values)

    def pattern(self, prefix: str, **fixed: str) -> str:
        """The subject filter for this type; ``fixed`` narrows named fields (``interval="1m"``)."""
        unknown = set(fixed) - set(self.fields)
        if unknown:
            raise ValueError(f"{self.template!r} has no field(s) {sorted(unknown)}")
        return self._fmt.format(prefix, *(encode_token(fixed[n]) if n in fixed else "*" for n in self.fields))


def decisions_bucket(prefix: str) -> str:
    """KV bucket holding the latest decision envelope per symbol."""
    return f"{prefix}_decisions".replace(".", "_")
