"""recover_personal's libsecp256k1 path against eth_account's, on every form a signature can take."""

from __future__ import annotations

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keys.exceptions import BadSignature
from hypothesis import given, settings
from hypothesis import strategies as st

from router.chain.wallet import recover_personal

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
KEYS = [Account.from_key(bytes([index]) * 32) for index in range(1, 4)]


def reference(text: str, signature: str) -> str | None:
    """What eth_account alone answers, with its exceptions mapped as recover_personal maps them."""
    try:
        return str(Account.recover_message(encode_defunct(text=text), signature=signature))
    except (ValueError, TypeError, IndexError, BadSignature):
        return None
    except Exception as exc:  # eth_keys' ValidationError for r or s out of range
        return type(exc).__name__


def outcome(text: str, signature: str) -> str | None:
    try:
        return recover_personal(text, signature)
    except Exception as exc:
        return type(exc).__name__


def variants(text: str, key_index: int) -> list[str]:
    """The broker's form and every rewrite of it: v as 0/1, upper case, no prefix, high s, bad r."""
    signed = KEYS[key_index].sign_message(encode_defunct(text=text))
    r, s, v = signed.r, signed.s, signed.v
    body = f"{r:064x}{s:064x}"
    high = f"{r:064x}{N - s:064x}"
    return [
        f"0x{body}{v:02x}",
        f"0x{body}{v - 27:02x}",
        f"0x{body.upper()}{v:02X}",
        f"{body}{v:02x}",
        f"0x{high}{55 - v:02x}",
        f"0x{high}{v:02x}",
        f"0x{'00' * 32}{s:064x}{v:02x}",
        f"0x{N:064x}{s:064x}{v:02x}",
        f"0x{body}{v + 8:02x}",
        f"0x{body}",
        "0x" + "ff" * 65,
    ]


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80), st.integers(0, len(KEYS) - 1))
def test_recovery_matches_eth_account_for_every_form(text: str, key_index: int) -> None:
    for signature in variants(text, key_index):
        assert outcome(text, signature) == reference(text, signature), signature


def test_the_brokers_form_recovers_the_signer() -> None:
    text = "0" * 64 + ":" + "f" * 64
    signature = variants(text, 0)[0]
    assert recover_personal(text, signature) == KEYS[0].address
    assert recover_personal(text + "!", signature) != KEYS[0].address
