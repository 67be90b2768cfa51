"""ChainClient against the real 0G contracts on anvil."""

from __future__ import annotations

import asyncio

import pytest

from router.chain.client import ChainClient
from router.chain.devtools import increase_time
from router.devnet import Devnet
from router.errors import ChainError, ConfigError, ContractRevert
from tests.support import DEVNET_PROVIDERS, NEURON


class TestReads:
    async def test_list_services_returns_exactly_what_was_registered(self, devnet: Devnet) -> None:
        """Every registered provider comes back once, with its URL, model, prices and acknowledged signer."""
        services = {s.provider: s for s in await devnet.user.list_services()}
        assert set(services) == {p.address for p in devnet.providers}
        for provider, spec in zip(devnet.providers, DEVNET_PROVIDERS, strict=True):
            service = services[provider.address]
            assert service.url == provider.url
            assert service.model == spec.model
            assert (service.input_price, service.output_price) == (spec.input_price, spec.output_price)
            assert service.service_type == "chatbot"
            assert service.verifiability == "TeeML"
            assert service.tee_signer_address == provider.tee_signer.address
            assert service.tee_signer_acknowledged

    async def test_missing_records_read_as_none(self, devnet: Devnet) -> None:
        """A provider without a service, an account that does not exist, a user without a ledger: None."""
        stranger = "0x000000000000000000000000000000000000dEaD"
        assert await devnet.user.get_service(stranger) is None
        assert await devnet.user.get_account(stranger, devnet.providers[0].address) is None
        assert await devnet.user.get_ledger(stranger) is None

    async def test_funded_user_state(self, devnet: Devnet) -> None:
        """The devnet user has a ledger and one acknowledged, funded sub-account per provider."""
        user = devnet.user_wallet.address
        ledger = await devnet.user.get_ledger(user)
        assert ledger is not None
        funded = devnet.config.sub_account_funding * len(devnet.providers)
        assert ledger.total_balance == devnet.config.ledger_deposit
        assert ledger.available_balance == devnet.config.ledger_deposit - funded
        assert set(await devnet.user.get_ledger_providers(user)) == {p.address for p in devnet.providers}
        for provider in devnet.providers:
            account = await devnet.user.get_account(user, provider.address)
            assert account is not None
            assert account.balance == devnet.config.sub_account_funding
            assert account.acknowledged
            assert account.generation == 0

    async def test_service_name_is_resolved_from_the_registry(self, devnet: Devnet) -> None:
        assert await devnet.user.service_name() == "inference-v1.0"

    async def test_rejects_a_non_address(self, devnet: Devnet) -> None:
        with pytest.raises(ChainError, match="not an address"):
            await devnet.user.get_account("0x123", devnet.providers[0].address)


class TestWrites:
    async def test_transfer_creates_an_acknowledged_sub_account(self, new_wallet_client: ChainClient) -> None:
        """addLedger + transferFund: the account exists, holds the amount, and is acknowledged."""
        chain, provider = new_wallet_client, (await new_wallet_client.list_services())[0].provider
        assert chain.wallet is not None
        await chain.add_ledger(10 * NEURON)
        await chain.transfer_fund(provider, 2 * NEURON)
        account = await chain.get_account(chain.wallet.address, provider)
        assert account is not None
        assert (account.balance, account.pending_refund, account.acknowledged) == (2 * NEURON, 0, True)
        ledger = await chain.get_ledger(chain.wallet.address)
        assert ledger is not None
        assert (ledger.available_balance, ledger.total_balance) == (8 * NEURON, 10 * NEURON)

    async def test_acknowledgement_round_trip_after_refund(self, new_wallet_client: ChainClient) -> None:
        """Retrieve the funds past lockTime, then un- and re-acknowledge; each change shows in the account."""
        chain, provider = new_wallet_client, (await new_wallet_client.list_services())[0].provider
        assert chain.wallet is not None
        user = chain.wallet.address
        await chain.add_ledger(5 * NEURON)
        await chain.transfer_fund(provider, 2 * NEURON)
        with pytest.raises(ContractRevert) as revoke:
            await chain.acknowledge_tee_signer(provider, acknowledged=False)
        assert revoke.value.name == "CannotRevokeWithNonZeroBalance"

        await chain.retrieve_fund([provider])
        pending = await chain.get_account(user, provider)
        assert pending is not None
        assert pending.pending_refund == 2 * NEURON
        assert [r.amount for r in pending.refunds] == [2 * NEURON]
        await increase_time(chain, await chain.lock_time() + 1)
        await chain.retrieve_fund([provider])
        emptied = await chain.get_account(user, provider)
        assert emptied is not None
        assert (emptied.balance, emptied.pending_refund, emptied.refunds) == (0, 0, ())

        await chain.acknowledge_tee_signer(provider, acknowledged=False)
        account = await chain.get_account(user, provider)
        assert account is not None
        assert not account.acknowledged
        await chain.acknowledge_tee_signer(provider)
        account = await chain.get_account(user, provider)
        assert account is not None
        assert account.acknowledged

        before = await chain.native_balance(user)
        await chain.refund(5 * NEURON)
        assert await chain.get_ledger(user) is None  # a ledger emptied to 0 is deleted
        assert await chain.native_balance(user) > before

    async def test_deposit_adds_to_available_and_total(self, fresh_devnet: Devnet) -> None:
        user = fresh_devnet.user_wallet.address
        before = await fresh_devnet.user.get_ledger(user)
        result = await fresh_devnet.user.deposit_fund(2 * NEURON)
        after = await fresh_devnet.user.get_ledger(user)
        assert before is not None
        assert after is not None
        assert result.tx_hash.startswith("0x")
        assert after.available_balance == before.available_balance + 2 * NEURON
        assert after.total_balance == before.total_balance + 2 * NEURON

    async def test_concurrent_transfers_from_one_signer_all_succeed(self, fresh_devnet: Devnet) -> None:
        """12 transfers fired at once from one wallet: no nonce collision, every coin arrives."""
        user, provider = fresh_devnet.user, fresh_devnet.providers[1].address
        before = await user.get_account(fresh_devnet.user_wallet.address, provider)
        assert before is not None
        receipts = await asyncio.gather(*(user.transfer_fund(provider, NEURON // 10) for _ in range(12)))
        assert len({r.tx_hash for r in receipts}) == 12
        after = await user.get_account(fresh_devnet.user_wallet.address, provider)
        assert after is not None
        assert after.balance == before.balance + 12 * (NEURON // 10)

    async def test_a_stale_local_nonce_is_resynced(self, fresh_devnet: Devnet) -> None:
        """Another client sent from our wallet: the next send hits "nonce too low", resyncs and succeeds."""
        user = fresh_devnet.user
        await user.deposit_fund(1)
        other = await fresh_devnet.open_client(fresh_devnet.user_wallet)
        await other.deposit_fund(1)
        await user.deposit_fund(1)
        ledger = await user.get_ledger(fresh_devnet.user_wallet.address)
        assert ledger is not None
        assert ledger.total_balance == fresh_devnet.config.ledger_deposit + 3

    async def test_revoke_all_tokens_bumps_the_generation(self, fresh_devnet: Devnet) -> None:
        provider = fresh_devnet.providers[0].address
        await fresh_devnet.user.revoke_all_tokens(provider)
        account = await fresh_devnet.user.get_account(fresh_devnet.user_wallet.address, provider)
        assert account is not None
        assert account.generation == 1

    async def test_a_client_that_is_not_open_says_so(self, devnet: Devnet) -> None:
        """Using a client outside `async with` is a clear ChainError, also after it was closed."""
        client = ChainClient(devnet.network)
        with pytest.raises(ChainError, match="not open"):
            await client.list_services()
        async with client:
            assert await client.service_name() == "inference-v1.0"
        with pytest.raises(ChainError, match="not open"):
            await client.get_ledger(devnet.user_wallet.address)

    async def test_a_client_without_wallet_cannot_send(self, devnet: Devnet) -> None:
        reader = await devnet.open_client()
        with pytest.raises(ConfigError, match="no wallet"):
            await reader.deposit_fund(NEURON)


class TestReverts:
    async def test_custom_error_is_decoded_with_its_arguments(self, new_wallet_client: ChainClient) -> None:
        """A too-small first ledger deposit names the custom error and both amounts."""
        with pytest.raises(ContractRevert) as caught:
            await new_wallet_client.add_ledger(NEURON)
        error = caught.value
        assert (error.function, error.name) == ("addLedger", "MinimumDepositRequired")
        assert error.error_args == (NEURON, 3 * NEURON)
        assert str(error) == f"addLedger reverted with MinimumDepositRequired({NEURON}, {3 * NEURON})"

    async def test_address_arguments_are_decoded(self, fresh_devnet: Devnet) -> None:
        """A second ledger for the same user: LedgerExists(user)."""
        with pytest.raises(ContractRevert) as caught:
            await fresh_devnet.user.add_ledger(3 * NEURON)
        assert caught.value.name == "LedgerExists"
        assert caught.value.error_args == (fresh_devnet.user_wallet.address,)

    async def test_string_revert_is_decoded(self, fresh_devnet: Devnet) -> None:
        """An owner-only call from another wallet reverts with OpenZeppelin's Error(string)."""
        provider = fresh_devnet.providers[0]
        fn = provider.chain.inference.functions.acknowledgeTEESignerByOwner(provider.address)
        with pytest.raises(ContractRevert) as caught:
            await provider.chain.transact("acknowledgeTEESignerByOwner", fn)
        assert caught.value.name == "Error"
        assert caught.value.error_args == ("Ownable: caller is not the owner",)

    async def test_failed_write_leaves_the_signer_usable(self, fresh_devnet: Devnet) -> None:
        """A reverted send consumes no nonce: the next transaction from the same wallet goes through."""
        user, provider = fresh_devnet.user, fresh_devnet.providers[0].address
        with pytest.raises(ContractRevert):
            await user.transfer_fund(provider, 10_000 * NEURON)
        result = await user.transfer_fund(provider, NEURON)
        assert result.gas_used > 0
