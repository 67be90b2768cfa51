"""The public API: ``router`` exports exactly its documented names, lazily."""

from __future__ import annotations

import subprocess
import sys

import router


def test_all_is_sorted_and_complete() -> None:
    """Every name in ``__all__`` resolves, ``__all__`` is sorted, and it lists every lazy export."""
    assert router.__all__ == sorted(router.__all__)
    assert set(router.__all__) == set(router._EXPORTS)
    for name in router.__all__:
        assert getattr(router, name) is not None


def test_the_devnet_is_public() -> None:
    """``Devnet`` and ``DevnetConfig`` come from ``router`` itself, for ``RouterConfig.for_devnet``."""
    from router.devnet.network import Devnet, DevnetConfig

    assert (router.Devnet, router.DevnetConfig) == (Devnet, DevnetConfig)


def test_unknown_name_is_an_attribute_error() -> None:
    """A name that is not exported is an AttributeError, not a silent None."""
    assert not hasattr(router, "Dispatcher")


def test_importing_router_loads_neither_web3_nor_aiohttp() -> None:
    """``import router`` stays light: the heavy libraries load when a name is first used."""
    code = "import sys, router; print('web3' in sys.modules, 'aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
