"""Frozen value types shared across layers. No I/O here.

Amounts are integers in neuron (the chain's wei; 1 0G = 10**18 neuron).
"""

from __future__ import annotations

from dataclasses import dataclass

NEURON_PER_0G = 10**18


@dataclass(frozen=True, slots=True)
class Service:
    """One provider's on-chain service record (InferenceServing ``Service`` struct)."""

    provider: str
    service_type: str
    url: str
    input_price: int
    output_price: int
    updated_at: int
    model: str
    verifiability: str
    additional_info: str
    tee_signer_address: str
    tee_signer_acknowledged: bool


@dataclass(frozen=True, slots=True)
class Refund:
    """A queued refund of a sub-account; only the first ``valid_refunds_length`` are live."""

    index: int
    amount: int
    created_at: int
    processed: bool


@dataclass(frozen=True, slots=True)
class Account:
    """A (user, provider) sub-account in InferenceServing.

    ``refunds`` holds only the live entries: the contract keeps stale ones past ``validRefundsLength``
    and we drop them at decoding time.
    """

    user: str
    provider: str
    nonce: int
    balance: int
    pending_refund: int
    refunds: tuple[Refund, ...]
    additional_info: str
    acknowledged: bool
    generation: int
    revoked_bitmap: int

    @property
    def locked(self) -> int:
        """What the provider counts on: balance minus queued refunds."""
        return self.balance - self.pending_refund

    def is_token_revoked(self, token_id: int) -> bool:
        """True if persistent token ``token_id`` (0-254) is revoked in the bitmap."""
        return bool(self.revoked_bitmap >> token_id & 1)


@dataclass(frozen=True, slots=True)
class TxResult:
    """A mined, successful transaction. (Failed ones raise: they never become a TxResult.)"""

    tx_hash: str
    block_number: int
    gas_used: int


@dataclass(frozen=True, slots=True)
class Ledger:
    """A user's main ledger in LedgerManager."""

    user: str
    available_balance: int
    total_balance: int
    additional_info: str
