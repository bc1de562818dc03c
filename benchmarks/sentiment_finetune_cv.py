"""Experiments that did NOT beat the shipped sentiment head, kept so the README's figures can be rerun.

1. Partial fine-tuning (``--finetune``): the frozen lower ``--layer`` MiniLM blocks run ONCE over all
   headlines (hidden states cached), then only the top blocks + mean pooling + a linear head are trained
   with torch (MSE, AdamW, early stopping on an inner split of the TRAINING fold, seed 100 + 10 r + f),
   and blended 50/50 with the shipped kernel ridge head. Same protocol as the shipped figures: 10 folds,
   repeats with seeds 0.., titles grouped. ~1-3 min per fold on the loaded 2-core machine.
2. Company masking (default, seconds): the company name in the title replaced by a placeholder before
   embedding (and the mean of the raw and masked vectors). The scorer's interface gets only texts, so
   live headlines could not be masked the same way; this measures what the name costs.

Run: ``.venv/bin/python benchmarks/sentiment_finetune_cv.py [--finetune --repeats 1 --first-repeat 0]``.
"""

from __future__ import annotations

import argparse
import copy
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tapeline.models.embedder import TextEmbedder, _force_offline, _Tokens, verify_weights
from tapeline.models.sentiment import fix_mojibake
from tapeline.models.sentiment_lexicon import DEFAULT_LEXICON
from tapeline.models.sentiment_train import cosine, cross_validate, fit_head, read_headlines, title_groups

HEADLINES = Path(__file__).resolve().parents[2] / "shared" / "data" / "news" / "semeval2017-task5-headlines.json"
F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


def load_encoder() -> Any:
    """The packaged MiniLM in torch (eager attention)."""
    _force_offline()
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(verify_weights()), attn_implementation="eager", local_files_only=True).eval()


def hidden_states(encoder: Any, titles: Sequence[str], layer: int) -> tuple[F32, F32]:
    """Hidden states after ``layer`` frozen blocks, padded to the longest title, and the float mask."""
    import torch

    ids, mask, types = _Tokens(verify_weights()).encode(titles)
    with torch.inference_mode():
        out = encoder(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
            output_hidden_states=True,
        )
    return out.hidden_states[layer].numpy(), mask.astype(np.float32)


def top_module(encoder: Any, layer: int, dropout: float = 0.1, scale: float = 5.0) -> Any:
    """Copies of MiniLM blocks ``layer..5`` + mean pooling + L2 norm (scaled) + dropout + a linear head."""
    import torch

    class Top(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = copy.deepcopy(encoder.encoder.layer[layer:])
            self.drop = torch.nn.Dropout(dropout)
            self.head = torch.nn.Linear(384, 1)

        def forward(self, hidden: Any, mask: Any) -> Any:
            width = int(mask.sum(1).max())  # trim padding: the cost is in the tokens
            h, m = hidden[:, :width], mask[:, :width]
            ext = (1.0 - m)[:, None, None, :] * torch.finfo(torch.float32).min
            for block in self.blocks:
                h = block(h, attention_mask=ext)
                h = h[0] if isinstance(h, tuple) else h
            pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1e-9)
            return self.head(self.drop(torch.nn.functional.normalize(pooled, dim=1) * scale)).squeeze(1)

    return Top()


def predict(top: Any, hidden: F32, mask: F32) -> F64:
    import torch

    top.eval()
    with torch.no_grad():
        return np.asarray(top(torch.from_numpy(hidden), torch.from_numpy(mask)).clamp(-1, 1).numpy(), np.float64)


def train_top(
    encoder: Any, hidden: F32, mask: F32, y: F64, train: I64, val: I64, args: argparse.Namespace, seed: int
) -> tuple[Any, int]:
    """Fine-tune on ``train``; keep the epoch with the best cosine on ``val`` (an inner split)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    top = top_module(encoder, args.layer)
    opt = torch.optim.AdamW(
        [{"params": top.blocks.parameters(), "lr": args.lr}, {"params": top.head.parameters(), "lr": args.head_lr}],
        weight_decay=0.01,
    )
    h_all, m_all, y_all = torch.from_numpy(hidden), torch.from_numpy(mask), torch.from_numpy(y.astype(np.float32))
    best, state, best_epoch = -2.0, copy.deepcopy(top.state_dict()), 0
    for epoch in range(args.epochs):
        top.train()
        perm = rng.permutation(train)
        for i in range(0, len(perm), 16):
            b = torch.from_numpy(perm[i : i + 16])
            loss = torch.nn.functional.mse_loss(top(h_all[b], m_all[b]), y_all[b])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        score = cosine(predict(top, hidden[val], mask[val]), y[val])
        if score > best:
            best, state, best_epoch = score, copy.deepcopy(top.state_dict()), epoch
    top.load_state_dict(state)
    return top, best_epoch


def finetune_cv(titles: list[str], y: F64, emb: F32, lex: F32, args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    encoder = load_encoder()
    hidden, mask = hidden_states(encoder, titles, args.layer)
    groups = title_groups(titles)
    n_groups = int(groups.max()) + 1
    scores: dict[str, list[float]] = {"fine-tuned": [], "kernel ridge": [], "blend 50/50": []}
    t0 = time.perf_counter()
    for r in range(args.first_repeat, args.first_repeat + args.repeats):
        fold = (np.random.default_rng(r).permutation(n_groups) % 10)[groups]
        for f in range(10):
            test = fold == f
            trg = np.unique(groups[~test])
            held = np.random.default_rng(100 + 10 * r + f).permutation(trg)[: len(trg) // 8]
            is_val = np.isin(groups, held) & ~test
            train, val, te = np.flatnonzero(~test & ~is_val), np.flatnonzero(is_val), np.flatnonzero(test)
            top, epoch = train_top(encoder, hidden, mask, y, train, val, args, 10 * r + f)
            p_ft = predict(top, hidden[te], mask[te])
            p_krr = fit_head(emb[~test], lex[~test], y[~test]).predict(emb[te], lex[te])
            for name, p in (("fine-tuned", p_ft), ("kernel ridge", p_krr), ("blend 50/50", (p_ft + p_krr) / 2)):
                scores[name].append(cosine(p, y[te]))
            print(
                f"repeat {r} fold {f}: best epoch {epoch}, "
                + ", ".join(f"{k} {v[-1]:.3f}" for k, v in scores.items())
                + f" ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    for name, v in scores.items():
        print(f"{name:>13}: {np.mean(v):.4f} ({min(v):.3f}-{max(v):.3f}) over {len(v)} folds")


def mask_company(title: str, company: str, placeholder: str) -> str:
    return re.sub(re.escape(company), placeholder, title, flags=re.IGNORECASE) if company else title


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--finetune", action="store_true", help="run the partial fine-tuning CV (slow)")
    ap.add_argument("--layer", type=int, default=5, help="frozen blocks below the trained ones (of 6)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--first-repeat", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    rows = read_headlines(HEADLINES)
    titles = [fix_mojibake(h.title) for h in rows]
    y = np.array([h.sentiment for h in rows], dtype=np.float64)
    embedder = TextEmbedder("onnx")
    emb, lex = embedder.embed(titles), DEFAULT_LEXICON.features(titles)
    if args.finetune:
        finetune_cv(titles, y, emb, lex, args)
        return
    print(f"shipped features, 5x10-fold: {cross_validate(emb, lex, y, titles).mean:.4f}")
    for placeholder in ("the company", "Company", "it"):
        masked = embedder.embed([mask_company(t, h.company, placeholder) for t, h in zip(titles, rows, strict=True)])
        mean = masked + emb
        mean /= np.linalg.norm(mean, axis=1, keepdims=True)
        print(
            f"company -> {placeholder!r}: masked {cross_validate(masked, lex, y, titles).mean:.4f}, "
            f"mean of raw and masked vectors {cross_validate(mean, lex, y, titles).mean:.4f}"
        )


if __name__ == "__main__":
    main()
