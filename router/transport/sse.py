"""Server-sent events, bytes in and events out. No sockets.

Streams are passed on event by event: a client only ever receives whole events, so a provider that drops
mid-event never leaves half a JSON object in the client's stream.
"""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"


class SSEFramer:
    """Cuts a byte stream into whole events, each with its blank-line terminator."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk if self._buffer else chunk
        events = []
        start = 0
        while True:
            end = _event_end(buffer, start)
            if end < 0:
                break
            events.append(buffer[start:end])
            start = end
        self._buffer = buffer[start:]
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated."""
        return self._buffer


def _event_end(buffer: bytes, start: int) -> int:
    lf = buffer.find(b"\n\n", start)
    crlf = buffer.find(b"\r\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 4
    return lf + 2 if lf >= 0 else -1


def is_done(event: bytes) -> bool:
    return event.startswith((b"data: [DONE]", b"data:[DONE]"))


def usage_of(event: bytes) -> dict[str, Any] | None:
    """The non-empty ``usage`` object of a chunk event, if it carries one (the final chunk does)."""
    if b'"usage"' not in event:
        return None
    for line in event.splitlines():
        if not line.startswith(b"data:"):
            continue
        try:
            chunk = json.loads(line[5:])
        except (ValueError, RecursionError):
            return None
        usage = chunk.get("usage") if isinstance(chunk, dict) else None
        if isinstance(usage, dict) and usage:
            return usage
    return None


def error_event(message: str, code: str) -> bytes:
    """An OpenAI-shaped error event for a stream that cannot go on."""
    body = {"error": {"message": message, "type": "provider_error", "code": code, "param": None}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"
