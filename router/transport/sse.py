"""Server-sent events, bytes in and events out. No sockets.

Streams are passed on event by event: a client only ever receives whole events, so a provider that drops
mid-event never leaves half a JSON object in the client's stream.
"""

from __future__ import annotations

import json
from typing import Any

from router import jsonwire

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


class MalformedEvent(ValueError):
    """An event whose data is not a JSON object: a broken or hostile provider."""


def usage_of(event: bytes) -> dict[str, Any] | None:
    """The non-empty ``usage`` object of a chunk event, if it carries one (the final chunk does).

    An event's data must be a JSON object, else ``MalformedEvent``. Events without data (comments, blank
    lines) and ``[DONE]`` carry no usage.
    """
    data = _data(event)
    if data is None or data == b"[DONE]":
        return None
    try:
        chunk = jsonwire.loads(data)
    except (ValueError, RecursionError):
        raise MalformedEvent("its data is not JSON") from None
    if not isinstance(chunk, dict):
        raise MalformedEvent("its data is not a JSON object")
    usage = chunk.get("usage")
    return usage if isinstance(usage, dict) and usage else None


def _data(event: bytes) -> bytes | None:
    """An event's data: the values of its ``data:`` lines joined by newlines (the SSE rule), or None."""
    values = [line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    if not values:
        return None
    return values[0] if len(values) == 1 else b"\n".join(values)


def error_event(message: str, code: str) -> bytes:
    """An OpenAI-shaped error event for a stream that cannot go on."""
    body = {"error": {"message": message, "type": "provider_error", "code": code, "param": None}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"
