"""Everything that talks to the chain. The only package that imports web3."""

import sys

import py_ecc

# py_ecc (imported by eth_account and web3) raises the interpreter's recursion limit to 100000 on import,
# for pairing code we never call. At that depth the C stack overflows before Python stops a runaway
# recursion, so a single deeply nested JSON body would crash the process instead of raising
# RecursionError. Put back CPython's default (only if py_ecc's value is what is there).
_PY_ECC_RECURSION_LIMIT = 100_000
if sys.getrecursionlimit() == _PY_ECC_RECURSION_LIMIT and py_ecc is not None:
    sys.setrecursionlimit(1000)
