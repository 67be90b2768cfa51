"""Devnet: a local anvil chain with the real 0G contracts, registered providers and funded users.

    async with Devnet() as devnet:                     # one provider of "devnet-model"
        devnet.rpc_url, devnet.user_wallet.address, devnet.providers[0].address ...
        config = RouterConfig.for_devnet(devnet)        # a router for the funded user(s)

``DevnetConfig(providers=(ProviderSpec(model="a"), ProviderSpec(model="b")))`` sets up more providers, and
``DevnetConfig(wallets=3)`` three users, each with its own ledger and a sub-account at every provider. The
anvil binary and contract artifacts come from ``node_modules`` (``make setup``; ``find_node_modules``).

Roles use anvil's dev accounts (the "test test ... junk" mnemonic): account 0 deploys and owns the
contracts, account 1 is the first user, accounts 2 to 1+P are the P providers, and the other users come
after them (2+P, 3+P, ...), so adding users moves no one. TEE signer keys are derived from the same
mnemonic far past the funded accounts; they only sign, so they need no coins.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from eth_account.hdaccount import ETHEREUM_DEFAULT_PATH, key_from_seed, seed_from_mnemonic

from router.chain.client import ChainClient, ChainOptions
from router.chain.devtools import (
    ServiceRegistration,
    acknowledge_signer_by_owner,
    deploy_contracts,
    register_service,
    revert,
    snapshot,
)
from router.chain.networks import DEVNET, Network
from router.chain.wallet import Wallet
from router.devnet.anvil import Anvil
from router.devnet.node_tools import NodeModules, contract_artifacts, find_node_modules
from router.devnet.simulator.server import ProviderSimulator
from router.devnet.simulator.spec import ProviderSpec
from router.errors import ConfigError
from router.types import NEURON_PER_0G

DEV_MNEMONIC = "test test test test test test test test test test test junk"
_OWNER_INDEX, USER_KEY_INDEX, _FIRST_PROVIDER_INDEX = 0, 1, 2
_TEE_KEY_BASE_INDEX = 1000
MAX_WALLETS = 10
MIN_PROVIDER_STAKE = 100 * NEURON_PER_0G
# Anvil mines each transaction as it arrives, so receipts are ready within milliseconds.
_DEVNET_CHAIN_OPTIONS = ChainOptions(receipt_poll_interval=0.005, receipt_timeout=30.0)


def dev_private_key(index: int) -> str:
    """The private key of HD account ``index`` of the dev mnemonic (what anvil funds for 0..N-1)."""
    seed = seed_from_mnemonic(DEV_MNEMONIC, "")
    path = ETHEREUM_DEFAULT_PATH.rsplit("/", 1)[0] + f"/{index}"
    return "0x" + key_from_seed(seed, path).hex()


@dataclass(frozen=True, slots=True)
class DevnetConfig:
    """What to set up. Amounts in neuron; ``lock_time`` in seconds (the contract allows 3600-604800).

    Each of the ``wallets`` users gets ``ledger_deposit`` in its ledger and ``sub_account_funding`` moved
    to every provider.
    """

    providers: tuple[ProviderSpec, ...] = (ProviderSpec(),)
    ledger_deposit: int = 100 * NEURON_PER_0G
    sub_account_funding: int = 5 * NEURON_PER_0G
    lock_time: int = 3600
    port: int = 0
    settle_interval: float | None = 5.0
    wallets: int = 1

    def __post_init__(self) -> None:
        if not 1 <= len(self.providers) <= 50:
            raise ConfigError("the devnet takes 1 to 50 providers")
        if not 1 <= self.wallets <= MAX_WALLETS:
            raise ConfigError(f"the devnet takes 1 to {MAX_WALLETS} wallets, got {self.wallets}")
        if self.ledger_deposit < 3 * NEURON_PER_0G:
            raise ConfigError("the ledger deposit must be at least 3 0G (the contract minimum)")
        if self.sub_account_funding and self.sub_account_funding < NEURON_PER_0G:
            raise ConfigError("a first transfer to a provider must be 0 or at least 1 0G")
        # Per user: every user has its own deposit, so more wallets need no more of it.
        if self.sub_account_funding * len(self.providers) > self.ledger_deposit:
            raise ConfigError("the ledger deposit cannot cover every provider's sub-account funding")

    def user_key_indexes(self) -> list[int]:
        """The dev-account index of each user, the first user first (``dev_private_key`` gives the key)."""
        after_providers = _FIRST_PROVIDER_INDEX + len(self.providers)
        return [USER_KEY_INDEX, *range(after_providers, after_providers + self.wallets - 1)]


@dataclass(slots=True)
class DevnetProvider:
    """A registered provider: its wallet's chain client, its TEE signer and its simulated broker."""

    spec: ProviderSpec
    chain: ChainClient
    tee_signer: Wallet = field(repr=False)
    simulator: ProviderSimulator = field(repr=False)

    @property
    def url(self) -> str:
        return self.simulator.url

    @property
    def address(self) -> str:
        assert self.chain.wallet is not None
        return self.chain.wallet.address


class Devnet:
    """Starts anvil, deploys the 0G contracts, registers providers, funds the users; tears all down.

    ``users`` are the funded users' chain clients in ``DevnetConfig.user_key_indexes`` order; ``user`` is
    the first.
    """

    def __init__(self, config: DevnetConfig | None = None, node_modules: NodeModules | None = None):
        self.config = config or DevnetConfig()
        self._modules = node_modules
        self._stack = AsyncExitStack()
        self.rpc_url = ""
        self.ready_seconds = 0.0
        self.owner: ChainClient
        self.users: list[ChainClient] = []
        self.providers: list[DevnetProvider] = []

    @property
    def network(self) -> Network:
        """The devnet preset pointed at this devnet's anvil."""
        return DEVNET.with_rpc_urls(self.rpc_url)

    @property
    def user(self) -> ChainClient:
        """The first user's client (anvil's dev account #1)."""
        return self.users[0]

    @property
    def user_wallet(self) -> Wallet:
        return self.user_wallets[0]

    @property
    def user_wallets(self) -> list[Wallet]:
        """The users' wallets, in ``users`` order."""
        wallets = []
        for user in self.users:
            assert user.wallet is not None
            wallets.append(user.wallet)
        return wallets

    def summary(self) -> dict[str, Any]:
        """What a client needs to use the devnet (``zg-router devnet --json`` prints it as one line;
        ``RouterConfig.for_devnet`` reads it). ``user`` is the first of ``users``; their keys are anvil's
        public dev keys."""
        users = [
            {"address": wallet.address, "private_key": dev_private_key(index)}
            for wallet, index in zip(self.user_wallets, self.config.user_key_indexes(), strict=True)
        ]
        return {
            "rpc_url": self.rpc_url,
            "chain_id": self.network.chain_id,
            "ledger": self.network.ledger,
            "inference": self.network.inference,
            "user": users[0],
            "users": users,
            "providers": [
                {
                    "address": p.address,
                    "url": p.url,
                    "model": p.spec.model,
                    "service_type": p.spec.service_type,
                    "admin_url": p.simulator.admin_url,
                }
                for p in self.providers
            ],
        }

    async def __aenter__(self) -> Self:
        started = time.perf_counter()
        modules = self._modules or find_node_modules()
        artifacts = await asyncio.to_thread(contract_artifacts, modules)
        # Funded accounts: owner, first user, providers, then the other users.
        accounts = _FIRST_PROVIDER_INDEX + len(self.config.providers) + self.config.wallets - 1
        try:
            anvil = await self._stack.enter_async_context(
                Anvil(modules.anvil, accounts=accounts, port=self.config.port)
            )
            self.rpc_url = anvil.rpc_url
            self.owner = await self._client(_OWNER_INDEX)
            self.users = [await self._client(index) for index in self.config.user_key_indexes()]
            for i, spec in enumerate(self.config.providers):
                chain = await self._client(_FIRST_PROVIDER_INDEX + i)
                tee = Wallet(dev_private_key(_TEE_KEY_BASE_INDEX + i))
                simulator = await self._stack.enter_async_context(
                    ProviderSimulator(chain, tee, spec, settle_interval=self.config.settle_interval)
                )
                self.providers.append(DevnetProvider(spec, chain, tee, simulator))
            await deploy_contracts(self.owner, artifacts, self.config.lock_time)
            await asyncio.gather(*(self._register(p) for p in self.providers))
            await asyncio.gather(*(self._fund(user) for user in self.users))
        except BaseException:
            await self._stack.aclose()
            raise
        self.ready_seconds = time.perf_counter() - started
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def snapshot(self) -> str:
        """Take an ``evm_snapshot``; ``revert`` returns the chain to it (once per id)."""
        return await snapshot(self.owner)

    async def revert(self, snapshot_id: str) -> None:
        """Revert the chain to ``snapshot_id`` and resync the local nonces of every devnet client."""
        await revert(self.owner, snapshot_id)
        for chain in self.clients():
            chain.sender.forget_nonce()

    def clients(self) -> list[ChainClient]:
        """Every chain client the devnet opened (owner, users, providers)."""
        return [self.owner, *self.users, *(p.chain for p in self.providers)]

    async def open_client(self, wallet: Wallet | None = None) -> ChainClient:
        """Another client on this devnet, closed with the devnet (for cross-checks in tests)."""
        client = ChainClient(self.network, wallet, options=_DEVNET_CHAIN_OPTIONS)
        return await self._stack.enter_async_context(client)

    async def _client(self, index: int) -> ChainClient:
        return await self.open_client(Wallet(dev_private_key(index)))

    async def _register(self, provider: DevnetProvider) -> None:
        spec = provider.spec
        registration = ServiceRegistration(
            service_type=spec.service_type,
            url=provider.url,
            model=spec.model,
            verifiability=spec.verifiability,
            input_price=spec.input_price,
            output_price=spec.output_price,
            additional_info="{}",
            tee_signer_address=provider.tee_signer.address,
        )
        await register_service(provider.chain, registration, MIN_PROVIDER_STAKE)
        await acknowledge_signer_by_owner(self.owner, provider.address)

    async def _fund(self, user: ChainClient) -> None:
        await user.add_ledger(self.config.ledger_deposit)
        if self.config.sub_account_funding:
            await asyncio.gather(
                *(user.transfer_fund(p.address, self.config.sub_account_funding) for p in self.providers)
            )
