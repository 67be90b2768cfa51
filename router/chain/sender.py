"""Sends transactions for one wallet: serialised nonces, estimated gas, awaited receipts.

One sender cannot fire concurrent transactions with a pending-nonce lookup each (devnet.md §10: 9 of 10
failed with "nonce too low"), so nonce assignment and submission happen under a lock with a local counter.
Gas estimation (which also surfaces reverts before anything is signed) and receipt waiting happen outside
the lock, so concurrent sends pipeline.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError
from web3.types import TxParams, TxReceipt

from router.chain.faults import RevertDecoder, web3_errors
from router.chain.wallet import Wallet
from router.errors import TransactionFailed

# Headroom over the estimate: concurrent sends are estimated against a state that earlier ones change.
_GAS_MARGIN_PERCENT = 125
_NONCE_ERRORS = ("nonce too low", "nonce too high", "invalid nonce", "already known")


class TransactionSender:
    """The one place that signs and submits transactions for ``wallet``."""

    __slots__ = (
        "_chain_id",
        "_decoder",
        "_lock",
        "_next_nonce",
        "_poll",
        "_timeout",
        "_w3",
        "wallet",
    )

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        wallet: Wallet,
        decoder: RevertDecoder,
        *,
        chain_id: int,
        receipt_timeout: float,
        receipt_poll_interval: float,
    ) -> None:
        self._w3 = w3
        self.wallet = wallet
        self._decoder = decoder
        self._chain_id = chain_id
        self._timeout = receipt_timeout
        self._poll = receipt_poll_interval
        self._lock = asyncio.Lock()
        self._next_nonce: int | None = None

    def forget_nonce(self) -> None:
        """Re-read the nonce from the chain before the next send (after a devnet revert, say)."""
        self._next_nonce = None

    async def send(self, label: str, tx: dict[str, Any]) -> TxReceipt:
        """Estimate, sign, submit ``tx`` and wait for its receipt.

        Raises ``ContractRevert`` if the estimate or the mined transaction reverts, ``TransactionFailed`` if
        it was not mined in time or failed without a decodable reason.
        """
        full: dict[str, Any] = {**tx, "from": self.wallet.address, "chainId": self._chain_id}
        with web3_errors(self._decoder, label):
            gas = await self._w3.eth.estimate_gas(cast(TxParams, full))
            full["gas"] = gas * _GAS_MARGIN_PERCENT // 100
            full.update(await self._fees())
            tx_hash = await self._submit(full)
            receipt = await self._w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self._timeout, poll_latency=self._poll
            )
            if receipt["status"] != 1:
                # Replay the call at its block to learn why; this raises the decoded revert.
                await self._w3.eth.call(cast(TxParams, full), block_identifier=receipt["blockNumber"])
        if receipt["status"] != 1:
            raise TransactionFailed(f"{label}: transaction {tx_hash.hex()} failed with no reason")
        return receipt

    async def deploy(self, label: str, data: bytes, value: int = 0) -> str:
        """Create a contract from ``data`` (creation code + encoded constructor args); its address."""
        receipt = await self.send(label, {"data": data, "value": value})
        address = receipt["contractAddress"]
        if address is None:
            raise TransactionFailed(f"{label}: receipt has no contract address")
        return str(address)

    async def _fees(self) -> dict[str, int]:
        block = await self._w3.eth.get_block("latest")
        base_fee = block.get("baseFeePerGas")
        if base_fee is None:
            return {"gasPrice": await self._w3.eth.gas_price}
        tip = await self._w3.eth.max_priority_fee
        return {"maxFeePerGas": 2 * base_fee + tip, "maxPriorityFeePerGas": tip}

    async def _submit(self, tx: dict[str, Any]) -> Any:
        async with self._lock:
            try:
                return await self._sign_and_send(tx)
            except Web3RPCError as exc:
                # Someone else used this wallet, or the chain was reverted: resync and try once more.
                self._next_nonce = None
                if not any(s in exc.message.lower() for s in _NONCE_ERRORS):
                    raise
            return await self._sign_and_send(tx)

    async def _sign_and_send(self, tx: dict[str, Any]) -> Any:
        """Under the lock: assign the next nonce, sign, send; the counter moves only on success."""
        if self._next_nonce is None:
            self._next_nonce = await self._w3.eth.get_transaction_count(self.wallet.address, "pending")
        tx["nonce"] = self._next_nonce
        try:
            tx_hash = await self._w3.eth.send_raw_transaction(self.wallet.sign_transaction(tx))
        except Web3RPCError:
            self._next_nonce = None
            raise
        self._next_nonce += 1
        return tx_hash
