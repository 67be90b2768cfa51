"""A verified stream: the bytes the verifier checks are the upstream's bytes as relayed, and a caller who
waits for the verdict gets it as an SSE comment just before ``[DONE]``.

First ``StreamReply`` alone, over a scripted upstream; then through a real Router against simulated TEE
providers (devnet), honest and altering their replies after signing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import openai
import pytest

from router.attempt import Attempt, Outcomes, Run
from router.client import Router
from router.config import DiscoveryOptions, DispatchOptions, GatewayConfig, MoneyOptions, RouterConfig
from router.devnet import Devnet, DevnetProvider
from router.devnet.simulator.faults import Faults
from router.errors import ProviderUnreachable
from router.observability.events import RequestFinished, Verified
from router.pool.accounting import Hold
from router.pool.capacity import NO_DEMAND, MemoryCapacity
from router.pool.health import Health
from router.pool.providers import Exclusion, ProviderInfo, ProviderKind, ProviderState
from router.pool.trust import Outcome, TrustState
from router.replies import StreamReply, verdict_comment
from router.request import Call, Endpoint, Request, parse_json
from router.server.app import Gateway
from router.transport.http import TransportOptions
from router.transport.sse import DONE, usage_of
from router.verify.check import Finding
from router.verify.verifier import VerifyOptions
from tests.support import EventLog, funded_wallet

UPSTREAM = [
    b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n',
    DONE,
]


def comment(outcome: str) -> bytes:
    return f": x-zg-verify: {outcome}\n\n".encode()


# -- StreamReply over a scripted upstream ---------------------------------------------------------------


class FakeUpstream:
    """What StreamReply needs of a provider's reply: its headers, its events' usage, and ``close``."""

    def __init__(self) -> None:
        self.headers = {"ZG-Res-Key": "chat-1"}
        self.usage: dict[str, Any] | None = None
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class FakeAdmission:
    """Hears the lane capacity's releases (``Capacity.on_change``), by provider."""

    def __init__(self, state: ProviderState) -> None:
        self.released: list[str] = []
        self._state = state

    def on_change(self) -> None:
        self.released.append(self._state.id)


@dataclass
class Scripted:
    """A StreamReply over ``events``, with what it called back."""

    reply: StreamReply
    admission: FakeAdmission
    upstream: FakeUpstream
    verified: list[list[bytes]] = field(default_factory=list)
    waited: list[asyncio.Future[Finding]] = field(default_factory=list)
    finished: list[tuple[int, str | None]] = field(default_factory=list)

    async def read(self) -> list[bytes]:
        async with asyncio.timeout(5):
            return [event async for event in self.reply.events()]


async def upstream_events(
    upstream: FakeUpstream, events: Sequence[bytes], *, then_break: bool
) -> AsyncIterator[bytes]:
    """``events``, keeping their usage on ``upstream`` as ``Upstream.events`` does."""
    for event in events:
        upstream.usage = usage_of(event) or upstream.usage
        yield event
    if then_break:
        raise ProviderUnreachable("0xprovider", "connection reset")


def scripted(
    events: Sequence[bytes],
    *,
    finding: Finding | None = None,
    wait: bool = False,
    then_break: bool = False,
) -> Scripted:
    """A stream whose first event is ``events[0]``; checked when ``finding`` is given (its verdict), the
    caller waiting for it when ``wait``."""
    info = ProviderInfo(
        id="0xprovider",
        kind=ProviderKind.CHAIN,
        base_url="http://127.0.0.1:1/v1/proxy",
        probe_url="http://127.0.0.1:1/v1/models",
        service_type="chatbot",
        models=("m",),
        verifiability="TeeML",
        tee_signer="0x" + "22" * 20,
    )
    state = ProviderState(info, Health(), (None,))
    admission, upstream = FakeAdmission(state), FakeUpstream()
    clock = asyncio.get_running_loop().time
    capacity = MemoryCapacity(clock=clock)
    capacity.configure(state.lanes[0], info.limits)
    lease = capacity.try_acquire(state.lanes, NO_DEMAND, clock())
    assert lease is not None
    capacity.on_change = admission.on_change
    holder: list[Scripted] = []

    def emit(event: object) -> None:
        if isinstance(event, RequestFinished):
            holder[0].finished.append((event.status, event.error))

    outcomes = Outcomes(
        capacity,
        DispatchOptions(),
        emit,
        clock,
        on_unfunded=lambda _: None,
        on_misconfigured=lambda _: None,
    )
    request = parse_json(
        Endpoint.CHAT, b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', {}
    )
    call = Call(request, "rid", clock() + 60, request.prefs)
    run = Run(call, outcomes, lambda _call, _state: None)
    run.attempts = 1
    attempt = Attempt(run, lease, Hold(None, None, 0))
    attempt.send()

    def verify(parts: Sequence[bytes]) -> asyncio.Future[Finding]:
        holder[0].verified.append(list(parts))
        future: asyncio.Future[Finding] = asyncio.get_running_loop().create_future()
        assert finding is not None
        future.set_result(finding)
        return future

    async def wait_for(future: asyncio.Future[Finding]) -> Finding:
        holder[0].waited.append(future)
        return await future

    reply = StreamReply(
        attempt,
        upstream,  # type: ignore[arg-type]
        upstream_events(upstream, events[1:], then_break=then_break),
        events[0],
        ttft=0.1,
        verify=verify if finding is not None else None,
        wait=wait_for if wait else None,
    )
    holder.append(Scripted(reply, admission, upstream))
    return holder[0]


VERIFIED = Finding(Outcome.VERIFIED, "ok", True)
FAILED = Finding(Outcome.FAILED, "signed other bytes", True)


class TestStreamReply:
    async def test_unchecked_the_upstream_events_pass_as_they_came(self) -> None:
        stream = scripted(UPSTREAM)
        assert await stream.read() == UPSTREAM
        assert stream.reply.verification is None
        assert stream.reply.usage == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        assert stream.finished == [(200, None)]
        assert stream.admission.released == ["0xprovider"]

    async def test_checked_the_verifier_gets_every_upstream_event_done_included(self) -> None:
        stream = scripted(UPSTREAM, finding=VERIFIED)
        received = await stream.read()
        assert received == UPSTREAM
        assert stream.verified == [UPSTREAM]
        assert stream.reply.verification is not None
        assert stream.reply.verification.result() is VERIFIED
        assert stream.waited == []
        assert stream.finished == [(200, None)]

    async def test_the_verifier_is_called_only_once_the_stream_has_ended(self) -> None:
        stream = scripted(UPSTREAM, finding=VERIFIED, wait=True)
        events = stream.reply.events()
        for expected in UPSTREAM[:-1]:
            assert await anext(events) == expected
            assert stream.verified == []
            assert stream.reply.verification is None
        assert await anext(events) == comment("verified")
        assert stream.verified == [UPSTREAM]
        assert await anext(events) == DONE
        with pytest.raises(StopAsyncIteration):
            await anext(events)

    @pytest.mark.parametrize(("finding", "outcome"), [(VERIFIED, "verified"), (FAILED, "failed")])
    async def test_a_waiting_caller_gets_the_verdict_right_before_done(
        self, finding: Finding, outcome: str
    ) -> None:
        stream = scripted(UPSTREAM, finding=finding, wait=True)
        received = await stream.read()
        assert received == [*UPSTREAM[:-1], comment(outcome), DONE]
        assert stream.waited == [stream.reply.verification]
        # What the verifier hashes is what the caller got, the comment aside.
        relayed = [event for event in received if not event.startswith(b":")]
        assert b"".join(stream.verified[0]) == b"".join(relayed)

    async def test_the_upstreams_own_done_event_is_relayed_and_checked_byte_for_byte(self) -> None:
        own_done = b"data:[DONE]\r\n\r\n"
        events = [*UPSTREAM[:-1], own_done]
        stream = scripted(events, finding=VERIFIED, wait=True)
        received = await stream.read()
        assert received[-2:] == [comment("verified"), own_done]
        assert stream.verified == [events]

    async def test_a_stream_without_done_gets_one_that_the_verifier_does_not_see(self) -> None:
        events = UPSTREAM[:-1]
        stream = scripted(events, finding=VERIFIED, wait=True)
        assert await stream.read() == [*events, comment("verified"), DONE]
        assert stream.verified == [events]

    async def test_whitespace_after_done_stays_with_it(self) -> None:
        """Bytes after [DONE] (a trailing blank line) were signed too: relayed and checked, after the
        verdict comment like the [DONE] they follow."""
        events = [*UPSTREAM, b"\n"]
        stream = scripted(events, finding=VERIFIED, wait=True)
        assert await stream.read() == [*UPSTREAM[:-1], comment("verified"), DONE + b"\n"]
        assert stream.verified == [events]

    async def test_events_after_done_keep_the_upstreams_order(self) -> None:
        """An upstream that sends on after a [DONE]: the caller gets every event in the order it came,
        the verdict before the last [DONE]."""
        late = b'data: {"late": true}\n\n'
        events = [*UPSTREAM, late, DONE]
        stream = scripted(events, finding=VERIFIED, wait=True)
        assert await stream.read() == [*UPSTREAM, late, comment("verified"), DONE]
        assert stream.verified == [events]

    async def test_the_slot_is_released_before_the_verdict_wait(self) -> None:
        """The provider has finished: its slot (and balance hold) go back, and the request is booked,
        before the caller's wait for the verdict."""
        stream = scripted(UPSTREAM, finding=VERIFIED, wait=True)
        events = stream.reply.events()
        for _ in UPSTREAM[:-1]:
            await anext(events)
        assert stream.admission.released == []
        assert await anext(events) == comment("verified")
        assert stream.admission.released == ["0xprovider"]
        assert stream.finished == [(200, None)]
        assert [event async for event in events] == [DONE]
        assert stream.finished == [(200, None)]

    async def test_a_stream_broken_midway_is_never_checked(self) -> None:
        stream = scripted(UPSTREAM[:2], finding=VERIFIED, wait=True, then_break=True)
        received = await stream.read()
        assert received[:2] == UPSTREAM[:2]
        assert json.loads(received[2].removeprefix(b"data: "))["error"]["code"] == "stream_interrupted"
        assert received[3:] == [DONE]
        assert not any(event.startswith(b":") for event in received)
        assert (stream.verified, stream.waited, stream.reply.verification) == ([], [], None)
        assert [status for status, _ in stream.finished] == [502]

    async def test_a_stream_closed_early_is_never_checked(self) -> None:
        stream = scripted(UPSTREAM, finding=VERIFIED, wait=True)
        assert await anext(stream.reply.events()) == UPSTREAM[0]
        await stream.reply.aclose()
        assert (stream.verified, stream.reply.verification) == ([], None)
        assert stream.finished == [(499, "the caller closed the stream")]
        assert stream.upstream.closed == 1


@pytest.mark.parametrize("outcome", list(Outcome))
def test_the_verdict_comment_is_one_sse_comment(outcome: Outcome) -> None:
    line = verdict_comment(Finding(outcome, "why it does not show"))
    assert line == f": x-zg-verify: {outcome.value}\n\n".encode()
    assert line.count(b"\n\n") == 1
    assert line.endswith(b"\n\n")
    assert b"why" not in line


# -- through a Router, against simulated TEE providers ------------------------------------------------

API_KEY = "sk-test-" + "0123456789abcdef" * 2
MODEL = "model-a"  # served by providers 0 and 2 of the session devnet
MESSAGES = [{"role": "user", "content": "hello there"}]
BODY = json.dumps({"model": MODEL, "messages": MESSAGES, "stream": True})


@dataclass
class Opened:
    """A router over the devnet, for a new funded wallet."""

    devnet: Devnet
    router: Router
    http: aiohttp.ClientSession

    def provider(self, index: int) -> DevnetProvider:
        return self.devnet.providers[index]

    def state(self, index: int) -> ProviderState:
        state = self.router.pool.get(self.provider(index).address)
        assert state is not None
        return state

    async def stream(self, index: int, *, verify_sync: bool) -> tuple[StreamReply, list[bytes]]:
        """One streamed chat pinned to provider ``index``, read to the end."""
        headers = {
            "X-ZG-Provider": self.provider(index).address,
            "x-zg-verify": "sync" if verify_sync else "async",
        }
        call = self.router.new_call(parse_json(Endpoint.CHAT, BODY.encode(), headers))
        async with asyncio.timeout(30):
            reply = await self.router.dispatch(call)
            assert isinstance(reply, StreamReply)
            assert reply.provider == self.provider(index).address
            events = [event async for event in reply.events()]
        return reply, events

    async def signed_response_hash(self, index: int, chat_id: str) -> str:
        """The response half of what provider ``index``'s TEE signed for ``chat_id``."""
        url = f"{self.provider(index).url}/v1/proxy/signature/{chat_id}"
        async with asyncio.timeout(10), self.http.get(url) as response:
            assert response.status == 200, await response.text()
            record = await response.json()
        return str(record["text"]).split(":")[1]


Open = Callable[..., Any]


@pytest.fixture
async def open_router(fresh_devnet: Devnet, http: aiohttp.ClientSession) -> AsyncIterator[Open]:
    """``await open_router(verify=VerifyOptions(...))``; every provider's faults are reset afterwards."""
    routers: list[Router] = []

    async def start(verify: VerifyOptions | None = None) -> Opened:
        _, key = await funded_wallet(fresh_devnet)
        config = RouterConfig(
            network=fresh_devnet.network,
            private_key=key,
            transport=TransportOptions(allow_private_targets=True, stream_idle_timeout=5.0),
            discovery=DiscoveryOptions(event_poll_interval=0.2, probe_interval=0.1),
            money=MoneyOptions(fund_below=0.5, fund_to=1.0),
            verify=verify or VerifyOptions(),
        )
        router = Router(config)
        await router.__aenter__()
        routers.append(router)
        return Opened(fresh_devnet, router, http)

    try:
        yield start
    finally:
        for router in reversed(routers):
            await router.__aexit__(None, None, None)
        for provider in fresh_devnet.providers:
            await provider.simulator.set_faults(Faults())


async def set_faults(opened: Opened, index: int, **knobs: Any) -> None:
    simulator = opened.provider(index).simulator
    await simulator.set_faults(Faults(**knobs))


def relayed(events: list[bytes]) -> bytes:
    """The caller's bytes without our verdict comment: the provider's bytes, if we relayed them exactly."""
    return b"".join(event for event in events if not event.startswith(b": x-zg-verify:"))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TestThroughTheRouter:
    async def test_an_honest_stream_verifies_over_the_bytes_the_caller_got(self, open_router: Open) -> None:
        opened = await open_router()
        reply, events = await opened.stream(0, verify_sync=True)
        assert events[-2:] == [comment("verified"), DONE]
        assert sum(event.startswith(b":") for event in events) == 1
        assert reply.res_key is not None
        assert sha256_hex(relayed(events)) == await opened.signed_response_hash(0, reply.res_key)
        finding = await opened.router.verdict(reply)
        assert finding is not None
        assert finding.outcome is Outcome.VERIFIED, finding.detail
        kept = opened.router.verification(reply.res_key)
        assert kept is not None
        assert kept["outcome"] == "verified"
        assert kept["provider"] == opened.provider(0).address
        assert opened.state(0).trust.state is TrustState.VERIFIED
        assert reply.verifiability == "TeeML"

    async def test_a_stream_altered_after_signing_fails_and_demotes(self, open_router: Open) -> None:
        opened = await open_router()
        await set_faults(opened, 0, alter_after_signing=1.0)
        reply, events = await opened.stream(0, verify_sync=True)
        assert events[-2:] == [comment("failed"), DONE]
        assert b"[altered]" in relayed(events)
        assert reply.res_key is not None
        assert sha256_hex(relayed(events)) != await opened.signed_response_hash(0, reply.res_key)
        finding = await opened.router.verdict(reply)
        assert finding is not None
        assert finding.outcome is Outcome.FAILED
        assert "other bytes" in finding.detail
        state = opened.state(0)
        assert state.trust.state is TrustState.FAILED
        assert state.excluded_at(opened.router.now()) is Exclusion.UNTRUSTED
        # The other provider of the model is untouched.
        assert opened.state(2).trust.state is TrustState.UNVERIFIED

    async def test_a_sampled_stream_is_checked_after_it_ends(self, open_router: Open) -> None:
        opened = await open_router()
        reply, events = await opened.stream(0, verify_sync=False)
        assert events[-1] == DONE
        assert not any(event.startswith(b":") for event in events)
        assert reply.verification is not None
        finding = await opened.router.verdict(reply)
        assert finding is not None
        assert finding.outcome is Outcome.VERIFIED, finding.detail
        assert reply.res_key is not None
        assert sha256_hex(b"".join(events)) == await opened.signed_response_hash(0, reply.res_key)

    async def test_an_unsampled_stream_is_checked_only_if_waited_for(self, open_router: Open) -> None:
        opened = await open_router(VerifyOptions(sample_rate=0.0))
        reply, events = await opened.stream(0, verify_sync=False)
        assert events[-1] == DONE
        assert not any(event.startswith(b":") for event in events)
        assert reply.verification is None
        assert await opened.router.verdict(reply) is None
        assert reply.res_key is not None
        assert opened.router.verification(reply.res_key) is None
        # Asked for, it is checked whatever the sampling.
        reply, events = await opened.stream(0, verify_sync=True)
        assert events[-2:] == [comment("verified"), DONE]
        finding = await opened.router.verdict(reply)
        assert finding is not None
        assert finding.outcome is Outcome.VERIFIED

    async def test_a_stream_broken_midway_is_not_checked(self, open_router: Open) -> None:
        opened = await open_router()
        await set_faults(opened, 0, drop_mid_stream=1.0)
        reply, events = await opened.stream(0, verify_sync=True)
        assert json.loads(events[-2].removeprefix(b"data: "))["error"]["code"] == "stream_interrupted"
        assert events[-1] == DONE
        assert not any(event.startswith(b":") for event in events)
        assert reply.verification is None
        assert await opened.router.verdict(reply) is None
        assert opened.state(0).trust.state is TrustState.UNVERIFIED

    async def test_a_withheld_signature_gives_an_unverifiable_comment(self, open_router: Open) -> None:
        """The caller waits no longer than the retries allow, and an unverifiable response is no failure."""
        opened = await open_router(VerifyOptions(retry_for=0.3))
        await set_faults(opened, 0, withhold_signature=1.0)
        reply, events = await opened.stream(0, verify_sync=True)
        assert events[-2:] == [comment("unverifiable"), DONE]
        finding = await opened.router.verdict(reply)
        assert finding is not None
        assert finding.outcome is Outcome.UNVERIFIABLE
        state = opened.state(0)
        assert state.trust.state is TrustState.UNVERIFIED
        assert state.excluded_at(opened.router.now()) is None


class TestLibraryStream:
    async def test_stream_chat_yields_the_chunks_of_a_checked_stream(self, open_router: Open) -> None:
        """Sampled, the check runs after the stream: the chunks are the provider's, and they verify."""
        opened = await open_router()
        log = EventLog()
        opened.router.subscribe(log)
        chunks = [chunk async for chunk in opened.router.stream_chat(model=MODEL, messages=MESSAGES)]
        assert_whole_completion(chunks)
        chat_id = chunks[0]["id"].removeprefix("chatcmpl-")
        checked = await log.wait_for(lambda e: isinstance(e, Verified) and e.chat_id == chat_id, within=20)
        assert checked.outcome == "verified", checked.detail
        kept = opened.router.verification(chat_id)
        assert kept is not None
        assert kept["outcome"] == "verified"

    async def test_stream_chat_skips_the_verdict_comment(
        self, open_router: Open, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the verdict waited for, the comment line precedes [DONE] and is no chunk."""
        opened = await open_router()
        router = opened.router
        new_call = router.new_call
        comments: list[bytes] = []
        original_events = StreamReply.events

        def waiting(request: Request, **kwargs: Any) -> Any:
            return new_call(replace(request, verify_sync=True), **kwargs)

        def spied(reply: StreamReply) -> Any:
            async def events() -> AsyncIterator[bytes]:
                async for event in original_events(reply):
                    if event.startswith(b":"):
                        comments.append(event)
                    yield event

            return events()

        monkeypatch.setattr(router, "new_call", waiting)
        monkeypatch.setattr(StreamReply, "events", spied)
        chunks = [chunk async for chunk in router.stream_chat(model=MODEL, messages=MESSAGES)]
        assert comments == [comment("verified")]
        assert_whole_completion(chunks)
        # The verdict was waited for before the stream ended: it is already kept.
        kept = router.verification(chunks[0]["id"].removeprefix("chatcmpl-"))
        assert kept is not None
        assert kept["outcome"] == "verified"


def assert_whole_completion(chunks: list[dict[str, Any]]) -> None:
    """Chunks from the role to the usage chunk, every one a chat.completion.chunk."""
    assert len(chunks) >= 4
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip()
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] > 0


class TestGatewayStream:
    async def test_the_openai_sdk_reads_a_stream_with_the_verdict_comment(self, open_router: Open) -> None:
        """Over HTTP with ``x-zg-verify: sync`` the comment reaches the wire, and the SDK skips it."""
        opened = await open_router()
        config = GatewayConfig(port=0, api_keys=(API_KEY,), metrics=False, shutdown_timeout=0.5)
        headers = {"x-zg-verify": "sync", "X-ZG-Provider": opened.provider(0).address}
        async with Gateway(opened.router, config) as gateway:
            async with (
                asyncio.timeout(30),
                opened.http.post(
                    gateway.url + "/v1/chat/completions",
                    data=BODY,
                    headers={**headers, "Authorization": f"Bearer {API_KEY}"},
                ) as response,
            ):
                assert response.status == 200
                text = await response.text()
            assert text.endswith(": x-zg-verify: verified\n\ndata: [DONE]\n\n")
            client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0)
            async with client, asyncio.timeout(30):
                stream = await client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, stream=True, extra_headers=headers
                )
                chunks = [chunk.model_dump() async for chunk in stream]
        assert_whole_completion(chunks)
