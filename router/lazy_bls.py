"""eth_keyfile loaded without py_ecc's BLS code, which only a version-4 keystore needs.

eth_account (which web3 imports too) imports eth_keyfile, whose keyfile module imports ``py_ecc.bls``
and ``py_ecc.bls12_381`` at the top for version-4 keystores, which the router never reads or writes.
Importing those two computes BLS12-381 pairing tables: about 0.35 s of CPU, a third of a devnet gateway's
start to ready (py_ecc issue #135). While that one module executes, stand-ins take the two names it
imports: ``curve_order`` (a constant) and a ``G2ProofOfPossession`` that imports the real one at its
first use. They sit in ``sys.modules`` for that module's execution only; any other import of
``py_ecc.bls`` or ``py_ecc.bls12_381``, before or after, gets the real module.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any

KEYFILE = "eth_keyfile.keyfile"
DEFERRED = ("py_ecc.bls", "py_ecc.bls12_381")
# BLS12-381's subgroup order, the one name eth_keyfile takes from py_ecc.bls12_381 (it bounds a
# version-4 private key). A test checks it against py_ecc's own.
CURVE_ORDER = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001


def install() -> None:
    """Defer py_ecc's BLS import for eth_keyfile, unless the import already happened or was paid for."""
    if KEYFILE in sys.modules or any(name in sys.modules for name in DEFERRED):
        return
    if not any(isinstance(finder, _KeyfileFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _KeyfileFinder())


class _ProofOfPossessionOnFirstUse:
    """Stands in for ``py_ecc.bls.G2ProofOfPossession`` and hands every attribute to the real one."""

    def __getattr__(self, name: str) -> Any:
        from py_ecc.bls.ciphersuites import G2ProofOfPossession

        return getattr(G2ProofOfPossession, name)


@contextlib.contextmanager
def _stand_ins() -> Iterator[None]:
    bls = types.ModuleType("py_ecc.bls", "stand-in while eth_keyfile.keyfile executes (router.lazy_bls)")
    bls.G2ProofOfPossession = _ProofOfPossessionOnFirstUse()  # type: ignore[attr-defined]
    curve = types.ModuleType(
        "py_ecc.bls12_381", "stand-in while eth_keyfile.keyfile executes (router.lazy_bls)"
    )
    curve.curve_order = CURVE_ORDER  # type: ignore[attr-defined]
    sys.modules.update({"py_ecc.bls": bls, "py_ecc.bls12_381": curve})
    try:
        yield
    finally:
        for name in DEFERRED:
            sys.modules.pop(name, None)


class _LoaderWithStandIns(importlib.abc.Loader):
    """eth_keyfile.keyfile's own loader, executing the module with the stand-ins in place."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        if any(name in sys.modules for name in DEFERRED):
            self._loader.exec_module(module)
            return
        with _stand_ins():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:
        # get_source, get_filename and the rest, which tracebacks and inspect ask the module's loader.
        return getattr(self._loader, name)


class _KeyfileFinder(importlib.abc.MetaPathFinder):
    """Finds eth_keyfile.keyfile as the path finder does, and gives its spec the wrapped loader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != KEYFILE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _LoaderWithStandIns(spec.loader)
        return spec
