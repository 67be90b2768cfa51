"""pydantic-ai on the router's in-process client: an agent with a tool, run to its final output."""

from __future__ import annotations

import asyncio

import openai
from pydantic_ai import Agent
from pydantic_ai.messages import ToolCallPart, ToolReturnPart
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.usage import UsageLimits

from tests.gateway.conftest import CHAT_MODEL
from tests.gateway.support import TIMEOUT

# One tool call, then the answer: two requests. Anything more is a loop.
LIMITS = UsageLimits(request_limit=3)


def glossary_agent(client: openai.AsyncOpenAI, asked: list[str]) -> Agent[None, str]:
    model = OpenAIChatModel(CHAT_MODEL, provider=OpenAIProvider(openai_client=client))
    agent = Agent(model, instructions="Answer with the glossary's help.")

    @agent.tool_plain
    def glossary(input: str) -> str:
        """A term's meaning (the simulator fills a tool's arguments as ``{"input": ...}``)."""
        asked.append(input)
        return f"{input}: a decentralized inference marketplace"

    return agent


async def test_agent_calls_its_tool_then_answers(client: openai.AsyncOpenAI) -> None:
    """``agent.run`` calls the tool, hands its result back, and ends on the model's text answer."""
    asked: list[str] = []
    result = await asyncio.wait_for(
        glossary_agent(client, asked).run("What is 0G?", usage_limits=LIMITS), TIMEOUT
    )
    assert len(asked) == 1
    parts = [part for message in result.all_messages() for part in message.parts]
    assert [p.tool_name for p in parts if isinstance(p, ToolCallPart)] == ["glossary"]
    assert [p.content for p in parts if isinstance(p, ToolReturnPart)] == [
        f"{asked[0]}: a decentralized inference marketplace"
    ]
    assert isinstance(result.output, str)
    assert result.output
    assert result.usage.requests == 2


async def test_streamed_agent_run_reaches_its_final_output(client: openai.AsyncOpenAI) -> None:
    """``agent.run_stream`` streams the answer after the tool call; its text is the final output."""
    asked: list[str] = []
    agent = glossary_agent(client, asked)
    async with asyncio.timeout(TIMEOUT), agent.run_stream("What is 0G?", usage_limits=LIMITS) as run:
        pieces = [piece async for piece in run.stream_text(delta=True)]
        output = await run.get_output()
    assert len(asked) == 1
    assert "".join(pieces) == output
    assert output
