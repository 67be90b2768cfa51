"""Chat completions come back as Messages replies, whole or streamed; errors take Anthropic's shape.

The chat-completions side is the simulated model's own output (``router.devnet.simulator.synth``), as a
provider sends it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from router.anthropic.errors import error_body, error_type, upstream_error_body
from router.anthropic.from_chat import MalformedReply, from_chat
from router.anthropic.stream import ChatToMessages, NativeRelay, sse
from router.devnet.simulator import synth
from router.transport.sse import DONE, error_event

TALK = {"model": "model-r", "messages": [{"role": "user", "content": "tell me"}], "max_tokens": 5}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALLING = {**TALK, "tools": [TOOL]}


def completion_doc(request: dict[str, Any]) -> dict[str, Any]:
    return synth.response_body(synth.complete(request), chat_id="key-1", model="model-r")


def decoded(events: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """Each Anthropic event as (its ``event:`` name, its data), checking the two name the same type."""
    out = []
    for event in events:
        head, data = event.split(b"\n", 1)
        assert head.startswith(b"event: ")
        assert data.startswith(b"data: ")
        assert event.endswith(b"\n\n")
        body = json.loads(data[6:])
        assert body["type"] == head[7:].decode()
        out.append((body["type"], body))
    return out


def translated_stream(request: dict[str, Any], **options: Any) -> list[tuple[str, dict[str, Any]]]:
    translator = ChatToMessages(model="model-r", **options)
    chunks = synth.stream_events(synth.complete(request), chat_id="key-1", model="model-r")
    return decoded([out for event in chunks for out in translator.feed(event)])


class TestWholeReply:
    def test_text_reply(self) -> None:
        """The model's text is one text block; id, model, stop reason and usage are Anthropic's."""
        doc = completion_doc(TALK)
        message = from_chat(doc, model="asked", stop_sequences=())
        assert message == {
            "id": "msg_key-1",
            "type": "message",
            "role": "assistant",
            "model": "model-r",
            "content": [{"type": "text", "text": doc["choices"][0]["message"]["content"]}],
            "stop_reason": "max_tokens",  # the simulated model talks until max_tokens cuts it
            "stop_sequence": None,
            "usage": {"input_tokens": doc["usage"]["prompt_tokens"], "output_tokens": 5},
        }

    def test_tool_call_reply(self) -> None:
        """A tool call is a tool_use block: its id kept, its arguments decoded as the input."""
        doc = completion_doc(CALLING)
        call = doc["choices"][0]["message"]["tool_calls"][0]
        message = from_chat(doc, model="model-r", stop_sequences=())
        assert message["content"] == [
            {
                "type": "tool_use",
                "id": call["id"],
                "name": "get_weather",
                "input": json.loads(call["function"]["arguments"]),
            }
        ]
        assert message["stop_reason"] == "tool_use"

    @pytest.mark.parametrize(
        ("choice", "reason", "sequence"),
        [
            ({"finish_reason": "stop"}, "end_turn", None),
            ({"finish_reason": "length"}, "max_tokens", None),
            ({"finish_reason": "content_filter"}, "refusal", None),
            ({"finish_reason": "stop", "stop_reason": "END"}, "stop_sequence", "END"),
            # vLLM names a stop token id, or a stop string the request did not ask for: the end of a turn.
            ({"finish_reason": "stop", "stop_reason": 128009}, "end_turn", None),
            ({"finish_reason": "stop", "stop_reason": "</s>"}, "end_turn", None),
            ({"finish_reason": None}, "end_turn", None),
            (
                {
                    "finish_reason": "stop",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": ""}}],
                },
                "tool_use",
                None,
            ),
        ],
    )
    def test_stop_reason(self, choice: dict[str, Any], reason: str, sequence: str | None) -> None:
        """finish_reason maps to stop_reason; vLLM's matched stop string is the stop_sequence; any reply
        with a tool call stops for tool_use."""
        message: dict[str, Any] = {"role": "assistant", "content": "x"}
        if "tool_calls" in choice:
            message["tool_calls"] = choice.pop("tool_calls")
        doc = {"choices": [{"index": 0, "message": message, **choice}]}
        reply = from_chat(doc, model="m", stop_sequences=["END"])
        assert (reply["stop_reason"], reply["stop_sequence"]) == (reason, sequence)

    def test_cached_tokens_are_apart(self) -> None:
        """Anthropic's input_tokens exclude those read from cache, which it counts on their own."""
        usage = {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 60}}
        doc = {"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}], "usage": usage}
        reply = from_chat(doc, model="m", stop_sequences=())
        assert reply["usage"] == {"input_tokens": 40, "output_tokens": 7, "cache_read_input_tokens": 60}
        assert reply["id"].startswith("msg_")
        assert reply["model"] == "m"

    @pytest.mark.parametrize(
        ("doc", "problem"),
        [
            ({"object": "chat.completion"}, "it has no choices[0].message"),
            ({"choices": [{"message": "x"}]}, "it has no choices[0].message"),
            (
                {"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}}]},
                "a tool call's arguments are not a JSON object",
            ),
            (
                {"choices": [{"message": {"tool_calls": [{"function": {}}]}}]},
                "a tool call has no function name",
            ),
        ],
    )
    def test_a_reply_that_is_no_chat_completion(self, doc: dict[str, Any], problem: str) -> None:
        """A reply this route cannot turn into a message says what is wrong with it."""
        with pytest.raises(MalformedReply, match=re.escape(problem)):
            from_chat(doc, model="m", stop_sequences=())


class TestStream:
    def test_text_stream(self) -> None:
        """message_start and a ping, one text block of deltas, then message_delta (stop reason and the
        usage the last chunk gave) and message_stop."""
        completion = synth.complete({**TALK, "stream": True})
        events = translated_stream({**TALK, "stream": True})
        kinds = [kind for kind, _ in events]
        assert kinds[:3] == ["message_start", "ping", "content_block_start"]
        assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
        assert set(kinds[3:-3]) == {"content_block_delta"}
        start = events[0][1]["message"]
        assert (start["id"], start["model"], start["content"], start["role"]) == (
            "msg_key-1",
            "model-r",
            [],
            "assistant",
        )
        assert events[2][1] == {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        text = "".join(body["delta"]["text"] for kind, body in events if kind == "content_block_delta")
        assert text == completion.text
        assert events[-2][1] == {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {
                "input_tokens": completion.prompt_tokens,
                "output_tokens": completion.completion_tokens,
            },
        }

    def test_tool_call_stream(self) -> None:
        """A tool call is a tool_use block (id and name at its start) whose input_json_delta fragments
        join to its arguments; the stop reason is tool_use."""
        request = {**CALLING, "stream": True}
        call = synth.complete(request).choices[0].tool_call
        assert call is not None
        events = translated_stream(request)
        starts = [body for kind, body in events if kind == "content_block_start"]
        assert starts == [
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": call["id"], "name": "get_weather", "input": {}},
            }
        ]
        fragments = [body["delta"] for kind, body in events if kind == "content_block_delta"]
        assert {d["type"] for d in fragments} == {"input_json_delta"}
        assert "".join(d["partial_json"] for d in fragments) == call["function"]["arguments"]
        assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    def test_text_then_tool_calls_are_blocks_in_turn(self) -> None:
        """Each new block closes the one before, and indices count up."""
        translator = ChatToMessages(model="m")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            body = {"id": "chatcmpl-k", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + json.dumps(body).encode() + b"\n\n"

        def call(index: int, **fields: Any) -> dict[str, Any]:
            return {"tool_calls": [{"index": index, **fields}]}

        chunks = [
            chunk({"content": "let me look"}),
            chunk(call(0, id="c0", function={"name": "a", "arguments": '{"x":'})),
            chunk(call(0, function={"arguments": " 1}"})),
            chunk(call(1, id="c1", function={"name": "b", "arguments": "{}"})),
            chunk({}, "tool_calls"),
            DONE,
        ]
        events = decoded([out for event in chunks for out in translator.feed(event)])
        shape = [(kind, body.get("index")) for kind, body in events]
        assert shape == [
            ("message_start", None),
            ("ping", None),
            ("content_block_start", 0),
            ("content_block_delta", 0),
            ("content_block_stop", 0),
            ("content_block_start", 1),
            ("content_block_delta", 1),
            ("content_block_delta", 1),
            ("content_block_stop", 1),
            ("content_block_start", 2),
            ("content_block_delta", 2),
            ("content_block_stop", 2),
            ("message_delta", None),
            ("message_stop", None),
        ]
        assert events[-2][1]["usage"] == {"input_tokens": 0, "output_tokens": 0}

    def test_interleaved_tool_calls_end_in_an_error(self) -> None:
        """Arguments for a tool call whose block has closed cannot be sent: the stream ends in an error
        event, and nothing after it."""
        translator = ChatToMessages(model="m")

        def tool_chunk(index: int, arguments: str, **fields: Any) -> bytes:
            call = {"index": index, "function": {"arguments": arguments, **fields}}
            return (
                b"data: "
                + json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}).encode()
                + b"\n\n"
            )

        translator.feed(tool_chunk(0, "{", name="a"))
        translator.feed(tool_chunk(1, "{", name="b"))
        [(kind, body)] = decoded(translator.feed(tool_chunk(0, "}")))
        assert (kind, body["error"]["type"]) == ("error", "api_error")
        assert "interleaved" in body["error"]["message"]
        assert translator.feed(DONE) == []

    def test_a_mid_stream_failure_is_an_error_event(self) -> None:
        """The dispatcher's own error event (a provider failing mid-stream) is Anthropic's ``error``
        event; the ``[DONE]`` after it is dropped."""
        translator = ChatToMessages(model="m")
        first = synth.stream_events(synth.complete(TALK), chat_id="k", model="m")[1]
        assert [kind for kind, _ in decoded(translator.feed(first))][:2] == ["message_start", "ping"]
        failed = translator.feed(error_event("the provider failed mid-stream: reset", "stream_interrupted"))
        assert decoded(failed) == [
            (
                "error",
                {
                    "type": "error",
                    "error": {"type": "api_error", "message": "the provider failed mid-stream: reset"},
                },
            )
        ]
        assert translator.feed(DONE) == []

    def test_comments_pass_through(self) -> None:
        """An SSE comment (the synchronous TEE verdict) goes on as it is; blank events do not."""
        translator = ChatToMessages(model="m")
        assert translator.feed(b": x-zg-verify: verified\n\n") == [b": x-zg-verify: verified\n\n"]
        assert translator.feed(b"\n\n") == []

    def test_an_empty_stream_still_makes_a_message(self) -> None:
        """[DONE] before any chunk still gives the client a whole (empty) message."""
        kinds = [kind for kind, _ in decoded(ChatToMessages(model="m").feed(DONE))]
        assert kinds == ["message_start", "ping", "message_delta", "message_stop"]

    def test_a_native_stream_is_relayed(self) -> None:
        """A provider's own Anthropic events go on unchanged, its error events too; only our [DONE] is
        dropped and our error event re-encoded."""
        relay = NativeRelay()
        native = [
            sse("message_start", {"message": {"id": "msg_1"}}),
            sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
            sse("error", {"error": {"type": "overloaded_error", "message": "busy"}}),
        ]
        for event in native:
            assert relay.feed(event) == [event]
        assert relay.feed(DONE) == []
        [(kind, body)] = decoded(
            relay.feed(error_event("the provider failed mid-stream: x", "stream_interrupted"))
        )
        assert (kind, body["error"]) == (
            "error",
            {"type": "api_error", "message": "the provider failed mid-stream: x"},
        )


class TestErrors:
    @pytest.mark.parametrize(
        ("status", "kind"),
        [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (402, "billing_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
        ],
    )
    def test_error_type_by_status(self, status: int, kind: str) -> None:
        """Each status has Anthropic's error type."""
        assert error_type(status) == kind
        assert json.loads(error_body(status, "why", "rid-1")) == {
            "type": "error",
            "error": {"type": kind, "message": "why"},
            "request_id": "rid-1",
        }

    def test_an_openai_rejection_is_reshaped(self) -> None:
        """A chat-completions provider's 400 keeps its message, in Anthropic's shape."""
        body = json.dumps({"error": {"message": "context too long", "type": "BadRequestError", "code": 400}})
        assert json.loads(upstream_error_body(400, body.encode(), "r")) == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "context too long"},
            "request_id": "r",
        }

    def test_an_anthropic_rejection_passes_as_it_came(self) -> None:
        """A native provider's error is Anthropic's already: its body goes on byte for byte."""
        body = b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: required"}}'
        assert upstream_error_body(400, body, "r") is body
