"""The event catalogue: one frozen, keyword-only msgspec Struct per event, one tagged union.

Every event carries the common fields of DESIGN §2 and knows its subject. Evolution follows
msgspec's rules (new fields get defaults, no field changes type); a breaking change bumps the
class's ``version`` default and registers an upcaster in :mod:`schemas.codec`.
Prices are floats in the instrument's quote currency; times are UNIX nanoseconds (UTC).

Every struct here is ``gc=False``: frozen, built from JSON or by a handler, an event can never be part
of a reference cycle, so the garbage collector need not track it (a decoded envelope with nested
structs was tracked, a tick already was not). Measured: decoding derived events in a process holding
many objects, 2-4x less CPU; the whole batched pipeline, no change beyond its run-to-run noise
(docs/performance.md, session 9).
"""

from __future__ import annotations

import typing
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from tapeline.schemas.subjects import SubjectTemplate

Direction = Literal["BULLISH", "BEARISH", "NEUTRAL"]
Verdict = Literal["BUY", "HOLD", "SELL"]
Side = Literal["BUY", "SELL"]
Severity = Literal["info", "warning", "critical"]


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type"):
    """Fields every event has. ``event_id`` doubles as the JetStream ``Nats-Msg-Id``."""

    event_id: str
    ts_event: int
    ts_init: int
    source: str
    correlation_id: str = ""
    causation_id: str = ""
    version: int = 1

    subject_template: ClassVar[str]  # relative to the prefix, e.g. "md.bar.{interval}.{symbol}"
    family: ClassVar[str]  # the stream family: the template's first token
    _subject: ClassVar[SubjectTemplate]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "subject_template" in cls.__dict__:
            cls._subject = SubjectTemplate(cls.subject_template)
            cls.family = cls._subject.family

    def subject(self, prefix: str) -> str:
        """The subject this event is published on under ``prefix``."""
        return self._subject.render(self, prefix)

    @classmethod
    def subject_pattern(cls, prefix: str, **fixed: str) -> str:
        """The filter subject that consumes this type (``fixed`` narrows named tokens)."""
        return cls._subject.pattern(prefix, **fixed)

    @property
    def tag(self) -> str:
        return type(self).__struct_config__.tag  # type: ignore[return-value]


# ---------------------------------------------------------------- market data


class Tick(Event, frozen=True, kw_only=True, tag="tick"):
    """One quote or trade update, with every field MT5 and IBKR deliver.

    ``seq`` orders ticks that share a millisecond; with venue, account, symbol and time it makes
    the tick's deterministic id, so a restarted feed republishes the same ids.
    """

    subject_template: ClassVar[str] = "md.tick.{venue}.{symbol}"
    venue: str
    symbol: str
    account: str = ""
    bid: float = 0.0
    ask: float = 0.0
    last: float = 0.0
    volume: float = 0.0
    volume_real: float = 0.0
    flags: int = 0
    seq: int = 0

    @property
    def price(self) -> float:
        """Trade price if there is one, else the mid quote."""
        if self.last > 0:
            return self.last
        if self.bid > 0 and self.ask > 0:
            return (self.bid + self.ask) / 2
        return self.bid or self.ask


class Bar(Event, frozen=True, kw_only=True, tag="bar"):
    """An OHLCV bar; ``ts_event`` is the bar's close time (``start_ns + interval``)."""

    subject_template: ClassVar[str] = "md.bar.{interval}.{symbol}"
    symbol: str
    interval: str
    start_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    ticks: int = 0
    venue: str = ""


# ---------------------------------------------------------------- ops


class Heartbeat(Event, frozen=True, kw_only=True, tag="heartbeat"):
    """A feed is alive; ``lag_ns`` is now minus the newest tick time, ``stale`` while disconnected."""

    subject_template: ClassVar[str] = "ops.heartbeat.{feed}"
    feed: str
    interval_s: float
    lag_ns: int = 0
    stale: bool = False
    connected: bool = True
    symbols: int = 0
    events_since_last: int = 0


class Alert(Event, frozen=True, kw_only=True, tag="alert"):
    """Something a human should know. ``key`` groups an alert with its later ``resolved`` one."""

    subject_template: ClassVar[str] = "ops.alert.{severity}"
    severity: Severity
    kind: str
    key: str
    message: str
    resolved: bool = False
    feed: str = ""
    symbol: str = ""


class DeadLetter(Event, frozen=True, kw_only=True, tag="dead_letter"):
    """A message a consumer could not process: where it is in its stream, and why."""

    subject_template: ClassVar[str] = "ops.deadletter.{stream:lower}"
    stream: str
    stream_seq: int
    subject_of_message: str
    consumer: str
    reason: str
    deliveries: int = 1
    payload: str = ""  # the message body, truncated to 4 KiB, decoded with replacement


class ModelDeployed(Event, frozen=True, kw_only=True, tag="model_deployed"):
    """A model version became the live one (atomic swap); replay uses the version recorded here.

    On the INTEL stream, with the enrichments the model scores: one ordered consumer reads both, so
    the version live for an enrichment is exactly the last deployment before it in the stream.
    """

    subject_template: ClassVar[str] = "intel.model.{model}"
    model: str
    model_version: str
    sha256: str
    path: str = ""
    previous_version: str = ""
    rollback: bool = False  # back to this version: the deployments after it are no longer in force


class ClockTick(Event, frozen=True, kw_only=True, tag="clock_tick"):
    """A schedule fired (e.g. the weekly rebalance); time enters the system only as an event."""

    subject_template: ClassVar[str] = "ops.clock.{schedule}"
    schedule: str
    scheduled_ns: int


class Notification(Event, frozen=True, kw_only=True, tag="notification"):
    """The record of an alert sent to a channel (a webhook): what the notifier gateway did, once."""

    subject_template: ClassVar[str] = "ops.notify.{channel}"
    channel: str
    alert_id: str
    alert_key: str
    delivered: bool
    detail: str = ""  # why it was not delivered (filtered by severity, refused by the endpoint)
    attempts: int = 0


# ---------------------------------------------------------------- news and intelligence


class NewsItem(Event, frozen=True, kw_only=True, tag="news_item"):
    """An article or headline. Version 2 replaced v1's single ``ticker`` with ``tickers``."""

    subject_template: ClassVar[str] = "news.{provider}"
    version: int = 2
    provider: str
    article_id: str
    title: str
    tickers: list[str] = []
    summary: str = ""
    url: str = ""
    published_ns: int = 0


class LlmCall(Event, frozen=True, kw_only=True, tag="llm_call"):
    """One LLM request and its raw reply, recorded so replay never calls a provider again."""

    subject_template: ClassVar[str] = "intel.llm.{provider}"
    provider: str
    model: str
    prompt_version: str
    variant: str = "A"
    request_hash: str
    news_id: str = ""
    response_text: str = ""
    error: str = ""
    latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    request: str = ""  # the request sent, as JSON {system, user, schema} (no key, no headers)
    tickers: list[str] = []  # the tickers asked about: the only ones a reply may score
    attempts: int = 0


class SentimentScore(Event, frozen=True, kw_only=True, tag="sentiment_score"):
    """A validated ``{ticker, score, relevance, impact}``: score in [-1, 1] (negative .. positive for
    the stock), relevance and impact in [0, 1] (how much the article is about the ticker; how large
    a price effect it could have). ``neutral_fallback``: the reply was unusable, all three are 0."""

    subject_template: ClassVar[str] = "intel.sentiment.{ticker}"
    ticker: str
    score: float
    relevance: float
    impact: float
    news_id: str
    llm_call_id: str = ""
    prompt_version: str = ""
    variant: str = "A"
    model: str = ""
    neutral_fallback: bool = False
    clamped: bool = False  # a value was outside its range and was clamped
    detail: str = ""  # why it fell back or what was clamped
    provider: str = ""  # the LLM provider of the call (gemini, openai, offline): the envelope's source_metrics
    reply_bytes: int = 0  # size of the raw reply it was parsed from: the envelope's source_metrics.total_bytes


class Enrichment(Event, frozen=True, kw_only=True, tag="enrichment"):
    """Features of a symbol at a bar: numeric features, market phase, confidence, nudges."""

    subject_template: ClassVar[str] = "intel.enrichment.{symbol}"
    symbol: str
    interval: str
    features: dict[str, float] = {}
    phase: str = ""
    confidence: float = 0.0
    nudges: list[str] = []
    warmup: bool = False  # too little history: no features, no phase (not guessed)
    manifest_version: str = ""  # the nudge manifest the nudges came from


class Signal(Event, frozen=True, kw_only=True, tag="signal"):
    """One agent's view of a symbol; ``strength`` in [-1, 1], ``confidence`` in [0, 1]."""

    subject_template: ClassVar[str] = "intel.signal.{symbol}"
    symbol: str
    agent: str
    domain: str
    direction: Direction
    strength: float
    confidence: float
    summary: str = ""
    key_factors: list[str] = []
    metrics: dict[str, float] = {}


# ---------------------------------------------------------------- decisions


class Target(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    ticker: str
    trade_date: str  # ISO date (UTC) of the decision
    exchange: str = ""
    asset_class: str = "equity"


class Synthesis(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    verdict: Verdict
    confidence: float  # 0..1
    ensemble_score: float  # -1..1
    reasoning: str = ""


class AgentSignal(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    agent: str
    domain: str
    signal: Direction
    confidence: float
    summary: str = ""
    key_factors: list[str] = []


# The decision body of the envelope contract (seed S4, ``schema_version`` "1"): what a consumer written
# to that contract reads under ``decision``. Ranges are checked at decode.
UnitFloat = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
SignedUnitFloat = Annotated[float, msgspec.Meta(ge=-1.0, le=1.0)]
Count = Annotated[int, msgspec.Meta(ge=0)]
ENVELOPE_SCHEMA_VERSION = "1"
SUMMARY_MAX_CHARS = 300
KEY_FACTORS_MAX = 10


class SynthesisBody(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    verdict: Verdict
    confidence: UnitFloat
    ensemble_score: SignedUnitFloat
    reasoning: str = ""


class AgentSignalBody(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    agent: str
    domain: str
    signal: Direction
    confidence: UnitFloat
    summary: Annotated[str, msgspec.Meta(max_length=SUMMARY_MAX_CHARS)] = ""
    key_factors: Annotated[list[str], msgspec.Meta(max_length=KEY_FACTORS_MAX)] = []


class SourceMetrics(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The news/LLM calls behind the decision's signals; ``by_source`` is calls per provider."""

    total_calls: Count = 0
    successful: Count = 0
    failed: Count = 0
    total_bytes: Count = 0
    by_source: dict[str, Count] = {}


class PhaseTiming(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    phase: str
    ms: float


class DecisionBody(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    target: Target
    synthesis: SynthesisBody
    agent_signals: list[AgentSignalBody] = []
    source_metrics: SourceMetrics = msgspec.field(default_factory=SourceMetrics)
    phase_timings: list[PhaseTiming] = []
    arena_total_seconds: float | None = None


class DecisionEnvelope(Event, frozen=True, kw_only=True, tag="decision"):
    """The versioned verdict on a symbol; the latest per symbol is also in the decisions KV bucket.

    ``schema_version``, ``decision`` and ``published_at`` (with the common ``correlation_id``) are the
    S4 envelope contract; they are additive, so envelopes written before them still decode (with
    ``schema_version`` "", which a contract consumer skips). ``target``, ``synthesis`` and the flat
    ``source_metrics``/``phase_timings`` dicts are the original fields, kept for existing readers.
    """

    subject_template: ClassVar[str] = "decision.{target.ticker}"
    target: Target
    synthesis: Synthesis
    agent_signals: list[AgentSignal] = []
    source_metrics: dict[str, float] = {}
    phase_timings: dict[str, float] = {}  # milliseconds per phase
    schema_version: str = ""
    decision: DecisionBody | None = None
    published_at: datetime | None = None  # the decision's event time (UTC), so a replay republishes it unchanged


# ---------------------------------------------------------------- orders


class _OrderEvent(Event, frozen=True, kw_only=True):
    account: str
    symbol: str
    client_order_id: str


class OrderIntent(_OrderEvent, frozen=True, kw_only=True, tag="order_intent"):
    """What we want to trade; ``client_order_id`` derives from the decision, one broker order per intent."""

    subject_template: ClassVar[str] = "order.intent.{account}.{symbol}"
    side: Side
    quantity: float
    order_type: Literal["MARKET", "LIMIT"] = "MARKET"
    limit_price: float = 0.0
    decision_id: str = ""
    reason: str = ""
    stop_loss: float = 0.0  # price levels; 0 = none
    take_profit: float = 0.0


class OrderApproved(_OrderEvent, frozen=True, kw_only=True, tag="order_approved"):
    """Every pre-trade risk check passed: the only event the execution gateway turns into a broker order."""

    subject_template: ClassVar[str] = "order.approved.{account}.{symbol}"
    side: Side
    quantity: float
    order_type: Literal["MARKET", "LIMIT"] = "MARKET"
    limit_price: float = 0.0
    stop_loss: float = 0.0
    take_profit: float = 0.0
    intent_id: str = ""


class OrderReserved(_OrderEvent, frozen=True, kw_only=True, tag="order_reserved"):
    """The one claim on a client order id, on its own subject: published with
    ``Nats-Expected-Last-Subject-Sequence: 0`` before the broker is called, so only the first
    attempt ever wins (the ORDER stream never expires it). Later attempts check the broker instead."""

    subject_template: ClassVar[str] = "order.reserve.{client_order_id}"
    broker: str
    approval_id: str = ""


class OrderSubmitted(_OrderEvent, frozen=True, kw_only=True, tag="order_submitted"):
    subject_template: ClassVar[str] = "order.submitted.{account}.{symbol}"
    broker: str


class OrderAccepted(_OrderEvent, frozen=True, kw_only=True, tag="order_accepted"):
    subject_template: ClassVar[str] = "order.accepted.{account}.{symbol}"
    broker: str
    broker_order_id: str


class OrderRejected(_OrderEvent, frozen=True, kw_only=True, tag="order_rejected"):
    subject_template: ClassVar[str] = "order.rejected.{account}.{symbol}"
    broker: str
    reason: str


class OrderFilled(_OrderEvent, frozen=True, kw_only=True, tag="order_filled"):
    subject_template: ClassVar[str] = "order.filled.{account}.{symbol}"
    broker: str
    fill_id: str
    side: Side
    quantity: float
    price: float
    commission: float = 0.0


class OrderCancelled(_OrderEvent, frozen=True, kw_only=True, tag="order_cancelled"):
    subject_template: ClassVar[str] = "order.cancelled.{account}.{symbol}"
    broker: str
    reason: str = ""


# ---------------------------------------------------------------- risk and portfolio


class RiskCheck(Event, frozen=True, kw_only=True, tag="risk_check"):
    """A pre-trade or portfolio check (Expected Shortfall, correlation, exposure...)."""

    subject_template: ClassVar[str] = "risk.check.{check}"
    check: str
    symbol: str = ""
    account: str = ""
    passed: bool
    value: float = 0.0
    limit: float = 0.0
    detail: str = ""


class CircuitBreakerTripped(Event, frozen=True, kw_only=True, tag="breaker_tripped"):
    """Trading halted for ``scope`` until a human resumes it."""

    subject_template: ClassVar[str] = "risk.breaker.{breaker}"
    breaker: str
    scope: str = "all"
    reason: str
    hard: bool = True  # False: a soft breaker, resumed automatically when its condition clears
    value: float = 0.0  # what tripped it (loss in $, drawdown fraction, losses in a row, seconds silent)
    limit: float = 0.0


class CircuitBreakerResumed(Event, frozen=True, kw_only=True, tag="breaker_resumed"):
    """Manual resume; ``operator`` is who did it."""

    subject_template: ClassVar[str] = "risk.breaker.{breaker}"
    breaker: str
    scope: str = "all"
    operator: str
    note: str = ""


class Scan(Event, frozen=True, kw_only=True, tag="scan"):
    """The scanner's Q* score (0-10) of a decision as a trade candidate; only ``passed`` ones are sized."""

    subject_template: ClassVar[str] = "risk.scan.{symbol}"
    symbol: str
    decision_id: str
    verdict: Verdict
    confidence: float
    score: float
    grade: str  # "A+", "A", "B", "C"
    passed: bool
    parts: dict[str, float] = {}  # the score's components, each 0..1
    skip_rate: float = 0.0  # skipped / scanned so far
    reasoning: str = ""


class PlanItem(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    symbol: str
    action: Verdict
    target_weight: float
    current_weight: float
    delta_quantity: float
    momentum: float = 0.0
    sentiment: float = 0.0


class RebalancePlan(Event, frozen=True, kw_only=True, tag="rebalance_plan"):
    """The weekly rebalance: momentum + weighted sentiment -> actions -> delta quantities."""

    subject_template: ClassVar[str] = "risk.rebalance.{account}"
    account: str
    items: list[PlanItem] = []


# ---------------------------------------------------------------- the web page and `tapeline ask`


class OperatorAction(Event, frozen=True, kw_only=True, tag="operator_action"):
    """A control action a person confirmed (halt, resume, rebalance), with who and from where."""

    subject_template: ClassVar[str] = "ops.control.{action}"
    action: str
    operator: str
    origin: str = "web"  # web | ask | cli
    note: str = ""
    detail: str = ""  # what it did: the events it published, or why it was refused


class AskExchange(Event, frozen=True, kw_only=True, tag="ask_exchange"):
    """One question to the system and its answer, with every tool call: what replay shows of a chat."""

    subject_template: ClassVar[str] = "ops.ask.{mode}"
    mode: str  # offline | openai | gemini
    question: str
    answer: str
    model: str = ""
    intent: str = ""  # offline mode: the matched intent
    tool_calls: list[dict[str, Any]] = []  # {"name", "arguments", "result"} per call, in order
    error: str = ""
    latency_ms: float = 0.0


AnyEvent = (
    Tick
    | Bar
    | Heartbeat
    | Alert
    | DeadLetter
    | ModelDeployed
    | ClockTick
    | Notification
    | NewsItem
    | LlmCall
    | SentimentScore
    | Enrichment
    | Signal
    | DecisionEnvelope
    | OrderIntent
    | OrderApproved
    | OrderReserved
    | OrderSubmitted
    | OrderAccepted
    | OrderRejected
    | OrderFilled
    | OrderCancelled
    | RiskCheck
    | CircuitBreakerTripped
    | CircuitBreakerResumed
    | RebalancePlan
    | Scan
    | OperatorAction
    | AskExchange
)

EVENT_TYPES: tuple[type[Event], ...] = typing.get_args(AnyEvent)  # the union is the one list of event types

BY_TAG: dict[str, type[Event]] = {t.__struct_config__.tag: t for t in EVENT_TYPES}  # type: ignore[misc]


def _default_version(cls: type[Event]) -> int:
    for f in msgspec.structs.fields(cls):
        if f.name == "version":
            return int(f.default)
    raise TypeError(f"{cls.__name__} has no version field")


CURRENT_VERSION: dict[str, int] = {tag: _default_version(t) for tag, t in BY_TAG.items()}
