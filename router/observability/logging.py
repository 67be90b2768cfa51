"""structlog set-up and the observer that turns router events into log lines.

``configure_logging`` is called by the CLI only; importing ``router`` configures nothing. Events carry no
secrets, and nothing here logs request bodies or headers.
"""

from __future__ import annotations

import logging
import sys

import structlog

from router.observability.events import (
    AttemptFailed,
    BackgroundError,
    BreakerChanged,
    Event,
    Funded,
    FundingFailed,
    PoolRefreshed,
    RequestFinished,
    Settled,
    SettlementRejected,
)


def configure_logging(level: str = "info", *, json: bool = False) -> None:
    """Log to stderr at ``level``: JSON lines with ``json``, else logfmt lines (key=value).

    Both renderers are cheap enough for a line per request; structlog's console renderer is not.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"], drop_missing=True)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


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
                model=event.model,
                status=event.status,
                provider=event.provider,
                attempts=event.attempts,
                cost=event.cost,
                latency_ms=round(event.latency * 1000, 2),
                ttft_ms=None if event.ttft is None else round(event.ttft * 1000, 2),
                stream=event.stream,
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
            log.warning("background task failed", task=event.task, detail=event.detail)
        elif isinstance(event, Funded):
            log.info(
                "funded", provider=event.provider, amount=event.amount, tx=event.tx_hash, manual=event.manual
            )
        elif isinstance(event, FundingFailed):
            log.error("funding failed", provider=event.provider, state=event.state, detail=event.detail)
        elif isinstance(event, Settled):
            log.info("settled", provider=event.provider, amount=event.amount, block=event.block)
        elif isinstance(event, SettlementRejected):
            log.warning("settlement rejected", status=event.status, amount=event.amount, block=event.block)
