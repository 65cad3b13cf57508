"""Stable key hashing (XXH3-64): the compiled twin (the vendored xxHash) unless
``LBCORE_NO_EXTENSIONS`` is set (or the compiled module is missing), else the readable twin,
``_hashing_py``. Both give the same hash for every key; tests check each against the ``xxhash``
package."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbcore.core._extensions import NO_EXTENSIONS

__all__ = ["hash64", "hash64_many"]

if TYPE_CHECKING:  # type checkers read the readable twin
    from lbcore.core._hashing_py import hash64, hash64_many
else:
    if not NO_EXTENSIONS:
        try:
            from lbcore.core._hashing_c import hash64, hash64_many
        except ImportError:  # pragma: no cover - built without the extension
            NO_EXTENSIONS = True
    if NO_EXTENSIONS:
        from lbcore.core._hashing_py import hash64, hash64_many
