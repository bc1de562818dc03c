"""LLM providers (Gemini, OpenAI; an offline scorer), versioned prompts and the ``news_llm`` gateway."""
