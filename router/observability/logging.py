"""structlog set-up, the redaction processor, and the observer that turns router events into log lines.

``configure_logging`` is called by the CLI only; importing ``router`` configures nothing. Events carry no
secrets and nothing here logs request bodies or headers; the redaction processor is the second line, for
what a bug or a third-party message might still carry (an exception's text, say).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from router.errors import ConfigError, clipped
from router.observability.events import (
    AttemptFailed,
    BackgroundError,
    BreakerChanged,
    Event,
    Funded,
    FundingFailed,
    LeaderChanged,
    PoolRefreshed,
    RequestFinished,
    RpcFailed,
    Settled,
    SettlementRejected,
    SharedModeChanged,
    Verified,
)

LOG_FORMATS = ("auto", "json", "console", "logfmt")
REDACTED = "[redacted]"
# Field names whose values are secret whatever they hold.
SECRET_FIELDS = frozenset(
    {
        "authorization",
        "api_key",
        "api_keys",
        "admin_key",
        "private_key",
        "session_token",
        "password",
        "secret",
    }
)
# Values with nothing to blank in them.
_PLAIN = frozenset({int, float, bool})
# Session tokens (protocol.md §3) and bearer credentials, wherever they turn up in a string.
_TOKEN = re.compile(r"app-sk-[A-Za-z0-9+/=_-]+|(?i:bearer)\s+\S+")
_HEX = re.compile(r"[0-9a-fA-F]+")
# A value shorter than this is not treated as a secret to search for: it would blank out ordinary words.
_MIN_SECRET = 8


def configure_logging(
    level: str = "info",
    *,
    format: str = "auto",
    secrets: Iterable[str | None] = (),
    stream: TextIO | None = None,
) -> None:
    """Log to ``stream`` (stderr) at ``level`` in ``format``: ``json`` (one object a line, for machines),
    ``console`` (aligned and coloured on a terminal, for people), ``logfmt`` (key=value), or ``auto``
    (console on a terminal, JSON otherwise). Every line passes the redaction processor first, which
    blanks ``secrets`` (the wallet key, API keys) wherever they appear. Records of stdlib loggers (the
    libraries') take the same path, through a handler on the root logger set to ``level``.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ConfigError(f"unknown log level {level!r}")
    if format not in LOG_FORMATS:
        raise ConfigError(f"unknown log format {format!r}: use one of {', '.join(LOG_FORMATS)}")
    out = stream or sys.stderr
    if format == "auto":
        format = "console" if out.isatty() else "json"
    renderer: structlog.typing.Processor
    if format == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_json_line)
    elif format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.LogfmtRenderer(
            key_order=["timestamp", "level", "event"], drop_missing=True
        )
    redactor = Redactor(secrets)
    stamp: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*stamp, structlog.processors.format_exc_info, redactor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    _route_stdlib(numeric, out, stamp, [structlog.processors.format_exc_info, redactor, renderer])


def _json_line(value: Any, **options: Any) -> str:
    """A log line's JSON through orjson (a request's line costs a third of the standard library's); the
    standard library for what orjson will not write (integers past 64 bits, keys that are not text).
    ``options`` holds structlog's ``default`` for values neither can (their repr)."""
    try:
        return orjson.dumps(value, default=options.get("default")).decode()
    except TypeError:
        return json.dumps(value, **options)


class _StdlibHandler(logging.StreamHandler[TextIO]):
    """The root handler ``configure_logging`` installs (and replaces when called again)."""


def _route_stdlib(
    level: int, out: TextIO, stamp: list[structlog.typing.Processor], tail: list[structlog.typing.Processor]
) -> None:
    """Every stdlib logger (aiohttp's parser and access logs, asyncio, web3, ...) through the same
    processors: one line per record in the same format, its message, arguments and traceback redacted."""
    handler = _StdlibHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*stamp, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class Redactor:
    """A structlog processor that blanks secrets: fields named like one (``SECRET_FIELDS``), session
    tokens and bearer credentials, and the given ``secrets`` (a hex key in either case, with or without
    its ``0x``), wherever they appear: in strings, nested dicts, lists and sets, and in the text of any
    other value (an exception, bytes)."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        words: set[str] = set()
        needles = {"app-sk-", "bearer"}
        for secret in secrets:
            if secret and len(secret) >= _MIN_SECRET:
                bare = secret[2:] if secret[:2].lower() == "0x" else secret
                # Hex is the same key in any case; other secrets are matched exactly.
                words.add(f"(?i:(?:0x)?{re.escape(bare)})" if _HEX.fullmatch(bare) else re.escape(secret))
                needles.add(bare.lower())
        # Longest first: a secret that contains another is blanked whole.
        self._pattern = re.compile("|".join([*sorted(words, key=len, reverse=True), _TOKEN.pattern]))
        # A search for any of these plain substrings of the lowered text is far cheaper than the pattern;
        # most strings contain none of them. One literal alternation searches them all in one C call.
        self._needles = re.compile("|".join(re.escape(needle) for needle in sorted(needles)))

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        # Every request writes a line: the common values (text, numbers, None) are checked inline.
        for key, value in event_dict.items():
            if _secret_field(key):
                event_dict[key] = REDACTED
            elif type(value) is str:
                event_dict[key] = self._text(value)
            elif value is not None and type(value) not in _PLAIN:
                event_dict[key] = self._clean(value)
        return event_dict

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._text(value)
        if value is None or isinstance(value, int | float):
            return value
        if isinstance(value, dict):
            return {
                k: REDACTED if str(k).lower() in SECRET_FIELDS else self._clean(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(v) for v in value]
        if isinstance(value, bytes | bytearray):
            return self._text(bytes(value).decode(errors="replace"))
        # Anything else renders as its text (an exception's message, say): check that text.
        text = str(value)
        cleaned = self._text(text)
        return value if cleaned is text else cleaned

    def _text(self, text: str) -> str:
        if self._needles.search(text.lower()) is not None:
            return self._pattern.sub(REDACTED, text)
        return text


@functools.lru_cache(maxsize=1024)
def _secret_field(name: str) -> bool:
    """Whether a field of this name is blanked whatever it holds (asked once per name: names repeat)."""
    return name.lower() in SECRET_FIELDS


class LogObserver:
    """Logs each router event once: requests at info, failed attempts and background errors at warning."""

    def __init__(self) -> None:
        self._log = structlog.get_logger("router")

    def __call__(self, event: Event) -> None:
        log = self._log
        if isinstance(event, RequestFinished):
            log.info(
                "request",
                request_id=event.request_id,
                endpoint=event.endpoint,
                # The model name is the client's: a 300 KB one must not make a 300 KB log line.
                model=clipped(event.model, quote=False),
                status=event.status,
                provider=event.provider,
                attempts=event.attempts,
                cost=event.cost,
                latency_ms=round(event.latency * 1000, 2),
                ttft_ms=None if event.ttft is None else round(event.ttft * 1000, 2),
                stream=event.stream,
                queued_ms=round(event.queued * 1000, 2),
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                error=event.error,
            )
        elif isinstance(event, AttemptFailed):
            log.warning(
                "attempt failed",
                request_id=event.request_id,
                provider=event.provider,
                verdict=event.verdict,
                status=event.status,
                detail=event.detail,
            )
        elif isinstance(event, PoolRefreshed):
            log.info("pool refreshed", providers=event.providers, skipped=event.skipped or None)
        elif isinstance(event, BreakerChanged):
            log.info("breaker", provider=event.provider, state=event.state)
        elif isinstance(event, BackgroundError):
            log.warning("background task failed", task=event.task, wallet=event.wallet, detail=event.detail)
        elif isinstance(event, Verified):
            level = log.warning if event.outcome == "failed" else log.info
            level(
                "verification",
                request_id=event.request_id,
                provider=event.provider,
                chat_id=event.chat_id,
                outcome=event.outcome,
                detail=event.detail,
            )
        elif isinstance(event, RpcFailed):
            log.warning("rpc call failed", endpoint=event.endpoint, detail=event.detail)
        elif isinstance(event, Funded):
            log.info(
                "funded",
                wallet=event.wallet,
                provider=event.provider,
                amount=event.amount,
                tx=event.tx_hash,
                manual=event.manual,
            )
        elif isinstance(event, FundingFailed):
            log.error(
                "funding failed",
                wallet=event.wallet,
                provider=event.provider,
                state=event.state,
                detail=event.detail,
            )
        elif isinstance(event, Settled):
            log.info(
                "settled",
                wallet=event.wallet,
                provider=event.provider,
                amount=event.amount,
                block=event.block,
            )
        elif isinstance(event, SettlementRejected):
            log.warning(
                "settlement rejected",
                wallet=event.wallet,
                status=event.status,
                amount=event.amount,
                block=event.block,
            )
        elif isinstance(event, SharedModeChanged):
            # One line per move: a warning when this replica starts counting alone, info when it rejoins.
            level = log.warning if event.mode == "local" else log.info
            level("shared mode", mode=event.mode, replicas=event.replicas, detail=event.detail)
        elif isinstance(event, LeaderChanged):
            log.info("leadership", leading=event.leading, token=event.token, detail=event.detail)
