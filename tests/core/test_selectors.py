"""Label selectors: grammar, validation, matching and canonical strings, for both twins.

Every test takes the ``sel`` fixture, which is the compiled module and then the readable one;
the differential tests at the end check that the two agree on arbitrary input.
"""

from __future__ import annotations

import pickle
import sys
from contextlib import contextmanager
from types import MappingProxyType, SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lbcore
from lbcore.core import _selectors, _selectors_c, _selectors_py
from lbcore.core._extensions import NO_EXTENSIONS

TWINS = {"compiled": _selectors_c, "python": _selectors_py}


@pytest.fixture(params=list(TWINS), scope="module")
def sel(request):
    """The selector module under test: compiled, then readable."""
    return TWINS[request.param]


HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_default_module_is_the_compiled_twin():
    expected = _selectors_py if NO_EXTENSIONS else _selectors_c
    assert _selectors.Selector is expected.Selector
    assert lbcore.parse_selector is expected.parse_selector
    assert lbcore.SelectorError is _selectors_py.SelectorError


# --------------------------------------------------------------------------- matching, operator by operator

MATCH_CASES = [
    # selector, labels, matches
    ("x=a", {"x": "a"}, True),
    ("x=a", {"x": "b"}, False),
    ("x=a", {}, False),
    ("x==a", {"x": "a", "y": "z"}, True),
    ("x==a", {"y": "a"}, False),
    ("x!=a", {"x": "b"}, True),
    ("x!=a", {"x": "a"}, False),
    ("x!=a", {}, True),  # != matches a label set without the key
    ("x in (a,b)", {"x": "b"}, True),
    ("x in (a,b)", {"x": "c"}, False),
    ("x in (a,b)", {}, False),
    ("x notin (a,b)", {"x": "c"}, True),
    ("x notin (a,b)", {"x": "a"}, False),
    ("x notin (a,b)", {}, True),  # notin matches a label set without the key
    ("x", {"x": ""}, True),
    ("x", {"y": "x"}, False),
    ("!x", {"y": "1"}, True),
    ("!x", {"x": ""}, False),
    ("x>1", {"x": "2"}, True),
    ("x>1", {"x": "1"}, False),
    ("x>1", {}, False),
    ("x>1", {"x": "two"}, False),  # a label value that is not an integer never compares
    ("x<1", {"x": "0"}, True),
    ("x<1", {"x": "-5"}, True),  # label values are read as Go's ParseInt does: sign allowed
    ("x<1", {"x": "+0"}, True),
    ("x>6", {"x": "007"}, True),
    ("x<1", {"x": "1"}, False),
    ("x<10", {"x": "9223372036854775808"}, False),  # out of int64: no match
    ("x>0", {"x": " 1"}, False),
    ("x=", {"x": ""}, True),
    ("x=", {}, False),
    ("x in ()", {"x": ""}, True),
    ("x in ()", {"x": "a"}, False),
    ("x in (abc,)", {"x": ""}, True),
    ("x in (abc,)", {"x": "abc"}, True),
    ("x notin ()", {"x": ""}, False),
    ("x notin ()", {"x": "a"}, True),
    ("a=1,b!=2,!c", {"a": "1", "b": "3"}, True),
    ("a=1,b!=2,!c", {"a": "1", "b": "3", "c": ""}, False),
    ("x in (a,b,c,d,e,f,g,h,i,j,k)", {"x": "k"}, True),  # a long value list
    ("x in (a,b,c,d,e,f,g,h,i,j,k)", {"x": "l"}, False),
    ("x notin (a,b,c,d,e,f,g,h,i,j,k)", {"x": "k"}, False),
    ("x notin (a,b,c,d,e,f,g,h,i,j,k)", {"x": "z"}, True),
    ("", {}, True),
    ("", {"any": "thing"}, True),
]


@pytest.mark.parametrize(("text", "labels", "expected"), MATCH_CASES)
def test_each_operator_matches_as_kubernetes(sel, text, labels, expected):
    assert sel.parse_selector(text).matches(labels) is expected


def test_matches_accepts_any_mapping(sel):
    s = sel.parse_selector("app=web,tier!=db")
    assert s.matches(MappingProxyType({"app": "web"}))
    assert not s.matches(MappingProxyType({"app": "web", "tier": "db"}))


def test_matches_strings_that_are_equal_but_not_identical(sel):
    value = "".join(["we", "b"])  # not interned
    assert sel.parse_selector("app in (api,web)").matches({"app": value})


# --------------------------------------------------------------------------- grammar and whitespace

CANONICAL = [
    ("x=a", "x=a"),
    ("x==a", "x==a"),
    ("x!=a", "x!=a"),
    ("x in (b,a)", "x in (a,b)"),
    ("x notin (b,a,b)", "x notin (a,b)"),
    ("x", "x"),
    ("!x", "!x"),
    ("x>1", "x>1"),
    ("x<10", "x<10"),
    ("z=c, y=b ,x=a", "x=a,y=b,z=c"),
    ("x in ()", "x in ()"),
    ("x in (abc,)", "x in (,abc)"),
    ("x in (,abc)", "x in (,abc)"),
    ("x in (,)", "x in ()"),
    ("x in (a,,b)", "x in (,a,b)"),
    ("x in (in,notin)", "x in (in,notin)"),
    ("in in (in)", "in in (in)"),
    ("notin notin (notin)", "notin notin (notin)"),
    ("x=in", "x=in"),
    ("in", "in"),
    ("!in", "!in"),
    ("x=", "x="),
    ("x=,y", "x=,y"),
    ("example.com/app=web", "example.com/app=web"),
    ("  \t\r\n", ""),
    (" x = a ", "x=a"),
    ("x\t=\ta", "x=a"),
    ("\nx\n!=\na\n", "x!=a"),
    ("\r\nx\r\nin\r\n(\r\na\r\n,\r\nb\r\n)\r\n", "x in (a,b)"),
    ("x in(a)", "x in (a)"),
    ("x notin(a)", "x notin (a)"),
    ("! x", "!x"),
    ("x ,y", "x,y"),
    ("x>1 , y<2", "x>1,y<2"),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_str_is_the_canonical_kubernetes_string(sel, text, canonical):
    parsed = sel.parse_selector(text)
    assert str(parsed) == canonical
    assert sel.parse_selector(canonical) == parsed


def test_requirements_are_sorted_by_key_with_sorted_values(sel):
    parsed = sel.parse_selector("b notin (z,y),a=1,!c")
    assert [tuple(r) for r in parsed.requirements] == [
        ("a", "=", ("1",)),
        ("b", "notin", ("y", "z")),
        ("c", "!", ()),
    ]


def test_empty_set_in_parentheses_holds_the_empty_value(sel):
    assert sel.parse_selector("x in ()").requirements[0].values == ("",)
    assert sel.parse_selector("x in (abc,)").requirements[0].values == ("", "abc")
    assert sel.parse_selector("x in (a,,b)").requirements[0].values == ("", "a", "b")


SYNTAX_ERRORS = [
    # text, message fragment, token, position
    ("x,,y", "found ',', expected: identifier after ','", ",", 2),
    ("x,", "found '', expected: identifier after ','", "", 2),
    ("x=a,", "found '', expected: identifier after ','", "", 4),
    (",x", "found ',', expected: !, identifier, or 'end of string'", ",", 0),
    ("x in (a b)", "found 'b', expected: ',' or ')'", "b", 8),
    ("x in a", "found 'a' expected: '('", "a", 5),
    ("x in (a", "found '', expected: ',' or ')'", "", 7),
    ("x in (=)", "found '=', expected: ',', ')' or identifier", "=", 6),
    ("x in (,,)", "found ')', expected: ',', or identifier", ")", 8),  # as Kubernetes does
    ("x in (a,,)", "found ')', expected: ',', or identifier", ")", 9),
    ("x in (a,=)", "found '=', expected: ',', or identifier", "=", 8),
    ("x == == a", "found '==', expected: identifier", "==", 5),
    ("x=a b", "found 'b', expected: ',' or 'end of string'", "b", 4),
    ("!x=a", "found '=', expected: ',' or 'end of string'", "=", 2),
    ("x y", "found 'y', expected: in, notin, =, ==, !=, gt, lt", "y", 2),
    ("x(a)", "found '(', expected: in, notin, =, ==, !=, gt, lt", "(", 1),
    ("!", "found '', expected: identifier", "", 1),
    ("!!x", "found '!', expected: identifier", "!", 1),
    ("=a", "found '=', expected: !, identifier, or 'end of string'", "=", 0),
    ("x===a", "found '=', expected: identifier", "=", 3),
    ("x>", 'Invalid value: "": for \'Gt\', \'Lt\' operators, the value must be an integer', "", 2),
    ("x>a", "the value must be an integer", "a", 2),
    ("x<1.5", "the value must be an integer", "1.5", 2),
    ("x>-1", "a valid label must be an empty string", "-1", 2),  # the value is a label value too
    ("x>9223372036854775808", "the value must be an integer", "9223372036854775808", 2),
    ("x in (-a)", "values[0][x]: Invalid value: \"-a\"", "-a", 6),
    ("x in (a, b_)", "values[1][x]: Invalid value: \"b_\"", "b_", 9),
    ("-x=a", 'Invalid value: "-x"', "-x", 0),
    ("a/b/c", "a qualified name must consist of", "a/b/c", 0),
    ("x=a\x00", 'Invalid value: "a\\x00"'.replace("\\x00", "\x00"), "a\x00", 2),
]


@pytest.mark.parametrize(("text", "fragment", "token", "position"), SYNTAX_ERRORS)
def test_syntax_and_validation_errors_name_token_and_position(sel, text, fragment, token, position):
    with pytest.raises(lbcore.SelectorError) as caught:
        sel.parse_selector(text)
    err = caught.value
    assert isinstance(err, ValueError)
    assert fragment in str(err)
    assert err.token == token
    assert err.position == position
    assert str(err).endswith(f"(at position {position})")


def test_parse_refuses_non_strings(sel):
    with pytest.raises(lbcore.SelectorError, match="must be a string"):
        sel.parse_selector(None)


def test_gt_lt_accept_the_int64_range(sel):
    assert sel.parse_selector("x>9223372036854775807").matches({"x": "9223372036854775807"}) is False
    assert sel.parse_selector("x<9223372036854775807").matches({"x": "-9223372036854775808"})
    assert sel.parse_selector("x>0").matches({"x": "9223372036854775807"})


# --------------------------------------------------------------------------- validation at its boundaries

NAME_REGEX = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
VALUE_REGEX = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
    "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
PREFIX_REGEX = (
    "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
PREFIX_253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
assert len(PREFIX_253) == 253

KEY_CASES = [
    ("a", []),
    ("a" * 63, []),
    ("a" * 64, ["name part must be no more than 63 characters"]),
    ("A.b-c_D9", []),
    ("9", []),
    ("", ["name part must be non-empty", NAME_REGEX]),
    ("-a", [NAME_REGEX]),
    ("a-", [NAME_REGEX]),
    ("_a", [NAME_REGEX]),
    ("a.", [NAME_REGEX]),
    ("a b", [NAME_REGEX]),
    ("é", [NAME_REGEX]),
    ("example.com/app", []),
    (PREFIX_253 + "/app", []),
    ("e" + PREFIX_253 + "/app", ["prefix part must be no more than 253 characters"]),
    ("/app", ["prefix part must be non-empty"]),
    ("example.com/", ["name part must be non-empty", NAME_REGEX]),
    ("Example.com/app", [PREFIX_REGEX]),
    ("example..com/app", [PREFIX_REGEX]),
    ("-example.com/app", [PREFIX_REGEX]),
    ("example.com-/app", [PREFIX_REGEX]),
    ("ex_ample.com/app", [PREFIX_REGEX]),
    ("example.com/" + "a" * 64, ["name part must be no more than 63 characters"]),
    ("a/b/c", [
        "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start "
        "and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
        "used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS "
        "subdomain prefix and '/' (e.g. 'example.com/MyName')"
    ]),
]


@pytest.mark.parametrize(("key", "errors"), KEY_CASES)
def test_validate_label_key_gives_kubernetes_messages(sel, key, errors):
    assert sel.validate_label_key(key) == errors
    if not key:
        return  # the empty string parses as the selector that matches everything
    if errors:
        with pytest.raises(lbcore.SelectorError):
            sel.parse_selector(key)
    else:
        assert str(sel.parse_selector(key)) == key


VALUE_CASES = [
    ("", []),
    ("a", []),
    ("a" * 63, []),
    ("a" * 64, ["must be no more than 63 characters"]),
    ("-" * 64, ["must be no more than 63 characters", VALUE_REGEX]),
    ("a.b_c-D9", []),
    ("-a", [VALUE_REGEX]),
    ("a_", [VALUE_REGEX]),
    ("a/b", [VALUE_REGEX]),
    ("a b", [VALUE_REGEX]),
]


@pytest.mark.parametrize(("value", "errors"), VALUE_CASES)
def test_validate_label_value_gives_kubernetes_messages(sel, value, errors):
    assert sel.validate_label_value(value) == errors


def test_byte_length_counts_as_kubernetes_does(sel):
    # Kubernetes measures UTF-8 bytes: 32 two-byte letters are 64 bytes
    assert "name part must be no more than 63 characters" in sel.validate_label_key("é" * 32)
    assert sel.validate_label_key("é" * 31) == [NAME_REGEX]


# --------------------------------------------------------------------------- equality, hashing, everything and nothing


def test_equal_selectors_compare_and_hash_equal(sel):
    a = sel.parse_selector("a=1, b in (y,x)")
    b = sel.parse_selector("b in (x,y),a=1")
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != sel.parse_selector("a==1,b in (x,y)")  # the operator is kept as written
    assert a != "a=1,b in (x,y)"


def test_everything_and_nothing_differ(sel):
    everything = sel.parse_selector("")
    nothing = sel.selector_from_map({})
    assert everything == sel.Selector.everything() and everything.empty
    assert nothing == sel.Selector.nothing() and nothing.is_nothing and not nothing.empty
    assert everything != nothing and hash(everything) != hash(nothing)
    assert str(nothing) == "" and repr(nothing) == "Selector.nothing()"
    assert not nothing.matches({}) and not nothing.matches({"a": "b"})


def test_selectors_pickle(sel):
    for s in (sel.parse_selector("a=1,b notin (x,y),c>3"), sel.Selector.nothing()):
        assert pickle.loads(pickle.dumps(s)) == s


def test_selector_from_requirement_tuples_is_validated(sel):
    s = sel.Selector([("b", "in", ["y", "x", "y"]), ("a", "exists", [])])
    assert str(s) == "a,b in (x,y)"
    with pytest.raises(lbcore.SelectorError, match="values set can't be empty"):
        sel.Selector([("b", "in", [])])
    with pytest.raises(lbcore.SelectorError, match="exact-match compatibility requires one single value"):
        sel.Selector([("b", "=", ["x", "y"])])
    with pytest.raises(lbcore.SelectorError, match="Unsupported value"):
        sel.Selector([("b", "~", ["x"])])


def test_requires_exact_match(sel):
    s = sel.parse_selector("a=1,b in (x),c in (x,y),d!=z")
    assert s.requires_exact_match("a") == "1"
    assert s.requires_exact_match("b") == "x"
    assert s.requires_exact_match("c") is None
    assert s.requires_exact_match("d") is None
    assert s.requires_exact_match("e") is None


# --------------------------------------------------------------------------- a Service's selector and metav1.LabelSelector


def test_service_selector_without_keys_selects_nothing(sel):
    for empty in (None, {}):
        s = sel.selector_from_map(empty)
        assert s.is_nothing and not s.matches({}) and not s.matches({"app": "web"})


def test_service_selector_is_an_and_of_equalities(sel):
    s = sel.selector_from_map({"tier": "web", "app": "shop"})
    assert str(s) == "app=shop,tier=web"
    assert s.matches({"app": "shop", "tier": "web", "extra": "1"})
    assert not s.matches({"app": "shop"})


def test_service_selector_validation_names_the_field(sel):
    with pytest.raises(lbcore.SelectorError, match=r'selector\[app\]\.values\[0\]\[app\]: Invalid value: "-web"') as caught:
        sel.selector_from_map({"app": "-web"})
    assert caught.value.token == "-web"
    with pytest.raises(lbcore.SelectorError, match=r'selector\[a b\]\.key: Invalid value: "a b"'):
        sel.selector_from_map({"a b": "web"})


def test_label_selector_none_matches_nothing_and_empty_matches_everything(sel):
    assert sel.selector_from_label_selector(None).is_nothing
    for empty in ({}, {"matchLabels": {}, "matchExpressions": []}, {"matchLabels": None}):
        s = sel.selector_from_label_selector(empty)
        assert s.empty and s.matches({})


def test_label_selector_expressions(sel):
    s = sel.selector_from_label_selector({
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["b", "a"]},
            {"key": "env", "operator": "NotIn", "values": ["prod"]},
            {"key": "zone", "operator": "Exists"},
            {"key": "canary", "operator": "DoesNotExist", "values": []},
        ],
    })
    assert str(s) == "app=web,!canary,env notin (prod),tier in (a,b),zone"
    assert s.matches({"app": "web", "tier": "a", "zone": "z1"})
    assert not s.matches({"app": "web", "tier": "a", "zone": "z1", "env": "prod"})
    assert not s.matches({"app": "web", "tier": "a", "zone": "z1", "canary": "1"})
    assert not s.matches({"app": "web", "tier": "c", "zone": "z1"})


def test_label_selector_from_the_official_client_model(sel):
    from kubernetes.client import V1LabelSelector, V1LabelSelectorRequirement

    model = V1LabelSelector(
        match_labels={"app": "web"},
        match_expressions=[V1LabelSelectorRequirement(key="tier", operator="In", values=["a"])],
    )
    assert str(sel.selector_from_label_selector(model)) == "app=web,tier in (a)"
    assert str(sel.selector_from_label_selector(SimpleNamespace(match_labels=None, match_expressions=None))) == ""


@pytest.mark.parametrize(("expression", "fragment"), [
    ({"key": "a", "operator": "In", "values": []}, "for 'in', 'notin' operators, values set can't be empty"),
    ({"key": "a", "operator": "NotIn"}, "for 'in', 'notin' operators, values set can't be empty"),
    ({"key": "a", "operator": "Exists", "values": ["x"]}, "values set must be empty for exists and does not exist"),
    ({"key": "a", "operator": "Gt", "values": ["1"]}, '"Gt" is not a valid label selector operator'),
    ({"key": "a", "operator": "in", "values": ["x"]}, '"in" is not a valid label selector operator'),
    ({"key": "a/", "operator": "Exists"}, "name part must be non-empty"),
    ({"key": "a", "operator": "In", "values": ["ok", "-bad"]}, 'matchExpressions[0].values[1][a]: Invalid value: "-bad"'),
    ({"key": "a", "operator": "In", "values": "ab"}, "must be a list of strings"),
])
def test_label_selector_expression_errors(sel, expression, fragment):
    with pytest.raises(lbcore.SelectorError) as caught:
        sel.selector_from_label_selector({"matchExpressions": [expression]})
    assert fragment in str(caught.value)


# --------------------------------------------------------------------------- properties over generated input



def _word(first: st.SearchStrategy[str], middle: str) -> st.SearchStrategy[str]:
    """One alphanumeric, or alphanumeric + middle characters + alphanumeric."""
    return st.one_of(first, st.builds(lambda a, m, b: a + m + b, first, st.text(alphabet=middle, max_size=5), first))


names = _word(st.sampled_from("abxzABZ019"), "azAZ09-_.")
prefixes = st.lists(_word(st.sampled_from("abz09"), "az09-"), min_size=1, max_size=3).map(".".join)
keys = st.one_of(names, st.builds(lambda p, n: f"{p}/{n}", prefixes, names))
values = st.one_of(st.just(""), names)
ints = st.integers(min_value=0, max_value=2**63 - 1).map(str)


@st.composite
def requirements(draw):
    op = draw(st.sampled_from(_selectors_py.OPERATORS))
    key = draw(keys)
    if op in ("in", "notin"):
        vals = draw(st.lists(values, min_size=1, max_size=4))
    elif op in ("exists", "!"):
        vals = []
    elif op in ("gt", "lt"):
        vals = [draw(ints)]
    else:
        vals = [draw(values)]
    return (key, op, vals)


WHITESPACE = st.text(alphabet=" \t\r\n", max_size=2)


def respace(text: str, draw) -> str:
    """Put random whitespace around every symbol, where Kubernetes allows it."""
    out = []
    for ch in text:
        if ch in "=!(),<>\x01\x02":
            out.append(draw(WHITESPACE) + ch + draw(WHITESPACE))
        elif ch == " ":
            out.append(" " + draw(WHITESPACE))
        else:
            out.append(ch)
    return draw(WHITESPACE) + "".join(out) + draw(WHITESPACE)


@HYPOTHESIS
@given(reqs=st.lists(requirements(), max_size=5), data=st.data())
def test_str_parse_round_trip(sel, reqs, data):
    built = sel.Selector(reqs)
    text = str(built)
    parsed = sel.parse_selector(text)
    assert parsed == built and str(parsed) == text and hash(parsed) == hash(built)
    # "!=" and "==" must stay one token each, so whitespace is not put inside them
    protected = text.replace("!=", "\x01").replace("==", "\x02")
    spaced = respace(protected, data.draw).replace("\x01", "!=").replace("\x02", "==")
    assert sel.parse_selector(spaced) == built


label_sets = st.dictionaries(
    st.sampled_from(["a", "b", "c", "example.com/a"]),
    st.sampled_from(["", "x", "y", "1", "-2", "10", "in"]),
    max_size=4,
)


@HYPOTHESIS
@given(reqs=st.lists(requirements(), max_size=4), labels=label_sets)
def test_twins_agree_on_matching(reqs, labels):
    compiled = _selectors_c.Selector(reqs)
    readable = _selectors_py.Selector(reqs)
    assert str(compiled) == str(readable)
    assert compiled.matches(labels) == readable.matches(labels)


selector_texts = st.text(alphabet="ax1-_./=!(),<> \tinot", max_size=24)


@HYPOTHESIS
@given(text=selector_texts)
def test_twins_agree_on_any_text(text):
    """Same selector or the same error, message, token and position, on arbitrary text."""
    outcomes = []
    for module in (_selectors_c, _selectors_py):
        try:
            outcomes.append(("ok", str(module.parse_selector(text))))
        except lbcore.SelectorError as err:
            outcomes.append(("error", str(err), err.token, err.position))
    assert outcomes[0] == outcomes[1]


@HYPOTHESIS
@given(text=st.text(alphabet="aZ09-_./é ", max_size=70) | st.text(max_size=8))
def test_twins_agree_on_validation(text):
    assert _selectors_c.validate_label_key(text) == _selectors_py.validate_label_key(text)
    assert _selectors_c.validate_label_value(text) == _selectors_py.validate_label_value(text)


# --------------------------------------------------------------------------- every kind of dict the matcher probes
# On CPython 3.11 the compiled matcher probes a str-keyed dict's table itself; these dicts take
# each of its paths (small and large index widths, deleted slots, mixed keys, split tables, keys
# that are equal but not the same object) and must answer what the readable twin answers, with
# the probe and with the public look-up it falls back on (the only one on other versions).


@contextmanager
def _dict_probe(on: bool):
    before = _selectors_c._use_dict_probe()
    _selectors_c._use_dict_probe(on)
    try:
        yield
    finally:
        _selectors_c._use_dict_probe(before)


@pytest.fixture(params=["probe", "public look-up"])
def dict_probe(request):
    """The compiled matcher with its inline dict probe (where built), then without it."""
    with _dict_probe(request.param == "probe"):
        yield request.param


def test_dict_probe_is_on_only_where_its_layout_was_checked():
    checked = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)
    assert _selectors_c._use_dict_probe() is checked
    with _dict_probe(True):
        assert _selectors_c._use_dict_probe() is checked  # never on where it was not built
    with _dict_probe(False):
        assert _selectors_c._use_dict_probe() is False
        assert _selectors_c.parse_selector("app=web").matches({"app": "web"})


def _fresh(text: str) -> str:
    """An equal str that is not the interned object (as json or a socket read gives)."""
    return "".join(list(text))


class _Holder:
    def __init__(self) -> None:
        self.app = "web"
        self.tier = "backend"


def _dicts_to_probe() -> list[tuple[str, dict]]:
    big = {f"k{i}": str(i) for i in range(300)}  # 2-byte indices
    big.update(app="web", tier="backend")
    huge = {f"k{i}": "v" for i in range(70_000)}  # 4-byte indices
    huge.update(app="web", tier="frontend")
    deleted = {f"d{i}": "x" for i in range(20)}
    deleted.update(app="web", tier="backend")
    for i in range(20):
        del deleted[f"d{i}"]  # dummies left in the probe runs
    mixed = {1: "one", ("t",): "tuple", "app": "web", "tier": "backend"}
    return [
        ("literal keys", {"app": "web", "tier": "backend"}),
        ("fresh keys and values", {_fresh("app"): _fresh("web"), _fresh("tier"): _fresh("backend")}),
        ("300 keys", big),
        ("70,000 keys", huge),
        ("deleted keys", deleted),
        ("non-str keys too", mixed),
        ("instance __dict__ (split table)", _Holder().__dict__),
        ("empty", {}),
        ("wrong value type", {"app": 7, "tier": None}),
    ]


@pytest.mark.parametrize("name, labels", _dicts_to_probe(), ids=[n for n, _ in _dicts_to_probe()])
@pytest.mark.parametrize("text", ["app=web,tier in (backend,db)", "app,!canary", "tier notin (frontend)", "app!=web"])
def test_compiled_match_agrees_on_every_kind_of_dict(dict_probe, name, labels, text):
    compiled = _selectors_c.parse_selector(text).matches(labels)
    assert compiled == _selectors_py.parse_selector(text).matches(labels)


def test_split_table_dict_matches(dict_probe):
    holder = _Holder()
    assert _selectors_c.parse_selector("app=web,tier=backend").matches(holder.__dict__)
    holder.tier = "db"
    assert not _selectors_c.parse_selector("app=web,tier=backend").matches(holder.__dict__)


def test_keys_and_values_of_str_subclasses_match_by_value(dict_probe):
    class Text(str):
        pass

    labels = {Text("app"): Text("web")}
    assert _selectors_c.parse_selector("app=web").matches(labels)
    assert not _selectors_c.parse_selector("app!=web").matches(labels)


def test_non_ascii_values_compare_by_content(dict_probe):
    # kinds 1, 2 and 4 of PEP 393; "é" and "e" differ, an equal fresh copy matches
    for value in ("caf\u00e9", "\u0394x", "\U0001f600"):
        labels = {"v": _fresh(value)}
        requirement = _selectors_c.Selector([("v", "in", ["a", "b"])])
        assert not requirement.matches(labels)
        assert _selectors_c.Selector([("v", "exists", [])]).matches(labels)
        assert _selectors_c.Selector([("v", "!=", ["cafe"])]).matches(labels)


def test_matches_takes_its_labels_positionally(sel):
    s = sel.parse_selector("app=web")
    assert s.matches({"app": "web"})
    with pytest.raises(TypeError):
        s.matches(labels={"app": "web"})


@HYPOTHESIS
@given(
    labels=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["", "1", "2", "x"]), max_size=4),
    deletions=st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=4),
    padding=st.integers(0, 400),
)
def test_compiled_match_agrees_after_deletions_and_growth(labels, deletions, padding):
    """Dicts grown past the 1- and 2-byte index widths and with deleted slots, against the twin."""
    labels = dict(labels)
    for i in range(padding):
        labels[f"pad{i}"] = "p"
    for key in deletions:
        labels.pop(key, None)
    for probe in (True, False):
        with _dict_probe(probe):
            for text in ("a=1", "a in (1,2),b", "!c,d notin (x)", "a>0", "b!=", "a,b,c,d"):
                assert (_selectors_c.parse_selector(text).matches(labels)
                        == _selectors_py.parse_selector(text).matches(labels))
