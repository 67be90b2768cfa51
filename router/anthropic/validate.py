"""A Messages request, checked before any provider sees it.

A field of the wrong shape is the caller's 400, naming it (``messages[1].content[0].source.media_type``),
as ``router.validate`` does on the OpenAI routes: forwarded, it would be a provider's error, or a crash
counted against its health. A null field counts as absent. Fields and content block types not known here
pass, since a provider serving the Anthropic format natively may know them; the translation to chat
completions refuses what it cannot carry (``router.anthropic.to_chat``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NoReturn

from router.errors import InvalidRequest, clipped

# Anthropic's (and OpenAI's) rule for tool names.
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_TOOL_NAME_SHAPE = "1 to 64 letters, digits, underscores or dashes"
MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_TOOL_CHOICES = ("auto", "any", "tool", "none")
# Anthropic's server tools (web search, code execution, ...) carry a ``type``; a client's own do not, or
# say "custom".
CLIENT_TOOL_TYPES = (None, "custom")


def validate_request(payload: Mapping[str, Any]) -> None:
    """Raise ``InvalidRequest`` for the first thing wrong with a Messages request."""
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        _fail("model", "a non-empty string", model)
    _integer(payload.get("max_tokens"), "max_tokens", low=1)
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        _fail("messages", "a non-empty list of messages", messages)
    for index, message in enumerate(messages):
        _message(message, f"messages[{index}]")
    if (system := payload.get("system")) is not None and not isinstance(system, str):
        _text_blocks(system, "system", "a string or a list of text blocks")
    if (stops := payload.get("stop_sequences")) is not None:
        _strings(stops, "stop_sequences")
    if (stream := payload.get("stream")) is not None and not isinstance(stream, bool):
        _fail("stream", "true or false", stream)
    for name in ("temperature", "top_p"):
        if (value := payload.get(name)) is not None:
            _fraction(value, name)
    if (top_k := payload.get("top_k")) is not None:
        _integer(top_k, "top_k", low=0)
    if (metadata := payload.get("metadata")) is not None:
        _object(metadata, "metadata")
        if (user := metadata.get("user_id")) is not None and not isinstance(user, str):
            _fail("metadata.user_id", "a string", user)
    if (thinking := payload.get("thinking")) is not None:
        _object(thinking, "thinking")
        _string(thinking.get("type"), "thinking.type")
    if (output := payload.get("output_config")) is not None:
        _output_config(output)
    names = _tools(payload.get("tools"))
    if (choice := payload.get("tool_choice")) is not None:
        _tool_choice(choice, names)


def _message(message: Any, where: str) -> None:
    _object(message, where)
    role = message.get("role")
    if role not in ("user", "assistant"):
        _fail(where + ".role", "'user' or 'assistant'", role)
    content = message.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not content:
        _fail(where + ".content", "a string or a non-empty list of content blocks", content)
    for index, block in enumerate(content):
        _block(block, f"{where}.content[{index}]", role)


def _block(block: Any, where: str, role: str) -> None:
    kind = _kind(block, where)
    if kind == "text":
        _string(block.get("text"), where + ".text")
    elif kind == "image":
        _only_in(role, "user", "an image block", where)
        _image_source(block.get("source"), where + ".source")
    elif kind == "tool_use":
        _only_in(role, "assistant", "a tool_use block", where)
        _text(block.get("id"), where + ".id")
        _tool_name(block.get("name"), where + ".name")
        _object(block.get("input"), where + ".input")
    elif kind == "tool_result":
        _only_in(role, "user", "a tool_result block", where)
        _text(block.get("tool_use_id"), where + ".tool_use_id")
        content = block.get("content")
        if content is not None and not isinstance(content, str):
            _result_content(content, where + ".content")
        if (is_error := block.get("is_error")) is not None and not isinstance(is_error, bool):
            _fail(where + ".is_error", "true or false", is_error)


def _kind(block: Any, where: str) -> str:
    if not isinstance(block, dict):
        _fail(where, "a content block (an object with a type)", block)
    kind = block.get("type")
    _string(kind, where + ".type")
    return str(kind)


def _only_in(role: str, allowed: str, what: str, where: str) -> None:
    if role != allowed:
        raise InvalidRequest(f"`{where}` is {what}, which only {allowed} messages may hold", param=where)


def _image_source(source: Any, where: str) -> None:
    _object(source, where)
    kind = source.get("type")
    _string(kind, where + ".type")
    if kind == "base64":
        media_type = source.get("media_type")
        if media_type not in MEDIA_TYPES:
            _fail(where + ".media_type", "one of " + ", ".join(MEDIA_TYPES), media_type)
        _text(source.get("data"), where + ".data")
    elif kind == "url":
        _text(source.get("url"), where + ".url")


def _result_content(content: Any, where: str) -> None:
    """A tool result's blocks: text and images (as a user message's)."""
    if not isinstance(content, list):
        _fail(where, "a string or a list of text and image blocks", content)
    for index, block in enumerate(content):
        at = f"{where}[{index}]"
        kind = _kind(block, at)
        if kind not in ("text", "image"):
            raise InvalidRequest(
                f"`{at}` is a {clipped(kind)} block; tool results hold text and images", param=at
            )
        _block(block, at, "user")


def _text_blocks(value: Any, where: str, expected: str) -> None:
    if not isinstance(value, list):
        _fail(where, expected, value)
    for index, block in enumerate(value):
        at = f"{where}[{index}]"
        if _kind(block, at) != "text":
            _fail(at + ".type", "'text'", block["type"])
        _string(block.get("text"), at + ".text")


def _output_config(output: Any) -> None:
    _object(output, "output_config")
    if (effort := output.get("effort")) is not None:
        _string(effort, "output_config.effort")
    if (fmt := output.get("format")) is not None:
        _object(fmt, "output_config.format")
        if fmt.get("type") != "json_schema":
            _fail("output_config.format.type", "'json_schema'", fmt.get("type"))
        _object(fmt.get("schema"), "output_config.format.schema")


def _tools(tools: Any) -> frozenset[str]:
    """Check ``tools``; the names of the client's own."""
    if tools is None:
        return frozenset()
    if not isinstance(tools, list):
        _fail("tools", "a list of tools", tools)
    names = set()
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        _object(tool, where)
        _tool_name(tool.get("name"), where + ".name")
        if tool.get("type") in CLIENT_TOOL_TYPES:
            _object(tool.get("input_schema"), where + ".input_schema")
            if (description := tool.get("description")) is not None:
                _string(description, where + ".description")
        names.add(tool["name"])
    return frozenset(names)


def _tool_choice(choice: Any, names: frozenset[str]) -> None:
    _object(choice, "tool_choice")
    kind = choice.get("type")
    if kind not in _TOOL_CHOICES:
        _fail("tool_choice.type", "one of " + ", ".join(_TOOL_CHOICES), kind)
    if kind in ("any", "tool") and not names:
        raise InvalidRequest(f"`tool_choice` {kind!r} needs `tools` to choose from", param="tool_choice")
    if kind == "tool":
        name = choice.get("name")
        _text(name, "tool_choice.name")
        if name not in names:
            raise InvalidRequest(
                f"`tool_choice.name` {clipped(name)} is not one of the request's tools",
                param="tool_choice.name",
            )
    if (serial := choice.get("disable_parallel_tool_use")) is not None and not isinstance(serial, bool):
        _fail("tool_choice.disable_parallel_tool_use", "true or false", serial)


# -- building blocks ----------------------------------------------------------------------------


def _fail(param: str, expected: str, value: object) -> NoReturn:
    if value is None:
        raise InvalidRequest(f"`{param}` is required and must be {expected}", param=param)
    raise InvalidRequest(f"`{param}` must be {expected}, not {_shown(value)}", param=param)


def _shown(value: object) -> str:
    """A wrong value as JSON would name it: containers by kind, scalars quoted (and cut)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "an object" if value else "an empty object"
    return clipped(value)


def _object(value: Any, param: str) -> None:
    if not isinstance(value, dict):
        _fail(param, "an object", value)


def _string(value: Any, param: str) -> None:
    if not isinstance(value, str):
        _fail(param, "a string", value)


def _text(value: Any, param: str) -> None:
    if not isinstance(value, str) or not value:
        _fail(param, "a non-empty string", value)


def _strings(value: Any, param: str) -> None:
    if not isinstance(value, list):
        _fail(param, "a list of strings", value)
    for index, item in enumerate(value):
        _string(item, f"{param}[{index}]")


def _tool_name(value: Any, param: str) -> None:
    if not isinstance(value, str) or not _TOOL_NAME.fullmatch(value):
        _fail(param, _TOOL_NAME_SHAPE, value)


def _integer(value: Any, param: str, *, low: int) -> None:
    # JSON has no separate booleans-as-numbers: true is not 1 here.
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        _fail(param, "a positive integer" if low == 1 else "a non-negative integer", value)


def _fraction(value: Any, param: str) -> None:
    # NaN compares false with everything, so the range test also refuses it (Python's JSON reads NaN).
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        _fail(param, "a number from 0 to 1", value)
