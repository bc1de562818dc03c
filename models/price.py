"""The price model: gradient-boosted trees on the enrichment features predicting the sign of the N-bar
forward return; walk-forward evaluation, ONNX export with metadata, and a content-addressed store.

Training (``tapeline models train``) takes per-series feature rows (what the ``enrichment`` handler
emits for each bar) and closes, labels each row ``1`` when ``close[t+N] > close[t]``, and evaluates
walk-forward: rows sorted by time, the last ``1 - min_train`` of them cut into consecutive test
windows; each window is scored by a model trained only on rows whose label was *known* when the
window starts (the label of row t is known at the close of bar t+N, so the N rows before a window
are purged). Nothing of a test window or after it reaches its model. Figures: hit rate (sign right)
and ROC AUC, for the model and two naive baselines (always the training majority; the sign of the
20-bar momentum feature).

The exported ONNX file carries its metadata in ``metadata_props``: feature names in input order,
horizon, bar intervals, training window, metrics, and ``graph_sha256`` (a hash of the graph, which
the file cannot contain of itself). A file is addressed by the SHA-256 of its bytes in a
:class:`ModelStore`; its version is the first 12 hex digits of that hash, so a version names exact
bytes and replay loads what was live. :func:`load_model` refuses (``ModelRefused``) a file whose
bytes, graph hash or features do not match.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from tapeline.schemas.features import ENRICHMENT_FEATURES

MODEL = "price"
VERSION_HEX = 12  # a version is this many hex digits of the file's SHA-256
MOMENTUM_FEATURE = "ret_20"  # the naive momentum baseline scores with this feature


class ModelRefused(ValueError):
    """A model file that must not serve: unreadable, not ours, tampered with, or with other features."""


class Classifier(Protocol):
    def fit(self, X: NDArray[np.float32], y: NDArray[np.int64]) -> Any: ...
    def predict_proba(self, X: NDArray[np.float32]) -> NDArray[np.float64]: ...


def default_classifier() -> Classifier:
    """Shallow boosted trees: small, deterministic (fixed seed, no subsampling), fast to score."""
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(n_estimators=150, max_depth=3, learning_rate=0.05, random_state=0)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Series:
    """One (symbol, interval) in time order: bar close times, closes, and the enrichment features of
    each bar (``None`` for a warm-up row)."""

    symbol: str
    interval: str
    ts: Sequence[int]
    close: Sequence[float]
    features: Sequence[dict[str, float] | None]


@dataclass(frozen=True)
class Dataset:
    """Rows sorted by feature time: ``X`` in ``feature_names`` order, ``y`` the label, ``ts`` when the
    features were known, ``label_ts`` when the label was (the close of bar t+N)."""

    X: NDArray[np.float32]
    y: NDArray[np.int64]
    ts: NDArray[np.int64]
    label_ts: NDArray[np.int64]
    feature_names: tuple[str, ...]
    horizon: int
    intervals: tuple[str, ...]


def make_dataset(series: Sequence[Series], horizon: int, feature_names: Sequence[str] = ENRICHMENT_FEATURES) -> Dataset:
    """Labelled rows of every series: warm-up rows and the last ``horizon`` bars (no label yet) dropped."""
    X: list[list[float]] = []
    y: list[int] = []
    ts: list[int] = []
    label_ts: list[int] = []
    for s in series:
        for i in range(len(s.close) - horizon):
            f = s.features[i]
            if f is None:
                continue
            X.append([f[n] for n in feature_names])
            y.append(int(s.close[i + horizon] > s.close[i]))
            ts.append(s.ts[i])
            label_ts.append(s.ts[i + horizon])
    order = np.argsort(np.array(ts, dtype=np.int64), kind="stable")
    return Dataset(
        X=np.array(X, dtype=np.float32).reshape(-1, len(feature_names))[order],
        y=np.array(y, dtype=np.int64)[order],
        ts=np.array(ts, dtype=np.int64)[order],
        label_ts=np.array(label_ts, dtype=np.int64)[order],
        feature_names=tuple(feature_names),
        horizon=horizon,
        intervals=tuple(sorted({s.interval for s in series})),
    )


# ---------------------------------------------------------------- walk-forward


@dataclass(frozen=True)
class Scores:
    hit_rate: float
    auc: float
    n: int


@dataclass(frozen=True)
class Fold:
    start_ts: int  # the test window's first feature time
    end_ts: int
    n_train: int
    test: slice
    model: Scores
    majority: Scores
    momentum: Scores


@dataclass
class WalkForward:
    folds: list[Fold]
    p_up: NDArray[np.float64]  # the model's out-of-sample P(up) of every tested row, in row order
    tested: slice
    overall: dict[str, Scores] = field(default_factory=dict)


def scores(y: NDArray[np.int64], p: NDArray[np.float64]) -> Scores:
    """Hit rate of the call ``p > 0.5`` and ROC AUC of the score ``p`` (0.5 when one class only)."""
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y, p)) if 0 < int(y.sum()) < len(y) else 0.5
    return Scores(hit_rate=float(np.mean((p > 0.5) == (y == 1))), auc=auc, n=len(y))


def walk_forward(
    ds: Dataset,
    *,
    folds: int = 5,
    min_train: float = 0.5,
    make_model: Callable[[], Classifier] = default_classifier,
) -> WalkForward:
    """Train on the past, test on the following window, roll (see the module docstring)."""
    n = len(ds.y)
    first = int(n * min_train)
    if n - first < folds or first < 10:
        raise ValueError(f"walk-forward needs more rows: {n} rows for {folds} folds")
    bounds = np.linspace(first, n, folds + 1).astype(int)
    mom = ds.feature_names.index(MOMENTUM_FEATURE)
    p_all = np.full(n, np.nan)
    out: list[Fold] = []
    for a, b in itertools.pairwise(int(x) for x in bounds):
        start = int(ds.ts[a])
        known = ds.label_ts <= start  # labels known when the window opens (rows are before it too)
        known[a:] = False
        if known.sum() < 10 or len(np.unique(ds.y[known])) < 2:
            raise ValueError(f"walk-forward: too few labelled rows before the fold at row {a}")
        model = make_model()
        model.fit(ds.X[known], ds.y[known])
        p = model.predict_proba(ds.X[a:b])[:, 1].astype(np.float64)
        p_all[a:b] = p
        y = ds.y[a:b]
        majority = float(np.mean(ds.y[known]) > 0.5)
        out.append(
            Fold(
                start_ts=start,
                end_ts=int(ds.ts[b - 1]),
                n_train=int(known.sum()),
                test=slice(a, b),
                model=scores(y, p),
                majority=scores(y, np.full(len(y), 0.75 if majority else 0.25)),
                momentum=scores(y, 1 / (1 + np.exp(-ds.X[a:b, mom].astype(np.float64)))),
            )
        )
    tested = slice(first, n)
    y = ds.y[tested]
    wf = WalkForward(folds=out, p_up=p_all[tested], tested=tested)
    wf.overall = {
        "model": scores(y, wf.p_up),
        "majority": Scores(hit_rate=sum(f.majority.hit_rate * f.majority.n for f in out) / len(y), auc=0.5, n=len(y)),
        "momentum": scores(y, 1 / (1 + np.exp(-ds.X[tested, mom].astype(np.float64)))),
    }
    return wf


# ---------------------------------------------------------------- export and load


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def graph_sha256(model: Any) -> str:
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def export_onnx(clf: Any, ds: Dataset, wf: WalkForward | None = None) -> bytes:
    """The fitted classifier as ONNX bytes (input ``X``: float32 [n, features]; outputs ``label`` and
    ``probabilities`` [n, 2]) with metadata. Same model and data, same bytes."""
    from skl2onnx import to_onnx

    onx: Any = to_onnx(
        clf,
        ds.X[:1],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    metrics = {
        k: {"hit_rate": round(v.hit_rate, 4), "auc": round(v.auc, 4), "n": v.n}
        for k, v in (wf.overall if wf else {}).items()
    }
    meta = {
        "tapeline.model": MODEL,
        "feature_names": json.dumps(list(ds.feature_names)),
        "horizon": str(ds.horizon),
        "intervals": json.dumps(list(ds.intervals)),
        "label": f"close[t+{ds.horizon}] > close[t]",
        "train_from": _iso(int(ds.ts[0])),
        "train_to": _iso(int(ds.label_ts.max())),
        "train_rows": str(len(ds.y)),
        "walk_forward": json.dumps(metrics, sort_keys=True),
        "graph_sha256": graph_sha256(onx),
    }
    for k, v in meta.items():
        p = onx.metadata_props.add()
        p.key, p.value = k, v
    onx.doc_string = "Tapeline price model: P(N-bar forward return > 0) from the enrichment features"
    return bytes(onx.SerializeToString(deterministic=True))


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def version_of(sha256: str) -> str:
    return sha256[:VERSION_HEX]


class PriceModel:
    """A loaded, checked model: ``p_up(rows)`` for rows in ``feature_names`` order."""

    def __init__(self, data: bytes, meta: dict[str, str]) -> None:
        import onnxruntime as ort

        self.sha256 = file_sha256(data)
        self.version = version_of(self.sha256)
        self.meta = meta
        self.feature_names: tuple[str, ...] = tuple(json.loads(meta["feature_names"]))
        self.horizon = int(meta["horizon"])
        self.intervals: tuple[str, ...] = tuple(json.loads(meta["intervals"]))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # one row at a time: threads cost more than they give
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def p_up(self, rows: NDArray[np.float32]) -> NDArray[np.float32]:
        probs = self.session.run(["probabilities"], {self._input: rows})[0]
        return np.asarray(probs, dtype=np.float32)[:, 1]

    def row(self, features: dict[str, float]) -> NDArray[np.float32]:
        """One input row from an enrichment's features; KeyError names a missing feature."""
        return np.array([[features[n] for n in self.feature_names]], dtype=np.float32)


def load_model(data: bytes, *, sha256: str = "", available: Sequence[str] = ENRICHMENT_FEATURES) -> PriceModel:
    """Check and load a model file; :class:`ModelRefused` says why it cannot serve.

    Checks: the bytes hash to ``sha256`` (when given); it is an ONNX price model whose graph hashes
    to its ``graph_sha256``; every feature it names is one the enrichment emits (``available``) and
    its input takes exactly that many; onnxruntime accepts it.
    """
    import onnx

    if sha256 and file_sha256(data) != sha256:
        raise ModelRefused(f"content hash {version_of(file_sha256(data))} is not the deployed {version_of(sha256)}")
    try:
        onx = onnx.load_from_string(data)
    except Exception as e:
        raise ModelRefused(f"not an ONNX model ({type(e).__name__})") from None
    meta = {p.key: p.value for p in onx.metadata_props}
    missing = [k for k in ("tapeline.model", "feature_names", "horizon", "intervals", "graph_sha256") if k not in meta]
    if missing or meta.get("tapeline.model") != MODEL:
        raise ModelRefused(f"not a Tapeline {MODEL} model (metadata lacks {missing or ['tapeline.model']})")
    if graph_sha256(onx) != meta["graph_sha256"]:
        raise ModelRefused("graph hash does not match its metadata: the file was altered after export")
    names = json.loads(meta["feature_names"])
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ModelRefused(f"features {unknown} are not among the enrichment features")
    dims = onx.graph.input[0].type.tensor_type.shape.dim
    width = dims[1].dim_value if len(dims) == 2 else -1
    if width != len(names):
        raise ModelRefused(f"input takes {width} features but the metadata names {len(names)}")
    try:
        return PriceModel(data, meta)
    except Exception as e:
        raise ModelRefused(f"onnxruntime cannot load it: {type(e).__name__}: {str(e)[:200]}") from None


class ModelStore:
    """Model files by content hash: ``<root>/<sha256>.onnx``; written once, atomically, never changed."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.onnx"

    def put(self, data: bytes) -> str:
        sha = file_sha256(data)
        dest = self.path(sha)
        if not dest.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        return sha

    def get(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise ModelRefused(f"version {version_of(sha256)} is not in the model store {self.root}") from None

    def load(self, sha256: str) -> PriceModel:
        return load_model(self.get(sha256), sha256=sha256)

    def find(self, version: str) -> str:
        """The full hash of a stored model by version (a hash prefix); ModelRefused if none or several."""
        found = sorted(p.stem for p in self.root.glob(f"{version}*.onnx")) if version else []
        if len(found) != 1:
            what = "no model" if not found else f"{len(found)} models"
            raise ModelRefused(f"{what} in {self.root} with version {version!r}; see tapeline models list")
        return found[0]

    def shas(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.onnx"))


def read_meta(data: bytes) -> dict[str, str]:
    """The metadata of a model file (empty for anything that is not ONNX)."""
    import onnx

    try:
        return {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    except Exception:
        return {}
