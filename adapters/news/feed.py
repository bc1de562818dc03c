"""The news feed component: the active providers, de-duplicated, as NewsItems on ``news.<provider>``.

``files`` imports the FNSPID CSVs and the SemEval headlines once (sorted by time, then done; a restart
publishes only the rows the stream does not hold yet);
``marketaux`` and ``tiingo`` poll their APIs every ``poll_interval_s``, each from ``lookback_s``
before the start (or, after a restart, from the newest article of that provider already stored: see
:meth:`NewsFeed.recall`) and then from the newest article it returned. Every item passes one
:class:`~.dedup.Deduper`, so a story two providers both report is published once, under the
provider that delivered it first. Rejected file rows become one warning alert per file (as for
price files); a provider that keeps failing (429/5xx after the retries, 402 quota spent) is
logged and asked again at its next poll; a refused or missing key stops the feed with one line.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import msgspec
import structlog
from nats.aio.client import Client as NatsClient

from tapeline.adapters.config import FilesConfig, SourceChoice
from tapeline.adapters.files import FileImportError, FileSource, file_alert, parse_time_ns, read_source
from tapeline.adapters.news.config import NewsConfig, PriceFile, Provider, SemevalConfig
from tapeline.adapters.news.dedup import Deduper
from tapeline.adapters.news.fnspid import PROVIDER as FNSPID
from tapeline.adapters.news.fnspid import NewsImport, read_fnspid
from tapeline.adapters.news.http import NewsUnavailable
from tapeline.adapters.news.semeval import PROVIDER as SEMEVAL
from tapeline.adapters.news.semeval import read_semeval
from tapeline.bus.reader import read
from tapeline.schemas.components import Feed
from tapeline.schemas.events import Alert, Event, NewsItem
from tapeline.schemas.subjects import NEWS

log = structlog.get_logger("tapeline.news")
FILE_PROVIDERS = (FNSPID, SEMEVAL)  # the providers of the news files' items (their subjects: news.<provider>)


class Client(Protocol):
    async def fetch(self, published_after_ns: int) -> list[NewsItem]: ...
    async def aclose(self) -> None: ...


def providers_of(choice: SourceChoice) -> list[Provider]:
    """What a source set's ``news`` entry means: ``files``/``fnspid`` are the news files."""
    names = [choice.news] if isinstance(choice.news, str) else list(choice.news)
    out: list[Provider] = []
    for n in names:
        p: Provider | None = "files" if n in ("files", "fnspid") else n if n in ("marketaux", "tiingo") else None
        if p is not None and p not in out:
            out.append(p)
    return out


def resolve_news(
    cfg: NewsConfig,
    choice: SourceChoice,
    *,
    market: str,
    files: FilesConfig,
    default_files: Sequence[FileSource],
    sim_symbols: Sequence[str],
    sim_span_ns: tuple[int, int],
) -> NewsConfig:
    """``providers = "auto"`` becomes the source set's; empty SemEval pairing follows the market."""
    if cfg.providers == "auto":
        cfg = msgspec.structs.replace(cfg, providers=providers_of(choice))
    sem = cfg.files.semeval
    if "files" not in cfg.selected or not sem.path or sem.symbols or sem.pair_with:
        return cfg
    if market == "sim":
        start, end = (_iso(t) for t in sim_span_ns)
        sem = msgspec.structs.replace(sem, symbols=list(sim_symbols), start=sem.start or start, end=sem.end or end)
    elif market == "files":
        srcs = [FileSource(Path(s.path), s.symbol, s.kind, s.interval) for s in files.sources] or list(default_files)
        bars = [s for s in srcs if s.kind == "bars"] or srcs
        pairs = {s.symbol: PriceFile(symbol=s.symbol, path=str(s.path), kind=s.kind, interval=s.interval) for s in bars}
        sem = msgspec.structs.replace(sem, pair_with=list(pairs.values()))
    return msgspec.structs.replace(cfg, files=msgspec.structs.replace(cfg.files, semeval=sem))


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ns // 1_000_000_000))


def semeval_spans(sem: SemevalConfig) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """The symbols to pair with and each one's time span (its price file's first..last time)."""
    spans: dict[str, tuple[int, int]] = {}
    for pf in sem.pair_with:
        got = read_source(FileSource(Path(pf.path), pf.symbol, pf.kind, pf.interval))
        if got.events:
            spans[pf.symbol] = (got.events[0].ts_event, got.events[-1].ts_event)
    symbols = sem.symbols or [pf.symbol for pf in sem.pair_with if pf.symbol in spans]
    missing = [s for s in symbols if s not in spans]
    if missing:
        if not (sem.start and sem.end):
            raise ValueError(f"news.files.semeval: no span for {missing}; set start and end (ISO 8601 times)")
        span = (parse_time_ns(sem.start), parse_time_ns(sem.end))
        if span[1] <= span[0]:
            raise ValueError(f"news.files.semeval: end {sem.end} is not after start {sem.start}")
        spans.update(dict.fromkeys(missing, span))
    return symbols, spans


class NewsFeed(Feed):
    """Publishes the active providers' news (see the module docstring)."""

    name: ClassVar[str] = "news"
    role: ClassVar[str] = "news"
    Config: ClassVar[type[msgspec.Struct]] = NewsConfig
    emits: ClassVar[tuple[type[Event], ...]] = (NewsItem, Alert)

    def __init__(self, config: NewsConfig | None = None, *, polls: int | None = None) -> None:
        super().__init__(config)
        self.cfg: NewsConfig = self.config
        self.dedup = Deduper(self.cfg.dedup_window_s)
        self.polls = polls  # stop after this many polls per provider (tests, one-shot backfills)
        self.imports: list[NewsImport] = []
        self.resume_ns: dict[str, int] = {}  # provider -> newest published time already stored (see recall)
        self.stored_file_ids: set[str] = set()  # the news files' items already on the stream (see recall)

    def active(self) -> bool:
        return bool(self.cfg.selected)

    def remember(self, stored: Sequence[NewsItem]) -> None:
        """Prime the de-duplication and each provider's cursor with news already on the stream."""
        for it in stored:
            self.dedup.admit(it)
            self.resume_ns[it.provider] = max(self.resume_ns.get(it.provider, 0), it.published_ns)

    async def recall(self, nc: NatsClient, prefix: str) -> int:
        """Before a restarted feed imports or polls, read back what the news stream already holds, so nothing
        is published twice even after JetStream's duplicate window (an hour on record streams): every item
        the news files gave before (their ids are deterministic, so an id says it is stored), and for the
        live providers what was stored within their look-back and the dedup window (each provider's cursor
        resumes at its newest stored article). Returns how many items it read."""
        count = 0
        if "files" in self.cfg.selected:
            filter_ = [NewsItem.subject_pattern(prefix, provider=p) for p in FILE_PROVIDERS]
            async for batch in read(nc, NEWS.stream(prefix), filter_):
                self.stored_file_ids.update(e.event_id for r in batch for e in r.events if isinstance(e, NewsItem))
            count += len(self.stored_file_ids)
        live = [p for p in self.cfg.selected if p != "files"]
        if not live:
            return count
        horizon_s = max(self.cfg.dedup_window_s, *(getattr(self.cfg, p).lookback_s for p in live))
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - horizon_s))
        items: list[NewsItem] = []
        async for batch in read(nc, NEWS.stream(prefix), start_time=since):
            items += (e for r in batch for e in r.events if isinstance(e, NewsItem))
        self.remember(items)
        log.info("news feed resumed", feed=self.name, stored=len(items), cursors=self.resume_ns)
        return count + len(items)

    def _admit(self, items: list[NewsItem]) -> list[Event]:
        out: list[Event] = [it for it in items if self.dedup.admit(it)]
        self.counters["published"] = self.counters.get("published", 0) + len(out)
        self.counters["duplicate"] = self.counters.get("duplicate", 0) + len(items) - len(out)
        return out

    async def stream(self) -> AsyncIterator[list[Event]]:
        if "files" in self.cfg.selected:
            async for batch in self._files():
                yield batch
        live: list[Literal["marketaux", "tiingo"]] = [p for p in self.cfg.selected if p != "files"]
        if live:
            async for batch in self._poll(live):
                yield batch

    # ---------------------------------------------------------------- files

    def _imports(self) -> list[NewsImport | str]:
        """Every configured news file's import, or the one line why it could not be read."""
        fc = self.cfg.files
        out: list[NewsImport | str] = []
        for p in fc.fnspid:
            try:
                out.append(read_fnspid(Path(p)))
            except FileImportError as e:
                out.append(str(e))
        if fc.semeval.path:
            try:
                symbols, spans = semeval_spans(fc.semeval)
                out.append(read_semeval(Path(fc.semeval.path), symbols, spans))
            except (FileImportError, ValueError) as e:
                out.append(str(e))
        return out

    async def _files(self) -> AsyncIterator[list[Event]]:
        imports = await asyncio.to_thread(self._imports)
        items: list[NewsItem] = []
        alerts: list[Event] = []
        for imp in imports:
            if isinstance(imp, str):
                log.error("news file not imported", feed=self.name, reason=imp)
                path = imp.split(":", 1)[0]
                alerts.append(file_alert(self.name, path, "file_unreadable", imp, severity="critical"))
                continue
            self.imports.append(imp)
            items += imp.items
            log.info("news file imported", feed=self.name, path=imp.path, items=len(imp.items),
                     rejected=len(imp.rejected))  # fmt: skip
            if imp.rejected:
                self.counters["rejected"] = self.counters.get("rejected", 0) + len(imp.rejected)
                for r in imp.rejected[:50]:
                    log.warning("news row rejected", feed=self.name, path=imp.path, line=r.line, reason=r.reason)
                alerts.append(file_alert(self.name, imp.path, "rows_rejected", imp.report(),
                                         rejected=len(imp.rejected), rows=imp.rows))  # fmt: skip
        if self.stored_file_ids:
            fresh = [it for it in items if it.event_id not in self.stored_file_ids]
            self.counters["stored_before"] = len(items) - len(fresh)
            log.info("news files already imported", feed=self.name, stored_before=len(items) - len(fresh),
                     new=len(fresh))  # fmt: skip
            items = fresh
        items.sort(key=lambda it: (it.published_ns, it.provider, it.event_id))
        admitted = self._admit(items)
        chunk = self.cfg.files.chunk
        for i in range(0, len(admitted), chunk):
            yield admitted[i : i + chunk]
        if alerts:
            yield alerts

    # ---------------------------------------------------------------- live providers

    def _make_clients(self, names: Sequence[Provider]) -> dict[str, Client]:
        from tapeline.adapters.news.marketaux import MarketauxClient
        from tapeline.adapters.news.tiingo import TiingoClient

        made: dict[str, Client] = {}
        for n in names:
            if n == "marketaux":
                made[n] = MarketauxClient(self.cfg.marketaux, os.environ.get(self.cfg.marketaux.key_env, ""))
            elif n == "tiingo":
                made[n] = TiingoClient(self.cfg.tiingo, os.environ.get(self.cfg.tiingo.key_env, ""))
        return made

    async def _poll(self, names: list[Literal["marketaux", "tiingo"]]) -> AsyncIterator[list[Event]]:
        clients = self._make_clients(names)
        settings: dict[str, Any] = {"marketaux": self.cfg.marketaux, "tiingo": self.cfg.tiingo}
        now = time.time_ns()
        cursor = {n: max(now - int(settings[n].lookback_s * 1e9), self.resume_ns.get(n, 0)) for n in names}
        due = dict.fromkeys(names, time.monotonic())
        done = dict.fromkeys(names, 0)
        try:
            while names:
                name = min(names, key=lambda n: due[n])
                await asyncio.sleep(max(0.0, due[name] - time.monotonic()))
                try:
                    got = await clients[name].fetch(cursor[name])
                except NewsUnavailable as e:
                    log.warning("news provider unavailable", provider=name, reason=str(e))
                    got = []
                if got:
                    cursor[name] = max(cursor[name], max(it.published_ns for it in got))
                    got.sort(key=lambda it: it.published_ns)
                    admitted = self._admit(got)
                    if admitted:
                        yield admitted
                done[name] += 1
                due[name] = time.monotonic() + settings[name].poll_interval_s
                if self.polls is not None and done[name] >= self.polls:
                    names = [n for n in names if n != name]
        finally:
            for c in clients.values():
                await c.aclose()
