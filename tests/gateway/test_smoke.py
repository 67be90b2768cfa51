"""The gateway answers the openai SDK end to end on the devnet."""

from __future__ import annotations

import openai

from tests.gateway.conftest import API_KEY, CHAT_MODEL, ServeFactory


async def test_async_chat_through_gateway(serve: ServeFactory) -> None:
    """A plain chat completion through the gateway comes back from one of the model's providers."""
    served = await serve()
    async with openai.AsyncOpenAI(base_url=served.base_url, api_key=API_KEY, max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hello"}]
        )
    reply = raw.parse()
    assert reply.choices[0].message.content
    assert raw.headers["x-zg-provider"] in {p.address for p in served.devnet.providers[:3]}
    assert raw.headers["x-zg-attempts"] == "1"
