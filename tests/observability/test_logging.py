"""The log set-up without a devnet: the redaction processor, ``configure_logging``'s formats and levels,
and the lines ``LogObserver`` writes.

``configure_logging`` configures structlog globally; the ``restore_structlog`` fixture puts the previous
configuration back (and un-caches any logger assembled meanwhile) so that other test files are unaffected.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from router import core as gateway_app
from router.chain.session import mint_session_token
from router.chain.wallet import Wallet
from router.errors import ConfigError
from router.observability.events import AttemptFailed, RequestFinished, Verified, WatcherProgress
from router.observability.logging import REDACTED, LogObserver, Redactor, configure_logging

KEY = "0x" + "4f3edf983ac636a65a842ce7c78d9aa706d3b113bce9c46f30d7d21715b23b1d"
API_KEY = "sk-gw-" + "Zx81Qa0Lm3" * 3
PROVIDER = "0x" + "ab12" * 10
TX_HASH = "0x" + "9e" * 32
_LAZY_PROXY = type(structlog.get_logger("probe-type"))


def uncache_loggers() -> None:
    """Forget every logger that module-level proxies in ``router`` assembled and cached (with
    ``cache_logger_on_first_use``) under a configuration a test installed."""
    for name, module in list(sys.modules.items()):
        if name == "router" or name.startswith("router."):
            for value in list(vars(module).values()):
                if isinstance(value, _LAZY_PROXY) and "bind" in vars(value):
                    del value.bind


@contextmanager
def restored_structlog() -> Iterator[None]:
    """structlog's configuration as it was before, whatever was configured inside; and the root stdlib
    logger's handlers and level, which ``configure_logging`` sets too."""
    saved = structlog.get_config()
    was_configured = structlog.is_configured()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        structlog.reset_defaults()
        if was_configured:
            structlog.configure(**saved)
        uncache_loggers()
        structlog.contextvars.clear_contextvars()
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    with restored_structlog():
        yield


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines_of(stream)]


def fail(message: str) -> None:
    raise ValueError(message)


def redact(secrets: list[str | None], **event: Any) -> dict[str, Any]:
    return dict(Redactor(secrets)(None, "info", dict(event)))


class TestRedactor:
    def test_a_secret_is_blanked_wherever_it_is_in_a_string(self) -> None:
        secret = "hunter2-is-a-long-secret"
        out = redact(
            [secret],
            event=f"{secret} at the start",
            middle=f"a{secret}b",
            end=f"at the end {secret}",
            repeated=f"{secret}{secret} and {secret}",
            alone=secret,
        )
        assert out == {
            "event": f"{REDACTED} at the start",
            "middle": f"a{REDACTED}b",
            "end": f"at the end {REDACTED}",
            "repeated": f"{REDACTED}{REDACTED} and {REDACTED}",
            "alone": REDACTED,
        }

    @pytest.mark.parametrize(
        "shown",
        [KEY, KEY[2:], "0X" + KEY[2:], KEY.upper().replace("0X", "0x"), KEY[2:].upper()],
        ids=["with-0x", "bare", "with-0X", "upper-hex", "bare-upper-hex"],
    )
    def test_a_hex_key_is_blanked_with_or_without_its_prefix_in_any_case(self, shown: str) -> None:
        out = redact([KEY], event="loaded", detail=f"bad key {shown}: rejected")
        assert KEY[2:].lower() not in out["detail"].lower(), out
        assert REDACTED in out["detail"]
        assert out["detail"].startswith("bad key ")
        assert out["detail"].endswith(": rejected")

    def test_values_in_nested_containers_are_blanked(self) -> None:
        out = redact(
            [API_KEY],
            event="nested",
            outer={"inner": [API_KEY, ("keep", f"key={API_KEY}")], "n": 3},
            listed=[{"deep": [[API_KEY]]}],
        )
        assert out["outer"] == {"inner": [REDACTED, ["keep", f"key={REDACTED}"]], "n": 3}
        assert out["listed"] == [{"deep": [[REDACTED]]}]

    @pytest.mark.parametrize(
        "name", ["authorization", "Authorization", "API_KEY", "Private_Key", "session_token", "admin_key"]
    )
    @pytest.mark.parametrize("value", ["plain words", 12345, None, {"a": 1}, ["x"]], ids=repr)
    def test_fields_named_like_a_secret_are_blanked_whatever_they_hold(self, name: str, value: Any) -> None:
        out = redact([], event="e", **{name: value, "headers": {name.upper(): value}})
        assert out[name] == REDACTED
        assert out["headers"] == {name.upper(): REDACTED}

    def test_session_tokens_and_bearer_credentials_are_blanked_in_any_string(self) -> None:
        wallet = Wallet(KEY)
        token = mint_session_token(wallet, PROVIDER, generation=0, now_ms=1_700_000_000_000)
        bare = token.authorization.removeprefix("Bearer ")
        body = bare.removeprefix("app-sk-")
        out = redact(
            [],
            event=f"sent {token.authorization} to {PROVIDER}",
            bare=f"token={bare};",
            lower="authorization: bearer sk-some-opaque-key",
            upper="BEARER xyz123 then more",
            tab="Bearer\tabc.def",
            fake="app-sk-AAAA+/==",
        )
        assert out["event"] == f"sent {REDACTED} to {PROVIDER}"
        assert out["bare"] == f"token={REDACTED};"
        assert out["lower"] == f"authorization: {REDACTED}"
        assert out["upper"] == f"{REDACTED} then more"
        assert out["tab"] == REDACTED
        assert out["fake"] == REDACTED
        assert body[:24] not in repr(out)
        assert body[-24:] not in repr(out)

    def test_short_secrets_and_none_are_ignored(self) -> None:
        text = "a short word, seven77 letters, and eight888 too"
        out = redact(["short", "seven77", None, "", "eight888"], event=text)
        assert out["event"] == f"a short word, seven77 letters, and {REDACTED} too"

    def test_fields_that_are_not_secret_survive_unchanged(self) -> None:
        fields: dict[str, Any] = {
            "event": "funded",
            "provider": PROVIDER,
            "tx": TX_HASH,
            "amount": 10**18,
            "block": 7,
            "latency_ms": 12.5,
            "error": None,
            "ok": True,
            "models": ["m1", "m2"],
            "detail": f"provider {PROVIDER} answered 503 for tx {TX_HASH}",
        }
        assert redact([KEY, API_KEY, None], **fields) == fields
        # A tx hash has a private key's shape: it is blanked only when it is the secret itself.
        assert redact([TX_HASH], **fields)["tx"] == REDACTED


class TestConfigureLogging:
    def test_json_writes_one_object_a_line(self, restore_structlog: None) -> None:
        stream = io.StringIO()
        configure_logging("info", format="json", stream=stream)
        log = structlog.get_logger("t")
        log.info("first", n=1, provider=PROVIDER)
        log.warning("second", detail="a\nb")
        first, second = json_lines(stream)
        assert first["event"] == "first"
        assert first["level"] == "info"
        assert first["n"] == 1
        assert first["provider"] == PROVIDER
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", first["timestamp"]), first
        assert second["level"] == "warning"
        assert second["detail"] == "a\nb"

    def test_logfmt_writes_key_value_pairs(self, restore_structlog: None) -> None:
        stream = io.StringIO()
        configure_logging("info", format="logfmt", stream=stream, secrets=[API_KEY])
        structlog.get_logger("t").info("hello", n=1, provider=PROVIDER, key=API_KEY)
        (line,) = lines_of(stream)
        assert re.match(r"^timestamp=\S+ level=info event=hello ", line), line
        assert " n=1" in line
        assert f" provider={PROVIDER}" in line
        assert f"key={REDACTED}" in line
        assert API_KEY not in line
        assert not line.startswith("{")

    def test_console_writes_plain_text_to_a_non_terminal(self, restore_structlog: None) -> None:
        stream = io.StringIO()
        configure_logging("info", format="console", stream=stream, secrets=[API_KEY])
        structlog.get_logger("t").info("hello there", n=1, key=API_KEY)
        (line,) = lines_of(stream)
        assert "\x1b[" not in line
        assert "hello there" in line
        assert "n=1" in line
        assert "info" in line
        assert API_KEY not in line
        assert REDACTED in line
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)

    def test_auto_is_json_off_a_terminal_and_console_on_one(self, restore_structlog: None) -> None:
        stream = io.StringIO()
        configure_logging("info", format="auto", stream=stream)
        structlog.get_logger("t").info("auto")
        assert [line["event"] for line in json_lines(stream)] == ["auto"]
        tty = TtyStream()
        configure_logging("info", format="auto", stream=tty)
        structlog.get_logger("t").info("on a terminal")
        (line,) = lines_of(tty)
        assert "on a terminal" in line
        assert "\x1b[" in line
        assert not line.startswith("{")

    def test_stderr_is_the_default_stream(
        self, restore_structlog: None, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging("info", format="json")
        structlog.get_logger("t").info("to stderr")
        captured = capsys.readouterr()
        assert captured.out == ""
        assert json.loads(captured.err)["event"] == "to stderr"

    @pytest.mark.parametrize(("level", "format"), [("verbose", "json"), ("info", "xml"), ("", "json")])
    def test_unknown_level_or_format_is_a_config_error_naming_it(
        self, restore_structlog: None, level: str, format: str
    ) -> None:
        before = structlog.get_config()
        with pytest.raises(ConfigError) as caught:
            configure_logging(level, format=format, stream=io.StringIO())
        bad = format if level == "info" else level
        assert repr(bad) in str(caught.value)
        assert structlog.get_config() == before

    @pytest.mark.parametrize(
        ("level", "shown"),
        [
            ("debug", ["d", "i", "w", "e"]),
            ("INFO", ["i", "w", "e"]),
            ("Warning", ["w", "e"]),
            ("error", ["e"]),
        ],
    )
    def test_the_level_filters(self, restore_structlog: None, level: str, shown: list[str]) -> None:
        stream = io.StringIO()
        configure_logging(level, format="json", stream=stream)
        log = structlog.get_logger("t")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        assert [line["event"] for line in json_lines(stream)] == shown

    def test_secrets_are_blanked_in_fields_context_and_exception_text(self, restore_structlog: None) -> None:
        stream = io.StringIO()
        configure_logging("debug", format="json", stream=stream, secrets=[KEY, API_KEY, None])
        log = structlog.get_logger("t")
        with structlog.contextvars.bound_contextvars(request_id="req-1", who=f"key {API_KEY}"):
            log.info("bound", detail=f"wallet {KEY[2:]}")
        try:
            fail(f"cannot use {KEY} or {API_KEY}")
        except ValueError:
            log.exception("failed", provider=PROVIDER)
        text = stream.getvalue()
        bound, failed = json_lines(stream)
        assert bound["request_id"] == "req-1"
        assert bound["who"] == f"key {REDACTED}"
        assert bound["detail"] == f"wallet {REDACTED}"
        assert failed["level"] == "error"
        assert failed["provider"] == PROVIDER
        assert "Traceback" in failed["exception"]
        assert "ValueError: cannot use" in failed["exception"]
        assert failed["exception"].count(REDACTED) >= 2
        for secret in (KEY[2:], API_KEY):
            assert secret not in text

    @pytest.mark.parametrize("format", ["json", "logfmt", "console"])
    def test_secrets_inside_non_string_values_are_not_rendered(
        self, restore_structlog: None, format: str
    ) -> None:
        """Whatever a renderer turns into text (bytes, an exception object, a set) goes through the
        redactor too: a secret never reaches the stream by way of ``repr``."""
        stream = io.StringIO()
        configure_logging("info", format=format, stream=stream, secrets=[API_KEY])
        structlog.get_logger("t").warning(
            "odd values", raw=API_KEY.encode(), error=ValueError(f"bad {API_KEY}"), keys={API_KEY}
        )
        text = stream.getvalue()
        assert "odd values" in text
        assert API_KEY not in text, text


LIBRARY_LOGGERS = ["aiohttp.server", "aiohttp.access", "aiohttp.client", "asyncio", "web3.manager", ""]


class TestLibraryLoggers:
    """stdlib loggers (the libraries': aiohttp's parser and access logs, asyncio, web3, the root) write
    through the same processors as ours: same format, same redaction, one line a record."""

    @pytest.mark.parametrize("name", LIBRARY_LOGGERS)
    def test_a_record_is_one_redacted_json_line_naming_its_logger(
        self, restore_structlog: None, name: str
    ) -> None:
        stream = io.StringIO()
        configure_logging("info", format="json", stream=stream, secrets=[API_KEY])
        with structlog.contextvars.bound_contextvars(request_id="req-9"):
            logging.getLogger(name).warning("bad header:\n  b'Authorization: %s\\x00'\n  ^", API_KEY)
        (line,) = json_lines(stream)
        assert line["event"] == f"bad header:\n  b'Authorization: {REDACTED}\\x00'\n  ^"
        assert line["logger"] == (name or "root")
        assert line["level"] == "warning"
        assert line["request_id"] == "req-9"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"]), line
        assert API_KEY not in stream.getvalue()

    @pytest.mark.parametrize("format", ["json", "logfmt", "console"])
    def test_a_traceback_is_redacted(self, restore_structlog: None, format: str) -> None:
        stream = io.StringIO()
        configure_logging("info", format=format, stream=stream, secrets=[KEY])
        try:
            fail(f"Bearer sk-anything-at-all and {KEY}")
        except ValueError:
            logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1")
        text = stream.getvalue()
        assert "Error handling request from 127.0.0.1" in text
        assert "ValueError" in text
        assert REDACTED in text
        for secret in (KEY[2:], "sk-anything-at-all"):
            assert secret not in text, text
        if format != "console":
            assert len(lines_of(stream)) == 1, text
        if format == "json":
            (line,) = json_lines(stream)
            assert line["exception"].startswith("Traceback (most recent call last):")

    def test_records_follow_the_configured_level(self, restore_structlog: None) -> None:
        stream = io.StringIO()
        configure_logging("warning", format="json", stream=stream)
        logging.getLogger("web3.manager").info("hidden")
        logging.getLogger("asyncio").error("shown")
        assert [line["event"] for line in json_lines(stream)] == ["shown"]

    def test_configuring_again_replaces_the_handler(self, restore_structlog: None) -> None:
        first, second = io.StringIO(), io.StringIO()
        configure_logging("info", format="json", stream=first)
        configure_logging("info", format="json", stream=second)
        logging.getLogger("aiohttp.server").warning("once")
        assert first.getvalue() == ""
        assert [line["event"] for line in json_lines(second)] == ["once"]


def finished(**changes: Any) -> RequestFinished:
    values: dict[str, Any] = {
        "request_id": "req-42",
        "endpoint": "/chat/completions",
        "model": "m",
        "status": 200,
        "provider": PROVIDER,
        "attempts": 2,
        "cost": 12345,
        "latency": 0.12345,
        "ttft": 0.0421,
        "stream": True,
        "queued": 0.0015,
        "prompt_tokens": 11,
        "completion_tokens": 22,
    }
    return RequestFinished(**{**values, **changes})


class TestLogObserver:
    def test_one_request_line_per_finished_request(self, restore_structlog: None) -> None:
        stream = io.StringIO()
        configure_logging("info", format="json", stream=stream)
        observer = LogObserver()
        observer(finished())
        observer(WatcherProgress(wallet="0x70997970C51812dc3A010C7d01b50e20d17dc79C", block=5, head=6))
        observer(
            finished(
                request_id="req-43",
                status=404,
                provider=None,
                ttft=None,
                cost=None,
                prompt_tokens=None,
                completion_tokens=None,
                error="no such model",
            )
        )
        first, second = json_lines(stream)
        assert first["event"] == "request"
        assert first["level"] == "info"
        expected = {
            "request_id": "req-42",
            "provider": PROVIDER,
            "attempts": 2,
            "status": 200,
            "latency_ms": 123.45,
            "ttft_ms": 42.1,
            "cost": 12345,
            "queued_ms": 1.5,
            "prompt_tokens": 11,
            "completion_tokens": 22,
            "stream": True,
            "model": "m",
        }
        assert {k: first[k] for k in expected} == expected
        assert second["request_id"] == "req-43"
        assert second["status"] == 404
        assert second["provider"] is None
        assert second["ttft_ms"] is None
        assert second["cost"] is None
        assert second["error"] == "no such model"

    def test_a_failed_attempt_is_a_warning(self, restore_structlog: None) -> None:
        stream = io.StringIO()
        configure_logging("warning", format="json", stream=stream)
        observer = LogObserver()
        observer(finished())  # info: filtered out at warning
        observer(AttemptFailed("req-42", PROVIDER, "unhealthy", 503, "Service Unavailable"))
        (line,) = json_lines(stream)
        assert line["event"] == "attempt failed"
        assert line["level"] == "warning"
        assert (line["request_id"], line["provider"], line["status"]) == ("req-42", PROVIDER, 503)
        assert line["verdict"] == "unhealthy"
        assert line["detail"] == "Service Unavailable"

    def test_a_failed_verification_is_a_warning_and_a_verified_one_info(
        self, restore_structlog: None
    ) -> None:
        stream = io.StringIO()
        configure_logging("info", format="json", stream=stream)
        observer = LogObserver()
        observer(Verified("req-1", PROVIDER, "chat-1", "verified", "signed by the TEE signer"))
        observer(Verified("req-2", PROVIDER, "chat-2", "failed", "signed by 0xabc"))
        ok, bad = json_lines(stream)
        assert (ok["event"], ok["level"], ok["outcome"], ok["chat_id"]) == (
            "verification",
            "info",
            "verified",
            "chat-1",
        )
        assert (bad["level"], bad["outcome"], bad["request_id"]) == ("warning", "failed", "req-2")


def test_restoring_undoes_the_configuration_and_the_cached_loggers() -> None:
    """What ``restore_structlog`` relies on: after ``configure_logging`` (which caches loggers on first use)
    a module-level logger in ``router`` logs through the earlier configuration again."""
    before = structlog.get_config()
    stream = io.StringIO()
    with restored_structlog():
        configure_logging("info", format="json", stream=stream)
        gateway_app._log.info("inside")
        assert "bind" in vars(gateway_app._log)
    assert structlog.get_config() == before
    assert "bind" not in vars(gateway_app._log)
    with capture_logs() as events:
        gateway_app._log.info("outside")
    assert [line["event"] for line in json_lines(stream)] == ["inside"]
    assert [event["event"] for event in events] == ["outside"]


@pytest.mark.usefixtures("restore_structlog")
def test_json_lines_hold_what_orjson_cannot_write() -> None:
    """Integers past 64 bits (wei amounts can be), keys that are not text and objects of no JSON type
    still make one JSON line each, with the integer exact and the object as its repr."""
    out = io.StringIO()
    configure_logging("info", format="json", stream=out)

    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    log = structlog.get_logger("router.test")
    log.info("big", amount=10**30, by_block={7: "seven"})
    log.info("odd", thing=Opaque())
    big, odd = json_lines(out)
    assert big["amount"] == 10**30
    assert big["by_block"] == {"7": "seven"}
    assert odd["thing"] == "<opaque>"
