"""Kubernetes label selectors, readable twin: parse, validate, match, and an incremental index.

This module is the reference the compiled twin (``lbcore.core._selectors_c``) is tested against; both
follow Kubernetes' ``apimachinery/pkg/labels/selector.go`` and its key/value validation.

Which constructor gives which semantics:

- ``parse_selector("")`` matches everything (``labels.Everything()``).
- ``selector_from_map({})`` and ``selector_from_map(None)`` match nothing: a Service with an
  empty or absent ``spec.selector`` selects no pods, as the endpoints controller does.
- ``selector_from_label_selector(None)`` matches nothing, ``selector_from_label_selector({})``
  matches everything (``metav1.LabelSelectorAsSelector``).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, NamedTuple

from lbcore.errors import SelectorError

__all__ = [
    "Requirement",
    "Selector",
    "SelectorIndex",
    "parse_selector",
    "selector_from_label_selector",
    "selector_from_map",
    "validate_label_key",
    "validate_label_value",
]

# Operators, spelled as Kubernetes' selection.Operator values.
EQUALS = "="
DOUBLE_EQUALS = "=="
NOT_EQUALS = "!="
IN = "in"
NOT_IN = "notin"
EXISTS = "exists"
DOES_NOT_EXIST = "!"
GREATER_THAN = "gt"
LESS_THAN = "lt"
OPERATORS = (EQUALS, DOUBLE_EQUALS, NOT_EQUALS, IN, NOT_IN, EXISTS, DOES_NOT_EXIST, GREATER_THAN, LESS_THAN)
_BINARY_OPERATORS = "in, notin, =, ==, !=, gt, lt"

# ---------------------------------------------------------------------------------------------
# Validation: Kubernetes' IsQualifiedName and IsValidLabelValue, with their messages
# ---------------------------------------------------------------------------------------------

NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
NAME_ERR = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character"
)
VALUE_FMT = "(" + NAME_FMT + ")?"
VALUE_ERR = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + "(\\." + DNS1123_LABEL_FMT + ")*"
DNS1123_SUBDOMAIN_ERR = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character"
)
NAME_MAX = 63
VALUE_MAX = 63
PREFIX_MAX = 253

_NAME_RE = re.compile(NAME_FMT)
_SUBDOMAIN_RE = re.compile(DNS1123_SUBDOMAIN_FMT)


def regex_error(msg: str, fmt: str, *examples: str) -> str:
    """Kubernetes' RegexError text, examples and all."""
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


EMPTY_ERROR = "must be non-empty"
NAME_REGEX_ERROR = regex_error(NAME_ERR, NAME_FMT, "MyName", "my.name", "123-abc")
VALUE_REGEX_ERROR = regex_error(VALUE_ERR, VALUE_FMT, "MyValue", "my_value", "12345")
SUBDOMAIN_REGEX_ERROR = regex_error(DNS1123_SUBDOMAIN_ERR, DNS1123_SUBDOMAIN_FMT, "example.com")
QUALIFIED_NAME_ERROR = (
    "a qualified name " + NAME_REGEX_ERROR
    + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
)


def _byte_len(text: str) -> int:
    # Kubernetes counts bytes of the UTF-8 text, not characters.
    return len(text.encode("utf-8", "surrogatepass"))


def validate_label_key(key: str) -> list[str]:
    """Kubernetes' messages for an invalid label key (a qualified name); ``[]`` when valid.

    A key is an optional DNS-1123 subdomain prefix of at most 253 characters and a ``/``, then a
    name of at most 63 characters of alphanumerics, ``-``, ``_`` and ``.``, beginning and ending
    with an alphanumeric.
    """
    errors: list[str] = []
    parts = key.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part " + EMPTY_ERROR)
        else:
            if _byte_len(prefix) > PREFIX_MAX:
                errors.append("prefix part " + max_len_error(PREFIX_MAX))
            if not _SUBDOMAIN_RE.fullmatch(prefix):
                errors.append("prefix part " + SUBDOMAIN_REGEX_ERROR)
    else:
        return [QUALIFIED_NAME_ERROR]
    if not name:
        errors.append("name part " + EMPTY_ERROR)
    elif _byte_len(name) > NAME_MAX:
        errors.append("name part " + max_len_error(NAME_MAX))
    if not _NAME_RE.fullmatch(name):
        errors.append("name part " + NAME_REGEX_ERROR)
    return errors


def validate_label_value(value: str) -> list[str]:
    """Kubernetes' messages for an invalid label value; ``[]`` when valid.

    A value is empty, or at most 63 characters of alphanumerics, ``-``, ``_`` and ``.``,
    beginning and ending with an alphanumeric.
    """
    errors: list[str] = []
    if _byte_len(value) > VALUE_MAX:
        errors.append(max_len_error(VALUE_MAX))
    if value and not _NAME_RE.fullmatch(value):
        errors.append(VALUE_REGEX_ERROR)
    return errors


_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


def parse_int64(text: str) -> int | None:
    """Go's ``strconv.ParseInt(text, 10, 64)``: optional sign, ASCII digits, int64 range."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not all("0" <= c <= "9" for c in digits):
        return None
    number = int(text)
    return number if _INT64_MIN <= number <= _INT64_MAX else None


def _quote(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_quote(v) for v in value) + "]"
    return repr(value)


def field_invalid(path: str, value: object, detail: str) -> str:
    """A field.Invalid error's text: ``path: Invalid value: "v": detail``."""
    head = f"{path}: " if path else ""
    return f"{head}Invalid value: {_quote(value)}: {detail}"


def requirement_errors(
    key: str, operator: str, values: tuple[str, ...], path: str = ""
) -> list[tuple[str, int | None]]:
    """Kubernetes' NewRequirement checks: each problem with the index of the value at fault
    (``None`` for the key or the whole value list, ``-1`` for the key itself)."""
    join = (lambda child: f"{path}.{child}") if path else (lambda child: child)
    found: list[tuple[str, int | None]] = []
    key_errors = validate_label_key(key) if isinstance(key, str) else ["must be a string"]
    if key_errors:
        found.append((field_invalid(join("key"), key, "; ".join(key_errors)), -1))
    values_path = join("values")
    if operator in (IN, NOT_IN):
        if not values:
            found.append((field_invalid(values_path, list(values), "for 'in', 'notin' operators, values set can't be empty"), None))
    elif operator in (EQUALS, DOUBLE_EQUALS, NOT_EQUALS):
        if len(values) != 1:
            found.append((field_invalid(values_path, list(values), "exact-match compatibility requires one single value"), None))
    elif operator in (EXISTS, DOES_NOT_EXIST):
        if values:
            found.append((field_invalid(values_path, list(values), "values set must be empty for exists and does not exist"), None))
    elif operator in (GREATER_THAN, LESS_THAN):
        if len(values) != 1:
            found.append((field_invalid(values_path, list(values), "for 'Gt', 'Lt' operators, exactly one value is required"), None))
        for i, value in enumerate(values):
            if not isinstance(value, str) or parse_int64(value) is None:
                found.append((field_invalid(f"{values_path}[{i}]", value, "for 'Gt', 'Lt' operators, the value must be an integer"), i))
    else:
        found.append((f'{join("operator")}: Unsupported value: {_quote(operator)}: supported values: '
                      + ", ".join(f'"{o}"' for o in OPERATORS), None))
    for i, value in enumerate(values):
        value_errors = validate_label_value(value) if isinstance(value, str) else ["must be a string"]
        if value_errors:
            found.append((field_invalid(f"{values_path}[{i}][{key}]", value, "; ".join(value_errors)), i))
    return found


def aggregate(messages: list[str]) -> str:
    """An errors.Aggregate's text: the one message, or ``[a, b]``."""
    return messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"


# ---------------------------------------------------------------------------------------------
# Requirements and selectors
# ---------------------------------------------------------------------------------------------


class Requirement(NamedTuple):
    """One requirement: ``key``, ``operator`` (one of OPERATORS) and its sorted ``values``."""

    key: str
    operator: str
    values: tuple[str, ...]

    def __str__(self) -> str:
        key, op, values = self
        if op == DOES_NOT_EXIST:
            return "!" + key
        if op == EXISTS:
            return key
        joined = ",".join(values)
        if op in (IN, NOT_IN):
            return f"{key} {op} ({joined})"
        return key + {GREATER_THAN: ">", LESS_THAN: "<"}.get(op, op) + joined


def _requirement(key: str, operator: str, values: Iterable[str], path: str = "") -> Requirement:
    values = tuple(values)
    problems = requirement_errors(key, operator, values, path)
    if problems:
        culprit = key if problems[0][1] == -1 or problems[0][1] is None else values[problems[0][1]]
        raise _error(aggregate([m for m, _ in problems]), token=culprit)
    return Requirement(key, operator, tuple(sorted(set(values))))


def _sort_key(req: Requirement) -> tuple[str, str, tuple[str, ...]]:
    return req.key, req.operator, req.values


def _error(message: str, token: str | None = None, position: int | None = None) -> SelectorError:
    if position is not None:
        message = f"{message} (at position {position})"
    err = SelectorError(message)
    err.token = token  # type: ignore[attr-defined]
    err.position = position  # type: ignore[attr-defined]
    return err


_MISSING: Any = object()


def _requirement_matches(req: Requirement, labels: Mapping[str, str]) -> bool:
    key, op, values = req
    value = labels.get(key, _MISSING)
    if op in (EQUALS, DOUBLE_EQUALS, IN):
        return value is not _MISSING and value in values
    if op in (NOT_EQUALS, NOT_IN):
        return value is _MISSING or value not in values
    if op == EXISTS:
        return value is not _MISSING
    if op == DOES_NOT_EXIST:
        return value is _MISSING
    # gt / lt: both sides must be int64; a label value that is not one does not match
    if value is _MISSING or not isinstance(value, str):
        return False
    have = parse_int64(value)
    want = parse_int64(values[0])
    if have is None or want is None:
        return False
    return have > want if op == GREATER_THAN else have < want


class Selector:
    """A parsed label selector: an AND of requirements, or the selector that matches nothing.

    Build one with :func:`parse_selector`, :func:`selector_from_map`,
    :func:`selector_from_label_selector`, or from :class:`Requirement` tuples (validated).
    ``str()`` gives the canonical Kubernetes string; selectors compare and hash by value.
    """

    __slots__ = ("_requirements", "_nothing", "_text")

    def __init__(self, requirements: Iterable[Requirement | tuple[str, str, Iterable[str]]] = ()):
        reqs = [_requirement(r[0], r[1], r[2]) for r in requirements]
        self._set(reqs, nothing=False)

    def _set(self, reqs: list[Requirement], nothing: bool) -> None:
        reqs.sort(key=_sort_key)
        self._requirements = tuple(reqs)
        self._nothing = nothing
        self._text = ",".join(str(r) for r in reqs)

    @classmethod
    def _build(cls, reqs: list[Requirement], nothing: bool = False) -> Selector:
        self = cls.__new__(cls)
        self._set(reqs, nothing)
        return self

    @classmethod
    def everything(cls) -> Selector:
        """The selector that matches every label set (what an empty string parses to)."""
        return cls._build([])

    @classmethod
    def nothing(cls) -> Selector:
        """The selector that matches no label set (a Service without a selector)."""
        return cls._build([], nothing=True)

    @property
    def requirements(self) -> tuple[Requirement, ...]:
        """The requirements, sorted by key."""
        return self._requirements

    @property
    def empty(self) -> bool:
        """True for the selector that matches everything (no requirement at all)."""
        return not self._nothing and not self._requirements

    @property
    def is_nothing(self) -> bool:
        """True for the selector that matches nothing."""
        return self._nothing

    def matches(self, labels: Mapping[str, str], /) -> bool:
        """True when every requirement holds for ``labels`` (a mapping of str to str)."""
        if self._nothing:
            return False
        return all(_requirement_matches(r, labels) for r in self._requirements)

    def requires_exact_match(self, key: str) -> str | None:
        """The one value ``key`` must have (``=``, ``==`` or a one-value ``in``), else None."""
        for r in self._requirements:
            if r.key == key:
                if r.operator in (EQUALS, DOUBLE_EQUALS, IN) and len(r.values) == 1:
                    return r.values[0]
                return None
        return None

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        if self._nothing:
            return "Selector.nothing()"
        return f"parse_selector({self._text!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Selector):
            return NotImplemented
        return self._nothing == other._nothing and self._requirements == other._requirements

    def __hash__(self) -> int:
        return hash((self._nothing, self._requirements))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (list(self._requirements), self._nothing))


def _restore(reqs: list[Requirement], nothing: bool) -> Selector:
    return Selector._build([Requirement(*r) for r in reqs], nothing)


# ---------------------------------------------------------------------------------------------
# The selector string grammar (Kubernetes' Lexer and Parser, token for token)
# ---------------------------------------------------------------------------------------------

_END, _IDENT, _OPEN, _CLOSE, _COMMA, _NOT, _EQ, _DEQ, _NEQ, _GT, _LT, _IN, _NOTIN = range(13)
_SYMBOLS = {
    "(": _OPEN, ")": _CLOSE, ",": _COMMA, "!": _NOT, "=": _EQ, "==": _DEQ, "!=": _NEQ,
    ">": _GT, "<": _LT,
}
_KEYWORDS = {"in": _IN, "notin": _NOTIN}
_WHITESPACE = frozenset(" \t\r\n")
_SPECIAL = frozenset("=!(),><")
_TOKEN_OPERATOR = {_IN: IN, _NOTIN: NOT_IN, _EQ: EQUALS, _DEQ: DOUBLE_EQUALS, _NEQ: NOT_EQUALS,
                   _GT: GREATER_THAN, _LT: LESS_THAN}


def _lex(text: str) -> list[tuple[int, str, int]]:
    """Tokens as (kind, literal, position); the last one is end of string."""
    tokens = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _WHITESPACE:
            i += 1
        if i == n:
            tokens.append((_END, "", i))
            return tokens
        start = i
        if text[i] in _SPECIAL:
            # the longest symbol wins: "==" and "!=" are the only two-character ones
            if text[i : i + 2] in ("==", "!="):
                i += 2
            else:
                i += 1
            tokens.append((_SYMBOLS[text[start:i]], text[start:i], start))
        else:
            while i < n and text[i] not in _SPECIAL and text[i] not in _WHITESPACE:
                i += 1
            word = text[start:i]
            tokens.append((_KEYWORDS.get(word, _IDENT), word, start))


class _Parser:
    """Kubernetes' recursive-descent parser. In the values context (and for keys) the words
    ``in`` and ``notin`` are plain identifiers; only where an operator is expected are they
    operators."""

    def __init__(self, text: str):
        self.tokens = _lex(text)
        self.at = 0

    def peek(self, values: bool = True) -> tuple[int, str, int]:
        kind, lit, pos = self.tokens[self.at]
        if values and kind in (_IN, _NOTIN):
            kind = _IDENT
        return kind, lit, pos

    def take(self, values: bool = True) -> tuple[int, str, int]:
        token = self.peek(values)
        self.at += 1
        return token

    def fail(self, message: str, token: tuple[int, str, int]) -> SelectorError:
        return _error(message, token=token[1], position=token[2])

    def parse(self) -> list[Requirement]:
        reqs: list[Requirement] = []
        while True:
            tok = self.peek()
            if tok[0] == _END:
                return reqs
            if tok[0] not in (_IDENT, _NOT):
                raise self.fail(f"found '{tok[1]}', expected: !, identifier, or 'end of string'", tok)
            reqs.append(self.requirement())
            sep = self.take()
            if sep[0] == _END:
                return reqs
            if sep[0] != _COMMA:
                raise self.fail(f"found '{sep[1]}', expected: ',' or 'end of string'", sep)
            nxt = self.peek()
            if nxt[0] not in (_IDENT, _NOT):
                raise self.fail(f"found '{nxt[1]}', expected: identifier after ','", nxt)

    def requirement(self) -> Requirement:
        prefix = "unable to parse requirement: "
        key_tok = self.take()
        operator = ""
        if key_tok[0] == _NOT:
            operator = DOES_NOT_EXIST
            key_tok = self.take()
        if key_tok[0] != _IDENT:
            raise self.fail(f"{prefix}found '{key_tok[1]}', expected: identifier", key_tok)
        key = key_tok[1]
        key_errors = validate_label_key(key)
        if key_errors:
            raise self.fail(prefix + field_invalid("", key, "; ".join(key_errors)), key_tok)
        if self.peek()[0] in (_END, _COMMA) and operator != DOES_NOT_EXIST:
            operator = EXISTS
        value_toks: list[tuple[int, str, int]] = []
        if operator not in (EXISTS, DOES_NOT_EXIST):
            op_tok = self.take(values=False)
            operator = _TOKEN_OPERATOR.get(op_tok[0], "")
            if not operator:
                raise self.fail(f"{prefix}found '{op_tok[1]}', expected: {_BINARY_OPERATORS}", op_tok)
            value_toks = self.value_list() if operator in (IN, NOT_IN) else self.exact_value()
        # a set of values, like Kubernetes' sets.String: first position of each value kept
        positions: dict[str, int] = {}
        for _, lit, pos in value_toks:
            positions.setdefault(lit, pos)
        values = tuple(sorted(positions))
        problems = requirement_errors(key, operator, values)
        if problems:
            message, index = problems[0]
            if index is None or index == -1:
                token = key_tok
            else:
                token = (_IDENT, values[index], positions[values[index]])
            raise self.fail(prefix + aggregate([m for m, _ in problems]), token)
        return Requirement(key, operator, values)

    def exact_value(self) -> list[tuple[int, str, int]]:
        tok = self.peek()
        if tok[0] in (_END, _COMMA):
            return [(_IDENT, "", tok[2])]
        tok = self.take()
        if tok[0] == _IDENT:
            return [tok]
        raise self.fail(f"unable to parse requirement: found '{tok[1]}', expected: identifier", tok)

    def value_list(self) -> list[tuple[int, str, int]]:
        prefix = "unable to parse requirement: "
        tok = self.take()
        if tok[0] != _OPEN:
            raise self.fail(f"{prefix}found '{tok[1]}' expected: '('", tok)
        first = self.peek()
        if first[0] == _CLOSE:  # "()" is the set holding the empty value
            self.take()
            return [(_IDENT, "", first[2])]
        if first[0] not in (_IDENT, _COMMA):
            raise self.fail(f"{prefix}found '{first[1]}', expected: ',', ')' or identifier", first)
        found: list[tuple[int, str, int]] = []
        while True:
            tok = self.take()
            if tok[0] == _IDENT:
                found.append(tok)
                nxt = self.peek()
                if nxt[0] == _CLOSE:
                    self.take()
                    return found
                if nxt[0] != _COMMA:
                    raise self.fail(f"{prefix}found '{nxt[1]}', expected: ',' or ')'", nxt)
            elif tok[0] == _COMMA:
                if not found:  # "(," : an empty value before the comma
                    found.append((_IDENT, "", tok[2]))
                nxt = self.peek()
                if nxt[0] == _CLOSE:  # ",)" : an empty value after it
                    found.append((_IDENT, "", nxt[2]))
                    self.take()
                    return found
                if nxt[0] == _COMMA:  # ",," : an empty value between
                    self.take()
                    found.append((_IDENT, "", nxt[2]))
            else:
                raise self.fail(f"{prefix}found '{tok[1]}', expected: ',', or identifier", tok)


def parse_selector(text: str) -> Selector:
    """Parse a Kubernetes label-selector string (``app=web,tier in (a,b),!canary``).

    The empty string (or only whitespace) gives the selector that matches everything.
    Raises :class:`lbcore.SelectorError` naming the offending token and its position.
    """
    if not isinstance(text, str):
        raise SelectorError(f"selector must be a string, not {type(text).__name__}")
    return Selector._build(_Parser(text).parse())


def selector_from_map(selector: Mapping[str, str] | None) -> Selector:
    """A Service's ``spec.selector``: every key must have exactly the given value.

    An empty or absent map gives the selector that matches nothing: a Service without a
    selector gets no endpoints from its pods (they are managed by hand).
    """
    if not selector:
        return Selector.nothing()
    reqs = [_requirement(k, EQUALS, (v,), path=f"selector[{k}]") for k, v in selector.items()]
    return Selector._build(reqs)


_EXPRESSION_OPERATORS = {"In": IN, "NotIn": NOT_IN, "Exists": EXISTS, "DoesNotExist": DOES_NOT_EXIST}


def _field(obj: Any, camel: str, snake: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(camel, obj.get(snake))
    return getattr(obj, snake, None)


def selector_from_label_selector(label_selector: Mapping[str, Any] | Any | None) -> Selector:
    """A ``metav1.LabelSelector`` (``matchLabels`` and ``matchExpressions`` with In, NotIn,
    Exists, DoesNotExist), as a dict or as the official client's ``V1LabelSelector``.

    ``None`` matches nothing; an empty selector (no labels, no expressions) matches everything,
    as ``metav1.LabelSelectorAsSelector`` does.
    """
    if label_selector is None:
        return Selector.nothing()
    match_labels = _field(label_selector, "matchLabels", "match_labels") or {}
    expressions = _field(label_selector, "matchExpressions", "match_expressions") or []
    reqs = [_requirement(k, EQUALS, (v,), path=f"matchLabels[{k}]") for k, v in match_labels.items()]
    for i, expr in enumerate(expressions):
        path = f"matchExpressions[{i}]"
        key = _field(expr, "key", "key")
        raw_op = _field(expr, "operator", "operator")
        operator = _EXPRESSION_OPERATORS.get(raw_op) if isinstance(raw_op, str) else None
        if operator is None:
            raise _error(f'{path}.operator: "{raw_op}" is not a valid label selector operator', token=raw_op)
        values = _field(expr, "values", "values") or ()
        if isinstance(values, str):
            raise _error(field_invalid(f"{path}.values", values, "must be a list of strings"), token=values)
        reqs.append(_requirement(key, operator, values, path=path))
    return Selector._build(reqs)


# ---------------------------------------------------------------------------------------------
# SelectorIndex
# ---------------------------------------------------------------------------------------------

# How a selector is found from a label set: through one of its positive requirements.
_PAIR_OPS = (EQUALS, DOUBLE_EQUALS, IN)
_KEY_OPS = (EXISTS, GREATER_THAN, LESS_THAN)


class SelectorIndex:
    """Selectors and label sets by id, and which of them match, kept up to date incrementally.

    Each selector is filed under one *anchor*, a requirement every matching label set must
    satisfy: ``key=value`` pairs for ``=``/``==``/``in``, the key for exists/``>``/``<``.
    Selectors with only negative requirements (``!=``, ``notin``, ``!key``) or none at all are
    kept apart and checked directly. Label sets are filed by their pairs and keys. A change of
    one label set or one selector then looks only at the candidates its anchors reach, and the
    match relation is stored both ways, so each change returns what it added and removed.

    Ids are any hashable values. The index does not know namespaces: keep one index per
    namespace (``collections.defaultdict(SelectorIndex)``), since a Service selects only pods
    of its own namespace.
    """

    def __init__(self) -> None:
        self._selectors: dict[Hashable, Selector] = {}
        self._anchors: dict[Hashable, tuple[str, str, tuple[str, ...]]] = {}
        self._sel_by_pair: dict[str, dict[str, set[Hashable]]] = {}
        self._sel_by_key: dict[str, set[Hashable]] = {}
        self._sel_unanchored: set[Hashable] = set()
        self._labels: dict[Hashable, dict[str, str]] = {}
        self._lab_by_pair: dict[str, dict[str, set[Hashable]]] = {}
        self._lab_by_key: dict[str, set[Hashable]] = {}
        self._sel_matches: dict[Hashable, set[Hashable]] = {}
        self._lab_matches: dict[Hashable, set[Hashable]] = {}

    # -- sizes and look-ups ------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of selectors plus label sets."""
        return len(self._selectors) + len(self._labels)

    @property
    def selector_count(self) -> int:
        """Number of selectors."""
        return len(self._selectors)

    @property
    def label_count(self) -> int:
        """Number of label sets."""
        return len(self._labels)

    def has_selector(self, selector_id: Hashable) -> bool:
        """True when a selector is stored under this id."""
        return selector_id in self._selectors

    def has_labels(self, label_id: Hashable) -> bool:
        """True when a label set is stored under this id."""
        return label_id in self._labels

    def get_selector(self, selector_id: Hashable) -> Selector:
        """The selector stored under this id (KeyError if none)."""
        return self._selectors[selector_id]

    def get_labels(self, label_id: Hashable) -> dict[str, str]:
        """A copy of the label set stored under this id (KeyError if none)."""
        return dict(self._labels[label_id])

    def selector_ids(self) -> list[Hashable]:
        """Ids of the stored selectors."""
        return list(self._selectors)

    def label_ids(self) -> list[Hashable]:
        """Ids of the stored label sets."""
        return list(self._labels)

    def matching(self, selector: Hashable | Selector) -> set[Hashable]:
        """Ids of the label sets a selector matches: by selector id, or for a Selector given."""
        if isinstance(selector, Selector):
            return self._labels_matching(selector)
        return set(self._sel_matches[selector])

    def selectors_matching(self, labels: Hashable | Mapping[str, str]) -> set[Hashable]:
        """Ids of the selectors that match a label set: by label-set id, or for a mapping given."""
        if isinstance(labels, Mapping):
            return self._selectors_for(labels)
        return set(self._lab_matches[labels])

    # -- label sets --------------------------------------------------------------------------

    def set_labels(self, label_id: Hashable, labels: Mapping[str, str]) -> tuple[set[Hashable], set[Hashable]]:
        """Add or replace a label set; return (selector ids it now matches and did not,
        selector ids it matched and no longer does)."""
        new = dict(labels)
        old = self._labels.get(label_id)
        if old == new:  # nothing changed, nothing to do
            return set(), set()
        if old is not None:
            self._unfile_labels(label_id, old, new)
        self._file_labels(label_id, new, old)
        self._labels[label_id] = new
        matched = self._selectors_for(new)
        before = self._lab_matches.get(label_id, set())
        added, removed = matched - before, before - matched
        for sid in added:
            self._sel_matches[sid].add(label_id)
        for sid in removed:
            self._sel_matches[sid].discard(label_id)
        self._lab_matches[label_id] = matched
        return added, removed

    def remove_labels(self, label_id: Hashable) -> set[Hashable]:
        """Forget a label set; return the selector ids it matched. Unknown ids are ignored."""
        old = self._labels.pop(label_id, None)
        if old is None:
            return set()
        self._unfile_labels(label_id, old, {})
        before = self._lab_matches.pop(label_id)
        for sid in before:
            self._sel_matches[sid].discard(label_id)
        return before

    def _file_labels(self, lid: Hashable, new: dict[str, str], old: dict[str, str] | None) -> None:
        for k, v in new.items():
            if old is not None and old.get(k, _MISSING) == v:
                continue
            self._lab_by_pair.setdefault(k, {}).setdefault(v, set()).add(lid)
            if old is None or k not in old:
                self._lab_by_key.setdefault(k, set()).add(lid)

    def _unfile_labels(self, lid: Hashable, old: dict[str, str], new: dict[str, str]) -> None:
        for k, v in old.items():
            nv = new.get(k, _MISSING)
            if nv == v:
                continue
            by_value = self._lab_by_pair[k]
            _discard(by_value, v, lid)
            if nv is _MISSING:
                _discard(self._lab_by_key, k, lid)
            if not by_value:
                del self._lab_by_pair[k]

    def _selectors_for(self, labels: Mapping[str, str]) -> set[Hashable]:
        candidates = set(self._sel_unanchored)
        for k, v in labels.items():
            by_value = self._sel_by_pair.get(k)
            if by_value:
                found = by_value.get(v)
                if found:
                    candidates |= found
            found = self._sel_by_key.get(k)
            if found:
                candidates |= found
        selectors = self._selectors
        return {sid for sid in candidates if selectors[sid].matches(labels)}

    # -- selectors ---------------------------------------------------------------------------

    def set_selector(self, selector_id: Hashable, selector: Selector) -> tuple[set[Hashable], set[Hashable]]:
        """Add or replace a selector; return (label-set ids it now matches and did not,
        label-set ids it matched and no longer does)."""
        if not isinstance(selector, Selector):
            raise TypeError(f"selector must be a Selector, not {type(selector).__name__}")
        if selector_id in self._selectors:
            self._unfile_selector(selector_id)
        self._selectors[selector_id] = selector
        self._file_selector(selector_id, selector)
        matched = self._labels_matching(selector)
        before = self._sel_matches.get(selector_id, set())
        added, removed = matched - before, before - matched
        for lid in added:
            self._lab_matches[lid].add(selector_id)
        for lid in removed:
            self._lab_matches[lid].discard(selector_id)
        self._sel_matches[selector_id] = matched
        return added, removed

    def remove_selector(self, selector_id: Hashable) -> set[Hashable]:
        """Forget a selector; return the label-set ids it matched. Unknown ids are ignored."""
        if selector_id not in self._selectors:
            return set()
        self._unfile_selector(selector_id)
        del self._selectors[selector_id]
        before = self._sel_matches.pop(selector_id)
        for lid in before:
            self._lab_matches[lid].discard(selector_id)
        return before

    def _choose_anchor(self, selector: Selector) -> tuple[str, str, tuple[str, ...]]:
        """The positive requirement with the fewest selectors already filed under it (then the
        fewest label sets), so that no anchor collects every selector."""
        best: tuple[int, int] | None = None
        anchor: tuple[str, str, tuple[str, ...]] = ("none", "", ())
        for r in selector.requirements:
            if r.operator in _PAIR_OPS:
                by_value = self._sel_by_pair.get(r.key, {})
                labs = self._lab_by_pair.get(r.key, {})
                cost = (sum(len(by_value.get(v, ())) for v in r.values),
                        sum(len(labs.get(v, ())) for v in r.values))
                candidate = ("pair", r.key, r.values)
            elif r.operator in _KEY_OPS:
                cost = (len(self._sel_by_key.get(r.key, ())) + 1_000_000,
                        len(self._lab_by_key.get(r.key, ())))
                candidate = ("key", r.key, ())
            else:
                continue
            if best is None or cost < best:
                best, anchor = cost, candidate
        return anchor

    def _file_selector(self, sid: Hashable, selector: Selector) -> None:
        if selector.is_nothing:
            anchor: tuple[str, str, tuple[str, ...]] = ("nothing", "", ())
        else:
            anchor = self._choose_anchor(selector)
        kind, key, values = anchor
        if kind == "pair":
            by_value = self._sel_by_pair.setdefault(key, {})
            for v in values:
                by_value.setdefault(v, set()).add(sid)
        elif kind == "key":
            self._sel_by_key.setdefault(key, set()).add(sid)
        elif kind == "none":
            self._sel_unanchored.add(sid)
        self._anchors[sid] = anchor

    def _unfile_selector(self, sid: Hashable) -> None:
        kind, key, values = self._anchors.pop(sid)
        if kind == "pair":
            by_value = self._sel_by_pair[key]
            for v in values:
                _discard(by_value, v, sid)
            if not by_value:
                del self._sel_by_pair[key]
        elif kind == "key":
            _discard(self._sel_by_key, key, sid)
        elif kind == "none":
            self._sel_unanchored.discard(sid)

    def _labels_matching(self, selector: Selector) -> set[Hashable]:
        if selector.is_nothing:
            return set()
        # the smallest candidate set any positive requirement gives, else every label set
        candidates: Iterable[Hashable] | None = None
        size = -1
        for r in selector.requirements:
            if r.operator in _PAIR_OPS:
                by_value = self._lab_by_pair.get(r.key, {})
                groups = [by_value[v] for v in r.values if v in by_value]
                n = sum(len(g) for g in groups)
                found: Iterable[Hashable] = groups[0] if len(groups) == 1 else [i for g in groups for i in g]
            elif r.operator in _KEY_OPS:
                found = self._lab_by_key.get(r.key, ())
                n = len(found)  # type: ignore[arg-type]
            else:
                continue
            if candidates is None or n < size:
                candidates, size = found, n
        if candidates is None:
            candidates = self._labels
        labels = self._labels
        return {lid for lid in candidates if selector.matches(labels[lid])}


def _discard(table: dict[Any, set[Hashable]], key: Any, member: Hashable) -> None:
    members = table.get(key)
    if members is not None:
        members.discard(member)
        if not members:
            del table[key]
