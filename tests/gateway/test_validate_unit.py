"""The request checks of ``router.validate``, table by table, without a devnet.

Each bad field is a 400 ``InvalidRequest`` whose ``param`` names it as OpenAI does and whose message says
what was expected and what came; every field of a valid request passes; quoted input is cut short.
"""

from __future__ import annotations

from typing import Any

import pytest

from router.errors import InvalidRequest, clipped
from router.request import Endpoint
from router.validate import validate_json, validate_transcription

MESSAGES = [{"role": "user", "content": "hi"}]
BASE = {
    Endpoint.CHAT: {"model": "m", "messages": MESSAGES},
    Endpoint.EMBEDDINGS: {"model": "m", "input": "x"},
    Endpoint.IMAGES: {"model": "m", "prompt": "a cat"},
}
FUNCTION_NAME = "1 to 64 letters, digits, underscores or dashes"
ROLES = "one of system, developer, user, assistant, tool, function"
CONTENT = "a string or a non-empty list of content parts"


def tool(**function: Any) -> dict[str, Any]:
    return {"type": "function", "function": function}


def said(role: str, **fields: Any) -> dict[str, Any]:
    return {"role": role, **fields}


# (id, endpoint, fields over the endpoint's valid base body, param, message)
BAD = [
    (
        "max-tokens-string",
        Endpoint.CHAT,
        {"max_tokens": "abc"},
        "max_tokens",
        "must be a positive integer, not 'abc'",
    ),
    (
        "max-tokens-list",
        Endpoint.CHAT,
        {"max_tokens": [1]},
        "max_tokens",
        "must be a positive integer, not a list",
    ),
    ("max-tokens-zero", Endpoint.CHAT, {"max_tokens": 0}, "max_tokens", "must be a positive integer, not 0"),
    (
        "max-tokens-negative",
        Endpoint.CHAT,
        {"max_tokens": -5},
        "max_tokens",
        "must be a positive integer, not -5",
    ),
    (
        "max-tokens-bool",
        Endpoint.CHAT,
        {"max_tokens": True},
        "max_tokens",
        "must be a positive integer, not true",
    ),
    (
        "max-tokens-fraction",
        Endpoint.CHAT,
        {"max_tokens": 1.5},
        "max_tokens",
        "must be a positive integer, not 1.5",
    ),
    (
        "max-completion-tokens-zero",
        Endpoint.CHAT,
        {"max_completion_tokens": 0},
        "max_completion_tokens",
        "must be a positive integer, not 0",
    ),
    ("n-zero", Endpoint.CHAT, {"n": 0}, "n", "must be an integer from 1 to 128, not 0"),
    ("n-too-many", Endpoint.CHAT, {"n": 129}, "n", "must be an integer from 1 to 128, not 129"),
    (
        "temperature-high",
        Endpoint.CHAT,
        {"temperature": 2.5},
        "temperature",
        "must be a number from 0 to 2, not 2.5",
    ),
    (
        "temperature-text",
        Endpoint.CHAT,
        {"temperature": "hot"},
        "temperature",
        "must be a number from 0 to 2, not 'hot'",
    ),
    (
        "temperature-nan",
        Endpoint.CHAT,
        {"temperature": float("nan")},
        "temperature",
        "must be a number from 0 to 2, not nan",
    ),
    ("top-p-high", Endpoint.CHAT, {"top_p": 1.1}, "top_p", "must be a number from 0 to 1, not 1.1"),
    (
        "presence-penalty-low",
        Endpoint.CHAT,
        {"presence_penalty": -3},
        "presence_penalty",
        "must be a number from -2 to 2, not -3",
    ),
    (
        "frequency-penalty-object",
        Endpoint.CHAT,
        {"frequency_penalty": {}},
        "frequency_penalty",
        "must be a number from -2 to 2, not an empty object",
    ),
    ("stream-string", Endpoint.CHAT, {"stream": "yes"}, "stream", "must be true or false"),
    (
        "stream-options-string",
        Endpoint.CHAT,
        {"stream_options": "x"},
        "stream_options",
        "must be an object, not 'x'",
    ),
    (
        "include-usage-number",
        Endpoint.CHAT,
        {"stream_options": {"include_usage": 1}},
        "stream_options.include_usage",
        "must be true or false",
    ),
    ("tools-string", Endpoint.CHAT, {"tools": "x"}, "tools", "must be a list of tools, not 'x'"),
    ("tools-of-numbers", Endpoint.CHAT, {"tools": [1]}, "tools[0]", "must be an object, not 1"),
    (
        "tool-without-function",
        Endpoint.CHAT,
        {"tools": [{"type": "function"}]},
        "tools[0].function",
        "is required and must be an object",
    ),
    (
        "tool-without-type",
        Endpoint.CHAT,
        {"tools": [{"function": {"name": "f"}}]},
        "tools[0].type",
        "is required and must be a non-empty string",
    ),
    (
        "tool-name-with-a-space",
        Endpoint.CHAT,
        {"tools": [tool(name="f"), tool(name="my tool")]},
        "tools[1].function.name",
        f"must be {FUNCTION_NAME}, not 'my tool'",
    ),
    (
        "tool-name-too-long",
        Endpoint.CHAT,
        {"tools": [tool(name="a" * 65)]},
        "tools[0].function.name",
        f"must be {FUNCTION_NAME}, not '{'a' * 65}'",
    ),
    (
        "tool-without-name",
        Endpoint.CHAT,
        {"tools": [tool(description="d")]},
        "tools[0].function.name",
        f"is required and must be {FUNCTION_NAME}",
    ),
    (
        "tool-parameters-string",
        Endpoint.CHAT,
        {"tools": [tool(name="f", parameters="x")]},
        "tools[0].function.parameters",
        "must be an object, not 'x'",
    ),
    (
        "tool-strict-string",
        Endpoint.CHAT,
        {"tools": [tool(name="f", strict="yes")]},
        "tools[0].function.strict",
        "must be true or false",
    ),
    (
        "tool-description-number",
        Endpoint.CHAT,
        {"tools": [tool(name="f", description=3)]},
        "tools[0].function.description",
        "must be a string, not 3",
    ),
    (
        "tool-choice-unknown",
        Endpoint.CHAT,
        {"tool_choice": "any"},
        "tool_choice",
        "must be none, auto, required or an object naming a tool, not 'any'",
    ),
    (
        "tool-choice-without-function",
        Endpoint.CHAT,
        {"tool_choice": {"type": "function"}},
        "tool_choice.function",
        "is required and must be an object",
    ),
    (
        "tool-choice-empty-name",
        Endpoint.CHAT,
        {"tool_choice": {"type": "function", "function": {"name": ""}}},
        "tool_choice.function.name",
        "must be a non-empty string, not ''",
    ),
    (
        "tool-choice-required-without-tools",
        Endpoint.CHAT,
        {"tool_choice": "required"},
        "tool_choice",
        "is `required`, which needs `tools`",
    ),
    (
        "tool-choice-names-a-missing-tool",
        Endpoint.CHAT,
        {"tools": [tool(name="f")], "tool_choice": {"type": "function", "function": {"name": "g"}}},
        "tool_choice.function.name",
        "names 'g', which is not among `tools`",
    ),
    (
        "response-format-string",
        Endpoint.CHAT,
        {"response_format": "json"},
        "response_format",
        "must be an object, not 'json'",
    ),
    (
        "response-format-without-type",
        Endpoint.CHAT,
        {"response_format": {}},
        "response_format.type",
        "is required and must be one of text, json_object, json_schema",
    ),
    (
        "response-format-unknown-type",
        Endpoint.CHAT,
        {"response_format": {"type": "yaml"}},
        "response_format.type",
        "must be one of text, json_object, json_schema, not 'yaml'",
    ),
    (
        "json-schema-missing",
        Endpoint.CHAT,
        {"response_format": {"type": "json_schema"}},
        "response_format.json_schema",
        "is required and must be an object",
    ),
    (
        "json-schema-without-name",
        Endpoint.CHAT,
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
        "response_format.json_schema.name",
        "is required and must be a non-empty string",
    ),
    (
        "json-schema-schema-list",
        Endpoint.CHAT,
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}},
        "response_format.json_schema.schema",
        "must be an object, not an empty list",
    ),
    ("message-number", Endpoint.CHAT, {"messages": [1]}, "messages[0]", "must be an object, not 1"),
    (
        "message-without-role",
        Endpoint.CHAT,
        {"messages": [{"content": "hi"}]},
        "messages[0].role",
        f"is required and must be {ROLES}",
    ),
    (
        "message-of-an-unknown-role",
        Endpoint.CHAT,
        {"messages": [*MESSAGES, *MESSAGES, said("robot", content="hi")]},
        "messages[2].role",
        f"must be {ROLES}, not 'robot'",
    ),
    (
        "user-without-content",
        Endpoint.CHAT,
        {"messages": [said("user")]},
        "messages[0].content",
        f"is required and must be {CONTENT}",
    ),
    (
        "content-number",
        Endpoint.CHAT,
        {"messages": [said("user", content=5)]},
        "messages[0].content",
        f"must be {CONTENT}, not 5",
    ),
    (
        "content-empty-list",
        Endpoint.CHAT,
        {"messages": [said("system", content=[])]},
        "messages[0].content",
        f"must be {CONTENT}, not an empty list",
    ),
    (
        "content-part-string",
        Endpoint.CHAT,
        {"messages": [said("user", content=["hi"])]},
        "messages[0].content[0]",
        "must be an object, not 'hi'",
    ),
    (
        "content-part-without-type",
        Endpoint.CHAT,
        {"messages": [said("user", content=[{"text": "hi"}])]},
        "messages[0].content[0].type",
        "is required and must be a string",
    ),
    (
        "text-part-without-text",
        Endpoint.CHAT,
        {"messages": [said("user", content=[{"type": "text"}])]},
        "messages[0].content[0].text",
        "is required and must be a string",
    ),
    (
        "tool-message-without-call-id",
        Endpoint.CHAT,
        {"messages": [said("tool", content="42")]},
        "messages[0].tool_call_id",
        "is required and must be a string",
    ),
    (
        "tool-call-id-number",
        Endpoint.CHAT,
        {"messages": [said("tool", content="42", tool_call_id=7)]},
        "messages[0].tool_call_id",
        "must be a string, not 7",
    ),
    (
        "function-message-without-name",
        Endpoint.CHAT,
        {"messages": [said("function", content="42")]},
        "messages[0].name",
        "is required and must be a string",
    ),
    (
        "tool-calls-string",
        Endpoint.CHAT,
        {"messages": [said("assistant", tool_calls="x")]},
        "messages[0].tool_calls",
        "must be a list of tool calls, not 'x'",
    ),
    (
        "tool-call-arguments-object",
        Endpoint.CHAT,
        {"messages": [said("assistant", tool_calls=[{"function": {"name": "f", "arguments": {}}}])]},
        "messages[0].tool_calls[0].function.arguments",
        "must be a string, not an empty object",
    ),
    (
        "stop-number",
        Endpoint.CHAT,
        {"stop": 5},
        "stop",
        "must be a string or a list of strings, not 5",
    ),
    ("stop-item-number", Endpoint.CHAT, {"stop": ["a", 1]}, "stop[1]", "must be a string, not 1"),
    ("seed-fraction", Endpoint.CHAT, {"seed": 1.0}, "seed", "must be an integer, not 1.0"),
    ("logprobs-string", Endpoint.CHAT, {"logprobs": "true"}, "logprobs", "must be true or false"),
    (
        "top-logprobs-high",
        Endpoint.CHAT,
        {"top_logprobs": 21},
        "top_logprobs",
        "must be an integer from 0 to 20, not 21",
    ),
    ("user-number", Endpoint.CHAT, {"user": 5}, "user", "must be a string, not 5"),
    ("input-empty-string", Endpoint.EMBEDDINGS, {"input": ""}, "input", "must be a non-empty string, not ''"),
    (
        "input-empty-list",
        Endpoint.EMBEDDINGS,
        {"input": []},
        "input",
        "must be a non-empty string or a non-empty list, not an empty list",
    ),
    (
        "input-mixed",
        Endpoint.EMBEDDINGS,
        {"input": ["a", 1]},
        "input[1]",
        "must be a non-empty string, not 1",
    ),
    (
        "input-token-negative",
        Endpoint.EMBEDDINGS,
        {"input": [1, -2]},
        "input[1]",
        "must be a non-negative integer, not -2",
    ),
    (
        "input-token-list-empty",
        Endpoint.EMBEDDINGS,
        {"input": [[1], []]},
        "input[1]",
        "must be a non-empty list of token ids (non-negative integers), not an empty list",
    ),
    (
        "input-token-bool",
        Endpoint.EMBEDDINGS,
        {"input": [[1], [True]]},
        "input[1][0]",
        "must be a non-negative integer, not true",
    ),
    (
        "input-of-objects",
        Endpoint.EMBEDDINGS,
        {"input": [{}]},
        "input[0]",
        "must be a string, a token id or a list of token ids, not an empty object",
    ),
    (
        "dimensions-zero",
        Endpoint.EMBEDDINGS,
        {"dimensions": 0},
        "dimensions",
        "must be a positive integer, not 0",
    ),
    (
        "encoding-format-unknown",
        Endpoint.EMBEDDINGS,
        {"encoding_format": "int8"},
        "encoding_format",
        "must be one of float, base64, not 'int8'",
    ),
    ("prompt-empty", Endpoint.IMAGES, {"prompt": ""}, "prompt", "must be a non-empty string, not ''"),
    ("images-n-high", Endpoint.IMAGES, {"n": 11}, "n", "must be an integer from 1 to 10, not 11"),
    ("images-size-number", Endpoint.IMAGES, {"size": 1024}, "size", "must be a string, not 1024"),
    (
        "images-response-format-unknown",
        Endpoint.IMAGES,
        {"response_format": "png"},
        "response_format",
        "must be one of url, b64_json, not 'png'",
    ),
    ("images-quality-number", Endpoint.IMAGES, {"quality": 1}, "quality", "must be a string, not 1"),
    ("images-style-list", Endpoint.IMAGES, {"style": []}, "style", "must be a string, not an empty list"),
]


@pytest.mark.parametrize(
    ("endpoint", "fields", "param", "message"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_a_bad_field_is_a_400_naming_it(
    endpoint: Endpoint, fields: dict[str, Any], param: str, message: str
) -> None:
    """The error names the field in ``param`` and in a message saying what it must be."""
    with pytest.raises(InvalidRequest) as caught:
        validate_json(endpoint, {**BASE[endpoint], **fields})
    error = caught.value
    assert (error.status, error.type, error.code) == (400, "invalid_request_error", None)
    assert error.param == param
    assert error.message == f"`{param}` {message}"


@pytest.mark.parametrize("endpoint", [Endpoint.EMBEDDINGS, Endpoint.IMAGES])
def test_streaming_is_refused_where_it_does_not_exist(endpoint: Endpoint) -> None:
    """``stream: true`` off the chat route is a 400 on param stream; ``false`` is fine."""
    validate_json(endpoint, {**BASE[endpoint], "stream": False})
    with pytest.raises(InvalidRequest) as caught:
        validate_json(endpoint, {**BASE[endpoint], "stream": True})
    assert caught.value.param == "stream"
    assert caught.value.message == f"streaming is not supported on {endpoint.path}"


FULL_CHAT = {
    "model": "m",
    "messages": [
        said("developer", content="be brief"),
        said("system", content=[{"type": "text", "text": "really"}]),
        said(
            "user",
            name="ann",
            content=[
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
            ],
        ),
        said(
            "assistant",
            content=None,
            tool_calls=[{"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{}"}}],
        ),
        said("tool", tool_call_id="c1", content="a cat"),
        said("function", name="look", content=None),
        said("assistant", content="a cat"),
    ],
    "max_tokens": 10,
    "max_completion_tokens": 10,
    "n": 128,
    "temperature": 0,
    "top_p": 1,
    "presence_penalty": -2,
    "frequency_penalty": 2.0,
    "stream": True,
    "stream_options": {"include_usage": True},
    "tools": [tool(name="look-2_x", description="d", parameters={"type": "object"}, strict=True)],
    "tool_choice": {"type": "function", "function": {"name": "look-2_x"}},
    "parallel_tool_calls": False,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "answer", "description": "d", "schema": {"type": "object"}, "strict": True},
    },
    "stop": ["a", "b", "c", "d"],
    "seed": -7,
    "logprobs": True,
    "top_logprobs": 20,
    "logit_bias": {"50256": -100},
    "user": "u",
    # Fields we do not know go to the provider as they are.
    "reasoning_effort": 3,
    "metadata": "anything",
}
GOOD = [
    ("every-chat-field", Endpoint.CHAT, FULL_CHAT),
    (
        "nulls-count-as-absent",
        Endpoint.CHAT,
        {"max_tokens": None, "tools": None, "tool_choice": None, "response_format": None, "stream": None},
    ),
    (
        "tool-choice-words",
        Endpoint.CHAT,
        {"tool_choice": "required", "tools": [tool(name="f")], "stop": "\n"},
    ),
    ("json-object", Endpoint.CHAT, {"response_format": {"type": "json_object"}}),
    (
        # Tool kinds past functions, and more stops than OpenAI takes, are the provider's to judge.
        "other-tool-kinds",
        Endpoint.CHAT,
        {
            "tools": [{"type": "custom", "custom": {"name": "grammar"}}],
            "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}},
            "stop": ["a", "b", "c", "d", "e"],
        },
    ),
    (
        "input-strings",
        Endpoint.EMBEDDINGS,
        {"input": ["a", "b"], "dimensions": 8, "encoding_format": "base64"},
    ),
    ("input-tokens", Endpoint.EMBEDDINGS, {"input": [0, 1, 2], "user": "u"}),
    ("input-token-lists", Endpoint.EMBEDDINGS, {"input": [[1, 2], [3]], "encoding_format": "float"}),
    (
        "every-image-field",
        Endpoint.IMAGES,
        {
            "n": 10,
            "size": "256x256",
            "response_format": "url",
            "quality": "hd",
            "style": "vivid",
            "user": "u",
        },
    ),
]


@pytest.mark.parametrize(("endpoint", "fields"), [case[1:] for case in GOOD], ids=[case[0] for case in GOOD])
def test_a_valid_request_passes(endpoint: Endpoint, fields: dict[str, Any]) -> None:
    """Every field we know, at its bounds, and fields we do not know: no error."""
    validate_json(endpoint, {**BASE[endpoint], **fields})


# (id, form fields, param, message)
BAD_TRANSCRIPTIONS = [
    (
        "unknown-format",
        {"response_format": b"xml"},
        "response_format",
        "`response_format` must be one of json, text, srt, verbose_json, vtt, not 'xml'",
    ),
    (
        "temperature-text",
        {"temperature": b"hot"},
        "temperature",
        "`temperature` must be a number from 0 to 1, not 'hot'",
    ),
    (
        "temperature-high",
        {"temperature": b"1.5"},
        "temperature",
        "`temperature` must be a number from 0 to 1, not '1.5'",
    ),
    (
        "temperature-nan",
        {"temperature": b"nan"},
        "temperature",
        "`temperature` must be a number from 0 to 1, not 'nan'",
    ),
]


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [case[1:] for case in BAD_TRANSCRIPTIONS],
    ids=[case[0] for case in BAD_TRANSCRIPTIONS],
)
def test_a_bad_transcription_field_is_a_400(fields: dict[str, bytes], param: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_transcription({"file": b"RIFF", "model": b"w", **fields})
    assert (caught.value.param, caught.value.message) == (param, message)


def test_valid_transcription_fields_pass() -> None:
    validate_transcription({"file": b"RIFF", "response_format": b"verbose_json", "temperature": b" 0.2 "})


def test_a_huge_value_is_quoted_short() -> None:
    """A 200 KB string in a field comes back as its first 100 characters and its length."""
    with pytest.raises(InvalidRequest) as caught:
        validate_json(Endpoint.CHAT, {**BASE[Endpoint.CHAT], "max_tokens": "9" * 200_000})
    assert (
        caught.value.message
        == f"`max_tokens` must be a positive integer, not '{'9' * 100}'… (200000 characters)"
    )


class TestClipped:
    def test_a_short_string_is_its_repr(self) -> None:
        assert clipped("no-such-model") == "'no-such-model'"

    def test_a_long_string_is_cut_with_its_length(self) -> None:
        assert clipped("x" * 1000, limit=5) == "'xxxxx'… (1000 characters)"

    def test_unquoted(self) -> None:
        assert clipped("speed, size", quote=False) == "speed, size"
        assert clipped("y" * 300, limit=3, quote=False) == "yyy… (300 characters)"

    def test_other_values_are_bounded(self) -> None:
        """A container is shown with reprlib's bounds, then cut: the work and the text stay small."""
        text = clipped(list(range(100_000)), limit=20)
        assert len(text) <= 21
        assert text.startswith("[0, 1, 2")
        assert clipped(12) == "12"
