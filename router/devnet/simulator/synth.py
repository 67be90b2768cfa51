"""Synthetic, deterministic model output for simulated providers. Pure functions: request in, bytes out.

The same request always yields the same text (seeded by the request), so tests can compare runs, and the
work per request is tiny, so a simulator is never what a benchmark measures.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from typing import Any

DEFAULT_COMPLETION_TOKENS = 16
MAX_COMPLETION_TOKENS = 4096
_WORDS = (
    "the",
    "network",
    "routes",
    "each",
    "request",
    "to",
    "a",
    "provider",
    "that",
    "answers",
    "quickly",
    "and",
    "settles",
    "fees",
    "on",
    "chain",
    "while",
    "the",
    "router",
    "keeps",
    "limits",
    "balances",
    "and",
    "health",
    "in",
    "view",
    "for",
    "every",
    "wallet",
    "it",
    "serves",
)


@dataclass(frozen=True, slots=True)
class Completion:
    """What the model "said": text or one tool call, and the token counts billed for it."""

    text: str | None
    tool_call: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_call else "stop"

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def rejection(request: dict[str, Any]) -> dict[str, Any] | None:
    """The model server's 400 body for a chat request with a field of the wrong type, or None.

    Like vLLM, the model server checks the fields it reads before it generates anything; the broker passes
    its 400 through (protocol.md §4.2, step 17). Only what ``complete`` reads is checked.
    """
    problem = _chat_problem(request)
    if problem is None:
        return None
    param, message = problem
    return {"error": {"message": message, "type": "BadRequestError", "param": param, "code": 400}}


_KINDS: tuple[tuple[str, type, str], ...] = (
    ("stream", bool, "a boolean"),
    ("stream_options", dict, "an object"),
    ("response_format", dict, "an object"),
    ("tools", list, "a list"),
)


def _chat_problem(request: dict[str, Any]) -> tuple[str, str] | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = request.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return name, f"{name} must be an integer of at least 1, got {type(value).__name__}"
    for name, kind, shape in _KINDS:
        value = request.get(name)
        if value is not None and not isinstance(value, kind):
            return name, f"{name} must be {shape}, got {type(value).__name__}"
    for index, message in enumerate(request["messages"]):
        if not isinstance(message, dict):
            return f"messages.{index}", "a message must be an object"
    for index, tool in enumerate(request.get("tools") or ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return f"tools.{index}", "a tool must be an object whose function has a name"
    return None


def complete(request: dict[str, Any]) -> Completion:
    """The completion for a chat request that ``rejection`` accepts."""
    seed = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).digest()
    rng = random.Random(seed)  # noqa: S311 - reproducible filler text, not cryptography
    wanted = request.get("max_completion_tokens") or request.get("max_tokens") or DEFAULT_COMPLETION_TOKENS
    count = max(1, min(int(wanted), MAX_COMPLETION_TOKENS))
    words = [rng.choice(_WORDS) for _ in range(count)]
    prompt_tokens = sum(len(_text_of(m).split()) for m in request["messages"]) or 1
    tools = request.get("tools") or []
    # Like a real model, it answers in text once it has been handed a tool's result: agent loops end
    # only on a text answer, so a tool call on every turn would never let one finish.
    if tools and not _after_tool_result(request["messages"]):
        name = tools[0].get("function", {}).get("name", "tool")
        call = {
            "id": "call_" + seed.hex()[:24],
            "type": "function",
            "function": {"name": name, "arguments": json.dumps({"input": " ".join(words[:3])})},
        }
        return Completion(None, call, prompt_tokens, count)
    fmt = (request.get("response_format") or {}).get("type")
    text = (
        json.dumps({"answer": " ".join(words)}) if fmt in ("json_object", "json_schema") else " ".join(words)
    )
    return Completion(text, None, prompt_tokens, count)


def response_body(completion: Completion, *, chat_id: str, model: str) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object, ``id`` already rewritten as the broker does."""
    message: dict[str, Any] = {"role": "assistant", "content": completion.text}
    if completion.tool_call:
        message["tool_calls"] = [completion.tool_call]
    return {
        "id": f"chatcmpl-{chat_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": completion.finish_reason}],
        "usage": completion.usage(),
    }


def stream_events(completion: Completion, *, chat_id: str, model: str) -> list[bytes]:
    """SSE events: role, one per word (or the tool call), the finish, the usage chunk, ``[DONE]``.

    The usage chunk (empty ``choices``) is always sent: the broker forces ``include_usage``.
    """
    base = {"id": f"chatcmpl-{chat_id}", "object": "chat.completion.chunk", "created": int(time.time())}
    base["model"] = model

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return _sse(body)

    events = [chunk({"role": "assistant", "content": ""})]
    if completion.tool_call:
        events.append(chunk({"tool_calls": [{"index": 0, **completion.tool_call}]}))
    else:
        text = completion.text or ""
        pieces = text.split(" ")
        events += [chunk({"content": p if i == 0 else " " + p}) for i, p in enumerate(pieces)]
    events.append(chunk({}, completion.finish_reason))
    events.append(_sse({**base, "choices": [], "usage": completion.usage()}))
    events.append(b"data: [DONE]\n\n")
    return events


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _after_tool_result(messages: list[Any]) -> bool:
    return bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"


def _text_of(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


EMBEDDING_DIMENSIONS = 8


def embedding_body(payload: dict[str, Any], *, model: str) -> tuple[dict[str, Any], int]:
    """An ``embeddings`` list response and its prompt-token count; vectors are seeded by the text."""
    data, tokens = [], 0
    for index, text in enumerate(payload["input"]):
        tokens += max(1, len(text.split()))
        digest = hashlib.sha256(text.encode()).digest()
        vector = [round(b / 255 - 0.5, 6) for b in digest[:EMBEDDING_DIMENSIONS]]
        data.append({"object": "embedding", "index": index, "embedding": vector})
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return body, tokens


def images(payload: dict[str, Any]) -> list[bytes]:
    """``n`` tiny distinct "images" for a prompt (bytes; the route serves them base64-encoded)."""
    seed = hashlib.sha256(payload["prompt"].encode()).digest()
    return [b"\x89PNG\r\n\x1a\n" + hashlib.sha256(seed + bytes([i])).digest() for i in range(payload["n"])]


def transcription_text(audio: bytes) -> str:
    """Words seeded by the audio bytes: one word per 1,000 bytes, at least one."""
    rng = random.Random(hashlib.sha256(audio).digest())  # noqa: S311 - reproducible filler text
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, len(audio) // 1000)))
