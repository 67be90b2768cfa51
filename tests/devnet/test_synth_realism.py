"""The simulated model's replies, as pure functions: schema-valid tool arguments and structured output,
``tool_choice``, ``n`` choices and finish reasons, reproducible under the request."""

from __future__ import annotations

import datetime
import enum
import json
import uuid
from typing import Any, Literal

import jsonschema
import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from router.devnet.simulator import anthropic_messages, synth

# Enough distinct requests per schema that every branch of a union and every optional field is drawn.
DRAWS = 60
HELLO = [{"role": "user", "content": "hello there"}]


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    postcode: str = Field(min_length=5, max_length=5)


class Node(BaseModel):
    """A recursive model: the generator must end it."""

    name: str
    children: list[Node] = []


class Booking(BaseModel):
    """Nesting, enums, literals, ranges, bounded arrays, optionals, formats, maps, tuples, multiples."""

    guest: str
    guests: int = Field(ge=1, le=8)
    share: float = Field(gt=0, lt=1)
    color: Color
    kind: Literal["room", "suite"]
    tags: list[str] = Field(min_length=2, max_length=4)
    address: Address
    note: str | None = None
    day: datetime.date
    at: datetime.datetime
    reference: uuid.UUID
    extras: dict[str, int]
    tree: Node
    pair: tuple[int, str]
    floor: int = Field(multiple_of=5, ge=7, le=40)


HANDWRITTEN = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo"]},
        "days": {"type": "integer", "minimum": 1, "exclusiveMaximum": 4},
        "units": {"type": ["string", "null"], "enum": ["metric", "imperial", None]},
        "points": {
            "type": "array",
            "items": {"type": "number", "minimum": -1.5, "maximum": 1.5},
            "minItems": 1,
            "maxItems": 3,
            "uniqueItems": True,
        },
        "window": {
            "allOf": [
                {"type": "object", "properties": {"from": {"type": "string", "format": "date"}}},
                {"required": ["from", "to"], "properties": {"to": {"type": "string", "format": "time"}}},
            ]
        },
        "code": {"type": "string", "pattern": "^[A-Z]{3}$", "examples": ["abc", "OSL"]},
    },
    "required": ["city", "days", "points", "window", "code"],
    "additionalProperties": False,
}
SCHEMAS = {
    "pydantic": Booking.model_json_schema(),
    "openai-strict": to_strict_json_schema(Booking),
    "handwritten": HANDWRITTEN,
}


def tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def ask(index: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"question number {index}"}]


def arguments(completion: synth.Completion, index: int = 0) -> Any:
    call = completion.choices[index].tool_call
    assert call is not None
    return json.loads(call["function"]["arguments"])


class TestSchemaValues:
    @pytest.mark.parametrize("name", sorted(SCHEMAS))
    def test_tool_arguments_are_valid_against_the_tools_schema(self, name: str) -> None:
        """Across many requests, every tool call's arguments validate against its JSON schema (and, for
        the pydantic model, parse into it); optional fields and union branches are filled too."""
        schema = SCHEMAS[name]
        seen: set[str] = set()
        for index in range(DRAWS):
            completion = synth.complete({"messages": ask(index), "tools": [tool("book", schema)]})
            value = arguments(completion)
            jsonschema.validate(value, schema)
            if name != "handwritten":
                Booking.model_validate(value)
            seen |= set(value)
        assert seen == set(schema["properties"])

    @pytest.mark.parametrize("strict", [False, True])
    def test_json_schema_output_is_valid_against_the_schema(self, strict: bool) -> None:
        """``response_format`` json_schema (strict or not) gives content valid against the schema, with
        finish_reason stop."""
        schema = to_strict_json_schema(Booking) if strict else Booking.model_json_schema()
        fmt = {"type": "json_schema", "json_schema": {"name": "booking", "schema": schema, "strict": strict}}
        for index in range(DRAWS):
            completion = synth.complete({"messages": ask(index), "response_format": fmt})
            choice = completion.choices[0]
            assert choice.finish_reason == "stop"
            assert choice.text is not None
            Booking.model_validate_json(choice.text)
            jsonschema.validate(json.loads(choice.text), schema)

    def test_json_object_output_is_an_object_following_a_schema_the_prompt_gives(self) -> None:
        """JSON mode: an object (a free-form ``answer`` without a schema), or an instance of a JSON
        schema the messages spell out, as a model that reads its instructions gives."""
        fmt = {"type": "json_object"}
        plain = synth.complete({"messages": HELLO, "response_format": fmt})
        assert plain.text is not None
        assert set(json.loads(plain.text)) == {"answer"}
        instructions = f"Answer as JSON matching this schema: {json.dumps(Address.model_json_schema())}"
        prompted = synth.complete(
            {"messages": [{"role": "system", "content": instructions}, *HELLO], "response_format": fmt}
        )
        assert prompted.text is not None
        Address.model_validate_json(prompted.text)

    def test_the_same_request_gets_the_same_reply_and_another_request_another(self) -> None:
        body = {"messages": HELLO, "tools": [tool("book", Booking.model_json_schema())], "n": 2}
        assert synth.complete(body) == synth.complete(json.loads(json.dumps(body)))
        assert arguments(synth.complete(body)) != arguments(synth.complete({**body, "messages": ask(1)}))


TOOLS = [tool("lookup", {"type": "object"}), tool("weather", HANDWRITTEN)]
AFTER_RESULT = [
    *HELLO,
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
]


class TestToolChoice:
    @pytest.mark.parametrize(
        ("choice", "messages", "called"),
        [
            pytest.param(None, HELLO, "lookup", id="unsaid-calls-the-first"),
            pytest.param("auto", HELLO, "lookup", id="auto-calls-the-first"),
            pytest.param("auto", AFTER_RESULT, None, id="auto-answers-a-tool-result"),
            pytest.param("none", HELLO, None, id="none-answers-in-text"),
            pytest.param("required", AFTER_RESULT, "lookup", id="required-calls-even-after-a-result"),
            pytest.param(
                {"type": "function", "function": {"name": "weather"}}, AFTER_RESULT, "weather", id="named"
            ),
        ],
    )
    def test_tool_choice_decides_between_a_call_and_text(
        self, choice: Any, messages: list[dict[str, Any]], called: str | None
    ) -> None:
        body: dict[str, Any] = {"messages": messages, "tools": TOOLS}
        if choice is not None:
            body["tool_choice"] = choice
        assert synth.rejection(body) is None
        reply = synth.complete(body).choices[0]
        if called is None:
            assert (reply.tool_call, reply.finish_reason) == (None, "stop")
            assert reply.text
        else:
            assert reply.tool_call is not None
            assert reply.tool_call["function"]["name"] == called
            assert (reply.text, reply.finish_reason) == (None, "tool_calls")
            if called == "weather":
                jsonschema.validate(json.loads(reply.tool_call["function"]["arguments"]), HANDWRITTEN)

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            pytest.param(
                {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                'tool_choice names the function "nope", which is not among the tools',
                id="named-unknown",
            ),
            pytest.param(
                {"tool_choice": "required"}, 'tool_choice "required" needs tools', id="required-alone"
            ),
            pytest.param(
                {"tools": TOOLS, "tool_choice": "sometimes"},
                "tool_choice must be one of none, auto, required or name a function",
                id="unknown-mode",
            ),
            pytest.param({"n": 0}, "n must be an integer from 1 to 128, got 0", id="n-zero"),
            pytest.param(
                {"response_format": {"type": "json_schema"}},
                "response_format.json_schema must be an object with a schema",
                id="schema-missing",
            ),
        ],
    )
    def test_a_choice_the_model_cannot_follow_is_its_400(self, fields: dict[str, Any], message: str) -> None:
        refusal = synth.rejection({"messages": HELLO, **fields})
        assert refusal is not None
        assert refusal["error"]["message"] == message
        assert refusal["error"]["type"] == "BadRequestError"


class TestChoicesAndFinish:
    def test_n_choices_are_distinct_and_indexed_and_billed_together(self) -> None:
        completion = synth.complete({"messages": HELLO, "n": 3})
        body = synth.response_body(completion, chat_id="k", model="m")
        assert [c["index"] for c in body["choices"]] == [0, 1, 2]
        texts = [c["message"]["content"] for c in body["choices"]]
        assert len(set(texts)) == 3
        assert body["usage"]["completion_tokens"] == 3 * synth.DEFAULT_COMPLETION_TOKENS

    def test_n_streamed_choices_reassemble_per_index(self) -> None:
        completion = synth.complete({"messages": HELLO, "n": 2, "max_tokens": 5})
        chunks = [
            json.loads(e.removeprefix(b"data: "))
            for e in synth.stream_events(completion, chat_id="k", model="m")[:-1]
        ]
        texts, finishes = ["", ""], [None, None]
        for chunk in chunks[:-1]:
            (choice,) = chunk["choices"]
            texts[choice["index"]] += choice["delta"].get("content", "")
            finishes[choice["index"]] = choice["finish_reason"] or finishes[choice["index"]]
        assert texts == [c.text for c in completion.choices]
        assert finishes == ["length", "length"]
        assert chunks[-1]["usage"]["completion_tokens"] == 10

    @pytest.mark.parametrize(
        ("fields", "finish", "tokens"),
        [
            pytest.param({}, "stop", synth.DEFAULT_COMPLETION_TOKENS, id="text-stops"),
            pytest.param({"max_tokens": 5}, "length", 5, id="text-cut-by-max-tokens"),
            pytest.param({"max_tokens": 40}, "stop", synth.DEFAULT_COMPLETION_TOKENS, id="text-ends-first"),
            pytest.param({"max_tokens": 40, "ignore_eos": True}, "length", 40, id="ignore-eos-runs-on"),
            pytest.param({"max_completion_tokens": 3, "max_tokens": 9}, "length", 3, id="completion-wins"),
        ],
    )
    def test_text_finish_reason_and_length(self, fields: dict[str, Any], finish: str, tokens: int) -> None:
        reply = synth.complete({"messages": HELLO, **fields}).choices[0]
        assert (reply.finish_reason, reply.tokens) == (finish, tokens)
        assert reply.text is not None
        assert len(reply.text.split()) == tokens

    def test_max_tokens_cuts_structured_output_and_tool_calls(self) -> None:
        """JSON and tool arguments end where ``max_tokens`` does, with finish_reason length; with room
        they are whole (stop, tool_calls) and bill their own length."""
        fmt = {"type": "json_schema", "json_schema": {"name": "b", "schema": Booking.model_json_schema()}}
        for fields, whole_finish in (({"response_format": fmt}, "stop"), ({"tools": [TOOL]}, "tool_calls")):
            whole = synth.complete({"messages": HELLO, **fields}).choices[0]
            cut = synth.complete({"messages": HELLO, **fields, "max_tokens": 4}).choices[0]
            assert whole.finish_reason == whole_finish
            assert whole.tokens == len(_said(whole).split()) > 4
            assert (cut.finish_reason, cut.tokens) == ("length", 4)
            assert len(_said(cut).split()) == 4
            with pytest.raises(json.JSONDecodeError):
                json.loads(_said(cut))

    def test_a_streamed_tool_call_sends_its_name_then_its_arguments(self) -> None:
        completion = synth.complete({"messages": HELLO, "tools": [TOOL], "stream": True})
        events = synth.stream_events(completion, chat_id="k", model="m")
        deltas = [
            json.loads(e.removeprefix(b"data: "))["choices"][0]["delta"].get("tool_calls", [{}])[0]
            for e in events[:-2]
        ]
        calls = [d for d in deltas if d]
        assert calls[0]["function"] == {"name": "book", "arguments": ""}
        assert calls[0]["id"].startswith("call_")
        assert all("name" not in d["function"] for d in calls[1:])
        joined = "".join(d["function"]["arguments"] for d in calls)
        assert completion.choices[0].tool_call is not None
        assert joined == completion.choices[0].tool_call["function"]["arguments"]
        Booking.model_validate_json(joined)


TOOL = tool("book", Booking.model_json_schema())


def reply(request: dict[str, Any]) -> dict[str, Any]:
    """The Messages reply to ``request``."""
    return anthropic_messages.message_body(anthropic_messages.complete(request), message_id="m", model="x")


def _said(choice: synth.Choice) -> str:
    if choice.tool_call is not None:
        return str(choice.tool_call["function"]["arguments"])
    assert choice.text is not None
    return choice.text


WEATHER = {"name": "weather", "input_schema": HANDWRITTEN}


class TestAnthropicTranslation:
    def test_a_tool_use_then_its_result_then_an_answer(self) -> None:
        """Messages with tools: a ``tool_use`` valid against the ``input_schema``; handed a
        ``tool_result``, the model answers with text and ends its turn."""
        first = {"max_tokens": 1024, "messages": HELLO, "tools": [WEATHER]}
        assert anthropic_messages.rejection(first) is None
        called = reply(first)
        (block,) = called["content"]
        assert (block["type"], block["name"], called["stop_reason"]) == ("tool_use", "weather", "tool_use")
        jsonschema.validate(block["input"], HANDWRITTEN)
        result = {
            "type": "tool_result",
            "tool_use_id": block["id"],
            "content": [{"type": "text", "text": "9C"}],
        }
        turns = [*HELLO, {"role": "assistant", "content": [block]}, {"role": "user", "content": [result]}]
        answered = reply({**first, "messages": turns})
        assert answered["stop_reason"] == "end_turn"
        assert [b["type"] for b in answered["content"]] == ["text"]
        assert len(answered["content"][0]["text"].split()) == synth.DEFAULT_COMPLETION_TOKENS

    @pytest.mark.parametrize(
        ("tool_choice", "kind"),
        [
            ({"type": "any"}, "tool_use"),
            ({"type": "none"}, "text"),
            ({"type": "tool", "name": "weather"}, "tool_use"),
        ],
    )
    def test_tool_choice(self, tool_choice: dict[str, Any], kind: str) -> None:
        body = {"max_tokens": 50, "messages": HELLO, "tools": [WEATHER], "tool_choice": tool_choice}
        assert reply(body)["content"][0]["type"] == kind

    def test_max_tokens_only_cuts(self) -> None:
        """``max_tokens`` is mandatory here: above the reply's length it changes nothing."""
        long = anthropic_messages.complete({"max_tokens": 4096, "messages": HELLO}).choices[0]
        short = anthropic_messages.complete({"max_tokens": 3, "messages": HELLO}).choices[0]
        assert (long.tokens, long.finish_reason) == (synth.DEFAULT_COMPLETION_TOKENS, "stop")
        assert (short.tokens, short.finish_reason) == (3, "length")

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"max_tokens": None}, "max_tokens: Field required"),
            ({"messages": [{"role": "system", "content": "x"}]}, "messages.0: must be an object whose role"),
            (
                {"tool_choice": {"type": "tool", "name": "nope"}},
                "tool_choice.name: must name one of the tools",
            ),
        ],
    )
    def test_a_request_the_model_cannot_read_is_an_anthropic_400(
        self, fields: dict[str, Any], message: str
    ) -> None:
        body = {k: v for k, v in {"max_tokens": 5, "messages": HELLO, **fields}.items() if v is not None}
        refusal = anthropic_messages.rejection(body)
        assert refusal is not None
        assert refusal["type"] == "error"
        assert refusal["error"]["type"] == "invalid_request_error"
        assert refusal["error"]["message"].startswith(message)
