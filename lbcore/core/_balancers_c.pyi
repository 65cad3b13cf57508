from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

@disjoint_base
class Balancer:
    """Base of every compiled algorithm."""

    name: ClassVar[str]
    @property
    def n(self) -> int:
        """Number of backends."""
    @property
    def backends(self) -> tuple[Any, ...]:
        """The backends, index -> backend."""
    @property
    def weights(self) -> tuple[float, ...]:
        """The weights, index -> float."""
    @property
    def active(self) -> tuple[int, ...]:
        """Live connections per backend, counted by ``acquire`` and ``release``."""
    @property
    def nbytes(self) -> int:
        """Bytes of C memory held by the lookup structure and per-backend arrays."""
    def __init__(
        self, backends: Iterable[Any], weights: Sequence[float] | None = None, *, seed: int | None = None
    ) -> None: ...
    def __len__(self) -> int: ...
    def pick(self, key: str | bytes | int, /) -> int:
        """Index of the backend for ``key``."""
    def pick_hashed(self, h: int) -> int:
        """Index of the backend for a key already hashed with ``lbcore.hash64``."""
    def pick_retry(self, key: str | bytes | int, attempt: int) -> int:
        """Backend for the ``attempt``-th retry of ``key`` (0 is ``pick(key)``)."""
    def pick_many(self, keys: npt.ArrayLike) -> npt.NDArray[np.int32]:
        """Indices for a 1-D array of uint64 keys, each hashed as ``hash64(int(k))``."""
    def acquire(self, i: int) -> None:
        """Count one connection opened to backend ``i``."""
    def release(self, i: int) -> None:
        """Count one connection closed on backend ``i``."""
    def update(self, backends: Iterable[Any], weights: Sequence[float] | None = None) -> None:
        """Replace the backends (and weights), keeping the algorithm's disruption promise."""

@disjoint_base
class WeightedRoundRobin(Balancer):
    """nginx's smooth weighted round robin."""

class RoundRobin(WeightedRoundRobin):
    """Each backend in turn; smooth weighted when weights differ."""

@disjoint_base
class WeightedRandom(Balancer):
    """Weighted random through an alias table."""

@disjoint_base
class LeastConn(WeightedRandom):
    """Least connections by the power of two distinct choices, weighted as Envoy's least request."""

    def __init__(
        self,
        backends: Iterable[Any],
        weights: Sequence[float] | None = None,
        *,
        active_request_bias: float = 1.0,
        seed: int | None = None,
    ) -> None: ...
    @property
    def active_request_bias(self) -> float:
        """The exponent of ``active + 1`` in the effective weight ``weight / (active + 1) ** bias``."""

@disjoint_base
class RingHash(Balancer):
    """Ketama-style hash ring."""

    def __init__(
        self,
        backends: Iterable[Any],
        weights: Sequence[float] | None = None,
        *,
        min_ring_size: int = 1024,
        max_ring_size: int = 8388608,
        vnodes: int = 160,
        seed: int | None = None,
    ) -> None: ...
    @property
    def ring_size(self) -> int:
        """Number of points on the ring."""
    @property
    def points(self) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32]]:
        """(sorted point hashes, owning backend index): copies of the ring."""

@disjoint_base
class BoundedLoad(RingHash):
    """Consistent hashing with bounded loads."""

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
    ) -> None: ...
    @property
    def balance_factor(self) -> float:
        """The factor c: no backend gets more than ceil(c x mean load)."""

@disjoint_base
class Maglev(Balancer):
    """Maglev lookup table of prime size."""

    def __init__(
        self,
        backends: Iterable[Any],
        weights: Sequence[float] | None = None,
        *,
        table_size: int = 65537,
        seed: int | None = None,
    ) -> None: ...
    @property
    def table_size(self) -> int:
        """M, the number of entries of the lookup table."""
    @property
    def table(self) -> npt.NDArray[np.int32]:
        """The lookup table: entry -> backend index (a copy)."""

@disjoint_base
class JumpHash(Balancer):
    """Jump consistent hash with stable slots."""

    @property
    def slots(self) -> tuple[int, ...]:
        """Slot -> backend index."""

@disjoint_base
class Rendezvous(Balancer):
    """Highest random weight, weighted."""

ALGORITHMS: dict[str, type[Balancer]]

def _avx2(enabled: bool | None = None) -> bool:
    """Whether pick_many uses its AVX2 paths; ``enabled`` turns them on (if the CPU has AVX2) or
    off, for tests and benchmarks of both paths."""
