"""Market phase in the Wyckoff sense, by explicit rules on the enrichment features, and the nudge manifest.

The four phases of a Wyckoff cycle: *accumulation* (a trading range after a decline), *markup* (an
advance), *distribution* (a trading range after an advance) and *markdown* (a decline). The rules read
the features of :mod:`schemas.features` (z-scores against the window's own volatility, so the same
thresholds hold for daily and minute bars):

1. **markup** when the 20-bar move is up by at least ``TREND_Z`` (``ret_20 >= 1``) and the close is
   above its 50-bar mean (``dist_sma_50 > 0``);
2. **markdown** when ``ret_20 <= -1`` and ``dist_sma_50 < 0``;
3. otherwise price is in a **trading range**, named by what came before it (``ret_prior_40``, the move
   from 60 to 20 bars ago): after a decline (``< 0``) it is **accumulation**, after an advance (``> 0``)
   **distribution**; with no prior move at all, the side of the 50-bar mean decides (below:
   accumulation).

Confidence in [0, 1] is the share of evidence that agrees:

* trend phases: ``0.5 * min(|ret_20| / 2, 1)`` (how strong the move is) plus ``0.5 *`` the fraction of
  ``ret_5``, ``dist_sma_20``, ``dist_sma_50``, ``pos_20`` that point the same way;
* range phases: ``0.4 * min(|ret_prior_40| / 2, 1)`` (how clear the preceding move was) plus
  ``0.4 * (1 - min(|ret_20| / 1, 1))`` (how flat the range is) plus ``0.2`` when volatility contracts
  (``vol_5_20 < 0``), as it does in a range that is building cause.

Pure functions: the same features give the same phase, confidence and nudges, in replay too.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import msgspec

Phase = Literal["accumulation", "markup", "distribution", "markdown"]
PHASES: tuple[Phase, ...] = ("accumulation", "markup", "distribution", "markdown")
WARMUP = "warmup"  # the manifest key for rows with too little history
TREND_Z = 1.0
DEFAULT_MANIFEST = Path(__file__).with_name("nudges.toml")


def classify(f: dict[str, float]) -> tuple[Phase, float]:
    """(phase, confidence) of one feature dict (the rules in the module docstring)."""
    r20, prior, sma50 = f["ret_20"], f["ret_prior_40"], f["dist_sma_50"]
    if (r20 >= TREND_Z and sma50 > 0) or (r20 <= -TREND_Z and sma50 < 0):
        sign = 1.0 if r20 > 0 else -1.0
        agree = sum(sign * f[k] > 0 for k in ("ret_5", "dist_sma_20", "dist_sma_50", "pos_20")) / 4
        conf = 0.5 * min(abs(r20) / 2, 1.0) + 0.5 * agree
        return ("markup" if sign > 0 else "markdown"), round(conf, 4)
    after_decline = prior < 0 or (prior == 0 and sma50 <= 0)
    conf = 0.4 * min(abs(prior) / 2, 1.0) + 0.4 * (1 - min(abs(r20) / TREND_Z, 1.0)) + 0.2 * (f["vol_5_20"] < 0)
    return ("accumulation" if after_decline else "distribution"), round(conf, 4)


class ManifestError(ValueError):
    """A nudge manifest that cannot be used; the message names the file and the fix."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Operator hints per phase, versioned: the version travels on every Enrichment."""

    version: str
    nudges: dict[str, list[str]]


def load_manifest(path: Path | str = "") -> Manifest:
    """The manifest at ``path`` (empty: the packaged ``handlers/nudges.toml``), with every phase and
    ``warmup`` present; raises :class:`ManifestError` otherwise."""
    p = Path(path) if path else DEFAULT_MANIFEST
    try:
        m = msgspec.convert(tomllib.loads(p.read_text(encoding="utf-8")), Manifest)
    except FileNotFoundError:
        raise ManifestError(f"enrichment.manifest: {p} is missing; name a nudge manifest or leave it empty") from None
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as e:
        raise ManifestError(f"enrichment.manifest: {p}: {e}; see handlers/nudges.toml for the format") from None
    missing = [k for k in (*PHASES, WARMUP) if k not in m.nudges]
    if not m.version or missing:
        raise ManifestError(f"enrichment.manifest: {p} needs a version and nudges for {missing or 'every phase'}")
    return m
