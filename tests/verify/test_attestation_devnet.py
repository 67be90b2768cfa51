"""Provider attestation on the devnet: the simulated brokers' quotes, and a provider whose quote names
another signer shown as failing attestation and left out of verified-only routing when attestation is
required (issue 16).

The router's discovery attests providers in the background; the witness here is one attestation round
of our own over the router's pool (the same code, run to its end), so nothing waits on a guessed delay.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from router.client import Router
from router.config import RouterConfig
from router.devnet import Devnet
from router.devnet.network import DevnetProvider
from router.devnet.simulator.faults import Faults
from router.policy.select import Preferences, eligible
from router.pool.catalog import attestation
from router.pool.trust import AttestationState, Outcome, TrustState
from router.request import Call, Endpoint, parse_payload
from router.transport.http import HttpTransport, TransportOptions
from router.verify.attestation import Attestor, QuoteReply, attestation_shortfall, judge_quote

MODEL = "model-a"  # devnet providers 0 and 2


@pytest.fixture
async def wrong_quote(fresh_devnet: Devnet) -> AsyncIterator[DevnetProvider]:
    """Provider 0, answering every quote with another TEE's (its knobs are reset after the test)."""
    provider = fresh_devnet.providers[0]
    await provider.simulator.set_faults(Faults(wrong_quote=1.0))
    try:
        yield provider
    finally:
        await provider.simulator.set_faults(Faults())


async def fetch_quote(http: aiohttp.ClientSession, provider: DevnetProvider, legacy: str) -> QuoteReply:
    async with http.get(f"{provider.url}/v1/quote", params={"legacy": legacy}) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        body = await response.read()
        return QuoteReply(
            await response.json(content_type=None), body, response.headers["ZG-Quote-Signature"]
        )


async def test_the_simulated_broker_serves_a_quote_for_its_tee_signer(
    fresh_devnet: Devnet, http: aiohttp.ClientSession
) -> None:
    provider = fresh_devnet.providers[1]
    for legacy in ("true", "false"):  # without a newer quote, the broker answers the legacy one
        verdict = judge_quote(await fetch_quote(http, provider, legacy), provider.tee_signer.address, 1.0)
        assert verdict.state is AttestationState.ATTESTED
        assert verdict.checks == ("signer", "signature", "compose")


async def test_a_wrong_quote_names_and_signs_another_key(
    wrong_quote: DevnetProvider, http: aiohttp.ClientSession
) -> None:
    reply = await fetch_quote(http, wrong_quote, "true")
    verdict = judge_quote(reply, wrong_quote.tee_signer.address, 1.0)
    assert verdict.state is AttestationState.FAILED
    assert verdict.signer_in_quote not in (None, wrong_quote.tee_signer.address)
    assert verdict.reason == (
        f"the quote names signer {verdict.signer_in_quote}, not the registered TEE signer "
        f"{wrong_quote.tee_signer.address}"
    )


async def verify_responses(router: Router, provider: DevnetProvider) -> None:
    """One chat pinned to ``provider``, its TEE verdict awaited: real traffic earns the trust."""
    request = parse_payload(
        Endpoint.CHAT,
        {"model": MODEL, "messages": [{"role": "user", "content": "attest?"}], "max_tokens": 2},
        {"x-zg-verify": "sync"},
    )
    prefs = Preferences(order=(provider.address.lower(),), allow_fallbacks=False)
    reply = await router.dispatch(Call(request, uuid.uuid4().hex, router.now() + 60, prefs))
    finding = await router.verdict(reply)
    assert finding is not None
    assert finding.outcome is Outcome.VERIFIED


async def test_a_quote_naming_another_signer_fails_attestation_and_verified_only_leaves_it_out(
    fresh_devnet: Devnet, wrong_quote: DevnetProvider
) -> None:
    honest = fresh_devnet.providers[2]
    async with (
        Router(RouterConfig.for_devnet(fresh_devnet)) as router,
        HttpTransport(TransportOptions(allow_private_targets=True)) as transport,
    ):
        for provider in (wrong_quote, honest):
            await verify_responses(router, provider)
        attestor = Attestor(transport, timeout=5.0)
        attestor.watch(router.pool)
        assert await attestor.attest_due() == len(fresh_devnet.providers)

        impostor, trusted = router.pool.get(wrong_quote.address), router.pool.get(honest.address)
        assert impostor is not None
        assert trusted is not None
        shown = attestation(impostor)
        assert shown["trust"]["state"] == TrustState.VERIFIED.value  # its responses do verify
        assert shown["quote"]["state"] == "failed"
        assert shown["quote"]["signer_in_quote"] != wrong_quote.tee_signer.address
        assert f"not the registered TEE signer {wrong_quote.tee_signer.address}" in shown["quote"]["reason"]
        assert attestation(trusted)["quote"]["state"] == "attested"
        assert attestation(trusted)["quote"]["signer_in_quote"] == honest.tee_signer.address

        everyone = router.pool.candidates("chatbot", MODEL)
        assert {s.id for s in eligible(everyone, Preferences(verified_only=True))} == {
            wrong_quote.address,
            honest.address,
        }
        required = Preferences(verified_only=True, require_attestation=True)
        assert eligible(everyone, required) == [trusted]
        message = attestation_shortfall([impostor], MODEL)
        assert message is not None
        assert f"{wrong_quote.address} failed (the quote names signer" in message
