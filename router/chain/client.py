"""ChainClient: typed reads and writes against the 0G LedgerManager and InferenceServing contracts.

The client owns its HTTP session and web3 provider (``async with ChainClient(...)``) and is the only
door to the chain for the rest of the router: web3 types and exceptions never leave ``router/chain``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp
from eth_typing import ChecksumAddress
from web3 import AsyncWeb3
from web3.contract.async_contract import AsyncContract, AsyncContractFunction
from web3.exceptions import BlockNotFound
from web3.types import RPCEndpoint, TxParams

from router.chain.abi import INFERENCE_SERVING_ABI, LEDGER_MANAGER_ABI
from router.chain.faults import RevertDecoder, web3_errors
from router.chain.logs import MoneyLog, MoneyLogDecoder
from router.chain.networks import Network
from router.chain.rpc import FailoverHTTPProvider
from router.chain.sender import TransactionSender
from router.chain.wallet import Wallet
from router.errors import ChainError, ConfigError, ContractRevert
from router.types import Account, Ledger, Refund, Service, TxResult

# getAllServices and friends return at most this many entries per page.
PAGE_SIZE = 50


@dataclass(frozen=True, slots=True)
class ChainOptions:
    """Timeouts and retry settings for one ChainClient."""

    request_timeout: float = 10.0
    attempts: int = 4
    backoff_initial: float = 0.1
    backoff_max: float = 2.0
    receipt_timeout: float = 120.0
    receipt_poll_interval: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError("chain attempts must be at least 1")
        if min(self.request_timeout, self.receipt_timeout, self.receipt_poll_interval) <= 0:
            raise ConfigError("chain timeouts and poll interval must be positive")


class ChainClient:
    """Reads and (with a wallet) writes the 0G contracts of ``network``.

    Use as ``async with ChainClient(network, wallet) as chain:``. Entering checks that the RPC answers with
    the network's chain id; leaving closes every connection.
    """

    def __init__(
        self,
        network: Network,
        wallet: Wallet | None = None,
        *,
        options: ChainOptions | None = None,
        on_rpc_error: Callable[[str, str], None] = lambda endpoint, detail: None,
    ) -> None:
        """``on_rpc_error(endpoint, detail)`` hears each failed JSON-RPC call (``FailoverHTTPProvider``)."""
        if not network.rpc_urls:
            raise ConfigError(f"network {network.name!r} has no RPC URL")
        self.network = network
        self.wallet = wallet
        self._options = options or ChainOptions()
        self._on_rpc_error = on_rpc_error
        self._decoder = RevertDecoder([LEDGER_MANAGER_ABI, INFERENCE_SERVING_ABI])
        self._session: aiohttp.ClientSession | None = None
        self._w3: AsyncWeb3[Any] | None = None
        self._sender: TransactionSender | None = None
        self._contracts: tuple[AsyncContract, AsyncContract] | None = None
        self._service_name: str | None = None
        self._money: MoneyLogDecoder | None = None

    def __repr__(self) -> str:
        who = self.wallet.address if self.wallet else "read-only"
        return f"ChainClient({self.network.name}, chain_id={self.network.chain_id}, {who})"

    async def __aenter__(self) -> Self:
        try:
            await self._open()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def _open(self) -> None:
        opts = self._options
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=opts.request_timeout))
        provider = FailoverHTTPProvider(
            self.network.rpc_urls,
            self._session,
            attempts=opts.attempts,
            backoff_initial=opts.backoff_initial,
            backoff_max=opts.backoff_max,
            on_error=self._on_rpc_error,
        )
        self._w3 = w3 = AsyncWeb3(provider)
        chain_id = await self._verified_chain_id()
        if self.wallet is not None:
            self._sender = TransactionSender(
                w3,
                self.wallet,
                self._decoder,
                chain_id=chain_id,
                receipt_timeout=opts.receipt_timeout,
                receipt_poll_interval=opts.receipt_poll_interval,
            )
        self._contracts = (
            w3.eth.contract(address=w3.to_checksum_address(self.network.ledger), abi=LEDGER_MANAGER_ABI),
            w3.eth.contract(
                address=w3.to_checksum_address(self.network.inference), abi=INFERENCE_SERVING_ABI
            ),
        )

    async def _verified_chain_id(self) -> int:
        with web3_errors(self._decoder, "eth_chainId"):
            chain_id = await self.w3.eth.chain_id
        if chain_id != self.network.chain_id:
            raise ConfigError(
                f"RPC for network {self.network.name!r} reports chain id {chain_id}, "
                f"expected {self.network.chain_id}"
            )
        return chain_id

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session. Safe to call twice."""
        if self._session is not None:
            await self._session.close()
        self._session = None
        self._w3 = None
        self._sender = None
        self._contracts = None
        self._money = None

    # -- plumbing shared by the typed methods and by router.chain.devtools -------------------------

    @property
    def w3(self) -> AsyncWeb3[Any]:
        if self._w3 is None:
            raise ChainError("ChainClient is not open: use `async with ChainClient(...)`")
        return self._w3

    @property
    def ledger(self) -> AsyncContract:
        """The LedgerManager proxy."""
        return self._opened_contracts()[0]

    @property
    def inference(self) -> AsyncContract:
        """The InferenceServing proxy."""
        return self._opened_contracts()[1]

    def _opened_contracts(self) -> tuple[AsyncContract, AsyncContract]:
        if self._contracts is None:
            raise ChainError("ChainClient is not open: use `async with ChainClient(...)`")
        return self._contracts

    @property
    def sender(self) -> TransactionSender:
        if self._sender is None:
            if self.wallet is None:
                raise ConfigError("this ChainClient has no wallet, so it cannot send transactions")
            raise ChainError("ChainClient is not open: use `async with ChainClient(...)`")
        return self._sender

    async def read(
        self,
        label: str,
        fn: AsyncContractFunction,
        *,
        from_address: str | None = None,
        block: int | None = None,
    ) -> Any:
        """``eth_call`` a contract function (as ``from_address``, at ``block`` if given); reverts raise
        ContractRevert."""
        params: TxParams = {"from": self._checksum(from_address)} if from_address else {}
        with web3_errors(self._decoder, label):
            return await fn.call(params, block_identifier="latest" if block is None else block)

    async def transact(self, label: str, fn: AsyncContractFunction, *, value: int = 0) -> TxResult:
        """Send a contract function call as a transaction from this client's wallet."""
        with web3_errors(self._decoder, label):
            params: TxParams = {"from": self.sender.wallet.address, "gas": 0}
            tx = await fn.build_transaction(params)
        receipt = await self.sender.send(label, {"to": tx["to"], "data": tx["data"], "value": value})
        return TxResult(
            tx_hash="0x" + receipt["transactionHash"].hex(),
            block_number=receipt["blockNumber"],
            gas_used=receipt["gasUsed"],
        )

    async def rpc(self, method: str, params: Sequence[Any] = ()) -> Any:
        """A raw JSON-RPC call (node-specific methods such as ``evm_snapshot``)."""
        with web3_errors(self._decoder, method):
            response = await self.w3.provider.make_request(RPCEndpoint(method), list(params))
        if "error" in response:
            raise ChainError(f"{method}: {response['error']}")
        return response["result"]

    # -- reads ------------------------------------------------------------------------------------

    async def block_number(self) -> int:
        with web3_errors(self._decoder, "eth_blockNumber"):
            return int(await self.w3.eth.block_number)

    async def native_balance(self, address: str) -> int:
        """The wallet balance of ``address`` in neuron."""
        with web3_errors(self._decoder, "eth_getBalance"):
            return int(await self.w3.eth.get_balance(self._checksum(address)))

    async def service_name(self) -> str:
        """The inference contract's registered name (``inference-v1.0``), resolved once."""
        if self._service_name is None:
            info = await self.read(
                "getServiceInfo", self.ledger.functions.getServiceInfo(self.network.inference)
            )
            self._service_name = str(info[4])
        return self._service_name

    async def list_services(self) -> list[Service]:
        """Every registered service, all pages, de-duplicated by provider.

        Removals move the last service into the gap, so paging while the set changes can repeat entries;
        the de-duplication keeps the first sighting.
        """
        seen: dict[str, Service] = {}
        offset = 0
        while True:
            page, total = await self.read(
                "getAllServices", self.inference.functions.getAllServices(offset, PAGE_SIZE)
            )
            for raw in page:
                service = _service(raw)
                seen.setdefault(service.provider.lower(), service)
            offset += PAGE_SIZE
            if offset >= total or not page:
                return list(seen.values())

    async def service_changes(self, from_block: int, to_block: int) -> int:
        """How many ``ServiceUpdated``, ``ServiceRemoved`` and ``ProviderTEESignerAcknowledged`` logs the
        inference contract emitted in ``[from_block, to_block]``: any means the registry changed."""
        events = self.inference.events
        topics = [
            events.ServiceUpdated.topic,
            events.ServiceRemoved.topic,
            events.ProviderTEESignerAcknowledged.topic,
        ]
        with web3_errors(self._decoder, "eth_getLogs"):
            logs = await self.w3.eth.get_logs(
                {
                    "address": self.inference.address,
                    "fromBlock": from_block,
                    "toBlock": to_block,
                    "topics": [topics],
                }
            )
        return len(logs)

    async def money_logs(self, user: str, from_block: int, to_block: int) -> list[MoneyLog]:
        """Every settlement, transfer, refund and account log of ``user`` in ``[from_block, to_block]``,
        in chain order."""
        decoder = self._money_decoder()
        with web3_errors(self._decoder, "eth_getLogs"):
            raw_logs = await self.w3.eth.get_logs(decoder.filter(user, from_block, to_block))  # type: ignore[arg-type]
        logs = [log for raw in raw_logs if (log := decoder.decode(raw)) is not None]
        return sorted(logs, key=lambda log: (log.block, log.log_index))

    def _money_decoder(self) -> MoneyLogDecoder:
        if self._money is None:
            self._money = MoneyLogDecoder(self.inference, self.ledger)
        return self._money

    async def block_hash(self, number: int) -> str | None:
        """The hash of block ``number`` as the node sees it now (None if it has no such block)."""
        with web3_errors(self._decoder, "eth_getBlockByNumber"):
            try:
                block = await self.w3.eth.get_block(number)
            except BlockNotFound:
                return None
        value = block.get("hash")
        return None if value is None else "0x" + bytes(value).hex()

    async def accounts_of(self, user: str, *, block: int | None = None) -> list[Account]:
        """Every sub-account of ``user`` (all pages), as of ``block``."""
        accounts: list[Account] = []
        offset = 0
        while True:
            fn = self.inference.functions.getAccountsByUser(self._checksum(user), offset, PAGE_SIZE)
            page, total = await self.read("getAccountsByUser", fn, block=block)
            accounts.extend(_account(raw) for raw in page)
            offset += PAGE_SIZE
            if offset >= total or not page:
                return accounts

    async def get_service(self, provider: str) -> Service | None:
        """The service of ``provider``, or None if it has none."""
        try:
            raw = await self.read("getService", self.inference.functions.getService(self._checksum(provider)))
        except ContractRevert as exc:
            if exc.name == "ServiceNotExist":
                return None
            raise
        return _service(raw)

    async def get_account(self, user: str, provider: str, *, block: int | None = None) -> Account | None:
        """The (user, provider) sub-account (as of ``block``), or None if it does not exist."""
        fn = self.inference.functions.getAccount(self._checksum(user), self._checksum(provider))
        try:
            raw = await self.read("getAccount", fn, block=block)
        except ContractRevert as exc:
            if exc.name == "AccountNotExists":
                return None
            raise
        return _account(raw)

    async def get_ledger(self, user: str, *, block: int | None = None) -> Ledger | None:
        """The user's ledger (as of ``block``), or None if it has none."""
        try:
            fn = self.ledger.functions.getLedger(self._checksum(user))
            raw = await self.read("getLedger", fn, block=block)
        except ContractRevert as exc:
            if exc.name == "LedgerNotExists":
                return None
            raise
        return Ledger(user=raw[0], available_balance=raw[1], total_balance=raw[2], additional_info=raw[3])

    async def get_ledger_providers(self, user: str) -> list[str]:
        """Providers ``user`` has ever funded under the inference service."""
        fn = self.ledger.functions.getLedgerProviders(self._checksum(user), await self.service_name())
        return [str(a) for a in await self.read("getLedgerProviders", fn)]

    async def lock_time(self) -> int:
        """Seconds a refund stays locked before ``retrieve_fund`` can release it."""
        return int(await self.read("lockTime", self.inference.functions.lockTime()))

    # -- writes (need a wallet) -------------------------------------------------------------------

    async def add_ledger(self, amount: int, additional_info: str = "") -> TxResult:
        """Create this wallet's ledger with ``amount`` neuron (at least 3 0G)."""
        fn = self.ledger.functions.addLedger(additional_info)
        return await self.transact("addLedger", fn, value=amount)

    async def deposit_fund(self, amount: int) -> TxResult:
        """Add ``amount`` neuron to this wallet's ledger."""
        return await self.transact("depositFund", self.ledger.functions.depositFund(), value=amount)

    async def transfer_fund(self, provider: str, amount: int) -> TxResult:
        """Move ``amount`` from the ledger into the provider sub-account (creating and acknowledging it)."""
        fn = self.ledger.functions.transferFund(self._checksum(provider), await self.service_name(), amount)
        return await self.transact("transferFund", fn)

    async def acknowledge_tee_signer(self, provider: str, acknowledged: bool = True) -> TxResult:
        """Set this wallet's acknowledgement of the provider's TEE signer."""
        fn = self.inference.functions.acknowledgeTEESigner(self._checksum(provider), acknowledged)
        return await self.transact("acknowledgeTEESigner", fn)

    async def retrieve_fund(self, providers: Sequence[str]) -> TxResult:
        """Release matured refunds and queue a refund of everything left (at most 20 providers)."""
        fn = self.ledger.functions.retrieveFund(
            [self._checksum(p) for p in providers], await self.service_name()
        )
        return await self.transact("retrieveFund", fn)

    async def refund(self, amount: int) -> TxResult:
        """Withdraw ``amount`` of the ledger's available balance to the wallet."""
        return await self.transact("refund", self.ledger.functions.refund(amount))

    async def revoke_all_tokens(self, provider: str) -> TxResult:
        """Bump the sub-account's token generation: every session token minted so far stops working."""
        fn = self.inference.functions.revokeAllTokens(self._checksum(provider))
        return await self.transact("revokeAllTokens", fn)

    async def revoke_token(self, provider: str, token_id: int) -> TxResult:
        """Revoke persistent token ``token_id`` (0-254) for ``provider``."""
        fn = self.inference.functions.revokeToken(self._checksum(provider), token_id)
        return await self.transact("revokeToken", fn)

    def _checksum(self, address: str) -> ChecksumAddress:
        if not self.w3.is_address(address):
            raise ChainError(f"not an address: {address!r}")
        return self.w3.to_checksum_address(address)


def _service(raw: Sequence[Any]) -> Service:
    return Service(
        provider=raw[0],
        service_type=raw[1],
        url=raw[2],
        input_price=raw[3],
        output_price=raw[4],
        updated_at=raw[5],
        model=raw[6],
        verifiability=raw[7],
        additional_info=raw[8],
        tee_signer_address=raw[9],
        tee_signer_acknowledged=raw[10],
    )


def _account(raw: Sequence[Any]) -> Account:
    valid = raw[8]
    return Account(
        user=raw[0],
        provider=raw[1],
        nonce=raw[2],
        balance=raw[3],
        pending_refund=raw[4],
        refunds=tuple(Refund(*r) for r in raw[5][:valid]),
        additional_info=raw[6],
        acknowledged=raw[7],
        generation=raw[9],
        revoked_bitmap=raw[10],
    )
