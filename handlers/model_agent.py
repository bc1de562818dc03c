"""The model agent: scores each enrichment with the live price model and votes, ``Signal(agent="model")``.

Which model is live is itself an event. ``tapeline models deploy|rollback`` publish
:class:`~schemas.events.ModelDeployed` on the INTEL stream, the stream the enrichments are on, and this
handler reads both through ONE ordered consumer. So "the version live at that point in the stream" is
exact: an enrichment stored before a deployment is scored by the model before it, one stored after by
the new one, in a live run, after a restart (the snapshot holds the live version with its position),
and in replay (which reads the same stream in the same order). No message is lost or scored twice
across a swap: the swap happens between two messages of one consumer, and signal ids derive from the
enrichment (hash of handler, version, enrichment id), so a redelivery publishes the same id.

Models are read through a :class:`~models.price.ModelStore` (the object that does the I/O; content
addressed by SHA-256, so replay loads the same bytes). A deployment whose model cannot be loaded, is
not in the store, was altered, or needs features the enrichment does not emit is refused: the previous
model keeps serving and a critical :class:`~schemas.events.Alert` (``kind="model_refused"``) says why;
the next good deployment resolves it.

The signal: ``p`` = P(forward return over the model's horizon > 0); ``strength = 2p - 1``,
``confidence = |2p - 1|``, NEUTRAL inside ``neutral_band``. Its metrics carry ``p_up``, ``horizon``
and ``model_version``: the version (12 hex digits of the file hash) as its integer value (48 bits,
exact in a float; ``f"{int(m):012x}"`` gives the version back). Only enrichments of the intervals
the model was trained on are scored; warm-up rows never.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar

import msgspec

from tapeline.models.price import MODEL, ModelRefused, ModelStore, PriceModel, version_of
from tapeline.schemas.components import Consumes, Handler, Rejected, Snapshot, draft
from tapeline.schemas.events import Alert, AnyEvent, Enrichment, Event, ModelDeployed, Signal


class ModelAgentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    store: str = ""  # the model store directory; empty: <data_dir>/models (set by load_settings)
    neutral_band: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1


class _State(msgspec.Struct):
    sha256: str = ""  # the live model ("" before the first deployment)
    refused: str = ""  # the version of an unresolved refusal


class ModelAgent(Handler):
    name: ClassVar[str] = "model"
    version: ClassVar[int] = 1
    Config: ClassVar[type[msgspec.Struct]] = ModelAgentConfig
    emits: ClassVar[tuple[type[Event], ...]] = (Signal, Alert)
    consumes: tuple[Consumes, ...] = (Consumes(ModelDeployed, {"model": MODEL}), Consumes(Enrichment))
    state = Snapshot()

    def __init__(self, config: ModelAgentConfig | None = None, *, store: ModelStore | None = None) -> None:
        super().__init__(config)
        cfg: ModelAgentConfig = self.config
        self.store = store or ModelStore(Path(cfg.store or ".tapeline/models"))
        self.neutral_band = cfg.neutral_band
        self.live: PriceModel | None = None
        self._state = _State()
        self._pending: list[Alert] = []

    def _count(self, outcome: str) -> None:
        self.counters[outcome] = self.counters.get(outcome, 0) + 1

    def handle(self, event: AnyEvent) -> list[Event]:
        if self._pending:  # a model lost from the store at restore: said once, with the next event
            pending, self._pending = self._pending, []
            return [msgspec.structs.replace(a, ts_event=event.ts_event) for a in pending] + self._handle(event)
        return self._handle(event)

    def _handle(self, event: AnyEvent) -> list[Event]:
        if isinstance(event, ModelDeployed):
            return self._deploy(event) if event.model == MODEL else []
        if not isinstance(event, Enrichment) or event.warmup:
            return []
        if self.live is None:
            self._count("no_model")
            return []
        if event.interval not in self.live.intervals:
            self._count("other_interval")
            return []
        try:
            row = self.live.row(event.features)
        except KeyError as e:
            raise Rejected(f"enrichment lacks feature {e} that model {self.live.version} needs") from None
        p = float(self.live.p_up(row)[0])
        self._count("scored")
        return [self._signal(event, p, self.live)]

    def _signal(self, event: Enrichment, p: float, m: PriceModel) -> Signal:
        strength = round(2 * p - 1, 6)
        direction = "NEUTRAL" if abs(strength) < self.neutral_band else ("BULLISH" if strength > 0 else "BEARISH")
        return draft(
            Signal,
            ts_event=event.ts_event,
            symbol=event.symbol,
            agent="model",
            domain="technical",
            direction=direction,
            strength=strength,
            confidence=abs(strength),
            summary=f"{MODEL} model {m.version}: P(up over {m.horizon} bars) = {p:.3f}",
            key_factors=[f"model={MODEL}@{m.version}", f"phase={event.phase}"],
            metrics={"p_up": round(p, 6), "horizon": float(m.horizon), "model_version": float(int(m.version, 16))},
        )

    def _deploy(self, event: ModelDeployed) -> list[Event]:
        try:
            model = self.store.load(event.sha256)
        except ModelRefused as e:
            self._count("model_refused")
            self._state.refused = event.model_version
            return [self._refused_alert(event.ts_event, event.model_version, e)]
        self.live = model
        self._count("model_swapped")
        out: list[Event] = []
        if self._state.refused:
            out.append(
                draft(
                    Alert,
                    ts_event=event.ts_event,
                    severity="info",
                    kind="model_refused",
                    key=f"model:{MODEL}",
                    message=f"{MODEL} model {model.version} serves",
                    resolved=True,
                )
            )
        self._state = _State(sha256=model.sha256)
        return out

    def _refused_alert(self, ts: int, version: str, why: ModelRefused) -> Alert:
        keeps = f"{self.live.version} keeps serving" if self.live else "no model serves"
        return draft(
            Alert,
            ts_event=ts,
            severity="critical",
            kind="model_refused",
            key=f"model:{MODEL}",
            message=f"{MODEL} model {version} refused: {why}; {keeps}",
        )

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self._state)

    def restore(self, data: bytes) -> None:
        """The live model again, from the store by its hash (the exact bytes it served). If the store
        lost it, nothing serves and the next event raises the alert (a handler only speaks in outputs)."""
        self._state = msgspec.msgpack.decode(data, type=_State)
        self.live = None
        if self._state.sha256:
            try:
                self.live = self.store.load(self._state.sha256)
            except ModelRefused as e:
                self._state.refused = version_of(self._state.sha256)
                self._pending = [self._refused_alert(0, self._state.refused, e)]
