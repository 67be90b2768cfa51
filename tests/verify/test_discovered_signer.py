"""Discovery hands each chain provider the TEE signer the chain acknowledges for it (devnet)."""

from __future__ import annotations

from router.client import Router
from router.config import RouterConfig
from router.devnet import Devnet
from router.pool.trust import TrustState


async def test_every_provider_carries_its_acknowledged_tee_signer(fresh_devnet: Devnet) -> None:
    devnet = fresh_devnet
    async with Router(RouterConfig.for_devnet(devnet)) as router:
        for provider in devnet.providers:
            state = router.pool.get(provider.address)
            assert state is not None
            assert state.info.tee_signer == provider.tee_signer.address
            assert state.trust.signer == provider.tee_signer.address
            assert state.trust.state is TrustState.UNVERIFIED
