"""``zg-router balance | providers | fund | refund | verify``: a running gateway's admin API, from a shell.

Money moves through the gateway's own transaction signers (one nonce sequence per wallet), never from a
second process with the same key. ``--wallet`` names the wallet that funds (needed when the gateway has
several) or the only one to refund. The gateway's URL comes from ``--url`` or ``ZG_ROUTER_URL``; the admin
key from ``ZG_ROUTER_ADMIN_KEY`` (or ``--admin-key``, which other users of the machine can see in ``ps``).
"""

from __future__ import annotations

import argparse
import json
import os
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import aiohttp

from router.errors import ConfigError, RouterError
from router.types import NEURON_PER_0G

DEFAULT_URL = "http://127.0.0.1:8080"
_TIMEOUT = aiohttp.ClientTimeout(total=180)


class AdminRequestFailed(RouterError):
    """The gateway refused or could not carry out an admin request."""


async def run_admin(args: argparse.Namespace) -> int:
    method, path, body = _request_of(args)
    reply = await admin_request(args, method, path, body)
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        print(_render(args.command, reply))
    return 0


async def admin_request(
    args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None
) -> dict[str, Any]:
    base = (args.url or os.environ.get("ZG_ROUTER_URL") or DEFAULT_URL).rstrip("/")
    key = args.admin_key or os.environ.get("ZG_ROUTER_ADMIN_KEY")
    if not key:
        raise ConfigError("no admin key: set ZG_ROUTER_ADMIN_KEY (or pass --admin-key)")
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=_TIMEOUT) as session,
            session.request(method, base + path, json=body, headers=headers) as response,
        ):
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise AdminRequestFailed(f"cannot reach the gateway at {base}: {exc or type(exc).__name__}") from None
    try:
        reply = json.loads(text)
    except ValueError:
        raise AdminRequestFailed(f"{base}{path} answered {status} with a non-JSON body") from None
    if status >= 300:
        error = reply.get("error") if isinstance(reply, dict) else None
        message = error.get("message") if isinstance(error, dict) else text[:200]
        raise AdminRequestFailed(f"{status}: {message}")
    if not isinstance(reply, dict):
        raise AdminRequestFailed(f"{base}{path} answered something other than a JSON object")
    return reply


def _request_of(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    if args.command == "balance":
        return "GET", "/admin/balance", None
    if args.command == "providers":
        return "GET", "/admin/providers", None
    wallet = {"wallet": args.wallet} if args.wallet else {}
    if args.command == "fund":
        return "POST", "/admin/fund", {"provider": args.provider, "amount": args.amount, **wallet}
    if args.command == "verify":
        return "GET", f"/admin/verify/{quote(args.chat_id, safe='')}", None
    return "POST", "/admin/refund", {"providers": args.providers, **wallet} if args.providers else wallet


def _render(command: str, reply: dict[str, Any]) -> str:
    if command == "balance":
        return _render_balance(reply)
    if command == "providers":
        return _render_providers(reply["providers"])
    if command == "verify":
        return _render_verdict(reply)
    if command == "fund":
        return (
            f"funded {reply['provider']} with {og(reply['amount'])} 0G from {reply['wallet']} "
            f"(tx {reply['tx_hash']})"
        )
    txs = reply["transactions"]
    return (
        "\n".join(
            f"refund requested for {tx['wallet']} (tx {tx['tx_hash']}, block {tx['block']})" for tx in txs
        )
        or "nothing to refund"
    )


def _render_balance(reply: dict[str, Any]) -> str:
    """A block per wallet, headed by its address, a blank line between blocks."""
    return "\n\n".join(_render_wallet(wallet) for wallet in reply["wallets"])


def _render_wallet(reply: dict[str, Any]) -> str:
    ledger = reply["ledger"]
    lines = [
        f"wallet  {reply['wallet']}",
        f"ledger  available {og(ledger['available'])} 0G, total {og(ledger['total'])} 0G, "
        f"{ledger['funded_providers']} provider(s) funded",
        "",
        f"{'PROVIDER':<44}{'BALANCE':>14}{'AVAILABLE':>14}{'UNSETTLED':>14}{'PENDING':>14}  FUNDING",
    ]
    for a in reply["accounts"]:
        lines.append(
            f"{a['provider']:<44}{og(a['balance']):>14}{og(a['available']):>14}"
            f"{og(a['unsettled']):>14}{og(a['pending_refund']):>14}  {a['funding']}"
        )
    for alert in reply["alerts"]:
        lines.append(f"ALERT {alert['provider']} {alert['state']}: {alert['detail']}")
    return "\n".join(lines)


def _render_providers(providers: list[dict[str, Any]]) -> str:
    lines = [
        f"{'PROVIDER':<44}{'MODELS':<24}{'BREAKER':<11}{'LIMITS':<12}{'IN-FLIGHT':>10}{'AVAILABLE':>14}"
        f"  {'TEE':<8}{'SIGNER':<44}{'ACK':<5}{'TRUST':<12}CHECKS(ok/failed/n-a)"
    ]
    for p in providers:
        limits = p["limits"]
        rpm = f"{limits['requests_per_minute']:g}/{limits['burst']}/{limits['max_concurrent']}"
        # The providers' money across our wallets: what they could all still spend there together.
        views = [view for view in p["balances"].values() if view is not None]
        available = og(sum(int(view["available"]) for view in views)) if views else "-"
        models = ",".join(p["models"])
        tee = p["attestation"]
        trust = tee["trust"]
        checks = f"{trust['verified']}/{trust['failed']}/{trust['unverifiable']}"
        lines.append(
            f"{p['id']:<44}{models[:23]:<24}{p['health']['breaker']:<11}{rpm:<12}{p['in_flight']:>10}"
            f"{available:>14}  {tee['verifiability'] or '-':<8}{tee['checked_signer'] or '-':<44}"
            f"{'yes' if tee['signer_acknowledged'] else 'no':<5}{trust['state']:<12}{checks}"
        )
    return "\n".join(lines)


def _render_verdict(verdict: dict[str, Any]) -> str:
    lines = [
        f"chat id   {verdict['chat_id']}",
        f"verdict   {verdict['outcome']}: {verdict['detail']}",
        f"provider  {verdict['provider']}",
        f"request   {verdict['request_id']}",
    ]
    if verdict["request_hash_matched"] is not None:
        matched = (
            "yes" if verdict["request_hash_matched"] else "no (the broker rewrote the body it forwarded)"
        )
        lines.append(f"request hash matched  {matched}")
    return "\n".join(lines)


def og(neuron: str | int) -> str:
    """Neuron (a decimal string) as 0G with 6 decimals."""
    return f"{Decimal(int(neuron)) / NEURON_PER_0G:.6f}"
