"""Which request formats a provider's model serves, from its ``/v1/models`` entry."""

from __future__ import annotations

from typing import Any

import pytest

from router.discovery import advertised_formats


@pytest.mark.parametrize(
    ("entry", "formats"),
    [
        ({"id": "m"}, ("openai",)),
        ({"id": "m", "supported_formats": ["openai", "anthropic"]}, ("openai", "anthropic")),
        ({"id": "m", "supported_formats": ["Anthropic "]}, ("openai", "anthropic")),
        ({"id": "m", "supported_formats": ["anthropic", "anthropic", "", 7, None]}, ("openai", "anthropic")),
        ({"id": "m", "supported_formats": "anthropic"}, ("openai",)),
        ({"id": "m", "supported_formats": None}, ("openai",)),
    ],
)
def test_advertised_formats(entry: dict[str, Any], formats: tuple[str, ...]) -> None:
    """``supported_formats`` lowercased and deduplicated; "openai" always, as every provider serves it;
    anything that is not a list of strings says nothing more."""
    assert advertised_formats(entry) == formats
