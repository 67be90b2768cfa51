"""Synthetic, deterministic model output for simulated providers. Pure functions: request in, bytes out.

The same request always yields the same reply (seeded by the request), so tests can compare runs, and the
work per request is tiny, so a simulator is never what a benchmark measures. The reply behaves as a model's
does where clients depend on it: tool calls whose arguments are valid against the tool's schema, under
``tool_choice`` (none, auto, required or a named function); JSON valid against a ``json_schema`` response
format (an object for ``json_object``); ``n`` distinct choices; replies of their own length, which
``max_tokens`` only cuts; and finish reasons ``tool_calls``, ``length`` (cut by ``max_tokens``) or
``stop``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from dataclasses import dataclass
from typing import Any

from router.devnet.simulator.schema_values import SchemaValues

DEFAULT_COMPLETION_TOKENS = 16
MAX_COMPLETION_TOKENS = 4096
MAX_CHOICES = 128
_DISTINCT_TRIES = 8
# JSON mode looks for a schema at this many braces of a message at most: a prompt is not parsed whole.
_MAX_BRACES = 64
_TOKEN = re.compile(r"\S+")
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
class Choice:
    """One choice of a reply: its text or its one tool call, why it ended, and its completion tokens."""

    text: str | None
    tool_call: dict[str, Any] | None
    finish_reason: str
    tokens: int


@dataclass(frozen=True, slots=True)
class Completion:
    """What the model "said": ``n`` choices, and the token counts billed for them (prompt once)."""

    choices: tuple[Choice, ...]
    prompt_tokens: int

    @property
    def text(self) -> str | None:
        """The first choice's text (the only one unless the request asked for ``n``)."""
        return self.choices[0].text

    @property
    def completion_tokens(self) -> int:
        return sum(choice.tokens for choice in self.choices)

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
    ("ignore_eos", bool, "a boolean"),
    ("stream_options", dict, "an object"),
    ("response_format", dict, "an object"),
    ("tools", list, "a list"),
)
_TOOL_CHOICES = ("none", "auto", "required")
_FORMATS = ("text", "json_object", "json_schema")


def _chat_problem(request: dict[str, Any]) -> tuple[str, str] | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = request.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return name, f"{name} must be an integer of at least 1, got {type(value).__name__}"
    n = request.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES):
        return "n", f"n must be an integer from 1 to {MAX_CHOICES}, got {n!r}"
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
    return _tool_choice_problem(request) or _format_problem(request.get("response_format"))


def _tool_choice_problem(request: dict[str, Any]) -> tuple[str, str] | None:
    choice, names = request.get("tool_choice"), _tool_names(request)
    if choice is None or choice in ("none", "auto"):
        return None
    if choice == "required":
        return None if names else ("tool_choice", 'tool_choice "required" needs tools')
    named = choice.get("function") if isinstance(choice, dict) else None
    name = named.get("name") if isinstance(named, dict) else None
    if not isinstance(name, str):
        return "tool_choice", f"tool_choice must be one of {', '.join(_TOOL_CHOICES)} or name a function"
    if name not in names:
        return "tool_choice", f'tool_choice names the function "{name}", which is not among the tools'
    return None


def _format_problem(fmt: dict[str, Any] | None) -> tuple[str, str] | None:
    if fmt is None:
        return None
    if fmt.get("type") not in _FORMATS:
        return "response_format.type", f"response_format.type must be one of {', '.join(_FORMATS)}"
    spec = fmt.get("json_schema")
    if fmt["type"] == "json_schema" and (
        not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict | bool)
    ):
        return "response_format.json_schema", "response_format.json_schema must be an object with a schema"
    return None


def complete(request: dict[str, Any]) -> Completion:
    """The completion for a chat request that ``rejection`` accepts.

    A text reply is ``DEFAULT_COMPLETION_TOKENS`` words and stops; a smaller ``max_tokens`` (or
    ``max_completion_tokens``) cuts it (finish_reason ``length``). With vLLM's ``ignore_eos`` the model
    talks until it is cut: exactly ``max_tokens`` words (at most ``MAX_COMPLETION_TOKENS``), which is how
    a benchmark or a test sets a reply's size. JSON output and tool calls are as long as their values, and
    cut when ``max_tokens`` is shorter.
    """
    seed = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).digest()
    rng = random.Random(seed)  # noqa: S311 - reproducible filler text, not cryptography
    limit = request.get("max_completion_tokens") or request.get("max_tokens")
    prompt_tokens = sum(len(_text_of(m).split()) for m in request["messages"]) or 1
    plan = _plan(request)
    choices: list[Choice] = []
    for index in range(request.get("n") or 1):
        call_id = "call_" + hashlib.sha256(seed + index.to_bytes(4, "big")).hexdigest()[:24]
        # n choices differ, as sampled ones do: a repeat is drawn again (a one-word reply may run out).
        for _ in range(_DISTINCT_TRIES):
            choice = _choice(plan, rng, limit, call_id, request.get("ignore_eos") is True)
            if all(_said(choice) != _said(earlier) for earlier in choices):
                break
        choices.append(choice)
    return Completion(tuple(choices), prompt_tokens)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every choice of a reply is: a call to ``tool`` (its function), JSON for ``schema``, or text."""

    tool: dict[str, Any] | None = None
    schema: Any = None
    json: bool = False


def _plan(request: dict[str, Any]) -> _Plan:
    tools = [t["function"] for t in request.get("tools") or ()]
    choice = request.get("tool_choice")
    if tools and choice != "none":
        if isinstance(choice, dict):
            return _Plan(tool=next(t for t in tools if t["name"] == choice["function"]["name"]))
        # Like a real model, under "auto" it answers in text once it has been handed a tool's result:
        # agent loops end only on a text answer, so a tool call on every turn would never let one end.
        if choice == "required" or not _after_tool_result(request["messages"]):
            return _Plan(tool=tools[0])
    fmt = request.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return _Plan(schema=fmt["json_schema"].get("schema", {"type": "object"}), json=True)
    if fmt.get("type") == "json_object":
        # JSON mode sends no schema: a model follows the one the prompt gives, if it gives one.
        return _Plan(schema=_schema_in_prompt(request["messages"]) or {"type": "object"}, json=True)
    return _Plan()


def _choice(plan: _Plan, rng: random.Random, limit: int | None, call_id: str, ignore_eos: bool) -> Choice:
    if plan.tool is not None:
        parameters = plan.tool.get("parameters")
        schema = parameters if isinstance(parameters, dict) else {}
        # Arguments are always an object, even for a schema that does not say so.
        schema = {"type": "object", **schema}
        arguments, tokens, cut = _cut(json.dumps(SchemaValues(schema, rng, _WORDS).value()), limit)
        function = {"name": plan.tool["name"], "arguments": arguments}
        call = {"id": call_id, "type": "function", "function": function}
        return Choice(None, call, "length" if cut else "tool_calls", tokens)
    if plan.json:
        text, tokens, cut = _cut(json.dumps(SchemaValues(plan.schema, rng, _WORDS).value()), limit)
        return Choice(text, None, "length" if cut else "stop", tokens)
    if ignore_eos:
        count, finish = min(limit or MAX_COMPLETION_TOKENS, MAX_COMPLETION_TOKENS), "length"
    else:
        count = min(limit or DEFAULT_COMPLETION_TOKENS, DEFAULT_COMPLETION_TOKENS)
        finish = "length" if count < DEFAULT_COMPLETION_TOKENS else "stop"
    return Choice(" ".join(rng.choice(_WORDS) for _ in range(count)), None, finish, count)


def _cut(text: str, limit: int | None) -> tuple[str, int, bool]:
    """``text`` cut after ``limit`` tokens (whitespace-separated pieces, as prompts are counted), its token
    count, and whether it was cut."""
    ends = [match.end() for match in _TOKEN.finditer(text)]
    if limit is None or len(ends) <= limit:
        return text, max(1, len(ends)), False
    return text[: ends[limit - 1]], limit, True


def _said(choice: Choice) -> str | None:
    return choice.text if choice.tool_call is None else choice.tool_call["function"]["arguments"]


def _tool_names(request: dict[str, Any]) -> set[str]:
    return {t["function"]["name"] for t in request.get("tools") or ()}


def _schema_in_prompt(messages: list[Any]) -> dict[str, Any] | None:
    """The last JSON schema (an object with ``properties``) written out in the messages, if any; objects
    nested in another (a schema's ``$defs``) are part of it, not schemas of their own."""
    decoder = json.JSONDecoder()
    for message in reversed(messages):
        text, found, at = _text_of(message), None, 0
        for _ in range(_MAX_BRACES):
            start = text.find("{", at)
            if start < 0:
                break
            try:
                candidate, at = decoder.raw_decode(text, start)
            except ValueError:
                at = start + 1
                continue
            if isinstance(candidate, dict) and isinstance(candidate.get("properties"), dict):
                found = candidate
        if found is not None:
            return found
    return None


def response_body(completion: Completion, *, chat_id: str, model: str) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object, ``id`` already rewritten as the broker does."""
    choices = []
    for index, choice in enumerate(completion.choices):
        message: dict[str, Any] = {"role": "assistant", "content": choice.text}
        if choice.tool_call:
            message["tool_calls"] = [choice.tool_call]
        choices.append({"index": index, "message": message, "finish_reason": choice.finish_reason})
    return {
        "id": f"chatcmpl-{chat_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": completion.usage(),
    }


def stream_events(completion: Completion, *, chat_id: str, model: str) -> list[bytes]:
    """SSE events, choice by choice: the role, one per word (or the tool call's name, then its arguments
    word by word), the finish; then the usage chunk and ``[DONE]``.

    The usage chunk (empty ``choices``) is always sent: the broker forces ``include_usage``.
    """
    base = {"id": f"chatcmpl-{chat_id}", "object": "chat.completion.chunk", "created": int(time.time())}
    base["model"] = model
    events = []
    for index, choice in enumerate(completion.choices):

        def chunk(delta: dict[str, Any], finish: str | None = None, index: int = index) -> bytes:
            body = {**base, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
            return _sse(body)

        events.append(chunk({"role": "assistant", "content": ""}))
        if choice.tool_call:
            call, function = choice.tool_call, choice.tool_call["function"]
            opening = {"index": 0, "id": call["id"], "type": "function"}
            events.append(chunk({"tool_calls": [{**opening, "function": {**function, "arguments": ""}}]}))
            events += [
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                for piece in _pieces(function["arguments"])
            ]
        else:
            events += [chunk({"content": piece}) for piece in _pieces(choice.text or "")]
        events.append(chunk({}, choice.finish_reason))
    events.append(_sse({**base, "choices": [], "usage": completion.usage()}))
    events.append(b"data: [DONE]\n\n")
    return events


def _pieces(text: str) -> list[str]:
    """``text`` word by word, each word after the first with the space before it."""
    return [p if i == 0 else " " + p for i, p in enumerate(text.split(" "))]


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


def edited_images(payload: dict[str, Any]) -> list[bytes]:
    """``n`` tiny distinct "edits" (bytes) of the given images (and mask) for a prompt, seeded by all."""
    seed = hashlib.sha256(payload["prompt"].encode())
    for image in (*payload["images"], payload.get("mask") or b""):
        seed.update(hashlib.sha256(image).digest())
    digest = seed.digest()
    return [b"\x89PNG\r\n\x1a\n" + hashlib.sha256(digest + bytes([i])).digest() for i in range(payload["n"])]


def transcription_text(audio: bytes) -> str:
    """Words seeded by the audio bytes: one word per 1,000 bytes, at least one."""
    rng = random.Random(hashlib.sha256(audio).digest())  # noqa: S311 - reproducible filler text
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, len(audio) // 1000)))
