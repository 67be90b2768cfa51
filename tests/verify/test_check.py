"""The verification verdict, the trust record and the signer a service names: pure, with real signatures."""

from __future__ import annotations

import json

import pytest

from router.chain.wallet import Wallet, recover_personal
from router.discovery import tee_signer
from router.pool.trust import Outcome, Trust, TrustState
from router.types import Service
from router.verify.check import judge, sha256_hex

TEE = Wallet("0x" + "22" * 32)
OTHER = Wallet("0x" + "33" * 32)
REQUEST = b'{"model": "m", "messages": []}'
REPLY = b'{"choices": [{"message": {"content": "hi"}}]}'


def record(text: str, signer: Wallet = TEE, **extra: object) -> dict[str, object]:
    signature = "0x" + signer.sign_personal(text.encode()).hex()
    return {"text": text, "signature": signature, "signing_address": TEE.address, **extra}


def honest(request: bytes = REQUEST, reply: bytes = REPLY) -> dict[str, object]:
    return record(f"{sha256_hex(request)}:{sha256_hex(reply)}")


class TestJudge:
    def test_an_honest_signature_over_the_relayed_bytes_verifies(self) -> None:
        finding = judge(honest(), signer=TEE.address, request=REQUEST, response_part=sha256_hex(REPLY))
        assert finding.outcome is Outcome.VERIFIED
        assert finding.request_matched is True

    def test_the_signer_is_compared_without_case(self) -> None:
        finding = judge(
            honest(), signer=TEE.address.lower(), request=REQUEST, response_part=sha256_hex(REPLY)
        )
        assert finding.outcome is Outcome.VERIFIED

    def test_a_rewritten_request_is_reported_but_does_not_fail(self) -> None:
        """Brokers hash the body as they prepared it (protocol.md §5.3): only the response half decides."""
        signed = honest(request=b'{"model": "m", "stream_options": {"include_usage": true}}')
        finding = judge(signed, signer=TEE.address, request=REQUEST, response_part=sha256_hex(REPLY))
        assert finding.outcome is Outcome.VERIFIED
        assert finding.request_matched is False

    def test_another_key_fails_even_when_the_record_claims_the_signer(self) -> None:
        signed = record(f"{sha256_hex(REQUEST)}:{sha256_hex(REPLY)}", signer=OTHER)
        finding = judge(signed, signer=TEE.address, request=REQUEST, response_part=sha256_hex(REPLY))
        assert finding.outcome is Outcome.FAILED
        assert OTHER.address in finding.detail

    def test_a_reply_other_than_the_signed_one_fails(self) -> None:
        altered = REPLY.replace(b"hi", b"[altered] hi")
        finding = judge(honest(), signer=TEE.address, request=REQUEST, response_part=sha256_hex(altered))
        assert finding.outcome is Outcome.FAILED
        assert "other bytes" in finding.detail

    @pytest.mark.parametrize("signature", ["0x12", "", "0x" + "00" * 65, "not hex"])
    def test_a_malformed_signature_fails(self, signature: str) -> None:
        signed = {"text": f"{sha256_hex(REQUEST)}:{sha256_hex(REPLY)}", "signature": signature}
        finding = judge(signed, signer=TEE.address, request=REQUEST, response_part=sha256_hex(REPLY))
        assert finding.outcome is Outcome.FAILED

    def test_text_without_a_response_hash_fails(self) -> None:
        finding = judge(record("just-one-field"), signer=TEE.address, request=REQUEST, response_part="x")
        assert finding.outcome is Outcome.FAILED

    @pytest.mark.parametrize("lookup", [None, [], "text", {"text": "a:b"}, {"signature": "0x00"}])
    def test_a_record_without_text_and_signature_is_unverifiable_never_verified(self, lookup: object) -> None:
        finding = judge(lookup, signer=TEE.address, request=REQUEST, response_part=sha256_hex(REPLY))
        assert finding.outcome is Outcome.UNVERIFIABLE

    def test_tee_tls_extra_fields_and_image_hash_lists_check_the_second_field(self) -> None:
        pictures = f"{sha256_hex(b'img0')},{sha256_hex(b'img1')}"
        text = f"{sha256_hex(REQUEST)}:{pictures}:centralized:openai:abcd"
        finding = judge(record(text), signer=TEE.address, request=REQUEST, response_part=pictures)
        assert finding.outcome is Outcome.VERIFIED


def test_recover_personal_gives_the_signer_or_none() -> None:
    signature = "0x" + TEE.sign_personal(b"hello").hex()
    assert recover_personal("hello", signature) == TEE.address
    assert recover_personal("hello!", signature) != TEE.address
    assert recover_personal("hello", "0x" + "ff" * 65) is None


class TestTrust:
    def test_verdicts_move_the_state_and_unverifiable_leaves_it(self) -> None:
        trust = Trust(signer=TEE.address)
        trust.record(Outcome.UNVERIFIABLE, 1.0)
        assert trust.state is TrustState.UNVERIFIED
        trust.record(Outcome.VERIFIED, 2.0)
        trust.record(Outcome.UNVERIFIABLE, 3.0)
        assert trust.state is TrustState.VERIFIED
        trust.record(Outcome.FAILED, 4.0, "signed by someone else")
        assert trust.state is TrustState.FAILED
        assert (trust.verified, trust.failed, trust.unverifiable) == (1, 1, 2)
        assert trust.last_checked == 4.0
        assert trust.as_dict()["last_failure"] == "signed by someone else"

    def test_a_new_signer_starts_over_and_the_same_one_does_not(self) -> None:
        trust = Trust(signer=TEE.address)
        trust.record(Outcome.FAILED, 1.0, "bad")
        assert not trust.new_signer(TEE.address)
        assert trust.state is TrustState.FAILED
        assert trust.new_signer(OTHER.address)
        assert trust == Trust(signer=OTHER.address)


def service(**changes: object) -> Service:
    fields: dict[str, object] = {
        "provider": OTHER.address,
        "service_type": "chatbot",
        "url": "http://127.0.0.1:1",
        "input_price": 1,
        "output_price": 1,
        "updated_at": 0,
        "model": "m",
        "verifiability": "TeeML",
        "additional_info": "",
        "tee_signer_address": TEE.address,
        "tee_signer_acknowledged": True,
    }
    fields.update(changes)
    return Service(**fields)  # type: ignore[arg-type]


class TestTeeSigner:
    def test_the_acknowledged_signer(self) -> None:
        assert tee_signer(service(), {}) == TEE.address

    def test_none_when_not_acknowledged_or_zero(self) -> None:
        assert tee_signer(service(tee_signer_acknowledged=False), {}) is None
        assert tee_signer(service(tee_signer_address="0x" + "0" * 40), {}) is None

    def test_a_separated_decentralized_provider_signs_with_the_model_tee(self) -> None:
        extra = json.loads(json.dumps({"TargetSeparated": True, "TargetTeeAddress": OTHER.address}))
        assert tee_signer(service(), extra) == OTHER.address
        assert tee_signer(service(), {**extra, "ProviderType": "centralized"}) == TEE.address
        assert tee_signer(service(), {"TargetSeparated": True}) is None
