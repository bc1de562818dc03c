"""``tapeline eval sentiment --by variant``: the A/B variants compared on what was recorded.

Reads the ``llm_calls`` and ``sentiment`` tables (so it costs no provider call) and reports per
variant: calls, provider errors, scores, neutral-fallback rate, mean latency, tokens, mean
``|score|``, the prompt versions seen, and, given a SemEval-2017 Task 5 file (``[{id, company,
title, sentiment}]``), the task's cosine similarity between gold and predicted scores over the
articles matched by title (and company = ticker where a title has several gold rows). Fallbacks
count as predictions of 0: a variant that falls back more is scored for it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import duckdb
import msgspec

from tapeline.projections.query import QueryError, open_read_only


class VariantStats(msgspec.Struct):
    variant: str
    prompt_versions: list[str]
    calls: int
    errors: int
    scores: int
    fallback_rate: float
    mean_latency_ms: float
    input_tokens: int
    output_tokens: int
    mean_abs_score: float
    gold_matched: int = 0
    cosine: float | None = None


def _norm(title: str) -> str:
    return " ".join(title.split()).casefold()


def load_gold(path: Path) -> dict[str, dict[str, float]]:
    """title -> {company (case-folded): gold score}; raises QueryError naming the file on a bad one."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        gold: dict[str, dict[str, float]] = defaultdict(dict)
        for r in rows:
            gold[_norm(str(r["title"]))][str(r["company"]).casefold()] = float(r["sentiment"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        what = "a SemEval-2017 JSON list of {company, title, sentiment}"
        raise QueryError(f"--gold {path}: not {what} ({e})") from None
    return gold


def _gold_for(gold: dict[str, dict[str, float]], title: str, ticker: str) -> float | None:
    by_company = gold.get(_norm(title))
    if not by_company:
        return None
    if ticker.casefold() in by_company:
        return by_company[ticker.casefold()]
    return next(iter(by_company.values())) if len(by_company) == 1 else None


def cosine(pairs: list[tuple[float, float]]) -> float | None:
    """SemEval-2017 Task 5's metric: cos(gold, predicted); None when either vector is all zeros."""
    dot = sum(g * p for g, p in pairs)
    ng = math.sqrt(sum(g * g for g, _ in pairs))
    np_ = math.sqrt(sum(p * p for _, p in pairs))
    return dot / (ng * np_) if ng and np_ else None


def compare_variants(db: Path, gold_path: Path | None = None) -> list[VariantStats]:
    if not db.exists():
        raise QueryError(f"no projection database at {db}: run `tapeline up` with the news_llm gateway first")
    gold = load_gold(gold_path) if gold_path else None
    con = open_read_only(db)
    try:
        calls = con.execute(
            "SELECT variant, list(DISTINCT prompt_version ORDER BY prompt_version), count(*),"
            " count(*) FILTER (WHERE error <> ''), coalesce(avg(latency_ms), 0),"
            " coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0)"
            " FROM llm_calls GROUP BY variant ORDER BY variant"
        ).fetchall()
        scored = {
            r[0]: r[1:]
            for r in con.execute(
                "SELECT variant, count(*), coalesce(avg(neutral_fallback::INT), 0), coalesce(avg(abs(score)), 0)"
                " FROM sentiment GROUP BY variant"
            ).fetchall()
        }
        matched: dict[str, list[tuple[float, float]]] = defaultdict(list)
        if gold is not None:
            for variant, ticker, score, title in con.execute(
                "SELECT s.variant, s.ticker, s.score, n.title FROM sentiment s JOIN news n ON n.event_id = s.news_id"
            ).fetchall():
                g = _gold_for(gold, title, ticker)
                if g is not None:
                    matched[variant].append((g, score))
    except duckdb.CatalogException as e:
        raise QueryError(f"{db} lacks the llm_calls/sentiment/news tables ({e}): start the projector once") from None
    finally:
        con.close()
    out = []
    for variant, versions, n, errors, latency, tin, tout in calls:
        n_scores, fallback, mean_abs = scored.get(variant, (0, 0.0, 0.0))
        pairs = matched.get(variant, [])
        out.append(
            VariantStats(
                variant=variant,
                prompt_versions=list(versions),
                calls=n,
                errors=errors,
                scores=n_scores,
                fallback_rate=float(fallback),
                mean_latency_ms=float(latency),
                input_tokens=int(tin),
                output_tokens=int(tout),
                mean_abs_score=float(mean_abs),
                gold_matched=len(pairs),
                cosine=cosine(pairs) if gold is not None else None,
            )
        )
    return out
