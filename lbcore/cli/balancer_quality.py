"""How well an algorithm balances: load imbalance, disruption on change, build cost.

Every measure works on a fixed set of uint64 keys (``sample_keys``) through ``pick_many``, so it
is cheap enough for a test and for ``lbcore bench``. The same measures run on
``uhashring.HashRing`` (ketama in pure Python), the peer of the quality table.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lbcore.core import balancers

PEER = "uhashring"


def sample_keys(count: int, seed: int = 0) -> npt.NDArray[np.uint64]:
    """``count`` distinct-looking uint64 keys, the same for a given seed on every machine."""
    return np.random.default_rng(seed).integers(0, 2**64, size=count, dtype=np.uint64)


def backend_names(n: int) -> list[str]:
    """``n`` backend names shaped like pod endpoints: ``10.x.y.z:8080``."""
    return [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:8080" for i in range(n)]


def loads(balancer: Any, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """Keys per backend index."""
    return np.bincount(balancer.pick_many(keys), minlength=len(balancer.backends))


def imbalance(counts: npt.ArrayLike) -> float:
    """max / mean of the keys per backend: 1.0 is perfect balance."""
    c = np.asarray(counts, dtype=np.float64)
    return float(c.max() / c.mean())


@dataclass(frozen=True)
class Disruption:
    """Keys that changed backend when one backend went away (or came)."""

    moved: float  # fraction of all keys that changed backend
    ideal: float  # the least that had to move: the removed (or added) backend's share, 1/N
    between_survivors: float  # fraction that moved from one backend that stayed to another

    @property
    def excess(self) -> float:
        """moved / ideal: 1.0 is the minimal disruption."""
        return self.moved / self.ideal


def _named(backends: Sequence[str], picks: npt.NDArray[np.int32]) -> npt.NDArray[np.str_]:
    return np.asarray(backends, dtype=object)[picks]


def disruption(
    build: Callable[[list[str]], Any],
    before: Sequence[str],
    after: Sequence[str],
    keys: npt.NDArray[np.uint64],
    *,
    update: bool = True,
) -> Disruption:
    """Compare the backend *names* picked for ``keys`` over ``before`` and over ``after``.

    With ``update`` the first balancer is updated in place (what a running proxy does);
    otherwise a second one is built (what a restart does).
    """
    first = build(list(before))
    names_before = _named(first.backends, first.pick_many(keys))
    if update:
        first.update(list(after))
        second = first
    else:
        second = build(list(after))
    names_after = _named(second.backends, second.pick_many(keys))
    changed = names_before != names_after
    both = set(before) & set(after)
    stayed = np.fromiter((nm in both for nm in names_before), bool, len(keys)) & np.fromiter(
        (nm in both for nm in names_after), bool, len(keys)
    )
    gone_or_new = set(before) ^ set(after)
    share = 1.0 / max(len(before), len(after)) if len(gone_or_new) == 1 else float("nan")
    return Disruption(
        moved=float(changed.mean()),
        ideal=share,
        between_survivors=float((changed & stayed).mean()),
    )


def build_cost(build: Callable[[], Any], repeat: int = 3) -> tuple[float, int]:
    """(best build time in seconds, bytes of the structure) over ``repeat`` builds."""
    best = float("inf")
    balancer = None
    for _ in range(repeat):
        start = time.perf_counter()
        balancer = build()
        best = min(best, time.perf_counter() - start)
    nbytes = getattr(balancer, "nbytes", None)
    if nbytes is None:  # a pure-Python structure: what its build allocated
        tracemalloc.start()
        kept = build()
        nbytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del kept
    return best, int(nbytes)


class UhashringPeer:
    """``uhashring.HashRing`` behind the part of the Balancer interface the measures use."""

    name = PEER

    def __init__(self, backends: Sequence[str], weights: Sequence[float] | None = None):
        from uhashring import HashRing

        self.backends = tuple(backends)
        self._index = {b: i for i, b in enumerate(self.backends)}
        nodes: Any = list(backends)
        if weights is not None:
            nodes = {b: {"weight": w} for b, w in zip(backends, weights, strict=True)}
        self._ring = HashRing(nodes=nodes)

    def pick(self, key: str | bytes | int) -> int:
        return self._index[self._ring.get_node(str(key))]

    def pick_many(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.int32]:
        get, index = self._ring.get_node, self._index
        return np.fromiter((index[get(str(k))] for k in keys.tolist()), np.int32, len(keys))

    def update(self, backends: Sequence[str], weights: Sequence[float] | None = None) -> None:
        new = set(backends)
        for gone in set(self.backends) - new:
            self._ring.remove_node(gone)
        for added in [b for b in backends if b not in self._index]:
            self._ring.add_node(added)
        self.backends = tuple(backends)
        self._index = {b: i for i, b in enumerate(self.backends)}


def builder(name: str, **options: Any) -> Callable[[list[str]], Any]:
    """``backends -> balancer`` for an algorithm name or ``"uhashring"``."""
    if name == PEER:
        return UhashringPeer
    return lambda backends: balancers.create(name, backends, **options)


@dataclass(frozen=True)
class QualityRow:
    """One algorithm at one number of backends."""

    algorithm: str
    n: int
    imbalance: float
    disruption: Disruption | None  # None for the algorithms that do not hash the key
    build_seconds: float
    nbytes: int


def measure(name: str, n: int, keys: npt.NDArray[np.uint64], repeat: int = 3) -> QualityRow:
    """Imbalance over ``keys``, disruption when the last of ``n`` backends goes, build cost."""
    build = builder(name)
    names = backend_names(n)
    counts = loads(build(names), keys)
    dis = None
    if name == PEER or name in balancers.CONSISTENT or name == "bounded_load":
        dis = disruption(build, names, names[:-1], keys)
    seconds, nbytes = build_cost(lambda: build(names), repeat)
    return QualityRow(name, n, imbalance(counts), dis, seconds, nbytes)
