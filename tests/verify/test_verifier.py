"""The verifier against real simulated providers: honest, signing with a wrong key, altering the reply after
signing, and withholding the signature (devnet)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from router.devnet import Devnet
from router.devnet.simulator.faults import Faults
from router.errors import ConfigError
from router.pool.health import Health
from router.pool.providers import Exclusion, ProviderInfo, ProviderKind, ProviderState
from router.pool.trust import Outcome, TrustState
from router.transport.http import HttpTransport, TransportOptions
from router.verify.check import Finding
from router.verify.verifier import Verifier, VerifyOptions
from tests.support import Client, EventLog, chat_body, funded_client


@pytest.fixture
async def client(fresh_devnet: Devnet, http: aiohttp.ClientSession) -> AsyncIterator[Client]:
    funded = await funded_client(fresh_devnet, http, provider_index=1)
    try:
        yield funded
    finally:
        await funded.provider.simulator.set_faults(Faults())


@pytest.fixture
async def transport() -> AsyncIterator[HttpTransport]:
    async with HttpTransport(TransportOptions(allow_private_targets=True)) as opened:
        yield opened


def provider_state(client: Client) -> ProviderState:
    provider = client.provider
    info = ProviderInfo(
        id=provider.address,
        kind=ProviderKind.CHAIN,
        base_url=provider.url + "/v1/proxy",
        probe_url=provider.url + "/v1/models",
        service_type="chatbot",
        models=(provider.spec.model,),
        verifiability="TeeML",
        tee_signer=provider.tee_signer.address,
    )
    return ProviderState(info, Health(), (None,))


def tee_state(base_url: str = "u", *, signer: str | None = "0xsigner") -> ProviderState:
    """A chain provider state made by hand, signing with ``signer``."""
    info = ProviderInfo("0xa", ProviderKind.CHAIN, base_url, "p", "chatbot", ("m",), tee_signer=signer)
    return ProviderState(info, Health(), (None,))


@dataclass
class Checked:
    """One response's check, settled."""

    chat_id: str
    finding: Finding
    state: ProviderState
    log: EventLog
    verifier: Verifier


async def verdict(
    client: Client, transport: HttpTransport, *, stream: bool = False, retry_for: float = 5.0
) -> Checked:
    """One chat straight to the provider, then its verification, settled."""
    body = chat_body(client.provider, stream=stream)
    response = await client.chat(body)
    received = await response.read()
    assert response.status == 200
    state, log = provider_state(client), EventLog()
    loop = asyncio.get_running_loop()
    verifier = Verifier(transport, VerifyOptions(retry_for=retry_for, workers=1), log, clock=loop.time)
    chat_id = response.headers["ZG-Res-Key"]
    # The bytes in several parts, as a stream relays them: the verifier hashes their concatenation.
    parts = [received[:7], received[7:]]
    future = verifier.check(state, chat_id, b"", parts, request_id="req-1")
    runner = asyncio.create_task(verifier.run())
    try:
        await asyncio.wait_for(asyncio.shield(future), timeout=retry_for + 10)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    return Checked(chat_id, future.result(), state, log, verifier)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_honest_response_verifies(client: Client, transport: HttpTransport, stream: bool) -> None:
    checked = await verdict(client, transport, stream=stream)
    state = checked.state
    assert checked.finding.outcome is Outcome.VERIFIED, checked.finding
    assert state.trust.state is TrustState.VERIFIED
    assert state.trust.verified == 1
    assert state.excluded_at(0.0) is None
    assert [e.outcome for e in checked.log.events] == ["verified"]
    kept = checked.verifier.lookup(checked.chat_id.upper())
    assert kept is not None
    assert kept["outcome"] == "verified"
    assert kept["provider"] == client.provider.address


@pytest.mark.parametrize(
    ("knob", "why"),
    [("sign_wrong_key", "not the acknowledged TEE signer"), ("alter_after_signing", "other bytes")],
)
async def test_a_dishonest_response_fails_and_demotes_the_provider(
    client: Client, transport: HttpTransport, knob: str, why: str
) -> None:
    await client.provider.simulator.set_faults(Faults(**{knob: 1.0}))
    checked = await verdict(client, transport)
    finding, state = checked.finding, checked.state
    assert finding.outcome is Outcome.FAILED
    assert why in finding.detail
    assert state.trust.state is TrustState.FAILED
    assert state.excluded_at(asyncio.get_running_loop().time()) is Exclusion.UNTRUSTED


async def test_a_missing_signature_is_unverifiable_never_verified(
    client: Client, transport: HttpTransport
) -> None:
    await client.provider.simulator.set_faults(Faults(withhold_signature=1.0))
    loop = asyncio.get_running_loop()
    started = loop.time()
    checked = await verdict(client, transport, retry_for=0.5)
    # It asked until the deadline itself, not until the last backoff step that fitted before it.
    assert loop.time() - started >= 0.5
    finding, state = checked.finding, checked.state
    assert finding.outcome is Outcome.UNVERIFIABLE
    assert "no signature" in finding.detail
    assert state.trust.state is TrustState.UNVERIFIED
    assert state.trust.unverifiable == 1
    assert state.excluded_at(0.0) is None
    assert checked.verifier.lookup(checked.chat_id) is not None


async def test_which_responses_are_checked() -> None:
    """TEE chain providers with a signer, at the sample rate; a forced (synchronous) check always, and
    one of a provider that signs nothing is unverifiable at once, without a lookup."""
    tee = tee_state()
    unsigned = tee_state(signer=None)
    static = ProviderState(
        ProviderInfo("up", ProviderKind.STATIC, "u", "p", "chatbot", ("m",)), Health(), (None,)
    )
    log = EventLog()

    def verifier(rate: float) -> Verifier:
        return Verifier(None, VerifyOptions(sample_rate=rate), log, clock=lambda: 0.0)  # type: ignore[arg-type]

    assert verifier(1.0).wants(tee)
    assert not verifier(1.0).wants(unsigned)
    assert not verifier(1.0).wants(static)
    assert verifier(0.0).wants(static, forced=True)
    assert not verifier(0.0).wants(tee)
    assert verifier(0.0).wants(tee, forced=True)
    half = verifier(0.5)
    picked = sum(half.wants(tee) for _ in range(2000))
    assert 800 < picked < 1200
    for state, why in ((static, "static upstream"), (unsigned, "no acknowledged TEE signer")):
        finding = verifier(1.0).check(state, "chat-1", b"{}", [b"{}"], request_id="r").result()
        assert finding.outcome is Outcome.UNVERIFIABLE
        assert why in finding.detail
    no_key = verifier(1.0).check(tee, None, b"{}", [b"{}"], request_id="r").result()
    assert "no ZG-Res-Key" in no_key.detail
    assert [e.outcome for e in log.events] == ["unverifiable"] * 3


async def test_a_full_queue_drops_the_check_as_unverifiable() -> None:
    """The request path never waits on the verifier: past ``queue_size`` queued checks, a check is
    dropped, counted, and unverifiable."""
    tee = tee_state()
    verifier = Verifier(None, VerifyOptions(queue_size=2), EventLog(), clock=lambda: 0.0)  # type: ignore[arg-type]
    futures = [verifier.check(tee, f"c{i}", b"{}", [b"{}"], request_id="r") for i in range(3)]
    assert [f.done() for f in futures] == [False, False, True]
    assert "queue was full" in futures[2].result().detail
    assert verifier.dropped == 1


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="sample_rate"):
        VerifyOptions(sample_rate=1.5)
    with pytest.raises(ConfigError):
        VerifyOptions(workers=0)


async def test_stopping_answers_every_waiting_check(transport: HttpTransport) -> None:
    """When the router stops, the check in progress and the queued ones end ``unverifiable`` at once:
    a caller waiting for a synchronous verdict is not left to time out."""
    tee = tee_state("http://127.0.0.1:9/v1/proxy")
    log = EventLog()
    loop = asyncio.get_running_loop()
    verifier = Verifier(transport, VerifyOptions(workers=1, retry_for=60), log, clock=loop.time)
    futures = [verifier.check(tee, f"c{i}", b"{}", [b"{}"], request_id="r") for i in range(3)]
    runner = asyncio.create_task(verifier.run())
    # The worker has taken the first check once the queue holds two: it is now asking for a signature.
    async with asyncio.timeout(5):
        while verifier._queue.qsize() > 2:  # noqa: ASYNC110 - no event marks a worker taking a job
            await asyncio.sleep(0)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert all(f.done() for f in futures)
    assert {f.result().detail for f in futures} == {"the router stopped before this response was checked"}
    assert {f.result().outcome for f in futures} == {Outcome.UNVERIFIABLE}
