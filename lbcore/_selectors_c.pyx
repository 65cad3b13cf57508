# cython: language_level=3, embedsignature=True
"""Kubernetes label selectors, compiled twin: parse, validate, match, and an incremental index.

The same API and behaviour as ``lbcore._selectors_py`` (the readable reference it is tested
against). A parsed selector is an array of C structs: operator, key, value pointers
(or a frozenset for long value lists) and the integer of ``>``/``<``; matching a label dict is a
C loop of dict look-ups and string compares, no Python-level code and no regex.

Which constructor gives which semantics:

- ``parse_selector("")`` matches everything (``labels.Everything()``).
- ``selector_from_map({})`` and ``selector_from_map(None)`` match nothing: a Service with an
  empty or absent ``spec.selector`` selects no pods, as the endpoints controller does.
- ``selector_from_label_selector(None)`` matches nothing, ``selector_from_label_selector({})``
  matches everything (``metav1.LabelSelectorAsSelector``).
"""

cimport cython
from cpython.object cimport PyObject, PyObject_RichCompareBool, Py_EQ
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.set cimport PySet_Contains
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp

from lbcore._hashing_c cimport hash_object

import sys
from collections.abc import Mapping
from lbcore.errors import SelectorError
from lbcore import _selectors_py as _ref
from lbcore._selectors_py import Requirement

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

cdef extern from *:
    """
    /* A borrowed dict look-up for an exact, hashed str key. On CPython 3.11 it probes the
       compact table of an all-str-keys dict inline, as the interpreter's own
       unicodekeys_lookup_unicode does (pointer first, then hash, length and bytes), which saves
       three nested calls per requirement; any other dict, key or version takes the public
       PyDict_GetItemWithError. The layout below is CPython 3.11's PyDictKeysObject. */
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && !defined(Py_LIMITED_API) && !defined(PYPY_VERSION)
    typedef struct {
        Py_ssize_t dk_refcnt;
        uint8_t dk_log2_size;
        uint8_t dk_log2_index_bytes;
        uint8_t dk_kind;
        uint32_t dk_version;
        Py_ssize_t dk_usable;
        Py_ssize_t dk_nentries;
        char dk_indices[];
    } lb_dictkeys;
    typedef struct { PyObject *me_key; PyObject *me_value; } lb_unicode_entry;

    static inline PyObject* lb_dict_get(PyObject* d, PyObject* key) {
        PyDictObject* mp = (PyDictObject*)d;
        lb_dictkeys* dk = (lb_dictkeys*)mp->ma_keys;
        Py_hash_t hash;
        if (mp->ma_values != NULL || dk->dk_kind != 1 || !PyUnicode_CheckExact(key)
                || (hash = ((PyASCIIObject*)key)->hash) == -1)
            return PyDict_GetItemWithError(d, key);
        const uint8_t log2 = dk->dk_log2_size;
        const size_t mask = ((size_t)1 << log2) - 1;
        size_t i = (size_t)hash & mask, perturb = (size_t)hash;
        const lb_unicode_entry* entries =
            (const lb_unicode_entry*)(&dk->dk_indices[(size_t)1 << dk->dk_log2_index_bytes]);
        for (;;) {
            Py_ssize_t ix;
            if (log2 < 8) ix = ((const int8_t*)dk->dk_indices)[i];
            else if (log2 < 16) ix = ((const int16_t*)dk->dk_indices)[i];
            else if (log2 >= 32) ix = (Py_ssize_t)((const int64_t*)dk->dk_indices)[i];
            else ix = ((const int32_t*)dk->dk_indices)[i];
            if (ix >= 0) {
                PyObject* k = entries[ix].me_key;
                if (k == key) return entries[ix].me_value;
                if (((PyASCIIObject*)k)->hash == hash
                        && PyUnicode_GET_LENGTH(k) == PyUnicode_GET_LENGTH(key)
                        && PyUnicode_KIND(k) == PyUnicode_KIND(key)
                        && memcmp(PyUnicode_DATA(k), PyUnicode_DATA(key),
                                  (size_t)PyUnicode_GET_LENGTH(k) * PyUnicode_KIND(k)) == 0)
                    return entries[ix].me_value;
            }
            else if (ix == -1) {
                return NULL;
            }
            perturb >>= 5;
            i = (i * 5 + perturb + 1) & mask;
        }
    }
    #else
    #define lb_dict_get PyDict_GetItemWithError
    #endif
    """
    PyObject* dict_get "lb_dict_get"(PyObject* d, PyObject* key) except? NULL

cdef extern from "Python.h":
    bint unicode_check_exact "PyUnicode_CheckExact"(PyObject* o)
    Py_ssize_t unicode_length "PyUnicode_GET_LENGTH"(PyObject* o)
    int unicode_kind "PyUnicode_KIND"(PyObject* o)
    void* unicode_data "PyUnicode_DATA"(PyObject* o)

# Operators, as in Kubernetes' selection package, numbered in the order of their names so that
# (key, code, values) tuples sort as the readable twin's (key, operator, values) do.
cdef enum:
    OP_NOT_EXISTS = 0   # "!"
    OP_NEQ = 1          # "!="
    OP_EQ = 2           # "="
    OP_DEQ = 3          # "=="
    OP_EXISTS = 4       # "exists"
    OP_GT = 5           # "gt"
    OP_IN = 6           # "in"
    OP_LT = 7           # "lt"
    OP_NOTIN = 8        # "notin"

cdef dict _OP_CODE = {
    _ref.EQUALS: OP_EQ, _ref.DOUBLE_EQUALS: OP_DEQ, _ref.NOT_EQUALS: OP_NEQ, _ref.IN: OP_IN,
    _ref.NOT_IN: OP_NOTIN, _ref.EXISTS: OP_EXISTS, _ref.DOES_NOT_EXIST: OP_NOT_EXISTS,
    _ref.GREATER_THAN: OP_GT, _ref.LESS_THAN: OP_LT,
}
cdef tuple _OP_NAME = (
    _ref.DOES_NOT_EXIST, _ref.NOT_EQUALS, _ref.EQUALS, _ref.DOUBLE_EQUALS, _ref.EXISTS,
    _ref.GREATER_THAN, _ref.IN, _ref.LESS_THAN, _ref.NOT_IN,
)
assert list(_OP_NAME) == sorted(_OP_NAME) and all(_OP_CODE[name] == i for i, name in enumerate(_OP_NAME))

# Past this many values an in/notin requirement looks the label value up in a frozenset.
cdef enum:
    SMALL_SET = 8


# ---------------------------------------------------------------------------------------------
# Character-level validation (the regexes of Kubernetes' validation package, as C loops)
# ---------------------------------------------------------------------------------------------

cdef inline bint _alnum(unsigned char c) noexcept nogil:
    return (c >= c'a' and c <= c'z') or (c >= c'A' and c <= c'Z') or (c >= c'0' and c <= c'9')


cdef inline bint _lower_alnum(unsigned char c) noexcept nogil:
    return (c >= c'a' and c <= c'z') or (c >= c'0' and c <= c'9')


@cython.boundscheck(False)
@cython.wraparound(False)
cdef bint _is_name(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """``([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]``, whole string."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if n == 0 or not _alnum(s[0]) or not _alnum(s[n - 1]):
        return False
    for i in range(1, n - 1):
        c = s[i]
        if not (_alnum(c) or c == c'-' or c == c'_' or c == c'.'):
            return False
    return True


@cython.boundscheck(False)
@cython.wraparound(False)
cdef bint _is_subdomain(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """``[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*``, whole string."""
    cdef Py_ssize_t i, start = 0
    cdef unsigned char c
    if n == 0:
        return False
    for i in range(n + 1):
        if i == n or s[i] == c'.':
            # one DNS label: s[start:i]
            if i == start or not _lower_alnum(s[start]) or not _lower_alnum(s[i - 1]):
                return False
            start = i + 1
        else:
            c = s[i]
            if not (_lower_alnum(c) or c == c'-'):
                return False
    return True


cdef bint _valid_key(str key) except -1:
    cdef Py_ssize_t n, i, slash = -1
    cdef const unsigned char* s = <const unsigned char*>PyUnicode_AsUTF8AndSize(key, &n)
    for i in range(n):
        if s[i] == c'/':
            if slash >= 0:
                return False
            slash = i
    if slash < 0:
        return n <= _ref.NAME_MAX and _is_name(s, n)
    return (slash <= _ref.PREFIX_MAX and _is_subdomain(s, slash)
            and n - slash - 1 <= _ref.NAME_MAX and _is_name(s + slash + 1, n - slash - 1))


cdef bint _valid_value(str value) except -1:
    cdef Py_ssize_t n
    cdef const unsigned char* s = <const unsigned char*>PyUnicode_AsUTF8AndSize(value, &n)
    return n == 0 or (n <= _ref.VALUE_MAX and _is_name(s, n))


cdef Py_ssize_t _utf8_len(str text) except -1:
    cdef Py_ssize_t n
    PyUnicode_AsUTF8AndSize(text, &n)
    return n


cdef bint _name_ok(str name) except -1:
    cdef Py_ssize_t n
    cdef const unsigned char* s = <const unsigned char*>PyUnicode_AsUTF8AndSize(name, &n)
    return _is_name(s, n)


def validate_label_key(key: str) -> list:
    """Kubernetes' messages for an invalid label key (a qualified name); ``[]`` when valid.

    A key is an optional DNS-1123 subdomain prefix of at most 253 characters and a ``/``, then a
    name of at most 63 characters of alphanumerics, ``-``, ``_`` and ``.``, beginning and ending
    with an alphanumeric.
    """
    cdef list errors = []
    cdef Py_ssize_t n
    cdef const unsigned char* s
    if _valid_key(key):
        return errors
    parts = key.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part " + _ref.EMPTY_ERROR)
        else:
            if _utf8_len(prefix) > _ref.PREFIX_MAX:
                errors.append("prefix part " + _ref.max_len_error(_ref.PREFIX_MAX))
            s = <const unsigned char*>PyUnicode_AsUTF8AndSize(prefix, &n)
            if not _is_subdomain(s, n):
                errors.append("prefix part " + _ref.SUBDOMAIN_REGEX_ERROR)
    else:
        return [_ref.QUALIFIED_NAME_ERROR]
    if not name:
        errors.append("name part " + _ref.EMPTY_ERROR)
    elif _utf8_len(name) > _ref.NAME_MAX:
        errors.append("name part " + _ref.max_len_error(_ref.NAME_MAX))
    if not _name_ok(name):
        errors.append("name part " + _ref.NAME_REGEX_ERROR)
    return errors


def validate_label_value(value: str) -> list:
    """Kubernetes' messages for an invalid label value; ``[]`` when valid.

    A value is empty, or at most 63 characters of alphanumerics, ``-``, ``_`` and ``.``,
    beginning and ending with an alphanumeric.
    """
    cdef list errors = []
    if _valid_value(value):
        return errors
    if _utf8_len(value) > _ref.VALUE_MAX:
        errors.append(_ref.max_len_error(_ref.VALUE_MAX))
    if value and not _name_ok(value):
        errors.append(_ref.VALUE_REGEX_ERROR)
    return errors


@cython.boundscheck(False)
@cython.wraparound(False)
cdef bint _parse_int64(const char* s, Py_ssize_t n, int64_t* out) noexcept nogil:
    """Go's ``strconv.ParseInt(s, 10, 64)``: optional sign, ASCII digits, int64 range."""
    cdef Py_ssize_t i = 0
    cdef bint negative = False
    cdef uint64_t acc = 0, digit
    cdef uint64_t limit
    if n > 0 and (s[0] == c'+' or s[0] == c'-'):
        negative = s[0] == c'-'
        i = 1
    if i >= n:
        return False
    limit = (<uint64_t>1 << 63) if negative else ((<uint64_t>1 << 63) - 1)
    while i < n:
        if s[i] < c'0' or s[i] > c'9':
            return False
        digit = <uint64_t>(s[i] - c'0')
        if acc > (limit - digit) // 10:
            return False
        acc = acc * 10 + digit
        i += 1
    out[0] = <int64_t>(0 - acc) if negative else <int64_t>acc
    return True


cdef bint _str_int64(object value, int64_t* out) except -1:
    cdef Py_ssize_t n
    cdef const char* s
    if not isinstance(value, str):
        return False
    s = PyUnicode_AsUTF8AndSize(value, &n)
    return _parse_int64(s, n, out)


cdef bint _requirement_ok(str key, int op, tuple values) except -1:
    """The success path of NewRequirement's checks, without building any message."""
    cdef int64_t number
    cdef Py_ssize_t n = len(values)
    if not _valid_key(key):
        return False
    if op == OP_IN or op == OP_NOTIN:
        if n == 0:
            return False
    elif op == OP_EXISTS or op == OP_NOT_EXISTS:
        if n != 0:
            return False
    elif n != 1:
        return False
    for value in values:
        if not isinstance(value, str) or not _valid_value(<str>value):
            return False
        if (op == OP_GT or op == OP_LT) and not _str_int64(value, &number):
            return False
    return True


cdef inline tuple _plain(str key, int code, tuple values):
    """The internal form of a requirement: (key, operator code, sorted values)."""
    return (key, code, values)


cdef str _requirement_text(int op, str key, tuple values):
    """Kubernetes' Requirement.String(): ``!k``, ``k``, ``k in (a,b)``, ``k=v``, ``k>1``."""
    if op == OP_NOT_EXISTS:
        return "!" + key
    if op == OP_EXISTS:
        return key
    joined = values[0] if len(values) == 1 else ",".join(values)
    if op == OP_IN:
        return key + " in (" + joined + ")"
    if op == OP_NOTIN:
        return key + " notin (" + joined + ")"
    if op == OP_GT:
        return key + ">" + joined
    if op == OP_LT:
        return key + "<" + joined
    return key + _OP_NAME[op] + joined


cdef tuple _new_requirement(object key, object operator, object values, str where="", object where_key=None):
    """A validated requirement (values sorted, duplicates dropped), or SelectorError naming the
    field ``where[where_key]`` (built only when there is an error)."""
    cdef tuple vals = tuple(values)
    code = _OP_CODE.get(operator) if isinstance(operator, str) else None
    if code is None or not isinstance(key, str) or not _requirement_ok(<str>key, <int>code, vals):
        path = where if where_key is None else f"{where}[{where_key}]"
        problems = _ref.requirement_errors(key, operator, vals, path)
        if not problems:  # pragma: no cover - both checks agree by construction
            problems = [(f"invalid requirement {key!r} {operator!r} {vals!r}", None)]
        index = problems[0][1]
        culprit = key if index is None or index == -1 else vals[index]
        raise _ref._error(_ref.aggregate([m for m, _ in problems]), token=culprit)
    if len(vals) > 1:
        vals = tuple(sorted(set(vals)))
    return _plain(key, <int>code, vals)


# ---------------------------------------------------------------------------------------------
# Selector
# ---------------------------------------------------------------------------------------------

cdef struct CReq:
    int op
    PyObject* key          # str, owned by the requirements tuple
    Py_ssize_t nvalues
    PyObject** values      # borrowed from the Requirement's values tuple
    PyObject* value_set    # frozenset of the values when there are many, else NULL
    int64_t number         # the integer of > and <


cdef object _interned(object text):
    if type(text) is str:
        return sys.intern(text)
    return text


cdef inline bint _str_eq(PyObject* a, PyObject* b) except -1:
    cdef Py_ssize_t n
    cdef int kind
    if a == b:
        return True
    if unicode_check_exact(a) and unicode_check_exact(b):
        n = unicode_length(a)
        kind = unicode_kind(a)
        if n != unicode_length(b) or kind != unicode_kind(b):
            return False
        return memcmp(unicode_data(a), unicode_data(b), <size_t>(n * kind)) == 0
    return PyObject_RichCompareBool(<object>a, <object>b, Py_EQ)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline bint _has_value(CReq* r, PyObject* value) except -1:
    cdef Py_ssize_t j
    if r.value_set != NULL:
        return PySet_Contains(<object>r.value_set, <object>value)
    for j in range(r.nvalues):
        if _str_eq(r.values[j], value):
            return True
    return False


cdef class Selector:
    """A parsed label selector: an AND of requirements, or the selector that matches nothing.

    Build one with :func:`parse_selector`, :func:`selector_from_map`,
    :func:`selector_from_label_selector`, or from :class:`Requirement` tuples (validated).
    ``str()`` gives the canonical Kubernetes string; selectors compare and hash by value.
    """

    cdef CReq* _reqs
    cdef PyObject** _value_ptrs
    cdef Py_ssize_t _n
    cdef bint _nothing
    cdef tuple _requirements   # (key, operator code, values) tuples, sorted
    cdef list _sets            # keeps the frozensets of long value lists alive
    cdef str _text             # canonical string, made on first use
    cdef tuple _public         # Requirement tuples, made on first use

    def __cinit__(self):
        self._reqs = NULL
        self._value_ptrs = NULL
        self._n = 0
        self._nothing = False
        self._requirements = ()
        self._sets = None
        self._text = None
        self._public = None

    def __dealloc__(self):
        PyMem_Free(self._reqs)
        PyMem_Free(self._value_ptrs)

    def __init__(self, requirements=()):
        """Validate and AND ``requirements``: Requirement or ``(key, operator, values)`` tuples."""
        self._set([_new_requirement(r[0], r[1], r[2]) for r in requirements], False)

    cdef int _set(self, list reqs, bint nothing) except -1:
        cdef Py_ssize_t i, j, total = 0
        cdef CReq* r
        cdef tuple values
        cdef int64_t number
        if len(reqs) > 1:
            reqs.sort()  # by key, then operator, then values
        PyMem_Free(self._reqs)
        PyMem_Free(self._value_ptrs)
        self._reqs = NULL
        self._value_ptrs = NULL
        # interned keys carry their hash and are the very objects of most label dicts' keys
        # (literals, and every key interned by a parser), so a dict look-up compares pointers
        self._requirements = tuple([(_interned(q[0]), q[1], tuple([_interned(v) for v in q[2]]))
                                    for q in reqs])
        self._nothing = nothing
        self._sets = None
        self._text = None
        self._public = None
        self._n = len(reqs)
        for q in reqs:
            total += len(q[2])
        self._reqs = <CReq*>PyMem_Malloc(max(self._n, 1) * sizeof(CReq))
        self._value_ptrs = <PyObject**>PyMem_Malloc(max(total, 1) * sizeof(PyObject*))
        if self._reqs == NULL or self._value_ptrs == NULL:
            raise MemoryError()
        total = 0
        for i in range(self._n):
            q = self._requirements[i]
            values = q[2]
            r = &self._reqs[i]
            r.op = q[1]
            r.key = <PyObject*>q[0]
            r.nvalues = len(values)
            r.values = self._value_ptrs + total
            r.value_set = NULL
            r.number = 0
            for j in range(r.nvalues):
                r.values[j] = <PyObject*>values[j]
            total += r.nvalues
            if r.nvalues > SMALL_SET:
                s = frozenset(values)
                if self._sets is None:
                    self._sets = []
                self._sets.append(s)
                r.value_set = <PyObject*>s
            if r.op == OP_GT or r.op == OP_LT:
                _str_int64(values[0], &number)
                r.number = number
        return 0

    cdef str _canonical(self):
        if self._text is None:
            if self._n == 1:
                q = self._requirements[0]
                self._text = _requirement_text(q[1], q[0], q[2])
            else:
                self._text = ",".join([_requirement_text(q[1], q[0], q[2]) for q in self._requirements])
        return self._text

    @staticmethod
    def everything():
        """The selector that matches every label set (what an empty string parses to)."""
        return _build([], False)

    @staticmethod
    def nothing():
        """The selector that matches no label set (a Service without a selector)."""
        return _build([], True)

    @property
    def requirements(self):
        """The requirements, sorted by key."""
        if self._public is None:
            self._public = tuple([Requirement(q[0], _OP_NAME[q[1]], q[2]) for q in self._requirements])
        return self._public

    @property
    def empty(self):
        """True for the selector that matches everything (no requirement at all)."""
        return not self._nothing and self._n == 0

    @property
    def is_nothing(self):
        """True for the selector that matches nothing."""
        return self._nothing

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef bint _match(self, dict labels) except -1:
        """The C loop: every requirement against a dict of labels. Keys are interned and carry
        their hash, so a look-up is one probe of the dict's table; values compare by identity,
        then by length and memcmp; nothing is allocated and no exception is set on a miss."""
        cdef Py_ssize_t i
        cdef CReq* r
        cdef PyObject* value
        cdef int64_t have
        cdef int op
        if self._nothing:
            return False
        for i in range(self._n):
            r = &self._reqs[i]
            op = r.op
            value = dict_get(<PyObject*>labels, r.key)
            if value == NULL:
                if op == OP_NEQ or op == OP_NOTIN or op == OP_NOT_EXISTS:
                    continue
                return False
            if op == OP_EQ or op == OP_DEQ or op == OP_IN:
                if not _has_value(r, value):
                    return False
            elif op == OP_EXISTS:
                continue
            elif op == OP_NEQ or op == OP_NOTIN:
                if _has_value(r, value):
                    return False
            elif op == OP_NOT_EXISTS:
                return False
            else:  # OP_GT, OP_LT
                if not _str_int64(<object>value, &have):
                    return False
                if (have <= r.number) if op == OP_GT else (have >= r.number):
                    return False
        return True

    @cython.always_allow_keywords(False)
    def matches(self, labels) -> bool:
        """True when every requirement holds for ``labels`` (a mapping of str to str)."""
        if type(labels) is not dict:
            labels = dict(labels)
        return self._match(<dict>labels)

    def requires_exact_match(self, str key):
        """The one value ``key`` must have (``=``, ``==`` or a one-value ``in``), else None."""
        for r in self._requirements:
            if r[0] == key:
                if r[1] in (OP_EQ, OP_DEQ, OP_IN) and len(r[2]) == 1:
                    return r[2][0]
                return None
        return None

    def __str__(self):
        return self._canonical()

    def __repr__(self):
        if self._nothing:
            return "Selector.nothing()"
        return f"parse_selector({self._canonical()!r})"

    def __eq__(self, other):
        cdef Selector o
        if not isinstance(other, Selector):
            return NotImplemented
        o = <Selector>other
        return self._nothing == o._nothing and self._requirements == o._requirements

    def __hash__(self):
        # XXH3 of the canonical text: stable, and it tells nothing from everything
        cdef uint64_t h = hash_object(("\x00nothing" if self._nothing else "") + self._canonical())
        cdef Py_hash_t out = <Py_hash_t>(h >> 1)
        return out if out != -1 else -2

    def __reduce__(self):
        return (_restore, ([tuple(r) for r in self.requirements], self._nothing))


cdef Selector _build(list reqs, bint nothing):
    cdef Selector sel = Selector.__new__(Selector)
    sel._set(reqs, nothing)
    return sel


def _restore(reqs, nothing):
    return _build([_plain(r[0], _OP_CODE[r[1]], tuple(r[2])) for r in reqs], nothing)


# ---------------------------------------------------------------------------------------------
# The selector string grammar (Kubernetes' Lexer and Parser, token for token)
# ---------------------------------------------------------------------------------------------

cdef enum:
    T_END = 0
    T_IDENT = 1
    T_OPEN = 2
    T_CLOSE = 3
    T_COMMA = 4
    T_NOT = 5
    T_EQ = 6
    T_DEQ = 7
    T_NEQ = 8
    T_GT = 9
    T_LT = 10
    T_IN = 11
    T_NOTIN = 12

cdef struct Tok:
    int kind
    Py_ssize_t start
    Py_ssize_t end

cdef str _BINARY_OPERATORS = "in, notin, =, ==, !=, gt, lt"
cdef str _PREFIX = "unable to parse requirement: "


cdef inline bint _is_space(Py_UCS4 c) noexcept:
    return c == u' ' or c == u'\t' or c == u'\r' or c == u'\n'


cdef inline bint _is_special(Py_UCS4 c) noexcept:
    return (c == u'=' or c == u'!' or c == u'(' or c == u')' or c == u',' or c == u'>'
            or c == u'<')


cdef class _Parser:
    """Kubernetes' recursive-descent parser over a C array of tokens. In the values context (and
    for keys) the words ``in`` and ``notin`` are identifiers; only where an operator is expected
    are they operators."""

    cdef str text
    cdef Tok* toks
    cdef Py_ssize_t at

    def __cinit__(self, str text):
        self.text = text
        self.at = 0
        self.toks = <Tok*>PyMem_Malloc((len(text) + 1) * sizeof(Tok))
        if self.toks == NULL:
            raise MemoryError()
        self._lex()

    def __dealloc__(self):
        PyMem_Free(self.toks)

    cdef int _lex(self) except -1:
        cdef str text = self.text
        cdef Py_ssize_t i = 0, n = len(text), start, k = 0
        cdef Py_UCS4 c, d
        cdef int kind
        while True:
            while i < n and _is_space(text[i]):
                i += 1
            if i == n:
                self.toks[k].kind = T_END
                self.toks[k].start = n
                self.toks[k].end = n
                return 0
            start = i
            c = text[i]
            if _is_special(c):
                d = text[i + 1] if i + 1 < n else 0
                i += 1
                if c == u'=':
                    kind = T_EQ
                    if d == u'=':
                        kind = T_DEQ
                        i += 1
                elif c == u'!':
                    kind = T_NOT
                    if d == u'=':
                        kind = T_NEQ
                        i += 1
                elif c == u'(':
                    kind = T_OPEN
                elif c == u')':
                    kind = T_CLOSE
                elif c == u',':
                    kind = T_COMMA
                elif c == u'>':
                    kind = T_GT
                else:
                    kind = T_LT
            else:
                while i < n and not _is_special(text[i]) and not _is_space(text[i]):
                    i += 1
                kind = T_IDENT
                if i - start == 2 and text[start] == u'i' and text[start + 1] == u'n':
                    kind = T_IN
                elif (i - start == 5 and text[start] == u'n' and text[start + 1] == u'o'
                        and text[start + 2] == u't' and text[start + 3] == u'i'
                        and text[start + 4] == u'n'):
                    kind = T_NOTIN
            self.toks[k].kind = kind
            self.toks[k].start = start
            self.toks[k].end = i
            k += 1

    cdef inline int peek(self, bint values=True) noexcept:
        cdef int kind = self.toks[self.at].kind
        if values and (kind == T_IN or kind == T_NOTIN):
            return T_IDENT
        return kind

    cdef inline str lit(self, Py_ssize_t at):
        return self.text[self.toks[at].start:self.toks[at].end]

    cdef object fail(self, str message, Py_ssize_t at):
        return _ref._error(message, token=self.lit(at), position=self.toks[at].start)

    cdef list parse(self):
        cdef list reqs = []
        cdef int kind
        while True:
            kind = self.peek()
            if kind == T_END:
                return reqs
            if kind != T_IDENT and kind != T_NOT:
                raise self.fail(f"found '{self.lit(self.at)}', expected: !, identifier, or 'end of string'", self.at)
            reqs.append(self.requirement())
            kind = self.peek()
            self.at += 1
            if kind == T_END:
                return reqs
            if kind != T_COMMA:
                raise self.fail(f"found '{self.lit(self.at - 1)}', expected: ',' or 'end of string'", self.at - 1)
            kind = self.peek()
            if kind != T_IDENT and kind != T_NOT:
                raise self.fail(f"found '{self.lit(self.at)}', expected: identifier after ','", self.at)

    cdef object requirement(self):
        cdef int op = -1, kind
        cdef Py_ssize_t key_at
        cdef list value_ats
        cdef tuple values
        cdef dict positions
        if self.peek() == T_NOT:
            op = OP_NOT_EXISTS
            self.at += 1
        key_at = self.at
        kind = self.peek()
        self.at += 1
        if kind != T_IDENT:
            raise self.fail(f"{_PREFIX}found '{self.lit(key_at)}', expected: identifier", key_at)
        key = self.lit(key_at)
        if not _valid_key(key):
            raise self.fail(_PREFIX + _ref.field_invalid("", key, "; ".join(validate_label_key(key))), key_at)
        kind = self.peek()
        if (kind == T_END or kind == T_COMMA) and op != OP_NOT_EXISTS:
            op = OP_EXISTS
        if op == OP_EXISTS or op == OP_NOT_EXISTS:
            return _plain(key, op, ())
        op = self.operator()
        if op == OP_IN or op == OP_NOTIN:
            value_ats = self.value_list()
        else:
            value_ats = self.exact_value()
        # a set of values, like Kubernetes' sets.String
        if len(value_ats) == 1:
            values = (self.value_at(value_ats[0]),)
        else:
            values = tuple(sorted({self.value_at(at) for at in value_ats}))
        if not _requirement_ok(key, op, values):
            positions = {}  # the first position of each value, to point at the culprit
            for at in value_ats:
                positions.setdefault(self.value_at(at), self.toks[at if at >= 0 else -at - 1].start)
            problems = _ref.requirement_errors(key, _OP_NAME[op], values)
            index = problems[0][1]
            message = _PREFIX + _ref.aggregate([m for m, _ in problems])
            if index is None or index == -1:
                raise self.fail(message, key_at)
            raise _ref._error(message, token=values[index], position=positions[values[index]])
        return _plain(key, op, values)

    cdef inline str value_at(self, object at):
        return self.lit(at) if at >= 0 else ""

    cdef int operator(self) except -1:
        cdef int kind = self.peek(False)
        self.at += 1
        if kind == T_IN:
            return OP_IN
        if kind == T_NOTIN:
            return OP_NOTIN
        if kind == T_EQ:
            return OP_EQ
        if kind == T_DEQ:
            return OP_DEQ
        if kind == T_NEQ:
            return OP_NEQ
        if kind == T_GT:
            return OP_GT
        if kind == T_LT:
            return OP_LT
        raise self.fail(f"{_PREFIX}found '{self.lit(self.at - 1)}', expected: {_BINARY_OPERATORS}", self.at - 1)

    # Values are token indexes; an empty value is written -(index of the token it stands at)-1.

    cdef list exact_value(self):
        cdef int kind = self.peek()
        if kind == T_END or kind == T_COMMA:
            return [-self.at - 1]
        self.at += 1
        if kind == T_IDENT:
            return [self.at - 1]
        raise self.fail(f"{_PREFIX}found '{self.lit(self.at - 1)}', expected: identifier", self.at - 1)

    cdef list value_list(self):
        cdef int kind = self.peek()
        cdef list found = []
        self.at += 1
        if kind != T_OPEN:
            raise self.fail(f"{_PREFIX}found '{self.lit(self.at - 1)}' expected: '('", self.at - 1)
        kind = self.peek()
        if kind == T_CLOSE:  # "()" is the set holding the empty value
            self.at += 1
            return [-(self.at - 1) - 1]
        if kind != T_IDENT and kind != T_COMMA:
            raise self.fail(f"{_PREFIX}found '{self.lit(self.at)}', expected: ',', ')' or identifier", self.at)
        while True:
            kind = self.peek()
            self.at += 1
            if kind == T_IDENT:
                found.append(self.at - 1)
                kind = self.peek()
                if kind == T_CLOSE:
                    self.at += 1
                    return found
                if kind != T_COMMA:
                    raise self.fail(f"{_PREFIX}found '{self.lit(self.at)}', expected: ',' or ')'", self.at)
            elif kind == T_COMMA:
                if not found:  # "(," : an empty value before the comma
                    found.append(-(self.at - 1) - 1)
                kind = self.peek()
                if kind == T_CLOSE:  # ",)" : an empty value after it
                    found.append(-self.at - 1)
                    self.at += 1
                    return found
                if kind == T_COMMA:  # ",," : an empty value between
                    found.append(-self.at - 1)
                    self.at += 1
            else:
                raise self.fail(f"{_PREFIX}found '{self.lit(self.at - 1)}', expected: ',', or identifier", self.at - 1)


def parse_selector(text) -> Selector:
    """Parse a Kubernetes label-selector string (``app=web,tier in (a,b),!canary``).

    The empty string (or only whitespace) gives the selector that matches everything.
    Raises :class:`lbcore.SelectorError` naming the offending token and its position.
    """
    if not isinstance(text, str):
        raise SelectorError(f"selector must be a string, not {type(text).__name__}")
    return _build(_Parser(text).parse(), False)


def selector_from_map(selector) -> Selector:
    """A Service's ``spec.selector``: every key must have exactly the given value.

    An empty or absent map gives the selector that matches nothing: a Service without a
    selector gets no endpoints from its pods (they are managed by hand).
    """
    if not selector:
        return _build([], True)
    return _build([_new_requirement(k, _ref.EQUALS, (v,), "selector", k)
                   for k, v in selector.items()], False)


def selector_from_label_selector(label_selector) -> Selector:
    """A ``metav1.LabelSelector`` (``matchLabels`` and ``matchExpressions`` with In, NotIn,
    Exists, DoesNotExist), as a dict or as the official client's ``V1LabelSelector``.

    ``None`` matches nothing; an empty selector (no labels, no expressions) matches everything,
    as ``metav1.LabelSelectorAsSelector`` does.
    """
    if label_selector is None:
        return _build([], True)
    field = _ref._field
    match_labels = field(label_selector, "matchLabels", "match_labels") or {}
    expressions = field(label_selector, "matchExpressions", "match_expressions") or []
    reqs = [_new_requirement(k, _ref.EQUALS, (v,), "matchLabels", k) for k, v in match_labels.items()]
    for i, expr in enumerate(expressions):
        path = f"matchExpressions[{i}]"
        raw_op = field(expr, "operator", "operator")
        operator = _ref._EXPRESSION_OPERATORS.get(raw_op) if isinstance(raw_op, str) else None
        if operator is None:
            raise _ref._error(f'{path}.operator: "{raw_op}" is not a valid label selector operator', token=raw_op)
        values = field(expr, "values", "values") or ()
        if isinstance(values, str):
            raise _ref._error(_ref.field_invalid(f"{path}.values", values, "must be a list of strings"), token=values)
        reqs.append(_new_requirement(field(expr, "key", "key"), operator, values, path))
    return _build(reqs, False)


# ---------------------------------------------------------------------------------------------
# SelectorIndex
# ---------------------------------------------------------------------------------------------

cdef inline void _discard(dict table, object key, object member):
    cdef set members = table.get(key)
    if members is not None:
        members.discard(member)
        if not members:
            del table[key]


cdef inline void _pop(dict table, object key, object member):
    cdef dict members = table.get(key)
    if members is not None:
        members.pop(member, None)
        if not members:
            del table[key]


cdef inline set _members(dict table, object key):
    cdef set members = table.get(key)
    if members is None:
        members = set()
        table[key] = members
    return members


cdef inline dict _submap(dict table, object key):
    cdef dict sub = table.get(key)
    if sub is None:
        sub = {}
        table[key] = sub
    return sub


cdef object _MISSING = object()
cdef dict _EMPTY = {}  # read-only stand-in for a missing sub-table
cdef tuple _NO_ANCHOR = ("none", "", ())
cdef tuple _NOTHING_ANCHOR = ("nothing", "", ())


cdef class SelectorIndex:
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

    cdef dict _selectors      # id -> Selector
    cdef dict _anchors        # id -> (kind, key, values)
    # the selector postings map each id to its Selector, so a candidate is checked without a
    # look-up in the (large) table of all selectors
    cdef dict _sel_by_pair    # key -> value -> {selector id: Selector}
    cdef dict _sel_by_key     # key -> {selector id: Selector}
    cdef dict _sel_unanchored # {selector id: Selector}
    cdef dict _labels         # id -> dict
    cdef dict _lab_by_pair    # key -> value -> {label id}
    cdef dict _lab_by_key     # key -> {label id}
    cdef dict _sel_matches    # selector id -> {label id}
    cdef dict _lab_matches    # label id -> {selector id}

    def __init__(self):
        self._selectors = {}
        self._anchors = {}
        self._sel_by_pair = {}
        self._sel_by_key = {}
        self._sel_unanchored = {}
        self._labels = {}
        self._lab_by_pair = {}
        self._lab_by_key = {}
        self._sel_matches = {}
        self._lab_matches = {}

    # -- sizes and look-ups ------------------------------------------------------------------

    def __len__(self):
        """Number of selectors plus label sets."""
        return len(self._selectors) + len(self._labels)

    @property
    def selector_count(self):
        """Number of selectors."""
        return len(self._selectors)

    @property
    def label_count(self):
        """Number of label sets."""
        return len(self._labels)

    def has_selector(self, selector_id) -> bool:
        """True when a selector is stored under this id."""
        return selector_id in self._selectors

    def has_labels(self, label_id) -> bool:
        """True when a label set is stored under this id."""
        return label_id in self._labels

    def get_selector(self, selector_id) -> Selector:
        """The selector stored under this id (KeyError if none)."""
        return self._selectors[selector_id]

    def get_labels(self, label_id) -> dict:
        """A copy of the label set stored under this id (KeyError if none)."""
        return dict(self._labels[label_id])

    def selector_ids(self) -> list:
        """Ids of the stored selectors."""
        return list(self._selectors)

    def label_ids(self) -> list:
        """Ids of the stored label sets."""
        return list(self._labels)

    def matching(self, selector) -> set:
        """Ids of the label sets a selector matches: by selector id, or for a Selector given."""
        if isinstance(selector, Selector):
            return self._labels_matching(<Selector>selector)
        return set(self._sel_matches[selector])

    def selectors_matching(self, labels) -> set:
        """Ids of the selectors that match a label set: by label-set id, or for a mapping given."""
        cdef set found
        if type(labels) is dict:
            return self._selectors_for(<dict>labels)
        if isinstance(labels, Mapping):  # an ABC check: slower, so after the plain-dict case
            return self._selectors_for(dict(labels))
        found = self._lab_matches[labels]
        return set(found)

    # -- label sets --------------------------------------------------------------------------

    def set_labels(self, label_id, labels) -> tuple:
        """Add or replace a label set; return (selector ids it now matches and did not,
        selector ids it matched and no longer does)."""
        cdef dict new = dict(labels)
        cdef dict old = self._labels.get(label_id)
        cdef set matched, before, added, removed
        if old is not None and old == new:
            return set(), set()
        if old is not None:
            self._unfile_labels(label_id, old, new)
        self._file_labels(label_id, new, old)
        self._labels[label_id] = new
        matched = self._selectors_for(new)
        before = self._lab_matches.get(label_id)
        if before is None:
            added, removed = set(matched), set()
        else:
            added = matched - before
            removed = before - matched
        for sid in added:
            (<set>self._sel_matches[sid]).add(label_id)
        for sid in removed:
            (<set>self._sel_matches[sid]).discard(label_id)
        self._lab_matches[label_id] = matched
        return added, removed

    def remove_labels(self, label_id) -> set:
        """Forget a label set; return the selector ids it matched. Unknown ids are ignored."""
        cdef dict old = self._labels.pop(label_id, None)
        if old is None:
            return set()
        self._unfile_labels(label_id, old, {})
        cdef set before = self._lab_matches.pop(label_id)
        for sid in before:
            (<set>self._sel_matches[sid]).discard(label_id)
        return before

    cdef void _file_labels(self, object lid, dict new, dict old) except *:
        for k, v in new.items():
            if old is not None and old.get(k, _MISSING) == v:
                continue
            _members(_submap(self._lab_by_pair, k), v).add(lid)
            if old is None or k not in old:
                _members(self._lab_by_key, k).add(lid)

    cdef void _unfile_labels(self, object lid, dict old, dict new) except *:
        cdef dict by_value
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

    cdef set _selectors_for(self, dict labels):
        cdef set result = set()
        cdef dict by_value, found
        for sid, sel in self._sel_unanchored.items():
            if (<Selector>sel)._match(labels):
                result.add(sid)
        for k, v in labels.items():
            by_value = self._sel_by_pair.get(k)
            if by_value is not None:
                found = by_value.get(v)
                if found is not None:
                    for sid, sel in found.items():
                        if (<Selector>sel)._match(labels):
                            result.add(sid)
            found = self._sel_by_key.get(k)
            if found is not None:
                for sid, sel in found.items():
                    if (<Selector>sel)._match(labels):
                        result.add(sid)
        return result

    # -- selectors ---------------------------------------------------------------------------

    def set_selector(self, selector_id, Selector selector not None) -> tuple:
        """Add or replace a selector; return (label-set ids it now matches and did not,
        label-set ids it matched and no longer does)."""
        cdef set matched, before, added, removed
        if selector_id in self._selectors:
            self._unfile_selector(selector_id)
        self._selectors[selector_id] = selector
        self._file_selector(selector_id, selector)
        matched = self._labels_matching(selector)
        before = self._sel_matches.get(selector_id)
        if before is None:
            added, removed = set(matched), set()
        else:
            added = matched - before
            removed = before - matched
        for lid in added:
            (<set>self._lab_matches[lid]).add(selector_id)
        for lid in removed:
            (<set>self._lab_matches[lid]).discard(selector_id)
        self._sel_matches[selector_id] = matched
        return added, removed

    def remove_selector(self, selector_id) -> set:
        """Forget a selector; return the label-set ids it matched. Unknown ids are ignored."""
        if selector_id not in self._selectors:
            return set()
        self._unfile_selector(selector_id)
        del self._selectors[selector_id]
        cdef set before = self._sel_matches.pop(selector_id)
        for lid in before:
            (<set>self._lab_matches[lid]).discard(selector_id)
        return before

    cdef tuple _choose_anchor(self, Selector selector):
        """The positive requirement with the fewest selectors already filed under it (then the
        fewest label sets), so that no anchor collects every selector."""
        cdef tuple best = None, cost, anchor = _NO_ANCHOR
        cdef dict by_value, labs
        cdef Py_ssize_t nsel, nlab, i
        cdef int op
        for i in range(selector._n):
            op = selector._reqs[i].op
            key = <object>selector._reqs[i].key
            if op == OP_EQ or op == OP_DEQ or op == OP_IN:
                values = (<tuple>selector._requirements[i])[2]
                by_value = self._sel_by_pair.get(key, _EMPTY)
                labs = self._lab_by_pair.get(key, _EMPTY)
                nsel = 0
                nlab = 0
                for v in values:
                    nsel += len(by_value.get(v, ()))
                    nlab += len(labs.get(v, ()))
                cost = (nsel, nlab)
                candidate = ("pair", key, values)
            elif op == OP_EXISTS or op == OP_GT or op == OP_LT:
                cost = (len(self._sel_by_key.get(key, ())) + 1_000_000,
                        len(self._lab_by_key.get(key, ())))
                candidate = ("key", key, ())
            else:
                continue
            if best is None or cost < best:
                best = cost
                anchor = candidate
        return anchor

    cdef void _file_selector(self, object sid, Selector selector) except *:
        cdef tuple anchor = _NOTHING_ANCHOR if selector._nothing else self._choose_anchor(selector)
        cdef dict by_value
        kind, key, values = anchor
        if kind == "pair":
            by_value = _submap(self._sel_by_pair, key)
            for v in values:
                _submap(by_value, v)[sid] = selector
        elif kind == "key":
            _submap(self._sel_by_key, key)[sid] = selector
        elif kind == "none":
            self._sel_unanchored[sid] = selector
        self._anchors[sid] = anchor

    cdef void _unfile_selector(self, object sid) except *:
        cdef dict by_value
        kind, key, values = self._anchors.pop(sid)
        if kind == "pair":
            by_value = self._sel_by_pair[key]
            for v in values:
                _pop(by_value, v, sid)
            if not by_value:
                del self._sel_by_pair[key]
        elif kind == "key":
            _pop(self._sel_by_key, key, sid)
        elif kind == "none":
            del self._sel_unanchored[sid]

    cdef set _labels_matching(self, Selector selector):
        cdef set result = set()
        cdef dict labels = self._labels
        cdef dict by_value
        cdef list groups = None, found
        cdef Py_ssize_t size = -1, n, i
        cdef int op
        if selector._nothing:
            return result
        # the smallest candidate set any positive requirement gives, else every label set
        for i in range(selector._n):
            op = selector._reqs[i].op
            key = <object>selector._reqs[i].key
            if op == OP_EQ or op == OP_DEQ or op == OP_IN:
                by_value = self._lab_by_pair.get(key, _EMPTY)
                found = []
                n = 0
                for v in (<tuple>selector._requirements[i])[2]:
                    g = by_value.get(v)
                    if g is not None:
                        found.append(g)
                        n += len(<set>g)
            elif op == OP_EXISTS or op == OP_GT or op == OP_LT:
                g = self._lab_by_key.get(key, ())
                found = [g]
                n = len(g)
            else:
                continue
            if groups is None or n < size:
                groups = found
                size = n
        if groups is None:
            groups = [labels]
        for g in groups:
            for lid in g:
                if selector._match(<dict>labels[lid]):
                    result.add(lid)
        return result
