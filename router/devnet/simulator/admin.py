"""A simulated provider's admin API, on a port of its own so that it answers while the provider is "down":
fault knobs and limits (both settable at runtime) and the simulator's counters.

    GET/POST /admin/faults    the knobs (``Faults``); POST takes a JSON object of the ones to change
    GET/POST /admin/limits    the limits in force, flat (``RateLimits`` fields and the provider-wide caps)
    GET /admin/stats          served and refused requests, in flight, per-wallet counters
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from router.errors import ConfigError

if TYPE_CHECKING:
    from router.devnet.simulator.server import ProviderSimulator

# What the limits route takes besides RateLimits fields: the ProviderSpec's provider-wide caps.
GLOBAL_CAPS = ("max_global_concurrent", "global_requests_per_minute", "global_tokens_per_minute")


def admin_app(simulator: ProviderSimulator) -> web.Application:
    """The admin routes over ``simulator``."""
    routes = _AdminRoutes(simulator)
    app = web.Application()
    app.router.add_get("/admin/faults", routes.get_faults)
    app.router.add_post("/admin/faults", routes.set_faults)
    app.router.add_get("/admin/stats", routes.get_stats)
    app.router.add_get("/admin/limits", routes.get_limits)
    app.router.add_post("/admin/limits", routes.set_limits)
    return app


def limits_view(simulator: ProviderSimulator) -> dict[str, Any]:
    """The limits in force, flat: what ``POST /admin/limits`` takes."""
    spec = simulator.spec
    return {**spec.limits.as_dict(), **{name: getattr(spec, name) for name in GLOBAL_CAPS}}


class _AdminRoutes:
    def __init__(self, simulator: ProviderSimulator) -> None:
        self._simulator = simulator

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self._simulator.faults.faults.as_dict())

    async def set_faults(self, request: web.Request) -> web.Response:
        changes = await _json_object(request)
        if changes is None:
            return web.json_response({"error": "the body must be a JSON object of knob values"}, status=400)
        try:
            faults = self._simulator.faults.faults.updated(changes)
        except ConfigError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        await self._simulator.set_faults(faults)
        return web.json_response(faults.as_dict())

    async def get_stats(self, request: web.Request) -> web.Response:
        simulator = self._simulator
        stats, provider_wide = simulator.stats, simulator.global_limits
        return web.json_response(
            {
                "served": stats.served,
                "refused": {str(k): v for k, v in stats.refused.items()},
                "in_flight": provider_wide.in_flight,
                "peak_global_in_flight": provider_wide.peak_in_flight,
                "global_rejections": dict(provider_wide.rejections),
                "peak_in_flight_per_wallet": simulator.limits.peak_in_flight,
                "wallets": {user: c.as_dict() for user, c in simulator.limits.counters().items()},
                "settlement_errors": stats.settlement_errors,
            }
        )

    async def get_limits(self, request: web.Request) -> web.Response:
        return web.json_response(limits_view(self._simulator))

    async def set_limits(self, request: web.Request) -> web.Response:
        changes = await _json_object(request)
        if changes is None:
            return web.json_response({"error": "the body must be a JSON object of limit values"}, status=400)
        try:
            self._simulator.set_limits(changes)
        except ConfigError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(limits_view(self._simulator))


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
