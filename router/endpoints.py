"""The OpenAI routes we serve. A module of its own so that the request parser (``router.request``) and
the field checks it runs (``router.validate``) can both name them without importing each other."""

from __future__ import annotations

import enum


class Endpoint(enum.Enum):
    """An OpenAI route we serve: its path under the provider base URL and the 0G service type behind it."""

    CHAT = ("/chat/completions", "chatbot")
    EMBEDDINGS = ("/embeddings", "embedding")
    IMAGES = ("/images/generations", "text-to-image")
    TRANSCRIPTIONS = ("/audio/transcriptions", "speech-to-text")

    def __init__(self, path: str, service_type: str) -> None:
        self.path = path
        self.service_type = service_type
