"""ABI fragments for the parts of LedgerManager and InferenceServing that zg-router uses.

Written by us rather than copied from the SDK package, so the package is not a runtime dependency of the
router; ``tests/chain/test_abi.py`` checks every fragment against the ABI shipped in
``@0gfoundation/0g-compute-ts-sdk``. Field names and order follow the deployed structs (protocol.md §2.2):
note that ``ServiceParams`` (input) and ``Service`` (output) order their fields differently.
"""

from __future__ import annotations

from typing import Any

AbiEntry = dict[str, Any]


def _param(name: str, type_: str, *, indexed: bool | None = None) -> AbiEntry:
    entry: AbiEntry = {"name": name, "type": type_}
    if indexed is not None:
        entry["indexed"] = indexed
    return entry


def _tuple(name: str, fields: list[AbiEntry], *, array: bool = False) -> AbiEntry:
    return {"name": name, "type": "tuple[]" if array else "tuple", "components": fields}


def _fn(
    name: str,
    inputs: list[AbiEntry],
    outputs: list[AbiEntry] | None = None,
    mutability: str = "nonpayable",
) -> AbiEntry:
    return {
        "type": "function",
        "name": name,
        "inputs": inputs,
        "outputs": outputs or [],
        "stateMutability": mutability,
    }


def _event(name: str, inputs: list[AbiEntry]) -> AbiEntry:
    return {"type": "event", "name": name, "inputs": inputs, "anonymous": False}


def _error(name: str, *types: tuple[str, str]) -> AbiEntry:
    return {"type": "error", "name": name, "inputs": [_param(n, t) for n, t in types]}


def _view(name: str, inputs: list[AbiEntry], outputs: list[AbiEntry]) -> AbiEntry:
    return _fn(name, inputs, outputs, "view")


_ADDRESS_IN = [_param("user", "address"), _param("provider", "address")]

LEDGER_FIELDS = [
    _param("user", "address"),
    _param("availableBalance", "uint256"),
    _param("totalBalance", "uint256"),
    _param("additionalInfo", "string"),
]

SERVICE_INFO_FIELDS = [
    _param("serviceAddress", "address"),
    _param("serviceContract", "address"),
    _param("serviceType", "string"),
    _param("version", "string"),
    _param("fullName", "string"),
    _param("description", "string"),
    _param("isRecommended", "bool"),
    _param("registeredAt", "uint256"),
]

SERVICE_FIELDS = [
    _param("provider", "address"),
    _param("serviceType", "string"),
    _param("url", "string"),
    _param("inputPrice", "uint256"),
    _param("outputPrice", "uint256"),
    _param("updatedAt", "uint256"),
    _param("model", "string"),
    _param("verifiability", "string"),
    _param("additionalInfo", "string"),
    _param("teeSignerAddress", "address"),
    _param("teeSignerAcknowledged", "bool"),
]

SERVICE_PARAMS_FIELDS = [
    _param("serviceType", "string"),
    _param("url", "string"),
    _param("model", "string"),
    _param("verifiability", "string"),
    _param("inputPrice", "uint256"),
    _param("outputPrice", "uint256"),
    _param("additionalInfo", "string"),
    _param("teeSignerAddress", "address"),
]

REFUND_FIELDS = [
    _param("index", "uint256"),
    _param("amount", "uint256"),
    _param("createdAt", "uint256"),
    _param("processed", "bool"),
]

ACCOUNT_FIELDS = [
    _param("user", "address"),
    _param("provider", "address"),
    _param("nonce", "uint256"),
    _param("balance", "uint256"),
    _param("pendingRefund", "uint256"),
    _tuple("refunds", REFUND_FIELDS, array=True),
    _param("additionalInfo", "string"),
    _param("acknowledged", "bool"),
    _param("validRefundsLength", "uint256"),
    _param("generation", "uint256"),
    _param("revokedBitmap", "uint256"),
]

SETTLEMENT_FIELDS = [
    _param("user", "address"),
    _param("provider", "address"),
    _param("totalFee", "uint256"),
    _param("requestsHash", "bytes32"),
    _param("nonce", "uint256"),
    _param("signature", "bytes"),
]

LEDGER_MANAGER_ABI: list[AbiEntry] = [
    _fn("initialize", [_param("owner", "address")]),
    _fn(
        "registerService",
        [
            _param("serviceType", "string"),
            _param("version", "string"),
            _param("serviceAddress", "address"),
            _param("description", "string"),
        ],
    ),
    _fn("setRecommendedService", [_param("serviceType", "string"), _param("version", "string")]),
    _fn(
        "addLedger",
        [_param("additionalInfo", "string")],
        [_param("", "uint256"), _param("", "uint256")],
        "payable",
    ),
    _fn("depositFund", [], [], "payable"),
    _fn(
        "transferFund",
        [
            _param("provider", "address"),
            _param("serviceName", "string"),
            _param("amount", "uint256"),
        ],
    ),
    _fn("retrieveFund", [_param("providers", "address[]"), _param("serviceName", "string")]),
    _fn("refund", [_param("amount", "uint256")]),
    _view("getLedger", [_param("user", "address")], [_tuple("", LEDGER_FIELDS)]),
    _view(
        "getLedgerProviders",
        [_param("user", "address"), _param("serviceName", "string")],
        [_param("", "address[]")],
    ),
    _view(
        "getServiceInfo",
        [_param("serviceAddress", "address")],
        [_tuple("", SERVICE_INFO_FIELDS)],
    ),
    _event(
        "FundSpent",
        [
            _param("user", "address", indexed=True),
            _param("service", "address", indexed=True),
            _param("amount", "uint256", indexed=False),
        ],
    ),
    _error("AdditionalInfoTooLong", ("length", "uint256"), ("max", "uint256")),
    _error("AlreadyInitialized"),
    _error("CallFailed"),
    _error("CallerNotRegisteredService", ("caller", "address")),
    _error("DirectDepositsDisabled"),
    _error("InsufficientAvailableBalance", ("available", "uint256"), ("required", "uint256")),
    _error("InsufficientBalance", ("user", "address")),
    _error("InvalidServiceAddress", ("serviceAddress", "address")),
    _error("InvalidServiceType", ("serviceType", "string")),
    _error("LedgerExists", ("user", "address")),
    _error("LedgerLocked"),
    _error("LedgerNotExists", ("user", "address")),
    _error("MinimumDepositRequired", ("provided", "uint256"), ("required", "uint256")),
    _error("MustWithdrawAllFundsFirst", ("remainingBalance", "uint256")),
    _error("NoRecommendedService", ("serviceType", "string")),
    _error("ServiceAlreadyRegistered", ("serviceAddress", "address")),
    _error("ServiceMustImplementIServing", ("serviceAddress", "address")),
    _error("ServiceNameExists", ("serviceName", "string")),
    _error("ServiceNotFound", ("serviceAddress", "address")),
    _error("ServiceNotRegistered", ("serviceAddress", "address")),
    _error("ServiceRegistryLimitReached", ("limit", "uint256")),
    _error("ServiceTypeRequired"),
    _error("TooManyProviders", ("requested", "uint256"), ("maximum", "uint256")),
    _error("TooManyProvidersForService", ("current", "uint256"), ("maximum", "uint256")),
    _error("TransferFailed"),
    _error("VersionRequired"),
    _error("ZeroAddressNotAllowed"),
    _error("ZeroAmountNotAllowed"),
]

INFERENCE_SERVING_ABI: list[AbiEntry] = [
    _fn(
        "initialize",
        [
            _param("_locktime", "uint256"),
            _param("_ledgerAddress", "address"),
            _param("owner", "address"),
        ],
    ),
    _fn("addOrUpdateService", [_tuple("params", SERVICE_PARAMS_FIELDS)], [], "payable"),
    _fn("acknowledgeTEESignerByOwner", [_param("provider", "address")]),
    _fn(
        "acknowledgeTEESigner",
        [_param("provider", "address"), _param("acknowledged", "bool")],
    ),
    _fn("revokeToken", [_param("provider", "address"), _param("tokenId", "uint8")]),
    _fn("revokeAllTokens", [_param("provider", "address")]),
    _fn(
        "settleFeesWithTEE",
        [_tuple("settlements", SETTLEMENT_FIELDS, array=True)],
        [_param("statuses", "uint8[]")],
    ),
    _view(
        "getAllServices",
        [_param("offset", "uint256"), _param("limit", "uint256")],
        [_tuple("services", SERVICE_FIELDS, array=True), _param("total", "uint256")],
    ),
    _view("getService", [_param("provider", "address")], [_tuple("service", SERVICE_FIELDS)]),
    _view("getAccount", _ADDRESS_IN, [_tuple("", ACCOUNT_FIELDS)]),
    _view(
        "getAccountsByUser",
        [_param("user", "address"), _param("offset", "uint256"), _param("limit", "uint256")],
        [_tuple("accounts", ACCOUNT_FIELDS, array=True), _param("total", "uint256")],
    ),
    _view("lockTime", [], [_param("", "uint256")]),
    _event(
        "BalanceUpdated",
        [
            _param("user", "address", indexed=True),
            _param("provider", "address", indexed=True),
            _param("amount", "uint256", indexed=False),
            _param("pendingRefund", "uint256", indexed=False),
        ],
    ),
    _event(
        "RefundRequested",
        [
            _param("user", "address", indexed=True),
            _param("provider", "address", indexed=True),
            _param("index", "uint256", indexed=True),
            _param("timestamp", "uint256", indexed=False),
        ],
    ),
    _event(
        "AccountDeleted",
        [
            _param("user", "address", indexed=True),
            _param("provider", "address", indexed=True),
            _param("refundedAmount", "uint256", indexed=False),
        ],
    ),
    _event(
        "TEESettlementResult",
        [
            _param("user", "address", indexed=True),
            _param("status", "uint8", indexed=False),
            _param("unsettledAmount", "uint256", indexed=False),
        ],
    ),
    _event(
        "ServiceUpdated",
        [
            _param("service", "address", indexed=True),
            _param("serviceType", "string", indexed=False),
            _param("url", "string", indexed=False),
            _param("inputPrice", "uint256", indexed=False),
            _param("outputPrice", "uint256", indexed=False),
            _param("updatedAt", "uint256", indexed=False),
            _param("model", "string", indexed=False),
            _param("verifiability", "string", indexed=False),
        ],
    ),
    _event("ServiceRemoved", [_param("service", "address", indexed=True)]),
    _event(
        "ProviderTEESignerAcknowledged",
        [
            _param("provider", "address", indexed=True),
            _param("teeSignerAddress", "address", indexed=True),
            _param("acknowledged", "bool", indexed=False),
        ],
    ),
    _error("AccountExists", ("user", "address"), ("provider", "address")),
    _error("AccountNotExists", ("user", "address"), ("provider", "address")),
    _error("AdditionalInfoTooLong"),
    _error("AlreadyInitialized"),
    _error("BatchSizeTooLarge", ("size", "uint256"), ("max", "uint256")),
    _error("CallerNotLedger", ("caller", "address")),
    _error("CannotAddStakeWhenUpdating"),
    _error(
        "CannotRevokeWithNonZeroBalance",
        ("user", "address"),
        ("provider", "address"),
        ("balance", "uint256"),
    ),
    _error("DirectDepositsDisabled"),
    _error("InsufficientStake", ("provided", "uint256"), ("required", "uint256")),
    _error("InvalidAddress", ("addr", "address")),
    _error("InvalidTEESignature", ("reason", "string")),
    _error("LimitTooLarge", ("limit", "uint256"), ("max", "uint256")),
    _error("LockTimeOutOfRange", ("lockTime", "uint256"), ("min", "uint256"), ("max", "uint256")),
    _error("NoSettlementsProvided"),
    _error("ProviderCannotBeUser"),
    _error("ServiceNotExist", ("provider", "address")),
    _error("TooManyRefunds", ("user", "address"), ("provider", "address")),
    _error("TooManySettlements", ("count", "uint256"), ("max", "uint256")),
    _error("TransferFailed"),
]
