"""A third-party-style plugin that adds one balancing algorithm through the hook."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from lbcore import hash64
from lbcore.hookspecs import hookimpl


class FirstHealthy:
    """Always the first backend of positive weight: a fail-over order, not a spread."""

    name = "first_healthy"

    def __init__(self, backends: Sequence[Any], weights: Sequence[float] | None = None,
                 *, prefer: int = 0):
        self.prefer = prefer
        self.update(backends, weights)

    def update(self, backends: Sequence[Any], weights: Sequence[float] | None = None) -> None:
        self.backends = tuple(backends)
        self.weights = tuple(weights) if weights is not None else (1.0,) * len(self.backends)
        self.active = [0] * len(self.backends)

    def _first(self) -> int:
        order = list(range(self.prefer, len(self.backends))) + list(range(self.prefer))
        return next(i for i in order if self.weights[i] > 0)

    def pick(self, key: str | bytes | int) -> int:
        hash64(key)  # refuse the keys the built-ins refuse
        return self._first()

    def pick_many(self, keys: npt.ArrayLike) -> npt.NDArray[np.int32]:
        return np.full(len(np.asarray(keys)), self._first(), dtype=np.int32)

    def acquire(self, i: int) -> None:
        self.active[i] += 1

    def release(self, i: int) -> None:
        self.active[i] -= 1


@hookimpl
def lbcore_register_balancers() -> Mapping[str, Callable[..., Any]]:
    return {"first_healthy": FirstHealthy}
