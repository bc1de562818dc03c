"""Cross-provider de-duplication with deterministic ids.

Two items are the same story when their canonical URLs match, or their normalised titles match,
and they were published within ``window_s`` of each other. The first one seen is kept (with its
own provider tag); later copies are dropped. Given the same items in the same order the result is
the same, so an importer rerun or a replay yields identical events.

Ids are provider-free: ``derive_event_id(published_ns, "news", key)`` where ``key`` is the
canonical URL (or the normalised title when there is no URL). The same article from two providers
with the same publication time therefore gets the same id, and JetStream's ``Nats-Msg-Id``
de-duplication drops it even when two processes publish it.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tapeline.schemas.events import NewsItem
from tapeline.schemas.ids import derive_event_id

# Query parameters that only track the click, never change the article.
_TRACKING = re.compile(r"^(utm_.*|fbclid|gclid|mc_cid|mc_eid|cmpid|ncid|yptr|guccounter|src|ref|referrer)$", re.I)
_NON_WORD = re.compile(r"[\W_]+")
# A common ingestion artefact (UTF-8 read as Latin-1): "Â£" for "£"; both normalise alike.
_MOJIBAKE = {"Â£": "£", "â€™": "'", "â€˜": "'", "â€œ": '"', "â€\x9d": '"', "â€“": "-", "â€”": "-"}


def canonical_url(url: str) -> str:
    """Scheme-less, lower-case host without ``www.``, no fragment, no tracking parameters, sorted
    query, no trailing slash: ``https://www.x.com/a/?utm_source=y#top`` -> ``x.com/a``."""
    url = url.strip()
    if not url:
        return ""
    parts = urlsplit(url if "//" in url else f"//{url}")
    host = (parts.hostname or "").lower().removeprefix("www.")
    if parts.port and parts.port not in (80, 443):
        host = f"{host}:{parts.port}"
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _TRACKING.match(k))
    path = parts.path.rstrip("/")
    return urlunsplit(("", host, path, urlencode(query), "")).removeprefix("//")


def normalise_title(title: str) -> str:
    """Lower-case words only: accents, punctuation, mojibake and spacing do not make a new story."""
    for bad, good in _MOJIBAKE.items():
        title = title.replace(bad, good)
    if title.isascii():
        text = title.lower()
    else:
        text = unicodedata.normalize("NFKD", title)
        text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return " ".join(_NON_WORD.sub(" ", text).split())


def story_key(url: str, title: str) -> str:
    """What identifies a story for its id: the canonical URL, else the normalised title."""
    canon = canonical_url(url)
    return f"url:{canon}" if canon else f"title:{normalise_title(title)}"


def news_id(published_ns: int, url: str, title: str, *, key: str = "") -> str:
    """The deterministic, provider-free id of a news item (``key``: its :func:`story_key`, if known)."""
    return derive_event_id(published_ns, "news", key or story_key(url, title))


class Deduper:
    """Keeps the first of each story within ``window_s`` (event time: ``published_ns``)."""

    def __init__(self, window_s: float) -> None:
        self.window_ns = int(window_s * 1e9)
        self._urls: dict[str, int] = {}
        self._titles: dict[str, int] = {}
        self._newest = 0
        self.dropped = 0

    def _seen(self, seen: dict[str, int], key: str, ts: int) -> bool:
        prev = seen.get(key)
        return prev is not None and abs(ts - prev) <= self.window_ns

    def admit(self, item: NewsItem) -> bool:
        """True for a new story (remembered), False for a copy of one seen within the window."""
        ts = item.published_ns or item.ts_event
        url = canonical_url(item.url)
        title = normalise_title(item.title)
        if (url and self._seen(self._urls, url, ts)) or (title and self._seen(self._titles, title, ts)):
            self.dropped += 1
            return False
        if url:
            self._urls[url] = ts
        if title:
            self._titles[title] = ts
        if ts > self._newest:
            self._newest = ts
            self._prune()
        return True

    def _prune(self) -> None:
        """Forget stories older than the window before the newest one, so memory stays bounded."""
        if len(self._urls) + len(self._titles) < 50_000:
            return
        floor = self._newest - self.window_ns
        self._urls = {k: t for k, t in self._urls.items() if t >= floor}
        self._titles = {k: t for k, t in self._titles.items() if t >= floor}
