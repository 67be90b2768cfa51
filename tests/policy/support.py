"""Helpers the policy tests share: request headers as aiohttp hands them over, and preference parsing."""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict

from router.policy.select import Preferences, parse_preferences


def headers(**pairs: str) -> CIMultiDict[str]:
    """Request headers as aiohttp hands them over: case-insensitive. ``X_ZG_Sort`` is ``X-ZG-Sort``."""
    return CIMultiDict((name.replace("_", "-"), value) for name, value in pairs.items())


def parse(body: object = None, hdrs: Mapping[str, str] | None = None) -> Preferences:
    return parse_preferences(body, hdrs if hdrs is not None else CIMultiDict())
