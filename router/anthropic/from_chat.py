"""A chat completion as a Messages reply. Pure: the provider's JSON in, Anthropic's ``message`` out.
What maps:

    message.content            a text block (if not empty)
    message.tool_calls         tool_use blocks, ``arguments`` decoded as their input (ids kept, so the
                               client's tool_result finds its call again on the next turn)
    finish_reason              stop_reason: stop -> end_turn (stop_sequence when vLLM's ``stop_reason``
                               names one of the request's), length -> max_tokens, tool_calls -> tool_use,
                               content_filter -> refusal; any reply with tool calls is tool_use
    usage                      input_tokens (cached tokens apart, as cache_read_input_tokens), output_tokens
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


class MalformedReply(ValueError):
    """A provider's 2xx that is no chat completion (its message says what is wrong)."""


def from_chat(doc: Mapping[str, Any], *, model: str, stop_sequences: Sequence[str]) -> dict[str, Any]:
    """The Messages reply for the chat completion ``doc``; ``model`` is the request's, for a reply that
    names none. Raises ``MalformedReply`` for a reply without a message or with tool arguments that
    are not a JSON object (Anthropic's tool input must be one)."""
    choices = doc.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(message, dict):
        raise MalformedReply("it has no choices[0].message")
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        content.append(tool_use_block(call))
    tool_use = any(block["type"] == "tool_use" for block in content)
    reason, sequence = stop_reason(choice, stop_sequences, tool_use=tool_use)
    return {
        "id": message_id(doc.get("id")),
        "type": "message",
        "role": "assistant",
        "model": doc.get("model") if isinstance(doc.get("model"), str) else model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_of(doc.get("usage")),
    }


def tool_use_block(call: Any) -> dict[str, Any]:
    """A whole tool call as a tool_use block."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise MalformedReply("a tool call has no function name")
    return {
        "type": "tool_use",
        "id": call.get("id") or tool_use_id(),
        "name": function["name"],
        "input": tool_input(function.get("arguments")),
    }


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's ``arguments`` (JSON text) as Anthropic's ``input`` object; none at all is ``{}``."""
    if arguments is None or arguments == "":
        return {}
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else arguments
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise MalformedReply("a tool call's arguments are not a JSON object")
    return value


def stop_reason(
    choice: Mapping[str, Any], stop_sequences: Sequence[str], *, tool_use: bool
) -> tuple[str, str | None]:
    """``(stop_reason, stop_sequence)`` for a choice's ``finish_reason``. vLLM names the stop string
    that ended the text in ``stop_reason``; other servers say only "stop", which reads as end_turn."""
    if tool_use:
        return "tool_use", None
    finish = choice.get("finish_reason")
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return _STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn", None


def usage_of(usage: Any) -> dict[str, int]:
    """An OpenAI ``usage`` object as Anthropic's: its input tokens exclude those read from cache."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    prompt = _count(usage.get("prompt_tokens"))
    counted = {
        "input_tokens": max(prompt - cached, 0),
        "output_tokens": _count(usage.get("completion_tokens")),
    }
    if cached:
        counted["cache_read_input_tokens"] = cached
    return counted


def message_id(chat_id: Any) -> str:
    """``msg_`` and the chat id without its ``chatcmpl-`` (the broker's key stays in it), or a new one."""
    if isinstance(chat_id, str) and chat_id:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex


def tool_use_id() -> str:
    """An id for a tool call its provider gave none."""
    return "toolu_" + uuid.uuid4().hex


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
