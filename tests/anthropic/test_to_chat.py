"""A Messages request becomes the chat-completions request it means, which the OpenAI route's own parser
accepts; what chat completions cannot carry is refused by name, never dropped silently."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.anthropic.to_chat import to_chat
from router.anthropic.validate import validate_request
from router.errors import InvalidRequest
from router.request import Endpoint, parse_payload

BASE: dict[str, Any] = {"model": "model-r", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
FUNCTION = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": WEATHER["input_schema"],
        "description": "The weather in a city.",
    },
}


def translated(**fields: Any) -> dict[str, Any]:
    """The chat payload for BASE with ``fields``, checked by both parsers on the way."""
    payload = {**BASE, **fields}
    validate_request(payload)
    chat = to_chat(payload)
    parse_payload(Endpoint.CHAT, chat)
    return chat


class TestFields:
    def test_plain_request(self) -> None:
        """Model, messages and max_tokens map one to one."""
        assert translated() == {
            "model": "model-r",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 32,
        }

    def test_sampling_stops_user_and_routing(self) -> None:
        """stop_sequences become ``stop``, metadata.user_id ``user``; the sampling fields and our
        ``provider`` keep their names."""
        chat = translated(
            stop_sequences=["END", "STOP"],
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            metadata={"user_id": "u-1"},
            provider={"sort": "price"},
        )
        assert {k: v for k, v in chat.items() if k not in ("model", "messages", "max_tokens")} == {
            "stop": ["END", "STOP"],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "user": "u-1",
            "provider": {"sort": "price"},
        }

    def test_a_stream_asks_for_usage(self) -> None:
        """A streamed request asks for the usage chunk its final message_delta reports."""
        chat = translated(stream=True)
        assert (chat["stream"], chat["stream_options"]) == (True, {"include_usage": True})
        assert "stream" not in translated(stream=False)

    def test_hints_without_an_equivalent_are_dropped(self) -> None:
        """``thinking``, an effort level and Anthropic's service hints change no answer's shape: they
        are left out."""
        hints = translated(
            thinking={"type": "enabled", "budget_tokens": 2048},
            output_config={"effort": "high"},
            service_tier="auto",
            speed="fast",
            inference_geo="us",
            cache_control={"type": "ephemeral"},
        )
        assert hints == translated()

    def test_a_json_schema_output_is_a_response_format(self) -> None:
        """Structured output (``output_config.format``) is chat completions' json_schema format."""
        schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
        chat = translated(output_config={"format": {"type": "json_schema", "schema": schema}})
        assert chat["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema},
        }

    def test_an_unknown_field_is_refused_by_name(self) -> None:
        """A field with no chat-completions meaning is a 400 naming it, not a silent loss."""
        with pytest.raises(InvalidRequest) as caught:
            translated(container="c-1", mcp_servers=[{"url": "x"}])
        assert caught.value.param == "container"
        assert caught.value.message == (
            "`container`, `mcp_servers` cannot be translated to chat completions, and no provider of this "
            "model serves the Anthropic format natively"
        )


class TestMessages:
    def test_system_string_and_blocks(self) -> None:
        """A system string, or one text block, is a leading system message; several blocks are parts."""
        assert translated(system="be brief")["messages"][0] == {"role": "system", "content": "be brief"}
        one = translated(system=[{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}])
        assert one["messages"][0] == {"role": "system", "content": "a"}
        two = translated(system=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
        assert two["messages"][0]["content"] == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]

    def test_multi_turn_keeps_order_and_roles(self) -> None:
        """Turns keep their order; text blocks become the turn's text."""
        chat = translated(
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
                {"role": "user", "content": [{"type": "text", "text": "more"}]},
            ]
        )
        assert chat["messages"] == [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "more"},
        ]

    def test_images_become_image_url_parts(self) -> None:
        """A base64 image is a data URL, a URL image its URL, beside the turn's text."""
        png = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
        chat = translated(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "compare"},
                        {"type": "image", "source": png},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                    ],
                }
            ]
        )
        assert chat["messages"][0]["content"] == [
            {"type": "text", "text": "compare"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        ]

    def test_tool_use_and_tool_result_round_trip(self) -> None:
        """An assistant's tool_use is a tool call (input JSON-encoded); the user's tool_result a tool
        message for that call id, before the rest of the turn, whose images join the user's content."""
        chat = translated(
            tools=[WEATHER],
            messages=[
                {"role": "user", "content": "weather in Paris?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "I should call it", "signature": "sig"},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [
                                {"type": "text", "text": "sunny"},
                                {
                                    "type": "image",
                                    "source": {"type": "url", "url": "https://example.com/sky.png"},
                                },
                            ],
                        },
                        {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True},
                        {"type": "text", "text": "and tomorrow?"},
                    ],
                },
            ],
        )
        call = {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
        assert chat["messages"][1:] == [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": ""},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "https://example.com/sky.png"}},
                    {"type": "text", "text": "and tomorrow?"},
                ],
            },
        ]
        assert json.loads(chat["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}

    @pytest.mark.parametrize(
        ("block", "param", "message"),
        [
            (
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}},
                "messages[0].content[0].type",
                "`messages[0].content[0]` is a 'document' block, which cannot be translated to chat "
                "completions",
            ),
            (
                {"type": "image", "source": {"type": "file", "file_id": "f"}},
                "messages[0].content[0].source.type",
                "`messages[0].content[0].source.type` 'file' cannot be translated to chat completions "
                "(base64 and url can)",
            ),
        ],
    )
    def test_a_block_chat_cannot_carry_is_refused(
        self, block: dict[str, Any], param: str, message: str
    ) -> None:
        """A block with no chat-completions form is a 400 naming it."""
        with pytest.raises(InvalidRequest) as caught:
            translated(messages=[{"role": "user", "content": [block]}])
        assert caught.value.param == param
        assert caught.value.message.startswith(message)


class TestTools:
    def test_tools_become_functions(self) -> None:
        """A tool's input_schema is its function's parameters."""
        assert translated(tools=[WEATHER])["tools"] == [FUNCTION]

    @pytest.mark.parametrize(
        ("choice", "expected"),
        [
            ({"type": "auto"}, "auto"),
            ({"type": "any"}, "required"),
            ({"type": "none"}, "none"),
            (
                {"type": "tool", "name": "get_weather"},
                {"type": "function", "function": {"name": "get_weather"}},
            ),
        ],
    )
    def test_tool_choice(self, choice: dict[str, Any], expected: Any) -> None:
        """auto, any, tool and none map to auto, required, a named function and none."""
        chat = translated(tools=[WEATHER], tool_choice=choice)
        assert chat["tool_choice"] == expected
        assert "parallel_tool_calls" not in chat

    def test_disable_parallel_tool_use(self) -> None:
        """``disable_parallel_tool_use`` is ``parallel_tool_calls: false``."""
        chat = translated(tools=[WEATHER], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
        assert chat["parallel_tool_calls"] is False

    def test_a_choice_without_tools_is_left_out(self) -> None:
        """auto without tools asks for nothing: chat completions get no tool_choice."""
        assert "tool_choice" not in translated(tool_choice={"type": "auto"})

    def test_a_server_tool_is_refused(self) -> None:
        """Anthropic's server tools run at Anthropic: a chat-completions provider cannot run them."""
        with pytest.raises(InvalidRequest) as caught:
            translated(tools=[WEATHER, {"type": "web_search_20250305", "name": "web_search"}])
        assert caught.value.param == "tools[1].type"
        assert caught.value.message.startswith(
            "`tools[1]` is Anthropic's server tool 'web_search_20250305', which chat-completions providers "
            "do not run"
        )
