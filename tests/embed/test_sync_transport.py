"""Sync code: ``Router.start_in_thread()`` runs the router on a loop thread it owns, and
``router.openai_client(sync=True)`` is an ``openai.OpenAI`` whose requests run on that loop.

The blocking calls run in a worker thread (``asyncio.to_thread``), as sync code would run them: the
test's own loop keeps serving the devnet's simulated providers meanwhile."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import subprocess
import sys
import threading
from typing import Any

import httpx2
import openai
import pydantic
import pytest

from router.client import Router
from router.config import RouterConfig
from router.devnet import Devnet
from router.devnet.simulator import synth
from router.errors import ChainUnavailable, RouterError
from tests.gateway.conftest import CHAT_MODEL, CHAT_PROVIDERS
from tests.gateway.support import HEX_ID, TIMEOUT, WAV, WEATHER_TOOL
from tests.gateway.support import TALK as MESSAGES
from tests.support import in_flight


class Answer(pydantic.BaseModel):
    answer: str


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "zg-router-loop"]


async def blocking(function: Any, *args: Any) -> Any:
    return await asyncio.wait_for(asyncio.to_thread(function, *args), TIMEOUT)


class TestLifecycle:
    async def test_the_loop_thread_opens_the_router_and_closes_it_on_exit(
        self, embed_config: RouterConfig
    ) -> None:
        """Inside the block the router is open on its own thread and serves; after it the thread is
        gone, and a request on a client made inside fails as a connection error, never a hang."""

        def run() -> tuple[str | None, int, openai.OpenAI]:
            with Router(embed_config).start_in_thread() as router:
                sdk = router.openai_client(sync=True, timeout=TIMEOUT)
                reply = sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
                open_threads = len(loop_threads())
            return reply.choices[0].message.content, open_threads, sdk

        text, open_threads, sdk = await blocking(run)
        assert text
        assert open_threads == 1
        assert loop_threads() == []
        with pytest.raises(openai.APIConnectionError):
            await blocking(
                functools.partial(sdk.chat.completions.create, model=CHAT_MODEL, messages=MESSAGES)
            )

    async def test_a_router_that_cannot_open_raises_in_the_caller(self, embed_config: RouterConfig) -> None:
        """Opening fails in the loop thread (no RPC URL answers): the error is raised where
        start_in_thread is entered, and no thread is left behind."""
        assert embed_config.network is not None
        network = dataclasses.replace(embed_config.network, rpc_urls=("http://127.0.0.1:9",))
        config = dataclasses.replace(embed_config, network=network)

        def run() -> None:
            with Router(config).start_in_thread():
                pass

        with pytest.raises(ChainUnavailable):
            await blocking(run)
        assert loop_threads() == []

    async def test_a_sync_client_needs_the_loop_thread(self, embedded: Router) -> None:
        """Asking an async-opened router for a sync client says how to get one."""
        with pytest.raises(RouterError, match=r"start_in_thread\(\)"):
            embedded.openai_client(sync=True)

    async def test_a_threaded_router_gives_no_async_client(self, threaded: Router) -> None:
        """An async client of a router on its loop thread would await that loop's futures on another
        loop: it is refused with the way out."""
        with pytest.raises(RouterError, match="sync=True"):
            threaded.openai_client()

    def test_a_forgotten_router_is_closed_at_interpreter_exit(self) -> None:
        """A program that enters start_in_thread and never leaves the block still exits at once and
        cleanly: the router is closed on its loop before the interpreter goes."""
        program = """
import atexit
from router import Router, RouterConfig, StaticUpstream

upstream = StaticUpstream(name="none", url="http://127.0.0.1:9/v1", models=("m",))
router = Router(RouterConfig(static_upstreams=(upstream,)))
running = router.start_in_thread()
# atexit runs hooks last-in first-out: registered before the router's, this one runs after it.
atexit.register(lambda: print("closed" if running._loop.is_closed() else "still open", flush=True))
running.__enter__()
print("open", flush=True)
"""
        done = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
        assert (done.returncode, done.stdout.split(), done.stderr) == (0, ["open", "closed"], "")


class TestEndpoints:
    async def test_chat_stream_and_receipts(self, threaded: Router, gateway_devnet: Devnet) -> None:
        """Chat, a stream read to the end, and a raw response with the gateway's receipts, all from a
        blocking client."""

        def run() -> tuple[Any, str, Any]:
            with threaded.openai_client(sync=True) as sdk:
                raw = sdk.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=MESSAGES)
                with sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True) as stream:
                    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            return raw, text, raw.parse()

        raw, text, reply = await blocking(run)
        expected = synth.complete({"model": CHAT_MODEL, "messages": MESSAGES}).text
        assert reply.choices[0].message.content == expected
        assert text
        assert raw.headers["x-zg-provider"] in {p.address for p in gateway_devnet.providers[:CHAT_PROVIDERS]}
        assert raw.headers["x-zg-attempts"] == "1"
        assert HEX_ID.match(raw.headers["x-request-id"])
        assert in_flight(threaded) == 0

    async def test_stream_closed_early_frees_its_slot(self, threaded: Router, gateway_devnet: Devnet) -> None:
        """Leaving a sync stream after its first chunk closes it on the loop: the slot is free at once."""
        for provider in gateway_devnet.providers[:CHAT_PROVIDERS]:
            faults = provider.simulator.faults.faults
            await provider.simulator.set_faults(type(faults)(chunk_delay=0.05))

        def run() -> tuple[int, int]:
            with threaded.openai_client(sync=True) as sdk:
                stream = sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
                next(iter(stream))
                during = in_flight(threaded)
                stream.close()
                after = in_flight(threaded)
            return during, after

        assert await blocking(run) == (1, 0)

    async def test_tools_and_parse(self, threaded: Router) -> None:
        """A tool call, and chat.completions.parse into a pydantic model."""

        def run() -> tuple[Any, Any]:
            with threaded.openai_client(sync=True) as sdk:
                tools = sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, tools=[WEATHER_TOOL])
                parsed = sdk.chat.completions.parse(
                    model=CHAT_MODEL, messages=MESSAGES, response_format=Answer
                )
            return tools, parsed

        tools, parsed = await blocking(run)
        calls = tools.choices[0].message.tool_calls
        assert [call.function.name for call in calls] == ["get_weather"]
        assert isinstance(parsed.choices[0].message.parsed, Answer)

    async def test_embeddings_images_and_transcriptions(self, threaded: Router) -> None:
        """The other endpoints, each from the blocking client."""

        def run() -> tuple[Any, Any, Any]:
            with threaded.openai_client(sync=True) as sdk:
                vectors = sdk.embeddings.create(model="embed-r", input=["one", "two", "three"])
                images = sdk.images.generate(model="image-r", prompt="a boat")
                words = sdk.audio.transcriptions.create(model="whisper-r", file=("a.wav", WAV, "audio/wav"))
            return vectors, images, words

        vectors, images, words = await blocking(run)
        assert len(vectors.data) == 3
        assert base64.b64decode(images.data[0].b64_json).startswith(b"\x89PNG")
        assert words.text == synth.transcription_text(WAV)

    async def test_errors_are_the_sdks_classes(self, threaded: Router) -> None:
        """A bad field is a BadRequestError, an unknown model a NotFoundError, as through the gateway."""

        def run() -> tuple[BaseException, BaseException]:
            with threaded.openai_client(sync=True) as sdk:
                try:
                    sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, temperature=7)
                except openai.BadRequestError as exc:
                    bad = exc
                try:
                    sdk.chat.completions.create(model="no-such-model", messages=MESSAGES)
                except openai.NotFoundError as exc:
                    unknown = exc
            return bad, unknown

        bad, unknown = await blocking(run)
        assert isinstance(bad, openai.BadRequestError)
        assert bad.param == "temperature"
        assert isinstance(unknown, openai.NotFoundError)

    async def test_a_sync_httpx_client_on_the_transport(self, threaded: Router) -> None:
        """The sync transport serves plain httpx2 requests too: the probes and the model list."""

        def run() -> tuple[int, list[str]]:
            with httpx2.Client(transport=threaded.httpx_transport(sync=True)) as http:
                ready = http.get("http://zg-router.invalid/readyz").status_code
                models = http.get("http://zg-router.invalid/v1/models").json()["data"]
            return ready, sorted(m["id"] for m in models)

        assert await blocking(run) == (200, sorted([CHAT_MODEL, "embed-r", "image-r", "whisper-r"]))
