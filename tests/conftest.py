"""Shared fixtures: one devnet per test session, chain state reverted around each test that asks, and the
session-wide check that no secret reaches a log line or a response body."""

from __future__ import annotations

import logging
import os
import re
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import structlog
import structlog._base
import structlog.testing

from router.chain.client import ChainClient
from router.chain.devtools import set_balance
from router.chain.wallet import Wallet
from router.devnet import Devnet, DevnetConfig, dev_private_key
from router.devnet.node_tools import NodeModules, find_node_modules
from tests.support import DEVNET_PROVIDERS, NEURON


@pytest.fixture(scope="session")
def node_modules() -> NodeModules:
    return find_node_modules()


@pytest.fixture(scope="session")
async def devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    # No settlement cadence: a test that wants a settlement asks for one, so no background transaction
    # races a test's own writes or the snapshot reverts between tests.
    config = DevnetConfig(providers=DEVNET_PROVIDERS, settle_interval=None)
    async with Devnet(config, node_modules) as net:
        yield net


@pytest.fixture
async def fresh_devnet(devnet: Devnet) -> AsyncIterator[Devnet]:
    """The session devnet, returned to its starting state after the test."""
    snapshot = await devnet.snapshot()
    yield devnet
    await devnet.revert(snapshot)


@pytest.fixture
async def new_wallet_client(fresh_devnet: Devnet) -> ChainClient:
    """A client for a new wallet holding 1000 0G and no ledger."""
    wallet = Wallet("0x" + os.urandom(32).hex())
    await set_balance(fresh_devnet.owner, wallet.address, 1000 * NEURON)
    return await fresh_devnet.open_client(wallet)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client session for the test."""
    async with aiohttp.ClientSession() as session:
        yield session


# -- the session-wide secrets check ---------------------------------------------------------------------
#
# No secret may reach a log line or a response body anywhere in the suite. Every structlog event is checked
# as it leaves the processor chain (what would be written: after the redaction processor when a test has
# configured logging as ``zg-router serve`` does, raw otherwise), every event a test captures with
# ``capture_logs`` as captured (raw events carry no secret either), every stdlib record as its handler would
# write it, and every body read by ``tests.gateway.support.send``. The secrets: the devnet's anvil keys,
# every wallet key a test creates, session tokens, and the test suites' API and admin keys (by shape). A
# finding fails the test it happened in (at teardown), or the session when it happened between tests.

_TOKEN_SHAPES = re.compile(
    r"app-sk-[A-Za-z0-9+/=_-]{16,}"
    r"|\b(?:sk|zg-admin|gw-key|admin-key)-[A-Za-z0-9_-]*[0-9][A-Za-z0-9_-]{14,}"
)
_DEV_KEY_INDEXES = (*range(64), *range(1000, 1064))
# Runs of hex long enough to hold a private key: each 64-digit window of one is looked up, so a check costs
# the length of the text, not the number of keys the session has made (hundreds: one wallet per test).
_HEX_RUN = re.compile(r"[0-9a-fA-F]{64,}")


@dataclass
class SecretFinding:
    test: str
    where: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.test}: a secret in {self.where}: {self.excerpt}"


class SecretWatch:
    """The secrets to look for and what was found where. ``check(text, where)`` from any thread."""

    def __init__(self) -> None:
        # Hex keys, lower case and without 0x: the same key in any case, with or without its prefix.
        self._keys: dict[str, str] = {}
        self.findings: list[SecretFinding] = []
        self.test = "<between tests>"

    def add_key(self, private_key: str, label: str) -> None:
        bare = private_key.strip().lower().removeprefix("0x")
        if len(bare) == 64:
            self._keys.setdefault(bare, label)

    def check(self, text: str, where: str) -> None:
        lowered = text.lower()
        keys = self._keys
        found = {
            (window, keys[window])
            for run in _HEX_RUN.finditer(lowered)
            for offset in range(run.start(), run.end() - 63)
            if (window := lowered[offset : offset + 64]) in keys
        }
        shapes = list(_TOKEN_SHAPES.finditer(text))
        if not found and not shapes:
            return
        start = min(lowered.find(bare) for bare, _ in found) if found else shapes[0].start()
        masked = text
        for bare, label in found:
            masked = re.sub(f"(?i)(?:0x)?{bare}", f"<{label}>", masked)
        masked = _TOKEN_SHAPES.sub(lambda m: f"<{m[0][:7]}…>", masked)
        excerpt = masked[max(0, start - 120) : start + 160].replace("\n", "\\n")
        self.findings.append(SecretFinding(self.test, where, excerpt))


SECRET_WATCH = SecretWatch()


def watch_text(text: str, where: str) -> None:
    """Check ``text`` (a response body, a child process's log) for secrets; a finding fails the test."""
    SECRET_WATCH.check(text, where)


class _RecordWatch(logging.Handler):
    """On the root logger: each stdlib record as the suite's configured handler would format it (the
    redacting one ``configure_logging`` installs), or raw when there is none."""

    def emit(self, record: logging.LogRecord) -> None:
        formatter = next(
            (h.formatter for h in logging.getLogger().handlers if type(h).__name__ == "_StdlibHandler"),
            None,
        )
        try:
            text = formatter.format(record) if formatter is not None else self._raw(record)
        except Exception:
            text = self._raw(record)
        SECRET_WATCH.check(text, f"stdlib log record {record.name}:{record.levelname}")

    @staticmethod
    def _raw(record: logging.LogRecord) -> str:
        parts = [record.getMessage()]
        if record.exc_info:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
        if record.stack_info:
            parts.append(record.stack_info)
        return "\n".join(parts)


@pytest.fixture(scope="session", autouse=True)
def _secret_watch_installed() -> Iterator[SecretWatch]:
    """Taps structlog's processor chain, ``capture_logs``, the root logger and wallet creation for the
    whole session."""
    for index in _DEV_KEY_INDEXES:
        SECRET_WATCH.add_key(dev_private_key(index), f"anvil key {index}")
    with pytest.MonkeyPatch.context() as patch:
        process_event = structlog._base.BoundLoggerBase._process_event
        capture = structlog.testing.LogCapture.__call__
        wallet_init = Wallet.__init__

        def tapped_process_event(self: Any, method: str, event: str | None, kw: dict[str, Any]) -> Any:
            args, kwargs = process_event(self, method, event, kw)
            SECRET_WATCH.check(f"{args!r} {kwargs!r}", f"structlog event {event!r}")
            return args, kwargs

        def tapped_capture(self: Any, logger: Any, method: str, event_dict: Any) -> Any:
            SECRET_WATCH.check(repr(event_dict), f"captured structlog event {event_dict.get('event')!r}")
            return capture(self, logger, method, event_dict)

        def recorded_wallet(self: Wallet, private_key: str) -> None:
            wallet_init(self, private_key)
            SECRET_WATCH.add_key(private_key, f"wallet key of {self.address}")

        patch.setattr(structlog._base.BoundLoggerBase, "_process_event", tapped_process_event)
        patch.setattr(structlog.testing.LogCapture, "__call__", tapped_capture)
        patch.setattr(Wallet, "__init__", recorded_wallet)
        root = logging.getLogger()
        handler, level = _RecordWatch(logging.INFO), root.level
        root.addHandler(handler)
        # INFO, as ``zg-router serve`` logs by default: records below the root's WARNING are made too.
        root.setLevel(min(level, logging.INFO))
        try:
            yield SECRET_WATCH
        finally:
            root.removeHandler(handler)
            root.setLevel(level)


@pytest.fixture(autouse=True)
def _no_secret_leaked(request: pytest.FixtureRequest, _secret_watch_installed: SecretWatch) -> Iterator[None]:
    """Fails the test (at teardown) that logged or answered a secret, naming the place, secret masked."""
    watch = _secret_watch_installed
    watch.test = request.node.nodeid
    before = len(watch.findings)
    yield
    watch.test = "<between tests>"
    mine = [f for f in watch.findings[before:] if f.test == request.node.nodeid]
    if mine:
        shown = "\n".join(f"  {f.where}: {f.excerpt}" for f in mine[:10])
        pytest.fail(f"{len(mine)} secret(s) leaked in this test:\n{shown}", pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    findings = SECRET_WATCH.findings
    if findings:
        terminalreporter.section("secrets in logs or response bodies")
        for finding in findings[:50]:
            terminalreporter.line(str(finding))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if any(f.test == "<between tests>" for f in SECRET_WATCH.findings) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
