"""The session-wide secrets check itself (tests/conftest.py): it sees each kind of log line and masks what
it reports. Each test here leaks on purpose, reads the findings, and then takes them back so that the
check does not fail it."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from router.chain.wallet import Wallet
from router.devnet import dev_private_key
from router.observability.logging import configure_logging
from tests.conftest import SECRET_WATCH, SecretFinding

API_KEY = "sk-test-" + "0123456789abcdef" * 2
TOKEN = "app-sk-" + "eyJhZGRyZXNzIjoiMHgxMjM0In0" * 2


@pytest.fixture
def leaks() -> Iterator[list[SecretFinding]]:
    """The findings made during the test, removed from the session's list afterwards."""
    before = len(SECRET_WATCH.findings)
    found: list[SecretFinding] = []
    yield found
    del SECRET_WATCH.findings[before:]


def taken(leaks: list[SecretFinding]) -> list[SecretFinding]:
    start = len(leaks)
    mine = [f for f in SECRET_WATCH.findings if f not in leaks]
    leaks.extend(mine)
    return leaks[start:]


def test_a_structlog_event_with_a_wallet_key_is_found_and_masked(leaks: list[SecretFinding]) -> None:
    """A wallet made in the test registers its key: an event holding it (in either case, without 0x) is
    a finding that names the test and the event, and shows the key only as a label."""
    key = "0x" + os.urandom(32).hex()
    wallet = Wallet(key)
    structlog.get_logger("leaky").warning("oops", detail=f"key={key[2:].upper()}")
    (finding,) = taken(leaks)
    assert finding.test.endswith("test_a_structlog_event_with_a_wallet_key_is_found_and_masked")
    assert finding.where == "structlog event 'oops'"
    assert key[2:] not in finding.excerpt.lower()
    assert f"<wallet key of {wallet.address}>" in finding.excerpt


def test_stdlib_records_and_captured_events_are_checked(leaks: list[SecretFinding]) -> None:
    """A library's record carrying an anvil key, and an event a test captures with ``capture_logs``
    carrying a session token, are findings too."""
    logging.getLogger("aiohttp.server").warning("bad header: %s", dev_private_key(1))
    with capture_logs() as events:
        structlog.get_logger("leaky").info("minted", token=TOKEN)
    assert len(events) == 1
    found = taken(leaks)
    assert [f.where for f in found] == [
        "stdlib log record aiohttp.server:WARNING",
        "captured structlog event 'minted'",
    ]
    assert "<anvil key 1>" in found[0].excerpt
    assert TOKEN not in found[1].excerpt


def test_a_redacted_line_is_no_finding(leaks: list[SecretFinding]) -> None:
    """With logging configured as ``zg-router serve`` does (the key among its secrets), the line written is
    redacted: what is checked is that line, so nothing is found."""
    before = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging("info", format="json", secrets=[API_KEY], stream=io.StringIO())
        structlog.get_logger("careful").info("configured", detail=f"key {API_KEY}")
        logging.getLogger("aiohttp.server").warning("header %s", API_KEY)
    finally:
        structlog.configure(**before)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
    assert taken(leaks) == []
