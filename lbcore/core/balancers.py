"""Balancing algorithms: pick a backend for a connection, one key or a whole array at a time.

>>> from lbcore import balancers
>>> b = balancers.create("maglev", ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])
>>> b.pick("client-10.1.2.3") in (0, 1, 2)
True

Every algorithm answers the same interface (:class:`Balancer`): ``pick(key)`` returns the
backend's index for a str, bytes or int key (hashed with ``lbcore.hash64``, so picks are the same in
every process), ``pick_many(keys)`` does it for a numpy array of uint64 keys without a Python
loop, ``update(backends, weights=None)`` replaces the backends while keeping the disruption the
algorithm promises (the structure is rebuilt by backend *name*), and ``acquire(i)`` /
``release(i)`` count live connections for the load-aware algorithms.

Built-in algorithms:

==========================  ==========================================================
``round_robin``             each backend in turn (smooth weighted when weights differ)
``weighted_round_robin``    nginx's smooth weighted round robin
``random``                  weighted random (alias table)
``least_conn``              power of two distinct choices over live connections, weighted;
                            ``active_request_bias`` (1.0)
``ring_hash``               ketama ring; ``min_ring_size``, ``max_ring_size``, ``vnodes``
``maglev``                  Maglev lookup table; ``table_size`` (prime, 65537)
``jump``                    Lamping and Veach jump hash (no weights)
``rendezvous``              highest random weight, weighted
``bounded_load``            consistent hashing with bounded loads; ``balance_factor``
==========================  ==========================================================

Plugins add algorithms through the ``lbcore_register_balancers`` hook.

The built-in classes are the compiled ones (``_balancers_c``) unless ``LBCORE_NO_EXTENSIONS`` is
set or they are not built; then they come from ``_balancers_py``, their readable twin, which
gives the same picks for the same backends, weights, seed and keys (``COMPILED`` says which).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from lbcore.core._extensions import NO_EXTENSIONS

if TYPE_CHECKING:  # type checkers read the readable twin
    from lbcore.core._balancers_py import (
        ALGORITHMS,
        Balancer,
        BoundedLoad,
        JumpHash,
        LeastConn,
        Maglev,
        Rendezvous,
        RingHash,
        RoundRobin,
        WeightedRandom,
        WeightedRoundRobin,
    )
else:
    if not NO_EXTENSIONS:
        try:
            from lbcore.core._balancers_c import (
                ALGORITHMS,
                Balancer,
                BoundedLoad,
                JumpHash,
                LeastConn,
                Maglev,
                Rendezvous,
                RingHash,
                RoundRobin,
                WeightedRandom,
                WeightedRoundRobin,
            )
        except ImportError:  # pragma: no cover - built without the extension
            NO_EXTENSIONS = True
    if NO_EXTENSIONS:
        from lbcore.core._balancers_py import (
            ALGORITHMS,
            Balancer,
            BoundedLoad,
            JumpHash,
            LeastConn,
            Maglev,
            Rendezvous,
            RingHash,
            RoundRobin,
            WeightedRandom,
            WeightedRoundRobin,
        )

# whether ALGORITHMS are the compiled classes (the compiled pick core takes only those)
COMPILED: bool = not NO_EXTENSIONS

__all__ = [
    "POSITIONAL",
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
    "available",
    "builtin",
    "create",
]

HOOK = "lbcore_register_balancers"

# the keyword options each built-in algorithm accepts, beside backends and weights
OPTIONS: dict[str, tuple[str, ...]] = {
    "round_robin": ("seed",),
    "weighted_round_robin": ("seed",),
    "random": ("seed",),
    "least_conn": ("active_request_bias", "seed"),
    "ring_hash": ("min_ring_size", "max_ring_size", "vnodes", "seed"),
    "maglev": ("table_size", "seed"),
    "jump": ("seed",),
    "rendezvous": ("seed",),
    "bounded_load": ("balance_factor", "min_ring_size", "max_ring_size", "vnodes", "seed"),
}
assert set(OPTIONS) == set(ALGORITHMS)

# algorithms whose picks depend on the key only: consistent across processes and restarts
CONSISTENT: frozenset[str] = frozenset({"ring_hash", "maglev", "jump", "rendezvous"})
# algorithms whose picks, on a balancer as built (not updated), depend on the backends'
# positions and weights, not on their names (jump's slots follow the order given): a caller that
# builds a new balancer for every change (never ``update``) may name the backends by position,
# with names shared by every balancer
POSITIONAL: frozenset[str] = frozenset(
    {"round_robin", "weighted_round_robin", "random", "least_conn", "jump"})


def builtin() -> list[str]:
    """The names of the built-in algorithms, sorted."""
    return sorted(ALGORITHMS)


def _plugin_factories() -> dict[str, Callable[..., Any]]:
    from lbcore.plugins import registered

    factories = registered(HOOK)
    clash = sorted(set(factories) & set(ALGORITHMS))
    if clash:
        raise RuntimeError(f"{HOOK}: {', '.join(clash)} is a built-in algorithm name")
    return factories


def available() -> list[str]:
    """Every algorithm ``create`` accepts: the built-ins and those registered by plugins."""
    return sorted([*ALGORITHMS, *_plugin_factories()])


def create(
    name: str,
    backends: Iterable[Any],
    weights: Sequence[float] | None = None,
    **options: Any,
) -> Balancer:
    """Build the algorithm ``name`` over ``backends`` (with optional per-backend ``weights``).

    :raises ValueError: unknown name (the message lists the available ones), unknown option,
        empty backends, a backend given twice, weights of the wrong length, negative or all zero.
    """
    cls = ALGORITHMS.get(name)
    if cls is not None:
        unknown = sorted(set(options) - set(OPTIONS[name]))
        if unknown:
            raise ValueError(
                f"{name}: unknown option {', '.join(map(repr, unknown))}; "
                f"options are {', '.join(OPTIONS[name])}"
            )
        return cls(backends, weights, **options)
    factories = _plugin_factories()
    factory = factories.get(name)
    if factory is None:
        names = ", ".join(sorted([*ALGORITHMS, *factories]))
        raise ValueError(f"unknown balancing algorithm {name!r}; available: {names}")
    backends = list(backends)
    if not backends:
        raise ValueError(f"{name}: backends must not be empty")
    balancer: Balancer = factory(backends, weights, **options)
    return balancer
