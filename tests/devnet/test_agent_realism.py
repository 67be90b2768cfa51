"""What agent code needs of a model, against the devnet through the router's in-process openai client:
``chat.completions.parse`` into pydantic models, LangChain's ``with_structured_output`` by each of its
methods, tool-calling loops that finish (LangChain's and the OpenAI Agents SDK's), ``n`` choices and
``finish_reason: length``. Nothing is stubbed: the real SDKs parse the simulated model's replies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import openai
import pytest
from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from router import Router, RouterConfig
from router.devnet import Devnet, DevnetConfig, ProviderSpec
from router.devnet.node_tools import NodeModules
from router.devnet.simulator import synth
from tests.gateway.conftest import FAST
from tests.gateway.support import TIMEOUT

MODEL = "agent-model"
# An agent loop makes a model call per step: more than this many and the loop did not end.
MAX_STEPS = 4


class Stop(BaseModel):
    city: str
    nights: int = Field(ge=1, le=14)


class Itinerary(BaseModel):
    """Nested models, a bounded list, an enum-like literal, a range and an optional field."""

    traveller: str
    budget: float = Field(gt=0, le=5000)
    pace: Literal["slow", "normal", "fast"]
    stops: list[Stop] = Field(min_length=1, max_length=3)
    note: str | None = None


class Forecast(BaseModel):
    city: str
    days: int = Field(ge=1, le=7)
    units: Literal["metric", "imperial"]


@pytest.fixture(scope="module")
async def agent_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    providers = (ProviderSpec(model=MODEL, limits=FAST), ProviderSpec(model=MODEL, limits=FAST))
    async with Devnet(DevnetConfig(providers=providers, settle_interval=None), node_modules) as devnet:
        yield devnet


@pytest.fixture(scope="module")
async def router(agent_devnet: Devnet) -> AsyncIterator[Router]:
    async with Router(RouterConfig.for_devnet(agent_devnet)) as opened:
        yield opened


@pytest.fixture
async def client(router: Router) -> AsyncIterator[openai.AsyncOpenAI]:
    async with router.openai_client() as opened:
        yield opened


def chat_model(client: openai.AsyncOpenAI) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, root_async_client=client, async_client=client.chat.completions)


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


class TestStructuredOutput:
    async def test_parse_fills_a_nested_pydantic_model(self, client: openai.AsyncOpenAI) -> None:
        """``chat.completions.parse`` sends the model as a strict JSON schema; the reply parses into it."""
        for index in range(5):
            reply = await asyncio.wait_for(
                client.chat.completions.parse(
                    model=MODEL, messages=ask(f"plan trip {index}"), response_format=Itinerary
                ),
                TIMEOUT,
            )
            choice = reply.choices[0]
            assert choice.finish_reason == "stop"
            assert isinstance(choice.message.parsed, Itinerary)
            assert 1 <= len(choice.message.parsed.stops) <= 3

    async def test_parse_fills_a_strict_tools_arguments(self, client: openai.AsyncOpenAI) -> None:
        """A strict ``pydantic_function_tool``: the SDK parses the call's arguments into the model."""
        reply = await asyncio.wait_for(
            client.chat.completions.parse(
                model=MODEL,
                messages=ask("weather in Oslo?"),
                tools=[openai.pydantic_function_tool(Forecast)],
                tool_choice="required",
            ),
            TIMEOUT,
        )
        calls = reply.choices[0].message.tool_calls
        assert calls is not None
        assert reply.choices[0].finish_reason == "tool_calls"
        assert isinstance(calls[0].function.parsed_arguments, Forecast)

    async def test_a_reply_cut_by_max_tokens_is_a_length_error(self, client: openai.AsyncOpenAI) -> None:
        """Too few ``max_tokens`` for the JSON: finish_reason length, which ``parse`` refuses as the SDK
        does for a real model."""
        with pytest.raises(openai.LengthFinishReasonError):
            await asyncio.wait_for(
                client.chat.completions.parse(
                    model=MODEL, messages=ask("plan"), response_format=Itinerary, max_tokens=3
                ),
                TIMEOUT,
            )

    @pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
    async def test_langchain_with_structured_output_by_each_method(
        self, client: openai.AsyncOpenAI, method: str
    ) -> None:
        """A forced tool call, ``response_format`` json_schema, and JSON mode (whose schema only the
        prompt carries, as LangChain asks of its users) each give an ``Itinerary``."""
        structured = chat_model(client).with_structured_output(Itinerary, method=method)
        instructions = f"Reply in JSON matching this schema: {json.dumps(Itinerary.model_json_schema())}"
        messages = [SystemMessage(instructions), HumanMessage("Plan me a trip.")]
        parsed = await asyncio.wait_for(structured.ainvoke(messages), TIMEOUT)
        assert isinstance(parsed, Itinerary)
        assert parsed.stops


@tool
def forecast(request: Forecast) -> str:
    """The weather forecast for a city."""
    return f"{request.days} days of sun in {request.city} ({request.units})"


@tool
def book(itinerary: Itinerary) -> str:
    """Book a whole itinerary."""
    return f"booked {len(itinerary.stops)} stops for {itinerary.traveller}"


class TestAgentLoops:
    async def test_a_langchain_tool_loop_runs_the_tools_and_ends_on_an_answer(
        self, client: openai.AsyncOpenAI
    ) -> None:
        """``bind_tools`` with nested argument models: the model's calls validate as the tools' inputs
        (LangChain raises otherwise), each result goes back, and the loop ends on a text answer."""
        llm = chat_model(client).bind_tools([forecast, book])
        tools = {"forecast": forecast, "book": book}
        messages: list[BaseMessage] = [HumanMessage("Book me a trip and check the weather.")]
        ran: list[str] = []
        for _ in range(MAX_STEPS):
            message = await asyncio.wait_for(llm.ainvoke(messages), TIMEOUT)
            assert isinstance(message, AIMessage)
            messages.append(message)
            if not message.tool_calls:
                break
            for call in message.tool_calls:
                result = await tools[call["name"]].ainvoke(call)
                assert isinstance(result, ToolMessage)
                ran.append(call["name"])
                messages.append(result)
        else:
            pytest.fail(f"no answer within {MAX_STEPS} model calls")
        assert ran == ["forecast"]
        assert isinstance(messages[-1].content, str)
        assert messages[-1].content

    async def test_an_openai_agents_run_with_a_nested_tool_input_finishes(
        self, client: openai.AsyncOpenAI
    ) -> None:
        """The Agents SDK's strict tool schema (a nested model argument): the call parses, the tool runs
        once, and the run ends on the model's text."""
        set_tracing_disabled(True)
        booked: list[Itinerary] = []

        @function_tool
        def book_trip(itinerary: Itinerary) -> str:
            """Book a whole itinerary."""
            booked.append(itinerary)
            return "booked"

        agent = Agent(
            name="planner",
            instructions="Book what the user asks for.",
            tools=[book_trip],
            model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
        )
        result = await asyncio.wait_for(Runner.run(agent, "Book a trip.", max_turns=MAX_STEPS), TIMEOUT)
        assert len(booked) == 1
        assert isinstance(booked[0], Itinerary)
        assert isinstance(result.final_output, str)
        assert result.final_output


class TestChoices:
    async def test_n_distinct_choices_whole_and_streamed(self, client: openai.AsyncOpenAI) -> None:
        """``n=3``: three distinct choices indexed 0-2, billed together; a stream carries each choice's
        text under its index, each ending with its own finish reason."""
        reply = await client.chat.completions.create(model=MODEL, messages=ask("hi"), n=3)
        assert [c.index for c in reply.choices] == [0, 1, 2]
        assert len({c.message.content for c in reply.choices}) == 3
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 3 * synth.DEFAULT_COMPLETION_TOKENS
        stream = await client.chat.completions.create(
            model=MODEL, messages=ask("hi"), n=2, max_tokens=6, stream=True
        )
        texts, finishes = ["", ""], ["", ""]
        async for chunk in stream:
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
                finishes[choice.index] += choice.finish_reason or ""
        assert [len(t.split()) for t in texts] == [6, 6]
        assert texts[0] != texts[1]
        assert finishes == ["length", "length"]
