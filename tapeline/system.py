"""The system: every component, declared once.

Each entry is a component class (``schemas.components``) that declares its kind, the event types
it consumes and emits, its configuration (the ``tapeline.toml`` section of its name), its role
(the process group that runs it: ``tapeline up --only <role>``) and its state policy. Both
runners, the CLI, status, the demo, benchmarks and tests read the system from here; consumer
names come from :func:`schemas.components.durable_name`. Adding a handler is one new file and
one line below.

Read models are declared in ``projections`` (one declaration per table) and run by the
``projector`` (DuckDB) and ``vectors`` (LanceDB) roles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tapeline.adapters.alerts import ClockFeed, NotifierGateway
from tapeline.adapters.brokers.gateway import ExecutionGateway
from tapeline.adapters.llm.gateway import NewsLlmGateway
from tapeline.adapters.news.feed import NewsFeed
from tapeline.handlers.alerting import OpsAlerts
from tapeline.handlers.bars import BarAggregator
from tapeline.handlers.breakers import Breakers
from tapeline.handlers.decision import DecisionSynthesis
from tapeline.handlers.enrichment import MarketFeatures
from tapeline.handlers.model_agent import ModelAgent
from tapeline.handlers.momentum import MomentumSignal
from tapeline.handlers.monitor import PriceMoveMonitor
from tapeline.handlers.portfolio import Portfolio
from tapeline.handlers.rebalance import Rebalancer
from tapeline.handlers.risk import RiskGate
from tapeline.handlers.scanner import Scanner
from tapeline.handlers.sentiment import SentimentAgent
from tapeline.handlers.sentiment_parser import SentimentParser
from tapeline.handlers.similarity import SimilarityAgent
from tapeline.handlers.sizing import Sizer
from tapeline.handlers.watchdog import HeartbeatWatchdog
from tapeline.schemas.components import Component, check_declaration, durable_name, filters_by_family

COMPONENTS: tuple[type[Component], ...] = (
    # inputs
    ClockFeed,
    NewsFeed,
    # market data -> signals
    BarAggregator,
    MarketFeatures,
    ModelAgent,
    MomentumSignal,
    SimilarityAgent,
    # news -> sentiment
    NewsLlmGateway,
    SentimentParser,
    SentimentAgent,
    # signals -> decisions -> orders
    DecisionSynthesis,
    Scanner,
    Sizer,
    RiskGate,
    Breakers,
    ExecutionGateway,
    # portfolio, rebalance, monitor
    Portfolio,
    Rebalancer,
    PriceMoveMonitor,
    # operations
    HeartbeatWatchdog,
    NotifierGateway,
    OpsAlerts,
)

READ_MODEL_ROLES = ("projector", "vectors")

for _c in COMPONENTS:
    check_declaration(_c)
if len({c.name for c in COMPONENTS}) != len(COMPONENTS):
    raise TypeError("two components share a name")

ROLES: tuple[str, ...] = tuple(dict.fromkeys([*(c.role for c in COMPONENTS), *READ_MODEL_ROLES]))


def by_name(name: str) -> type[Component]:
    for c in COMPONENTS:
        if c.name == name:
            return c
    raise KeyError(name)


def build(configs: Mapping[str, Any], selected: Sequence[str] = ROLES) -> list[Component]:
    """Instances of the components whose role or name is selected, with their configuration."""
    return [c(configs.get(c.name)) for c in COMPONENTS if c.role in selected or c.name in selected]


def durables(component: Component, prefix: str) -> list[tuple[str, str]]:
    """(stream, durable) of each consumer a component runs."""
    return [
        (fam.stream(prefix), durable_name(component.name, fam)) for fam in filters_by_family(component.consumes, prefix)
    ]


def check_selection(selected: Sequence[str]) -> None:
    names = {c.name for c in COMPONENTS}
    bad = [s for s in selected if s not in ROLES and s not in names]
    if bad:
        raise ValueError(f"unknown role or component {bad}: choose roles {list(ROLES)} or components {sorted(names)}")
