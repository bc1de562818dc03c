"""The market feature vector's names and order: shared by the ``enrichment`` handler that computes
it and the ``market_states`` read model that stores it (which may not import handlers)."""

from __future__ import annotations

MARKET_FEATURES: tuple[str, ...] = (
    "ret_1",  # log return of the last bar / sigma20
    "ret_5",  # log return over 5 bars / (sigma20 * sqrt 5)
    "ret_20",  # log return over 20 bars / (sigma20 * sqrt 20)
    "vol_5_20",  # log(sigma5 / sigma20): volatility expanding (+) or contracting (-)
    "vol_20_60",  # log(sigma20 / sigma60): volatility regime against the longer window
    "range",  # log(bar range / mean range of the last 20 bars), range = (high - low) / close
    "close_loc",  # where the close sits in the bar, -1 at the low, +1 at the high
    "volume_z",  # z-score of log(1 + volume) against the last 20 bars (0 when volume is absent)
    "dist_sma_10",  # log(close / SMA10) / (sigma20 * sqrt 10)
    "dist_sma_20",  # log(close / SMA20) / (sigma20 * sqrt 20)
    "dist_sma_50",  # log(close / SMA50) / (sigma20 * sqrt 50)
    "pos_20",  # where the close sits in the 20-bar high-low range, -1 .. +1
)
MARKET_DIM = len(MARKET_FEATURES)

# Further features on every Enrichment (and the price model's inputs), not in the similarity vector:
# market_states keeps its 12 dimensions so its stored vectors stay comparable.
EXTRA_FEATURES: tuple[str, ...] = (
    "rv_20",  # realised volatility: stdev of one-bar log returns over 20 bars (raw, per bar)
    "rsi_14",  # Cutler's RSI over 14 bars (simple means of gains and losses), rescaled to -1 .. +1
    "dist_vwap_20",  # log(close / 20-bar VWAP of the typical price) / (sigma20 * sqrt 20); equal weights without volume
    "gap",  # log(open / previous close) / sigma20
    "ret_prior_40",  # log return from 60 to 20 bars ago / (sigma20 * sqrt 40): the move before the last 20 bars
)
ENRICHMENT_FEATURES: tuple[str, ...] = MARKET_FEATURES + EXTRA_FEATURES
