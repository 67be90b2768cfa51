"""Anthropic's Messages shape on a simulated chatbot provider (``POST /v1/proxy/messages``), for providers
whose model serves it natively (``ProviderSpec(anthropic=True)``). Pure functions, like ``synth``.

A Messages request is read as the chat request it means (``system``; text, ``tool_use`` and
``tool_result`` blocks; tools with an ``input_schema``; ``tool_choice`` auto, any, tool or none), answered
by ``synth.complete`` (where ``max_tokens``, mandatory here, only cuts a reply), and written back as a
``message`` or as its SSE events, ``message_start`` to ``message_stop``.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from router.devnet.simulator import synth

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_ROLES = ("user", "assistant")
_RATE_HEADERS = ("requests", "tokens")


def rejection(request: dict[str, Any]) -> dict[str, Any] | None:
    """The model server's 400 for a Messages request it cannot read, in Anthropic's error shape, or None."""
    problem = _problem(request)
    if problem is None:
        return None
    return {"type": "error", "error": {"type": "invalid_request_error", "message": problem}}


def _problem(request: dict[str, Any]) -> str | None:
    limit = request.get("max_tokens")
    if limit is None:
        return "max_tokens: Field required"
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        return f"max_tokens: must be an integer of at least 1, got {type(limit).__name__}"
    if not isinstance(request.get("stream", False), bool):
        return "stream: must be a boolean"
    if not isinstance(request.get("system", ""), str | list):
        return "system: must be a string or a list of text blocks"
    for index, message in enumerate(request["messages"]):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            return f"messages.{index}: must be an object whose role is user or assistant"
        content = message.get("content")
        if not isinstance(content, str) and not (
            isinstance(content, list) and all(isinstance(b, dict) and "type" in b for b in content)
        ):
            return f"messages.{index}.content: must be a string or a list of content blocks"
    tools = request.get("tools") or []
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools
    ):
        return "tools: must be a list of tools, each with a name"
    choice = request.get("tool_choice")
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool":
        if choice.get("name") not in {t["name"] for t in tools}:
            return "tool_choice.name: must name one of the tools"
    elif kind not in _TOOL_CHOICES:
        return "tool_choice.type: must be one of auto, any, tool, none"
    return None


def chat_request(request: dict[str, Any]) -> dict[str, Any]:
    """The chat request a Messages request that ``rejection`` accepts means."""
    messages: list[dict[str, Any]] = []
    if request.get("system"):
        messages.append({"role": "system", "content": _text(request["system"])})
    for message in request["messages"]:
        messages += _chat_messages(message)
    chat: dict[str, Any] = {
        "model": request.get("model"),
        "messages": messages or [{"role": "user", "content": ""}],
        "max_tokens": request["max_tokens"],
    }
    tools = [
        {
            "type": "function",
            "function": {
                "name": tool["name"],
                "description": tool.get("description", ""),
                "parameters": tool.get("input_schema") or {"type": "object"},
            },
        }
        for tool in request.get("tools") or ()
        # Server tools (web search and the like) have a versioned type of their own and no schema.
        if tool.get("type") in (None, "custom")
    ]
    if tools:
        chat["tools"] = tools
    choice = request.get("tool_choice")
    if isinstance(choice, dict):
        named = {"type": "function", "function": {"name": choice.get("name")}}
        chat["tool_choice"] = named if choice["type"] == "tool" else _TOOL_CHOICES[choice["type"]]
    return chat


def complete(request: dict[str, Any]) -> synth.Completion:
    """The reply to a Messages request that ``rejection`` accepts (one choice: Messages has no ``n``)."""
    return synth.complete(chat_request(request))


def message_body(completion: synth.Completion, *, message_id: str, model: str) -> dict[str, Any]:
    """A non-streaming ``message``."""
    choice = completion.choices[0]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [_block(choice)],
        "stop_reason": _STOP_REASONS[choice.finish_reason],
        "stop_sequence": None,
        "usage": _usage(completion),
    }


def stream_events(completion: synth.Completion, *, message_id: str, model: str) -> list[bytes]:
    """The SSE events of a streamed ``message``: ``message_start``, a ``ping``, the one content block
    (its start, a delta per word, its stop), ``message_delta`` with the stop reason and usage, and
    ``message_stop``."""
    choice = completion.choices[0]
    started: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": completion.prompt_tokens, "output_tokens": 1},
    }
    events = [_event("message_start", {"message": started}), _event("ping", {})]
    block = _block(choice)
    if choice.tool_call is not None:
        opening = {**block, "input": {}}
        arguments = choice.tool_call["function"]["arguments"]
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in _pieces(arguments)]
    else:
        opening = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(block["text"])]
    events.append(_event("content_block_start", {"index": 0, "content_block": opening}))
    events += [_event("content_block_delta", {"index": 0, "delta": delta}) for delta in deltas]
    events.append(_event("content_block_stop", {"index": 0}))
    stop = {"stop_reason": _STOP_REASONS[choice.finish_reason], "stop_sequence": None}
    events.append(_event("message_delta", {"delta": stop, "usage": _usage(completion)}))
    events.append(_event("message_stop", {}))
    return events


def rate_headers(headers: dict[str, str], now: float | None = None) -> dict[str, str]:
    """The broker's ``x-ratelimit-*`` headers as it names them on Anthropic routes (protocol.md §4.4):
    ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``, the reset an RFC 3339 time."""
    now = time.time() if now is None else now
    renamed = {}
    for resource in _RATE_HEADERS:
        for part in ("limit", "remaining"):
            if (value := headers.get(f"x-ratelimit-{part}-{resource}")) is not None:
                renamed[f"anthropic-ratelimit-{resource}-{part}"] = value
        if (reset := headers.get(f"x-ratelimit-reset-{resource}")) is not None:
            when = datetime.fromtimestamp(now + int(reset.removesuffix("s")), UTC)
            renamed[f"anthropic-ratelimit-{resource}-reset"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return renamed


def error_body(body: dict[str, Any]) -> dict[str, Any]:
    """A broker refusal as Anthropic routes send it: an object ``error`` wrapped as
    ``{"type": "error", "error": {...}}`` (protocol.md §4.7); a string ``error`` is left as it is."""
    inner = body.get("error")
    return {"type": "error", "error": inner} if isinstance(inner, dict) else body


def _block(choice: synth.Choice) -> dict[str, Any]:
    if choice.tool_call is None:
        return {"type": "text", "text": choice.text or ""}
    call = choice.tool_call
    try:
        arguments = json.loads(call["function"]["arguments"])
    except ValueError:
        arguments = {}  # arguments cut by max_tokens: the block still carries an object
    return {
        "type": "tool_use",
        "id": "toolu_" + call["id"].removeprefix("call_"),
        "name": call["function"]["name"],
        "input": arguments,
    }


def _usage(completion: synth.Completion) -> dict[str, int]:
    return {"input_tokens": completion.prompt_tokens, "output_tokens": completion.completion_tokens}


def _event(kind: str, body: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **body}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


def _pieces(text: str) -> list[str]:
    return [p if i == 0 else " " + p for i, p in enumerate(text.split(" "))]


def _chat_messages(message: dict[str, Any]) -> list[dict[str, Any]]:
    """One Messages message as chat messages: its text and tool calls, then one per tool result (last, so
    that a turn handing back results reads as "after a tool result")."""
    role, content = message["role"], message["content"]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    text = " ".join(str(b.get("text", "")) for b in content if b["type"] == "text")
    calls = [
        {
            "id": str(b.get("id", "")),
            "type": "function",
            "function": {"name": str(b.get("name", "")), "arguments": json.dumps(b.get("input", {}))},
        }
        for b in content
        if b["type"] == "tool_use"
    ]
    results = [
        {
            "role": "tool",
            "tool_call_id": str(b.get("tool_use_id", "")),
            "content": _text(b.get("content", "")),
        }
        for b in content
        if b["type"] == "tool_result"
    ]
    said: dict[str, Any] = {"role": role, "content": text}
    if calls:
        said["tool_calls"] = calls
    return [said, *results] if text or calls or not results else results


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""
