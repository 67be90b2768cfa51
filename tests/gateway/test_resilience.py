"""Under load and failure, every request still ends well, and the providers' limits hold.

The providers' own counters (their admin stats) are the witness: what they saw from our wallet, not what
the router believes it sent.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest

from router.observability.events import AttemptFailed, BreakerChanged, Event, RequestFinished
from router.pool.health import BreakerState
from tests.gateway.conftest import API_KEY, CHAT_MODEL, CHAT_PROVIDERS, Served, ServeFactory
from tests.support import in_flight

MESSAGES = [{"role": "user", "content": "tell me something"}]


def _per_wallet(stats: dict[str, Any], served: Served) -> int:
    peaks = {k.lower(): v for k, v in stats["peak_in_flight_per_wallet"].items()}
    return int(peaks.get(served.wallet.address.lower(), 0))


class _Events:
    """Collects router events; ``wait_for`` awaits the first event matching a predicate."""

    def __init__(self) -> None:
        self.seen: list[Event] = []
        self._waiters: list[tuple[Any, asyncio.Future[Event]]] = []

    def __call__(self, event: Event) -> None:
        self.seen.append(event)
        for predicate, future in list(self._waiters):
            if not future.done() and predicate(event):
                future.set_result(event)

    async def wait_for(self, predicate: Any) -> Event:
        """The first event matching ``predicate``, seen already or still to come (at most 15 s)."""
        for event in self.seen:
            if predicate(event):
                return event
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        async with asyncio.timeout(15):
            return await future


async def _until(condition: Any) -> None:
    """Wait (at most 10 s) until ``condition()`` holds: router state polled, not a guessed delay."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - the state lives in the router; no event marks it
            await asyncio.sleep(0.005)


class TestLimits:
    async def test_300_at_once_never_exceed_provider_limits(self, serve: ServeFactory) -> None:
        """300 requests at once all succeed, and no provider saw more than 5 in flight or any 429."""
        served = await serve()
        before = [await served.stats(i) for i in range(CHAT_PROVIDERS)]
        async with openai.AsyncOpenAI(base_url=served.base_url, api_key=API_KEY, max_retries=0) as client:
            replies = await asyncio.gather(
                *(client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES) for _ in range(300))
            )
        assert all(r.choices[0].message.content for r in replies)
        after = [await served.stats(i) for i in range(CHAT_PROVIDERS)]
        for index in range(CHAT_PROVIDERS):
            assert _per_wallet(after[index], served) <= 5, after[index]
            assert after[index]["refused"].get("429", 0) == before[index]["refused"].get("429", 0)
        assert sum(a["served"] - b["served"] for a, b in zip(after, before, strict=True)) == 300
        assert in_flight(served.router) == 0

    async def test_saturated_queue_answers_429_with_retry_after(self, serve: ServeFactory) -> None:
        """When every provider is busy past the queue deadline, the client gets our 429 with Retry-After."""
        served = await serve(queue_timeout=0.3)
        for index in range(CHAT_PROVIDERS):
            await served.set_faults(index, latency=2.0)
        body = {"model": CHAT_MODEL, "messages": MESSAGES}

        async def one() -> tuple[int, str | None, dict[str, Any]]:
            url = served.base_url + "/chat/completions"
            async with served.http.post(url, json=body, headers=served.auth()) as response:
                return response.status, response.headers.get("Retry-After"), await response.json()

        # Three providers with five slots each: fifteen go through, three wait past 0.3 s.
        results = await asyncio.gather(*(one() for _ in range(CHAT_PROVIDERS * 5 + 3)))
        assert sorted(status for status, _, _ in results).count(200) == CHAT_PROVIDERS * 5
        limited = [(retry, error) for status, retry, error in results if status == 429]
        assert len(limited) == 3
        for retry, error in limited:
            assert error["error"]["type"] == "rate_limit_error"
            assert retry is not None
            assert int(retry) >= 1


class TestFailover:
    async def test_dead_and_failing_providers_are_routed_around(self, serve: ServeFactory) -> None:
        """With one provider killed and one at 100% 503 mid-run, every request succeeds; the dead one's
        breaker opens, and closes again once it is back."""
        served = await serve()
        events = _Events()
        served.router.subscribe(events)
        dead, failing = served.devnet.providers[0].address, served.devnet.providers[1].address
        async with openai.AsyncOpenAI(base_url=served.base_url, api_key=API_KEY, max_retries=0) as client:

            async def one() -> str:
                try:
                    raw = await client.chat.completions.with_raw_response.create(
                        model=CHAT_MODEL, messages=MESSAGES
                    )
                except openai.APIStatusError as exc:
                    tried = [e for e in events.seen if isinstance(e, AttemptFailed)]
                    pytest.fail(f"{exc.status_code} {exc.body}; failed attempts so far: {tried}")
                assert raw.parse().choices[0].message.content
                return raw.headers["x-zg-provider"]

            first = await asyncio.gather(*(one() for _ in range(10)))
            await served.set_faults(0, down=True)
            await served.set_faults(1, error_503=1.0)
            rest = await asyncio.gather(*(one() for _ in range(40)))
        assert len(first) + len(rest) == 50
        assert set(rest[-20:]) == {served.devnet.providers[2].address}
        await events.wait_for(
            lambda e: isinstance(e, BreakerChanged) and e.provider == dead and e.state == "open"
        )
        await events.wait_for(
            lambda e: isinstance(e, BreakerChanged) and e.provider == failing and e.state == "open"
        )
        await served.set_faults(0, down=False)

        def closed(event: Event) -> bool:
            return isinstance(event, BreakerChanged) and event.provider == dead and event.state == "closed"

        # Once its free probe answers, the next real request it gets closes the breaker.
        pinned = {"X-ZG-Provider": dead, "X-ZG-Allow-Fallbacks": "true"}
        async with openai.AsyncOpenAI(base_url=served.base_url, api_key=API_KEY, max_retries=0) as client:
            for _ in range(100):
                await client.chat.completions.create(
                    model=CHAT_MODEL, messages=MESSAGES, extra_headers=pinned
                )
                if any(closed(e) for e in events.seen):
                    break
        await events.wait_for(closed)
        state = served.router.pool.get(dead)
        assert state is not None
        assert state.health.state is BreakerState.CLOSED

    async def test_stream_dropped_after_first_chunk_ends_with_error_and_done(
        self, serve: ServeFactory
    ) -> None:
        """A stream whose provider drops after the first event ends with an error event and [DONE]."""
        served = await serve()
        await served.set_faults(0, drop_mid_stream=1.0)
        headers = {**served.auth(), "X-ZG-Provider": served.devnet.providers[0].address}
        body = {"model": CHAT_MODEL, "messages": MESSAGES, "stream": True}
        async with asyncio.timeout(10):
            response = await served.http.post(
                served.base_url + "/chat/completions", json=body, headers=headers
            )
            text = await response.text()
        events = [block for block in text.split("\n\n") if block]
        assert response.status == 200
        assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
        error = json.loads(events[-2].removeprefix("data: "))
        assert error["error"]["code"] == "stream_interrupted"
        assert events[-1] == "data: [DONE]"
        state = served.router.pool.get(served.devnet.providers[0].address)
        assert state is not None
        assert in_flight(served.router, state) == 0

    async def test_sdk_stream_drop_raises_instead_of_hanging(self, serve: ServeFactory) -> None:
        """The openai SDK sees the mid-stream failure as an APIError, not a hang or a silent cut."""
        served = await serve()
        await served.set_faults(0, drop_mid_stream=1.0)
        headers = {"X-ZG-Provider": served.devnet.providers[0].address}
        chunks: list[object] = []

        async def read(stream: openai.AsyncStream[Any]) -> None:
            async with asyncio.timeout(10):
                async for chunk in stream:
                    chunks.append(chunk)

        async with openai.AsyncOpenAI(base_url=served.base_url, api_key=API_KEY, max_retries=0) as client:
            stream = await client.chat.completions.create(
                model=CHAT_MODEL, messages=MESSAGES, stream=True, extra_headers=headers
            )
            with pytest.raises(openai.APIError, match="mid-stream"):
                await read(stream)
        assert len(chunks) >= 1


class TestDisconnect:
    async def test_client_disconnect_frees_the_slot(self, serve: ServeFactory) -> None:
        """A client that hangs up while its request is at the provider frees its slot at once."""
        served = await serve()
        events = _Events()
        served.router.subscribe(events)
        await served.set_faults(0, latency=5.0)
        headers = {**served.auth(), "X-ZG-Provider": served.devnet.providers[0].address}
        body = {"model": CHAT_MODEL, "messages": MESSAGES}
        state = served.router.pool.get(served.devnet.providers[0].address)
        assert state is not None
        request = asyncio.ensure_future(
            served.http.post(served.base_url + "/chat/completions", json=body, headers=headers)
        )
        await _until(lambda: in_flight(served.router, state) == 1)
        request.cancel()
        finished = await events.wait_for(lambda e: isinstance(e, RequestFinished) and e.status == 499)
        assert isinstance(finished, RequestFinished)
        assert in_flight(served.router, state) == 0

    async def test_stream_client_disconnect_frees_the_slot(self, serve: ServeFactory) -> None:
        """A streaming client that leaves after the first chunk frees its slot."""
        served = await serve()
        events = _Events()
        served.router.subscribe(events)
        await served.set_faults(0, chunk_delay=1.0)
        headers = {**served.auth(), "X-ZG-Provider": served.devnet.providers[0].address}
        body = {"model": CHAT_MODEL, "messages": MESSAGES, "stream": True}
        async with aiohttp.ClientSession() as http:
            response = await http.post(served.base_url + "/chat/completions", json=body, headers=headers)
            assert (await response.content.readline()).startswith(b"data: ")
            response.close()
        finished = await events.wait_for(lambda e: isinstance(e, RequestFinished) and e.status == 499)
        assert isinstance(finished, RequestFinished)
        assert finished.stream
        state = served.router.pool.get(served.devnet.providers[0].address)
        assert state is not None
        assert in_flight(served.router, state) == 0
