"""Stable key hashing. Compiled only: the vendored xxHash is the reference (tests check it
against the ``xxhash`` package), so there is no Python twin to choose."""

from lbcore.core._hashing_c import hash64, hash64_many

__all__ = ["hash64", "hash64_many"]
