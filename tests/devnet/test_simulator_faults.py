"""Each fault knob of a simulated provider makes its fault happen, set at runtime through the admin route."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from eth_account import Account as EthAccount
from eth_account.messages import encode_defunct

from router.devnet import Devnet, DevnetConfig, ProviderSpec
from router.devnet.node_tools import NodeModules
from router.devnet.simulator.faults import FaultPlan, Faults
from router.devnet.simulator.server import ProviderSimulator
from router.errors import ConfigError
from tests.support import CHAT, Client, assert_port_refuses, chat_body, funded_client


async def set_knobs(client: Client, **knobs: Any) -> dict[str, Any]:
    async with client.http.post(
        client.provider.simulator.admin_url + "/admin/faults", json=knobs
    ) as response:
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body


class TestKnobs:
    async def test_latency_delays_the_response(self, client: Client) -> None:
        await set_knobs(client, latency=0.25)
        started = time.monotonic()
        response = await client.chat(chat_body(client.provider))
        await response.read()
        assert response.status == 200
        assert time.monotonic() - started >= 0.25

    async def test_chunk_delay_spaces_the_stream(self, client: Client) -> None:
        """With 4 tokens the stream has 7 events, so 6 gaps of at least chunk_delay."""
        await set_knobs(client, chunk_delay=0.05)
        started = time.monotonic()
        response = await client.chat(chat_body(client.provider, stream=True, max_tokens=4))
        body = await response.read()
        assert body.endswith(b"data: [DONE]\n\n")
        assert time.monotonic() - started >= 6 * 0.05

    @pytest.mark.parametrize(("knob", "status"), [("error_500", 500), ("error_502", 502), ("error_503", 503)])
    async def test_server_errors(self, client: Client, knob: str, status: int) -> None:
        await set_knobs(client, **{knob: 1.0})
        response = await client.chat(chat_body(client.provider))
        assert response.status == status
        assert "error" in await response.json()

    async def test_rate_limit_storm(self, client: Client) -> None:
        await set_knobs(client, rate_limit_storm=1.0)
        response = await client.chat(chat_body(client.provider))
        assert response.status == 429
        assert (await response.json())["error"]["type"] == "rate_limit_error"

    async def test_reset_before_headers(self, client: Client) -> None:
        await set_knobs(client, reset_before_headers=1.0)
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.chat(chat_body(client.provider))

    async def test_drop_mid_stream(self, client: Client) -> None:
        """The first chunk arrives, then the connection drops: no [DONE]."""
        await set_knobs(client, drop_mid_stream=1.0)
        response = await client.chat(chat_body(client.provider, stream=True))
        assert response.status == 200
        first = await response.content.readline()
        assert first.startswith(b"data: {")
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()

    async def test_stalled_body(self, client: Client) -> None:
        """Headers come, the body does not: the client's read times out."""
        await set_knobs(client, stall_body=1.0, stall_seconds=1.0)
        response = await client.chat(chat_body(client.provider))
        assert response.status == 200
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await response.read()
        response.close()

    async def test_malformed_json(self, client: Client) -> None:
        await set_knobs(client, malformed_json=1.0)
        response = await client.chat(chat_body(client.provider))
        assert response.status == 200
        with pytest.raises(ValueError, match=r"Unterminated|Expecting"):
            json.loads(await response.read())

    async def test_down_refuses_connections_and_comes_back(self, client: Client) -> None:
        await set_knobs(client, down=True)
        with pytest.raises(aiohttp.ClientConnectorError):
            await client.chat(chat_body(client.provider))
        await set_knobs(client, down=False)
        assert (await client.chat(chat_body(client.provider))).status == 200


class TestConcurrencyLimit:
    async def test_six_at_once_from_one_wallet_serves_exactly_five(self, client: Client) -> None:
        """With requests held in flight, the sixth meets the per-wallet cap: the string-bodied 429."""
        await set_knobs(client, latency=0.3)
        responses = await asyncio.gather(*(client.chat(chat_body(client.provider)) for _ in range(6)))
        statuses = sorted(r.status for r in responses)
        assert statuses == [200] * 5 + [429]
        (refused,) = [r for r in responses if r.status == 429]
        assert isinstance((await refused.json())["error"], str)
        async with client.http.get(client.provider.simulator.admin_url + "/admin/stats") as stats:
            peak = (await stats.json())["peak_in_flight_per_wallet"][client.address.lower()]
        assert peak == 5


class TestAdmin:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({"nonsense": 1}, "unknown fault knobs: nonsense"),
            ({"error_500": 2}, "probability in"),
            ({"error_500": 0.6, "error_503": 0.6}, "more than 1"),
            ({"down": "yes"}, "true or false"),
            ([1, 2], "JSON object"),
        ],
    )
    async def test_bad_knobs_are_refused(self, client: Client, body: Any, message: str) -> None:
        url = client.provider.simulator.admin_url + "/admin/faults"
        async with client.http.post(url, json=body) as response:
            assert response.status == 400
            assert message in (await response.json())["error"]
        async with client.http.get(url) as current:
            assert (await current.json()) == Faults().as_dict()


class TestReproducibility:
    def test_the_same_seed_draws_the_same_faults(self) -> None:
        """One seed, the same failures in the same order; rates follow the knobs; another seed differs."""
        knobs = Faults(error_500=0.3, error_503=0.2, seed=7)
        plan_a, plan_b = FaultPlan(knobs), FaultPlan(knobs)
        draws = [plan_a.draw() for _ in range(200)]
        assert draws == [plan_b.draw() for _ in range(200)]
        assert 40 <= draws.count("error_500") <= 80
        assert 20 <= draws.count("error_503") <= 60
        other = FaultPlan(Faults(error_500=0.3, error_503=0.2, seed=8))
        assert draws != [other.draw() for _ in range(200)]

    def test_invalid_knobs_at_start(self) -> None:
        with pytest.raises(ConfigError):
            Faults(latency=-1)


class TestProviderWideChecks:
    async def test_global_concurrency_cap_answers_503(
        self, fresh_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        """Global cap 2 and slow answers: the third request at once gets the 503 busy body."""
        client = await funded_client(fresh_devnet, http, provider_index=2)
        provider = client.provider
        spec = replace(provider.spec, max_global_concurrent=2, faults=Faults(latency=0.3))
        async with ProviderSimulator(
            provider.chain, provider.tee_signer, spec, settle_interval=None
        ) as simulator:
            auth = await client.tokens.authorization(provider.address)
            responses = await asyncio.gather(
                *(
                    http.post(simulator.url + CHAT, json=chat_body(provider), headers={"Authorization": auth})
                    for _ in range(3)
                )
            )
            assert sorted(r.status for r in responses) == [200, 200, 503]
            (busy,) = [r for r in responses if r.status == 503]
            assert (await busy.json())["error"].startswith("Server is currently processing too many requests")

    async def test_an_oversized_body_is_413(self, client: Client) -> None:
        oversized = io.BytesIO(b"x" * (32 * 1024 * 1024 + 1))
        auth = await client.tokens.authorization(client.provider.address)
        response = await client.http.post(
            client.provider.url + CHAT, data=oversized, headers={"Authorization": auth}
        )
        assert response.status == 413
        assert "exceeds the maximum allowed size of 32MB" in (await response.json())["error"]


class TestFaultsAtStart:
    async def test_a_provider_can_start_down(self, node_modules: NodeModules) -> None:
        """ProviderSpec faults apply from the start: a provider started down refuses connections."""
        spec = ProviderSpec(model="m", faults=Faults(down=True))
        async with Devnet(DevnetConfig(providers=(spec,), settle_interval=None), node_modules) as devnet:
            await assert_port_refuses(devnet.providers[0].url)
            async with aiohttp.ClientSession() as http:
                url = devnet.providers[0].simulator.admin_url + "/admin/faults"
                async with http.get(url) as response:
                    assert (await response.json())["down"] is True


class TestSigningFaults:
    """A dishonest or broken TEE provider, set through the admin route like every knob."""

    @pytest.mark.parametrize("stream", [False, True])
    async def test_a_wrong_key_signs_while_naming_the_registered_signer(
        self, client: Client, stream: bool
    ) -> None:
        """``sign_wrong_key``: the text is true and claims the registered signer; the signature is not its."""
        await set_knobs(client, sign_wrong_key=1.0)
        response = await client.chat(chat_body(client.provider, stream=stream))
        received = await response.read()
        signed = await signed_text(client, response.headers["ZG-Res-Key"])
        assert signed["text"].split(":")[1] == hashlib.sha256(received).hexdigest()
        assert signed["signing_address"] == client.provider.tee_signer.address
        assert recovered(signed) != client.provider.tee_signer.address

    @pytest.mark.parametrize("stream", [False, True])
    async def test_a_reply_altered_after_signing_no_longer_matches_its_hash(
        self, client: Client, stream: bool
    ) -> None:
        """``alter_after_signing``: a genuine signature over a reply other than the one sent."""
        await set_knobs(client, alter_after_signing=1.0)
        response = await client.chat(chat_body(client.provider, stream=stream))
        received = await response.read()
        assert b"[altered] " in received
        signed = await signed_text(client, response.headers["ZG-Res-Key"])
        assert signed["text"].split(":")[1] != hashlib.sha256(received).hexdigest()
        original = received.replace(b"[altered] ", b"", 1)
        assert signed["text"].split(":")[1] == hashlib.sha256(original).hexdigest()
        assert recovered(signed) == client.provider.tee_signer.address

    async def test_a_withheld_signature_is_not_found(self, client: Client) -> None:
        await set_knobs(client, withhold_signature=1.0)
        response = await client.chat(chat_body(client.provider))
        assert response.status == 200
        url = f"{client.provider.url}/v1/proxy/signature/{response.headers['ZG-Res-Key']}"
        async with client.http.get(url) as lookup:
            assert lookup.status == 400
            assert (await lookup.json())["error"] == "chat_id_not_found"

    def test_signing_probabilities_are_checked_apart_from_the_outcomes(self) -> None:
        """Each group may add up to 1; a signing fault combines with an outcome fault."""
        Faults(error_503=1.0, sign_wrong_key=1.0)
        with pytest.raises(ConfigError, match="sign_wrong_key"):
            Faults(sign_wrong_key=0.6, withhold_signature=0.6)

    def test_without_signing_knobs_the_outcome_sequence_is_unchanged(self) -> None:
        """Signing faults draw only when set, so seeded runs keep their outcomes."""
        plain, signing = FaultPlan(Faults(error_500=0.5, seed=7)), FaultPlan(Faults(error_500=0.5, seed=7))
        for _ in range(50):
            assert signing.draw_signing() is None
            assert plain.draw() == signing.draw()


async def signed_text(client: Client, key: str) -> dict[str, str]:
    async with client.http.get(f"{client.provider.url}/v1/proxy/signature/{key}") as lookup:
        assert lookup.status == 200
        return dict(await lookup.json())


def recovered(signed: dict[str, str]) -> str:
    return str(EthAccount.recover_message(encode_defunct(text=signed["text"]), signature=signed["signature"]))
