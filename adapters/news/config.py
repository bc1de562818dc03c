"""``[news]``: the news feed's configuration, and which providers the source set selects.

``providers = "auto"`` (the default) follows ``[feeds.sources]``: the active set's ``news`` entry
(legacy: the news files, live: Marketaux and Tiingo). Keys never live here: Marketaux reads
``MARKETAUX_API_KEY``, Tiingo ``TIINGO_API_KEY`` (the environment, or a ``.env`` file).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Provider = Literal["marketaux", "tiingo", "files"]
Positive = Annotated[float, msgspec.Meta(gt=0)]
Count = Annotated[int, msgspec.Meta(ge=1)]
Text = Annotated[str, msgspec.Meta(min_length=1)]


class MarketauxConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Targeted news: ``/v1/news/all`` per symbol (https://www.marketaux.com/documentation)."""

    base_url: Text = "https://api.marketaux.com"
    key_env: Text = "MARKETAUX_API_KEY"
    symbols: list[Text] = []  # empty: the sim/IBKR symbols are not guessed; set them here
    language: str = "en"
    filter_entities: bool = True
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3  # per page; the plan caps it (free 3, pro 100)
    max_pages: Count = 5  # per poll; the API serves at most 20,000 results per query
    poll_interval_s: Annotated[float, msgspec.Meta(ge=10)] = 300.0  # free plan: 100 requests a day
    lookback_s: Annotated[float, msgspec.Meta(ge=0)] = 86_400.0  # first poll: news published since
    timeout_s: Positive = 30.0
    retries: Annotated[int, msgspec.Meta(ge=0)] = 5  # on 429, 5xx and network errors, per request
    backoff_initial_s: Positive = 1.0  # doubles per retry up to backoff_max_s; Retry-After wins if longer
    backoff_max_s: Positive = 60.0


class TiingoConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Broad news: ``/tiingo/news`` (https://www.tiingo.com/documentation/news)."""

    base_url: Text = "https://api.tiingo.com"
    key_env: Text = "TIINGO_API_KEY"
    tickers: list[Text] = []  # empty: all news
    tags: list[Text] = []
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    max_pages: Count = 10
    poll_interval_s: Annotated[float, msgspec.Meta(ge=10)] = 300.0
    lookback_s: Annotated[float, msgspec.Meta(ge=0)] = 86_400.0
    timeout_s: Positive = 30.0
    retries: Annotated[int, msgspec.Meta(ge=0)] = 5  # on 429, 5xx and network errors, per request
    backoff_initial_s: Positive = 1.0  # doubles per retry up to backoff_max_s; Retry-After wins if longer
    backoff_max_s: Positive = 60.0


class PriceFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A price file whose first..last time is the span a symbol's demo headlines are spread over."""

    symbol: Text
    path: Text
    kind: Literal["bars", "ticks"] = "bars"
    interval: str = "1d"


class SemevalConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The SemEval-2017 headlines as demo news. They carry a company but no ticker or date, so each
    company is assigned to one of ``symbols`` (:func:`..semeval.assign_symbol`) and each symbol's
    headlines are spread evenly over its ``pair_with`` file's dates, else over ``start``..``end``.
    Empty values follow the market source: the simulator's symbols and session, or the bar files."""

    path: str = "../shared/data/news/semeval2017-task5-headlines.json"  # "": off
    symbols: list[Text] = []
    start: str = ""  # ISO 8601, UTC
    end: str = ""
    pair_with: list[PriceFile] = []


class NewsFilesConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The legacy set's news: FNSPID CSV files and the SemEval headlines."""

    fnspid: list[Text] = []  # FNSPID CSV (or .csv.gz) paths
    semeval: SemevalConfig = SemevalConfig()
    chunk: Count = 1000  # items per published batch


class NewsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[news]``: which providers run, the de-duplication window and each provider's section."""

    providers: Literal["auto"] | list[Provider] = "auto"
    dedup_window_s: Positive = 86_400.0  # same URL or normalised title within this much publish time
    marketaux: MarketauxConfig = MarketauxConfig()
    tiingo: TiingoConfig = TiingoConfig()
    files: NewsFilesConfig = NewsFilesConfig()

    @property
    def selected(self) -> list[Provider]:
        return [] if self.providers == "auto" else list(self.providers)
