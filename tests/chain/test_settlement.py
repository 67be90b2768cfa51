"""Provider-side fee settlement with EIP-712 TEE signatures, against the deployed contract's checks."""

from __future__ import annotations

from router.chain.devtools import Settlement, SettlementStatus, settle_fees
from router.chain.wallet import Wallet
from router.devnet import Devnet, DevnetProvider
from tests.support import NEURON


async def _balance(devnet: Devnet, provider: DevnetProvider) -> int:
    account = await devnet.user.get_account(devnet.user_wallet.address, provider.address)
    assert account is not None
    return account.balance


class TestSettleFees:
    async def test_signed_settlement_moves_exactly_the_fee(self, fresh_devnet: Devnet) -> None:
        """Status SUCCESS; the sub-account and the ledger total drop by the fee; the nonce is stored."""
        provider, user = fresh_devnet.providers[0], fresh_devnet.user_wallet.address
        ledger_before = await fresh_devnet.user.get_ledger(user)
        before = await _balance(fresh_devnet, provider)
        fee = 123_456_789
        statuses = await settle_fees(provider.chain, provider.tee_signer, [Settlement(user, fee, nonce=7)])
        assert statuses == [SettlementStatus.SUCCESS]
        account = await fresh_devnet.user.get_account(user, provider.address)
        ledger_after = await fresh_devnet.user.get_ledger(user)
        assert account is not None
        assert ledger_before is not None
        assert ledger_after is not None
        assert (account.balance, account.nonce) == (before - fee, 7)
        assert ledger_after.total_balance == ledger_before.total_balance - fee

    async def test_a_replayed_nonce_is_refused(self, fresh_devnet: Devnet) -> None:
        """The same nonce twice: the second item is INVALID_NONCE and charges nothing."""
        provider, user = fresh_devnet.providers[0], fresh_devnet.user_wallet.address
        await settle_fees(provider.chain, provider.tee_signer, [Settlement(user, 1000, nonce=5)])
        after_first = await _balance(fresh_devnet, provider)
        replay = await settle_fees(provider.chain, provider.tee_signer, [Settlement(user, 1000, nonce=5)])
        assert replay == [SettlementStatus.INVALID_NONCE]
        assert await _balance(fresh_devnet, provider) == after_first

    async def test_a_signature_by_another_key_is_refused(self, fresh_devnet: Devnet) -> None:
        """Signed by a key that is not the registered TEE signer: INVALID_SIGNATURE, nothing charged."""
        provider, user = fresh_devnet.providers[0], fresh_devnet.user_wallet.address
        before = await _balance(fresh_devnet, provider)
        impostor = Wallet("0x" + "42" * 32)
        statuses = await settle_fees(provider.chain, impostor, [Settlement(user, 1000, nonce=1)])
        assert statuses == [SettlementStatus.INVALID_SIGNATURE]
        assert await _balance(fresh_devnet, provider) == before

    async def test_a_fee_above_the_balance_settles_partially(self, fresh_devnet: Devnet) -> None:
        """More than the sub-account holds: PARTIAL, and the whole balance is taken."""
        provider, user = fresh_devnet.providers[1], fresh_devnet.user_wallet.address
        statuses = await settle_fees(
            provider.chain, provider.tee_signer, [Settlement(user, 1000 * NEURON, nonce=1)]
        )
        assert statuses == [SettlementStatus.PARTIAL]
        assert await _balance(fresh_devnet, provider) == 0

    async def test_a_batch_settles_every_item_in_order(self, fresh_devnet: Devnet) -> None:
        """Two items with increasing nonces in one transaction both succeed."""
        provider, user = fresh_devnet.providers[2], fresh_devnet.user_wallet.address
        before = await _balance(fresh_devnet, provider)
        batch = [Settlement(user, 10, nonce=1), Settlement(user, 20, nonce=2)]
        statuses = await settle_fees(provider.chain, provider.tee_signer, batch)
        assert statuses == [SettlementStatus.SUCCESS, SettlementStatus.SUCCESS]
        assert await _balance(fresh_devnet, provider) == before - 30
