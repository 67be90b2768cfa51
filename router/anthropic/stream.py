"""Streams on the Messages route, re-encoded event by event: bytes in, bytes out, no I/O.

``ChatToMessages`` turns a chat-completions stream into Anthropic's events:

    first chunk                message_start (the usage to come is reported by message_delta), ping
    delta.content              content_block_start (text) once, then content_block_delta text_delta
    delta.tool_calls[i]        content_block_start (tool_use, with id and name), then input_json_delta
                               fragments of its arguments; a new block closes the one before
    finish_reason, usage       kept for the end
    [DONE]                     content_block_stop, message_delta (stop_reason, stop_sequence, usage),
                               message_stop
    an error event             Anthropic's ``error`` event, which ends the stream

``NativeRelay`` relays a provider's own Anthropic stream: only the ``[DONE]`` our stream ends with is
dropped and our mid-stream error event re-encoded. SSE comments (a synchronous TEE verdict) pass through
both unchanged; clients skip them.

``MessagesStream`` wraps the dispatcher's ``StreamReply`` so that the faces relay the re-encoded events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Protocol

from router.anthropic.errors import error_event
from router.anthropic.from_chat import message_id as new_message_id
from router.anthropic.from_chat import stop_reason, tool_use_id, usage_of
from router.replies import StreamReply
from router.transport.sse import is_done


class Translator(Protocol):
    """Re-encodes one whole SSE event as the events the client gets (none, one or several)."""

    def feed(self, event: bytes) -> list[bytes]: ...


def sse(kind: str, data: dict[str, Any]) -> bytes:
    """One Anthropic stream event: its type named twice, as Anthropic sends it."""
    return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, **data}).encode() + b"\n\n"


def _data(event: bytes) -> bytes | None:
    """An event's data (its ``data:`` lines joined), or None for a comment or a blank event."""
    values = [line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(values) if values else None


def _our_error(data: bytes) -> str | None:
    """The message of the dispatcher's own mid-stream error event (OpenAI-shaped), if ``data`` is one."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("type") == "error" or "error" not in doc:
        return None
    error = doc["error"]
    message = error.get("message") if isinstance(error, dict) else error
    return str(message)


class ChatToMessages:
    """A chat-completions stream as Anthropic's. ``model`` names the message until a chunk does;
    ``stop_sequences`` are the request's, to tell a stop sequence from the end of a turn."""

    __slots__ = (
        "_block",
        "_ended",
        "_finish",
        "_model",
        "_open",
        "_started",
        "_stop_sequences",
        "_tools",
        "_usage",
    )

    def __init__(self, *, model: str, stop_sequences: Sequence[str] = ()) -> None:
        self._model = model
        self._stop_sequences = tuple(stop_sequences)
        self._started = False
        self._ended = False
        self._block = -1  # the index of the last block started
        self._open: str | None = None  # "text", or "tool:<i>" for upstream tool call i; None: no block open
        self._tools: dict[int, int] = {}  # upstream tool call index -> our block index
        self._finish: dict[str, Any] = {}  # the choice fields that decide the stop reason
        self._usage: Any = None

    def feed(self, event: bytes) -> list[bytes]:
        if self._ended:
            return []
        data = _data(event)
        if data is None:
            return [event] if event.startswith(b":") else []
        if is_done(event):
            return self._end()
        if (message := _our_error(data)) is not None:
            self._ended = True
            return [error_event(message)]
        chunk = json.loads(data)  # the transport checked every event's data is a JSON object
        out = [] if self._started else self._start(chunk)
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        choices = choices if isinstance(choices, list) else []
        # A Messages request has one choice, index 0 (Messages have no ``n``).
        choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
        if choice is None:
            return out
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        if isinstance(text := delta.get("content"), str) and text:
            out += self._text(text)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                out += self._tool_call(call)
                if self._ended:
                    return out
        if choice.get("finish_reason") is not None:
            self._finish = choice
        return out

    def _start(self, chunk: dict[str, Any]) -> list[bytes]:
        self._started = True
        if isinstance(chunk.get("model"), str):
            self._model = chunk["model"]
        message: dict[str, Any] = {
            "id": new_message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # The counts come at the end of a chat-completions stream; message_delta carries them.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [sse("message_start", {"message": message}), sse("ping", {})]

    def _text(self, text: str) -> list[bytes]:
        out = [] if self._open == "text" else self._open_block("text", {"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": text}
        return [*out, sse("content_block_delta", {"index": self._block, "delta": delta})]

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        index = call.get("index", 0)
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        out: list[bytes] = []
        key = f"tool:{index}"
        if index not in self._tools:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or tool_use_id(),
                "name": function.get("name") or "",
                "input": {},
            }
            out = self._open_block(key, block)
            self._tools[index] = self._block
        elif self._open != key:
            # Anthropic's blocks stream one after another: a closed block cannot take more input.
            self._ended = True
            message = (
                "the provider interleaved the arguments of two tool calls, which this stream cannot carry"
            )
            return [error_event(message)]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(sse("content_block_delta", {"index": self._block, "delta": delta}))
        return out

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close_block()
        self._block += 1
        self._open = kind
        return [*out, sse("content_block_start", {"index": self._block, "content_block": block})]

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [sse("content_block_stop", {"index": self._block})]

    def _end(self) -> list[bytes]:
        self._ended = True
        out = [] if self._started else self._start({})
        out += self._close_block()
        reason, sequence = stop_reason(self._finish, self._stop_sequences, tool_use=bool(self._tools))
        usage = usage_of(self._usage)
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        out.append(sse("message_delta", {"delta": delta, "usage": usage}))
        out.append(sse("message_stop", {}))
        return out


class NativeRelay:
    """A provider's own Anthropic stream, relayed: our ``[DONE]`` dropped, our error event re-encoded."""

    __slots__ = ()

    def feed(self, event: bytes) -> list[bytes]:
        if is_done(event):
            return []
        data = _data(event)
        if data is not None and (message := _our_error(data)) is not None:
            return [error_event(message)]
        return [event]


class MessagesStream(StreamReply):
    """The faces relay a ``StreamReply``: this is one whose ``events()`` are ``inner``'s re-encoded by
    ``translator``. It wraps rather than builds, so ``StreamReply.__init__`` is not run: ``inner`` owns
    the attempt, and closing this closes it. ``usage``, ``charge`` and ``verification`` are ``inner``'s
    once the stream has ended."""

    def __init__(self, inner: StreamReply, translator: Translator) -> None:
        self._inner = inner
        self._translator = translator
        self.provider = inner.provider
        self.attempts = inner.attempts
        self.ttft = inner.ttft
        self.res_key = inner.res_key
        self.verifiability = inner.verifiability
        self.verification = None
        self.usage = None
        self.charge = inner.charge
        self._iterator = self._relay()

    def events(self) -> AsyncGenerator[bytes]:
        return self._iterator

    async def aclose(self) -> None:
        await self._iterator.aclose()
        await self._inner.aclose()

    async def _relay(self) -> AsyncGenerator[bytes]:
        feed = self._translator.feed
        async for event in self._inner.events():
            for out in feed(event):
                yield out
        inner = self._inner
        self.usage, self.charge, self.verification = inner.usage, inner.charge, inner.verification
