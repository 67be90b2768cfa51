"""The OpenAI request fields we know, checked before any provider sees them, for the gateway and the
library API alike.

A field of the wrong type or out of range is the caller's 400, with ``param`` naming it as OpenAI does
(``max_tokens``, ``tools[0].function.name``, ``messages[2].role``). Forwarded, it would be a provider's
error, or a provider's crash counted against its health: one caller could eject the pool. A null field
counts as absent, and fields we do not know pass through untouched (providers may take more than OpenAI).

Pure functions over the payload already parsed, one per request kind, driven by the tables at the end.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from router.endpoints import Endpoint
from router.errors import InvalidRequest, clipped

Check = Callable[[Any, str], None]
"""Raises ``InvalidRequest`` naming ``param`` (the second argument) unless the value is right."""


class _Missing:
    """A required field that is absent (or null): its check fails with "is required"."""


_MISSING = _Missing()


def validate_json(endpoint: Endpoint, payload: Mapping[str, Any]) -> None:
    """Raise ``InvalidRequest`` for the first thing wrong with a JSON request to ``endpoint``."""
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter (a non-empty string)", param="model")
    for name, present, shape in _REQUIRED[endpoint]:
        if not present(payload.get(name)):
            raise InvalidRequest(f"`{name}` is required and must be {shape}", param=name)
    _check_fields(payload, _FIELDS[endpoint], "")
    if endpoint is Endpoint.CHAT:
        _tool_choice_names_a_tool(payload)


def _tool_choice_names_a_tool(payload: Mapping[str, Any]) -> None:
    """``tool_choice`` ``required`` needs tools, and a named one must be among them: a model server
    refuses either, so no provider should see it."""
    choice, tools = payload.get("tool_choice"), payload.get("tools") or []
    if choice == "required" and not tools:
        raise InvalidRequest("`tool_choice` is `required`, which needs `tools`", param="tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice["function"]["name"]
        names = {
            t["function"]["name"]
            for t in tools
            if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
        }
        if name not in names:
            raise InvalidRequest(
                f"`tool_choice.function.name` names {clipped(name)}, which is not among `tools`",
                param="tool_choice.function.name",
            )


def validate_transcription(fields: Mapping[str, bytes]) -> None:
    """Raise ``InvalidRequest`` for a transcription form field we know and that is wrong."""
    _check_form(fields, _FORM_FIELDS[Endpoint.TRANSCRIPTIONS])


def validate_image_edit(fields: Mapping[str, bytes]) -> None:
    """Raise ``InvalidRequest`` for an image edit form without its prompt, or with a field we know that
    is wrong. (Its files, ``image`` and ``mask``, are the parser's: it sees each part.)"""
    prompt = fields.get("prompt")
    _text(_MISSING if prompt is None else _form_text(prompt), "prompt")
    _check_form(fields, _FORM_FIELDS[Endpoint.IMAGE_EDITS])


def _check_form(fields: Mapping[str, bytes], checks: Mapping[str, Check]) -> None:
    # A form's fields are text: each check sees the field decoded, without surrounding white space.
    for name, check in checks.items():
        if (given := fields.get(name)) is not None:
            check(_form_text(given), name)


def _form_text(value: bytes) -> str:
    return value.decode("utf-8", "replace").strip()


def _check_fields(record: Mapping[str, Any], checks: Mapping[str, Check], prefix: str) -> None:
    # Over the record's own fields: a request names few of the many we know.
    for name, value in record.items():
        check = checks.get(name)
        if check is not None and value is not None:
            check(value, prefix + name)


def _fail(param: str, expected: str, value: object) -> NoReturn:
    if isinstance(value, _Missing):
        raise InvalidRequest(f"`{param}` is required and must be {expected}", param=param)
    raise InvalidRequest(f"`{param}` must be {expected}, not {_shown(value)}", param=param)


def _shown(value: object) -> str:
    """A wrong value as JSON would name it: containers by kind, scalars quoted (and cut)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "an object" if value else "an empty object"
    return clipped(value)


# -- building blocks ----------------------------------------------------------------------------


def _integer(low: int | None = None, high: int | None = None) -> Check:
    if low is None:
        expected = "an integer"
    elif high is None:
        expected = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
    else:
        expected = f"an integer from {low} to {high}"

    def check(value: Any, param: str) -> None:
        # JSON has no separate booleans-as-numbers: true is not 1 here.
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            _fail(param, expected, value)

    return check


def _number(low: float, high: float) -> Check:
    expected = f"a number from {low:g} to {high:g}"

    def check(value: Any, param: str) -> None:
        # NaN compares false with everything, so the range test also refuses it (Python's JSON reads NaN).
        if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
            _fail(param, expected, value)

    return check


def _flag(value: Any, param: str) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest(f"`{param}` must be true or false", param=param)


def _string(value: Any, param: str) -> None:
    if not isinstance(value, str):
        _fail(param, "a string", value)


def _text(value: Any, param: str) -> None:
    if not isinstance(value, str) or not value:
        _fail(param, "a non-empty string", value)


def _object(value: Any, param: str) -> None:
    if not isinstance(value, dict):
        _fail(param, "an object", value)


def _choice(*options: str) -> Check:
    expected = repr(options[0]) if len(options) == 1 else "one of " + ", ".join(options)

    def check(value: Any, param: str) -> None:
        if not isinstance(value, str) or value not in options:
            _fail(param, expected, value)

    return check


def _pattern(regex: str, expected: str) -> Check:
    compiled = re.compile(regex)

    def check(value: Any, param: str) -> None:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            _fail(param, expected, value)

    return check


def _record(checks: Mapping[str, Check], required: tuple[str, ...] = ()) -> Check:
    """An object whose ``required`` fields are present and whose known fields pass their checks."""

    def check(value: Any, param: str) -> None:
        if not isinstance(value, dict):
            _fail(param, "an object", value)
        for name in required:
            if value.get(name) is None:
                checks[name](_MISSING, f"{param}.{name}")
        _check_fields(value, checks, param + ".")

    return check


def _list_of(item: Check, expected: str) -> Check:
    def check(value: Any, param: str) -> None:
        if not isinstance(value, list):
            _fail(param, expected, value)
        for index, element in enumerate(value):
            item(element, f"{param}[{index}]")

    return check


def _unstreamed(endpoint: Endpoint) -> Check:
    def check(value: Any, param: str) -> None:
        _flag(value, param)
        if value:
            raise InvalidRequest(f"streaming is not supported on {endpoint.path}", param=param)

    return check


# -- form fields (text, as a multipart form carries them) ---------------------------------------

_DIGITS = re.compile(r"[0-9]{1,9}")


def _form_number(low: float, high: float) -> Check:
    expected = f"a number from {low:g} to {high:g}"

    def check(text: str, param: str) -> None:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        # NaN fails the range test too, so text that is no number is refused with the rest.
        if not low <= value <= high:
            _fail(param, expected, text)

    return check


def _form_integer(low: int, high: int) -> Check:
    expected = f"an integer from {low} to {high}"

    def check(text: str, param: str) -> None:
        # Digits only: Python's int() would also take "+3", "3_0" and other digits than ASCII ones.
        if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
            _fail(param, expected, text)

    return check


def _form_unstreamed(endpoint: Endpoint) -> Check:
    def check(text: str, param: str) -> None:
        flag = text.lower()
        if flag not in ("true", "false"):
            raise InvalidRequest(f"`{param}` must be true or false", param=param)
        if flag == "true":
            raise InvalidRequest(f"streaming is not supported on {endpoint.path}", param=param)

    return check


# -- chat ---------------------------------------------------------------------------------------

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_ROLE = _choice(*_ROLES)
# The assistant's content may be null (a reply that is only tool calls), as may a function result's.
_CONTENT_OPTIONAL = frozenset({"assistant", "function"})
_ROLE_REQUIRES = {"tool": ("tool_call_id",), "function": ("name",)}
_CONTENT = "a string or a non-empty list of content parts"
_PART = _record({"type": _string, "text": _string}, required=("type",))
_TOOL_CALL = _record(
    {"id": _string, "type": _string, "function": _record({"name": _string, "arguments": _string})}
)
_MESSAGE_FIELDS: dict[str, Check] = {
    "name": _string,
    "tool_call_id": _string,
    "tool_calls": _list_of(_TOOL_CALL, "a list of tool calls"),
}


def _content(value: Any, param: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        _fail(param, _CONTENT, value)
    for index, part in enumerate(value):
        where = f"{param}[{index}]"
        _PART(part, where)
        if part["type"] == "text" and part.get("text") is None:
            _string(_MISSING, where + ".text")


def _messages(value: Any, param: str) -> None:
    for index, message in enumerate(value):
        where = f"{param}[{index}]"
        if not isinstance(message, dict):
            _fail(where, "an object", message)
        role = message.get("role", _MISSING)
        _ROLE(role, where + ".role")
        content = message.get("content")
        if content is not None:
            _content(content, where + ".content")
        elif role not in _CONTENT_OPTIONAL:
            _content(_MISSING, where + ".content")
        for name in _ROLE_REQUIRES.get(role, ()):
            if message.get(name) is None:
                _string(_MISSING, f"{where}.{name}")
        _check_fields(message, _MESSAGE_FIELDS, where + ".")


# OpenAI's rule for function names.
_FUNCTION_NAME = _pattern(r"[a-zA-Z0-9_-]{1,64}", "1 to 64 letters, digits, underscores or dashes")
_FUNCTION = _record(
    {"name": _FUNCTION_NAME, "description": _string, "parameters": _object, "strict": _flag},
    required=("name",),
)
_TYPED = _record({"type": _text}, required=("type",))
_FUNCTION_TOOL = _record({"type": _text, "function": _FUNCTION}, required=("function",))
_TOOL_CHOICES = ("none", "auto", "required")
_NAMED_FUNCTION = _record(
    {"type": _text, "function": _record({"name": _text}, required=("name",))}, required=("function",)
)


def _typed(function_shape: Check) -> Check:
    """An object with a string ``type``; a function one is checked whole. Other types (OpenAI's
    ``custom`` tools, ``allowed_tools`` choices) are left to providers that know them: a provider that
    does not answers a 400, which the caller gets as it came and which costs the provider nothing."""

    def check(value: Any, param: str) -> None:
        _TYPED(value, param)
        if value["type"] == "function":
            function_shape(value, param)

    return check


_TOOL = _typed(_FUNCTION_TOOL)
_NAMED_TOOL = _typed(_NAMED_FUNCTION)


def _tool_choice(value: Any, param: str) -> None:
    if isinstance(value, dict):
        _NAMED_TOOL(value, param)
    elif not isinstance(value, str) or value not in _TOOL_CHOICES:
        _fail(param, "none, auto, required or an object naming a tool", value)


_FORMAT = _record({"type": _choice("text", "json_object", "json_schema")}, required=("type",))
_JSON_SCHEMA = _record(
    {"name": _text, "description": _string, "schema": _object, "strict": _flag}, required=("name",)
)


def _response_format(value: Any, param: str) -> None:
    _FORMAT(value, param)
    if value["type"] == "json_schema":
        schema = value.get("json_schema")
        _JSON_SCHEMA(_MISSING if schema is None else schema, param + ".json_schema")


def _stop(value: Any, param: str) -> None:
    # OpenAI takes up to 4; open models' servers take more, so the count is left to the provider.
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        _fail(param, "a string or a list of strings", value)
    for index, item in enumerate(value):
        _string(item, f"{param}[{index}]")


# -- embeddings ---------------------------------------------------------------------------------

_TOKEN = _integer(0)
_TOKENS = "a non-empty list of token ids (non-negative integers)"


def _input(value: Any, param: str) -> None:
    """A string, or a non-empty list of strings, of token ids, or of lists of token ids."""
    if isinstance(value, str):
        _text(value, param)
        return
    if not value:
        _fail(param, "a non-empty string or a non-empty list", value)
    first = value[0]
    for index, item in enumerate(value):
        where = f"{param}[{index}]"
        if isinstance(first, str):
            _text(item, where)
        elif isinstance(first, list):
            if not isinstance(item, list) or not item:
                _fail(where, _TOKENS, item)
            for position, token in enumerate(item):
                _TOKEN(token, f"{where}[{position}]")
        elif isinstance(first, int) and not isinstance(first, bool):
            _TOKEN(item, where)
        else:
            _fail(where, "a string, a token id or a list of token ids", item)


# -- image edits --------------------------------------------------------------------------------

# A data URI's head (`data:image/png;base64,`), then standard base64 with its padding.
_DATA_URI = re.compile(r"data:[^,]*;base64,")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*+={0,2}")
_IMAGE = "a base64-encoded image (or a data: URI of one)"


def _base64_image(value: Any, param: str) -> None:
    """An image as the broker's JSON edits take it. A URL or a file id sent in its place is the caller's
    mistake, refused here rather than at a provider."""
    if not isinstance(value, str):
        _fail(param, _IMAGE, value)
    head = _DATA_URI.match(value)
    data = value[head.end() :] if head else value
    if not data or len(data) % 4 or not _BASE64.fullmatch(data):
        _fail(param, _IMAGE, value)


def _images(value: Any, param: str) -> None:
    """One image, or a non-empty list of them (for models that edit several at once)."""
    if isinstance(value, list) and value:
        for index, item in enumerate(value):
            _base64_image(item, f"{param}[{index}]")
    else:
        _base64_image(value, param)


# -- the tables ---------------------------------------------------------------------------------

_PROMPT = ("prompt", lambda v: isinstance(v, str), "a string")
_REQUIRED: dict[Endpoint, tuple[tuple[str, Callable[[Any], bool], str], ...]] = {
    Endpoint.CHAT: (("messages", lambda v: isinstance(v, list) and bool(v), "a non-empty list of messages"),),
    Endpoint.EMBEDDINGS: (("input", lambda v: isinstance(v, str | list), "a string or a list"),),
    Endpoint.IMAGES: (_PROMPT,),
    Endpoint.IMAGE_EDITS: (
        ("image", lambda v: isinstance(v, str | list) and bool(v), _IMAGE + " or a list of them"),
        _PROMPT,
    ),
}

_FIELDS: dict[Endpoint, dict[str, Check]] = {
    Endpoint.CHAT: {
        "messages": _messages,
        "max_tokens": _integer(1),
        "max_completion_tokens": _integer(1),
        "n": _integer(1, 128),
        "temperature": _number(0, 2),
        "top_p": _number(0, 1),
        "presence_penalty": _number(-2, 2),
        "frequency_penalty": _number(-2, 2),
        "stream": _flag,
        "stream_options": _record({"include_usage": _flag}),
        "tools": _list_of(_TOOL, "a list of tools"),
        "tool_choice": _tool_choice,
        "parallel_tool_calls": _flag,
        "response_format": _response_format,
        "stop": _stop,
        "seed": _integer(),
        "logprobs": _flag,
        "top_logprobs": _integer(0, 20),
        "logit_bias": _object,
        "user": _string,
    },
    Endpoint.EMBEDDINGS: {
        "input": _input,
        "dimensions": _integer(1),
        "encoding_format": _choice("float", "base64"),
        "stream": _unstreamed(Endpoint.EMBEDDINGS),
        "user": _string,
    },
    Endpoint.IMAGES: {
        "prompt": _text,
        "n": _integer(1, 10),
        "size": _string,
        "response_format": _choice("url", "b64_json"),
        "quality": _string,
        "style": _string,
        "stream": _unstreamed(Endpoint.IMAGES),
        "user": _string,
    },
    # The broker's JSON shape (ctrl/image_editing.go): base64 images, model-specific `extras`.
    Endpoint.IMAGE_EDITS: {
        "image": _images,
        "mask": _base64_image,
        "prompt": _text,
        "negative_prompt": _string,
        "n": _integer(1, 10),
        "size": _string,
        "response_format": _choice("url", "b64_json"),
        "stream": _unstreamed(Endpoint.IMAGE_EDITS),
        "user": _string,
        "extras": _record(
            {
                "ref_images": _list_of(_base64_image, "a list of base64-encoded images"),
                "strength": _number(0, 1),
                "seed": _integer(),
            }
        ),
    },
}

_FORM_FIELDS: dict[Endpoint, dict[str, Check]] = {
    Endpoint.TRANSCRIPTIONS: {
        "response_format": _choice("json", "text", "srt", "verbose_json", "vtt"),
        "temperature": _form_number(0, 1),
    },
    Endpoint.IMAGE_EDITS: {
        "n": _form_integer(1, 10),
        "response_format": _choice("url", "b64_json"),
        "stream": _form_unstreamed(Endpoint.IMAGE_EDITS),
    },
}
