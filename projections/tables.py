"""The DuckDB read models: every event family of the catalogue.

Timestamps are TIMESTAMP_NS (UTC, naive). Dicts are JSON text (query with ``->>``),
lists are VARCHAR[]. Positions and equity are views over fills and bars, so they can never
disagree with the events they come from.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
import pyarrow as pa

from tapeline.projections import portfolio
from tapeline.projections.table import Row, Table, View
from tapeline.schemas import events as ev
from tapeline.schemas.subjects import DECISION, INTEL, MD, NEWS, OPS, ORDER, RISK

S, I64, F64, B, TS = pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.timestamp("ns")
LS = pa.list_(pa.string())
_json = msgspec.json.Encoder()


def _j(v: object) -> str:
    return _json.encode(v).decode()


def _common(e: ev.Event, seq: int) -> Row:
    return (seq, e.event_id, e.ts_event, e.ts_init, e.source)


COMMON = (("seq", I64), ("event_id", S), ("ts_event", TS), ("ts_init", TS), ("source", S))


TICKS = Table(
    "ticks",
    MD,
    (ev.Tick,),
    (
        *COMMON,
        ("venue", S),
        ("account", S),
        ("symbol", S),
        ("bid", F64),
        ("ask", F64),
        ("last", F64),
        ("volume", F64),
        ("volume_real", F64),
        ("flags", I64),
        ("tick_seq", I64),
    ),
    lambda e, s: [
        (*_common(e, s), e.venue, e.account, e.symbol, e.bid, e.ask, e.last, e.volume, e.volume_real, e.flags, e.seq)
    ],
    "Every tick as delivered (bid/ask/last/volume/flags).",
)
BARS = Table(
    "bars",
    MD,
    (ev.Bar,),
    (
        *COMMON,
        ("symbol", S),
        ("interval", S),
        ("start", TS),
        ("open", F64),
        ("high", F64),
        ("low", F64),
        ("close", F64),
        ("volume", F64),
        ("ticks", I64),
        ("venue", S),
    ),
    lambda e, s: [
        (*_common(e, s), e.symbol, e.interval, e.start_ns, e.open, e.high, e.low, e.close, e.volume, e.ticks, e.venue)
    ],
    "OHLCV bars; ts_event is the bar close.",
)
NEWS_T = Table(
    "news",
    NEWS,
    (ev.NewsItem,),
    (
        *COMMON,
        ("provider", S),
        ("article_id", S),
        ("title", S),
        ("tickers", LS),
        ("summary", S),
        ("url", S),
        ("published", TS),
    ),
    lambda e, s: [(*_common(e, s), e.provider, e.article_id, e.title, e.tickers, e.summary, e.url, e.published_ns)],
    "News items from every provider.",
)
LLM_CALLS = Table(
    "llm_calls",
    INTEL,
    (ev.LlmCall,),
    (
        *COMMON,
        ("provider", S),
        ("model", S),
        ("prompt_version", S),
        ("variant", S),
        ("request_hash", S),
        ("news_id", S),
        ("response_text", S),
        ("error", S),
        ("latency_ms", F64),
        ("input_tokens", I64),
        ("output_tokens", I64),
    ),
    lambda e, s: [
        (
            *_common(e, s),
            e.provider,
            e.model,
            e.prompt_version,
            e.variant,
            e.request_hash,
            e.news_id,
            e.response_text,
            e.error,
            e.latency_ms,
            e.input_tokens,
            e.output_tokens,
        )
    ],
    "Every LLM request and raw reply (what replay reuses).",
)
SENTIMENT = Table(
    "sentiment",
    INTEL,
    (ev.SentimentScore,),
    (
        *COMMON,
        ("ticker", S),
        ("score", F64),
        ("relevance", F64),
        ("impact", F64),
        ("news_id", S),
        ("llm_call_id", S),
        ("prompt_version", S),
        ("variant", S),
        ("model", S),
        ("neutral_fallback", B),
    ),
    lambda e, s: [
        (
            *_common(e, s),
            e.ticker,
            e.score,
            e.relevance,
            e.impact,
            e.news_id,
            e.llm_call_id,
            e.prompt_version,
            e.variant,
            e.model,
            e.neutral_fallback,
        )
    ],
    "Validated sentiment scores per ticker and article.",
)
ENRICHMENTS = Table(
    "enrichments",
    INTEL,
    (ev.Enrichment,),
    (
        *COMMON,
        ("symbol", S),
        ("interval", S),
        ("features_json", S),
        ("phase", S),
        ("confidence", F64),
        ("nudges", LS),
        ("warmup", B),
        ("manifest_version", S),
    ),
    lambda e, s: [
        (
            *_common(e, s),
            e.symbol,
            e.interval,
            _j(e.features),
            e.phase,
            e.confidence,
            e.nudges,
            e.warmup,
            e.manifest_version,
        )
    ],
    "Features, market phase, confidence and nudges per symbol and bar.",
)
SIGNALS = Table(
    "signals",
    INTEL,
    (ev.Signal,),
    (
        *COMMON,
        ("causation_id", S),
        ("symbol", S),
        ("agent", S),
        ("domain", S),
        ("direction", S),
        ("strength", F64),
        ("confidence", F64),
        ("summary", S),
        ("key_factors", LS),
        ("metrics_json", S),
    ),
    lambda e, s: [
        (
            *_common(e, s),
            e.causation_id,
            e.symbol,
            e.agent,
            e.domain,
            e.direction,
            e.strength,
            e.confidence,
            e.summary,
            e.key_factors,
            _j(e.metrics),
        )
    ],
    "Agent signals (momentum, sentiment, ...).",
)


def _decision_rows(e: ev.DecisionEnvelope, s: int) -> Iterable[Row]:
    t, y = e.target, e.synthesis
    return [
        (
            *_common(e, s),
            e.causation_id,
            e.version,
            t.ticker,
            t.trade_date,
            t.exchange,
            t.asset_class,
            y.verdict,
            y.confidence,
            y.ensemble_score,
            y.reasoning,
            _j(e.source_metrics),
            _j(e.phase_timings),
        )
    ]


DECISIONS = Table(
    "decisions",
    DECISION,
    (ev.DecisionEnvelope,),
    (
        *COMMON,
        ("causation_id", S),
        ("envelope_version", I64),
        ("ticker", S),
        ("trade_date", S),
        ("exchange", S),
        ("asset_class", S),
        ("verdict", S),
        ("confidence", F64),
        ("ensemble_score", F64),
        ("reasoning", S),
        ("source_metrics_json", S),
        ("phase_timings_json", S),
    ),
    _decision_rows,
    "One row per decision envelope.",
)
DECISION_SIGNALS = Table(
    "decision_signals",
    DECISION,
    (ev.DecisionEnvelope,),
    (
        ("seq", I64),
        ("decision_id", S),
        ("ticker", S),
        ("ts_event", TS),
        ("agent", S),
        ("domain", S),
        ("signal", S),
        ("confidence", F64),
        ("summary", S),
        ("key_factors", LS),
    ),
    lambda e, s: [
        (
            s,
            e.event_id,
            e.target.ticker,
            e.ts_event,
            a.agent,
            a.domain,
            a.signal,
            a.confidence,
            a.summary,
            a.key_factors,
        )
        for a in e.agent_signals
    ],
    "The agent signals inside each decision, one row each.",
)

_ORDER_COLS = (
    *COMMON,
    ("stage", S),
    ("account", S),
    ("symbol", S),
    ("client_order_id", S),
    ("broker", S),
    ("broker_order_id", S),
    ("side", S),
    ("quantity", F64),
    ("order_type", S),
    ("limit_price", F64),
    ("decision_id", S),
    ("reason", S),
)


def _order_rows(e: ev.Event, s: int) -> Iterable[Row]:
    g = getattr
    return [
        (
            *_common(e, s),
            e.tag.removeprefix("order_"),
            g(e, "account"),
            g(e, "symbol"),
            g(e, "client_order_id"),
            g(e, "broker", ""),
            g(e, "broker_order_id", ""),
            g(e, "side", ""),
            g(e, "quantity", 0.0),
            g(e, "order_type", ""),
            g(e, "limit_price", 0.0),
            g(e, "decision_id", ""),
            g(e, "reason", ""),
        )
    ]


ORDERS = Table(
    "orders",
    ORDER,
    (ev.OrderIntent, ev.OrderApproved, ev.OrderSubmitted, ev.OrderAccepted, ev.OrderRejected, ev.OrderCancelled),
    _ORDER_COLS,
    _order_rows,
    "Order lifecycle: intent, approved, submitted, accepted, rejected, cancelled (one row per event).",
)
FILLS = Table(
    "fills",
    ORDER,
    (ev.OrderFilled,),
    (
        *COMMON,
        ("account", S),
        ("symbol", S),
        ("client_order_id", S),
        ("broker", S),
        ("fill_id", S),
        ("side", S),
        ("quantity", F64),
        ("price", F64),
        ("commission", F64),
    ),
    lambda e, s: [
        (
            *_common(e, s),
            e.account,
            e.symbol,
            e.client_order_id,
            e.broker,
            e.fill_id,
            e.side,
            e.quantity,
            e.price,
            e.commission,
        )
    ],
    "Executions.",
)
RISK_CHECKS = Table(
    "risk_checks",
    RISK,
    (ev.RiskCheck,),
    (
        *COMMON,
        ("check_name", S),
        ("symbol", S),
        ("account", S),
        ("passed", B),
        ("value", F64),
        ("limit_value", F64),
        ("detail", S),
    ),
    lambda e, s: [(*_common(e, s), e.check, e.symbol, e.account, e.passed, e.value, e.limit, e.detail)],
    "Risk checks (Expected Shortfall, correlation, exposure).",
)
BREAKERS = Table(
    "circuit_breakers",
    RISK,
    (ev.CircuitBreakerTripped, ev.CircuitBreakerResumed),
    (*COMMON, ("breaker", S), ("scope", S), ("state", S), ("reason", S), ("operator", S)),
    lambda e, s: [
        (
            *_common(e, s),
            e.breaker,
            e.scope,
            "tripped" if isinstance(e, ev.CircuitBreakerTripped) else "resumed",
            getattr(e, "reason", getattr(e, "note", "")),
            getattr(e, "operator", ""),
        )
    ],
    "Circuit breaker trips and manual resumes.",
)
REBALANCE = Table(
    "rebalance_items",
    RISK,
    (ev.RebalancePlan,),
    (
        ("seq", I64),
        ("plan_id", S),
        ("ts_event", TS),
        ("account", S),
        ("symbol", S),
        ("action", S),
        ("target_weight", F64),
        ("current_weight", F64),
        ("delta_quantity", F64),
        ("momentum", F64),
        ("sentiment", F64),
    ),
    lambda e, s: [
        (
            s,
            e.event_id,
            e.ts_event,
            e.account,
            i.symbol,
            i.action,
            i.target_weight,
            i.current_weight,
            i.delta_quantity,
            i.momentum,
            i.sentiment,
        )
        for i in e.items
    ],
    "Weekly rebalance plans, one row per item.",
)
HEARTBEATS = Table(
    "heartbeats",
    OPS,
    (ev.Heartbeat,),
    (
        *COMMON,
        ("feed", S),
        ("interval_s", F64),
        ("lag_ms", F64),
        ("stale", B),
        ("connected", B),
        ("symbols", I64),
        ("events_since_last", I64),
    ),
    lambda e, s: [
        (*_common(e, s), e.feed, e.interval_s, e.lag_ns / 1e6, e.stale, e.connected, e.symbols, e.events_since_last)
    ],
    "Feed heartbeats with lag and staleness.",
)
ALERTS = Table(
    "alerts",
    OPS,
    (ev.Alert,),
    (
        *COMMON,
        ("severity", S),
        ("kind", S),
        ("alert_key", S),
        ("message", S),
        ("resolved", B),
        ("feed", S),
        ("symbol", S),
    ),
    lambda e, s: [(*_common(e, s), e.severity, e.kind, e.key, e.message, e.resolved, e.feed, e.symbol)],
    "Alerts and their resolutions.",
)
DEAD_LETTERS = Table(
    "dead_letters",
    OPS,
    (ev.DeadLetter,),
    (
        *COMMON,
        ("stream", S),
        ("stream_seq", I64),
        ("subject", S),
        ("consumer", S),
        ("reason", S),
        ("deliveries", I64),
        ("payload", S),
    ),
    lambda e, s: [
        (*_common(e, s), e.stream, e.stream_seq, e.subject_of_message, e.consumer, e.reason, e.deliveries, e.payload)
    ],
    "Messages a consumer could not process: stream, sequence and reason.",
)
NOTIFICATIONS = Table(
    "notifications",
    OPS,
    (ev.Notification,),
    (*COMMON, ("channel", S), ("alert_id", S), ("alert_key", S), ("delivered", B), ("detail", S), ("attempts", I64)),
    lambda e, s: [(*_common(e, s), e.channel, e.alert_id, e.alert_key, e.delivered, e.detail, e.attempts)],
    "Alerts sent to a channel (the webhook), once each: delivered, or why not.",
)
MODELS = Table(
    "model_deployments",
    INTEL,
    (ev.ModelDeployed,),
    (*COMMON, ("model", S), ("model_version", S), ("sha256", S), ("path", S), ("previous_version", S), ("rollback", B)),
    lambda e, s: [(*_common(e, s), e.model, e.model_version, e.sha256, e.path, e.previous_version, e.rollback)],
    "Model versions as they went live.",
)

OPERATOR_ACTIONS = Table(
    "operator_actions",
    OPS,
    (ev.OperatorAction,),
    (*COMMON, ("action", S), ("operator", S), ("origin", S), ("note", S), ("detail", S)),
    lambda e, s: [(*_common(e, s), e.action, e.operator, e.origin, e.note, e.detail)],
    "Control actions a person confirmed (web page, ask, CLI), with the operator.",
)
ASK_EXCHANGES = Table(
    "ask_exchanges",
    OPS,
    (ev.AskExchange,),
    (
        *COMMON,
        ("mode", S),
        ("question", S),
        ("answer", S),
        ("model", S),
        ("intent", S),
        ("tool_calls_json", S),
        ("error", S),
        ("latency_ms", F64),
    ),
    lambda e, s: [
        (*_common(e, s), e.mode, e.question, e.answer, e.model, e.intent, _j(e.tool_calls), e.error, e.latency_ms)
    ],
    "Questions asked of the system (tapeline ask, the web chat) with answers and tool calls.",
)

TABLES: tuple[Table, ...] = (
    TICKS,
    BARS,
    NEWS_T,
    LLM_CALLS,
    SENTIMENT,
    ENRICHMENTS,
    SIGNALS,
    DECISIONS,
    DECISION_SIGNALS,
    ORDERS,
    FILLS,
    RISK_CHECKS,
    BREAKERS,
    REBALANCE,
    HEARTBEATS,
    ALERTS,
    DEAD_LETTERS,
    NOTIFICATIONS,
    MODELS,
    OPERATOR_ACTIONS,
    ASK_EXCHANGES,
)

VIEWS: tuple[View, ...] = (
    View(
        "positions",
        """
        SELECT account, symbol,
               sum(CASE side WHEN 'BUY' THEN quantity ELSE -quantity END) AS quantity,
               sum(CASE side WHEN 'BUY' THEN quantity * price ELSE -quantity * price END) AS net_cost,
               sum(commission) AS commission,
               max(ts_event) AS last_fill
        FROM fills GROUP BY account, symbol
        """,
        "Net position per account and symbol, derived from fills.",
    ),
    View(
        "equity",
        """
        WITH marks AS (
            SELECT symbol, arg_max(close, ts_event) AS mark, max(ts_event) AS mark_time FROM bars GROUP BY symbol)
        SELECT p.account, p.symbol, p.quantity, m.mark, m.mark_time,
               p.quantity * m.mark AS market_value,
               p.quantity * m.mark - p.net_cost - p.commission AS pnl
        FROM positions p LEFT JOIN marks m USING (symbol)
        """,
        "Mark-to-market value and P&L per position, marked at the latest bar close.",
    ),
    View(
        "latest_decisions",
        "SELECT * FROM decisions QUALIFY row_number() OVER (PARTITION BY ticker ORDER BY ts_event DESC, seq DESC) = 1",
        "The latest decision per ticker.",
    ),
    *portfolio.VIEWS,  # equity curve, accounts, decision forward returns (projections/portfolio.py)
)
