"""Provider API keys, read from the environment only (never from config files or events).

Kept apart from the provider modules so that choosing a provider does not import its SDK:
google-genai and openai take 1.5 s each to import, and most processes never call an LLM.
"""

from __future__ import annotations

import os

GEMINI_KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
OPENAI_KEY_ENV = "OPENAI_API_KEY"


def gemini_key() -> str:
    return next((os.environ[k] for k in GEMINI_KEY_ENVS if os.environ.get(k)), "")


def openai_key() -> str:
    return os.environ.get(OPENAI_KEY_ENV, "")
