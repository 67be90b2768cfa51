"""What the gateway tests share: raw requests under a timeout, OpenAI error checks, SDK clients, constants.

Every raw request runs under ``TIMEOUT`` (nothing may hang) and no answer may show a traceback.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
from multidict import CIMultiDictProxy

from tests.conftest import watch_text
from tests.gateway.conftest import API_KEY, Served

TIMEOUT = 30.0
HEX_ID = re.compile(r"^[0-9a-f]{32}$")
MESSAGES = [{"role": "user", "content": "hello"}]
CHAT = "/v1/chat/completions"
WAV = b"RIFF" + b"\x00" * 2996  # 3,000 bytes: the simulator says one word per 1,000 bytes
WRONG_KEY = "sk-wrong-" + "fedcba9876543210" * 2
FAKE_SECRET = "sk-live-SECRET-" + "a1b2c3d4" * 4
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Answer:
    """A response read whole: status, headers and text."""

    status: int
    headers: CIMultiDictProxy[str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


async def send(served: Served, method: str, path: str, *, url: str | None = None, **kwargs: Any) -> Answer:
    """One raw request that must answer within TIMEOUT and never show a traceback."""
    async with (
        asyncio.timeout(TIMEOUT),
        served.http.request(method, (url or served.url) + path, **kwargs) as response,
    ):
        text = await response.text()
    assert "Traceback" not in text, text
    watch_text(f"{text} {dict(response.headers)!r}", f"the response to {method} {path[:80]}")
    return Answer(response.status, response.headers, text)


def assert_error(
    answer: Answer,
    status: int,
    kind: str,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    request_id: bool = True,
) -> None:
    """``answer`` is exactly this OpenAI error (and, unless told otherwise, carries a request id)."""
    assert answer.status == status, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == {"error": {"message": message, "type": kind, "param": param, "code": code}}
    if request_id:
        assert HEX_ID.match(answer.headers.get("x-request-id", "")), dict(answer.headers)


def sdk(served: Served, key: str = API_KEY, base_url: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base_url or served.base_url, api_key=key, max_retries=0, timeout=TIMEOUT
    )


def transcription_form(**fields: Any) -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        if isinstance(value, bytes):
            form.add_field(name, value, filename="a.wav", content_type="audio/wav")
        else:
            form.add_field(name, value)
    return form


# A question the simulated model answers at length, and a tool it can be asked to call.
TALK: list[Any] = [{"role": "user", "content": "tell me about the network"}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
