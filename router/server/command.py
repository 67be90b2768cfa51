"""``zg-router serve``: the gateway over a real network, configured from a TOML file and the environment."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import structlog
from prometheus_client import disable_created_metrics

from router.client import Router
from router.config import GatewayConfig, RouterConfig, load_config
from router.observability.logging import LogObserver, configure_logging
from router.observability.metrics import Metrics
from router.server.app import Gateway

# The young-generation threshold: CPython's 700 means a collection every few requests.
_GC_THRESHOLD = 20_000


async def run_serve(args: argparse.Namespace) -> int:
    path = args.config or os.environ.get("ZG_ROUTER_CONFIG")
    router_config, gateway_config = load_config(Path(path) if path else None, os.environ)
    if args.host is not None or args.port is not None:
        gateway_config = _with_address(gateway_config, args.host, args.port)
    configure_logging(
        args.log_level,
        format=args.log_format or "auto",
        secrets=config_secrets(router_config, gateway_config),
    )
    await serve(router_config, gateway_config)
    return 0


def config_secrets(router_config: RouterConfig, gateway_config: GatewayConfig) -> list[str | None]:
    """Every secret the configuration holds, for the log redactor."""
    return [
        *router_config.wallet_keys,
        *gateway_config.api_keys,
        *gateway_config.admin_keys,
        *(upstream.api_key for upstream in router_config.static_upstreams),
    ]


async def serve(
    router_config: RouterConfig,
    gateway_config: GatewayConfig,
    *,
    announce: Callable[[Router, Gateway], None] = lambda router, gateway: None,
) -> None:
    """Run the router and its gateway until SIGINT or SIGTERM; ``announce`` runs once both are up."""
    stop = stop_on_signals()
    log = structlog.get_logger("router")
    # One process, one gateway: drop prometheus-client's `_created` twin of every counter and histogram,
    # which doubles the series Prometheus stores and no dashboard reads.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    router = Router(router_config, observers=[LogObserver()])
    # Counting from before the router opens: RPC failures and funding at start-up show in the metrics.
    metrics = Metrics(router) if gateway_config.metrics else None
    async with router, Gateway(router, gateway_config, metrics=metrics) as gateway:
        log.info(
            "gateway listening",
            url=gateway.url + "/v1",
            metrics_url=gateway.metrics_url,
            providers=len(router.pool),
            wallets=[services.address for services in router.wallets],
        )
        announce(router, gateway)
        # Everything alive now lives as long as the process: keep it out of the collector's scans, and
        # collect the young generation less often (each request allocates a few hundred objects).
        gc.freeze()
        gc.set_threshold(_GC_THRESHOLD, *gc.get_threshold()[1:])
        await stop.wait()
    log.info("gateway stopped")


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _with_address(config: GatewayConfig, host: str | None, port: int | None) -> GatewayConfig:
    return replace(config, host=host or config.host, port=config.port if port is None else port)
