"""The body of ``tapeline eval sentiment --by variant``: the variant comparison as a Rich table."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tapeline.projections.query import QueryError
from tapeline.projections.sentiment_eval import compare_variants


def sentiment_by_variant(db: Path, gold: Path | None, console: Console) -> None:
    """Print one row per A/B variant; a missing or held database is one line and exit 2."""
    try:
        rows = compare_variants(db, gold)
    except QueryError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    if not rows:
        console.print(f"no LLM calls recorded in {db} yet")
        return
    t = Table(title="sentiment by variant" + (f" (gold: {gold.name})" if gold else ""))
    for col in ("variant", "calls", "errors", "scores", "fallback", "latency ms", "tokens in/out"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    t.add_column("mean |score|", justify="right")
    if gold:
        t.add_column("gold n", justify="right")
        t.add_column("cosine", justify="right")
    for r in rows:
        cells = [
            r.variant,
            f"{r.calls:,}",
            f"{r.errors:,}",
            f"{r.scores:,}",
            f"{r.fallback_rate:.1%}",
            f"{r.mean_latency_ms:,.0f}",
            f"{r.input_tokens:,}/{r.output_tokens:,}",
            f"{r.mean_abs_score:.3f}",
        ]
        if gold:
            cells += [f"{r.gold_matched:,}", "-" if r.cosine is None else f"{r.cosine:.3f}"]
        t.add_row(*cells)
    t.caption = "prompt versions: " + "; ".join(f"{r.variant}: {', '.join(r.prompt_versions)}" for r in rows)
    console.print(t)
