"""A simulated provider's money: fees, unsettled amounts per user, the balance check, and settlement.

Follows protocol.md §4.5-§4.6 and §6: fee = prompt * input price + completion * output price; a request is
admitted only if the user's locked balance covers 1 0G + unsettled fees (the broker re-reads the chain
once before refusing, so top-ups count at once); a settlement cycle signs every user's unsettled total
with the TEE key and submits one ``settleFeesWithTEE`` batch per 50 users.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from router.chain.client import ChainClient
from router.chain.devtools import Settlement, SettlementStatus, settle_fees
from router.chain.wallet import Wallet
from router.types import NEURON_PER_0G, Account

MINIMUM_LOCKED_BALANCE = NEURON_PER_0G
SETTLEMENT_BATCH = 50


class BillingRefused(Exception):
    """The account cannot be billed; ``str()`` is the broker's message."""


@dataclass(slots=True)
class UserBill:
    """What one user owes this provider and what was settled so far."""

    unsettled: int = 0
    settled: int = 0


class Billing:
    """Charges requests and settles them on chain for the provider behind ``chain``."""

    def __init__(self, chain: ChainClient, tee_signer: Wallet, *, input_price: int, output_price: int):
        self._chain = chain
        self._tee_signer = tee_signer
        self.input_price = input_price
        self.output_price = output_price
        self.bills: dict[str, UserBill] = {}
        self._accounts: dict[str, Account | None] = {}
        self._last_nonce = 0
        self._cycle_done = asyncio.Condition()

    @property
    def provider(self) -> str:
        return self._chain.sender.wallet.address

    def fee(self, prompt_tokens: int, completion_tokens: int) -> int:
        return prompt_tokens * self.input_price + completion_tokens * self.output_price

    def charge(self, user: str, prompt_tokens: int, completion_tokens: int) -> int:
        """Record a served request's fee as unsettled; returns the fee."""
        fee = self.fee(prompt_tokens, completion_tokens)
        bill = self.bills.setdefault(user.lower(), UserBill())
        bill.unsettled += fee
        return fee

    def unsettled(self, user: str) -> int:
        bill = self.bills.get(user.lower())
        return bill.unsettled if bill else 0

    async def check(self, user: str) -> None:
        """Admit ``user`` only with an acknowledged account whose locked balance covers 1 0G + unsettled."""
        account = await self._account(user, fresh=False)
        if not self._covers(account, user):
            account = await self._account(user, fresh=True)
        if account is None:
            raise BillingRefused("get account from contract: account not exist")
        if not account.acknowledged:
            raise BillingRefused(
                "user not acknowledge the provider, "
                "please use acknowledgeProviderSigner function in sdk first"
            )
        if not self._covers(account, user):
            unsettled = self.unsettled(user)
            required = MINIMUM_LOCKED_BALANCE + unsettled
            raise BillingRefused(
                f"insufficient balance: your locked balance is {_og(account.locked)} 0G, but the required "
                f"minimum is {_og(required)} 0G (breakdown: minimum reserve {_og(MINIMUM_LOCKED_BALANCE)} 0G "
                f"+ unsettled fees {_og(unsettled)} 0G + current request fee {_og(0)} 0G). Please add more "
                f"funds with: 0g-compute-cli transfer-fund --provider {self.provider} --amount <amount>"
            )

    async def settle(self) -> dict[str, SettlementStatus]:
        """One settlement cycle over every user with unsettled fees; returns each user's status."""
        owed = {user: bill.unsettled for user, bill in self.bills.items() if bill.unsettled > 0}
        outcome: dict[str, SettlementStatus] = {}
        users = list(owed)
        for start in range(0, len(users), SETTLEMENT_BATCH):
            batch = users[start : start + SETTLEMENT_BATCH]
            items = [Settlement(user, owed[user], self._next_nonce()) for user in batch]
            statuses = await settle_fees(self._chain, self._tee_signer, items)
            for user, status in zip(batch, statuses, strict=True):
                outcome[user] = status
                bill = self.bills[user]
                if status in (SettlementStatus.SUCCESS, SettlementStatus.PARTIAL):
                    bill.unsettled -= owed[user]
                    bill.settled += owed[user]
                elif status is SettlementStatus.NO_TEE_SIGNER:
                    # The broker deletes such requests: they are never billed (§6.2 step 8).
                    bill.unsettled -= owed[user]
                self._accounts.pop(user, None)
        async with self._cycle_done:
            self._cycle_done.notify_all()
        return outcome

    async def wait_settled(self, user: str, amount: int) -> None:
        """Return once settlement cycles have settled at least ``amount`` of ``user``'s fees."""
        bill = self.bills.setdefault(user.lower(), UserBill())
        async with self._cycle_done:
            await self._cycle_done.wait_for(lambda: bill.settled >= amount)

    def _covers(self, account: Account | None, user: str) -> bool:
        if account is None:
            return False
        return account.locked >= MINIMUM_LOCKED_BALANCE + self.unsettled(user)

    async def _account(self, user: str, *, fresh: bool) -> Account | None:
        key = user.lower()
        if fresh or key not in self._accounts:
            self._accounts[key] = await self._chain.get_account(user, self.provider)
        return self._accounts[key]

    def _next_nonce(self) -> int:
        # The broker's nonce is unix seconds * 10^7; the contract only needs it to grow per account.
        self._last_nonce = max(int(time.time()) * 10**7, self._last_nonce + 1)
        return self._last_nonce


def _og(neuron: int) -> str:
    return f"{neuron / NEURON_PER_0G:.6f}"
