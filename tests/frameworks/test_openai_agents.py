"""The OpenAI Agents SDK on the router's in-process client: a tool-using agent run to its final output."""

from __future__ import annotations

import asyncio

import openai
import pytest
from agents import (
    Agent,
    MessageOutputItem,
    OpenAIChatCompletionsModel,
    Runner,
    ToolCallItem,
    ToolCallOutputItem,
    function_tool,
    set_tracing_disabled,
)
from openai.types.responses import ResponseTextDeltaEvent

from tests.gateway.conftest import CHAT_MODEL
from tests.gateway.support import TIMEOUT

# The model makes one tool call, gets its result, then answers: two model calls. Anything more is a loop.
MAX_TURNS = 3


@pytest.fixture(autouse=True, scope="module")
def no_tracing() -> None:
    """The SDK exports traces to OpenAI by default; nothing here may leave the machine (it stays off)."""
    set_tracing_disabled(True)


def weather_agent(client: openai.AsyncOpenAI, asked: list[str]) -> Agent:
    @function_tool
    def weather(input: str) -> str:
        """Today's weather in a city (the simulator fills a tool's arguments as ``{"input": ...}``)."""
        asked.append(input)
        return f"sunny in {input}"

    return Agent(
        name="forecaster",
        instructions="Answer with the weather tool's help.",
        tools=[weather],
        model=OpenAIChatCompletionsModel(model=CHAT_MODEL, openai_client=client),
    )


async def test_agent_calls_its_tool_then_answers(client: openai.AsyncOpenAI) -> None:
    """``Runner.run`` goes model → tool → model and ends on the model's text answer."""
    asked: list[str] = []
    agent = weather_agent(client, asked)
    result = await asyncio.wait_for(
        Runner.run(agent, "What's the weather in Paris?", max_turns=MAX_TURNS), TIMEOUT
    )
    assert len(asked) == 1
    kinds = [type(item) for item in result.new_items]
    assert kinds == [ToolCallItem, ToolCallOutputItem, MessageOutputItem]
    assert isinstance(result.final_output, str)
    assert result.final_output
    assert len(result.raw_responses) == 2


async def test_streamed_agent_run_reaches_its_final_output(client: openai.AsyncOpenAI) -> None:
    """``Runner.run_streamed`` streams the answer's text deltas, which add up to the final output."""
    asked: list[str] = []
    agent = weather_agent(client, asked)
    result = Runner.run_streamed(agent, "What's the weather in Paris?", max_turns=MAX_TURNS)
    deltas: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        async for event in result.stream_events():
            if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent):
                deltas.append(event.data.delta)
    assert len(asked) == 1
    assert result.is_complete
    assert "".join(deltas) == result.final_output
    assert result.final_output
