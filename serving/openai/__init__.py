"""The OpenAI-compatible API: ``POST /v1/completions`` and ``POST /v1/chat/completions``."""
