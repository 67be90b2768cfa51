"""The admin API (/admin/balance, /admin/providers, /admin/fund, /admin/refund) on a live gateway.

Each test opens a second gateway with an admin key over the ``serve`` fixture's router, so the first gateway
(API key only) shows the admin API switched off. The chain is the witness for every move of money: balances
are read back from the contracts, and "nothing sent" means the wallet's nonce did not move. The last tests
run a router of two wallets, which moves money from the one the request names.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from router.chain.client import ChainClient
from router.client import Router
from router.config import GatewayConfig
from router.devnet import Devnet
from router.observability.logging import LogObserver
from router.server.app import Gateway
from tests.gateway.conftest import API_KEY, Served, ServeFactory, router_config
from tests.gateway.support import WRONG_KEY, Answer, assert_error, send
from tests.support import NEURON, funded_wallet

ADMIN_KEY = "zg-admin-test-" + "0123456789abcdef" * 2
ROUTES = (
    ("GET", "/admin/balance"),
    ("GET", "/admin/providers"),
    ("POST", "/admin/fund"),
    ("POST", "/admin/refund"),
)
TX_HASH = re.compile(r"^0x[0-9a-f]{64}$")
NOT_AN_OBJECT = "the request body must be a JSON object"
BAD_PROVIDER = "`provider` must be a provider address (0x and 40 hex digits)"
POSITIVE = "`amount` must be positive"
UNDER_CAP = "`amount` must be less than 1,000,000,000,000 0G"


def not_plain(shown: str) -> str:
    return (
        "`amount` must be a plain decimal number of 0G (ASCII digits, at most 18 decimals, no sign, "
        f'exponent or separators), such as "1.5"; got {shown}'
    )


NOT_AN_AMOUNT = '`amount` must be an amount of 0G, such as "1.5"'
BAD_PROVIDERS = "`providers` must be a non-empty list of provider addresses"
MAX_BODY = 64 * 1024


@dataclass
class Admin:
    """A served router with a second gateway that takes ``ADMIN_KEY``, and a chain reader."""

    served: Served
    url: str
    chain: ChainClient

    @property
    def wallet(self) -> str:
        return self.served.wallet.address

    def provider(self, index: int) -> str:
        return self.served.devnet.providers[index].address

    async def call(self, method: str, path: str, *, key: str | None = ADMIN_KEY, **kwargs: Any) -> Answer:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return await send(self.served, method, path, url=self.url, headers=headers, **kwargs)

    async def view(self) -> dict[str, Any]:
        """The balance view of the router's one wallet."""
        answer = await self.call("GET", "/admin/balance")
        assert answer.status == 200, answer.text
        (report,) = answer.json()["wallets"]
        return dict(report)

    async def nonce(self) -> int:
        return int(await self.chain.w3.eth.get_transaction_count(self.served.wallet.address))

    async def ledger_available(self) -> int:
        ledger = await self.chain.get_ledger(self.wallet)
        assert ledger is not None
        return ledger.available_balance

    async def balance_at(self, index: int) -> tuple[int, int]:
        """(balance, pending refund) of our sub-account at provider ``index``, from the chain."""
        account = await self.chain.get_account(self.wallet, self.provider(index))
        assert account is not None
        return account.balance, account.pending_refund


@pytest.fixture
async def admin(serve: ServeFactory) -> AsyncIterator[Admin]:
    served = await serve()
    config = GatewayConfig(port=0, api_keys=(API_KEY,), admin_keys=(ADMIN_KEY,), shutdown_timeout=0.5)
    async with Gateway(served.router, config) as gateway:
        yield Admin(served, gateway.url, await served.devnet.open_client())


def param_named(message: str) -> str | None:
    """The field an admin 400 names in ``param``: the one its message starts with, if any."""
    match = re.match(r"`(\w+)`", message)
    return match[1] if match else None


def account_of(view: dict[str, Any], provider: str) -> dict[str, Any]:
    (account,) = [a for a in view["accounts"] if a["provider"] == provider]
    return dict(account)


def amounts(view: dict[str, Any]) -> dict[str, Any]:
    """The money in a balance view: the ledger's and each account's amounts, without states or blocks."""
    fields = ("balance", "pending_refund", "unsettled", "reserved", "available", "spent", "settled")
    return {
        "ledger": (view["ledger"]["available"], view["ledger"]["total"]),
        "accounts": {a["provider"]: tuple(a[f] for f in fields) for a in view["accounts"]},
    }


class TestAccess:
    @pytest.mark.parametrize(("method", "path"), ROUTES)
    async def test_route_refuses_anything_but_an_admin_key(
        self, admin: Admin, method: str, path: str
    ) -> None:
        """No key, a wrong key, the gateway's API key, the admin key under another scheme or cut short: each
        gets 401 invalid_admin_key, and a refused fund or refund sends no transaction."""
        nonce = await admin.nonce()
        body = {"provider": admin.provider(0), "amount": "1"}
        for headers in (
            {},
            {"Authorization": f"Bearer {WRONG_KEY}"},
            {"Authorization": f"Bearer {API_KEY}"},
            {"Authorization": f"Basic {ADMIN_KEY}"},
            {"Authorization": ADMIN_KEY},
            {"Authorization": f"Bearer {ADMIN_KEY[:-1]}"},
        ):
            answer = await send(admin.served, method, path, url=admin.url, headers=headers, json=body)
            assert_error(
                answer,
                401,
                "authentication_error",
                "missing or invalid admin key",
                code="invalid_admin_key",
                request_id=False,
            )
        assert await admin.nonce() == nonce

    async def test_routes_answer_403_on_a_gateway_without_admin_keys(self, admin: Admin) -> None:
        """The ``serve`` gateway has API keys only: every admin route says the admin API is off (403
        admin_disabled), whatever key is sent, and nothing is sent to the chain."""
        nonce = await admin.nonce()
        for method, path in ROUTES:
            for key in (ADMIN_KEY, API_KEY, None):
                answer = await send(
                    admin.served,
                    method,
                    path,
                    headers={"Authorization": f"Bearer {key}"} if key else {},
                    json={"provider": admin.provider(0), "amount": "1"},
                )
                assert_error(
                    answer,
                    403,
                    "permission_error",
                    "the admin API is off: set [gateway] admin_keys or ZG_ROUTER_ADMIN_KEYS",
                    code="admin_disabled",
                    request_id=False,
                )
        assert await admin.nonce() == nonce

    async def test_an_admin_key_does_not_open_the_openai_routes(self, admin: Admin) -> None:
        """Admin keys and API keys are separate: the admin key gets 401 on /v1/models, the API key works."""
        answer = await admin.call("GET", "/v1/models")
        assert_error(answer, 401, "authentication_error", "invalid API key", code="invalid_api_key")
        assert (await admin.call("GET", "/v1/models", key=API_KEY)).status == 200


class TestViews:
    async def test_balance_is_a_list_of_wallets(self, admin: Admin) -> None:
        """/admin/balance has one shape for one wallet or many: ``{"wallets": [report, ...]}``."""
        answer = await admin.call("GET", "/admin/balance")
        assert answer.status == 200, answer.text
        assert answer.json().keys() == {"wallets"}
        assert [w["wallet"] for w in answer.json()["wallets"]] == [admin.wallet]

    async def test_balance_lists_wallet_ledger_and_each_provider_as_on_chain(self, admin: Admin) -> None:
        """/admin/balance names the wallet, shows the ledger and one account per provider (sorted by
        address), every amount a decimal string of neuron equal to what the contracts hold; no alerts."""
        view = await admin.view()
        assert view["wallet"] == admin.wallet
        ledger = await admin.chain.get_ledger(admin.wallet)
        assert ledger is not None
        providers = admin.served.devnet.providers
        assert view["ledger"]["available"] == str(ledger.available_balance) == str(8 * NEURON)
        assert view["ledger"]["total"] == str(ledger.total_balance) == str(20 * NEURON)
        assert view["ledger"]["funded_providers"] == len(providers)
        assert [a["provider"] for a in view["accounts"]] == sorted(
            (p.address for p in providers), key=str.lower
        )
        for index, provider in enumerate(providers):
            account = account_of(view, provider.address)
            chain_account = await admin.chain.get_account(admin.wallet, provider.address)
            assert chain_account is not None
            assert account["exists"] is True
            assert account["acknowledged"] is chain_account.acknowledged is True
            assert account["balance"] == str(chain_account.balance) == str(2 * NEURON), index
            assert account["pending_refund"] == str(chain_account.pending_refund) == "0"
            assert account["available"] == str(NEURON)  # the balance less the 1 0G the contract locks
            assert account["funding"] == "ok"
            assert account["funding_detail"] is None
            for field in (
                "unsettled",
                "unsettled_provider",
                "unsettled_ours",
                "reserved",
                "spent",
                "settled",
            ):
                assert account[field] == "0", field
        assert view["alerts"] == []
        assert isinstance(view["watcher_block"], int)

    async def test_providers_lists_models_limits_health_and_balance(self, admin: Admin) -> None:
        """/admin/providers has every provider once with its model, prices, limits, a closed breaker,
        nothing in flight, and our balance there."""
        answer = await admin.call("GET", "/admin/providers")
        assert answer.status == 200, answer.text
        listed = {p["id"]: p for p in answer.json()["providers"]}
        devnet_providers = admin.served.devnet.providers
        assert len(listed) == len(devnet_providers)
        for provider in devnet_providers:
            spec, entry = provider.spec, listed[provider.address]
            assert entry["kind"] == "chain"
            assert entry["models"] == [spec.model]
            assert entry["service_type"] == spec.service_type
            assert entry["pricing"] == {"prompt": str(spec.input_price), "completion": str(spec.output_price)}
            assert entry["limits"] == {
                "requests_per_minute": spec.limits.requests_per_minute,
                "burst": spec.limits.burst,
                "max_concurrent": spec.limits.max_concurrent,
                "tokens_per_minute": None,
                "images_per_minute": None,
            }
            assert entry["health"]["breaker"] == "closed"
            assert entry["in_flight"] == 0
            assert entry["excluded"] is None
            assert entry["balances"].keys() == {admin.wallet}
            balance = entry["balances"][admin.wallet]
            assert balance["provider"] == provider.address
            assert balance["balance"] == str(2 * NEURON)
            assert balance["available"] == str(NEURON)


class TestFund:
    @pytest.mark.parametrize(
        ("amount", "neuron"),
        [("0.5", NEURON // 2), (1, NEURON), ("0.000000000000000001", 1), (0.25, NEURON // 4)],
    )
    async def test_fund_moves_exactly_the_amount(self, admin: Admin, amount: object, neuron: int) -> None:
        """A fund of a 0G amount (string or JSON number, down to 18 decimals) grows the sub-account on chain
        by exactly that many neuron, takes it from the ledger, and the balance view shows it at once."""
        before, _ = await admin.balance_at(1)
        ledger = await admin.ledger_available()
        answer = await admin.call(
            "POST", "/admin/fund", json={"provider": admin.provider(1), "amount": amount}
        )
        assert answer.status == 200, answer.text
        reply = answer.json()
        assert reply.keys() == {"wallet", "provider", "amount", "tx_hash", "block"}
        assert reply["wallet"] == admin.wallet
        assert reply["provider"] == admin.provider(1)
        assert reply["amount"] == str(neuron)
        assert TX_HASH.match(reply["tx_hash"])
        assert (await admin.balance_at(1))[0] == before + neuron
        assert await admin.ledger_available() == ledger - neuron
        view = await admin.view()
        assert account_of(view, admin.provider(1))["balance"] == str(before + neuron)
        assert account_of(view, admin.provider(1))["funding"] == "ok"
        assert view["ledger"]["available"] == str(ledger - neuron)

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            pytest.param(b"{not json", NOT_AN_OBJECT, id="not-json"),
            pytest.param(b"", NOT_AN_OBJECT, id="empty"),
            pytest.param(b'["0x", "1"]', NOT_AN_OBJECT, id="not-an-object"),
            pytest.param(b'"fund"', NOT_AN_OBJECT, id="a-string"),
            pytest.param(b'{"amount": "1"}', BAD_PROVIDER, id="no-provider"),
            pytest.param(b'{"provider": "0x1234", "amount": "1"}', BAD_PROVIDER, id="short-address"),
            pytest.param(b'{"provider": "0x' + b"g" * 40 + b'", "amount": "1"}', BAD_PROVIDER, id="not-hex"),
            pytest.param(b'{"provider": 12345, "amount": "1"}', BAD_PROVIDER, id="address-number"),
            pytest.param(b'{"provider": "P0", "amount": "abc"}', not_plain("'abc'"), id="abc"),
            pytest.param(b'{"provider": "P0", "amount": "-1"}', not_plain("'-1'"), id="negative"),
            pytest.param(b'{"provider": "P0", "amount": -0.5}', not_plain("'-0.5'"), id="negative-number"),
            pytest.param(b'{"provider": "P0", "amount": "0"}', POSITIVE, id="zero"),
            pytest.param(b'{"provider": "P0", "amount": "0.000"}', POSITIVE, id="zero-with-decimals"),
            pytest.param(b'{"provider": "P0", "amount": 0}', POSITIVE, id="zero-number"),
            pytest.param(
                b'{"provider": "P0", "amount": "0.0000000000000000001"}',
                not_plain("'0.0000000000000000001'"),
                id="19-decimals",
            ),
            pytest.param(
                b'{"provider": "P0", "amount": "1.0000000000000000005"}',
                not_plain("'1.0000000000000000005'"),
                id="1-and-dust",
            ),
            pytest.param(b'{"provider": "P0", "amount": "NaN"}', not_plain("'NaN'"), id="nan"),
            pytest.param(b'{"provider": "P0", "amount": NaN}', not_plain("'nan'"), id="nan-literal"),
            pytest.param(b'{"provider": "P0", "amount": "Infinity"}', not_plain("'Infinity'"), id="infinity"),
            pytest.param(b'{"provider": "P0", "amount": "1_000"}', not_plain("'1_000'"), id="underscores"),
            pytest.param(b'{"provider": "P0", "amount": "1,000"}', not_plain("'1,000'"), id="comma"),
            pytest.param(
                '{"provider": "P0", "amount": "\u0661\u0662"}'.encode(),
                not_plain("'\u0661\u0662'"),
                id="arabic-digits",
            ),
            pytest.param(
                '{"provider": "P0", "amount": "\uff11"}'.encode(), not_plain("'\uff11'"), id="fullwidth-digit"
            ),
            pytest.param(b'{"provider": "P0", "amount": "1e3"}', not_plain("'1e3'"), id="exponent"),
            pytest.param(b'{"provider": "P0", "amount": 1e-7}', not_plain("'1e-07'"), id="exponent-number"),
            pytest.param(b'{"provider": "P0", "amount": "+1"}', not_plain("'+1'"), id="plus-sign"),
            pytest.param(b'{"provider": "P0", "amount": " 1"}', not_plain("' 1'"), id="leading-space"),
            pytest.param(b'{"provider": "P0", "amount": "1\\n"}', not_plain("'1\\n'"), id="trailing-newline"),
            pytest.param(b'{"provider": "P0", "amount": "1."}', not_plain("'1.'"), id="bare-point"),
            pytest.param(b'{"provider": "P0", "amount": ".5"}', not_plain("'.5'"), id="no-whole-part"),
            pytest.param(b'{"provider": "P0", "amount": "0x10"}', not_plain("'0x10'"), id="hex"),
            pytest.param(
                b'{"provider": "P0", "amount": "' + b"9_" * 30 + b'"}',
                not_plain(repr("9_" * 20) + "\u2026 (60 characters)"),
                id="long-number-quoted-short",
            ),
            pytest.param(b'{"provider": "P0", "amount": "1000000000000"}', UNDER_CAP, id="the-cap"),
            pytest.param(
                b'{"provider": "P0", "amount": "0001000000000000.5"}',
                UNDER_CAP,
                id="over-the-cap-zero-padded",
            ),
            pytest.param(b'{"provider": "P0", "amount": 1e12}', UNDER_CAP, id="the-cap-as-number"),
            pytest.param(b'{"provider": "P0", "amount": 100000000000000000000}', UNDER_CAP, id="huge-int"),
            pytest.param(b'{"provider": "P0", "amount": true}', NOT_AN_AMOUNT, id="bool"),
            pytest.param(b'{"provider": "P0", "amount": null}', NOT_AN_AMOUNT, id="null"),
            pytest.param(b'{"provider": "P0"}', NOT_AN_AMOUNT, id="no-amount"),
            pytest.param(b'{"provider": "P0", "amount": ["1"]}', NOT_AN_AMOUNT, id="list"),
            pytest.param(
                b'{"provider": "P0", "amount": "' + b"1" * MAX_BODY + b'"}',
                "the request body is too large",
                id="huge-body",
            ),
        ],
    )
    async def test_bad_input_is_400_and_sends_nothing(self, admin: Admin, body: bytes, message: str) -> None:
        """Each malformed fund request gets 400 invalid_admin_request with a message naming what is wrong,
        sends no transaction, and leaves the ledger as it was."""
        body = body.replace(b"P0", admin.provider(0).encode())
        nonce, ledger, view = await admin.nonce(), await admin.ledger_available(), await admin.view()
        answer = await send(
            admin.served,
            "POST",
            "/admin/fund",
            url=admin.url,
            data=body,
            headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
        )
        assert_error(
            answer,
            400,
            "invalid_request_error",
            message,
            code="invalid_admin_request",
            param=param_named(message),
            request_id=False,
        )
        assert await admin.nonce() == nonce
        assert await admin.ledger_available() == ledger
        assert await admin.view() == view

    @pytest.mark.parametrize(
        "amount",
        [
            pytest.param("sNaN", id="signalling-nan"),
            pytest.param("1e999999", id="past-decimal-range"),
            pytest.param("1e60", id="past-uint256"),
        ],
    )
    async def test_amounts_no_transaction_can_carry_are_400(self, admin: Admin, amount: str) -> None:
        """An amount that is a number but no transaction can carry (a signalling NaN, one past the decimal
        range, one past uint256) is bad input like any other: 400 JSON, nothing sent, and the provider's
        funding state is left as it was (not stuck at "funding")."""
        nonce, view = await admin.nonce(), await admin.view()
        answer = await admin.call(
            "POST", "/admin/fund", json={"provider": admin.provider(0), "amount": amount}
        )
        assert answer.status == 400, answer.text
        assert answer.headers["Content-Type"].startswith("application/json"), answer.text
        assert answer.json()["error"]["type"] == "invalid_request_error"
        assert answer.json()["error"]["code"] == "invalid_admin_request"
        assert await admin.nonce() == nonce
        assert await admin.view() == view

    @pytest.mark.parametrize(
        ("amount", "shown"),
        [
            pytest.param("10000000000", "10000000000.000000", id="1e10"),
            pytest.param(
                "999999999999.999999999999999999", "999999999999.999999999999999999", id="just-under-the-cap"
            ),
            pytest.param(1e10, "10000000000.000000", id="1e10-as-number"),
            pytest.param(123456789012, "123456789012.000000", id="twelve-digits-as-int"),
        ],
    )
    async def test_large_amounts_under_the_cap_reach_the_chain_exactly(
        self, admin: Admin, amount: object, shown: str
    ) -> None:
        """An amount from 1e10 0G up to just under the cap is a valid amount (no 500 from a decimal
        context's 28 digits): the chain refuses it as more than the ledger holds (409 ledger_low) and
        the message quotes the exact amount asked, so nothing was rounded on the way."""
        ledger, view = await admin.ledger_available(), await admin.view()
        answer = await admin.call(
            "POST", "/admin/fund", json={"provider": admin.provider(0), "amount": amount}
        )
        assert answer.status == 409, answer.text
        error = answer.json()["error"]
        assert (error["type"], error["code"]) == ("funding_error", "ledger_low")
        assert f"short of the {shown} 0G transfer" in error["message"]
        assert await admin.ledger_available() == ledger
        assert amounts(await admin.view()) == amounts(view)

    async def test_an_unknown_provider_is_404_and_sends_nothing(self, admin: Admin) -> None:
        """A well-formed address that is neither in the pool nor a sub-account of ours: 404
        provider_not_found naming it, no transaction, and no account appears for it."""
        stranger = "0x" + "ab" * 20
        nonce, view = await admin.nonce(), await admin.view()
        answer = await admin.call("POST", "/admin/fund", json={"provider": stranger, "amount": "1"})
        assert_error(
            answer,
            404,
            "invalid_request_error",
            f"not a provider in the pool, nor one we hold a sub-account at: {stranger}",
            code="provider_not_found",
            param="provider",
            request_id=False,
        )
        assert await admin.nonce() == nonce
        assert await admin.view() == view

    async def test_funding_more_than_the_ledger_holds_is_409(self, admin: Admin) -> None:
        """A fund larger than the ledger's available balance is refused by the chain: 409 funding_error
        (ledger_low) naming what the ledger has and what was asked, and no money moves."""
        ledger = await admin.ledger_available()
        before = await admin.balance_at(0)
        view = await admin.view()
        answer = await admin.call(
            "POST", "/admin/fund", json={"provider": admin.provider(0), "amount": "100"}
        )
        assert answer.status == 409, answer.text
        error = answer.json()["error"]
        assert error["type"] == "funding_error"
        assert error["code"] == "ledger_low"
        assert f"the ledger has {ledger / NEURON:.6f} 0G available" in error["message"]
        assert "short of the 100.000000 0G transfer" in error["message"]
        assert await admin.ledger_available() == ledger
        assert await admin.balance_at(0) == before
        assert amounts(await admin.view()) == amounts(view)

    async def test_a_refused_manual_fund_leaves_the_funding_state_alone(self, admin: Admin) -> None:
        """An operator's too-large fund says nothing about the ledger's ability to pay top-ups: the balance
        view after the 409 is the view before it (funding "ok", no ledger_low alert that would pause the
        provider's automatic top-ups until the ledger grows)."""
        view = await admin.view()
        answer = await admin.call(
            "POST", "/admin/fund", json={"provider": admin.provider(0), "amount": "100"}
        )
        assert answer.status == 409, answer.text
        after = await admin.view()
        assert account_of(after, admin.provider(0))["funding"] == "ok"
        assert after["alerts"] == []
        assert after == view

    async def test_fund_ends_a_drain(self, admin: Admin) -> None:
        """Funding a provider by hand after a refund puts its funding state back to "ok"."""
        answer = await admin.call("POST", "/admin/refund", json={"providers": [admin.provider(2)]})
        assert answer.status == 200, answer.text
        assert account_of(await admin.view(), admin.provider(2))["funding"] == "draining"
        answer = await admin.call("POST", "/admin/fund", json={"provider": admin.provider(2), "amount": "1"})
        assert answer.status == 200, answer.text
        assert account_of(await admin.view(), admin.provider(2))["funding"] == "ok"


class TestRefund:
    async def test_refund_of_one_provider_queues_its_whole_balance(self, admin: Admin) -> None:
        """A refund for one provider queues its whole balance on chain (pendingRefund == balance), marks it
        "draining" in the balance view, and leaves every other provider alone."""
        answer = await admin.call("POST", "/admin/refund", json={"providers": [admin.provider(1)]})
        assert answer.status == 200, answer.text
        (tx,) = answer.json()["transactions"]
        assert tx["wallet"] == admin.wallet
        assert TX_HASH.match(tx["tx_hash"])
        assert isinstance(tx["block"], int)
        balance, pending = await admin.balance_at(1)
        assert pending == balance == 2 * NEURON
        view = await admin.view()
        drained = account_of(view, admin.provider(1))
        assert drained["funding"] == "draining"
        assert drained["pending_refund"] == drained["balance"] == str(balance)
        assert int(drained["available"]) < 0
        for index, provider in enumerate(admin.served.devnet.providers):
            if index != 1:
                assert await admin.balance_at(index) == (2 * NEURON, 0)
                assert account_of(view, provider.address)["funding"] == "ok"

    async def test_refund_without_a_body_drains_every_funded_provider(self, admin: Admin) -> None:
        """With no ``providers`` the refund covers every provider we have an account with."""
        answer = await admin.call("POST", "/admin/refund")
        assert answer.status == 200, answer.text
        assert len(answer.json()["transactions"]) == 1
        view = await admin.view()
        for index, provider in enumerate(admin.served.devnet.providers):
            assert await admin.balance_at(index) == (2 * NEURON, 2 * NEURON)
            assert account_of(view, provider.address)["funding"] == "draining"

    async def test_refund_of_an_unknown_provider_is_404_sends_nothing_and_books_nothing(
        self, admin: Admin
    ) -> None:
        """A refund naming an address that is not a provider of ours (alone or next to a real one) is
        refused whole: 404 provider_not_found, no ``retrieveFund`` sent, no provider marked draining, and
        no phantom account (with its -1 0G "available") in the router's books, the balance view or the
        provider balance gauge."""
        stranger = "0x" + "cd" * 20
        nonce, view = await admin.nonce(), await admin.view()
        for providers in ([stranger], [admin.provider(0), stranger]):
            answer = await admin.call("POST", "/admin/refund", json={"providers": providers})
            assert_error(
                answer,
                404,
                "invalid_request_error",
                f"not a provider in the pool, nor one we hold a sub-account at: {stranger}",
                code="provider_not_found",
                param="providers",
                request_id=False,
            )
        assert await admin.nonce() == nonce
        assert await admin.view() == view
        (wallet,) = admin.served.router.wallets
        accounts = wallet.accounts
        assert accounts.get(stranger) is None
        assert stranger.lower() not in {a.provider.lower() for a in accounts}

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            pytest.param('{"providers": []}', BAD_PROVIDERS, id="empty-list"),
            pytest.param('{"providers": "P0"}', BAD_PROVIDERS, id="a-string"),
            pytest.param('{"providers": ["P0", "0x12"]}', BAD_PROVIDERS, id="one-bad-address"),
            pytest.param('{"providers": [null]}', BAD_PROVIDERS, id="null-address"),
            pytest.param('["P0"]', NOT_AN_OBJECT, id="not-an-object"),
            pytest.param("null", NOT_AN_OBJECT, id="null"),
        ],
    )
    async def test_bad_input_is_400_and_sends_nothing(self, admin: Admin, body: str, message: str) -> None:
        """A malformed refund request gets 400 with a precise message and sends no transaction."""
        body = body.replace("P0", admin.provider(0))
        nonce, view = await admin.nonce(), await admin.view()
        answer = await admin.call("POST", "/admin/refund", data=body)
        assert_error(
            answer,
            400,
            "invalid_request_error",
            message,
            code="invalid_admin_request",
            param=param_named(message),
            request_id=False,
        )
        assert await admin.nonce() == nonce
        assert await admin.view() == view


async def test_the_admin_key_is_never_logged_or_echoed(
    admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    """Across every admin route, good and bad requests alike, the admin key shows up in no structlog
    event, no stdlib log record, no response body or header, and not in the gateway config's repr."""
    admin.served.router.subscribe(LogObserver())
    caplog.set_level(logging.DEBUG)
    answers: list[Answer] = []
    with capture_logs() as events:
        answers.append(await admin.call("GET", "/admin/balance"))
        answers.append(await admin.call("GET", "/admin/providers"))
        answers.append(
            await admin.call("POST", "/admin/fund", json={"provider": admin.provider(0), "amount": "0.1"})
        )
        answers.append(
            await admin.call("POST", "/admin/fund", json={"provider": admin.provider(0), "amount": "99"})
        )
        answers.append(await admin.call("POST", "/admin/fund", json={"provider": "0x1", "amount": "1"}))
        answers.append(await admin.call("POST", "/admin/refund", json={"providers": [admin.provider(1)]}))
        answers.append(await admin.call("GET", "/admin/balance", key=ADMIN_KEY + "x"))
        answers.append(await admin.call("GET", "/v1/models"))
        answers.append(await admin.call("GET", "/admin/nothing"))
    assert [a.status for a in answers] == [200, 200, 200, 409, 400, 200, 401, 401, 404]
    assert [e["manual"] for e in events if e["event"] == "funded"] == [True], events
    for answer in answers:
        assert ADMIN_KEY not in answer.text
        assert all(ADMIN_KEY not in value for value in answer.headers.values())
    assert ADMIN_KEY not in repr(events)
    assert ADMIN_KEY not in caplog.text
    config = GatewayConfig(port=0, api_keys=(API_KEY,), admin_keys=(ADMIN_KEY,))
    assert ADMIN_KEY not in repr(config)


BAD_WALLET = "`wallet` must be a wallet address (0x and 40 hex digits)"


class TestWalletParameter:
    async def test_fund_from_the_named_wallet_in_any_case(self, admin: Admin) -> None:
        """``wallet`` may name the router's one wallet in any case: the fund goes through and the reply
        names the wallet as the chain spells it."""
        before, _ = await admin.balance_at(0)
        body = {"provider": admin.provider(0), "amount": "0.1", "wallet": admin.wallet.lower()}
        answer = await admin.call("POST", "/admin/fund", json=body)
        assert answer.status == 200, answer.text
        assert answer.json()["wallet"] == admin.wallet
        assert (await admin.balance_at(0))[0] == before + NEURON // 10

    @pytest.mark.parametrize("route", ["/admin/fund", "/admin/refund"])
    async def test_a_wallet_the_router_does_not_have_is_404(self, admin: Admin, route: str) -> None:
        """A well-formed address that is not one of the router's wallets: 404 wallet_not_found naming it
        and the router's wallets, and nothing is sent."""
        stranger = "0x" + "ef" * 20
        nonce, view = await admin.nonce(), await admin.view()
        body = {"provider": admin.provider(0), "amount": "1", "wallet": stranger}
        answer = await admin.call("POST", route, json=body)
        assert_error(
            answer,
            404,
            "invalid_request_error",
            f"{stranger} is not a wallet of this router; it has {admin.wallet}",
            code="wallet_not_found",
            param="wallet",
            request_id=False,
        )
        assert await admin.nonce() == nonce
        assert await admin.view() == view

    @pytest.mark.parametrize("wallet", ["0x1234", 12, ["0x" + "ab" * 20], "ab" * 20], ids=str)
    @pytest.mark.parametrize("route", ["/admin/fund", "/admin/refund"])
    async def test_a_malformed_wallet_is_400(self, admin: Admin, route: str, wallet: object) -> None:
        """A ``wallet`` that is not an address string is bad input: 400 naming the field, nothing sent."""
        nonce = await admin.nonce()
        answer = await admin.call(
            "POST", route, json={"provider": admin.provider(0), "amount": "1", "wallet": wallet}
        )
        assert_error(
            answer,
            400,
            "invalid_request_error",
            BAD_WALLET,
            code="invalid_admin_request",
            param="wallet",
            request_id=False,
        )
        assert await admin.nonce() == nonce

    async def test_refund_of_the_named_wallet(self, admin: Admin) -> None:
        """A refund naming the wallet and no providers drains every provider of that wallet."""
        answer = await admin.call("POST", "/admin/refund", json={"wallet": admin.wallet})
        assert answer.status == 200, answer.text
        assert [tx["wallet"] for tx in answer.json()["transactions"]] == [admin.wallet]
        for index in range(len(admin.served.devnet.providers)):
            assert await admin.balance_at(index) == (2 * NEURON, 2 * NEURON)


@dataclass
class TwoWallets:
    """A router of two funded wallets and an admin gateway over it; ``chain`` reads the contracts."""

    admin: Admin
    wallets: tuple[str, str]

    async def nonces(self) -> list[int]:
        eth = self.admin.chain.w3.eth
        return [int(await eth.get_transaction_count(w)) for w in self.wallets]

    async def locked(self, wallet: str, index: int) -> tuple[int, int]:
        account = await self.admin.chain.get_account(wallet, self.admin.provider(index))
        assert account is not None
        return account.balance, account.pending_refund


@pytest.fixture
async def two_wallets(gateway_devnet: Devnet) -> AsyncIterator[TwoWallets]:
    (first, first_key), (second, second_key) = [await funded_wallet(gateway_devnet) for _ in range(2)]
    config = dataclasses.replace(
        router_config(gateway_devnet, first_key), private_key=None, private_keys=(first_key, second_key)
    )
    gateway_config = GatewayConfig(port=0, api_keys=(API_KEY,), admin_keys=(ADMIN_KEY,), shutdown_timeout=0.5)
    async with (
        Router(config) as router,
        Gateway(router, gateway_config) as gateway,
        aiohttp.ClientSession() as http,
    ):
        served = Served(gateway_devnet, router, gateway.url, first, first_key, http)
        admin = Admin(served, gateway.url, await gateway_devnet.open_client())
        yield TwoWallets(admin, (first.address, second.address))


class TestSeveralWallets:
    async def test_balance_reports_each_wallet_in_config_order(self, two_wallets: TwoWallets) -> None:
        """/admin/balance has a report per wallet, in the order of the keys, each with its own ledger
        and a sub-account at every provider, as the chain has them."""
        admin = two_wallets.admin
        answer = await admin.call("GET", "/admin/balance")
        assert answer.status == 200, answer.text
        reports = answer.json()["wallets"]
        assert [r["wallet"] for r in reports] == list(two_wallets.wallets)
        providers = {p.address for p in admin.served.devnet.providers}
        for wallet, report in zip(two_wallets.wallets, reports, strict=True):
            ledger = await admin.chain.get_ledger(wallet)
            assert ledger is not None
            assert report["ledger"]["available"] == str(ledger.available_balance) == str(8 * NEURON)
            assert {a["provider"] for a in report["accounts"]} == providers
            assert all(a["balance"] == str(2 * NEURON) for a in report["accounts"])
            assert report["alerts"] == []

    async def test_providers_show_every_wallets_balance(self, two_wallets: TwoWallets) -> None:
        """Each provider's ``balances`` has both wallets, by address, each with its own sub-account."""
        answer = await two_wallets.admin.call("GET", "/admin/providers")
        assert answer.status == 200, answer.text
        for entry in answer.json()["providers"]:
            assert list(entry["balances"]) == list(two_wallets.wallets)
            for wallet, balance in entry["balances"].items():
                assert balance["provider"] == entry["id"], wallet
                assert balance["balance"] == str(2 * NEURON)

    async def test_fund_without_a_wallet_is_400_naming_both(self, two_wallets: TwoWallets) -> None:
        """With two wallets a fund must say which pays: 400 on ``wallet`` listing both, nothing sent."""
        admin, (first, second) = two_wallets.admin, two_wallets.wallets
        nonces = await two_wallets.nonces()
        answer = await admin.call("POST", "/admin/fund", json={"provider": admin.provider(0), "amount": "1"})
        assert_error(
            answer,
            400,
            "invalid_request_error",
            f"this router has 2 wallets: name the one to fund from in `wallet` ({first}, {second})",
            code="invalid_admin_request",
            param="wallet",
            request_id=False,
        )
        assert await two_wallets.nonces() == nonces

    async def test_fund_moves_money_of_the_named_wallet_only(self, two_wallets: TwoWallets) -> None:
        """A fund naming the second wallet (lower case) moves its money: its sub-account grows, the
        first wallet's does not, and only the second wallet sent a transaction."""
        admin, (first, second) = two_wallets.admin, two_wallets.wallets
        nonces = await two_wallets.nonces()
        body = {"provider": admin.provider(1), "amount": "0.5", "wallet": second.lower()}
        answer = await admin.call("POST", "/admin/fund", json=body)
        assert answer.status == 200, answer.text
        assert answer.json()["wallet"] == second
        assert await two_wallets.locked(second, 1) == (2 * NEURON + NEURON // 2, 0)
        assert await two_wallets.locked(first, 1) == (2 * NEURON, 0)
        after = await two_wallets.nonces()
        assert (after[0] - nonces[0], after[1] - nonces[1]) == (0, 1)

    async def test_refund_of_one_wallet_leaves_the_other(self, two_wallets: TwoWallets) -> None:
        """A refund naming the first wallet and a provider drains only that wallet's sub-account there."""
        admin, (first, second) = two_wallets.admin, two_wallets.wallets
        body = {"providers": [admin.provider(2)], "wallet": first}
        answer = await admin.call("POST", "/admin/refund", json=body)
        assert answer.status == 200, answer.text
        assert [tx["wallet"] for tx in answer.json()["transactions"]] == [first]
        assert await two_wallets.locked(first, 2) == (2 * NEURON, 2 * NEURON)
        assert await two_wallets.locked(second, 2) == (2 * NEURON, 0)

    async def test_refund_without_a_wallet_covers_every_wallet(self, two_wallets: TwoWallets) -> None:
        """A refund of a provider naming no wallet drains it for each wallet, one transaction each, and
        the balance view shows it draining in both reports."""
        admin, wallets = two_wallets.admin, two_wallets.wallets
        answer = await admin.call("POST", "/admin/refund", json={"providers": [admin.provider(0)]})
        assert answer.status == 200, answer.text
        assert [tx["wallet"] for tx in answer.json()["transactions"]] == list(wallets)
        for wallet in wallets:
            assert await two_wallets.locked(wallet, 0) == (2 * NEURON, 2 * NEURON)
            assert await two_wallets.locked(wallet, 1) == (2 * NEURON, 0)
        reports = (await admin.call("GET", "/admin/balance")).json()["wallets"]
        for report in reports:
            assert account_of(report, admin.provider(0))["funding"] == "draining"
