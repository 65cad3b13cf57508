"""The readable balancers (``_balancers_py``) against the compiled ones, call for call.

Both twins get the same backends, weights, options and seed, then the same calls (picks of str,
bytes and int keys, retries, batches, acquire/release, updates); every answer, every state view
and every error (type and message) must be the same. Random and least_conn draw from the same
seeded splitmix64 stream in both, so they are held to the same answers too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbcore.core import _balancers_py, balancers

try:  # the compiled twin itself, never the chooser: a test must not compare the readable twin with itself
    from lbcore.core import _balancers_c
except ImportError:  # not built: the tests marked compiled skip
    _balancers_c = None  # type: ignore[assignment]

ALGORITHMS = sorted(_balancers_py.ALGORITHMS)
PRIMES = [2, 3, 5, 7, 13, 31, 101, 251, 1009, 4099, 65537]

# the first 16 picks of "client-0".."client-15" over five backends of weights 1, 2, 3, 0, 1.5
# (jump: equal), seed 42, each pick acquired: recorded from the compiled twin, so the readable
# twin is held to it even where the compiled one is not built
NAMES = [f"10.0.0.{i}:8080" for i in range(1, 6)]
RECORDED = {
    "bounded_load": [2, 0, 2, 4, 4, 2, 1, 2, 1, 4, 1, 2, 4, 2, 1, 1],
    "jump": [3, 0, 1, 4, 1, 3, 3, 4, 1, 3, 0, 0, 2, 1, 4, 2],
    "least_conn": [2, 1, 2, 2, 4, 2, 1, 0, 4, 2, 4, 1, 2, 2, 1, 1],
    "maglev": [4, 4, 1, 1, 2, 2, 2, 2, 2, 2, 1, 0, 4, 2, 2, 2],
    "random": [4, 2, 1, 1, 0, 2, 1, 2, 1, 4, 1, 2, 2, 2, 4, 1],
    "rendezvous": [1, 2, 4, 1, 1, 4, 4, 4, 1, 2, 1, 2, 2, 1, 2, 1],
    "ring_hash": [2, 0, 2, 0, 4, 2, 1, 2, 1, 4, 1, 4, 4, 4, 1, 1],
    "round_robin": [2, 1, 4, 2, 0, 1, 2, 4, 2, 1, 0, 2, 4, 1, 2, 2],
    "weighted_round_robin": [2, 1, 4, 2, 0, 1, 2, 4, 2, 1, 0, 2, 4, 1, 2, 2],
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_readable_twin_gives_the_recorded_picks(algorithm):
    options = {"table_size": 251} if algorithm == "maglev" else {}
    weights = None if algorithm == "jump" else [1.0, 2.0, 3.0, 0.0, 1.5]
    b = _balancers_py.ALGORITHMS[algorithm](NAMES, weights, seed=42, **options)
    picks = []
    for k in range(16):
        picks.append(b.pick(f"client-{k}"))
        b.acquire(picks[-1])
    assert picks == RECORDED[algorithm]


def test_the_chooser_offers_the_twin_the_switch_asks_for():
    from lbcore.core._extensions import NO_EXTENSIONS

    twin = _balancers_py if NO_EXTENSIONS else _balancers_c
    assert balancers.ALGORITHMS is twin.ALGORITHMS
    assert balancers.COMPILED is not NO_EXTENSIONS


def test_the_picker_takes_its_compiled_core_only_with_compiled_balancers(monkeypatch):
    from lbcore import ConfigError, Picker

    monkeypatch.setattr(balancers, "COMPILED", False)  # as when only the balancers are unbuilt
    assert Picker(algorithm="maglev").compiled is False
    with pytest.raises(ConfigError, match="compiled core is not available"):
        Picker(algorithm="maglev", compiled=True)


@pytest.mark.compiled
def test_the_compiled_twin_is_the_extension_itself():
    assert _balancers_c.__file__.endswith((".so", ".pyd"))
    assert _balancers_c.Maglev is not _balancers_py.Maglev


@pytest.mark.compiled
def test_both_twins_have_the_same_algorithms_and_properties():
    assert sorted(_balancers_c.ALGORITHMS) == ALGORITHMS
    for name in ALGORITHMS:
        compiled, readable = _balancers_c.ALGORITHMS[name], _balancers_py.ALGORITHMS[name]
        public = {a for a in dir(compiled) if not a.startswith("_")}
        assert public == {a for a in dir(readable) if not a.startswith("_")}, name
        assert readable.__mro__[1].__name__ == compiled.__mro__[1].__name__


# -- call for call -------------------------------------------------------------------------------


def _outcome(call: Any) -> Any:
    """What a call gives: its answer, or the type and message of what it raised."""
    try:
        value = call()
    except Exception as error:  # noqa: BLE001 - the twins must fail alike
        return ("raised", type(error).__name__, str(error))
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.tolist())
    return value


def _state(b: Any) -> Any:
    extra = {}
    for view in ("ring_size", "table_size", "slots", "balance_factor", "active_request_bias"):
        if hasattr(b, view):
            extra[view] = getattr(b, view)
    if hasattr(b, "points"):
        hashes, owners = b.points
        extra["points"] = (hashes.tolist(), owners.tolist())
    if hasattr(b, "table"):
        extra["table"] = b.table.tolist()
    return (b.n, len(b), b.backends, b.weights, b.active, b.nbytes, b.name, extra)


backend_names = st.lists(
    st.one_of(
        st.builds("10.{}.{}.{}:{}".format, st.integers(0, 3), st.integers(0, 255),
                  st.integers(0, 255), st.integers(1, 65535)),
        st.text(min_size=1, max_size=12),
        st.binary(min_size=1, max_size=12),
    ),
    min_size=1,
    max_size=24,
    unique_by=lambda b: b.encode("utf-8", "surrogatepass") if isinstance(b, str) else b,
).filter(lambda bs: all(not isinstance(b, str) or b.isprintable() for b in bs))

weight = st.one_of(
    st.sampled_from([0.0, 1.0, 2.0, 3.0, 0.5, 100.0]),
    st.integers(0, 20),
    st.floats(0.0, 50.0, allow_nan=False),
)

keys = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.integers(-(2**63), 2**64 - 1),
)


@st.composite
def weights_for(draw: Any, n: int, algorithm: str) -> Any:
    kind = draw(st.sampled_from(["none", "equal", "any"]))
    if kind == "none" or (algorithm == "jump" and draw(st.integers(0, 9)) > 0):
        return None
    if kind == "equal":
        return [draw(st.sampled_from([1.0, 2.5, 7]))] * n
    return draw(st.lists(weight, min_size=n, max_size=n))


@st.composite
def options_for(draw: Any, algorithm: str) -> dict[str, Any]:
    options: dict[str, Any] = {"seed": draw(st.integers(0, 2**64 - 1))}
    if algorithm in ("ring_hash", "bounded_load"):
        options["min_ring_size"] = draw(st.integers(1, 3000))
        options["max_ring_size"] = draw(st.sampled_from([options["min_ring_size"], 4000, 8388608]))
        options["vnodes"] = draw(st.integers(1, 200))
    if algorithm == "bounded_load":
        options["balance_factor"] = draw(st.sampled_from([1.0, 1.05, 1.25, 2.0, 3]))
    if algorithm == "least_conn":
        options["active_request_bias"] = draw(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2, 3.0]))
    if algorithm == "maglev":
        options["table_size"] = draw(st.sampled_from(PRIMES))
    return options


@st.composite
def operations(draw: Any, algorithm: str) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(
            ["pick", "pick", "pick_hashed", "pick_retry", "pick_many", "acquire", "acquire",
             "release", "update"]
        ))
        if kind == "pick":
            ops.append((kind, draw(keys)))
        elif kind == "pick_hashed":
            ops.append((kind, draw(st.integers(0, 2**64 - 1))))
        elif kind == "pick_retry":
            ops.append((kind, draw(keys), draw(st.integers(-1, 5))))
        elif kind == "pick_many":
            ops.append((kind, draw(st.lists(st.integers(0, 2**64 - 1), max_size=50))))
        elif kind in ("acquire", "release"):
            ops.append((kind, draw(st.integers(-1, 25))))
        else:
            backends = draw(backend_names)
            ops.append((kind, backends, draw(weights_for(len(backends), algorithm))))
    return ops


def _apply(b: Any, op: tuple[Any, ...]) -> Any:
    kind, *args = op
    if kind == "pick_many":
        return _outcome(lambda: b.pick_many(np.asarray(args[0], dtype=np.uint64)))
    if kind == "update":
        return _outcome(lambda: b.update(*args))
    return _outcome(lambda: getattr(b, kind)(*args))


@pytest.mark.compiled
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_both_twins_answer_every_call_alike(algorithm, data):
    backends = data.draw(backend_names, label="backends")
    weights = data.draw(weights_for(len(backends), algorithm), label="weights")
    options = data.draw(options_for(algorithm), label="options")
    compiled = _outcome(lambda: _balancers_c.ALGORITHMS[algorithm](backends, weights, **options))
    readable = _outcome(lambda: _balancers_py.ALGORITHMS[algorithm](backends, weights, **options))
    if isinstance(compiled, tuple):  # refused: alike
        assert readable == compiled
        return
    assert _state(readable) == _state(compiled)
    for op in data.draw(operations(algorithm), label="operations"):
        assert _apply(readable, op) == _apply(compiled, op), op
        assert _state(readable) == _state(compiled), op


# -- refusals --------------------------------------------------------------------------------------


BAD_OPTIONS = [
    ("least_conn", {"active_request_bias": -1}),
    ("least_conn", {"active_request_bias": float("nan")}),
    ("least_conn", {"active_request_bias": True}),
    ("ring_hash", {"min_ring_size": 0}),
    ("ring_hash", {"min_ring_size": 10, "max_ring_size": 9}),
    ("ring_hash", {"vnodes": 0}),
    ("ring_hash", {"vnodes": 2.0}),
    ("ring_hash", {"min_ring_size": 4, "max_ring_size": 4}),
    ("bounded_load", {"balance_factor": 0.99}),
    ("bounded_load", {"balance_factor": "2"}),
    ("maglev", {"table_size": 1}),
    ("maglev", {"table_size": 65536}),
    ("maglev", {"table_size": 2**31 + 11}),
    ("maglev", {"table_size": 5}),
    ("jump", {}),
]
BAD_WEIGHTS = [[1, 2], [1, -1, 1, 1, 1], [0, 0, 0, 0, 0], [1, None, 1, 1, 1], [True] * 5,
               [1, float("inf"), 1, 1, 1], [1, 2, 3, 4, 5]]


@pytest.mark.compiled
@pytest.mark.parametrize(("algorithm", "options"), BAD_OPTIONS)
def test_both_twins_refuse_bad_options_alike(algorithm, options):
    backends = NAMES if algorithm != "jump" else NAMES * 2
    compiled = _built(_balancers_c, algorithm, backends, **options)
    assert compiled[0] == "raised"
    assert _built(_balancers_py, algorithm, backends, **options) == compiled


def _built(module: Any, algorithm: str, *args: Any, **options: Any) -> Any:
    """The state of a balancer the twin builds, or what building it raised."""
    made = _outcome(lambda: module.ALGORITHMS[algorithm](*args, **options))
    return made if isinstance(made, tuple) else _state(made)


@pytest.mark.compiled
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("weights", BAD_WEIGHTS)
def test_both_twins_refuse_bad_weights_and_backends_alike(algorithm, weights):
    for backends, ws in ((NAMES, weights), ([], None), (["a", "b", "a"], None)):
        compiled = _built(_balancers_c, algorithm, backends, ws)
        assert _built(_balancers_py, algorithm, backends, ws) == compiled


@pytest.mark.compiled
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_both_twins_give_the_same_batches_of_a_hundred_thousand_keys(algorithm):
    # the readable pick_many takes whole-array steps where it can: they must give what the
    # compiled loop (and its AVX2 path) gives, over many keys and backends
    rng = np.random.default_rng(11)
    keys = rng.integers(0, 2**64 - 1, 100_000, dtype=np.uint64, endpoint=True)
    backends = [f"10.1.{i // 256}.{i % 256}:443" for i in range(37)]
    weights = None if algorithm == "jump" else [1.0 + (i % 4) for i in range(37)]
    for ws in (None, weights):
        compiled = _balancers_c.ALGORITHMS[algorithm](backends, ws, seed=3)
        readable = _balancers_py.ALGORITHMS[algorithm](backends, ws, seed=3)
        assert readable.pick_many(keys).tolist() == compiled.pick_many(keys).tolist()
