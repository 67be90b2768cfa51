"""Translate web3 failures into ``router.errors`` at the edge of ``router/chain``.

Reverts arrive as ``ContractLogicError`` whose ``data`` is the raw ``0x<selector><args>``; we decode it
against the custom errors of our ABIs, plus Solidity's ``Error(string)`` and ``Panic(uint256)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception, Web3RPCError

from router.chain.abi import AbiEntry
from router.errors import ChainError, ContractRevert, RouterError, TransactionFailed


def _signature(name: str, types: list[str]) -> str:
    return f"{name}({','.join(types)})"


class RevertDecoder:
    """Maps revert data to a ``ContractRevert`` naming the error and its arguments."""

    __slots__ = ("_by_selector",)

    def __init__(self, abis: Iterable[list[AbiEntry]]) -> None:
        self._by_selector: dict[bytes, tuple[str, list[str]]] = {
            keccak(text=_signature("Error", ["string"]))[:4]: ("Error", ["string"]),
            keccak(text=_signature("Panic", ["uint256"]))[:4]: ("Panic", ["uint256"]),
        }
        for abi in abis:
            for entry in abi:
                if entry["type"] == "error":
                    types = [i["type"] for i in entry["inputs"]]
                    selector = keccak(text=_signature(entry["name"], types))[:4]
                    self._by_selector[selector] = (entry["name"], types)

    def decode(self, function: str, data: str | None) -> ContractRevert:
        """The revert of ``function`` with revert data ``data`` (hex, may be empty or None)."""
        raw = bytes.fromhex(data[2:] if data and data.startswith("0x") else (data or ""))
        known = self._by_selector.get(raw[:4])
        if known is None:
            return ContractRevert(function, "Unknown", [], raw="0x" + raw.hex())
        name, types = known
        try:
            decoded = abi_decode(types, raw[4:])
        except DecodingError:
            return ContractRevert(function, name, [], raw="0x" + raw.hex())
        # eth-abi decodes addresses in lower case; everywhere else we show them checksummed.
        args = [to_checksum_address(a) if t == "address" else a for t, a in zip(types, decoded, strict=True)]
        return ContractRevert(function, name, args, raw="0x" + raw.hex())


@contextmanager
def web3_errors(decoder: RevertDecoder, function: str) -> Iterator[None]:
    """Run a block of web3 calls for ``function``; web3 exceptions leave it as ``router.errors``."""
    try:
        yield
    except RouterError:
        raise
    except ContractLogicError as exc:
        data = exc.data if isinstance(exc.data, str) else None
        revert = decoder.decode(function, data)
        if revert.name == "Unknown" and not data and exc.message:
            raise ChainError(f"{function} reverted: {exc.message}") from None
        raise revert from None
    except TimeExhausted as exc:
        raise TransactionFailed(f"{function}: no receipt in time ({exc})") from None
    except Web3RPCError as exc:
        raise ChainError(f"{function}: RPC error: {exc.message}") from None
    except Web3Exception as exc:
        raise ChainError(f"{function}: {type(exc).__name__}: {exc}") from None
