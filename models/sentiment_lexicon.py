"""A small financial-news polarity lexicon, written for Tapeline from general knowledge of how
headlines speak (in the spirit of the Loughran-McDonald word lists, not a copy of them).

Why: MiniLM sentence vectors know the topic better than the direction ("profit up" and "profit down"
sit close together); counts of directional words give the head the sign explicitly. Single words match
by prefix on word tokens ("slump" matches "slumps", "slumped"); entries with a space match as phrases.
The lists are copied into the trained artefact, so the artefact's version covers them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

SUMMARY = ("pos_strong", "pos", "neg_strong", "neg", "negator", "hedge", "net")
"""The first columns of :meth:`Lexicon.features`; one count per polar stem follows them."""

_WORD = re.compile(r"[a-z][a-z'\-]*|\?")


@dataclass(frozen=True)
class Lexicon:
    """Word lists by polarity; ``features`` turns texts into counts the head weighs."""

    pos_strong: tuple[str, ...]
    pos: tuple[str, ...]
    neg_strong: tuple[str, ...]
    neg: tuple[str, ...]
    negator: tuple[str, ...]
    hedge: tuple[str, ...]

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), as stored in the artefact."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Lexicon:
        """The lists stored in an artefact; ValueError if they are not lists of strings."""
        data = json.loads(raw)
        fields = ("pos_strong", "pos", "neg_strong", "neg", "negator", "hedge")
        if not isinstance(data, dict) or any(
            not isinstance(data.get(f), list) or not all(isinstance(w, str) for w in data[f]) for f in fields
        ):
            raise ValueError("lexicon must map " + ", ".join(fields) + " to lists of strings")
        return cls(**{f: tuple(data[f]) for f in fields})

    @property
    def stems(self) -> tuple[str, ...]:
        """Every polar stem, in column order after :data:`SUMMARY`."""
        return (*self.pos_strong, *self.pos, *self.neg_strong, *self.neg)

    def feature_names(self) -> list[str]:
        return [*SUMMARY, *(f"stem:{s}" for s in self.stems)]

    def features(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Per text: the :data:`SUMMARY` counts (strong/plain positive and negative, negators, hedges, net
        polarity), then how often each polar stem occurs, so the head can learn each word's own weight."""
        stems = self.stems
        out = np.zeros((len(texts), len(SUMMARY) + len(stems)), dtype=np.float32)
        for i, raw in enumerate(texts):
            text = f" {raw.lower()} "
            words = _WORD.findall(text)
            per_stem = [_count(text, words, (stem,)) for stem in stems]
            a, b, c = (
                len(self.pos_strong),
                len(self.pos_strong) + len(self.pos),
                len(self.pos_strong) + len(self.pos) + len(self.neg_strong),
            )
            ps, p, ns, n = sum(per_stem[:a]), sum(per_stem[a:b]), sum(per_stem[b:c]), sum(per_stem[c:])
            neg, hedge = _count(text, words, self.negator), _count(text, words, self.hedge)
            net = (2 * ps + p - 2 * ns - n) / (1.0 + ps + p + ns + n)
            out[i, : len(SUMMARY)] = (ps, p, ns, n, neg, hedge, net)
            out[i, len(SUMMARY) :] = per_stem
        return out


def _count(text: str, words: Sequence[str], stems: Sequence[str]) -> int:
    """Occurrences of stems: single words by token prefix, phrases by substring."""
    n = 0
    for stem in stems:
        if " " in stem:
            n += text.count(stem)
        else:
            n += sum(1 for w in words if w.startswith(stem))
    return n


# fmt: off
DEFAULT_LEXICON = Lexicon(
    pos_strong=(
        "soar", "surge", "jump", "rocket", "rall", "record", "boom", "beat", "smash", "outperform", "upgrade",
        "bullish", "skyrocket", "best", "tops", "storm",
    ),
    pos=(
        "rise", "rising", "rose", "gain", "up", "climb", "advance", "grow", "growth", "increas", "lift", "boost",
        "improv", "strong", "robust", "profit", "win", "won", "success", "hike", "higher", "high", "recover",
        "rebound", "expand", "buy", "approv", "agree", "deal", "partner", "award", "launch", "raise", "rais",
        "exceed", "ahead", "upbeat", "optimis", "confiden", "positive", "solid", "firm", "back", "support", "secur",
        "accelerat", "dividend", "payout", "bonus", "upside", "opportunit", "attractive", "cheap", "undervalued",
        "bargain", "breakthrough", "innovat", "milestone", "resilien", "benefit", "welcome", "sweeten", "favour",
        "favor", "leads", "pops", "edges up", "inch up", "steady", "stabilis", "stabiliz", "save", "saving",
        "reward",
    ),
    neg_strong=(
        "plunge", "plummet", "slump", "crash", "collapse", "tumble", "sink", "sank", "sunk", "dive", "crater",
        "scandal", "fraud", "brib", "bankrupt", "insolven", "crisis", "disaster", "rout", "worst", "downgrade",
        "warn", "bearish", "loss", "lose", "lost", "fine", "penalt", "sue", "lawsuit", "probe", "investigat",
        "charge", "accus", "manipulat", "rig",
    ),
    neg=(
        "fall", "fell", "drop", "decline", "down", "lower", "low", "slide", "slid", "slip", "dip", "weak", "cut",
        "slash", "reduc", "shrink", "slow", "miss", "disappoint", "concern", "fear", "worr", "risk", "threat",
        "pressure", "struggl", "hit", "hurt", "damag", "drag", "weigh", "troubl", "problem", "fail", "halt",
        "suspend", "delay", "cancel", "axe", "job cut", "layoff", "lay off", "redundan", "close", "closure", "exit",
        "quit", "resign", "step down", "oust", "sack", "fire", "debt", "writedown", "write-down", "write down",
        "impair", "provision", "settle", "litigat", "court", "regulator", "sanction", "critic", "attack", "oppose",
        "reject", "block", "bad", "negative", "pessimis", "uncertain", "volatil", "turmoil", "doubt", "caution",
        "scrap", "abandon", "short", "squeeze", "strike", "spill", "recall", "breach", "leak", "headwind",
        "underperform", "sell-off", "selloff", "sell off", "exposure", "hard", "tough", "fight", "battle",
    ),
    negator=(
        "not", "no", "never", "without", "unable", "n't", "cannot",
    ),
    hedge=(
        "?", "could", "may", "might", "should", "can", "would", "whether", "what", "why", "how",
    ),
)
# fmt: on
