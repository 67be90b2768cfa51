"""TEE verification through the gateway (issue 7), on the gateway tests' devnet.

Verdict headers and the stream's verdict comment, checks that run after the response, the admin lookup and
``zg-router verify``, demotion of a provider whose signature is false, verified-only routing, a withheld
signature, and the verification metric. Each test runs its own router (a new funded wallet) with its own
``[verify]`` options behind a gateway that takes an API key and an admin key. The witnesses are the
router's ``Verified`` events and state, the admin API and the providers' own counters: nothing waits on
a guessed delay.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.client import Router
from router.config import GatewayConfig
from router.devnet import Devnet
from router.devnet.simulator.faults import Faults
from router.observability.events import Verified
from router.pool.providers import Exclusion, ProviderState
from router.pool.trust import TrustState
from router.server.app import Gateway
from router.verify.verifier import VerifyOptions
from tests.devnet.test_cli_admin import admin_cli, clean_env
from tests.gateway import conftest as gateway_fixtures
from tests.gateway.conftest import API_KEY, CHAT_MODEL, CHAT_PROVIDERS, Served, router_config
from tests.gateway.support import TIMEOUT, Answer, assert_error, send
from tests.support import EventLog, funded_wallet

# The gateway tests' devnet: "model-r" on providers 0, 1 and 2 (cheapest first), all registered TeeML.
gateway_devnet = gateway_fixtures.gateway_devnet

ADMIN_KEY = "zg-admin-verify-" + "0123456789abcdef" * 2
MESSAGES = [{"role": "user", "content": "is this reply signed?"}]
SYNC = {"x-zg-verify": "sync"}
VERIFIED_DETAIL = "signed by the TEE signer over the bytes relayed"
EVENT_WAIT = 15.0


@dataclass
class Trusted:
    """A served router with ``[verify]`` options of the test's choosing, its events and an SDK client."""

    served: Served
    events: EventLog
    client: openai.AsyncOpenAI

    @property
    def router(self) -> Router:
        return self.served.router

    def address(self, index: int) -> str:
        return self.served.devnet.providers[index].address

    def state(self, index: int) -> ProviderState:
        state = self.router.pool.get(self.address(index))
        assert state is not None
        return state

    def pin(self, index: int) -> dict[str, str]:
        return {"X-ZG-Provider": self.address(index)}

    async def chat(self, headers: dict[str, str] | None = None, **extra: Any) -> Mapping[str, str]:
        """One chat through the openai SDK; its response headers (the reply must have content)."""
        raw = await self.client.chat.completions.with_raw_response.create(
            model=CHAT_MODEL, messages=MESSAGES, extra_headers=headers or {}, **extra
        )
        assert raw.parse().choices[0].message.content
        return raw.headers

    async def post(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
        """One raw chat request (to see errors and the SSE bytes as sent)."""
        payload = {"model": CHAT_MODEL, "messages": MESSAGES, **body}
        return await send(
            self.served,
            "POST",
            "/v1/chat/completions",
            json=payload,
            headers={**self.served.auth(), **(headers or {})},
        )

    async def admin(self, path: str) -> Answer:
        return await send(self.served, "GET", path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})

    async def verdict_of(self, chat_id: str) -> Verified:
        """The ``Verified`` event for ``chat_id``, seen already or still to come."""
        event = await self.events.wait_for(
            lambda e: isinstance(e, Verified) and e.chat_id == chat_id, within=EVENT_WAIT
        )
        assert isinstance(event, Verified)
        return event


Launch = Callable[..., Awaitable[Trusted]]


@pytest.fixture
async def launch(gateway_devnet: Devnet) -> AsyncIterator[Launch]:
    """``await launch(**verify_options)``: a router with ``VerifyOptions(**verify_options)`` for a new funded
    wallet, behind a gateway with API and admin keys. Every provider's faults are reset afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())

        async def start(**verify: Any) -> Trusted:
            wallet, key = await funded_wallet(gateway_devnet)
            config = replace(router_config(gateway_devnet, key), verify=VerifyOptions(**verify))
            events = EventLog()
            router = await stack.enter_async_context(Router(config, observers=[events]))
            gateway_config = GatewayConfig(
                port=0,
                api_keys=(API_KEY,),
                admin_keys=(ADMIN_KEY,),
                shutdown_timeout=0.5,
                metrics_on_api_port=True,
            )
            gateway = await stack.enter_async_context(Gateway(router, gateway_config))
            client = await stack.enter_async_context(
                openai.AsyncOpenAI(
                    base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0, timeout=TIMEOUT
                )
            )
            return Trusted(Served(gateway_devnet, router, gateway.url, wallet, key, http), events, client)

        try:
            yield start
        finally:
            for provider in gateway_devnet.providers:
                await provider.simulator.set_faults(Faults())


def sse_blocks(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block]


class TestVerdicts:
    async def test_sync_chat_is_verified_and_can_be_looked_up(self, launch: Launch) -> None:
        """With ``x-zg-verify: sync`` an honest provider's reply says ``verified``; its chat id is the
        provider's ZG-Res-Key, its verifiability TeeML. The admin API and ``zg-router verify`` show the same
        verdict by chat id (same provider and request id); an unknown chat id is a 404."""
        t = await launch()
        headers = await t.chat(SYNC)
        chat_id, provider = headers["x-zg-chat-id"], headers["x-zg-provider"]
        assert headers["x-zg-verify"] == "verified"
        assert chat_id
        assert chat_id == headers["zg-res-key"]
        assert headers["x-zg-verifiability"] == "TeeML"
        state = t.router.pool.get(provider)
        assert state is not None
        assert (state.trust.state, state.trust.verified, state.trust.failed) == (TrustState.VERIFIED, 1, 0)

        answer = await t.admin(f"/admin/verify/{chat_id}")
        assert answer.status == 200, answer.text
        verdict = answer.json()
        assert verdict == {
            "chat_id": chat_id,
            "provider": provider,
            "request_id": headers["x-request-id"],
            "outcome": "verified",
            "detail": VERIFIED_DETAIL,
            "checked_at": state.trust.last_checked,
            "request_hash_matched": True,  # the broker signed the very body we forwarded
        }
        missing = await t.admin("/admin/verify/no-such-chat-id")
        assert missing.status == 404, missing.text
        assert missing.json()["error"]["code"] == "verdict_not_found"
        posted = await send(t.served, "POST", f"/admin/verify/{chat_id}", headers=t.served.auth())
        assert posted.status == 405, posted.text
        assert posted.json()["error"]["code"] == "method_not_allowed"

        env = clean_env(ZG_ROUTER_URL=t.served.url, ZG_ROUTER_ADMIN_KEY=ADMIN_KEY)
        run = await admin_cli("verify", chat_id, env=env)
        assert (run.code, run.err) == (0, "")
        assert run.out.splitlines()[:4] == [
            f"chat id   {chat_id}",
            f"verdict   verified: {VERIFIED_DETAIL}",
            f"provider  {provider}",
            f"request   {headers['x-request-id']}",
        ]
        run = await admin_cli("verify", "no-such-chat-id", env=env)
        assert (run.code, run.out) == (1, "")
        assert run.err.startswith("zg-router: error: 404: no verdict for chat id 'no-such-chat-id'"), run.err

    async def test_sync_stream_sends_its_verdict_before_done(self, launch: Launch) -> None:
        """A streamed chat with ``x-zg-verify: sync`` ends ``: x-zg-verify: verified`` then ``[DONE]``; the
        verdict is recorded by then, and the openai SDK reads such a stream whole (it skips the comment)."""
        t = await launch()
        answer = await t.post({"stream": True}, SYNC)
        assert answer.status == 200, answer.text
        blocks = sse_blocks(answer.text)
        assert blocks[-2:] == [": x-zg-verify: verified", "data: [DONE]"]
        assert all(block.startswith("data: {") for block in blocks[:-2]), blocks
        assert "x-zg-verify" not in answer.headers
        verdict = t.router.verification(answer.headers["x-zg-chat-id"])
        assert verdict is not None
        assert (verdict["outcome"], verdict["provider"]) == ("verified", answer.headers["x-zg-provider"])

        stream = await t.client.chat.completions.create(
            model=CHAT_MODEL, messages=MESSAGES, stream=True, extra_headers=SYNC
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text

    async def test_stream_without_sync_is_verified_after_it_ends(self, launch: Launch) -> None:
        """Without the sync header a stream carries no verdict comment, and its verdict comes afterwards."""
        t = await launch()
        answer = await t.post({"stream": True})
        assert answer.status == 200, answer.text
        blocks = sse_blocks(answer.text)
        assert blocks[-1] == "data: [DONE]"
        assert not [block for block in blocks if block.startswith(":")], blocks
        event = await t.verdict_of(answer.headers["x-zg-chat-id"])
        assert (event.outcome, event.provider) == ("verified", answer.headers["x-zg-provider"])

    @pytest.mark.parametrize("mode", [None, "async", "ASYNC"])
    async def test_async_chat_has_no_verdict_header_and_is_verified_after(
        self, launch: Launch, mode: str | None
    ) -> None:
        """Without ``x-zg-verify`` (or with ``async``) the reply has no verdict header; the verdict on it
        (for its request id) arrives afterwards."""
        t = await launch()
        headers = await t.chat({} if mode is None else {"x-zg-verify": mode})
        assert "x-zg-verify" not in headers
        event = await t.verdict_of(headers["x-zg-chat-id"])
        assert (event.outcome, event.request_id) == ("verified", headers["x-request-id"])

    async def test_the_reply_does_not_wait_for_its_check(self, launch: Launch) -> None:
        """A reply whose signature the provider withholds comes back while its check still asks for it
        (retry_for 3 s; over a second in fact): no verdict yet when the reply arrives; the
        ``unverifiable`` one comes after."""
        t = await launch(retry_for=3.0)
        await t.served.set_faults(0, withhold_signature=1.0)
        headers = await t.chat(t.pin(0))
        chat_id = headers["x-zg-chat-id"]
        assert "x-zg-verify" not in headers
        assert t.router.verification(chat_id) is None
        assert not [e for e in t.events.of(Verified) if e.chat_id == chat_id]
        event = await t.verdict_of(chat_id)
        assert event.outcome == "unverifiable"

    async def test_sample_rate_zero_checks_only_what_callers_ask_for(self, launch: Launch) -> None:
        """At sample_rate 0 a plain reply is never checked, a sync one is. With one worker the queue is
        FIFO, so once the sync verdict is in, a check of the earlier reply would have been too."""
        t = await launch(sample_rate=0.0, workers=1)
        plain = await t.chat(t.pin(0))
        checked = await t.chat({**t.pin(0), **SYNC})
        assert checked["x-zg-verify"] == "verified"
        assert t.router.verification(plain["x-zg-chat-id"]) is None
        assert [e.chat_id for e in t.events.of(Verified)] == [checked["x-zg-chat-id"]]


class TestTrustRouting:
    @pytest.mark.parametrize(
        ("knob", "why"),
        [("sign_wrong_key", "not the acknowledged TEE signer"), ("alter_after_signing", "other bytes")],
    )
    async def test_a_false_signature_demotes_the_provider(self, launch: Launch, knob: str, why: str) -> None:
        """A reply signed with another key (or altered after signing) is ``failed``: the provider is
        excluded as untrusted and shows trust ``failed``. Verified-only requests then go to the verified
        providers 1 and 2, a pin on the liar with fallbacks goes elsewhere, a pin without fallbacks finds
        nobody, and the liar serves none of them."""
        t = await launch()
        liar = t.address(0)
        await t.served.set_faults(0, **{knob: 1.0})
        headers = await t.chat({**t.pin(0), **SYNC})
        assert (headers["x-zg-provider"], headers["x-zg-verify"]) == (liar, "failed")
        state = t.state(0)
        assert (state.trust.state, state.trust.failed) == (TrustState.FAILED, 1)
        assert why in (state.trust.last_failure or "")
        assert state.excluded_at(t.router.now()) is Exclusion.UNTRUSTED
        verdict = (await t.admin(f"/admin/verify/{headers['x-zg-chat-id']}")).json()
        assert (verdict["outcome"], verdict["provider"]) == ("failed", liar)
        assert why in verdict["detail"]
        answer = await t.admin("/admin/providers")
        assert answer.status == 200, answer.text
        view = {p["id"]: p for p in answer.json()["providers"]}
        assert view[liar]["excluded"] == "untrusted"
        attestation = view[liar]["attestation"]
        assert attestation["verifiability"] == "TeeML"
        assert attestation["checked_signer"] == t.served.devnet.providers[0].tee_signer.address
        assert (attestation["trust"]["state"], attestation["trust"]["failed"]) == ("failed", 1)

        honest = {t.address(1), t.address(2)}
        for index in (1, 2):
            assert (await t.chat({**t.pin(index), **SYNC}))["x-zg-verify"] == "verified"
            assert t.state(index).trust.state is TrustState.VERIFIED
        served_by_liar = (await t.served.stats(0))["served"]
        picked = [
            (await t.chat(extra_body={"provider": {"verified_only": True}}))["x-zg-provider"]
            for _ in range(6)
        ]
        picked += [(await t.chat({"X-ZG-Verified-Only": "true"}))["x-zg-provider"] for _ in range(3)]
        picked.append((await t.chat({**t.pin(0), "X-ZG-Allow-Fallbacks": "true"}))["x-zg-provider"])
        assert set(picked) <= honest, picked
        pinned = await t.post({}, t.pin(0))
        assert pinned.status == 503, pinned.text
        assert pinned.json()["error"]["code"] == "no_available_provider"
        assert (await t.served.stats(0))["served"] == served_by_liar

    async def test_verified_only_needs_a_verified_provider(self, launch: Launch) -> None:
        """Before any check, verified-only requests (body field or header) get 503 no_verified_provider.
        Once provider 2 alone is verified they all go to it, though 0 and 1 are cheaper and healthy."""
        t = await launch()
        for body, headers in (
            ({"provider": {"verified_only": True}}, {}),
            ({}, {"X-ZG-Verified-Only": "true"}),
        ):
            answer = await t.post(body, headers)
            assert answer.status == 503, answer.text
            error = answer.json()["error"]
            assert (error["type"], error["code"]) == ("service_unavailable", "no_verified_provider")
        assert (await t.chat({**t.pin(2), **SYNC}))["x-zg-verify"] == "verified"
        assert [t.state(i).trust.state for i in range(CHAT_PROVIDERS)] == [
            TrustState.UNVERIFIED,
            TrustState.UNVERIFIED,
            TrustState.VERIFIED,
        ]
        picked = {
            (await t.chat(extra_body={"provider": {"verified_only": True}}))["x-zg-provider"]
            for _ in range(5)
        }
        assert picked == {t.address(2)}
        # Verified-only and pinned to an unverified provider: the 503 says it is the pin that leaves nobody.
        answer = await t.post({"provider": {"verified_only": True}}, t.pin(0))
        assert answer.status == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "no_verified_provider"
        assert "1 of the 3 provider(s)" in error["message"]
        assert "other provider preferences" in error["message"]

    @pytest.mark.parametrize("stream", [False, True])
    async def test_an_unknown_verify_mode_is_a_400(self, launch: Launch, stream: bool) -> None:
        """``x-zg-verify: maybe`` is refused with an OpenAI-shaped 400 naming the header."""
        t = await launch()
        answer = await t.post({"stream": stream}, {"x-zg-verify": "maybe"})
        assert_error(
            answer,
            400,
            "invalid_request_error",
            "header x-zg-verify must be sync or async",
            param="x-zg-verify",
        )

    async def test_a_withheld_signature_is_unverifiable_not_failed(self, launch: Launch) -> None:
        """A provider that stores no signature gets ``unverifiable`` (after retry_for): counted, but its
        trust stays unverified and it is not excluded; it keeps serving, and verified-only still finds
        nobody."""
        t = await launch(retry_for=0.5)
        await t.served.set_faults(0, withhold_signature=1.0)
        headers = await t.chat({**t.pin(0), **SYNC})
        assert headers["x-zg-verify"] == "unverifiable"
        state = t.state(0)
        trust = state.trust
        assert (trust.state, trust.verified, trust.failed, trust.unverifiable) == (
            TrustState.UNVERIFIED,
            0,
            0,
            1,
        )
        assert state.excluded_at(t.router.now()) is None
        verdict = (await t.admin(f"/admin/verify/{headers['x-zg-chat-id']}")).json()
        assert verdict["outcome"] == "unverifiable"
        assert verdict["detail"].startswith("no signature for this response"), verdict
        assert (await t.chat(t.pin(0)))["x-zg-provider"] == t.address(0)
        answer = await t.post({"provider": {"verified_only": True}})
        assert answer.status == 503, answer.text
        assert answer.json()["error"]["code"] == "no_verified_provider"


async def test_metrics_count_verdicts_by_provider_and_outcome(launch: Launch) -> None:
    """``zg_router_verifications_total`` on the gateway's /metrics counts each verdict once, by provider
    and outcome: three verified at provider 1, one failed at provider 0, nothing else."""
    t = await launch()
    await t.served.set_faults(0, sign_wrong_key=1.0)
    assert (await t.chat({**t.pin(0), **SYNC}))["x-zg-verify"] == "failed"
    for _ in range(3):
        assert (await t.chat({**t.pin(1), **SYNC}))["x-zg-verify"] == "verified"
    answer = await send(t.served, "GET", "/metrics")
    assert answer.status == 200, answer.text
    counts = {
        (sample.labels["provider"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        if sample.name == "zg_router_verifications_total"
    }
    assert counts == {(t.address(1), "verified"): 3.0, (t.address(0), "failed"): 1.0}
