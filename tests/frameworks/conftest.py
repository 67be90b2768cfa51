"""One devnet and one in-process router for the framework tests: each framework gets the router's own
``openai`` client (no gateway, no port), exactly as an application embedding the router would hand it over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from router import Router, RouterConfig
from router.devnet import Devnet, DevnetConfig, ProviderSpec
from router.devnet.node_tools import NodeModules
from tests.gateway.conftest import CHAT_MODEL, FAST

# Two providers, so that a framework's calls are routed rather than pinned; roomy limits, since an agent
# run makes several calls in a row.
FRAMEWORK_PROVIDERS = (
    ProviderSpec(model=CHAT_MODEL, limits=FAST),
    ProviderSpec(model=CHAT_MODEL, limits=FAST),
)


@pytest.fixture(scope="package")
async def framework_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    config = DevnetConfig(providers=FRAMEWORK_PROVIDERS, settle_interval=None)
    async with Devnet(config, node_modules) as devnet:
        yield devnet


@pytest.fixture(scope="package")
async def router(framework_devnet: Devnet) -> AsyncIterator[Router]:
    async with Router(RouterConfig.for_devnet(framework_devnet)) as opened:
        yield opened


@pytest.fixture
async def client(router: Router) -> AsyncIterator[openai.AsyncOpenAI]:
    """The router's in-process ``AsyncOpenAI``, closed after the test."""
    async with router.openai_client() as opened:
        yield opened
