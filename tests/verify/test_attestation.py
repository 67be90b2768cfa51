"""Provider attestation: the quote checks (pure), the attestor's schedule against real quote servers on
127.0.0.1, what the views show, and what routing does with it (``[verify] require_attestation``)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from eth_utils.crypto import keccak

from router.chain.wallet import Wallet
from router.config import load_config
from router.devnet.simulator.faults import FaultPlan, Faults
from router.devnet.simulator.quote import quote_reply
from router.errors import ConfigError
from router.policy.select import Preferences, eligible
from router.pool.capacity import MemoryCapacity
from router.pool.catalog import attestation
from router.pool.providers import Pool, ProviderInfo, ProviderKind, ProviderState
from router.pool.trust import Attestation, AttestationState, Outcome, Trust
from router.transport.http import HttpTransport, TransportOptions
from router.verify.attestation import (
    RECHECK_AFTER,
    RETRY_FIRST,
    Attestor,
    QuoteReply,
    attestation_shortfall,
    judge_quote,
    quote_signer,
)
from tests.support import FakeClock, serving

TEE = Wallet("0x" + "11" * 32)
OTHER = Wallet("0x" + "22" * 32)
PROVIDER = "0x" + "ab" * 20
COMPOSE = '{"name": "broker", "docker_compose_file": "services: {}"}'


def document(
    named: str | bytes = TEE.address, *, compose: str | None = COMPOSE, measured: str | None = None
) -> dict[str, Any]:
    """A dstack quote document in the broker's legacy layout, naming ``named``."""
    raw = named.encode() if isinstance(named, str) else named
    doc: dict[str, Any] = {"quote": "04" * 40, "report_data": base64.b64encode(raw.ljust(64, b"\0")).decode()}
    if compose is not None:
        digest = measured if measured is not None else hashlib.sha256(compose.encode()).hexdigest()
        doc["tcb_info"] = json.dumps({"app_compose": compose})
        doc["event_log"] = json.dumps(
            [{"event": "app-id"}, {"event": "compose-hash", "event_payload": digest}]
        )
    return doc


def signed(doc: dict[str, Any], by: Wallet = TEE, *, low_v: bool = False) -> QuoteReply:
    body = json.dumps(doc).encode()
    signature = bytearray(by.sign_personal(keccak(body)))
    if low_v:
        signature[64] -= 27  # go-ethereum's crypto.Sign writes v as 0/1
    return QuoteReply(doc, body, "0x" + signature.hex())


# -- the checks --------------------------------------------------------------------------------------


def test_a_quote_naming_the_signer_with_its_compose_and_body_signature_is_attested() -> None:
    verdict = judge_quote(signed(document()), TEE.address.lower(), 5.0)
    assert verdict == Attestation(
        AttestationState.ATTESTED,
        "passed: signer, signature, compose",
        5.0,
        TEE.address,
        ("signer", "signature", "compose"),
    )


def test_fewer_checks_run_without_compose_fields_or_a_body_signature() -> None:
    verdict = judge_quote(QuoteReply(document(compose=None)), TEE.address, 5.0)
    assert verdict.state is AttestationState.ATTESTED
    assert verdict.checks == ("signer",)


def test_a_body_encoded_as_a_json_string_is_read_and_go_style_v_is_taken() -> None:
    assert judge_quote(QuoteReply(json.dumps(document())), TEE.address, 5.0).checks == ("signer", "compose")
    assert judge_quote(signed(document(), low_v=True), TEE.address, 5.0).state is AttestationState.ATTESTED


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (QuoteReply([document()]), "the quote is not a JSON object"),
        (QuoteReply("quote?"), "the quote is a string that holds no JSON"),
        (QuoteReply({"quote": "04"}), "the quote has no report_data"),
        (QuoteReply({"report_data": "@@not base64@@"}), "the quote's report_data is not base64"),
        (QuoteReply(document(b"\x01\x02" * 20)), "the quote's report_data names no signer address"),
        (
            QuoteReply(document(OTHER.address)),
            f"the quote names signer {OTHER.address}, not the registered TEE signer {TEE.address}",
        ),
        (signed(document(), OTHER), f"the quote body is signed by {OTHER.address}, not the TEE signer"),
        (
            QuoteReply(document(), b"{}", "0x" + "zz" * 65),
            "the ZG-Quote-Signature header is not a valid signature",
        ),
        (QuoteReply(document(measured="00" * 32)), "the compose file hashes to "),
        (QuoteReply({**document(), "tcb_info": "{not json"}), "the quote's tcb_info is not JSON"),
        (QuoteReply({**document(), "tcb_info": "{}"}), "the quote's tcb_info has no app_compose"),
        (QuoteReply({**document(), "event_log": "{}"}), "the quote's event_log is not a list of events"),
        (QuoteReply({**document(), "event_log": "[{}]"}), "the quote's event_log has no compose-hash event"),
    ],
)
def test_a_quote_that_fails_a_check_says_which(reply: QuoteReply, reason: str) -> None:
    verdict = judge_quote(reply, TEE.address, 5.0)
    assert verdict.state is AttestationState.FAILED
    assert verdict.reason is not None
    assert verdict.reason.startswith(reason)
    assert verdict.checked_at == 5.0


def test_a_quote_cannot_pass_when_the_chain_registers_no_signer() -> None:
    verdict = judge_quote(QuoteReply(document()), None, 5.0)
    assert verdict.reason == "the chain registers no TEE signer to compare the quote with"
    assert verdict.signer_in_quote == TEE.address


def test_quote_signer_recovers_the_body_signer_and_refuses_malformed_signatures() -> None:
    reply = signed(document())
    assert reply.body is not None
    assert reply.signature is not None
    assert quote_signer(reply.body, reply.signature) == TEE.address
    assert quote_signer(reply.body + b" ", reply.signature) != TEE.address
    assert quote_signer(reply.body, reply.signature[:-2]) is None
    assert quote_signer(reply.body, reply.signature[:-2] + "05") is None


def test_the_simulator_quote_passes_every_check_and_its_wrong_quote_names_another_key() -> None:
    body, headers = quote_reply(TEE)
    good = judge_quote(QuoteReply(json.loads(body), body, headers["ZG-Quote-Signature"]), TEE.address, 1.0)
    assert good.checks == ("signer", "signature", "compose")
    body, headers = quote_reply(OTHER)
    bad = judge_quote(QuoteReply(json.loads(body), body, headers["ZG-Quote-Signature"]), TEE.address, 1.0)
    assert bad.state is AttestationState.FAILED
    assert bad.signer_in_quote == OTHER.address


def test_the_wrong_quote_fault_is_a_probability_drawn_only_when_set() -> None:
    with pytest.raises(ConfigError, match="fault wrong_quote is a probability"):
        Faults(wrong_quote=1.5)
    assert FaultPlan(Faults().updated({"wrong_quote": 1.0})).draw_wrong_quote()
    plan = FaultPlan(Faults(error_500=0.5, seed=7))
    assert not plan.draw_wrong_quote()
    # No draw was spent on it: the request outcomes follow the seed as before.
    untouched = FaultPlan(Faults(error_500=0.5, seed=7))
    assert [plan.draw() for _ in range(8)] == [untouched.draw() for _ in range(8)]


# -- the attestor ------------------------------------------------------------------------------------


class QuoteServer:
    """A provider root serving ``/v1/quote`` as told; each ask is queued, and ``gate`` holds answers."""

    def __init__(self) -> None:
        self.status = 200
        self.named = TEE
        self.asks: asyncio.Queue[str] = asyncio.Queue()
        self.gate = asyncio.Event()
        self.gate.set()
        self.app = web.Application()
        self.app.router.add_get("/v1/quote", self._quote)

    async def _quote(self, request: web.Request) -> web.Response:
        self.asks.put_nowait(request.query_string)
        await self.gate.wait()
        if self.status != 200:
            return web.json_response({"error": "no such route"}, status=self.status)
        body, headers = quote_reply(self.named)
        return web.Response(body=body, headers=headers, content_type="text/plain")


def chain_info(url: str, signer: str = TEE.address, **changes: Any) -> ProviderInfo:
    info = ProviderInfo(
        id=PROVIDER,
        kind=ProviderKind.CHAIN,
        base_url=url + "/v1/proxy",
        probe_url=url + "/v1/models",
        service_type="chatbot",
        models=("m",),
        verifiability="TeeML",
        tee_signer=signer,
        registered_signer=signer,
        signer_acknowledged=True,
    )
    return replace(info, **changes)


class Setup:
    def __init__(self, url: str, transport: HttpTransport) -> None:
        self.url = url
        self.clock = FakeClock()
        self.pool = Pool(clock=self.clock, capacity=MemoryCapacity(clock=self.clock))
        self.pool.replace(ProviderKind.CHAIN, [chain_info(url)])
        self.attestor = Attestor(transport, timeout=5.0, clock=self.clock)
        self.attestor.watch(self.pool)

    @property
    def state(self) -> ProviderState:
        state = self.pool.get(PROVIDER)
        assert state is not None
        return state

    @property
    def verdict(self) -> Attestation:
        return self.state.trust.attestation


@pytest.fixture
async def server() -> QuoteServer:
    return QuoteServer()


@pytest.fixture
async def setup(server: QuoteServer) -> AsyncIterator[Setup]:
    async with serving(server.app) as url, HttpTransport(TransportOptions(allow_private_targets=True)) as t:
        yield Setup(url, t)


async def test_a_new_provider_is_attested_and_the_views_show_it(setup: Setup, server: QuoteServer) -> None:
    assert attestation(setup.state)["quote"]["state"] == "unchecked"
    assert await setup.attestor.attest_due() == 1
    assert server.asks.get_nowait() == "legacy=true"
    quote = attestation(setup.state)["quote"]
    # get_json hands over the document only: the body signature waits for a transport that gives bytes.
    assert quote["state"] == "attested"
    assert quote["signer_in_quote"] == TEE.address
    assert quote["checks"] == ["signer", "signature", "compose"]
    assert quote["checked_at"] is not None
    assert await setup.attestor.attest_due() == 0
    setup.clock.now += RECHECK_AFTER
    assert await setup.attestor.attest_due() == 1


async def test_a_provider_without_a_quote_is_unavailable_and_asked_again_with_back_off(
    setup: Setup, server: QuoteServer
) -> None:
    server.status = 404
    assert await setup.attestor.attest_due() == 1
    missing = setup.verdict
    assert missing.state is AttestationState.UNAVAILABLE
    assert missing.reason is not None
    assert "answered 404" in missing.reason
    assert setup.attestor.next_in() == RETRY_FIRST
    setup.clock.now += RETRY_FIRST
    assert await setup.attestor.attest_due() == 1
    setup.clock.now += RETRY_FIRST
    assert await setup.attestor.attest_due() == 0  # the wait doubled
    setup.clock.now += RETRY_FIRST
    server.status = 200
    assert await setup.attestor.attest_due() == 1
    assert setup.verdict.state is AttestationState.ATTESTED
    assert setup.attestor.next_in() == RECHECK_AFTER


async def test_a_recheck_that_gets_no_quote_keeps_the_verdict(setup: Setup, server: QuoteServer) -> None:
    server.named = OTHER
    await setup.attestor.attest_due()
    assert setup.verdict.state is AttestationState.FAILED
    server.status = 503
    setup.clock.now += RECHECK_AFTER
    assert await setup.attestor.attest_due() == 1
    assert setup.verdict.state is AttestationState.FAILED
    assert setup.verdict.signer_in_quote == OTHER.address
    assert setup.attestor.next_in() == RETRY_FIRST


async def test_a_new_registered_signer_unchecks_at_once_and_drops_the_answer_about_the_old_one(
    setup: Setup, server: QuoteServer
) -> None:
    await setup.attestor.attest_due()
    assert setup.verdict.state is AttestationState.ATTESTED
    setup.clock.now += RECHECK_AFTER
    server.gate.clear()
    server.asks.get_nowait()
    asking = asyncio.create_task(setup.attestor.attest_due())
    async with asyncio.timeout(5):
        await server.asks.get()
    # A separated provider: the response signer stays, the broker's registered signer changes.
    setup.pool.replace(ProviderKind.CHAIN, [chain_info(setup.url, registered_signer=OTHER.address)])
    setup.attestor.watch(setup.pool)
    assert setup.verdict == Attestation()
    server.gate.set()
    await asking
    assert setup.verdict == Attestation()
    assert setup.attestor.next_in() == 0
    await setup.attestor.attest_due()
    assert setup.verdict.reason == (
        f"the quote names signer {TEE.address}, not the registered TEE signer {OTHER.address}"
    )


async def test_static_upstreams_and_dropped_providers_are_not_asked(
    setup: Setup, server: QuoteServer
) -> None:
    static = replace(chain_info(setup.url), id="upstream", kind=ProviderKind.STATIC)
    setup.pool.replace(ProviderKind.STATIC, [static])
    setup.pool.replace(ProviderKind.CHAIN, [])
    setup.attestor.watch(setup.pool)
    assert await setup.attestor.attest_due() == 0
    assert setup.attestor.next_in() is None
    assert server.asks.empty()


async def test_run_asks_as_soon_as_the_pool_changes(setup: Setup, server: QuoteServer) -> None:
    running = asyncio.create_task(setup.attestor.run())
    try:
        async with asyncio.timeout(5):
            await server.asks.get()
            # The next turn is hours away; a changed signer is asked about now.
            setup.pool.replace(ProviderKind.CHAIN, [chain_info(setup.url, registered_signer=OTHER.address)])
            setup.attestor.watch(setup.pool)
            await server.asks.get()
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running


# -- routing and the record ---------------------------------------------------------------------------


@pytest.fixture
def states() -> list[ProviderState]:
    clock = FakeClock()
    pool = Pool(clock=clock, capacity=MemoryCapacity(clock=clock))
    pool.replace(
        ProviderKind.CHAIN,
        [replace(chain_info("http://p"), id=f"0x{n:040x}") for n in range(5)],
    )
    everyone = sorted(pool, key=lambda s: s.id)
    for state in everyone:
        state.trust.record(Outcome.VERIFIED, 1.0)
    return everyone


def attest(state: ProviderState, verdict: AttestationState, reason: str | None = None) -> None:
    state.trust.attestation = Attestation(verdict, reason, 1.0)


def test_verified_only_with_attestation_required_keeps_only_attested_providers(
    states: list[ProviderState],
) -> None:
    attest(states[0], AttestationState.ATTESTED)
    attest(states[1], AttestationState.FAILED, "the quote names signer 0x…")
    attest(states[2], AttestationState.UNAVAILABLE, "no quote")
    required = Preferences(verified_only=True, require_attestation=True)
    assert eligible(states, required) == [states[0]]
    # Not required, a failing attestation is shown and not acted on.
    assert eligible(states, Preferences(verified_only=True)) == states
    assert eligible(states, Preferences(require_attestation=True)) == states
    states[0].trust.record(Outcome.FAILED, 2.0, "signed by someone else")
    assert eligible(states, required) == []


def test_the_shortfall_names_why_no_verified_provider_passes_attestation(states: list[ProviderState]) -> None:
    attest(states[0], AttestationState.FAILED, "the quote names signer 0xBAD")
    message = attestation_shortfall(states, "model-a")
    assert message is not None
    assert message.startswith(
        "5 of the 5 provider(s) of 'model-a' have verified responses, but none of them passes "
        f"attestation, which [verify] require_attestation asks for: {states[0].id} failed "
        "(the quote names signer 0xBAD); "
        f"{states[1].id} unchecked; "
    )
    assert message.endswith("; and 2 more")
    attest(states[4], AttestationState.ATTESTED)
    assert attestation_shortfall(states, "model-a") is None
    for state in states:
        state.trust = Trust(signer=state.info.tee_signer)
    assert attestation_shortfall(states, "model-a") is None  # none verified yet: not attestation's fault


def test_a_new_tee_signer_starts_the_attestation_over() -> None:
    trust = Trust(signer=TEE.address, attestation=Attestation(AttestationState.ATTESTED))
    assert not trust.new_signer(TEE.address)
    assert trust.attestation.state is AttestationState.ATTESTED
    assert trust.new_signer(OTHER.address)
    assert trust.attestation == Attestation()


def test_require_attestation_loads_from_the_verify_table(tmp_path: Path) -> None:
    upstream = (
        "[gateway]\nallow_anonymous = true\n"
        '[[upstreams]]\nname = "u"\nurl = "https://u.example/v1"\nmodels = ["m"]\n'
    )
    path = tmp_path / "router.toml"
    path.write_text("[verify]\nrequire_attestation = true\n" + upstream)
    config, _ = load_config(path, {})
    assert config.verify.require_attestation
    path.write_text('[verify]\nrequire_attestation = "true"\n' + upstream)
    with pytest.raises(ConfigError, match=r"\[verify\] require_attestation must be"):
        load_config(path, {})
