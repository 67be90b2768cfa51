"""The wallet: the only object that holds a private key. It signs; it never shows the key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from coincurve import PublicKey
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_keys.exceptions import BadSignature
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from router.errors import ConfigError

# r and s, then v as 27/28 (the broker's) or 0/1: the signatures recover_personal hands to libsecp256k1.
_USUAL_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{128}(?:1[bBcC]|0[01])")


class Wallet:
    """Signs transactions and EIP-191 messages for one address.

    ``repr``/``str`` show the address only, so a wallet can appear in logs and tracebacks safely.
    """

    __slots__ = ("_account", "address")

    def __init__(self, private_key: str) -> None:
        try:
            self._account: LocalAccount = Account.from_key(private_key.strip())
        except (ValueError, TypeError):
            # The message must not echo the key, which is exactly what was malformed.
            raise ConfigError("wallet private key is not a valid 32-byte hex key") from None
        self.address: ChecksumAddress = self._account.address

    @classmethod
    def from_file(cls, path: Path) -> Wallet:
        """Read the key from a file holding one hex key (surrounding whitespace ignored)."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read wallet key file {path}: {exc.strerror}") from None
        return cls(text)

    def sign_transaction(self, tx: dict[str, Any]) -> bytes:
        """Sign a complete transaction dict; returns the raw signed bytes."""
        return bytes(self._account.sign_transaction(tx).raw_transaction)

    def sign_personal(self, message: bytes) -> bytes:
        """EIP-191 personal-sign ``message``; returns the 65-byte r‖s‖v signature with v in {27, 28}."""
        return bytes(self._account.sign_message(encode_defunct(primitive=message)).signature)

    def sign_typed_data(
        self, domain: dict[str, Any], types: dict[str, list[dict[str, str]]], message: dict[str, Any]
    ) -> bytes:
        """EIP-712 sign ``message`` of ``types`` under ``domain``; 65 bytes r‖s‖v, v in {27, 28}."""
        signable = encode_typed_data(domain_data=domain, message_types=types, message_data=message)
        return bytes(self._account.sign_message(signable).signature)

    def __repr__(self) -> str:
        return f"Wallet({self.address})"


def recover_personal(text: str, signature: str) -> str | None:
    """The (checksummed) address that EIP-191 personal-signed ``text`` (UTF-8) with ``signature`` (0x +
    65 bytes hex), or None if the signature is malformed."""
    address = recover_personal_address(text, signature)
    return None if address is None else str(to_checksum_address(address))


def recover_personal_address(text: str, signature: str) -> bytes | None:
    """``recover_personal``'s address as its 20 bytes: the verifier compares it as it is, without the
    checksum's second hashing.

    The verifier recovers one signature per response. The usual form (0x, r, s, v of 27/28 or 0/1) goes
    straight to libsecp256k1, at a third of eth_account's cost; any other form, or a signature it cannot
    recover, takes eth_account's path, so what is accepted and what is returned stay eth_account's."""
    if _USUAL_SIGNATURE.fullmatch(signature):
        raw = bytes.fromhex(signature[2:])
        data = text.encode()
        digest = keccak(b"\x19Ethereum Signed Message:\n%d%s" % (len(data), data))
        try:
            public = PublicKey.from_signature_and_message(
                raw[:64] + bytes((raw[64] % 27,)), digest, hasher=None
            )
        except ValueError:
            pass
        else:
            return keccak(public.format(compressed=False)[1:])[-20:]
    try:
        address = Account.recover_message(encode_defunct(text=text), signature=signature)
    except (ValueError, TypeError, IndexError, BadSignature):
        return None
    return bytes.fromhex(address[2:])
