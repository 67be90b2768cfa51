"""Simulated providers on the devnet, driven over HTTP like a real client would (protocol.md §4-§6)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from typing import Any

import aiohttp
import pytest
from eth_account import Account as EthAccount
from eth_account.messages import encode_defunct

from router.chain.devtools import SettlementStatus
from router.chain.session import mint_session_token
from router.chain.wallet import Wallet
from router.devnet import USER_KEY_INDEX, Devnet, dev_private_key
from router.devnet.node_tools import NodeModules
from router.devnet.simulator.server import ProviderSimulator
from tests.support import CHAT, NEURON, Client, chat_body, funded_client, run_node


class TestChat:
    async def test_a_completion_with_usage_and_broker_headers(
        self, fresh_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        """200 with usage; ZG-Res-Key, Provider and x-ratelimit-* headers; id is chatcmpl-<key>."""
        client = await funded_client(fresh_devnet, http)
        response = await client.chat(chat_body(client.provider, max_tokens=7))
        body = await response.json()
        assert response.status == 200, body
        key = response.headers["ZG-Res-Key"]
        assert body["id"] == f"chatcmpl-{key}"
        assert response.headers["Provider"] == client.provider.address
        assert response.headers["x-ratelimit-limit-requests"] == "30"
        assert response.headers["x-ratelimit-remaining-requests"] == "5"
        assert body["usage"]["completion_tokens"] == 7
        assert len(body["choices"][0]["message"]["content"].split()) == 7

    async def test_streaming_ends_with_usage_and_done(
        self, fresh_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        """SSE chunks, a final usage chunk with empty choices (include_usage forced), then [DONE]."""
        client = await funded_client(fresh_devnet, http)
        response = await client.chat(chat_body(client.provider, stream=True, max_tokens=4))
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [e for e in (await response.read()).decode().split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        usage_chunk = json.loads(events[-2].removeprefix("data: "))
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"]["completion_tokens"] == 4
        text = "".join(
            json.loads(e.removeprefix("data: "))["choices"][0]["delta"].get("content", "")
            for e in events[:-2]
        )
        assert len(text.split()) == 4

    async def test_tools_and_json_mode(self, fresh_devnet: Devnet, http: aiohttp.ClientSession) -> None:
        """Tools give a tool call; response_format json_object gives parseable JSON content."""
        client = await funded_client(fresh_devnet, http)
        tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
        called = await (await client.chat(chat_body(client.provider, tools=[tool]))).json()
        choice = called["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"])
        as_json = await (
            await client.chat(chat_body(client.provider, response_format={"type": "json_object"}))
        ).json()
        assert "answer" in json.loads(as_json["choices"][0]["message"]["content"])

    async def test_the_redundant_v1_prefix_is_tolerated(
        self, fresh_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        client = await funded_client(fresh_devnet, http)
        response = await http.post(
            client.provider.url + "/v1/proxy/v1/chat/completions",
            json=chat_body(client.provider),
            headers={"Authorization": await client.tokens.authorization(client.provider.address)},
        )
        assert response.status == 200

    async def test_the_official_sdk_gets_a_completion(
        self, fresh_devnet: Devnet, node_modules: NodeModules
    ) -> None:
        """getRequestHeaders + fetch from Node, as an SDK user would, gets a 200 completion."""
        provider = fresh_devnet.providers[0]
        result = await run_node(
            node_modules,
            "sdk_client.js",
            "chat",
            fresh_devnet.rpc_url,
            dev_private_key(USER_KEY_INDEX),
            provider.address,
            provider.spec.model,
        )
        assert result["status"] == 200, result
        assert result["body"]["usage"]["completion_tokens"] > 0
        assert result["body"]["id"] == "chatcmpl-" + result["zgResKey"]


class TestRefusals:
    async def test_bad_tokens_get_the_brokers_400(
        self, fresh_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        """Expired, wrongly signed, and revoked (generation) tokens are each refused with their message."""
        client = await funded_client(fresh_devnet, http)
        provider = client.provider.address
        assert client.chain.wallet is not None
        expired = mint_session_token(
            client.chain.wallet, provider, generation=0, now_ms=1_000, lifetime_ms=1000
        )
        response = await client.chat(chat_body(client.provider), authorization=expired.authorization)
        assert response.status == 400
        assert (await response.json())["error"].endswith("session token expired")

        other = mint_session_token(Wallet("0x" + "55" * 32), provider, generation=0, now_ms=_now_ms())
        raw, _, signature = (
            base64.b64decode(other.authorization.removeprefix("Bearer app-sk-")).decode().rpartition("|")
        )
        claimed = raw.replace(json.loads(raw)["address"], client.address)
        forged = "Bearer app-sk-" + base64.b64encode(f"{claimed}|{signature}".encode()).decode()
        response = await client.chat(chat_body(client.provider), authorization=forged)
        assert response.status == 400
        assert "address mismatch" in (await response.json())["error"]

        stale = await client.tokens.authorization(provider)
        await client.chain.revoke_all_tokens(provider)
        client.provider.simulator.validator.forget_account(client.address)
        response = await client.chat(chat_body(client.provider), authorization=stale)
        assert response.status == 400
        assert "generation expired" in (await response.json())["error"]

    async def test_back_to_back_requests_hit_the_rpm_limit_after_five(
        self, fresh_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        """Five served, the sixth is the RPM 429 with the object body."""
        client = await funded_client(fresh_devnet, http)
        statuses = [(await client.chat(chat_body(client.provider))).status for _ in range(5)]
        sixth = await client.chat(chat_body(client.provider))
        assert statuses == [200] * 5
        assert sixth.status == 429
        assert (await sixth.json())["error"]["type"] == "rate_limit_error"

    async def test_an_underfunded_sub_account_is_refused(
        self, fresh_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        """Exactly 1 0G locked: the first request passes; with its fee unsettled, the next one is refused."""
        client = await funded_client(fresh_devnet, http, sub_account=NEURON)
        first = await client.chat(chat_body(client.provider))
        assert first.status == 200
        second = await client.chat(chat_body(client.provider))
        assert second.status == 400
        message = (await second.json())["error"]
        assert "insufficient balance: your locked balance is 1.000000 0G" in message
        assert f"transfer-fund --provider {client.provider.address}" in message

    async def test_input_errors(self, fresh_devnet: Devnet, http: aiohttp.ClientSession) -> None:
        """Wrong model, malformed JSON, missing messages and unknown routes are 400s with a message."""
        client = await funded_client(fresh_devnet, http)
        wrong_model = await client.chat(chat_body(client.provider, model="gpt-9"))
        assert wrong_model.status == 400
        assert 'model not supported: requested "gpt-9"' in (await wrong_model.json())["error"]
        assert (await client.chat(b"{nope")).status == 400
        assert (await client.chat({"model": client.provider.spec.model})).status == 400
        unknown = await http.post(client.provider.url + "/v1/proxy/moderations", json={})
        assert unknown.status == 400
        assert (await unknown.json())["error"] == "endpoint not supported"


class TestMoney:
    async def test_settlement_charges_exactly_the_fees_and_clears_unsettled(
        self, fresh_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        """After N requests and one cycle, getAccount dropped by the fees charged; unsettledfee is 0."""
        client = await funded_client(fresh_devnet, http, provider_index=1)
        simulator = client.provider.simulator
        before = await client.chain.get_account(client.address, client.provider.address)
        assert before is not None
        fees = 0
        for tokens in (3, 5, 8):
            body = await (await client.chat(chat_body(client.provider, max_tokens=tokens))).json()
            usage = body["usage"]
            fees += simulator.billing.fee(usage["prompt_tokens"], usage["completion_tokens"])
        assert await self._unsettled(client) == fees
        outcome = await simulator.settle_now()
        assert outcome[client.address.lower()] is SettlementStatus.SUCCESS
        after = await client.chain.get_account(client.address, client.provider.address)
        assert after is not None
        assert before.balance - after.balance == fees
        assert await self._unsettled(client) == 0

    async def test_the_settlement_cadence_settles_without_being_asked(
        self, fresh_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        """A simulator with a 50 ms cadence settles a served request on its own, to the wei."""
        client = await funded_client(fresh_devnet, http)
        provider = client.provider
        before = await client.chain.get_account(client.address, provider.address)
        assert before is not None
        async with ProviderSimulator(
            provider.chain, provider.tee_signer, provider.spec, settle_interval=0.05
        ) as simulator:
            auth = await client.tokens.authorization(provider.address)
            async with http.post(
                simulator.url + CHAT, json=chat_body(provider), headers={"Authorization": auth}
            ) as r:
                usage = (await r.json())["usage"]
            fee = simulator.billing.fee(usage["prompt_tokens"], usage["completion_tokens"])
            async with asyncio.timeout(10):
                await simulator.billing.wait_settled(client.address, fee)
        after = await client.chain.get_account(client.address, provider.address)
        assert after is not None
        assert before.balance - after.balance == fee
        assert simulator.billing.unsettled(client.address) == 0

    async def test_unsettled_fee_is_private_to_its_user(
        self, fresh_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        client = await funded_client(fresh_devnet, http)
        url = f"{client.provider.url}/v1/user/{fresh_devnet.user_wallet.address}/unsettledfee"
        response = await http.get(
            url, headers={"Authorization": await client.tokens.authorization(client.provider.address)}
        )
        assert response.status == 403
        assert (await response.json()) == {"error": "you can only query your own unsettled fee"}

    @staticmethod
    async def _unsettled(client: Client) -> int:
        url = f"{client.provider.url}/v1/user/{client.address}/unsettledfee"
        auth = await client.tokens.authorization(client.provider.address)
        async with client.http.get(url, headers={"Authorization": auth}) as response:
            body = await response.json()
        assert body["userAddress"] == client.address
        return int(body["unsettledFee"])


class TestSignatures:
    @pytest.mark.parametrize("stream", [False, True])
    async def test_signature_recovers_to_the_registered_tee_signer(
        self, fresh_devnet: Devnet, http: aiohttp.ClientSession, stream: bool
    ) -> None:
        """The signed text ends in sha256 of the exact bytes received, and recovers to teeSignerAddress."""
        client = await funded_client(fresh_devnet, http)
        response = await client.chat(chat_body(client.provider, stream=stream))
        received = await response.read()
        key = response.headers["ZG-Res-Key"]
        signed = await (await http.get(f"{client.provider.url}/v1/proxy/signature/{key}")).json()
        assert signed["text"].split(":")[1] == hashlib.sha256(received).hexdigest()
        signer = EthAccount.recover_message(
            encode_defunct(text=signed["text"]), signature=signed["signature"]
        )
        service = await client.chain.get_service(client.provider.address)
        assert service is not None
        assert signer == service.tee_signer_address == signed["signing_address"]

    async def test_an_unknown_chat_id_is_not_found(self, devnet: Devnet, http: aiohttp.ClientSession) -> None:
        response = await http.get(f"{devnet.providers[0].url}/v1/proxy/signature/no-such-id")
        assert response.status == 400
        assert (await response.json())["error"] == "chat_id_not_found"


class TestModels:
    async def test_models_advertise_price_limits_and_verifiability(
        self, devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        provider = devnet.providers[1]
        async with http.get(provider.url + "/v1/models") as response:
            (model,) = (await response.json())["data"]
        assert model["id"] == provider.spec.model
        assert model["pricing"] == {
            "prompt": str(provider.spec.input_price),
            "completion": str(provider.spec.output_price),
        }
        assert model["verifiability"] == "TeeML"
        limits = model["rate_limits"]
        assert (limits["requests_per_minute"], limits["burst"], limits["max_concurrent_requests"]) == (
            30,
            5,
            5,
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


class TestOtherRoutes:
    async def _post(self, client: Client, route: str, **kwargs: Any) -> aiohttp.ClientResponse:
        auth = await client.tokens.authorization(client.provider.address)
        return await client.http.post(
            f"{client.provider.url}/v1/proxy/{route}", headers={"Authorization": auth}, **kwargs
        )

    async def test_embeddings_are_billed_at_the_input_price(
        self, fresh_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        client = await funded_client(fresh_devnet, http)
        response = await self._post(
            client, "embeddings", json={"model": client.provider.spec.model, "input": ["a b c", "d"]}
        )
        body = await response.json()
        assert response.status == 200, body
        assert [d["index"] for d in body["data"]] == [0, 1]
        assert len(body["data"][0]["embedding"]) == 8
        assert body["usage"]["prompt_tokens"] == 4
        assert (
            client.provider.simulator.billing.unsettled(client.address)
            == 4 * client.provider.spec.input_price
        )

    async def test_images_are_billed_per_image_and_signed_per_image(
        self, fresh_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        """Two images: billed 2 * output price; the signed text lists each image's sha256."""
        client = await funded_client(fresh_devnet, http)
        request = {"model": client.provider.spec.model, "prompt": "a lighthouse", "n": 2}
        response = await self._post(client, "images/generations", json=request)
        body = await response.json()
        assert response.status == 200, body
        pictures = [base64.b64decode(d["b64_json"]) for d in body["data"]]
        assert len(pictures) == 2
        assert (
            client.provider.simulator.billing.unsettled(client.address)
            == 2 * client.provider.spec.output_price
        )
        key = response.headers["ZG-Res-Key"]
        signed = await (await http.get(f"{client.provider.url}/v1/proxy/signature/{key}")).json()
        assert signed["text"].split(":")[1] == ",".join(hashlib.sha256(p).hexdigest() for p in pictures)
        signer = EthAccount.recover_message(
            encode_defunct(text=signed["text"]), signature=signed["signature"]
        )
        assert signer == client.provider.tee_signer.address

    async def test_audio_transcription_takes_a_multipart_upload(
        self, fresh_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        client = await funded_client(fresh_devnet, http)
        form = aiohttp.FormData()
        form.add_field("model", client.provider.spec.model)
        form.add_field("file", b"\x00" * 3500, filename="speech.wav", content_type="audio/wav")
        response = await self._post(client, "audio/transcriptions", data=form)
        body = await response.json()
        assert response.status == 200, body
        assert len(body["text"].split()) == 3
        assert (
            client.provider.simulator.billing.unsettled(client.address)
            == 3 * client.provider.spec.output_price
        )

    @pytest.mark.parametrize(
        ("route", "request_body", "message"),
        [
            ("embeddings", {"input": 5}, "input must be"),
            ("images/generations", {"prompt": "x", "n": 0}, "n must be 1-10"),
            ("images/generations", {"n": 1}, "prompt is required"),
            ("audio/transcriptions", {"model": "x"}, "expected multipart/form-data"),
        ],
    )
    async def test_bad_bodies_are_400s(
        self,
        fresh_devnet: Devnet,
        http: aiohttp.ClientSession,
        route: str,
        request_body: dict[str, Any],
        message: str,
    ) -> None:
        client = await funded_client(fresh_devnet, http)
        response = await self._post(client, route, json=request_body)
        assert response.status == 400
        assert message in (await response.json())["error"]
