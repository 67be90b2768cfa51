"""The funder: keeps every provider sub-account able to serve, by ``transferFund`` from the wallet's ledger.

A provider is topped up to ``fund_to`` of available balance when it falls under ``fund_below`` (and a new
provider gets its first sub-account when ``fund_new_providers``). Funding is single flight per provider
(a lock each) and goes through the chain client's one transaction signer. A ledger that cannot pay, or a
wallet at the contract's 50-provider cap, is reported once (event, log, admin view) and not retried until
the ledger grows: no loop of failing transactions. An unacknowledged sub-account is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from router.chain.client import ChainClient
from router.config import MoneyOptions
from router.errors import ChainError, ContractRevert, FundingError, provider_not_found
from router.money.balances import END_OF_BLOCK
from router.observability.events import Funded, FundingFailed, Observer
from router.pool.accounting import MINIMUM_LOCKED, Accounts, FundingState, SubAccount
from router.pool.providers import Pool, ProviderKind
from router.shared.leader import Fenced
from router.types import NEURON_PER_0G, TxResult

MIN_TRANSFER = NEURON_PER_0G  # the first transfer to a new sub-account (protocol.md §7.1)
MAX_PROVIDERS_PER_SERVICE = 50
MAX_PROVIDERS_PER_RETRIEVE = 20


class Funder:
    """Tops up sub-accounts for ``user`` from its ledger. ``wake()`` when a balance may have dropped."""

    def __init__(
        self,
        chain: ChainClient,
        accounts: Accounts,
        pool: Pool,
        options: MoneyOptions,
        *,
        user: str,
        clock: Callable[[], float],
        emit: Observer,
        on_funded: Callable[[str], None],
        fence: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``fence`` runs right before every transaction and raises ``Fenced`` when this replica may not
        send (it is not the leader of several sharing Redis): then nothing is sent."""
        self._chain = chain
        self._fence = fence
        self._accounts = accounts
        self._pool = pool
        self._options = options
        self._user = user
        self._clock = clock
        self._emit = emit
        self._on_funded = on_funded
        self._locks: dict[str, asyncio.Lock] = {}
        self._retry_at: dict[str, float] = {}
        # The ledger's available balance when a provider was found unfundable: retried once it grows.
        self._ledger_when_low: dict[str, int] = {}
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def run(self) -> None:
        while True:
            await self._woken.wait()
            self._woken.clear()
            await self.cycle()

    async def cycle(self) -> None:
        """Fund (or acknowledge) every provider that needs it, concurrently, one transaction each."""
        due = self.due()
        if due:
            await asyncio.gather(*(self._auto(provider) for provider, _ in due))

    def due(self) -> list[tuple[str, int]]:
        """(provider, amount) for each chain provider to fund now; amount 0 means acknowledge only."""
        if not self._options.auto_fund:
            for state in self._pool:
                if state.info.kind is ProviderKind.CHAIN:
                    self._accounts.of(state.id).funding = FundingState.OFF
            return []
        due = []
        for state in self._pool:
            if state.info.kind is ProviderKind.CHAIN and (amount := self._need(state.id)) is not None:
                due.append((state.id, amount))
        return due

    def _need(self, provider: str) -> int | None:
        """What ``provider`` needs now: an amount, 0 to acknowledge only, or None for nothing."""
        options, accounts = self._options, self._accounts
        account = accounts.of(provider)
        key = provider.lower()
        if account.funding is FundingState.DRAINING or self._clock() < self._retry_at.get(key, 0.0):
            return None
        if accounts.ledger_available <= self._ledger_when_low.get(key, -1):
            return None
        if not account.exists:
            if not options.fund_new_providers:
                return None
            return options.fund_to_neuron + MINIMUM_LOCKED + account.unsettled + account.reserved
        if account.available < options.fund_below_neuron:
            return options.fund_to_neuron - account.available
        return 0 if not account.acknowledged else None

    def known(self, provider: str) -> bool:
        """A chain provider of the pool, or one we hold a sub-account at: the only ones money moves to or
        from (anything else would send a real transaction and leave a phantom account behind)."""
        state = self._pool.get(provider)
        if state is not None and state.info.kind is ProviderKind.CHAIN:
            return True
        account = self._accounts.get(provider)
        return account is not None and account.exists

    def _refuse_unknown(self, providers: Sequence[str], param: str) -> None:
        unknown = [p for p in providers if not self.known(p)]
        if unknown:
            raise provider_not_found(unknown, param)

    async def fund(self, provider: str, amount: int) -> TxResult:
        """An operator's transfer of ``amount`` neuron to ``provider`` (ends a drain); raises on failure,
        ``InvalidRequest`` (404) for a provider that is not ``known``."""
        self._refuse_unknown([provider], "provider")
        async with self._lock(provider):
            account = self._accounts.of(provider)
            if account.funding is FundingState.DRAINING:
                account.funding = FundingState.OK
            return await self._send(account, amount, manual=True)

    async def drain(self, providers: Sequence[str]) -> list[TxResult]:
        """Refund ``providers`` (``retrieveFund``, 20 per call) and stop funding them until funded by hand.

        A queued refund takes the provider's whole balance out of service at once (protocol.md §7.2).
        Marked first, so no top-up starts; a top-up already under way lands before the refund is asked.
        Nothing is sent when any of ``providers`` is not ``known`` (``InvalidRequest``, 404).
        """
        self._refuse_unknown(providers, "providers")
        for provider in providers:
            account = self._accounts.of(provider)
            account.funding, account.funding_detail = FundingState.DRAINING, "refund requested"
        results = []
        for start in range(0, len(providers), MAX_PROVIDERS_PER_RETRIEVE):
            chunk = providers[start : start + MAX_PROVIDERS_PER_RETRIEVE]
            async with contextlib.AsyncExitStack() as held:
                for provider in sorted({p.lower() for p in chunk}):
                    await held.enter_async_context(self._lock(provider))
                await self._fenced()
                result = await self._chain.retrieve_fund(chunk)
                for provider in chunk:
                    await self._reread(provider, result.block_number)
            results.append(result)
        return results

    async def _auto(self, provider: str) -> None:
        async with self._lock(provider):
            # Decided again under the lock: a transfer that held it may have changed everything.
            amount = self._need(provider)
            if amount is None:
                return
            account = self._accounts.of(provider)
            try:
                if amount == 0:
                    await self._acknowledge(account)
                else:
                    await self._send(account, self._affordable(account, amount), manual=False)
            except ChainError:
                # Already recorded on the account and reported.
                return
            except Fenced:
                # No longer the leader: the one that is funds it.
                return

    async def _fenced(self) -> None:
        if self._fence is not None:
            await self._fence()

    def _lock(self, provider: str) -> asyncio.Lock:
        return self._locks.setdefault(provider.lower(), asyncio.Lock())

    async def _send(self, account: SubAccount, amount: int, *, manual: bool) -> TxResult:
        """Under the provider's lock: one ``transferFund``, then the account as the chain has it."""
        provider = account.provider
        await self._fenced()
        before = account.funding, account.funding_detail
        account.funding, account.funding_detail = FundingState.FUNDING, ""
        try:
            result = await self._chain.transfer_fund(provider, amount)
        except ContractRevert as exc:
            if exc.name == "InsufficientAvailableBalance" and exc.error_args:
                # The chain's figure, fresher than ours: wait for the ledger to grow past it.
                self._accounts.ledger_available = int(str(exc.error_args[0]))
            message = _revert_message(exc)
            if manual:
                # An operator's refused request is answered, not turned into an alert or a pause.
                account.funding, account.funding_detail = before
            else:
                self._failed(account, _state_of(exc), message)
            raise FundingError(_state_of(exc).value, message) from None
        except ChainError as exc:
            if manual:
                account.funding, account.funding_detail = before
            else:
                self._failed(account, FundingState.FAILED, str(exc))
            raise
        await self._reread(provider, result.block_number)
        if account.funding is FundingState.FUNDING:
            account.funding = FundingState.OK
        self._retry_at.pop(provider.lower(), None)
        self._ledger_when_low.pop(provider.lower(), None)
        self._emit(Funded(self._user, provider, amount, result.tx_hash, manual=manual))
        self._on_funded(provider)
        return result

    def _affordable(self, account: SubAccount, amount: int) -> int:
        """What the ledger can pay of ``amount``; raises FundingError when it cannot pay enough to matter."""
        accounts = self._accounts
        new_provider = not account.exists and account.provider.lower() not in accounts.funded_providers
        if new_provider and len(accounts.funded_providers) >= MAX_PROVIDERS_PER_SERVICE:
            message = (
                f"the wallet already funds {MAX_PROVIDERS_PER_SERVICE} providers, the contract's cap; "
                "refund one to make room"
            )
            self._failed(account, FundingState.PROVIDER_CAP, message)
            raise FundingError(FundingState.PROVIDER_CAP.value, message)
        ledger = accounts.ledger_available
        if ledger >= amount:
            return amount
        # Enough to open the account, or to bring an existing one back to serving, is worth sending.
        needed = MIN_TRANSFER if not account.exists else max(1, -account.available)
        message = (
            f"the ledger has {zero_g(ledger)} 0G available, short of the "
            f"{zero_g(amount)} 0G top-up; deposit more to the ledger"
        )
        if ledger < needed:
            self._failed(account, FundingState.LEDGER_LOW, message)
            raise FundingError(FundingState.LEDGER_LOW.value, message)
        self._emit(FundingFailed(self._user, account.provider, FundingState.LEDGER_LOW.value, message))
        return ledger

    async def _acknowledge(self, account: SubAccount) -> TxResult | None:
        await self._fenced()
        try:
            result = await self._chain.acknowledge_tee_signer(account.provider, True)
        except ChainError as exc:
            self._failed(account, FundingState.FAILED, f"acknowledging the provider failed: {exc}")
            return None
        await self._reread(account.provider, result.block_number)
        if account.funding is FundingState.FAILED:
            account.funding, account.funding_detail = FundingState.OK, ""
        self._retry_at.pop(account.provider.lower(), None)
        return result

    async def _reread(self, provider: str, block: int) -> None:
        """Take the sub-account and ledger as they are right after our transaction."""
        chain, accounts = self._chain, self._accounts
        sub = await chain.get_account(self._user, provider, block=block)
        accounts.observe(
            provider,
            position=(block, END_OF_BLOCK),
            exists=sub is not None,
            balance=sub.balance if sub else 0,
            pending_refund=sub.pending_refund if sub else 0,
            acknowledged=sub.acknowledged if sub else False,
        )
        ledger = await chain.get_ledger(self._user, block=block)
        if ledger is not None:
            funded = accounts.funded_providers | {provider.lower()}
            accounts.observe_ledger(
                block=block, available=ledger.available_balance, total=ledger.total_balance, providers=funded
            )

    def _failed(self, account: SubAccount, state: FundingState, detail: str) -> None:
        key = account.provider.lower()
        account.funding, account.funding_detail = state, detail
        if state is FundingState.FAILED:
            self._retry_at[key] = self._clock() + self._options.funding_retry
        else:
            self._ledger_when_low[key] = self._accounts.ledger_available
        self._emit(FundingFailed(self._user, account.provider, state.value, detail))


def _revert_message(exc: ContractRevert) -> str:
    if exc.name == "InsufficientAvailableBalance" and len(exc.error_args) == 2:
        available, required = (int(str(a)) for a in exc.error_args)
        return (
            f"the ledger has {zero_g(available)} 0G available, short of the "
            f"{zero_g(required)} 0G transfer; deposit more to the ledger"
        )
    return str(exc)


def zero_g(neuron: int) -> str:
    """``neuron`` in 0G, exactly (a float would round a large amount): at least 6 decimals, more only
    when the amount has them."""
    whole, part = divmod(neuron, NEURON_PER_0G)
    decimals = f"{part:018d}".rstrip("0").ljust(6, "0")
    return f"{whole}.{decimals}"


def _state_of(exc: ContractRevert) -> FundingState:
    if exc.name in ("InsufficientAvailableBalance", "LedgerNotExists"):
        return FundingState.LEDGER_LOW
    if exc.name == "TooManyProvidersForService":
        return FundingState.PROVIDER_CAP
    return FundingState.FAILED
