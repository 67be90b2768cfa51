"""Messages requests are checked before any provider sees them: the first wrong field is a 400 naming it."""

from __future__ import annotations

from typing import Any

import pytest

from router.anthropic.validate import validate_request
from router.errors import InvalidRequest

BASE: dict[str, Any] = {
    "model": "model-r",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "hello"}],
}
WEATHER = {"name": "get_weather", "input_schema": {"type": "object"}}
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


def with_fields(**fields: Any) -> dict[str, Any]:
    return {**BASE, **fields}


def user(*blocks: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


@pytest.mark.parametrize(
    ("payload", "param", "message"),
    [
        (
            {"max_tokens": 1, "messages": BASE["messages"]},
            "model",
            "`model` is required and must be a non-empty string",
        ),
        (with_fields(model=""), "model", "`model` must be a non-empty string, not ''"),
        (
            {"model": "m", "messages": BASE["messages"]},
            "max_tokens",
            "`max_tokens` is required and must be a positive integer",
        ),
        (with_fields(max_tokens=0), "max_tokens", "`max_tokens` must be a positive integer, not 0"),
        (with_fields(max_tokens=True), "max_tokens", "`max_tokens` must be a positive integer, not true"),
        (
            with_fields(messages=[]),
            "messages",
            "`messages` must be a non-empty list of messages, not an empty list",
        ),
        (with_fields(messages=["hi"]), "messages[0]", "`messages[0]` must be an object, not 'hi'"),
        (
            with_fields(messages=[{"role": "system", "content": "x"}]),
            "messages[0].role",
            "`messages[0].role` must be 'user' or 'assistant', not 'system'",
        ),
        (
            with_fields(messages=[{"role": "user"}]),
            "messages[0].content",
            "`messages[0].content` is required and must be a string or a non-empty list of content blocks",
        ),
        (
            with_fields(messages=[user({"text": "x"})]),
            "messages[0].content[0].type",
            "`messages[0].content[0].type` is required and must be a string",
        ),
        (
            with_fields(messages=[user({"type": "text", "text": 3})]),
            "messages[0].content[0].text",
            "`messages[0].content[0].text` must be a string, not 3",
        ),
        (
            with_fields(messages=[user({"type": "image", "source": {**PNG, "media_type": "image/bmp"}})]),
            "messages[0].content[0].source.media_type",
            "`messages[0].content[0].source.media_type` must be one of image/jpeg, image/png, image/gif, "
            "image/webp, not 'image/bmp'",
        ),
        (
            with_fields(messages=[user({"type": "image", "source": {"type": "url"}})]),
            "messages[0].content[0].source.url",
            "`messages[0].content[0].source.url` is required and must be a non-empty string",
        ),
        (
            with_fields(messages=[assistant({"type": "image", "source": PNG})]),
            "messages[0].content[0]",
            "`messages[0].content[0]` is an image block, which only user messages may hold",
        ),
        (
            with_fields(messages=[user({"type": "tool_use", "id": "t", "name": "n", "input": {}})]),
            "messages[0].content[0]",
            "`messages[0].content[0]` is a tool_use block, which only assistant messages may hold",
        ),
        (
            with_fields(messages=[assistant({"type": "tool_use", "id": "t", "name": "n", "input": "{}"})]),
            "messages[0].content[0].input",
            "`messages[0].content[0].input` must be an object, not '{}'",
        ),
        (
            with_fields(messages=[assistant({"type": "tool_use", "id": "t", "name": "a b", "input": {}})]),
            "messages[0].content[0].name",
            "`messages[0].content[0].name` must be 1 to 64 letters, digits, underscores or dashes, not 'a b'",
        ),
        (
            with_fields(messages=[user({"type": "tool_result", "content": "ok"})]),
            "messages[0].content[0].tool_use_id",
            "`messages[0].content[0].tool_use_id` is required and must be a non-empty string",
        ),
        (
            with_fields(
                messages=[
                    user({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "tool_use"}]})
                ]
            ),
            "messages[0].content[0].content[0]",
            "`messages[0].content[0].content[0]` is a 'tool_use' block; tool results hold text and images",
        ),
        (
            with_fields(messages=[user({"type": "tool_result", "tool_use_id": "t", "is_error": "yes"})]),
            "messages[0].content[0].is_error",
            "`messages[0].content[0].is_error` must be true or false, not 'yes'",
        ),
        (with_fields(system=7), "system", "`system` must be a string or a list of text blocks, not 7"),
        (
            with_fields(system=[{"type": "image", "source": PNG}]),
            "system[0].type",
            "`system[0].type` must be 'text', not 'image'",
        ),
        (
            with_fields(stop_sequences="END"),
            "stop_sequences",
            "`stop_sequences` must be a list of strings, not 'END'",
        ),
        (
            with_fields(stop_sequences=["a", 1]),
            "stop_sequences[1]",
            "`stop_sequences[1]` must be a string, not 1",
        ),
        (with_fields(stream="yes"), "stream", "`stream` must be true or false, not 'yes'"),
        (with_fields(temperature=1.5), "temperature", "`temperature` must be a number from 0 to 1, not 1.5"),
        (with_fields(top_p=-0.1), "top_p", "`top_p` must be a number from 0 to 1, not -0.1"),
        (with_fields(top_k=-1), "top_k", "`top_k` must be a non-negative integer, not -1"),
        (
            with_fields(metadata={"user_id": 5}),
            "metadata.user_id",
            "`metadata.user_id` must be a string, not 5",
        ),
        (with_fields(thinking="on"), "thinking", "`thinking` must be an object, not 'on'"),
        (
            with_fields(output_config={"format": {"type": "json_object"}}),
            "output_config.format.type",
            "`output_config.format.type` must be 'json_schema', not 'json_object'",
        ),
        (
            with_fields(output_config={"format": {"type": "json_schema"}}),
            "output_config.format.schema",
            "`output_config.format.schema` is required and must be an object",
        ),
        (
            with_fields(output_config={"effort": 3}),
            "output_config.effort",
            "`output_config.effort` must be a string, not 3",
        ),
        (with_fields(tools={"name": "x"}), "tools", "`tools` must be a list of tools, not an object"),
        (
            with_fields(tools=[{"name": "get_weather"}]),
            "tools[0].input_schema",
            "`tools[0].input_schema` is required and must be an object",
        ),
        (
            with_fields(tools=[WEATHER], tool_choice={"type": "required"}),
            "tool_choice.type",
            "`tool_choice.type` must be one of auto, any, tool, none, not 'required'",
        ),
        (
            with_fields(tool_choice={"type": "any"}),
            "tool_choice",
            "`tool_choice` 'any' needs `tools` to choose from",
        ),
        (
            with_fields(tools=[WEATHER], tool_choice={"type": "tool", "name": "get_time"}),
            "tool_choice.name",
            "`tool_choice.name` 'get_time' is not one of the request's tools",
        ),
        (
            with_fields(tools=[WEATHER], tool_choice={"type": "auto", "disable_parallel_tool_use": 1}),
            "tool_choice.disable_parallel_tool_use",
            "`tool_choice.disable_parallel_tool_use` must be true or false, not 1",
        ),
    ],
)
def test_a_wrong_field_is_a_400_naming_it(payload: dict[str, Any], param: str, message: str) -> None:
    """Each wrong shape is refused with a message and ``param`` that name the field."""
    with pytest.raises(InvalidRequest) as caught:
        validate_request(payload)
    assert (caught.value.status, caught.value.param, caught.value.message) == (400, param, message)


@pytest.mark.parametrize(
    "payload",
    [
        BASE,
        with_fields(system="be brief", stop_sequences=["END"], temperature=0, top_p=1, top_k=5, stream=True),
        with_fields(system=[{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}]),
        with_fields(
            messages=[
                user({"type": "text", "text": "what is this?"}, {"type": "image", "source": PNG}),
                assistant(
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "x"}}
                ),
                user(
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "sun"}],
                    }
                ),
            ],
            tools=[WEATHER, {"type": "web_search_20250305", "name": "web_search"}],
            tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        # Block types and fields this gateway does not know pass: a native provider may know them.
        with_fields(
            messages=[user({"type": "document", "source": {"type": "text", "data": "x"}})], container="c"
        ),
        with_fields(
            temperature=None, metadata={"user_id": None}, thinking={"type": "enabled", "budget_tokens": 1024}
        ),
    ],
)
def test_a_valid_request_passes(payload: dict[str, Any]) -> None:
    """Requests in Anthropic's shapes, nulls and unknown extras included, pass unchanged."""
    validate_request(payload)
