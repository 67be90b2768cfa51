"""``[verify] verified_only`` for every request: the trust warm-up verifies providers with one tiny request
each, so that verified-only traffic has somewhere to go, and a provider whose signature is false never
gets any of it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from router.client import Router
from router.devnet import Devnet
from router.devnet.simulator.faults import Faults
from router.observability.events import Event, RequestFinished, Verified
from router.pool.providers import Exclusion
from router.pool.trust import TrustState
from router.verify.verifier import VerifyOptions
from tests.gateway.conftest import CHAT_MODEL, CHAT_PROVIDERS, router_config
from tests.support import funded_wallet

MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "only from a verified provider"}]


@pytest.fixture
async def liar(gateway_devnet: Devnet) -> AsyncIterator[str]:
    """The cheapest chat provider, signing its responses with a key that is not its TEE's."""
    simulator = gateway_devnet.providers[0].simulator
    await simulator.set_faults(Faults(sign_wrong_key=1.0))
    try:
        yield gateway_devnet.providers[0].address
    finally:
        await simulator.set_faults(Faults())


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (at most 20 s) for router state no single event marks."""
    async with asyncio.timeout(20):
        while not condition():  # noqa: ASYNC110 - polled router state, bounded
            await asyncio.sleep(0.01)


async def test_verified_only_config_warms_up_and_never_routes_to_a_liar(
    gateway_devnet: Devnet, liar: str
) -> None:
    """The warm-up verifies the honest chat providers and catches the liar, which is demoted; every
    request then goes to a verified provider, none to the liar."""
    _, key = await funded_wallet(gateway_devnet)
    config = dataclasses.replace(router_config(gateway_devnet, key), verify=VerifyOptions(verified_only=True))
    seen: list[Event] = []
    async with Router(config, observers=[seen.append]) as router:
        chat = [router.pool.get(p.address) for p in gateway_devnet.providers[:CHAT_PROVIDERS]]
        assert all(state is not None for state in chat)
        honest = [s for s in chat if s is not None and s.id != liar]

        def warmed() -> bool:
            return all(s.trust.state is TrustState.VERIFIED for s in honest) and any(
                isinstance(e, Verified) and e.provider == liar for e in seen
            )

        await _until(warmed)
        liar_state = router.pool.get(liar)
        assert liar_state is not None
        assert liar_state.trust.state is TrustState.FAILED
        assert liar_state.excluded_at(router.now()) is Exclusion.UNTRUSTED
        warmups = [e for e in seen if isinstance(e, RequestFinished)]
        assert {s.id for s in chat} <= {e.provider for e in warmups}
        assert all(e.request_id.startswith("trust-warmup-") for e in warmups)
        mark = len(seen)

        replies = await asyncio.gather(*(router.chat(model=CHAT_MODEL, messages=MESSAGES) for _ in range(12)))
        assert all(r["choices"][0]["message"]["content"] for r in replies)
        served = [e.provider for e in seen[mark:] if isinstance(e, RequestFinished)]
        assert len(served) >= 12
        assert liar not in served
        assert set(served) <= {s.id for s in honest}
