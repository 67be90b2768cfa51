"""The admin API: the wallets' balances, the pool, and moving money, behind admin-scoped keys.

    GET  /admin/balance     {"wallets": [...]}: each wallet's ledger, sub-accounts and funding alerts
    GET  /admin/providers   the pool: models, prices, limits, health, in-flight, each wallet's balance
    POST /admin/fund        {"provider": "0x…", "amount": "1.5", "wallet": "0x…"}   (0G) ledger → sub-account
    POST /admin/refund      {"providers": ["0x…"], "wallet": "0x…"} (both optional; default every funded
                            provider of every wallet)
    GET  /admin/verify/{chat_id}   a past response's TEE verdict (by x-zg-chat-id): last 10,000, 20 min

``wallet`` is an address in any case: a router of several wallets needs it to fund (400 without it), and
a wallet it does not have is 404 ``wallet_not_found``.

Gateway API keys do not open these routes: only the keys in ``admin_keys`` do, and with none configured
the routes answer 403. Errors are OpenAI-shaped like the rest of the gateway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from router.client import Router
from router.errors import (
    ChainError,
    ChainUnavailable,
    ConfigError,
    ContractRevert,
    FundingError,
    RequestFailed,
    RouterError,
    clipped,
)
from router.types import NEURON_PER_0G, TxResult
from router.wire import bearer_matches

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_MAX_BODY = 64 * 1024
# More 0G than exists: anything above is a typo, and never a uint256 surprise for the chain layer.
MAX_AMOUNT_0G = 10**12
_MAX_WHOLE_DIGITS = len(str(MAX_AMOUNT_0G))
# [0-9], not \d: Python's \d takes any Unicode digit ("١٢"), and int() would read it.
_AMOUNT = re.compile(r"(?P<whole>[0-9]+)(?:\.(?P<decimals>[0-9]{1,18}))?")

_log = structlog.get_logger("router.admin")

AdminHandler = Callable[[web.Request, Router], Awaitable[web.Response]]


def add_admin_routes(
    app: web.Application, router_key: web.AppKey[Router], admin_keys: tuple[str, ...]
) -> None:
    """Register the admin routes; only ``admin_keys`` (as Bearer tokens) may call them."""
    keys = tuple(k.encode() for k in admin_keys)

    def guarded(handler: AdminHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def run(request: web.Request) -> web.Response:
            if not keys:
                return _error(
                    403,
                    "the admin API is off: set [gateway] admin_keys or ZG_ROUTER_ADMIN_KEYS",
                    "permission_error",
                    "admin_disabled",
                )
            if not bearer_matches(request.headers.get("Authorization"), keys):
                return _error(
                    401, "missing or invalid admin key", "authentication_error", "invalid_admin_key"
                )
            try:
                return await handler(request, request.app[router_key])
            except _BadInput as exc:
                return _error(400, str(exc), "invalid_request_error", "invalid_admin_request", exc.param)
            except FundingError as exc:
                return _error(409, str(exc), "funding_error", exc.reason)
            except ContractRevert as exc:
                return _error(409, str(exc), "funding_error", exc.name)
            except ConfigError as exc:
                return _error(409, str(exc), "invalid_request_error", "no_wallet")
            except RequestFailed as exc:
                code = exc.code or "invalid_admin_request"
                return _error(exc.status, exc.message, exc.type, code, exc.param)
            except ChainUnavailable as exc:
                return _error(503, str(exc), "chain_unavailable", "chain_unavailable")
            except (ChainError, RouterError) as exc:
                return _error(502, str(exc), "chain_error", "chain_error")
            except Exception:
                # A bug of ours: the log gets the traceback, the caller an OpenAI-shaped 500.
                _log.exception("admin request failed", path=request.path)
                return _error(500, "internal error in the admin API", "api_error", "internal_error")

        return run

    app.router.add_get("/admin/balance", guarded(_balance))
    app.router.add_get("/admin/providers", guarded(_providers))
    app.router.add_post("/admin/fund", guarded(_fund))
    app.router.add_post("/admin/refund", guarded(_refund))
    app.router.add_get("/admin/verify/{chat_id}", guarded(_verify))


class _BadInput(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


async def _balance(request: web.Request, router: Router) -> web.Response:
    return web.json_response(router.balances())


async def _providers(request: web.Request, router: Router) -> web.Response:
    return web.json_response({"providers": router.providers()})


async def _fund(request: web.Request, router: Router) -> web.Response:
    body = await _json_body(request)
    provider = body.get("provider")
    if not isinstance(provider, str) or not _ADDRESS.match(provider):
        raise _BadInput("`provider` must be a provider address (0x and 40 hex digits)", "provider")
    amount = parse_amount(body.get("amount"))
    wallet = _wallet_param(body)
    result = await router.fund(provider, amount, wallet=wallet)
    # The fund succeeded, so ``wallet`` names a configured wallet, or there is only one.
    paid_by = next(w.address for w in router.wallets if wallet is None or w.address.lower() == wallet.lower())
    reply = {"wallet": paid_by, "provider": provider, "amount": str(amount), **_tx(result)}
    return web.json_response(reply)


async def _refund(request: web.Request, router: Router) -> web.Response:
    body = await _json_body(request, optional=True)
    providers = body.get("providers")
    if providers is not None and (
        not isinstance(providers, list)
        or not providers
        or not all(isinstance(p, str) and _ADDRESS.match(p) for p in providers)
    ):
        raise _BadInput("`providers` must be a non-empty list of provider addresses", "providers")
    results = await router.refund(providers, wallet=_wallet_param(body))
    transactions = [{"wallet": wallet, **_tx(r)} for wallet, txs in results.items() for r in txs]
    return web.json_response({"transactions": transactions})


def _wallet_param(body: dict[str, Any]) -> str | None:
    wallet = body.get("wallet")
    if wallet is not None and (not isinstance(wallet, str) or not _ADDRESS.match(wallet)):
        raise _BadInput("`wallet` must be a wallet address (0x and 40 hex digits)", "wallet")
    return wallet


async def _verify(request: web.Request, router: Router) -> web.Response:
    chat_id = request.match_info["chat_id"]
    verdict = router.verification(chat_id)
    if verdict is None:
        return _error(
            404,
            f"no verdict for chat id {chat_id[:80]!r}: unknown, too old (20 minutes or 10,000 verdicts "
            "ago), not sampled, or still being checked",
            "not_found_error",
            "verdict_not_found",
        )
    return web.json_response(verdict)


def parse_amount(raw: object) -> int:
    """An amount of 0G in neuron: a plain decimal of ASCII digits with at most 18 decimals ("1.5"), as a
    string or a JSON number that reads the same way (``1``, ``0.25``; not ``1e-7``), positive and under
    ``MAX_AMOUNT_0G``. Exact: no float or decimal context ever rounds it."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise _BadInput('`amount` must be an amount of 0G, such as "1.5"', "amount")
    text = raw if isinstance(raw, str) else repr(raw)
    match = _AMOUNT.fullmatch(text)
    if match is None:
        raise _BadInput(
            "`amount` must be a plain decimal number of 0G (ASCII digits, at most 18 decimals, no sign, "
            f'exponent or separators), such as "1.5"; got {clipped(text, 40)}',
            "amount",
        )
    whole, decimals = match["whole"].lstrip("0"), match["decimals"] or ""
    if len(whole) > _MAX_WHOLE_DIGITS:
        raise _BadInput(f"`amount` must be less than {MAX_AMOUNT_0G:,} 0G", "amount")
    neuron = int(whole or "0") * NEURON_PER_0G + int(decimals.ljust(18, "0"))
    if neuron >= MAX_AMOUNT_0G * NEURON_PER_0G:
        raise _BadInput(f"`amount` must be less than {MAX_AMOUNT_0G:,} 0G", "amount")
    if neuron == 0:
        raise _BadInput("`amount` must be positive", "amount")
    return neuron


async def _json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.content.read(_MAX_BODY + 1)
    if len(raw) > _MAX_BODY:
        raise _BadInput("the request body is too large")
    if not raw and optional:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise _BadInput("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _BadInput("the request body must be a JSON object")
    return body


def _tx(result: TxResult) -> dict[str, Any]:
    return {"tx_hash": result.tx_hash, "block": result.block_number}


def _error(status: int, message: str, kind: str, code: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)
