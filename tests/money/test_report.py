"""The money views on their own: one wallet's balance report, and each wallet's balance at a provider."""

from __future__ import annotations

from router.money.report import balance_report, provider_balances
from router.pool.accounting import Accounts, FundingState
from tests.support import NEURON

WALLET = "0x70997970C51812dc3A010C7d01b50e20d17dc79C"
OTHER_WALLET = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
PROVIDER = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"
OTHER_PROVIDER = "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc"


def book(*funded: str) -> Accounts:
    """A book with 2 0G at each of ``funded``."""
    accounts = Accounts()
    for provider in funded:
        accounts.observe(provider, position=(7, 0), exists=True, balance=2 * NEURON, pending_refund=0)
    return accounts


def test_a_funding_alert_names_its_wallet() -> None:
    """Each alert of a wallet's report names that wallet next to the provider, so an alert read apart
    from its report (or collected across wallets) still says whose ledger is short."""
    accounts = book(PROVIDER, OTHER_PROVIDER)
    low = accounts.of(OTHER_PROVIDER)
    low.funding, low.funding_detail = FundingState.LEDGER_LOW, "deposit more to the ledger"
    report = balance_report(accounts, WALLET, 41)
    assert report["wallet"] == WALLET
    assert report["watcher_block"] == 41
    detail = "deposit more to the ledger"
    assert report["alerts"] == [
        {"wallet": WALLET, "provider": OTHER_PROVIDER, "state": "ledger_low", "detail": detail}
    ]
    assert [a["funding"] for a in report["accounts"]] == ["ok", "ledger_low"]


def test_each_wallet_has_an_entry_at_every_provider() -> None:
    """A provider's balances name every wallet in the order given: its account view where it holds a
    sub-account, None where it holds none."""
    wallets = {WALLET: book(PROVIDER), OTHER_WALLET: book(PROVIDER, OTHER_PROVIDER)}
    at_first = provider_balances(PROVIDER, wallets)
    assert list(at_first) == [WALLET, OTHER_WALLET]
    assert all(view is not None and view["balance"] == str(2 * NEURON) for view in at_first.values())
    at_second = provider_balances(OTHER_PROVIDER.lower(), wallets)
    assert at_second[WALLET] is None
    other = at_second[OTHER_WALLET]
    assert other is not None
    assert (other["provider"], other["available"]) == (OTHER_PROVIDER, str(NEURON))


def test_no_wallet_no_balances() -> None:
    """A router without wallets (static upstreams only) shows an empty mapping, not a null."""
    assert provider_balances(PROVIDER, {}) == {}
