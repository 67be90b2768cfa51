"""Keeping the pool true to the world: registry discovery and free health probes. Background loops only.

Discovery reads every page of services from chain, keeps the acknowledged ones whose URL passes the guard,
asks each for its ``/v1/models`` (limits, per-model prices, extra model ids) and hands the pool a complete
snapshot. It refreshes on a cadence and as soon as ``ServiceUpdated``, ``ServiceRemoved`` or
``ProviderTEESignerAcknowledged`` logs appear. Providers refused only for a loopback or private address (a
local devnet without ``allow_private_targets``) are counted in the pool by model, so that a request for
their model is told so, and which setting allows them, rather than that the model does not exist. The
prober closes breakers with free ``/v1/models`` calls, so providers come back after an outage without any
real traffic. Each refresh hands the pool to the ``attestor``, which checks new and changed providers' TEE
quotes beside the refresh loop (``router.verify.attestation``), never on a request's path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from router.config import DiscoveryOptions, StaticUpstream
from router.errors import ProviderUnreachable, RouterError, UnsafeProviderUrl
from router.observability.events import BackgroundError, Observer, PoolRefreshed
from router.pool.health import BreakerState
from router.pool.limits import (
    DEFAULT_BURST,
    DEFAULT_CONTEXT_LENGTH,
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_REQUESTS_PER_MINUTE,
    ProviderLimits,
)
from router.pool.pricing import parse_cache_divisor, parse_tiers
from router.pool.providers import Pool, ProviderInfo, ProviderKind, ProviderState
from router.transport.base import ProviderTransport
from router.transport.guard import check_provider_url
from router.types import Service
from router.verify.attestation import Attestor

if TYPE_CHECKING:
    from router.chain.client import ChainClient

# What a user who runs into the URL guard on a local network needs to read.
ALLOW_PRIVATE_TARGETS = (
    "set [transport] allow_private_targets = true (TransportOptions(allow_private_targets=True); "
    "RouterConfig.for_devnet sets it) to allow such providers"
)


def static_infos(upstreams: Sequence[StaticUpstream]) -> list[ProviderInfo]:
    """Configured upstreams as pool entries (trusted: the operator wrote their URLs)."""
    return [
        ProviderInfo(
            id=u.name,
            kind=ProviderKind.STATIC,
            base_url=u.url.rstrip("/"),
            probe_url=u.url.rstrip("/") + "/models",
            service_type=u.service_type,
            models=u.models,
            input_price=u.input_price,
            output_price=u.output_price,
            verifiability=u.verifiability,
            limits=u.limits,
            api_key=u.api_key,
        )
        for u in upstreams
    ]


def provider_info(service: Service, base: str, models_doc: Any) -> ProviderInfo:
    """A chain provider's entry: on-chain record, refined by what its ``/v1/models`` says (if anything)."""
    models = [service.model]
    input_price, output_price = service.input_price, service.output_price
    extra = _json_object(service.additional_info)
    tiers = parse_tiers(extra.get("tieredPricing"))
    cache_divisor = parse_cache_divisor(extra.get("cacheTokenBilling"))
    limits = ProviderLimits()
    formats: tuple[str, ...] = ("openai",)
    entries = models_doc.get("data") if isinstance(models_doc, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        if entry["id"] not in models:
            models.append(entry["id"])
        pricing = entry.get("pricing")
        if entry["id"] == service.model and isinstance(pricing, dict):
            # /v1/models is authoritative per model; the chain price is a ceiling (protocol.md §4.5).
            input_price = _int(pricing.get("prompt"), input_price)
            output_price = _int(pricing.get("completion"), output_price)
            tiers = parse_tiers(pricing.get("tiered_pricing")) or tiers
            cache_divisor = parse_cache_divisor(pricing.get("cache_token_billing")) or cache_divisor
        if entry["id"] == service.model:
            limits = advertised_limits(entry)
            formats = advertised_formats(entry)
    return ProviderInfo(
        id=service.provider,
        kind=ProviderKind.CHAIN,
        base_url=base + "/v1/proxy",
        probe_url=base + "/v1/models",
        service_type=service.service_type,
        models=tuple(models),
        input_price=input_price,
        output_price=output_price,
        verifiability=service.verifiability,
        tee_signer=tee_signer(service, extra),
        registered_signer=service.tee_signer_address or None,
        signer_acknowledged=service.tee_signer_acknowledged,
        limits=limits,
        formats=formats,
        price_tiers=tiers,
        cache_divisor=cache_divisor,
    )


def advertised_formats(entry: dict[str, Any]) -> tuple[str, ...]:
    """The request formats a ``/v1/models`` entry says its model serves (``supported_formats``, our
    reading: the broker's field is unconfirmed), lowercased, "openai" always among them."""
    given = entry.get("supported_formats")
    named = [f.strip().lower() for f in given if isinstance(f, str)] if isinstance(given, list) else []
    return tuple(dict.fromkeys(["openai", *(f for f in named if f)]))


def advertised_limits(entry: dict[str, Any]) -> ProviderLimits:
    """The per-wallet limits a ``/v1/models`` entry advertises (``rate_limits``, protocol.md §4.7), the
    broker's defaults for what it leaves out. A value that is not a positive integer counts as left out,
    except that 0 turns a token or image budget off, as at the broker."""
    rates = entry.get("rate_limits")
    rates = rates if isinstance(rates, dict) else {}
    context = _positive(entry.get("context_length"), DEFAULT_CONTEXT_LENGTH)
    return ProviderLimits(
        requests_per_minute=_positive(rates.get("requests_per_minute"), DEFAULT_REQUESTS_PER_MINUTE),
        burst=_positive(rates.get("burst"), DEFAULT_BURST),
        max_concurrent=_positive(rates.get("max_concurrent_requests"), DEFAULT_MAX_CONCURRENT),
        tokens_per_minute=_count(rates.get("tokens_per_minute")),
        token_burst=_count(rates.get("tokens_burst")),
        images_per_minute=_count(rates.get("images_per_minute")),
        image_burst=_count(rates.get("images_burst")),
        context_length=context,
    )


def _positive(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**9 else default


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9 else 0


_ZERO_ADDRESS = "0x" + "0" * 40


def tee_signer(service: Service, extra: dict[str, Any]) -> str | None:
    """The address a service's responses must be signed by (protocol.md §5.4): its acknowledged
    ``teeSignerAddress``, or for a separated decentralized provider the model TEE's own
    ``TargetTeeAddress``; None when it signs nothing we can check."""
    if not service.tee_signer_acknowledged:
        return None
    separate = extra.get("TargetSeparated") is True and extra.get("ProviderType") != "centralized"
    target = extra.get("TargetTeeAddress")
    if separate:
        return target if isinstance(target, str) and target else None
    signer = service.tee_signer_address
    return signer if signer and signer.lower() != _ZERO_ADDRESS else None


def _json_object(text: str) -> dict[str, Any]:
    """A service's ``additionalInfo`` as a JSON object ({} when it is empty or not an object)."""
    try:
        value = json.loads(text) if text else {}
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _int(value: object, default: int) -> int:
    """A positive integer from JSON (numbers or decimal strings); ``default`` for anything else or 0."""
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return default
    return number if number > 0 else default


class Discovery:
    """Chain providers into the pool. ``refresh()`` once at start, then ``run()`` in the background."""

    def __init__(
        self,
        chain: ChainClient,
        transport: ProviderTransport,
        pool: Pool,
        options: DiscoveryOptions,
        *,
        allow_private: bool,
        warm: Callable[[str], Awaitable[object]],
        emit: Observer,
    ) -> None:
        self._chain = chain
        self._transport = transport
        self._pool = pool
        self._options = options
        self._allow_private = allow_private
        self._warm = warm
        self._emit = emit
        self._next_block = 0
        # How many providers the last refresh refused only for a loopback or private address.
        self.refused_private = 0
        self.attestor = Attestor(transport, timeout=options.models_timeout)

    async def refresh(self) -> None:
        """Replace the pool's chain providers with what the registry says now."""
        latest = await self._chain.block_number()
        services = await self._chain.list_services()
        skipped: dict[str, str] = {}
        usable: list[tuple[Service, str]] = []
        private: list[Service] = []
        for service in services:
            if not service.tee_signer_acknowledged:
                skipped[service.provider] = "TEE signer not acknowledged"
                continue
            try:
                base = check_provider_url(service.provider, service.url, allow_private=self._allow_private)
            except UnsafeProviderUrl as exc:
                if _only_private(service):
                    private.append(service)
                    skipped[service.provider] = f"{exc}; {ALLOW_PRIVATE_TARGETS}"
                else:
                    skipped[service.provider] = str(exc)
                continue
            usable.append((service, base))
        docs = await asyncio.gather(*(self._models_doc(service, base) for service, base in usable))
        infos = [provider_info(service, base, doc) for (service, base), doc in zip(usable, docs, strict=True)]
        self._pool.replace(ProviderKind.CHAIN, infos)
        self.attestor.watch(self._pool)
        self._pool.set_refused((service.service_type, service.model) for service in private)
        self.refused_private = len(private)
        self._next_block = latest + 1
        self._emit(PoolRefreshed(len(infos), skipped))
        # Mint session tokens now, so that no request waits for a chain read to get one.
        results = await asyncio.gather(*(self._warm(info.id) for info in infos), return_exceptions=True)
        for info, result in zip(infos, results, strict=True):
            if isinstance(result, RouterError):
                self._emit(BackgroundError("session-token", f"{info.id}: {result}"))
            elif isinstance(result, BaseException):
                raise result

    async def run(self) -> None:
        """Refresh every ``refresh_interval`` s, and sooner when the registry emits a change; attest
        providers meanwhile."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.attestor.run())
            await self._refresh_forever()

    async def _refresh_forever(self) -> None:
        options = self._options
        since_refresh = 0.0
        while True:
            await asyncio.sleep(options.event_poll_interval)
            since_refresh += options.event_poll_interval
            try:
                if since_refresh >= options.refresh_interval or await self._registry_changed():
                    await self.refresh()
                    since_refresh = 0.0
            except RouterError as exc:
                self._emit(BackgroundError("discovery", str(exc)))

    async def _registry_changed(self) -> bool:
        latest = await self._chain.block_number()
        if latest < self._next_block:
            return False
        changes = await self._chain.service_changes(self._next_block, latest)
        self._next_block = latest + 1
        return changes > 0

    async def _models_doc(self, service: Service, base: str) -> Any:
        try:
            return await self._transport.get_json(
                ProviderKind.CHAIN,
                service.provider,
                base + "/v1/models",
                headers={},
                time_left=self._options.models_timeout,
            )
        except ProviderUnreachable:
            # Still usable: it gets the broker's default limits until it answers.
            return None


def _only_private(service: Service) -> bool:
    """Whether the guard refused ``service``'s URL for its address alone (it passes with private targets)."""
    try:
        check_provider_url(service.provider, service.url, allow_private=True)
    except UnsafeProviderUrl:
        return False
    return True


class Prober:
    """Sends a free ``GET`` to each half-open provider every ``probe_interval``. No answer re-opens its
    breaker with a longer cooldown, so no paid request is spent on a provider that is still down; an answer
    closes it on probation (``Health.reachable``): real traffic flows again at once, and the first failure
    re-opens it for twice as long."""

    def __init__(
        self, pool: Pool, transport: ProviderTransport, options: DiscoveryOptions, emit: Observer
    ) -> None:
        self._pool = pool
        self._transport = transport
        self._options = options
        self._emit = emit

    async def run(self, on_change: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(self._options.probe_interval)
            due = [s for s in self._pool if s.health.state is BreakerState.HALF_OPEN and s.health.admits()]
            if due:
                await asyncio.gather(*(self._probe(state) for state in due))
                on_change()

    async def _probe(self, state: ProviderState) -> None:
        info, health = state.info, state.health
        health.begin()
        headers = {"Authorization": f"Bearer {info.api_key}"} if info.api_key else {}
        try:
            await self._transport.get_json(
                info.kind, info.id, info.probe_url, headers=headers, time_left=self._options.models_timeout
            )
        except ProviderUnreachable:
            health.record_failure()
        else:
            health.reachable()
