import subprocess
import sys

import numpy as np
import pytest
import xxhash

from lbcore import hash64
from lbcore.core._hashing import hash64_many


@pytest.mark.parametrize("key", ["", "a", "10.0.0.1:8080", "ünïcode", "x" * 1000])
def test_str_is_xxh3_of_utf8(key):
    assert hash64(key) == xxhash.xxh3_64_intdigest(key.encode())


def test_bytes_and_buffers_agree():
    assert hash64(b"abc") == hash64(bytearray(b"abc")) == hash64(memoryview(b"abc"))
    assert hash64(b"") == xxhash.xxh3_64_intdigest(b"")


@pytest.mark.parametrize("key", [0, 1, 2**32, 2**64 - 1])
def test_int_is_xxh3_of_8_little_endian_bytes(key):
    assert hash64(key) == xxhash.xxh3_64_intdigest(key.to_bytes(8, "little"))


def test_negative_int_wraps_like_uint64():
    assert hash64(-1) == hash64(2**64 - 1)


@pytest.mark.parametrize("key", [2**64, -(2**63) - 1])
def test_int_out_of_range_is_an_error(key):
    with pytest.raises(OverflowError):
        hash64(key)


def test_other_types_are_refused():
    with pytest.raises(TypeError, match="float"):
        hash64(1.5)


def test_many_matches_single():
    keys = np.array([0, 7, 2**63, 2**64 - 1], dtype=np.uint64)
    assert [int(h) for h in hash64_many(keys)] == [hash64(int(k)) for k in keys]


def test_stable_in_another_process():
    code = "from lbcore import hash64; print(hash64('my-service'), hash64(42))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(hash64("my-service")), str(hash64(42))]
