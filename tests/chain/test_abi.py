"""Our hand-written ABI fragments against the ABI that ships in the official SDK package."""

from __future__ import annotations

from typing import Any

import pytest
from eth_utils.crypto import keccak

from router.chain.abi import INFERENCE_SERVING_ABI, LEDGER_MANAGER_ABI, AbiEntry
from router.devnet.node_tools import NodeModules, sdk_contracts


def _without_internal_types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_internal_types(v) for k, v in value.items() if k != "internalType"}
    if isinstance(value, list):
        return [_without_internal_types(v) for v in value]
    return value


@pytest.mark.parametrize(
    ("contract", "fragments"),
    [("LedgerManager", LEDGER_MANAGER_ABI), ("InferenceServing", INFERENCE_SERVING_ABI)],
)
def test_every_fragment_matches_the_sdk_abi(
    node_modules: NodeModules, contract: str, fragments: list[AbiEntry]
) -> None:
    """Each fragment equals the SDK's entry of the same kind and name: names, types, order, indexing."""
    shipped = sdk_contracts(node_modules)[contract]["abi"]
    assert isinstance(shipped, list)
    by_key = {(e["type"], e.get("name")): _without_internal_types(e) for e in shipped}
    for fragment in fragments:
        assert by_key.get((fragment["type"], fragment["name"])) == fragment, fragment["name"]


@pytest.mark.parametrize(
    ("contract", "fragments"),
    [("LedgerManager", LEDGER_MANAGER_ABI), ("InferenceServing", INFERENCE_SERVING_ABI)],
)
def test_every_custom_error_is_decodable(
    node_modules: NodeModules, contract: str, fragments: list[AbiEntry]
) -> None:
    """All custom errors the deployed contracts can raise are in our ABI, so no revert decodes as Unknown."""
    shipped = sdk_contracts(node_modules)[contract]["abi"]
    assert isinstance(shipped, list)
    shipped_errors = {e["name"] for e in shipped if e["type"] == "error"}
    ours = {f["name"] for f in fragments if f["type"] == "error"}
    assert shipped_errors == ours


def test_event_topics_match_protocol_reference() -> None:
    """topic0 of the events the watcher follows equals the hashes recorded in protocol.md §2.5."""
    expected = {
        "BalanceUpdated(address,address,uint256,uint256)": (
            "526824944047da5b81071fb6349412005c5da81380b336103fbe5dd34556c776"
        ),
        "TEESettlementResult(address,uint8,uint256)": (
            "1f69e5b87fd0ce34b3760ba6e5d8aa95a36e316c3ba44e1e65a9d0eb9e96d0bf"
        ),
        "FundSpent(address,address,uint256)": (
            "6f81b9cf4ed9328799879be7651da4420ab1bc260b34ea71f72e9659aa548e68"
        ),
    }
    events = {
        f["name"]: f"{f['name']}({','.join(i['type'] for i in f['inputs'])})"
        for f in LEDGER_MANAGER_ABI + INFERENCE_SERVING_ABI
        if f["type"] == "event"
    }
    for signature, topic in expected.items():
        assert signature in events.values()
        assert keccak(text=signature).hex() == topic
