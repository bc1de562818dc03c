"""The offline scorer's commands: the body of ``tapeline eval sentiment FILE``, and ``tapeline models
train-sentiment``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from tapeline.models.sentiment import (
    ARTEFACT_DIR,
    MODEL_NAME,
    SentimentModelError,
    load_sentiment_model,
    read_metadata,
)
from tapeline.models.sentiment_company import DEFAULT_MASK
from tapeline.models.sentiment_lexicon import DEFAULT_LEXICON
from tapeline.models.sentiment_train import (
    HeadlineFileError,
    HeadParams,
    cosine,
    data_sha256,
    read_headlines,
    train_artefact,
)

models_app = typer.Typer(help="Train the shipped models.", no_args_is_help=True, rich_markup_mode=None)


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(2)


def evaluate_offline(file: Path, model: Path | None, console: Console, *, extra: object = None) -> None:
    """Score FILE with the offline model; print cosine (the SemEval-2017 task 5 metric), MAE, sign agreement.

    ``extra`` is any ``--by``/``--gold`` also given: those compare recorded LLM variants, not a file.
    """
    if extra:
        raise _fail(f"eval sentiment {file}: --by/--gold compare recorded LLM variants; drop FILE or drop them")
    try:
        rows = read_headlines(file)
        scorer = load_sentiment_model(model)
    except (HeadlineFileError, SentimentModelError) as e:
        raise _fail(str(e)) from None
    t0 = time.perf_counter()
    pred = np.array(scorer.score([h.title for h in rows], [h.company or None for h in rows]), dtype=np.float64)
    seconds = time.perf_counter() - t0
    gold = np.array([h.sentiment for h in rows], dtype=np.float64)
    table = Table(title=f"{file.name}: {scorer.version}")
    for col in ("headlines", "cosine", "MAE", "sign agreement", "headlines/s"):
        table.add_column(col, justify="right")
    table.add_row(
        str(len(rows)),
        f"{cosine(pred, gold):.4f}",
        f"{float(np.abs(pred - gold).mean()):.4f}",
        f"{float((np.sign(pred) == np.sign(gold)).mean()):.1%}",
        f"{len(rows) / seconds:,.0f}" if seconds > 0 else "-",
    )
    console.print(table)
    if model is None and data_sha256(file) == read_metadata()["training_data"]["sha256"]:
        console.print(
            "note: this is the model's training data (a fit, not a held-out figure); "
            f"cross-validated: {read_metadata()['cross_validation']['cosine_mean']:.4f}"
        )


@models_app.command("train-sentiment")
def train_sentiment(
    data: Annotated[Path, typer.Argument(help="training headlines, SemEval-2017 task 5 JSON format")],
    out: Annotated[Path, typer.Option("--out", help="directory for sentiment-head.onnx/.json")] = ARTEFACT_DIR,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="times the 10-fold CV is repeated")] = 5,
) -> None:
    """Cross-validate and train the offline sentiment head; write the artefact and its metadata."""
    from tapeline.models.e5 import E5Embedder

    try:
        meta = train_artefact(
            data,
            out,
            E5Embedder(),
            lexicon=DEFAULT_LEXICON,
            company_mask=DEFAULT_MASK,
            name=MODEL_NAME,
            params=HeadParams(),
            repeats=repeats,
        )
    except HeadlineFileError as e:
        raise _fail(str(e)) from None
    cv = meta["cross_validation"]
    Console().print(
        f"wrote {out / meta['artefact']} [bold]{meta['version']}[/]: CV cosine {cv['cosine_mean']:.4f} "
        f"(folds {cv['cosine_min']:.4f}..{cv['cosine_max']:.4f}, {cv['scheme']})"
    )
