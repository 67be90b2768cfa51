"""LangChain's ``ChatOpenAI`` on the router's in-process client: invoke, stream, tools, structured output.

``ChatOpenAI`` takes ready clients: ``root_async_client`` (the ``AsyncOpenAI``, for ``parse`` and
structured output) and ``async_client`` (its ``chat.completions``, for everything else).
"""

from __future__ import annotations

import asyncio

import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from router import Router
from router.devnet.simulator import synth
from tests.gateway.conftest import CHAT_MODEL
from tests.gateway.support import TIMEOUT


def chat_model(client: openai.AsyncOpenAI) -> ChatOpenAI:
    return ChatOpenAI(model=CHAT_MODEL, root_async_client=client, async_client=client.chat.completions)


@tool
def lookup(input: str) -> str:
    """Look a term up in the glossary."""
    return f"{input}: a decentralized inference marketplace"


class Query(BaseModel):
    """A search query. The simulator fills a tool's arguments as ``{"input": ...}``, whatever the schema."""

    input: str


class Answer(BaseModel):
    """An answer. The simulator's JSON output is ``{"answer": ...}``, whatever the schema."""

    answer: str


async def test_invoke_returns_the_models_message(client: openai.AsyncOpenAI) -> None:
    """``ainvoke`` returns the provider's text as an AIMessage, with its finish reason and token usage."""
    message = await asyncio.wait_for(chat_model(client).ainvoke("What is 0G?"), TIMEOUT)
    assert isinstance(message, AIMessage)
    assert isinstance(message.content, str)
    assert len(message.content.split()) == synth.DEFAULT_COMPLETION_TOKENS
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == synth.DEFAULT_COMPLETION_TOKENS


async def test_stream_yields_the_text_piece_by_piece(client: openai.AsyncOpenAI) -> None:
    """``astream`` yields the reply as chunks that add up to the whole text, then the usage."""
    llm = ChatOpenAI(
        model=CHAT_MODEL, root_async_client=client, async_client=client.chat.completions, stream_usage=True
    )
    chunks = [chunk async for chunk in llm.astream("What is 0G?")]
    assert len([c for c in chunks if c.content]) == synth.DEFAULT_COMPLETION_TOKENS
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert isinstance(whole, AIMessageChunk)
    assert isinstance(whole.content, str)
    assert len(whole.content.split()) == synth.DEFAULT_COMPLETION_TOKENS
    assert whole.usage_metadata is not None
    assert whole.usage_metadata["output_tokens"] == synth.DEFAULT_COMPLETION_TOKENS


async def test_bind_tools_gets_a_tool_call_then_an_answer(client: openai.AsyncOpenAI) -> None:
    """With ``bind_tools`` the model calls the tool; handed the tool's result, it answers in text."""
    llm = chat_model(client).bind_tools([lookup])
    question = HumanMessage("What does 0G mean?")
    called = await asyncio.wait_for(llm.ainvoke([question]), TIMEOUT)
    assert isinstance(called, AIMessage)
    assert len(called.tool_calls) == 1
    call = called.tool_calls[0]
    assert call["name"] == "lookup"
    assert set(call["args"]) == {"input"}
    result = await lookup.ainvoke(call)
    assert isinstance(result, ToolMessage)
    answered = await asyncio.wait_for(llm.ainvoke([question, called, result]), TIMEOUT)
    assert answered.tool_calls == []
    assert isinstance(answered.content, str)
    assert answered.content


@pytest.mark.parametrize(
    ("method", "schema"),
    [("function_calling", Query), ("json_schema", Answer), ("json_mode", Answer)],
)
async def test_with_structured_output_parses_into_the_schema(
    client: openai.AsyncOpenAI, method: str, schema: type[BaseModel]
) -> None:
    """``with_structured_output`` returns an instance of the schema, by each of its three methods: a
    forced tool call, ``response_format`` json_schema (through ``chat.completions.parse``) and json_object."""
    structured = chat_model(client).with_structured_output(schema, method=method)
    parsed = await asyncio.wait_for(structured.ainvoke("Answer in JSON: what is 0G?"), TIMEOUT)
    assert isinstance(parsed, schema)
    assert next(iter(parsed.model_dump().values()))


async def test_sync_invoke_on_the_routers_thread(router: Router) -> None:
    """Sync LangChain code gets the sync client of a router running on its own thread."""

    def invoke() -> AIMessage:
        with Router(router.config).start_in_thread() as threaded:
            sync = threaded.openai_client(sync=True)
            # ChatOpenAI builds a client for the side it is not handed; the key only satisfies that
            # constructor, and that client is never called.
            llm = ChatOpenAI(
                model=CHAT_MODEL, root_client=sync, client=sync.chat.completions, api_key="unused"
            )
            return llm.invoke("What is 0G?")

    message = await asyncio.wait_for(asyncio.to_thread(invoke), TIMEOUT)
    assert isinstance(message.content, str)
    assert len(message.content.split()) == synth.DEFAULT_COMPLETION_TOKENS
