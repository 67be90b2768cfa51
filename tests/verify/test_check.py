"""The verification verdict, the trust record and the signer a service names: pure, with real signatures."""

from __future__ import annotations

import base64
import json

import pytest

from router.chain.wallet import Wallet, recover_personal
from router.discovery import tee_signer
from router.pool.trust import Outcome, Trust, TrustState
from router.types import Service
from router.verify.check import judge, sha256_hex, signed_response_part

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


PICTURES = (b"\x89PNG picture zero", b"\x89PNG picture one")


def image_reply(*pictures: bytes) -> bytes:
    data = [{"b64_json": base64.b64encode(p).decode()} for p in pictures]
    return json.dumps({"created": 1, "data": data}).encode()


class TestSignedResponsePart:
    def test_a_reply_in_parts_hashes_as_its_concatenation(self) -> None:
        whole = sha256_hex(REPLY)
        assert signed_response_part([REPLY]) == whole
        assert signed_response_part([REPLY[:5], REPLY[5:20], b"", REPLY[20:]]) == whole
        assert signed_response_part([REPLY[:5], REPLY[6:]]) != whole
        assert signed_response_part([]) == sha256_hex(b"")

    def test_an_image_reply_lists_one_hash_per_decoded_picture_in_order(self) -> None:
        body = image_reply(*PICTURES)
        expected = f"{sha256_hex(PICTURES[0])},{sha256_hex(PICTURES[1])}"
        assert signed_response_part([body], images=True) == expected
        assert signed_response_part([body[:10], body[10:]], images=True) == expected
        assert signed_response_part([image_reply(PICTURES[0])], images=True) == sha256_hex(PICTURES[0])

    def test_without_images_an_image_body_is_hashed_whole(self) -> None:
        body = image_reply(*PICTURES)
        assert signed_response_part([body]) == sha256_hex(body)

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(b"not json", id="not-json"),
            pytest.param(b"\xff\xfe{}", id="not-utf8"),
            pytest.param(b"[]", id="a-list"),
            pytest.param(b"42", id="a-number"),
            pytest.param(b'{"created": 1}', id="no-data"),
            pytest.param(b'{"data": null}', id="null-data"),
            pytest.param(b'{"data": []}', id="empty-data"),
            pytest.param(b'{"data": "aGk="}', id="data-a-string"),
            pytest.param(b'{"data": [{"url": "https://img.example/0.png"}]}', id="url"),
            pytest.param(b'{"data": [{"b64_json": "!!not base64!!"}]}', id="bad-base64"),
            pytest.param(b'{"data": [{"b64_json": "aGk"}]}', id="bad-padding"),
            pytest.param(b'{"data": [{"b64_json": "aG*k="}]}', id="a-stray-character"),
            pytest.param(b'{"data": [{"b64_json": 5}]}', id="b64-a-number"),
            pytest.param(b'{"data": ["aGk="]}', id="item-a-string"),
        ],
    )
    def test_an_image_reply_it_cannot_read_gives_nothing(self, body: bytes) -> None:
        assert signed_response_part([body], images=True) == ""

    def test_one_unreadable_picture_spoils_the_whole_list(self) -> None:
        good = {"b64_json": base64.b64encode(PICTURES[0]).decode()}
        body = json.dumps({"data": [good, {"url": "https://img.example/1.png"}]}).encode()
        assert signed_response_part([body], images=True) == ""


class TestJudgeImages:
    SIGNED = f"{sha256_hex(REQUEST)}:{sha256_hex(PICTURES[0])},{sha256_hex(PICTURES[1])}"

    def test_an_image_reply_verifies_against_its_picture_hashes(self) -> None:
        part = signed_response_part([image_reply(*PICTURES)], images=True)
        finding = judge(record(self.SIGNED), signer=TEE.address, request=REQUEST, response_part=part)
        assert finding.outcome is Outcome.VERIFIED
        assert finding.request_matched is True

    def test_the_json_around_the_pictures_is_not_signed(self) -> None:
        data = [{"b64_json": base64.b64encode(p).decode(), "revised_prompt": "x"} for p in PICTURES]
        body = json.dumps({"created": 999, "data": data}, indent=2).encode()
        part = signed_response_part([body], images=True)
        finding = judge(record(self.SIGNED), signer=TEE.address, request=REQUEST, response_part=part)
        assert finding.outcome is Outcome.VERIFIED

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(image_reply(PICTURES[1], PICTURES[0]), id="swapped"),
            pytest.param(image_reply(PICTURES[0]), id="one-dropped"),
            pytest.param(image_reply(PICTURES[0], b"another picture"), id="replaced"),
        ],
    )
    def test_pictures_other_than_the_signed_ones_fail(self, body: bytes) -> None:
        part = signed_response_part([body], images=True)
        finding = judge(record(self.SIGNED), signer=TEE.address, request=REQUEST, response_part=part)
        assert finding.outcome is Outcome.FAILED
        assert "other bytes" in finding.detail

    @pytest.mark.parametrize("signed", ["", ":"], ids=["pictures", "no-pictures"])
    def test_an_unreadable_image_reply_is_unverifiable_even_against_an_empty_signed_list(
        self, signed: str
    ) -> None:
        """Pictures as URLs cannot be hashed as the broker does: never verified, not even against a
        record signed over no pictures at all, and not failed (the provider may be honest)."""
        text = f"{sha256_hex(REQUEST)}:" if signed == ":" else self.SIGNED
        part = signed_response_part([b'{"data": [{"url": "https://img.example/0.png"}]}'], images=True)
        finding = judge(record(text), signer=TEE.address, request=REQUEST, response_part=part)
        assert finding.outcome is Outcome.UNVERIFIABLE
        assert "no b64_json pictures" in finding.detail

    def test_the_hash_of_the_whole_image_body_is_not_what_is_signed(self) -> None:
        part = signed_response_part([image_reply(*PICTURES)])
        finding = judge(record(self.SIGNED), signer=TEE.address, request=REQUEST, response_part=part)
        assert finding.outcome is Outcome.FAILED
