"""A Messages request as a chat-completions request, for providers that serve only OpenAI's format.

Pure: a payload ``validate_request`` passed in, a chat-completions payload out (``provider``, our routing
field, carried over for ``router.request`` to take). What maps:

    system (string or text blocks)        a leading system message
    text and image blocks                 content parts (images as ``image_url``: a data URL, or the URL)
    tool_use blocks (assistant)           ``tool_calls``, the input JSON-encoded as ``arguments``
    tool_result blocks (user)             ``tool`` messages, before the rest of the turn; their images
                                          join the user's content (a tool message holds only text)
    tools / tool_choice                   functions / auto, required, a named function, none
    disable_parallel_tool_use             ``parallel_tool_calls: false``
    output_config.format (a schema)       ``response_format`` json_schema
    max_tokens, stop_sequences, temperature, top_p, top_k, metadata.user_id, stream
                                          max_tokens, stop, temperature, top_p, top_k, user, stream

Dropped, because chat completions have no such thing and leaving them out changes no answer's shape:
``thinking`` and ``output_config.effort`` (the model answers without a thinking budget or an effort
level), Anthropic's own service hints (``service_tier``, ``speed``, ``inference_geo``, ``cache_control``,
``diagnostics``, ``workspace_id``, ``user_profile_id``), blocks' ``cache_control`` and ``citations``, and
the assistant's earlier thinking blocks. Anything else (server tools, document blocks, an unknown field)
is refused with a 400 naming it, rather than silently lost.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from router.anthropic.validate import CLIENT_TOOL_TYPES
from router.errors import InvalidRequest, clipped

_CARRIED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "tools",
        "tool_choice",
        "output_config",
        "provider",
    }
)
_DROPPED = frozenset(
    {
        "thinking",
        "service_tier",
        "speed",
        "inference_geo",
        "cache_control",
        "diagnostics",
        "workspace_id",
        "user_profile_id",
    }
)
_SAME_NAME = ("temperature", "top_p", "top_k", "provider")
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}
_NO_PROVIDER = "and no provider of this model serves the Anthropic format natively"


def to_chat(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The chat-completions payload for a checked Messages request. Raises ``InvalidRequest`` naming what
    chat completions cannot carry."""
    unknown = sorted(name for name, value in payload.items() if value is not None and name not in _CARRIED)
    if unwanted := [name for name in unknown if name not in _DROPPED]:
        names = ", ".join(f"`{clipped(name, quote=False)}`" for name in unwanted)
        raise InvalidRequest(
            f"{names} cannot be translated to chat completions, {_NO_PROVIDER}", param=unwanted[0]
        )
    chat: dict[str, Any] = {
        "model": payload["model"],
        "messages": _messages(payload),
        "max_tokens": payload["max_tokens"],
    }
    for name in _SAME_NAME:
        if (value := payload.get(name)) is not None:
            chat[name] = value
    if payload.get("stop_sequences"):
        chat["stop"] = payload["stop_sequences"]
    if (user := (payload.get("metadata") or {}).get("user_id")) is not None:
        chat["user"] = user
    if payload.get("stream"):
        # The usage comes in the stream's last chunk: the final message_delta reports it.
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    if (fmt := (payload.get("output_config") or {}).get("format")) is not None:
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt["schema"]},
        }
    tools = payload.get("tools") or []
    if tools:
        chat["tools"] = [_function(tool, f"tools[{index}]") for index, tool in enumerate(tools)]
    if (choice := payload.get("tool_choice")) is not None:
        if choice["type"] == "tool":
            chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        elif tools:
            chat["tool_choice"] = _TOOL_CHOICE[choice["type"]]
        if tools and choice.get("disable_parallel_tool_use") and choice["type"] != "none":
            chat["parallel_tool_calls"] = False
    return chat


def _messages(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    system = payload.get("system")
    if system is not None:
        texts = [{"type": "text", "text": system}] if isinstance(system, str) else system
        messages.append({"role": "system", "content": _content([_text_part(b) for b in texts])})
    for index, message in enumerate(payload["messages"]):
        where = f"messages[{index}]"
        if message["role"] == "assistant":
            messages.append(_assistant(message["content"], where))
        else:
            messages.extend(_user(message["content"], where))
    return messages


def _user(content: str | list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as tool messages, then its text and images (if any)."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    turn: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        at = f"{where}.content[{index}]"
        kind = block["type"]
        if kind == "text":
            parts.append(_text_part(block))
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "tool_result":
            text, images = _tool_result(block, at)
            turn.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
            parts.extend(images)
        else:
            raise _untranslatable(kind, at)
    if parts:
        turn.append({"role": "user", "content": _content(parts)})
    return turn


def _assistant(content: str | list[dict[str, Any]], where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        kind = block["type"]
        if kind == "text":
            texts.append(_text_part(block))
        elif kind == "tool_use":
            function = {"name": block["name"], "arguments": json.dumps(block["input"])}
            calls.append({"id": block["id"], "type": "function", "function": function})
        elif kind not in ("thinking", "redacted_thinking"):
            # A chat-completions model cannot be handed its earlier thinking back: that is dropped.
            raise _untranslatable(kind, f"{where}.content[{index}]")
    message: dict[str, Any] = {"role": "assistant", "content": _content(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    elif not texts:
        message["content"] = ""
    return message


def _tool_result(
    block: Mapping[str, Any], where: str
) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """A tool result's text (a tool message's content) and its images."""
    content = block.get("content")
    if content is None or isinstance(content, str):
        return content or "", []
    texts = [_text_part(b) for b in content if b["type"] == "text"]
    images = [_image_part(b, f"{where}.content[{i}]") for i, b in enumerate(content) if b["type"] == "image"]
    return (_content(texts) if texts else ""), images


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as a plain string (which every chat template takes), anything else as parts."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _text_part(block: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "text", "text": block["text"]}


def _image_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block["source"]
    if source["type"] == "base64":
        url = f"data:{source['media_type']};base64,{source['data']}"
    elif source["type"] == "url":
        url = source["url"]
    else:
        raise InvalidRequest(
            f"`{where}.source.type` {clipped(source['type'])} cannot be translated to chat completions "
            f"(base64 and url can), {_NO_PROVIDER}",
            param=f"{where}.source.type",
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _function(tool: Mapping[str, Any], where: str) -> dict[str, Any]:
    if tool.get("type") not in CLIENT_TOOL_TYPES:
        raise InvalidRequest(
            f"`{where}` is Anthropic's server tool {clipped(tool['type'])}, which chat-completions "
            f"providers do not run, {_NO_PROVIDER}",
            param=f"{where}.type",
        )
    function = {"name": tool["name"], "parameters": tool["input_schema"]}
    if (description := tool.get("description")) is not None:
        function["description"] = description
    return {"type": "function", "function": function}


def _untranslatable(kind: str, where: str) -> InvalidRequest:
    return InvalidRequest(
        f"`{where}` is a {clipped(kind)} block, which cannot be translated to chat completions, "
        + _NO_PROVIDER,
        param=f"{where}.type",
    )
