"""``openai_client``: an ``openai.AsyncOpenAI`` (or, on a loop thread, an ``openai.OpenAI``) whose HTTP
client is one of our in-process transports: no socket, no port, no gateway key.

The base URL is a placeholder no resolver answers (``.invalid`` is reserved for that): nothing leaves
the process, and a request that somehow did would fail to resolve instead of reaching a stranger. The
API key is a placeholder too: the in-process face checks none (gateway keys guard a port; there is no
port), and the SDK refuses to start without one.

``max_retries`` defaults to 0: the router has already retried, failed over and queued within the
request's deadline before it answers an error, so an SDK retry would start the whole budget again (a
502 would double every attempt). Pass ``max_retries=`` to choose otherwise.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from router.embed.transport import flavour
from router.errors import ConfigError

if TYPE_CHECKING:
    import openai

    from router.client import Router

BASE_URL = "http://zg-router.invalid/v1"
API_KEY = "zg-router-in-process"


def openai_client(router: Router, *, sync: bool, **kwargs: Any) -> openai.AsyncOpenAI | openai.OpenAI:
    """The SDK client over ``router`` (``kwargs`` go to the SDK's constructor; ``http_client`` is ours)."""
    try:
        import openai
    except ImportError:
        raise ConfigError("the openai package is not installed: pip install 'zg-router[openai]'") from None
    # openai 3.x is built on httpx2 (importing it loads it); earlier versions on the classic httpx.
    package = "httpx2" if "httpx2" in sys.modules else "httpx"
    module = flavour(package)
    transport = router.httpx_transport(sync=sync, package=package)
    options: dict[str, Any] = {"base_url": BASE_URL, "api_key": API_KEY, "max_retries": 0, **kwargs}
    if sync:
        return openai.OpenAI(**options, http_client=module.Client(transport=transport))
    return openai.AsyncOpenAI(**options, http_client=module.AsyncClient(transport=transport))
