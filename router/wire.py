"""The gateway key check, shared by the OpenAI routes (``router.core``) and the admin API. Requests are
parsed in ``router.request``."""

from __future__ import annotations

import hmac


def bearer_matches(header: str | None, keys: tuple[bytes, ...]) -> bool:
    """``Authorization: Bearer <one of keys>``? Compared with every key, so the time taken says nothing
    about which (if any) almost matched. Any header text is safe: aiohttp hands over bytes that are not
    UTF-8 as surrogates, which ``surrogatepass`` encodes to bytes no configured key can contain."""
    scheme, _, token = (header or "").partition(" ")
    given = token.strip().encode("utf-8", "surrogatepass")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return scheme.lower() == "bearer" and matched
