"""Stable 64-bit hashing of keys, readable twin: XXH3-64 written out in Python.

This is the reference the compiled module (the vendored xxHash) is tested against, and what runs
when ``LBCORE_NO_EXTENSIONS`` is set. It follows the published XXH3 algorithm: inputs of up to
240 bytes are mixed by a few fixed-size paths (0, 1-3, 4-8, 9-16, 17-128, 129-240 bytes), longer
ones by eight 64-bit accumulators that take the input in 64-byte stripes and are scrambled after
each 1 KiB block. Every value is a 64-bit word: arithmetic is done on Python ints and cut back
with ``& MASK`` wherever the C code would wrap around.

A key is hashed as the compiled ``hash64`` hashes it: a str as its UTF-8, bytes and buffers as
they are, an int in -2**63..2**64-1 as its 8 little-endian bytes (a negative one wraps like a
uint64).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["hash64", "hash64_many", "xxh3_64"]

MASK = 0xFFFFFFFFFFFFFFFF

PRIME32_1 = 0x9E3779B1
PRIME32_2 = 0x85EBCA77
PRIME32_3 = 0xC2B2AE3D
PRIME64_1 = 0x9E3779B185EBCA87
PRIME64_2 = 0xC2B2AE3D27D4EB4F
PRIME64_3 = 0x165667B19E3779F9
PRIME64_4 = 0x85EBCA77C2B2AE63
PRIME64_5 = 0x27D4EB2F165667C5
PRIME_MX1 = 0x165667919E3779F9
PRIME_MX2 = 0x9FB21C651E98DF25

# XXH3's default secret: 192 bytes every path reads its keys from (a seed shifts them)
SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)

STRIPE = 64  # bytes one accumulation round takes
STRIPES_PER_BLOCK = (len(SECRET) - STRIPE) // 8  # each stripe reads the secret 8 bytes further on
BLOCK = STRIPE * STRIPES_PER_BLOCK  # 1024: the accumulators are scrambled after each block

_u32 = struct.Struct("<I").unpack_from
_u64 = struct.Struct("<Q").unpack_from
_stripe = struct.Struct("<8Q").unpack_from


def _r32(buf: bytes, at: int) -> int:
    return int(_u32(buf, at)[0])


def _r64(buf: bytes, at: int) -> int:
    return int(_u64(buf, at)[0])


def _rotl64(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & MASK


def _bswap32(x: int) -> int:
    return int.from_bytes(x.to_bytes(4, "little"), "big")


def _bswap64(x: int) -> int:
    return int.from_bytes(x.to_bytes(8, "little"), "big")


def _mul128_fold64(a: int, b: int) -> int:
    """The full 128-bit product folded to 64 bits (low half xor high half): the main mixer."""
    product = a * b
    return (product ^ (product >> 64)) & MASK


def _xxh64_avalanche(h: int) -> int:
    # the finalizer of the older XXH64; XXH3 keeps it for the tiniest inputs
    h ^= h >> 33
    h = (h * PRIME64_2) & MASK
    h ^= h >> 29
    h = (h * PRIME64_3) & MASK
    return h ^ (h >> 32)


def _avalanche(h: int) -> int:
    # XXH3's own finalizer: the products above leave the high bits weaker than the low ones
    h ^= h >> 37
    h = (h * PRIME_MX1) & MASK
    return h ^ (h >> 32)


def _rrmxmx(h: int, length: int) -> int:
    # a stronger finalizer for 4-8 bytes, where the input is a single 64-bit word
    h ^= _rotl64(h, 49) ^ _rotl64(h, 24)
    h = (h * PRIME_MX2) & MASK
    h ^= (h >> 35) + length
    h = (h * PRIME_MX2) & MASK
    return h ^ (h >> 28)


# -- inputs of 0 to 16 bytes -------------------------------------------------------------------------


def _len_0(seed: int) -> int:
    return _xxh64_avalanche(seed ^ _r64(SECRET, 56) ^ _r64(SECRET, 64))


def _len_1to3(data: bytes, seed: int) -> int:
    # the first, middle and last bytes and the length make one 32-bit word
    length = len(data)
    combined = (data[0] << 16) | (data[length >> 1] << 24) | data[-1] | (length << 8)
    bitflip = ((_r32(SECRET, 0) ^ _r32(SECRET, 4)) + seed) & MASK
    return _xxh64_avalanche(combined ^ bitflip)


def _len_4to8(data: bytes, seed: int) -> int:
    # the first and last four bytes (they overlap below 8) make one 64-bit word
    length = len(data)
    seed ^= _bswap32(seed & 0xFFFFFFFF) << 32
    word = _r32(data, length - 4) + (_r32(data, 0) << 32)
    bitflip = ((_r64(SECRET, 8) ^ _r64(SECRET, 16)) - seed) & MASK
    return _rrmxmx(word ^ bitflip, length)


def _len_9to16(data: bytes, seed: int) -> int:
    length = len(data)
    flip_lo = ((_r64(SECRET, 24) ^ _r64(SECRET, 32)) + seed) & MASK
    flip_hi = ((_r64(SECRET, 40) ^ _r64(SECRET, 48)) - seed) & MASK
    lo = _r64(data, 0) ^ flip_lo
    hi = _r64(data, length - 8) ^ flip_hi
    acc = length + _bswap64(lo) + hi + _mul128_fold64(lo, hi)
    return _avalanche(acc & MASK)


# -- inputs of 17 to 240 bytes: 16-byte pieces, each mixed with 16 bytes of the secret ---------------


def _mix16(data: bytes, at: int, secret_at: int, seed: int) -> int:
    lo = _r64(data, at) ^ ((_r64(SECRET, secret_at) + seed) & MASK)
    hi = _r64(data, at + 8) ^ ((_r64(SECRET, secret_at + 8) - seed) & MASK)
    return _mul128_fold64(lo, hi)


def _len_17to128(data: bytes, seed: int) -> int:
    # pieces are taken in pairs from both ends towards the middle, so every byte counts
    length = len(data)
    acc = length * PRIME64_1
    pairs = (length - 1) // 32  # 0 to 3 pairs beyond the outermost one
    for k in range(pairs, -1, -1):
        acc += _mix16(data, 16 * k, 32 * k, seed)
        acc += _mix16(data, length - 16 * (k + 1), 32 * k + 16, seed)
    return _avalanche(acc & MASK)


def _len_129to240(data: bytes, seed: int) -> int:
    length = len(data)
    rounds = length // 16
    acc = length * PRIME64_1
    for k in range(8):
        acc += _mix16(data, 16 * k, 16 * k, seed)
    acc = _avalanche(acc & MASK)
    # the secret has room for 8 pieces; the rest read it again, 3 bytes in
    for k in range(8, rounds):
        acc += _mix16(data, 16 * k, 16 * (k - 8) + 3, seed)
    # the last 16 bytes, from the end of the minimal 136-byte secret, less 17
    acc += _mix16(data, length - 16, 136 - 17, seed)
    return _avalanche(acc & MASK)


# -- inputs over 240 bytes: eight accumulators over 64-byte stripes ----------------------------------


def _seeded_secret(seed: int) -> bytes:
    """The default secret shifted by the seed: + seed on the first word of each 16, - on the second."""
    if seed == 0:
        return SECRET
    words = struct.unpack("<24Q", SECRET)
    shifted = [(w + seed if k % 2 == 0 else w - seed) & MASK for k, w in enumerate(words)]
    return struct.pack("<24Q", *shifted)


def _accumulate(acc: list[int], data: bytes, at: int, secret: bytes, secret_at: int) -> None:
    # each lane keeps a 32x32-bit product of the keyed word, and adds the raw word to its
    # neighbour, so no input word is lost even when the product is zero
    words = _stripe(data, at)
    keys = _stripe(secret, secret_at)
    for i in range(8):
        keyed = words[i] ^ keys[i]
        acc[i ^ 1] = (acc[i ^ 1] + words[i]) & MASK
        acc[i] = (acc[i] + (keyed & 0xFFFFFFFF) * (keyed >> 32)) & MASK


def _scramble(acc: list[int], secret: bytes) -> None:
    # after each block: spread the high bits down, key and multiply, so lanes cannot cancel out
    keys = _stripe(secret, len(secret) - STRIPE)
    for i in range(8):
        a = acc[i]
        a ^= a >> 47
        a ^= keys[i]
        acc[i] = (a * PRIME32_1) & MASK


def _len_long(data: bytes, seed: int) -> int:
    secret = _seeded_secret(seed)
    length = len(data)
    acc = [PRIME32_3, PRIME64_1, PRIME64_2, PRIME64_3, PRIME64_4, PRIME32_2, PRIME64_5, PRIME32_1]
    blocks = (length - 1) // BLOCK
    for b in range(blocks):
        for s in range(STRIPES_PER_BLOCK):
            _accumulate(acc, data, b * BLOCK + STRIPE * s, secret, 8 * s)
        _scramble(acc, secret)
    # the whole stripes of the last, partial block, then the input's last 64 bytes (which may
    # overlap them) with a key 7 bytes before the scramble key
    tail = blocks * BLOCK
    for s in range((length - 1 - tail) // STRIPE):
        _accumulate(acc, data, tail + STRIPE * s, secret, 8 * s)
    _accumulate(acc, data, length - STRIPE, secret, len(secret) - STRIPE - 7)
    # merge: lanes in pairs, keyed with the secret from byte 11
    result = length * PRIME64_1
    for k in range(4):
        result += _mul128_fold64(
            acc[2 * k] ^ _r64(secret, 11 + 16 * k), acc[2 * k + 1] ^ _r64(secret, 19 + 16 * k)
        )
    return _avalanche(result & MASK)


def xxh3_64(data: bytes, seed: int = 0) -> int:
    """XXH3-64 of ``data`` with ``seed`` (a uint64): ``xxhash.xxh3_64_intdigest(data, seed)``."""
    seed &= MASK
    length = len(data)
    if length <= 16:
        if length > 8:
            return _len_9to16(data, seed)
        if length >= 4:
            return _len_4to8(data, seed)
        if length:
            return _len_1to3(data, seed)
        return _len_0(seed)
    if length <= 128:
        return _len_17to128(data, seed)
    if length <= 240:
        return _len_129to240(data, seed)
    return _len_long(data, seed)


# -- keys ------------------------------------------------------------------------------------------


def hash64(key: str | bytes | bytearray | memoryview | int) -> int:
    """Return the stable 64-bit XXH3 hash of ``key`` (str as UTF-8, bytes, or int as 8 LE bytes)."""
    if isinstance(key, str):
        return xxh3_64(key.encode("utf-8"))
    if isinstance(key, bytes):
        return xxh3_64(key)
    if isinstance(key, int) and not isinstance(key, bool):
        if not -(1 << 63) <= key < (1 << 64):
            raise OverflowError(f"key {key} is not in -2**63..2**64-1")
        return hash_u64(key & MASK)
    if isinstance(key, (bytearray, memoryview)):
        return xxh3_64(bytes(memoryview(key).cast("B")))
    raise TypeError(f"key must be str, bytes or int, not {type(key).__name__}")


def hash_u64(value: int) -> int:
    """Hash an integer key in 0..2**64-1: XXH3 of its 8 little-endian bytes."""
    return _len_4to8(value.to_bytes(8, "little"), 0)


def hash_u64_array(keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """``hash_u64`` of every key of a uint64 array, as whole-array steps (numpy wraps uint64
    arithmetic as C does): the 4-8 byte path with both halves of the key, seed 0."""
    k = np.asarray(keys, dtype=np.uint64)
    u = np.uint64
    bitflip = u(_r64(SECRET, 8) ^ _r64(SECRET, 16))
    # the low and high 32-bit halves swap places: the first four bytes go high
    h = ((k >> u(32)) | (k << u(32))) ^ bitflip
    h = h ^ (((h << u(49)) | (h >> u(15))) ^ ((h << u(24)) | (h >> u(40))))
    h = h * u(PRIME_MX2)
    h = h ^ ((h >> u(35)) + u(8))
    h = h * u(PRIME_MX2)
    out: npt.NDArray[np.uint64] = h ^ (h >> u(28))
    return out


def hash64_many(keys: Any) -> npt.NDArray[np.uint64]:
    """Hash a 1-D array of uint64 keys (each as ``hash64(int(k))``), returning a uint64 array."""
    src = np.ascontiguousarray(keys, dtype=np.uint64)
    if src.ndim != 1:
        raise ValueError(f"Buffer has wrong number of dimensions (expected 1, got {src.ndim})")
    return hash_u64_array(src)
