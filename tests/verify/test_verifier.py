"""The verifier against real simulated providers: honest, signing with a wrong key, altering the reply after
signing, and withholding the signature (devnet)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from router.devnet import Devnet
from router.devnet.simulator.faults import Faults
from router.errors import ConfigError
from router.pool.health import Health
from router.pool.limits import Gate
from router.pool.providers import Exclusion, ProviderInfo, ProviderKind, ProviderState
from router.pool.trust import Outcome, TrustState
from router.transport.http import HttpTransport, TransportOptions
from router.verify.verifier import Job, Verifier, VerifyOptions
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
    return ProviderState(info, Health(), Gate(info.limits))


async def verdict(
    client: Client, transport: HttpTransport, *, stream: bool = False, retry_for: float = 5.0
) -> tuple[Job, ProviderState, EventLog, Verifier]:
    """One chat straight to the provider, then its verification: the settled job."""
    body = chat_body(client.provider, stream=stream)
    response = await client.chat(body)
    received = await response.read()
    assert response.status == 200
    state, log = provider_state(client), EventLog()
    loop = asyncio.get_running_loop()
    verifier = Verifier(transport, VerifyOptions(retry_for=retry_for, workers=1), log, clock=loop.time)
    job = Job(
        chat_id=response.headers["ZG-Res-Key"],
        state=state,
        request=b"",
        response_part=hashlib.sha256(received).hexdigest(),
        request_id="req-1",
    )
    assert verifier.submit(job)
    runner = asyncio.create_task(verifier.run())
    try:
        await asyncio.wait_for(asyncio.shield(job.verdict), timeout=retry_for + 10)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    return job, state, log, verifier


@pytest.mark.parametrize("stream", [False, True])
async def test_an_honest_response_verifies(client: Client, transport: HttpTransport, stream: bool) -> None:
    job, state, log, verifier = await verdict(client, transport, stream=stream)
    assert job.verdict.result().outcome is Outcome.VERIFIED, job.verdict.result()
    assert state.trust.state is TrustState.VERIFIED
    assert state.trust.verified == 1
    assert state.excluded_at(0.0) is None
    assert [e.outcome for e in log.events] == ["verified"]
    kept = verifier.lookup(job.chat_id.upper())
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
    job, state, _, _ = await verdict(client, transport)
    finding = job.verdict.result()
    assert finding.outcome is Outcome.FAILED
    assert why in finding.detail
    assert state.trust.state is TrustState.FAILED
    assert state.excluded_at(asyncio.get_running_loop().time()) is Exclusion.UNTRUSTED


async def test_a_missing_signature_is_unverifiable_never_verified(
    client: Client, transport: HttpTransport
) -> None:
    await client.provider.simulator.set_faults(Faults(withhold_signature=1.0))
    job, state, _, verifier = await verdict(client, transport, retry_for=0.5)
    finding = job.verdict.result()
    assert finding.outcome is Outcome.UNVERIFIABLE
    assert "no signature" in finding.detail
    assert state.trust.state is TrustState.UNVERIFIED
    assert state.trust.unverifiable == 1
    assert state.excluded_at(0.0) is None
    assert verifier.lookup(job.chat_id) is not None


def test_which_responses_are_checked() -> None:
    """TEE chain providers with a signer, at the sample rate; a forced (synchronous) check always."""
    tee = ProviderState(
        ProviderInfo("0xa", ProviderKind.CHAIN, "u", "p", "chatbot", ("m",), tee_signer="0xsigner"),
        Health(),
        Gate(ProviderInfo("0xa", ProviderKind.CHAIN, "u", "p", "chatbot", ("m",)).limits),
    )
    unsigned = ProviderState(
        ProviderInfo("0xb", ProviderKind.CHAIN, "u", "p", "chatbot", ("m",)), Health(), Gate(tee.info.limits)
    )
    static = ProviderState(
        ProviderInfo("up", ProviderKind.STATIC, "u", "p", "chatbot", ("m",), tee_signer="0xsigner"),
        Health(),
        Gate(tee.info.limits),
    )

    def verifier(rate: float) -> Verifier:
        return Verifier(None, VerifyOptions(sample_rate=rate), lambda e: None, clock=lambda: 0.0)  # type: ignore[arg-type]

    assert verifier(1.0).wants(tee)
    assert not verifier(1.0).wants(unsigned)
    assert not verifier(1.0).wants(static, forced=True)
    assert not verifier(0.0).wants(tee)
    assert verifier(0.0).wants(tee, forced=True)
    half = verifier(0.5)
    picked = sum(half.wants(tee) for _ in range(2000))
    assert 800 < picked < 1200


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="sample_rate"):
        VerifyOptions(sample_rate=1.5)
    with pytest.raises(ConfigError):
        VerifyOptions(workers=0)
