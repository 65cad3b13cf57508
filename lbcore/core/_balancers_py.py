"""Balancing algorithms, readable twin of ``_balancers_c``: the same classes, options, errors and
answers, in Python.

Every algorithm here gives the compiled one's answers for the same backends, weights, seed and
keys: the hashed ones (ring_hash, bounded_load, maglev, jump, rendezvous) because they hash the
same names with the same XXH3 (``_hashing_py``) and do the same arithmetic in the same order
(doubles are doubles in both, and ``math.log``/``**`` call the same C library); round robin
because it steps the same schedule; random and least_conn because both draw from the same
seeded splitmix64 stream. Tests hold the twins to that (``tests/core/test_balancers_twins.py``).

What the compiled module adds is speed alone: a pick there is a table read without the GIL,
and ``pick_many`` runs in C (with AVX2 where the CPU has it). Here ``pick_many`` uses numpy
whole-array steps where the algorithm allows it (maglev, ring, jump, equal-weight rendezvous),
and a Python loop where a pick depends on the one before (the load-aware and stateful ones).
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from lbcore.core._hashing_py import hash64, hash_u64_array, xxh3_64

__all__ = [
    "ALGORITHMS",
    "Balancer",
    "BoundedLoad",
    "JumpHash",
    "LeastConn",
    "Maglev",
    "Rendezvous",
    "RingHash",
    "RoundRobin",
    "WeightedRandom",
    "WeightedRoundRobin",
]

MASK = 0xFFFFFFFFFFFFFFFF
GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / the golden ratio: splitmix64's step, and the retry spread
INT_MAX = 2**31 - 1


def splitmix64(state: int) -> tuple[int, int]:
    """One step of splitmix64: (the new state, the random word it gives)."""
    state = (state + GOLDEN) & MASK
    return state, mix64(state)


def mix64(z: int) -> int:
    """splitmix64's finalizer, a bijection on 64 bits: spreads a combined key over all bits."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def mix64_array(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """``mix64`` of every word of a uint64 array (numpy wraps uint64 products as C does)."""
    u = np.uint64
    z = (z ^ (z >> u(30))) * u(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> u(27))) * u(0x94D049BB133111EB)
    out: npt.NDArray[np.uint64] = z ^ (z >> u(31))
    return out


def _identity(backend: Any) -> bytes:
    """The bytes a backend is known and hashed by: bytes as they are, else ``str()`` as UTF-8."""
    if isinstance(backend, bytes):
        return backend
    if isinstance(backend, str):
        return backend.encode("utf-8")
    return str(backend).encode("utf-8")


def _c_int(value: Any) -> int:
    """``value`` as the compiled methods take a C int argument (they truncate a float)."""
    if isinstance(value, float):
        value = int(value)
    if not isinstance(value, int):
        raise TypeError("an integer is required")
    if not -INT_MAX - 1 <= value <= INT_MAX:
        raise OverflowError("value too large to convert to int")
    return int(value)


def _c_uint64(value: Any) -> int:
    """``value`` as the compiled methods take a uint64 argument."""
    if isinstance(value, float):
        value = int(value)
    if not isinstance(value, int):
        raise TypeError("an integer is required")
    if value < 0:
        raise OverflowError("can't convert negative value to uint64_t")
    if value > MASK:
        raise OverflowError("Python int too large to convert to C unsigned long")
    return int(value)


def _uint64_keys(keys: Any) -> npt.NDArray[np.uint64]:
    src = np.ascontiguousarray(keys, dtype=np.uint64)
    if src.ndim != 1:
        raise ValueError(f"Buffer has wrong number of dimensions (expected 1, got {src.ndim})")
    return src


def _sum(values: Sequence[float]) -> float:
    # left to right, as the compiled loop adds: Python's sum() of floats compensates rounding
    # (3.12 on), which would change the last bit and so, rarely, an answer
    total = 0.0
    for x in values:
        total += x
    return total


def _check_weights(algorithm: str, weights: Iterable[Any] | None, n: int) -> tuple[float, ...]:
    if weights is None:
        return (1.0,) * n
    ws = tuple(weights)
    if len(ws) != n:
        raise ValueError(f"{algorithm}: weights has {len(ws)} entries for {n} backends")
    out = []
    for i, v in enumerate(ws):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{algorithm}: weights[{i}] must be a number, not {v!r}")
        x = float(v)
        if not math.isfinite(x) or x < 0:
            raise ValueError(f"{algorithm}: weights[{i}] must be finite and >= 0, not {v!r}")
        out.append(x)
    if not any(out):
        raise ValueError(f"{algorithm}: at least one weight must be > 0, got {list(ws)!r}")
    return tuple(out)


def _check_int(algorithm: str, field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{algorithm}: {field} must be an integer >= {minimum}, not {value!r}")


def _check_number(algorithm: str, field: str, value: Any, minimum: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < minimum
    ):
        raise ValueError(f"{algorithm}: {field} must be a number >= {minimum}, not {value!r}")
    return float(value)


class Balancer:
    """Base of every algorithm: ``pick``, ``pick_many``, ``update``, connection counts.

    Backends are identified by name (``str(backend)``, or the bytes themselves): ``update`` keeps
    the structure of the backends that stay, so they keep their keys.
    """

    name: ClassVar[str] = "balancer"

    def __init__(
        self, backends: Iterable[Any], weights: Sequence[float] | None = None, *, seed: int | None = None
    ) -> None:
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self._rng = int(seed) & MASK  # splitmix64 state of the stateful algorithms
        self._backends: tuple[Any, ...] = ()
        self._names: tuple[bytes, ...] = ()
        self._weights: tuple[float, ...] = ()
        self._active: list[int] = []
        self.update(backends, weights)

    # -- views -------------------------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Number of backends."""
        return len(self._backends)

    @property
    def backends(self) -> tuple[Any, ...]:
        """The backends, index -> backend, as last given to ``update``."""
        return self._backends

    @property
    def weights(self) -> tuple[float, ...]:
        """The weights, index -> float."""
        return self._weights

    @property
    def active(self) -> tuple[int, ...]:
        """Live connections per backend, counted by ``acquire`` and ``release``."""
        return tuple(self._active)

    @property
    def nbytes(self) -> int:
        """Bytes the compiled twin would hold for the same backends: an estimate here."""
        return self.n * 16 + self._extra_nbytes()

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} n={self.n}>"

    # -- picks -------------------------------------------------------------------------------------

    def pick(self, key: str | bytes | int, /) -> int:
        """Index of the backend for ``key`` (str as UTF-8, bytes, or int as ``hash64`` hashes it)."""
        return self._pick_hash(hash64(key))

    def pick_hashed(self, h: int) -> int:
        """Index of the backend for a key already hashed with ``lbcore.hash64``."""
        return self._pick_hash(_c_uint64(h))

    def pick_retry(self, key: str | bytes | int, attempt: int) -> int:
        """Backend for the ``attempt``-th retry of ``key`` (0 is ``pick(key)``): where a new
        connection goes when the backend it was first given refused it."""
        attempt = _c_int(attempt)
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, not {attempt}")
        h = hash64(key)
        if attempt == 0:
            return self._pick_hash(h)
        # a retry is a pick of another key derived from the first: consistent, and spread
        return self._pick_hash(mix64(h ^ ((attempt * GOLDEN) & MASK)))

    def pick_many(self, keys: npt.ArrayLike) -> npt.NDArray[np.int32]:
        """Indices (int32 array) for a 1-D array of uint64 keys, each hashed as ``hash64(int(k))``."""
        src = _uint64_keys(keys)
        if len(src) == 0:
            return np.empty(0, dtype=np.int32)
        return np.asarray(self._pick_many(src), dtype=np.int32)

    def _pick_many(self, keys: npt.NDArray[np.uint64]) -> Any:
        return [self._pick_hash(h) for h in hash_u64_array(keys).tolist()]

    def _pick_hash(self, h: int) -> int:
        raise NotImplementedError

    # -- live connections --------------------------------------------------------------------------

    def acquire(self, i: int) -> None:
        """Count one connection opened to backend ``i``."""
        i = self._check_index(i)
        self._active[i] += 1

    def release(self, i: int) -> None:
        """Count one connection closed on backend ``i``."""
        i = self._check_index(i)
        if self._active[i] <= 0:
            raise ValueError(f"release: backend {i} ({self._backends[i]!r}) has no live connection")
        self._active[i] -= 1

    def _check_index(self, i: Any) -> int:
        i = _c_int(i)
        if i < 0 or i >= self.n:
            raise IndexError(f"backend index {i} is not in 0..{self.n - 1}")
        return i

    # -- backends ----------------------------------------------------------------------------------

    def update(self, backends: Iterable[Any], weights: Sequence[float] | None = None) -> None:
        """Replace the backends (and weights); backends that stay keep their live counts."""
        backends = tuple(backends)
        n = len(backends)
        if n == 0:
            raise ValueError(f"{self.name}: backends must not be empty")
        if n > 0x3FFFFFFF:
            raise ValueError(f"{self.name}: too many backends ({n})")
        names = tuple(_identity(b) for b in backends)
        index: dict[bytes, int] = {}
        for i, nm in enumerate(names):
            if nm in index:
                raise ValueError(f"{self.name}: backend {backends[i]!r} is given twice")
            index[nm] = i
        ws = _check_weights(self.name, weights, n)
        self._check_update(names, ws)
        old = dict(zip(self._names, self._active, strict=True))
        self._active = [old.get(nm, 0) for nm in names]
        self._backends = backends
        self._names = names
        self._weights = ws
        self._rebuild()

    def _check_update(self, names: tuple[bytes, ...], weights: tuple[float, ...]) -> None:
        """Refuse backends or weights this algorithm cannot take, before anything changes."""

    def _rebuild(self) -> None:
        """Build the lookup structure for the backends and weights just set."""

    def _extra_nbytes(self) -> int:
        return 0


# -------------------------------------------------------------------------------------------------
# Round robin: nginx's smooth weighted round robin
# -------------------------------------------------------------------------------------------------

SCHEDULE_MAX_WORK = 1 << 23  # the compiled twin precomputes the period when period * n is this small


class WeightedRoundRobin(Balancer):
    """Smooth weighted round robin, as nginx does it: weights {5, 1, 1} give a a b a c a a.

    Every pick adds each backend's weight to its ``current`` and takes the largest, which then
    gives back the total: heavy backends are spread through the period, never sent in a burst.

    The compiled twin precomputes one period when the weights are integers (stepping with the
    weights over their gcd); the step is periodic (after a period every ``current`` is back to
    0), so stepping those same integers one pick at a time here gives the same sequence.
    Otherwise both step with the float weights.
    """

    name = "weighted_round_robin"

    def _rebuild(self) -> None:
        w = self._weights
        self._equal = all(x == w[0] for x in w)
        self._counter = 0
        self._step_weights: Sequence[float | int] = w
        self._total: float | int = _sum(w)
        if not self._equal and all(x.is_integer() for x in w):
            ints = [int(x) for x in w]
            g = 0
            for x in ints:
                g = math.gcd(g, x)
            ints = [x // g for x in ints]
            if sum(ints) * self.n <= SCHEDULE_MAX_WORK:
                self._step_weights, self._total = ints, sum(ints)
        self._current: list[float | int] = [0] * self.n

    def _pick_hash(self, h: int) -> int:
        c = self._counter
        self._counter = c + 1
        if self._equal:
            return c % self.n
        return self._step()

    def _step(self) -> int:
        current, w = self._current, self._step_weights
        best = 0
        for i in range(len(current)):
            current[i] += w[i]
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return best

    def _extra_nbytes(self) -> int:
        period = self._total if isinstance(self._total, int) else 0
        return self.n * 8 + period * 4


class RoundRobin(WeightedRoundRobin):
    """Each backend in turn; unequal weights make it the smooth weighted round robin."""

    name = "round_robin"


# -------------------------------------------------------------------------------------------------
# Random and least connections (power of two choices)
# -------------------------------------------------------------------------------------------------


class WeightedRandom(Balancer):
    """A random backend in proportion to its weight: Vose's alias table, O(1) per pick.

    The random source is a splitmix64 state per balancer (``seed=`` makes it repeatable, and the
    same seed gives the compiled twin's stream); the key is ignored.
    """

    name = "random"

    def _rebuild(self) -> None:
        n, w = self.n, self._weights
        total = _sum(w)
        prob = [0.0] * n
        alias = list(range(n))
        scaled = [x * n / total for x in w]
        small = [i for i in range(n) if scaled[i] < 1.0]
        large = [i for i in range(n) if scaled[i] >= 1.0]
        while small and large:
            s = small.pop()
            big = large[-1]
            prob[s] = scaled[s]
            alias[s] = big
            scaled[big] = (scaled[big] + scaled[s]) - 1.0
            if scaled[big] < 1.0:
                large.pop()
                small.append(big)
        for i in large + small:  # leftovers are 1 up to rounding
            prob[i] = 1.0
        heaviest = max(range(n), key=lambda k: w[k])
        for i in range(n):  # a zero weight must never be drawn, whatever the rounding did
            if w[i] == 0:
                prob[i] = 0.0
                if w[alias[i]] == 0:
                    alias[i] = heaviest
        self._prob, self._alias = prob, alias
        self._equal = all(x == w[0] for x in w)

    def _random(self) -> int:
        self._rng, r = splitmix64(self._rng)
        return r

    def _sample(self) -> int:
        # one word gives both draws: the high half the column, the low half the coin
        r = self._random()
        i = ((r >> 32) * self.n) >> 32
        if self._equal:
            return i
        if (r & 0xFFFFFFFF) * (1.0 / 4294967296.0) < self._prob[i]:
            return i
        return self._alias[i]

    def _pick_hash(self, h: int) -> int:
        return self._sample()

    def _pick_many(self, keys: npt.NDArray[np.uint64]) -> Any:
        return [self._pick_hash(0) for _ in range(len(keys))]

    def _extra_nbytes(self) -> int:
        return self.n * 12


class LeastConn(WeightedRandom):
    """Least connections by the power of two choices, weighted as Envoy's least request.

    Two *distinct* backends are drawn at random in proportion to their weights (the second among
    the others), and the one of larger effective weight ``weight / (active + 1) ** bias`` wins
    (``active_request_bias``, 1.0 by default: fewer live connections per unit of weight). With
    equal weights the one with fewer live connections wins, whatever the bias; so with two
    backends the idle one always wins. ``acquire``/``release`` keep the counts. ``pick_many``
    assigns the batch as if each pick were acquired in turn, without changing the live counts.
    """

    name = "least_conn"

    def __init__(
        self,
        backends: Iterable[Any],
        weights: Sequence[float] | None = None,
        *,
        active_request_bias: float = 1.0,
        seed: int | None = None,
    ) -> None:
        self._bias = _check_number(self.name, "active_request_bias", active_request_bias, 0.0)
        super().__init__(backends, weights, seed=seed)

    @property
    def active_request_bias(self) -> float:
        """The exponent of ``active + 1`` in the effective weight ``weight / (active + 1) ** bias``."""
        return self._bias

    def _rebuild(self) -> None:
        super()._rebuild()
        # cum[i] .. cum[i + 1] is backend i's share of the running sum of weights
        cum = [0.0]
        for x in self._weights:
            cum.append(cum[-1] + x)
        self._cum = cum
        positive = [i for i, x in enumerate(self._weights) if x > 0]
        self._positive = len(positive)
        self._only = positive[-1]

    def _other(self, a: int) -> int:
        """A backend other than ``a``, in proportion to its weight (``a`` has weight > 0)."""
        n, w, cum = self.n, self._weights, self._cum
        if self._equal:
            b = ((self._random() >> 32) * (n - 1)) >> 32
            return b + (b >= a)
        for _ in range(4):  # a few draws from the alias table settle it unless a is heavy
            b = self._sample()
            if b != a:
                return b
        # exact draw over the other backends' weights: skip a's interval [cum[a], cum[a+1])
        x = (self._random() >> 11) * (1.0 / 9007199254740992.0) * (cum[n] - w[a])
        if x >= cum[a]:
            x += w[a]
        lo, hi = 0, n - 1  # the last i with cum[i] <= x
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            if cum[mid] <= x:
                lo = mid
            else:
                hi = mid - 1
        b = lo
        while b >= 0 and (b == a or w[b] <= 0):  # rounding landed on an empty interval
            b -= 1
        if b < 0:
            b = lo
            while b < n and (b == a or w[b] <= 0):
                b += 1
        return b

    def _choose(self, loads: Sequence[int]) -> int:
        if self._positive == 1:
            return self._only
        a = self._sample()
        b = self._other(a)
        w = self._weights
        if self._equal:
            return a if loads[a] <= loads[b] else b
        if self._bias == 1.0:
            return a if w[a] * (loads[b] + 1) >= w[b] * (loads[a] + 1) else b
        bias = self._bias
        return a if w[a] * float(loads[b] + 1) ** bias >= w[b] * float(loads[a] + 1) ** bias else b

    def _pick_hash(self, h: int) -> int:
        return self._choose(self._active)

    def _pick_many(self, keys: npt.NDArray[np.uint64]) -> Any:
        loads = list(self._active)
        out = []
        for _ in range(len(keys)):
            i = self._choose(loads)
            loads[i] += 1
            out.append(i)
        return out

    def _extra_nbytes(self) -> int:
        return super()._extra_nbytes() + (self.n + 1) * 8


# -------------------------------------------------------------------------------------------------
# Consistent hashing: ring (ketama), bounded loads, Maglev, jump, rendezvous
# -------------------------------------------------------------------------------------------------


class RingHash(Balancer):
    """Ketama-style ring: each backend owns points ``XXH3(name, seed=j)``; a key goes to the
    first point at or after its hash.

    A backend's number of points is ``round(scale * weight)`` (at least 1), where ``scale`` is
    chosen once so that the ring has at least ``min_ring_size`` points and ``vnodes`` points per
    backend of mean weight. ``update`` keeps ``scale``, so the backends that stay keep exactly
    their points and only the keys of a removed backend move; the scale is chosen again only
    when the ring would grow over ``max_ring_size``. A pick is a binary search of the ring (the
    compiled twin narrows it first with a table of buckets: the same answer).
    """

    name = "ring_hash"

    def __init__(
        self,
        backends: Iterable[Any],
        weights: Sequence[float] | None = None,
        *,
        min_ring_size: int = 1024,
        max_ring_size: int = 8388608,
        vnodes: int = 160,
        seed: int | None = None,
    ) -> None:
        _check_int(self.name, "min_ring_size", min_ring_size, 1)
        _check_int(self.name, "max_ring_size", max_ring_size, min_ring_size)
        _check_int(self.name, "vnodes", vnodes, 1)
        self._min_ring_size = min_ring_size
        self._max_ring_size = max_ring_size
        self._vnodes = vnodes
        self._scale = 0.0
        super().__init__(backends, weights, seed=seed)

    @property
    def ring_size(self) -> int:
        """Number of points on the ring."""
        return len(self._ring)

    @property
    def points(self) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32]]:
        """(sorted point hashes as uint64, owning backend index as int32): copies of the ring."""
        return self._ring_arr.copy(), self._owner_arr.copy()

    def _points(self, scale: float) -> list[int]:
        return [max(1, int(round(scale * x))) if x > 0 else 0 for x in self._weights]

    def _check_update(self, names: tuple[bytes, ...], weights: tuple[float, ...]) -> None:
        if len(names) > self._max_ring_size:
            raise ValueError(
                f"{self.name}: {len(names)} backends do not fit max_ring_size={self._max_ring_size}"
            )

    def _rebuild(self) -> None:
        n = self.n
        total = _sum(self._weights)
        positive = sum(1 for x in self._weights if x > 0)
        points = self._points(self._scale) if self._scale > 0 else None
        if points is None or sum(points) > self._max_ring_size:
            self._scale = max(self._vnodes / (total / positive), self._min_ring_size / total)
            points = self._points(self._scale)
            if sum(points) > self._max_ring_size:
                self._scale = (self._max_ring_size - n) / total
                points = self._points(self._scale)
        # points are laid out in name order, so the stable sort breaks (unlikely) hash ties by
        # name, whatever the order of the backends list
        ring: list[int] = []
        owner: list[int] = []
        for i in sorted(range(n), key=self._names.__getitem__):
            name = self._names[i]
            ring.extend(xxh3_64(name, j) for j in range(points[i]))
            owner.extend([i] * points[i])
        order = np.argsort(np.asarray(ring, dtype=np.uint64), kind="stable")
        self._ring_arr = np.asarray(ring, dtype=np.uint64)[order]
        self._owner_arr = np.asarray(owner, dtype=np.int32)[order]
        self._ring = self._ring_arr.tolist()
        self._owner = self._owner_arr.tolist()

    def _lower(self, h: int) -> int:
        """The first point at or after ``h``, wrapping to the first point of the ring."""
        k = bisect.bisect_left(self._ring, h)
        return 0 if k == len(self._ring) else k

    def _pick_hash(self, h: int) -> int:
        return int(self._owner[self._lower(h)])

    def _pick_many(self, keys: npt.NDArray[np.uint64]) -> Any:
        k = np.searchsorted(self._ring_arr, hash_u64_array(keys), side="left")
        k[k == len(self._ring)] = 0
        return self._owner_arr[k]

    def _extra_nbytes(self) -> int:
        size = len(self._ring)
        bits = 1  # the compiled twin's bucket table: as many buckets as points, at most 2**20
        while bits < 20 and (1 << bits) < size:
            bits += 1
        return size * 12 + ((1 << bits) + 1) * 4


class BoundedLoad(RingHash):
    """Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam).

    A key walks the ring from its point to the first backend whose live connections stay under
    its capacity ``ceil(balance_factor * (total + 1) * weight / sum(weights))``, so no backend
    ever holds more than ``ceil(balance_factor * mean)`` (HAProxy's ``hash-balance-factor`` is
    this factor in percent). ``pick`` reads the counts kept by ``acquire``/``release``;
    ``pick_many`` assigns the batch as if each pick were acquired in turn.
    """

    name = "bounded_load"

    def __init__(
        self,
        backends: Iterable[Any],
        weights: Sequence[float] | None = None,
        *,
        balance_factor: float = 1.25,
        min_ring_size: int = 1024,
        max_ring_size: int = 8388608,
        vnodes: int = 160,
        seed: int | None = None,
    ) -> None:
        self._factor = _check_number(self.name, "balance_factor", balance_factor, 1.0)
        super().__init__(
            backends,
            weights,
            min_ring_size=min_ring_size,
            max_ring_size=max_ring_size,
            vnodes=vnodes,
            seed=seed,
        )

    @property
    def balance_factor(self) -> float:
        """The factor c: no backend gets more than ceil(c x mean load)."""
        return self._factor

    def _rebuild(self) -> None:
        super()._rebuild()
        self._wsum = _sum(self._weights)

    def _choose(self, h: int, loads: Sequence[int], total: int) -> int:
        start = self._lower(h)
        # load < ceil(x) <=> load < x for an integer load; the margin keeps rounding on the safe side
        per_weight = self._factor * (total + 1) / self._wsum * (1.0 - 1e-12)
        owner, w, size = self._owner, self._weights, len(self._owner)
        for k in range(start, start + size):
            o = owner[k % size]
            if loads[o] < per_weight * w[o]:
                return int(o)
        return int(owner[start])

    def _pick_hash(self, h: int) -> int:
        return self._choose(h, self._active, sum(self._active))

    def _pick_many(self, keys: npt.NDArray[np.uint64]) -> Any:
        loads = list(self._active)
        total = sum(loads)
        out = []
        for h in hash_u64_array(keys).tolist():
            i = self._choose(h, loads, total)
            loads[i] += 1
            total += 1
            out.append(i)
        return out


def _is_prime(m: int) -> bool:
    if m < 2:
        return False
    if m % 2 == 0:
        return m == 2
    d = 3
    while d * d <= m:
        if m % d == 0:
            return False
        d += 2
    return True


MAGLEV_OFFSET_SEED = 0x6D61676C65764F46  # "maglevOF"
MAGLEV_SKIP_SEED = 0x6D61676C65765350  # "maglevSP"


class Maglev(Balancer):
    """Maglev hashing (Eisenbud et al., NSDI 2016, section 3.4): a lookup table of prime size
    ``table_size`` (65537 by default) filled by each backend's permutation
    ``offset + j * skip (mod M)``, both from the backend's name.

    Backends fill the table in name order, each in proportion to its weight (a backend of the
    largest weight takes one entry per round, one of a third of that weight one every three
    rounds), so a pick is one table read and an ``update`` that removes one backend moves a little
    more than its share of keys.
    """

    name = "maglev"

    def __init__(
        self,
        backends: Iterable[Any],
        weights: Sequence[float] | None = None,
        *,
        table_size: int = 65537,
        seed: int | None = None,
    ) -> None:
        _check_int(self.name, "table_size", table_size, 2)
        if table_size >= (1 << 31) or not _is_prime(table_size):
            raise ValueError(f"{self.name}: table_size must be a prime below 2**31, not {table_size!r}")
        self._m = table_size
        super().__init__(backends, weights, seed=seed)

    @property
    def table_size(self) -> int:
        """M, the number of entries of the lookup table."""
        return self._m

    @property
    def table(self) -> npt.NDArray[np.int32]:
        """The lookup table: entry -> backend index (a copy, int32)."""
        return self._table_arr.copy()

    def _check_update(self, names: tuple[bytes, ...], weights: tuple[float, ...]) -> None:
        if len(names) >= self._m:
            raise ValueError(
                f"{self.name}: {len(names)} backends need a table_size above {len(names)}, "
                f"not {self._m}"
            )

    def _rebuild(self) -> None:
        m = self._m
        order = sorted(range(self.n), key=self._names.__getitem__)
        wmax = max(self._weights)
        pos = [xxh3_64(self._names[i], MAGLEV_OFFSET_SEED) % m for i in order]
        skip = [xxh3_64(self._names[i], MAGLEV_SKIP_SEED) % (m - 1) + 1 for i in order]
        rate = [self._weights[i] / wmax for i in order]
        credit = [0.0] * len(order)
        table = [-1] * m
        taken = bytearray(m)
        filled = 0
        while filled < m:
            for k, who in enumerate(order):
                if rate[k] <= 0:
                    continue
                credit[k] += rate[k]
                if credit[k] < 1.0 - 1e-9:
                    continue
                credit[k] -= 1.0
                # the next free entry of k's permutation (M prime, 0 < skip < M: one exists)
                c = pos[k]
                while taken[c]:
                    c += skip[k]
                    if c >= m:
                        c -= m
                taken[c] = 1
                table[c] = who
                c += skip[k]
                pos[k] = c - m if c >= m else c
                filled += 1
                if filled == m:
                    break
        self._table = table
        self._table_arr = np.asarray(table, dtype=np.int32)

    def _pick_hash(self, h: int) -> int:
        # the high 32 bits scaled into [0, M): uniform, and no division
        return self._table[((h >> 32) * self._m) >> 32]

    def _pick_many(self, keys: npt.NDArray[np.uint64]) -> Any:
        entry = ((hash_u64_array(keys) >> np.uint64(32)) * np.uint64(self._m)) >> np.uint64(32)
        return self._table_arr[entry]

    def _extra_nbytes(self) -> int:
        return self._m * (2 if self.n < 65536 else 4)  # the compiled table is uint16 when it can be


JUMP_LCG = 2862933555777941757


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014)."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * JUMP_LCG + 1) & MASK
        j = int((b + 1) * (2147483648.0 / ((key >> 33) + 1)))
    return b


def jump_hash_array(keys: npt.NDArray[np.uint64], buckets: int) -> npt.NDArray[np.int64]:
    """``jump_hash`` of every key: each round moves the keys still travelling (the same double
    arithmetic, so the same buckets)."""
    key = keys.copy()
    b = np.zeros(len(keys), dtype=np.int64)
    going = np.ones(len(keys), dtype=bool)
    while going.any():
        key[going] = key[going] * np.uint64(JUMP_LCG) + np.uint64(1)
        step = 2147483648.0 / ((key[going] >> np.uint64(33)) + np.uint64(1)).astype(np.float64)
        j = ((b[going] + 1).astype(np.float64) * step).astype(np.int64)
        moved = j < buckets
        idx = np.flatnonzero(going)
        b[idx[moved]] = j[moved]
        going[idx[~moved]] = False
    return b


class JumpHash(Balancer):
    """Jump consistent hash over slots 0..n-1. No table: memory is one int per backend.

    Jump only ever removes the last slot cheaply, so backends keep their slots across
    ``update``: a new backend takes a new last slot (moving 1/(n+1) of the keys), and a removed
    backend's slot goes to the backend of the last slot, so removing the last one moves 1/n of the
    keys and removing another about 2/n. Jump has no weights: they must all be equal.
    """

    name = "jump"

    def __init__(
        self, backends: Iterable[Any], weights: Sequence[float] | None = None, *, seed: int | None = None
    ) -> None:
        self._slots: list[bytes] = []  # slot -> backend name
        super().__init__(backends, weights, seed=seed)

    @property
    def slots(self) -> tuple[int, ...]:
        """Slot -> backend index."""
        return tuple(self._slot_backend)

    def _check_update(self, names: tuple[bytes, ...], weights: tuple[float, ...]) -> None:
        if len(set(weights)) > 1:
            raise ValueError(
                f"{self.name}: jump hash has no weights; weights must all be equal, "
                f"not {list(weights)!r}"
            )

    def _rebuild(self) -> None:
        keep = set(self._names)
        slots = list(self._slots)
        i = 0
        while i < len(slots):  # a removed backend's slot goes to the backend of the last slot
            if slots[i] in keep:
                i += 1
                continue
            while slots and slots[-1] not in keep:
                slots.pop()
            if i < len(slots):
                slots[i] = slots.pop()
                i += 1
        have = set(slots)
        slots.extend(nm for nm in self._names if nm not in have)
        index = {nm: k for k, nm in enumerate(self._names)}
        self._slots = slots
        self._slot_backend = [index[nm] for nm in slots]
        self._slot_arr = np.asarray(self._slot_backend, dtype=np.int32)

    def _pick_hash(self, h: int) -> int:
        return self._slot_backend[jump_hash(h, self.n)]

    def _pick_many(self, keys: npt.NDArray[np.uint64]) -> Any:
        return self._slot_arr[jump_hash_array(hash_u64_array(keys), self.n)]

    def _extra_nbytes(self) -> int:
        return self.n * 4


RENDEZVOUS_SEED = 0x52656E64657A766F  # "Rendezvo"


class Rendezvous(Balancer):
    """Highest random weight (Thaler and Ravishankar): the backend whose score for the key is the
    highest wins. The score mixes the key's hash with the backend's name hash; with weights it is
    ``weight / -ln(u)`` for that mix as ``u`` in (0, 1) (Schindelhauer and Schomaker), so a
    backend wins in proportion to its weight. A pick is O(n); removing a backend moves exactly its
    keys and no other.
    """

    name = "rendezvous"

    def _rebuild(self) -> None:
        self._seeds = [xxh3_64(nm, RENDEZVOUS_SEED) for nm in self._names]
        self._seed_arr = np.asarray(self._seeds, dtype=np.uint64)
        w = self._weights
        self._equal = all(x == w[0] for x in w)

    def _pick_hash(self, h: int) -> int:
        if self._equal:  # the first of the highest mixes
            mixes = [mix64(h ^ s) for s in self._seeds]
            return mixes.index(max(mixes))
        best, best_score = 0, -1.0
        for i, (w, s) in enumerate(zip(self._weights, self._seeds, strict=True)):
            if w <= 0:
                continue
            u = ((mix64(h ^ s) >> 11) + 0.5) * (1.0 / 9007199254740992.0)
            score = w / -math.log(u)
            if score > best_score:
                best, best_score = i, score
        return best

    def _pick_many(self, keys: npt.NDArray[np.uint64]) -> Any:
        if not self._equal:  # math.log, as the compiled twin's C log: numpy's may round otherwise
            return super()._pick_many(keys)
        hashes = hash_u64_array(keys)
        out = np.empty(len(keys), dtype=np.int32)
        chunk = max(1, (1 << 20) // self.n)  # a million mixes at a time
        for start in range(0, len(keys), chunk):
            part = hashes[start : start + chunk, None]
            out[start : start + chunk] = np.argmax(mix64_array(part ^ self._seed_arr[None, :]), axis=1)
        return out

    def _extra_nbytes(self) -> int:
        return self.n * 8


ALGORITHMS: dict[str, type[Balancer]] = {
    cls.name: cls
    for cls in (
        RoundRobin,
        WeightedRoundRobin,
        WeightedRandom,
        LeastConn,
        RingHash,
        Maglev,
        JumpHash,
        Rendezvous,
        BoundedLoad,
    )
}
