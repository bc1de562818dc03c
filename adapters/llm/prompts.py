"""Versioned prompts: a folder per prompt, identified by name and content hash, and the A/B split.

``prompts/sentiment/<name>/`` holds ``system.txt`` (the instructions), ``user.txt`` (the
per-article template) and ``schema.json`` (the output JSON Schema sent to the provider). The
version is ``<name>@<sha256 of the three>[:12]``: any edit to any of them is a new version, on
every ``LlmCall`` and ``SentimentScore``.

The article never enters the instructions. ``user.txt`` has exactly one ``$data`` (the article as
one line of ASCII JSON: newlines, quotes, zero-width, bidi and homoglyph characters all escaped,
so it cannot end its block or hide what it contains), between ``<<<DATA $nonce>>>`` and
``<<<END DATA $nonce>>>`` where the nonce is a hash of that JSON (an article cannot contain the
hash of itself, so it cannot fake the closing line), and ``$tickers`` (the feed's ticker list,
filtered to ticker characters). Every schema must describe the one output contract the parser
(``handlers.sentiment``) enforces: ``{"scores": [{ticker, score, relevance, impact}]}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from tapeline.adapters.llm.base import LlmRequest

PROMPTS_DIR = Path(__file__).parent / "prompts"
TASK = "sentiment"
FILES = ("system.txt", "user.txt", "schema.json")
ITEM_KEYS = {"ticker", "score", "relevance", "impact"}
_TICKER = re.compile(r"[A-Za-z0-9][A-Za-z0-9.^=:_/-]{0,23}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


class PromptError(ValueError):
    """A prompt folder is missing, incomplete or not in the contract; the message names the file."""


def clean_tickers(tickers: list[str]) -> list[str]:
    """The feed's tickers that look like tickers, in order, once each (anything else is dropped)."""
    return list(dict.fromkeys(t.strip() for t in tickers if _TICKER.fullmatch(t.strip())))


@dataclass(frozen=True)
class Prompt:
    name: str
    system: str
    user: str
    schema: dict[str, Any]
    version: str

    def render(self, article: dict[str, str], tickers: list[str]) -> str:
        """The user message: ``article`` JSON-encoded into the delimited data field."""
        data = json.dumps(article, ensure_ascii=True, sort_keys=True)
        nonce = hashlib.sha256(data.encode()).hexdigest()[:16]
        return Template(self.user).substitute(tickers=json.dumps(tickers), nonce=nonce, data=data)

    def request(self, model: str, article: dict[str, str], tickers: list[str]) -> LlmRequest:
        text = "\n".join(v for k, v in sorted(article.items()) if k != "id" and v)
        return LlmRequest(
            system=self.system,
            user=self.render(article, tickers),
            schema=self.schema,
            model=model,
            article=text,
            title=article.get("title", ""),
            tickers=tickers,
        )


def prompt_dir(root: str = "") -> Path:
    return (Path(root) if root else PROMPTS_DIR) / TASK


def load_prompt(name: str, root: str = "") -> Prompt:
    """Read and check one prompt folder (``root`` empty: the prompts shipped with Tapeline)."""
    folder = prompt_dir(root) / name
    if not _NAME.fullmatch(name) or not folder.is_dir():
        have = sorted(p.name for p in prompt_dir(root).glob("*") if p.is_dir()) if prompt_dir(root).is_dir() else []
        raise PromptError(
            f"no prompt {name!r} in {prompt_dir(root)} (have {have}): add the folder or fix the variant name"
        )
    raw: dict[str, bytes] = {}
    for f in FILES:
        p = folder / f
        if not p.is_file():
            raise PromptError(f"prompt {name!r} lacks {p}: each prompt folder needs {', '.join(FILES)}")
        raw[f] = p.read_bytes()
    try:
        schema = json.loads(raw["schema.json"])
        items = schema["properties"]["scores"]["items"]
        keys = set(items["properties"])
        ok = keys == ITEM_KEYS and set(items["required"]) == ITEM_KEYS and items.get("additionalProperties") is False
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise PromptError(
            f'{folder / "schema.json"} must describe {{"scores": [{{ticker, score, relevance, impact}}]}} '
            "with all four required and additionalProperties false"
        )
    user = raw["user.txt"].decode()
    for placeholder in ("$tickers", "$data"):
        if user.count(placeholder) != 1:
            raise PromptError(f"{folder / 'user.txt'} must contain {placeholder} exactly once")
    if user.count("$nonce") != 2 or not re.search(r"\$data\s*\n<<<END DATA \$nonce>>>", user):
        raise PromptError(f"{folder / 'user.txt'} must frame $data as <<<DATA $nonce>>> ... <<<END DATA $nonce>>>")
    digest = hashlib.sha256(b"\0".join(raw[f] for f in FILES)).hexdigest()[:12]
    return Prompt(name=name, system=raw["system.txt"].decode(), user=user, schema=schema, version=f"{name}@{digest}")


def assign_variant(article_key: str, variants: dict[str, float]) -> str:
    """The variant an article gets: a hash of its id placed on the configured split (deterministic)."""
    u = int.from_bytes(hashlib.sha256(article_key.encode()).digest()[:8], "big") / 2**64
    total = sum(variants.values())
    acc = 0.0
    names = sorted(variants)
    for name in names:
        acc += variants[name] / total
        if u < acc:
            return name
    return names[-1]
