"""Company masking for the offline sentiment scorer: the scored company's name in a headline becomes a
fixed placeholder before encoding.

Why: a SemEval headline's score is the sentiment *for one named company*, and the company's name
itself carries no sentiment but moves the sentence vector a lot (e5 puts "Tesco ..." near every other
Tesco headline). Replacing it by one fixed word ("Company") makes headlines about different firms
comparable and tells the encoder which firm is the subject when several are named: in the same 5x10
folds CV, 0.736 -> 0.749 (``benchmarks/sentiment_encoder_cv.py``).

A company is given as a name ("Royal Bank of Scotland Group plc") or a ticker ("RBS", "$AAPL"). The
name is tried in full, then without corporate suffixes ("Royal Bank of Scotland"), then as the
initials of its words ("RBS", case-sensitive), then by its first word unless that word is a generic
one ("Tesco" from "Tesco PLC", never "Royal" or "London"). Every occurrence of any of these forms is
replaced, with any corporate suffix that follows it ("Tesco PLC", "Apple Inc."), possessives kept
("Tesco's" -> "Company's"). Ticker-like forms (all capitals, up to 5 letters) match case-sensitively,
so the ticker "A" never masks the article "a". The rules are data
(:class:`CompanyMask`), stored in the artefact, so changing them changes the scorer's version.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

_SUFFIXES = (
    "plc",
    "group",
    "holdings",
    "holding",
    "inc",
    "incorporated",
    "corp",
    "corporation",
    "company",
    "co",
    "ltd",
    "limited",
    "llc",
    "sa",
    "ag",
    "nv",
    "se",
    "international",
)
_GENERIC = (
    "the",
    "american",
    "british",
    "bank",
    "china",
    "first",
    "general",
    "global",
    "international",
    "legal",
    "london",
    "national",
    "new",
    "royal",
    "standard",
    "united",
)


@dataclass(frozen=True)
class CompanyMask:
    """How a company's name is found in a headline and what replaces it."""

    placeholder: str = "Company"
    suffixes: tuple[str, ...] = _SUFFIXES  # dropped from the end of a name ("Tesco PLC" -> "Tesco")
    generic: tuple[str, ...] = _GENERIC  # first words too common to stand for the company alone

    def forms(self, company: str) -> list[str]:
        """The company's names to look for, most specific first."""
        full = company.strip().lstrip("$").strip()
        if not full:
            return []
        words = full.replace(",", " ").split()
        while len(words) > 1 and words[-1].lower().rstrip(".") in self.suffixes:
            words.pop()
        core = " ".join(words)
        out = [full, core]
        capitals = [w[0] for w in words if w[0].isupper()]
        if len(words) > 1 and len(capitals) >= 3:
            out.append("".join(capitals))
        if len(words) > 1 and len(words[0]) >= 3 and words[0].lower() not in self.generic:
            out.append(words[0])
        return list(dict.fromkeys(f for f in out if f))

    def apply(self, text: str, company: str | None) -> str:
        """``text`` with every occurrence of any of the company's forms replaced by the placeholder."""
        if not company:
            return text
        tail = r"(?:,?\s+(?:" + "|".join(re.escape(s) for s in self.suffixes) + r")\b\.?)*"
        alternatives = []
        for form in sorted(self.forms(company), key=len, reverse=True):  # the longest form wins where several fit
            if len(form) <= 5 and form.isupper():  # ticker-like: exact case, no suffixes
                alternatives.append(re.escape(form))
            else:
                alternatives.append(r"(?i:" + re.escape(form) + tail + ")")
        pattern = r"(?<!\w)\$?(?:" + "|".join(alternatives) + r")(?!\w)"
        return re.sub(pattern, self.placeholder, text)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CompanyMask:
        raw = json.loads(text)
        return cls(str(raw["placeholder"]), tuple(raw["suffixes"]), tuple(raw["generic"]))


DEFAULT_MASK = CompanyMask()
