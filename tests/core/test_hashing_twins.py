"""The readable hashing twin against the ``xxhash`` package and against the compiled twin."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from lbcore.core import _hashing, _hashing_py

try:  # the compiled twin itself, never the chooser: a test must not compare the readable twin with itself
    from lbcore.core import _hashing_c
except ImportError:  # not built: the tests marked compiled skip
    _hashing_c = None  # type: ignore[assignment]

# every XXH3 path: 0, 1-3, 4-8, 9-16, 17-128, 129-240, and past 240 whole 1 KiB blocks, partial
# ones and a last stripe that overlaps the one before
LENGTHS = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 65, 96, 97, 127, 128, 129]
LENGTHS += [143, 144, 239, 240, 241, 255, 256, 1023, 1024, 1025, 1088, 2047, 2048, 2049, 5000]
SEEDS = [0, 1, 0x9E3779B97F4A7C15, 2**64 - 1]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("seed", SEEDS)
def test_every_length_and_seed_is_the_xxhash_packages_xxh3(length, seed):
    data = bytes((7 * i + length) % 256 for i in range(length))
    assert _hashing_py.xxh3_64(data, seed) == xxhash.xxh3_64_intdigest(data, seed)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 2**64 - 1))
def test_any_bytes_and_seed_is_the_xxhash_packages_xxh3(data, seed):
    assert _hashing_py.xxh3_64(data, seed) == xxhash.xxh3_64_intdigest(data, seed)


KEYS = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
    st.integers(-(2**63), 2**64 - 1),
)


@settings(max_examples=300, deadline=None)
@given(KEYS)
def test_hash64_of_any_key_is_the_xxhash_packages_xxh3(key):
    if isinstance(key, int):
        data = (key % 2**64).to_bytes(8, "little")
    elif isinstance(key, str):
        try:
            data = key.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate has no UTF-8: refused, as the compiled twin does
            with pytest.raises(UnicodeEncodeError):
                _hashing_py.hash64(key)
            return
    else:
        data = key
    assert _hashing_py.hash64(key) == xxhash.xxh3_64_intdigest(data)


@pytest.mark.compiled
@settings(max_examples=300, deadline=None)
@given(KEYS)
def test_hash64_of_any_key_is_the_compiled_twins(key):
    compiled = _hashing_c
    try:
        expected = compiled.hash64(key)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            _hashing_py.hash64(key)
        return
    assert _hashing_py.hash64(key) == expected


@pytest.mark.compiled
@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=200))
def test_hash64_many_is_the_compiled_twins(keys):
    compiled = _hashing_c
    array = np.asarray(keys, dtype=np.uint64)
    mine = _hashing_py.hash64_many(array)
    assert mine.dtype == np.uint64
    assert mine.tolist() == compiled.hash64_many(array).tolist()
    assert mine.tolist() == [_hashing_py.hash64(k) for k in keys]


@pytest.mark.compiled
@pytest.mark.parametrize(
    ("key", "error"),
    [(2**64, OverflowError), (-(2**63) - 1, OverflowError), (1.5, TypeError), (True, TypeError),
     (None, TypeError)],
)
def test_both_twins_refuse_the_same_keys_with_the_same_message(key, error):
    compiled = _hashing_c
    with pytest.raises(error) as theirs:
        compiled.hash64(key)
    with pytest.raises(error) as mine:
        _hashing_py.hash64(key)
    assert str(mine.value) == str(theirs.value)


def test_buffers_hash_as_their_bytes():
    assert _hashing_py.hash64(bytearray(b"abc")) == _hashing_py.hash64(memoryview(b"abc"))
    assert _hashing_py.hash64(memoryview(b"abc")) == xxhash.xxh3_64_intdigest(b"abc")
    assert _hashing_py.hash64(bytearray()) == xxhash.xxh3_64_intdigest(b"")


@pytest.mark.compiled
def test_the_compiled_twin_is_the_extension_itself():
    assert _hashing_c.__file__.endswith((".so", ".pyd"))
    assert _hashing_c.hash64 is not _hashing_py.hash64


def test_the_chooser_offers_the_twin_the_switch_asks_for():
    from lbcore.core._extensions import NO_EXTENSIONS

    expected = "lbcore.core._hashing_py" if NO_EXTENSIONS else "lbcore.core._hashing_c"
    assert _hashing.hash64.__module__ == expected
