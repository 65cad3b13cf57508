"""Selectors against what a user would otherwise write, measured in the same run.

Run: ``python -m pytest benchmarks/test_bench_selectors.py -s``. Each test prints a ``RATIO`` line.

- parse and match: the compiled twin against ``NaiveSelector`` below, a straightforward
  pure-Python selector (regular expressions to parse, a loop of comparisons to match);
- the index with 10,000 services and 100,000 pods: one pod's label change and the look-up of
  its services, against scanning every service's selector.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable

import pytest

from lbcore import _selectors_c, _selectors_py

SELECTOR = "app=web, tier in (frontend,backend), env!=prod, !canary, release"
LABELS = {
    "app": "web",
    "tier": "backend",
    "env": "staging",
    "release": "v42",
    "pod-template-hash": "5d8c7b9f6",
}


class NaiveSelector:
    """A label selector as one would write it in a few lines of Python: split on the commas
    outside parentheses, recognise each requirement with a regular expression, and match by
    walking the requirements."""

    _SPLIT = re.compile(r",(?![^()]*\))")
    _SET = re.compile(r"\s*(!?)\s*([^\s!=<>(),]+)\s*(?:(in|notin)\s*\(([^)]*)\)|(==|=|!=|>|<)\s*([^\s,]*))?\s*")

    def __init__(self, text: str):
        self.requirements: list[tuple[str, str, tuple[str, ...]]] = []
        if not text.strip():
            return
        for part in self._SPLIT.split(text):
            m = self._SET.fullmatch(part)
            if m is None:
                raise ValueError(f"bad requirement {part!r}")
            bang, key, set_op, set_values, op, value = m.groups()
            if bang:
                self.requirements.append((key, "!", ()))
            elif set_op:
                self.requirements.append((key, set_op, tuple(v.strip() for v in set_values.split(","))))
            elif op:
                self.requirements.append((key, op, (value,)))
            else:
                self.requirements.append((key, "exists", ()))

    def matches(self, labels: dict[str, str]) -> bool:
        for key, op, values in self.requirements:
            if op in ("=", "==", "in"):
                if labels.get(key) not in values or key not in labels:
                    return False
            elif op in ("!=", "notin"):
                if key in labels and labels[key] in values:
                    return False
            elif op == "exists":
                if key not in labels:
                    return False
            elif op == "!":
                if key in labels:
                    return False
            else:
                if key not in labels:
                    return False
                have, want = int(labels[key]), int(values[0])
                if (op == ">" and not have > want) or (op == "<" and not have < want):
                    return False
        return True


def per_call(fn: Callable[[], object], number: int, repeat: int = 5) -> float:
    """Median seconds per call of ``fn`` over ``repeat`` runs of ``number`` calls."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - start) / number)
    return statistics.median(runs)


def report(name: str, ours: float, peer: float, peer_name: str) -> float:
    ratio = peer / ours
    print(f"\n{name}: lbcore {ours * 1e9:,.0f} ns, {peer_name} {peer * 1e9:,.0f} ns")
    print(f"RATIO {name} vs {peer_name}: {ratio:,.1f}x")
    return ratio


def test_parse(benchmark):
    assert str(NaiveSelector(SELECTOR).requirements) and NaiveSelector(SELECTOR).matches(LABELS)
    benchmark(_selectors_c.parse_selector, SELECTOR)
    ours = benchmark.stats.stats.median
    report("selector parse", ours, per_call(lambda: NaiveSelector(SELECTOR), 20_000), "naive regex parse")
    report("selector parse", ours, per_call(lambda: _selectors_py.parse_selector(SELECTOR), 5_000), "readable twin")


def test_match(benchmark):
    compiled = _selectors_c.parse_selector(SELECTOR)
    naive = NaiveSelector(SELECTOR)
    readable = _selectors_py.parse_selector(SELECTOR)
    assert compiled.matches(LABELS) and naive.matches(LABELS) and readable.matches(LABELS)
    benchmark(compiled.matches, LABELS)
    ours = benchmark.stats.stats.median
    report("selector match", ours, per_call(lambda: naive.matches(LABELS), 200_000), "naive loop")
    report("selector match", ours, per_call(lambda: readable.matches(LABELS), 100_000), "readable twin")


SERVICES = 10_000
PODS = 100_000


def service_selector(module, i: int):
    # most Services select app + tier; one in fifty uses a set-based expression
    if i % 50 == 0:
        return module.selector_from_label_selector({
            "matchLabels": {"app": f"app-{i}"},
            "matchExpressions": [{"key": "track", "operator": "NotIn", "values": ["canary"]}],
        })
    return module.selector_from_map({"app": f"app-{i}", "tier": "web"})


def pod_labels(i: int, app: int) -> dict[str, str]:
    return {"app": f"app-{app}", "tier": "web", "pod-template-hash": f"h{i % 977}", "zone": f"z{i % 3}"}


@pytest.fixture(scope="module")
def cluster():
    """10,000 services and 100,000 pods (10 per service) in the compiled index."""
    start = time.perf_counter()
    index = _selectors_c.SelectorIndex()
    selectors = {}
    for i in range(SERVICES):
        selectors[i] = service_selector(_selectors_c, i)
        index.set_selector(i, selectors[i])
    labels = {}
    for i in range(PODS):
        labels[i] = pod_labels(i, i % SERVICES)
        index.set_labels(i, labels[i])
    built = time.perf_counter() - start
    print(f"\nindex fixture: {SERVICES:,} services and {PODS:,} pods built in {built:.2f} s")
    assert index.matching(7) == {7 + SERVICES * k for k in range(PODS // SERVICES)}
    return index, selectors, labels


def test_index_pod_change(benchmark, cluster):
    index, selectors, labels = cluster
    naive = {i: NaiveSelector(str(s)) for i, s in selectors.items()}
    state = {"n": 0}

    def change_one_pod():
        # move one pod to another app and ask which services now select it
        n = state["n"] = state["n"] + 1
        pod = (n * 7919) % PODS
        new = pod_labels(pod, (pod + n) % SERVICES)
        index.set_labels(pod, new)
        labels[pod] = new
        return index.selectors_matching(pod)

    def brute_force(table) -> Callable[[], list[int]]:
        def scan() -> list[int]:
            n = state["n"] = state["n"] + 1
            pod = (n * 7919) % PODS
            new = pod_labels(pod, (pod + n) % SERVICES)
            labels[pod] = new
            return [sid for sid, s in table.items() if s.matches(new)]
        return scan

    benchmark.pedantic(change_one_pod, rounds=2_000, iterations=5, warmup_rounds=100)
    ours = benchmark.stats.stats.median  # per call: pytest-benchmark divides by iterations
    # after all those changes the index still answers exactly what a scan answers
    for pod in (0, 12345, 99_999):
        assert index.selectors_matching(pod) == {sid for sid, s in selectors.items() if s.matches(labels[pod])}
    print(f"\nindex: one pod change + look-up of its services: {ours * 1e6:.2f} us")
    ratio = report("index pod change", ours, per_call(brute_force(naive), 3, repeat=3), "brute-force scan (naive selectors)")
    report("index pod change", ours, per_call(brute_force(selectors), 5, repeat=3), "brute-force scan (compiled selectors)")
    met = ours < 20e-6 and ratio >= 1000
    print(f"TARGET index pod change < 20 us and >= 1,000x: {'met' if met else 'NOT met'}")


def test_index_service_change(benchmark, cluster):
    index, selectors, labels = cluster
    state = {"n": 0}

    def change_one_service():
        n = state["n"] = state["n"] + 1
        sid = (n * 31) % SERVICES
        return index.set_selector(sid, _selectors_c.selector_from_map({"app": f"app-{(sid + n) % SERVICES}", "tier": "web"}))

    benchmark.pedantic(change_one_service, rounds=1_000, iterations=3, warmup_rounds=50)
    ours = benchmark.stats.stats.median

    def brute_force():
        n = state["n"] = state["n"] + 1
        s = _selectors_c.selector_from_map({"app": f"app-{n % SERVICES}", "tier": "web"})
        return [pod for pod, ls in labels.items() if s.matches(ls)]

    report("index service change", ours, per_call(brute_force, 3, repeat=3), "brute-force scan (compiled selectors)")
