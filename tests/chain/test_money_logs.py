"""``ChainClient.money_logs``, ``accounts_of`` and ``block_hash``: what the settlement watcher and the balance
sync read, against the real contracts on anvil (protocol.md §2.5, §6.6)."""

from __future__ import annotations

import os

from router.chain.client import ChainClient
from router.chain.devtools import Settlement, SettlementStatus, set_balance, settle_fees
from router.chain.logs import BalanceChanged, FeesSpent, MoneyLog, RefundQueued, SettlementResult
from router.chain.wallet import Wallet
from router.devnet import Devnet
from router.types import Account
from tests.support import NEURON


def user_of(chain: ChainClient) -> str:
    assert chain.wallet is not None
    return chain.wallet.address


async def other_wallet(devnet: Devnet) -> ChainClient:
    """A second new wallet with 1000 0G and no ledger."""
    wallet = Wallet("0x" + os.urandom(32).hex())
    await set_balance(devnet.owner, wallet.address, 1000 * NEURON)
    return await devnet.open_client(wallet)


def in_chain_order(logs: list[MoneyLog]) -> bool:
    positions = [(log.block, log.log_index) for log in logs]
    return positions == sorted(positions) and len(set(positions)) == len(positions)


class TestMoneyLogs:
    async def test_a_transfer_logs_the_new_balance(
        self, fresh_devnet: Devnet, new_wallet_client: ChainClient
    ) -> None:
        """Each transferFund gives one BalanceChanged carrying the sub-account's new balance (not the
        amount moved) and pending refund; creating the ledger logs nothing."""
        chain, provider = new_wallet_client, fresh_devnet.providers[0].address
        user = user_of(chain)
        created = await chain.add_ledger(10 * NEURON)
        first = await chain.transfer_fund(provider, 2 * NEURON)
        second = await chain.transfer_fund(provider, NEURON)
        logs = await chain.money_logs(user, created.block_number, second.block_number)
        assert [log.event for log in logs] == [
            BalanceChanged(provider, 2 * NEURON, 0),
            BalanceChanged(provider, 3 * NEURON, 0),
        ]
        assert [(log.block, log.tx_hash) for log in logs] == [
            (first.block_number, first.tx_hash),
            (second.block_number, second.tx_hash),
        ]
        assert await chain.money_logs(user, created.block_number, created.block_number) == []

    async def test_a_settlement_logs_fees_balance_and_result_in_one_transaction(
        self, fresh_devnet: Devnet, new_wallet_client: ChainClient
    ) -> None:
        """A successful settlement gives FeesSpent(fee), BalanceChanged(new balance) and
        SettlementResult(0, 0), in that order, all in one transaction."""
        chain, provider = new_wallet_client, fresh_devnet.providers[1]
        user = user_of(chain)
        await chain.add_ledger(10 * NEURON)
        await chain.transfer_fund(provider.address, 2 * NEURON)
        fee = 123_456_789_000
        statuses = await settle_fees(provider.chain, provider.tee_signer, [Settlement(user, fee, nonce=1)])
        assert statuses == [SettlementStatus.SUCCESS]
        block = await chain.block_number()
        logs = await chain.money_logs(user, block, block)
        assert [log.event for log in logs] == [
            FeesSpent(fee),
            BalanceChanged(provider.address, 2 * NEURON - fee, 0),
            SettlementResult(0, 0),
        ]
        assert len({log.tx_hash for log in logs}) == 1
        assert in_chain_order(logs)

    async def test_a_rejected_settlement_logs_only_its_result(
        self, fresh_devnet: Devnet, new_wallet_client: ChainClient
    ) -> None:
        """A settlement the contract refuses (a replayed nonce) moves no money: only
        SettlementResult(status, whole fee unsettled) is logged."""
        chain, provider = new_wallet_client, fresh_devnet.providers[0]
        user = user_of(chain)
        await chain.add_ledger(10 * NEURON)
        await chain.transfer_fund(provider.address, 2 * NEURON)
        await settle_fees(provider.chain, provider.tee_signer, [Settlement(user, 1000, nonce=5)])
        replay = await settle_fees(provider.chain, provider.tee_signer, [Settlement(user, 2000, nonce=5)])
        assert replay == [SettlementStatus.INVALID_NONCE]
        block = await chain.block_number()
        logs = await chain.money_logs(user, block, block)
        assert [log.event for log in logs] == [SettlementResult(int(SettlementStatus.INVALID_NONCE), 2000)]

    async def test_retrieve_fund_logs_a_queued_refund(
        self, fresh_devnet: Devnet, new_wallet_client: ChainClient
    ) -> None:
        """retrieveFund with nothing matured queues a refund: one RefundQueued naming the provider, and no
        BalanceChanged although the pending refund changed (so the watcher must re-read the account)."""
        chain, provider = new_wallet_client, fresh_devnet.providers[2].address
        user = user_of(chain)
        await chain.add_ledger(10 * NEURON)
        await chain.transfer_fund(provider, 2 * NEURON)
        result = await chain.retrieve_fund([provider])
        logs = await chain.money_logs(user, result.block_number, result.block_number)
        assert [log.event for log in logs] == [RefundQueued(provider)]
        assert logs[0].tx_hash == result.tx_hash
        account = await chain.get_account(user, provider)
        assert account is not None
        assert account.pending_refund == 2 * NEURON

    async def test_another_wallets_logs_are_not_returned(
        self, fresh_devnet: Devnet, new_wallet_client: ChainClient
    ) -> None:
        """Over the whole chain, a wallet's money logs are its own transfers and settlements only, even
        when another wallet funds and is settled by the same provider in between."""
        ours, theirs = new_wallet_client, await other_wallet(fresh_devnet)
        provider = fresh_devnet.providers[0]
        await ours.add_ledger(10 * NEURON)
        await theirs.add_ledger(10 * NEURON)
        own_transfer = await ours.transfer_fund(provider.address, 2 * NEURON)
        their_transfer = await theirs.transfer_fund(provider.address, 3 * NEURON)
        await settle_fees(provider.chain, provider.tee_signer, [Settlement(user_of(theirs), 77, nonce=1)])
        head = await ours.block_number()

        logs = await ours.money_logs(user_of(ours), 0, head)
        assert [log.event for log in logs] == [BalanceChanged(provider.address, 2 * NEURON, 0)]
        assert logs[0].tx_hash == own_transfer.tx_hash
        their_logs = await ours.money_logs(user_of(theirs), 0, head)
        assert their_logs[0].tx_hash == their_transfer.tx_hash
        assert [type(log.event) for log in their_logs] == [
            BalanceChanged,
            FeesSpent,
            BalanceChanged,
            SettlementResult,
        ]
        assert in_chain_order(their_logs)


class TestAccountsAndBlocks:
    async def test_accounts_of_returns_every_sub_account_at_a_block(
        self, fresh_devnet: Devnet, new_wallet_client: ChainClient
    ) -> None:
        """accounts_of reads getAccountsByUser as of the given block: none before the first transfer,
        then each sub-account with the balance it had at that block."""
        chain = new_wallet_client
        user = user_of(chain)
        first, second = fresh_devnet.providers[0].address, fresh_devnet.providers[1].address
        created = await chain.add_ledger(10 * NEURON)
        to_first = await chain.transfer_fund(first, 2 * NEURON)
        to_second = await chain.transfer_fund(second, 3 * NEURON)
        topped_up = await chain.transfer_fund(first, NEURON)

        def view(accounts: list[Account]) -> dict[str, int]:
            return {a.provider: a.balance for a in accounts}

        assert await chain.accounts_of(user, block=created.block_number) == []
        assert view(await chain.accounts_of(user, block=to_first.block_number)) == {first: 2 * NEURON}
        at_second = await chain.accounts_of(user, block=to_second.block_number)
        assert view(at_second) == {first: 2 * NEURON, second: 3 * NEURON}
        assert all(a.user == user and a.acknowledged and a.pending_refund == 0 for a in at_second)
        latest = await chain.accounts_of(user)
        assert view(latest) == {first: 3 * NEURON, second: 3 * NEURON}
        assert view(await chain.accounts_of(user, block=topped_up.block_number)) == view(latest)

    async def test_accounts_of_agrees_with_get_account(self, fresh_devnet: Devnet) -> None:
        """Every sub-account of the devnet user comes back, one per provider, each equal to its
        getAccount read."""
        user = fresh_devnet.user_wallet.address
        accounts = await fresh_devnet.user.accounts_of(user)
        assert {a.provider for a in accounts} == {p.address for p in fresh_devnet.providers}
        for account in accounts:
            assert account == await fresh_devnet.user.get_account(user, account.provider)

    async def test_block_hash_is_stable_and_none_past_the_head(
        self, fresh_devnet: Devnet, new_wallet_client: ChainClient
    ) -> None:
        """A mined block's hash is the node's, the same on every read and after later blocks; a block
        the chain does not have yet has no hash (None, not an error)."""
        chain = new_wallet_client
        head = await chain.block_number()
        known = await chain.block_hash(head)
        assert known is not None
        assert known.startswith("0x")
        assert len(known) == 66
        block = await chain.w3.eth.get_block(head)
        assert known == "0x" + bytes(block["hash"]).hex()
        await chain.add_ledger(3 * NEURON)
        assert await chain.block_hash(head) == known
        assert await chain.block_hash(head + 1) not in (None, known)
        assert await chain.block_hash(head + 1_000) is None
