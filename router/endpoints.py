"""The OpenAI routes we serve. A module of its own so that the request parser (``router.request``) and
the field checks it runs (``router.validate``) can both name them without importing each other."""

from __future__ import annotations

import enum

# The 0G service types billed and rate-limited by the image (protocol.md §4.5, §4.7).
_IMAGE_SERVICES = frozenset({"text-to-image", "image-editing"})


class Endpoint(enum.Enum):
    """An OpenAI route we serve: its path under the provider base URL and the 0G service type behind it.

    ``makes_images``: the route is priced, reserved and rate-limited per image (its ``n``), and its
    replies are verified picture by picture.
    """

    CHAT = ("/chat/completions", "chatbot")
    EMBEDDINGS = ("/embeddings", "embedding")
    IMAGES = ("/images/generations", "text-to-image")
    IMAGE_EDITS = ("/images/edits", "image-editing")
    TRANSCRIPTIONS = ("/audio/transcriptions", "speech-to-text")
    # Anthropic's Messages API, passed through to a provider that serves it natively.
    MESSAGES = ("/messages", "chatbot")

    def __init__(self, path: str, service_type: str) -> None:
        self.path = path
        self.service_type = service_type
        self.makes_images = service_type in _IMAGE_SERVICES
