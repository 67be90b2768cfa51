"""A simulated provider given fields of the wrong type answers as the real one would: the model server's
400, passed through by the broker (protocol.md §4.2, step 17), never a crash into a 500. A 500 stays a
fault knob."""

from __future__ import annotations

from typing import Any

import pytest

from router.devnet.simulator.faults import Faults
from tests.support import Client, chat_body

# (id, the fields that replace or join a valid chat body's, the param the model server names)
BAD_FIELDS = [
    ("max-tokens-string", {"max_tokens": "abc"}, "max_tokens"),
    ("max-tokens-list", {"max_tokens": [1]}, "max_tokens"),
    ("max-tokens-zero", {"max_tokens": 0}, "max_tokens"),
    ("max-completion-tokens-bool", {"max_completion_tokens": True}, "max_completion_tokens"),
    ("tools-string", {"tools": "x"}, "tools"),
    ("tools-of-numbers", {"tools": [1]}, "tools.0"),
    ("tool-without-function", {"tools": [{"type": "function"}]}, "tools.0"),
    ("response-format-string", {"response_format": "json"}, "response_format"),
    ("stream-string", {"stream": "yes"}, "stream"),
    ("stream-options-string", {"stream": True, "stream_options": "x"}, "stream_options"),
    ("message-not-an-object", {"messages": ["hello"]}, "messages.0"),
]


@pytest.mark.parametrize(
    ("fields", "param"), [case[1:] for case in BAD_FIELDS], ids=[case[0] for case in BAD_FIELDS]
)
async def test_a_field_of_the_wrong_type_is_the_model_servers_400(
    client: Client, fields: dict[str, Any], param: str
) -> None:
    """The reply is a 400 with an OpenAI-shaped BadRequestError naming the field; nothing is billed."""
    simulator = client.provider.simulator
    refused_before = simulator.stats.refused.get(400, 0)
    response = await client.chat(chat_body(client.provider, **fields))
    body = await response.json()
    assert response.status == 400, body
    error = body["error"]
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", param, 400)
    assert set(error) == {"message", "type", "param", "code"}
    assert simulator.stats.refused.get(400, 0) == refused_before + 1
    assert simulator.billing.unsettled(client.address) == 0


async def test_the_provider_serves_normally_after_bad_fields(client: Client) -> None:
    """Bad bodies leave nothing behind: the next well-formed request is a 200 with its completion."""
    for fields in ({"max_tokens": "abc"}, {"tools": [1]}, {"response_format": "json"}):
        assert (await client.chat(chat_body(client.provider, **fields))).status == 400
    response = await client.chat(chat_body(client.provider, max_tokens=3))
    body = await response.json()
    assert response.status == 200, body
    assert body["usage"]["completion_tokens"] == 3


async def test_valid_tools_and_formats_still_complete(client: Client) -> None:
    """Null fields count as unsaid, and a tool or a JSON format of the right shape is served."""
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    for fields in (
        {"max_tokens": None, "tools": None, "response_format": None, "stream_options": None},
        {"tools": [tool], "max_completion_tokens": 2},
        {"response_format": {"type": "json_object"}, "stream": False},
    ):
        response = await client.chat(chat_body(client.provider, **fields))
        assert response.status == 200, await response.text()


async def test_a_500_is_still_the_fault_knob(client: Client) -> None:
    """With ``error_500`` set, a well-formed request gets the broker's 500: the knob, not a crash."""
    await client.provider.simulator.set_faults(Faults(error_500=1.0))
    response = await client.chat(chat_body(client.provider))
    assert response.status == 500
    assert await response.json() == {"error": "Internal Server Error"}
