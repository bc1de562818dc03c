"""A ``.env`` file, read at configuration load: ``NAME=value`` lines for keys kept out of git.

Variables already in the environment win; ``export NAME=value``, ``#`` comments, blank lines and
single or double quotes are understood; nothing is expanded. Values are never logged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_LINE = re.compile(r"\s*(?:export\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*?)\s*")


def parse_dotenv(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            continue
        value = m["value"]
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[m["name"]] = value
    return out


def load_dotenv(*paths: Path) -> list[str]:
    """Set the variables of the first existing file among ``paths`` that are not set yet; their names."""
    for path in paths:
        if path.is_file():
            values = parse_dotenv(path.read_text("utf-8", errors="replace"))
            new = [k for k in values if k not in os.environ]
            for k in new:
                os.environ[k] = values[k]
            return new
    return []
