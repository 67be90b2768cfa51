"""Owner, provider and test-chain operations that only the devnet needs.

They live here because ``router/chain`` is the only package that speaks web3. The deploy order follows
devnet.md §4: from anvil account 0 at nonce 0, each contract behind an OpenZeppelin UpgradeableBeacon and
BeaconProxy, which lands the proxies on the addresses the official SDKs hard-code for chain 31337.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from eth_abi.abi import encode as abi_encode

from router.chain.client import ChainClient
from router.chain.wallet import Wallet
from router.errors import DevnetError

INFERENCE_SERVICE_TYPE = "inference"
INFERENCE_SERVICE_VERSION = "v1.0"

# EIP-712 layout the deployed InferenceServing verifies (protocol.md §6.3). The struct's field order is
# not the TEESettlementData tuple's.
_SETTLEMENT_DOMAIN = {"name": "0G Inference Serving", "version": "1"}
_SETTLEMENT_TYPES = {
    "TEESettlement": [
        {"name": "requestsHash", "type": "bytes32"},
        {"name": "nonce", "type": "uint256"},
        {"name": "provider", "type": "address"},
        {"name": "user", "type": "address"},
        {"name": "totalFee", "type": "uint256"},
    ]
}


class SettlementStatus(IntEnum):
    """Per-item outcome of ``settleFeesWithTEE`` (failures do not revert the transaction)."""

    SUCCESS = 0
    PARTIAL = 1
    PROVIDER_MISMATCH = 2
    NO_TEE_SIGNER = 3
    INVALID_NONCE = 4
    INVALID_SIGNATURE = 5


@dataclass(frozen=True, slots=True)
class Settlement:
    """One user's fees to settle. ``nonce`` must exceed the account's stored nonce."""

    user: str
    total_fee: int
    nonce: int
    requests_hash: bytes = bytes(32)


@dataclass(frozen=True, slots=True)
class ContractArtifacts:
    """Creation bytecode of the 0G implementations and the OpenZeppelin proxies."""

    ledger_bytecode: bytes
    inference_bytecode: bytes
    beacon_bytecode: bytes
    beacon_proxy_bytecode: bytes


@dataclass(frozen=True, slots=True)
class ServiceRegistration:
    """What a provider registers with ``addOrUpdateService`` (the ServiceParams tuple)."""

    service_type: str
    url: str
    model: str
    verifiability: str
    input_price: int
    output_price: int
    additional_info: str
    tee_signer_address: str

    def as_params(self) -> tuple[Any, ...]:
        return (
            self.service_type,
            self.url,
            self.model,
            self.verifiability,
            self.input_price,
            self.output_price,
            self.additional_info,
            self.tee_signer_address,
        )


async def deploy_contracts(owner: ChainClient, artifacts: ContractArtifacts, lock_time: int) -> None:
    """Deploy LedgerManager and InferenceServing behind beacon proxies and wire them together.

    ``owner`` must be anvil account 0 with nonce 0, so the proxies land on ``owner.network``'s addresses;
    anything else raises DevnetError rather than leaving contracts where no SDK looks.
    """
    sender = owner.sender
    if await owner.w3.eth.get_transaction_count(sender.wallet.address) != 0:
        raise DevnetError("the deployer must have nonce 0 to land on the SDKs' devnet addresses")
    ledger = await _deploy_behind_beacon(owner, "LedgerManager", artifacts.ledger_bytecode, artifacts)
    await owner.transact("initialize", owner.ledger.functions.initialize(sender.wallet.address))
    inference = await _deploy_behind_beacon(
        owner, "InferenceServing", artifacts.inference_bytecode, artifacts
    )
    await owner.transact(
        "initialize",
        owner.inference.functions.initialize(lock_time, ledger, sender.wallet.address),
    )
    register = owner.ledger.functions.registerService(
        INFERENCE_SERVICE_TYPE, INFERENCE_SERVICE_VERSION, inference, "zg-router devnet inference"
    )
    await owner.transact("registerService", register)
    recommend = owner.ledger.functions.setRecommendedService(
        INFERENCE_SERVICE_TYPE, INFERENCE_SERVICE_VERSION
    )
    await owner.transact("setRecommendedService", recommend)


async def _deploy_behind_beacon(
    owner: ChainClient, name: str, bytecode: bytes, artifacts: ContractArtifacts
) -> str:
    sender = owner.sender
    implementation = await sender.deploy(f"deploy {name}", bytecode)
    beacon = await sender.deploy(
        f"deploy {name} beacon",
        artifacts.beacon_bytecode + abi_encode(["address"], [implementation]),
    )
    proxy = await sender.deploy(
        f"deploy {name} proxy",
        artifacts.beacon_proxy_bytecode + abi_encode(["address", "bytes"], [beacon, b""]),
    )
    expected = owner.network.ledger if name == "LedgerManager" else owner.network.inference
    if proxy.lower() != expected.lower():
        raise DevnetError(f"{name} proxy landed at {proxy}, expected {expected}")
    return proxy


async def register_service(provider: ChainClient, service: ServiceRegistration, stake: int) -> None:
    """Register (stake) or update ``provider``'s service; ``stake`` must be 0 on update."""
    fn = provider.inference.functions.addOrUpdateService(service.as_params())
    await provider.transact("addOrUpdateService", fn, value=stake)


async def acknowledge_signer_by_owner(owner: ChainClient, provider: str) -> None:
    """The contract owner acknowledges ``provider``'s TEE signer (needed to list and to settle)."""
    fn = owner.inference.functions.acknowledgeTEESignerByOwner(provider)
    await owner.transact("acknowledgeTEESignerByOwner", fn)


async def snapshot(chain: ChainClient) -> str:
    """``evm_snapshot``: an id that ``revert`` accepts once."""
    return str(await chain.rpc("evm_snapshot"))


async def revert(chain: ChainClient, snapshot_id: str) -> None:
    """``evm_revert`` to ``snapshot_id``; raises if the id is unknown or already used."""
    if not await chain.rpc("evm_revert", [snapshot_id]):
        raise DevnetError(f"evm_revert({snapshot_id}) failed: unknown or already used snapshot")


async def increase_time(chain: ChainClient, seconds: int) -> None:
    """Move block time forward by ``seconds`` and mine a block at the new time."""
    await chain.rpc("evm_increaseTime", [seconds])
    await chain.rpc("evm_mine")


async def set_balance(chain: ChainClient, address: str, amount: int) -> None:
    """Give ``address`` exactly ``amount`` neuron of native coin (anvil only)."""
    await chain.rpc("anvil_setBalance", [address, hex(amount)])


async def settle_fees(
    provider: ChainClient, tee_signer: Wallet, settlements: Sequence[Settlement]
) -> list[SettlementStatus]:
    """Sign ``settlements`` with the TEE key (EIP-712) and submit them from ``provider``'s wallet.

    Returns each item's status, read by a dry run from the provider address just before the send: the
    transaction itself succeeds whatever the items' outcomes, which only its events record.
    """
    address = provider.sender.wallet.address
    domain = {
        **_SETTLEMENT_DOMAIN,
        "chainId": provider.network.chain_id,
        "verifyingContract": provider.network.inference,
    }
    items = []
    for item in settlements:
        user = provider.w3.to_checksum_address(item.user)
        message = {
            "requestsHash": item.requests_hash,
            "nonce": item.nonce,
            "provider": address,
            "user": user,
            "totalFee": item.total_fee,
        }
        signature = tee_signer.sign_typed_data(domain, _SETTLEMENT_TYPES, message)
        items.append((user, address, item.total_fee, item.requests_hash, item.nonce, signature))
    fn = provider.inference.functions.settleFeesWithTEE(items)
    statuses = await provider.read("settleFeesWithTEE", fn, from_address=address)
    await provider.transact("settleFeesWithTEE", fn)
    return [SettlementStatus(s) for s in statuses]
