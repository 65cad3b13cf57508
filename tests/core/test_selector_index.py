"""SelectorIndex: which selectors match which label sets, kept up to date one change at a time.

Each test runs against the compiled and the readable twin (``sel`` fixture); the hypothesis test
replays random changes on the index and on a brute-force model and compares them after each.
"""

from __future__ import annotations

import weakref
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbcore.core import _selectors_c, _selectors_py

TWINS = {"compiled": _selectors_c, "python": _selectors_py}


@pytest.fixture(params=list(TWINS), scope="module")
def sel(request):
    """The selector module under test: compiled, then readable."""
    return TWINS[request.param]


def test_label_set_change_reports_selectors_added_and_removed(sel):
    index = sel.SelectorIndex()
    assert index.set_selector("web", sel.selector_from_map({"app": "web"})) == (set(), set())
    assert index.set_selector("prod", sel.parse_selector("env=prod")) == (set(), set())
    assert index.set_labels("pod-1", {"app": "web", "env": "dev"}) == ({"web"}, set())
    assert index.set_labels("pod-1", {"app": "web", "env": "prod"}) == ({"prod"}, set())
    assert index.set_labels("pod-1", {"app": "db", "env": "prod"}) == (set(), {"web"})
    assert index.selectors_matching("pod-1") == {"prod"}
    assert index.matching("web") == set()
    assert index.matching("prod") == {"pod-1"}
    assert index.remove_labels("pod-1") == {"prod"}
    assert index.matching("prod") == set()
    assert index.remove_labels("pod-1") == set()


def test_selector_change_reports_label_sets_added_and_removed(sel):
    index = sel.SelectorIndex()
    for i in range(6):
        index.set_labels(f"pod-{i}", {"app": "web" if i % 2 else "db", "n": str(i)})
    added, removed = index.set_selector("svc", sel.parse_selector("app=web"))
    assert added == {"pod-1", "pod-3", "pod-5"} and removed == set()
    added, removed = index.set_selector("svc", sel.parse_selector("app=web,n in (1,2,3)"))
    assert added == set() and removed == {"pod-5"}
    added, removed = index.set_selector("svc", sel.parse_selector("n>3"))
    assert added == {"pod-4", "pod-5"} and removed == {"pod-1", "pod-3"}
    assert index.selectors_matching("pod-4") == {"svc"}
    assert index.remove_selector("svc") == {"pod-4", "pod-5"}
    assert index.selectors_matching("pod-4") == set()
    assert index.remove_selector("svc") == set()


def test_negative_only_selectors_match_label_sets_without_the_key(sel):
    index = sel.SelectorIndex()
    index.set_selector("not-prod", sel.parse_selector("env!=prod"))
    index.set_selector("no-canary", sel.parse_selector("!canary,tier notin (db)"))
    assert index.set_labels("a", {}) == ({"not-prod", "no-canary"}, set())
    assert index.set_labels("b", {"env": "prod", "canary": "1"})[0] == set()
    assert index.matching("not-prod") == {"a"}
    assert index.set_labels("b", {"env": "dev"}) == ({"not-prod", "no-canary"}, set())


def test_everything_and_nothing_selectors(sel):
    index = sel.SelectorIndex()
    index.set_labels("a", {"x": "1"})
    index.set_labels("b", {})
    assert index.set_selector("all", sel.parse_selector("")) == ({"a", "b"}, set())
    assert index.set_selector("none", sel.selector_from_map(None)) == (set(), set())
    assert index.set_labels("c", {"y": "2"}) == ({"all"}, set())
    assert index.set_selector("all", sel.selector_from_map({})) == (set(), {"a", "b", "c"})


def test_lookups_for_a_label_set_or_selector_not_in_the_index(sel):
    index = sel.SelectorIndex()
    index.set_selector("web", sel.parse_selector("app in (web,api)"))
    index.set_selector("has-zone", sel.parse_selector("zone"))
    index.set_labels("pod", {"app": "api"})
    assert index.selectors_matching({"app": "web", "zone": "z"}) == {"web", "has-zone"}
    assert index.matching(sel.parse_selector("app=api")) == {"pod"}
    assert index.matching(sel.parse_selector("app!=api")) == set()


def test_sizes_and_stored_values(sel):
    index = sel.SelectorIndex()
    s = sel.parse_selector("a=1")
    index.set_selector(("ns", "svc"), s)
    index.set_labels(("ns", "pod"), {"a": "1"})
    assert len(index) == 2 and index.selector_count == 1 and index.label_count == 1
    assert index.has_selector(("ns", "svc")) and not index.has_selector("svc")
    assert index.has_labels(("ns", "pod"))
    assert index.get_selector(("ns", "svc")) == s
    assert index.get_labels(("ns", "pod")) == {"a": "1"}
    assert index.selector_ids() == [("ns", "svc")] and index.label_ids() == [("ns", "pod")]
    with pytest.raises(KeyError):
        index.matching("unknown")
    with pytest.raises(TypeError):
        index.set_selector("x", "a=1")


def test_stored_labels_are_a_copy(sel):
    index = sel.SelectorIndex()
    labels = {"a": "1"}
    index.set_selector("s", sel.parse_selector("a=1"))
    index.set_labels("p", labels)
    labels["a"] = "2"  # the caller's dict changing does not change the index
    assert index.matching("s") == {"p"}


def test_one_index_per_namespace(sel):
    indexes = defaultdict(sel.SelectorIndex)
    indexes["shop"].set_selector("web", sel.selector_from_map({"app": "web"}))
    indexes["blog"].set_labels("web-1", {"app": "web"})
    indexes["shop"].set_labels("web-2", {"app": "web"})
    assert indexes["shop"].matching("web") == {"web-2"}
    assert indexes["blog"].selectors_matching("web-1") == set()


def test_many_selectors_sharing_a_label_are_anchored_apart(sel):
    """Every service shares tier=web; each is still found through its own app label."""
    index = sel.SelectorIndex()
    for i in range(50):
        index.set_selector(i, sel.selector_from_map({"tier": "web", "app": f"a{i}"}))
    assert index.set_labels("p", {"tier": "web", "app": "a7"}) == ({7}, set())
    assert index.set_labels("p", {"tier": "db", "app": "a7"}) == (set(), {7})


# --------------------------------------------------------------------------- against brute force

KEYS = ["a", "b", "c"]
VALUES = ["", "1", "2", "x"]
label_sets = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)
requirement = st.one_of(
    st.tuples(st.sampled_from(KEYS), st.sampled_from(["=", "==", "!="]), st.sampled_from(VALUES).map(lambda v: [v])),
    st.tuples(st.sampled_from(KEYS), st.sampled_from(["in", "notin"]), st.lists(st.sampled_from(VALUES), min_size=1, max_size=3)),
    st.tuples(st.sampled_from(KEYS), st.sampled_from(["exists", "!"]), st.just([])),
    st.tuples(st.sampled_from(KEYS), st.sampled_from(["gt", "lt"]), st.sampled_from(["0", "1", "2"]).map(lambda v: [v])),
)
selector_specs = st.one_of(st.none(), st.lists(requirement, max_size=3))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("labels"), st.integers(0, 5), label_sets),
        st.tuples(st.just("selector"), st.integers(0, 5), selector_specs),
        st.tuples(st.just("remove-labels"), st.integers(0, 5), st.none()),
        st.tuples(st.just("remove-selector"), st.integers(0, 5), st.none()),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_index_agrees_with_brute_force(sel, ops):
    index = sel.SelectorIndex()
    selectors: dict = {}
    labels: dict = {}

    def brute(selector_ids, label_ids):
        return {(s, lid) for s in selector_ids for lid in label_ids if selectors[s].matches(labels[lid])}

    for kind, n, arg in ops:
        before = brute(selectors, labels)
        if kind == "labels":
            lid = f"pod-{n}"
            labels[lid] = arg
            got = index.set_labels(lid, arg)
            after = brute(selectors, labels)
            added = {s for s, p in after - before if p == lid}
            removed = {s for s, p in before - after if p == lid}
            assert got == (added, removed)
        elif kind == "selector":
            sid = f"svc-{n}"
            selectors[sid] = sel.Selector.nothing() if arg is None else sel.Selector(arg)
            got = index.set_selector(sid, selectors[sid])
            after = brute(selectors, labels)
            added = {p for s, p in after - before if s == sid}
            removed = {p for s, p in before - after if s == sid}
            assert got == (added, removed)
        elif kind == "remove-labels":
            lid = f"pod-{n}"
            expected = {s for s, p in before if p == lid}
            labels.pop(lid, None)
            assert index.remove_labels(lid) == expected
        else:
            sid = f"svc-{n}"
            expected = {p for s, p in before if s == sid}
            selectors.pop(sid, None)
            assert index.remove_selector(sid) == expected
        relation = brute(selectors, labels)
        for s in selectors:
            assert index.matching(s) == {p for q, p in relation if q == s}
            assert index.matching(selectors[s]) == {p for q, p in relation if q == s}
        for lid in labels:
            assert index.selectors_matching(lid) == {s for s, p in relation if p == lid}
            assert index.selectors_matching(labels[lid]) == {s for s, p in relation if p == lid}


# --------------------------------------------------------------------------- the compiled index's own structures
# The compiled index keeps postings in C arrays behind a table of label pairs that grows and
# shrinks; these tests drive it through growth, deletion, slot reuse and large postings, and
# compare with a brute-force scan (both twins, so the readable one is held to the same answers).


def _relation(sel, index, selectors, labels):
    for sid, s in selectors.items():
        expected = {lid for lid, ls in labels.items() if s.matches(ls)}
        assert index.matching(sid) == expected, sid
    for lid, ls in labels.items():
        expected = {sid for sid, s in selectors.items() if s.matches(ls)}
        assert index.selectors_matching(lid) == expected, lid
        assert index.get_labels(lid) == ls


def test_thousands_of_pairs_added_and_removed_stay_findable(sel):
    """Enough distinct pairs to grow the pair table several times, then most removed again (the
    table closes the gaps they leave), with the survivors still found."""
    index = sel.SelectorIndex()
    selectors = {f"svc-{i}": sel.selector_from_map({"app": f"a{i}"}) for i in range(0, 3000, 7)}
    for sid, s in selectors.items():
        index.set_selector(sid, s)
    labels = {f"pod-{i}": {"app": f"a{i}", "n": str(i)} for i in range(3000)}
    for lid, ls in labels.items():
        index.set_labels(lid, ls)
    for i in range(3000):
        if i % 10:
            assert index.remove_labels(f"pod-{i}") == ({f"svc-{i}"} if f"svc-{i}" in selectors else set())
            del labels[f"pod-{i}"]
    for sid in list(selectors)[::2]:
        index.remove_selector(sid)
        del selectors[sid]
    _relation(sel, index, selectors, labels)
    assert index.label_count == 300 and index.selector_count == len(selectors)


def test_slots_are_reused_without_leaking_old_matches(sel):
    index = sel.SelectorIndex()
    index.set_selector("old", sel.parse_selector("app=web"))
    index.set_labels("p1", {"app": "web"})
    index.remove_selector("old")
    index.remove_labels("p1")
    # new ids take the freed places; nothing of the old relation may show through
    index.set_selector("new", sel.parse_selector("tier=db"))
    assert index.set_labels("p2", {"app": "web"}) == (set(), set())
    assert index.selectors_matching("p2") == set() and index.matching("new") == set()
    assert index.set_labels("p2", {"tier": "db"}) == ({"new"}, set())
    assert index.set_selector("again", sel.parse_selector("app=web")) == (set(), set())


def test_answers_a_caller_still_holds_are_never_changed_by_later_calls(sel):
    """Every answer is a new object the caller owns: one the caller keeps (the pair, one of its
    sets, or through a weak reference) keeps what it said, whatever the index answers next."""
    index = sel.SelectorIndex()
    index.set_selector("web", sel.parse_selector("app=web"))
    index.set_selector("db", sel.parse_selector("app=db"))
    kept = index.set_labels("p", {"app": "web"})
    added, removed = index.set_labels("p", {"app": "db"})
    index.set_labels("p", {"app": "web"})  # dropped at once
    assert index.set_labels("p", {"app": "db"}) == ({"db"}, {"web"})
    assert index.set_labels("p", {"app": "db"}) == (set(), set())
    assert kept == ({"web"}, set()) and (added, removed) == ({"db"}, {"web"})
    found = index.selectors_matching("p")
    index.set_labels("q", {"app": "web"})
    assert index.selectors_matching("q") == {"web"} and found == {"db"}
    watched = weakref.ref(index.selectors_matching("p"))
    assert index.selectors_matching("q") == {"web"}
    assert watched() is None or watched() == {"db"}
    assert index.selectors_matching("p") is not index.selectors_matching("p")
    assert index.set_labels("p", {"app": "db"}) is not index.set_labels("p", {"app": "db"})


def test_selectors_filed_under_one_pair_leave_it_in_any_order(sel):
    """Several selectors anchored on app=web; removing or replacing the first filed moves the
    others in the pair's posting, and a label set still finds exactly those left."""
    index = sel.SelectorIndex()
    texts = {"a": "app=web", "b": "app=web,tier", "c": "app=web,!canary", "d": "app=web,tier=db"}
    for sid, text in texts.items():
        index.set_selector(sid, sel.parse_selector(text))
    assert index.set_labels("p", {"app": "web", "tier": "db"}) == ({"a", "b", "c", "d"}, set())
    index.remove_selector("a")
    assert index.set_labels("q", {"app": "web"}) == ({"c"}, set())
    index.set_selector("b", sel.parse_selector("app=api"))
    assert index.set_labels("r", {"app": "web", "tier": "db"}) == ({"c", "d"}, set())
    index.remove_selector("c")
    index.remove_selector("d")
    assert index.set_labels("s", {"app": "web"}) == (set(), set())
    assert index.set_selector("e", sel.parse_selector("app=web"))[0] == {"p", "q", "r", "s"}
    assert index.set_labels("t", {"app": "web", "x": "1"}) == ({"e"}, set())
    assert index.selectors_matching("p") == {"e"} and index.selectors_matching("t") == {"e"}


def test_selectors_filed_before_the_index_grows_still_match_after(sel):
    """Small selectors (kept by the compiled index in its own slots) and a large one, filed
    before hundreds more make the index move its slots; each still matches by its values."""
    index = sel.SelectorIndex()
    first = {"small": "app=a0,tier in (x,y)", "large": "app=a0,tier in (v,w,x,y,z),!canary"}
    for sid, text in first.items():
        index.set_selector(sid, sel.parse_selector(text))
    for i in range(1, 300):
        index.set_selector(i, sel.parse_selector(f"app=a{i},tier in (x,y)"))
    assert index.set_labels("p", {"app": "a0", "tier": "y"}) == ({"small", "large"}, set())
    assert index.set_labels("p", {"app": "a0", "tier": "z"}) == (set(), {"small"})
    assert index.set_labels("q", {"app": "a299", "tier": "x"}) == ({299}, set())
    assert index.set_labels("q", {"app": "a299", "tier": "w"}) == (set(), {299})


def test_one_label_set_leaving_a_large_posting(sel):
    """3,000 label sets share tier=web; moving one in the middle keeps every other one filed."""
    index = sel.SelectorIndex()
    labels = {i: {"tier": "web", "n": str(i)} for i in range(3000)}
    for lid, ls in labels.items():
        index.set_labels(lid, ls)
    labels[1500] = {"tier": "db", "n": "1500"}
    index.set_labels(1500, labels[1500])
    labels[0] = {"n": "0"}
    index.set_labels(0, labels[0])
    assert index.set_selector("web", sel.parse_selector("tier=web"))[0] == {i for i in labels if labels[i].get("tier") == "web"}
    assert index.set_selector("has-tier", sel.parse_selector("tier"))[0] == set(labels) - {0}
    assert index.selectors_matching(1500) == {"has-tier"}
    assert index.selectors_matching(2999) == {"web", "has-tier"}


def test_label_sets_grow_and_shrink(sel):
    index = sel.SelectorIndex()
    index.set_selector("s", sel.parse_selector("k7=v,!k0"))
    grown = {f"k{i}": "v" for i in range(1, 40)}
    assert index.set_labels("p", {"k1": "v"}) == (set(), set())
    assert index.set_labels("p", grown) == ({"s"}, set())
    assert index.set_labels("p", {"k0": "v", **grown}) == (set(), {"s"})
    assert index.set_labels("p", {"k7": "v"}) == ({"s"}, set())
    assert index.get_labels("p") == {"k7": "v"}


def test_unchanged_label_set_in_another_order_reports_nothing(sel):
    index = sel.SelectorIndex()
    index.set_selector("s", sel.parse_selector("a=1,b=2"))
    assert index.set_labels("p", {"a": "1", "b": "2"}) == ({"s"}, set())
    assert index.set_labels("p", {"b": "2", "a": "1"}) == (set(), set())
    assert index.set_labels("p", {"b": "2", "a": "1", "c": "3"}) == (set(), set())
    assert index.get_labels("p") == {"a": "1", "b": "2", "c": "3"}


def test_labels_equal_but_not_the_same_objects_are_one_pair(sel):
    index = sel.SelectorIndex()
    index.set_selector("s", sel.parse_selector("app=web"))
    for i in range(3):
        index.set_labels(i, {"".join(["a", "pp"]): "".join(["w", "eb"])})
    assert index.matching("s") == {0, 1, 2}
    index.remove_labels(1)
    assert index.matching(sel.parse_selector("app in (web)")) == {0, 2}


def test_label_values_that_are_not_strings_are_kept_and_never_equal_a_selector_value(sel):
    index = sel.SelectorIndex()
    index.set_selector("one", sel.parse_selector("n=1"))
    index.set_selector("has-n", sel.parse_selector("n"))
    index.set_selector("not-one", sel.parse_selector("n!=1"))
    assert index.set_labels("p", {"n": 1}) == ({"has-n", "not-one"}, set())
    assert index.set_labels("q", {"n": 1.0}) == ({"has-n", "not-one"}, set())
    assert index.set_labels("p", {"n": "1"}) == ({"one"}, {"not-one"})
    assert index.get_labels("q") == {"n": 1.0}
    assert index.remove_labels("q") == {"has-n", "not-one"}


def test_selector_anchored_on_many_values_is_found_through_each(sel):
    index = sel.SelectorIndex()
    values = [f"v{i}" for i in range(12)]  # past the small-set threshold of the compiled twin
    index.set_selector("many", sel.Selector([("k", "in", values)]))
    for i, v in enumerate(values):
        assert index.set_labels(i, {"k": v}) == ({"many"}, set())
    assert index.set_labels(0, {"k": "other"}) == (set(), {"many"})
    assert index.remove_selector("many") == set(range(1, 12))
    assert all(index.selectors_matching(i) == set() for i in range(12))


def test_a_label_value_that_changes_the_labels_while_compared_leaves_the_index_whole():
    """The compiled index takes the caller's labels (with references) before it compares any;
    a value whose __eq__ adds labels to the dict while the index compares it changes nothing of
    what the index reads: the label set is the one given, and the index stays consistent."""

    class Meddler:
        def __init__(self, labels: dict) -> None:
            self.labels = labels

        def __eq__(self, other: object) -> bool:
            self.labels[f"extra-{len(self.labels)}"] = "x"
            return False

        __hash__ = object.__hash__

    index = _selectors_c.SelectorIndex()
    index.set_selector("has-a", _selectors_c.parse_selector("a"))
    index.set_selector("has-extra", _selectors_c.parse_selector("extra-1"))
    index.set_labels("p", {"a": 1})  # a non-str value of key "a" to compare against
    labels: dict = {}
    labels["a"] = Meddler(labels)
    assert index.set_labels("q", labels) == ({"has-a"}, set())
    assert "extra-1" in labels  # the value did meddle, after the index took the labels
    assert list(index.get_labels("q")) == ["a"] and index.selectors_matching("q") == {"has-a"}
    assert index.set_labels("r", {"a": "1"}) == ({"has-a"}, set())
    assert index.matching("has-a") == {"p", "q", "r"} and index.matching("has-extra") == set()
    assert index.remove_labels("q") == {"has-a"}
    assert index.matching("has-a") == {"p", "r"}


def test_label_set_ids_that_hash_alike_or_compare_equal_across_types(sel):
    """-1 and -2 share a hash in CPython, as do 2**61 - 1 and 0; ints past 64 bits and equal
    ids of other types (True and 1, 1.0 and 1) are one id, as in a dict."""
    index = sel.SelectorIndex()
    index.set_selector("web", sel.parse_selector("app=web"))
    ids = [-1, -2, 0, 2**61 - 1, 2**64 + 5, -(2**70)]
    for i, lid in enumerate(ids):
        assert index.set_labels(lid, {"app": "web", "n": str(i)}) == ({"web"}, set())
    assert index.label_count == len(ids)
    assert [index.get_labels(lid)["n"] for lid in ids] == [str(i) for i in range(len(ids))]
    assert index.set_labels(2**64 + 5, {"app": "db"}) == (set(), {"web"})
    assert index.selectors_matching(-1) == {"web"} and index.selectors_matching(2**64 + 5) == set()
    assert index.set_labels(True, {"app": "web"}) == ({"web"}, set())
    assert index.set_labels(1, {"app": "db"}) == (set(), {"web"})   # the same id as True
    assert index.set_labels(1.0, {"app": "web"}) == ({"web"}, set())
    assert index.label_count == len(ids) + 1 and index.selectors_matching(True) == {"web"}
    assert index.remove_labels(1) == {"web"} and index.label_count == len(ids)
    assert index.matching("web") == {-1, -2, 0, 2**61 - 1, -(2**70)}


def test_label_sets_joining_and_leaving_shared_postings_in_any_order(sel):
    """Postings of label sets shared by hundreds of them (one pair, one key) grow, shrink and
    refill while label sets leave and come back in a shuffled order; after each round the index
    answers what a scan answers."""
    import random

    rng = random.Random(7)
    index = sel.SelectorIndex()
    selectors = {"web": sel.parse_selector("tier=web"), "tier": sel.parse_selector("tier"),
                 "not-web": sel.parse_selector("tier!=web")}
    for sid, s in selectors.items():
        index.set_selector(sid, s)
    labels = {i * 16: {"tier": "web"} for i in range(600)}  # ids on a stride, as slots may be
    for lid, ls in labels.items():
        index.set_labels(lid, ls)
    for _ in range(6):
        ids = list(labels)
        rng.shuffle(ids)
        for lid in ids[: len(ids) // 2]:
            if rng.random() < 0.5:
                index.remove_labels(lid)
                del labels[lid]
            else:
                labels[lid] = {"tier": rng.choice(["web", "db"])} if rng.random() < 0.8 else {}
                index.set_labels(lid, labels[lid])
        for lid in rng.sample(range(20_000), 150):
            labels[lid] = {"tier": rng.choice(["web", "db"])}
            index.set_labels(lid, labels[lid])
        _relation(sel, index, selectors, labels)


def test_label_values_found_by_their_text_whatever_their_length_and_kind(sel):
    """Fresh but equal strs are one pair however long they are; strs of one byte length but
    other text or another width (``ab`` and U+6261 share their two bytes) are not."""
    index = sel.SelectorIndex()
    long_value = "v" * 60 + "-ab"
    index.set_selector("ab", sel.parse_selector("k=ab"))
    index.set_selector("long", sel.parse_selector(f"k={long_value}"))
    index.set_selector("long-key", sel.parse_selector("example.com/" + "n" * 40 + "=x1"))
    for i in range(4):  # each time new str objects, equal to those stored
        assert index.set_labels(f"a{i}", {"k": "".join(["a", "b"])}) == ({"ab"}, set())
        assert index.set_labels(f"l{i}", {"k": "".join([long_value[:30], long_value[30:]])}) == ({"long"}, set())
        assert index.set_labels(f"n{i}", {"example.com/" + "n" * 40: "".join(["x", "1"])}) == ({"long-key"}, set())
    assert index.set_labels("wide", {"k": "\u6261"}) == (set(), set())
    assert index.set_labels("ba", {"k": "ba"}) == (set(), set())
    assert index.set_labels("accented", {"k": "\u00e9b"}) == (set(), set())
    assert index.set_labels("longer", {"k": long_value[:-1] + "c"}) == (set(), set())
    assert index.set_labels("x2", {"example.com/" + "n" * 40: "x2"}) == (set(), set())
    assert index.matching("ab") == {f"a{i}" for i in range(4)}
    assert index.matching("long") == {f"l{i}" for i in range(4)}
    assert index.matching("long-key") == {f"n{i}" for i in range(4)}
    assert index.get_labels("wide") == {"k": "\u6261"}
    assert index.set_selector("wide-or-ab", sel.parse_selector("k"))[0] >= {"wide", "a0", "ba", "accented"}


def test_label_keys_and_values_of_a_str_subclass_are_their_text(sel):
    class Name(str):
        pass

    index = sel.SelectorIndex()
    index.set_selector("web", sel.parse_selector("app=web"))
    index.set_selector("has-app", sel.parse_selector("app"))
    assert index.set_labels("p", {Name("app"): Name("web")}) == ({"web", "has-app"}, set())
    assert index.set_labels("q", {"app": "web"}) == ({"web", "has-app"}, set())
    assert index.set_labels("p", {Name("app"): "db"}) == (set(), {"web"})
    assert index.matching("web") == {"q"} and index.matching("has-app") == {"p", "q"}
