# cython: language_level=3, embedsignature=True
"""Kubernetes label selectors, compiled twin: parse, validate, match, and an incremental index.

The same API and behaviour as ``lbcore.core._selectors_py`` (the readable reference it is tested
against). A parsed selector is an array of C structs: operator, key, value pointers
(or a frozenset for long value lists) and the integer of ``>``/``<``; matching a label dict is a
C loop of dict look-ups and string compares, no Python-level code and no regex. The look-ups use
the public ``PyDict_GetItemWithError``, except on CPython 3.11, where they probe the dict's own
table (a private layout, checked for that version only; ``_use_dict_probe`` turns it off).

Which constructor gives which semantics:

- ``parse_selector("")`` matches everything (``labels.Everything()``).
- ``selector_from_map({})`` and ``selector_from_map(None)`` match nothing: a Service with an
  empty or absent ``spec.selector`` selects no pods, as the endpoints controller does.
- ``selector_from_label_selector(None)`` matches nothing, ``selector_from_label_selector({})``
  matches everything (``metav1.LabelSelectorAsSelector``).
"""

cimport cython
from cpython.object cimport PyObject, PyObject_Hash, PyObject_RichCompareBool, Py_EQ
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.set cimport PySet_Contains
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.string cimport memcmp

from lbcore.core._hashing_c cimport hash_object

import sys
from collections.abc import Mapping
from lbcore.errors import SelectorError
from lbcore.core import _selectors_py as _ref
from lbcore.core._selectors_py import Requirement

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
    /* The one place this module reads a private CPython layout: a borrowed dict look-up for an
       exact, hashed str key that probes the compact table of an all-str-keys dict inline, as the
       interpreter's own unicodekeys_lookup_unicode does (pointer first, then hash, length and
       bytes). It reads PyDictObject's ma_keys and ma_values, the cached hash of a str, and
       CPython 3.11's PyDictKeysObject, declared below because no header exports it; it saves
       three nested calls per requirement (Selector.matches of five requirements: 71 against
       96 ns, see docs/benchmarks/selectors.md). It is built only for CPython 3.11, the one
       version whose layout it was checked against, and used only while lb_dict_probe_on is set
       (see _use_dict_probe). Everywhere else, and for any other dict or key, the look-up is the
       public PyDict_GetItemWithError, which gives the same answers. */
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && !defined(Py_LIMITED_API) && !defined(PYPY_VERSION)
    #define LB_DICT_PROBE_BUILT 1
    static int lb_dict_probe_on = 0;
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

    /* The keys table of a dict the probe can read (combined, every key a str), else NULL. */
    static inline void* lb_dict_keys(PyObject* d) {
        PyDictObject* mp = (PyDictObject*)d;
        lb_dictkeys* dk;
        if (!lb_dict_probe_on) return NULL;
        dk = (lb_dictkeys*)mp->ma_keys;
        return (mp->ma_values == NULL && dk->dk_kind == 1) ? (void*)dk : NULL;
    }

    /* The value of an exact str key whose hash is given, in a table from lb_dict_keys. */
    static inline PyObject* lb_dict_probe(void* keys, PyObject* key, Py_hash_t hash) {
        const lb_dictkeys* dk = (const lb_dictkeys*)keys;
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
    #define LB_DICT_PROBE_BUILT 0
    static int lb_dict_probe_on = 0;
    static inline void* lb_dict_keys(PyObject* d) { (void)d; return NULL; }
    static inline PyObject* lb_dict_probe(void* keys, PyObject* key, Py_hash_t hash) {
        (void)keys; (void)key; (void)hash; return NULL;  /* never called: no keys table */
    }
    #endif
    """
    bint DICT_PROBE_BUILT "LB_DICT_PROBE_BUILT"
    int dict_probe_on "lb_dict_probe_on"
    void* dict_keys "lb_dict_keys"(PyObject* d) noexcept
    PyObject* dict_probe "lb_dict_probe"(void* keys, PyObject* key, Py_hash_t hash) noexcept
    PyObject* dict_get "PyDict_GetItemWithError"(PyObject* d, PyObject* key) except? NULL


def _use_dict_probe(enabled=None) -> bool:
    """Turn the inline dict probe on or off (None: leave it); return whether it is on, never
    where it was not built. Off, every match looks labels up with ``PyDict_GetItemWithError``:
    the tests run both paths."""
    global dict_probe_on
    if enabled is not None:
        dict_probe_on = bool(enabled) and DICT_PROBE_BUILT
    return bool(dict_probe_on)


# The guard: on only for the interpreter and version whose private dict layout it was checked
# against (CPython 3.11; the build already leaves it out anywhere else).
_use_dict_probe(sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11))

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
    # 48 bytes: a Service's selector (two requirements and their values) fills two cache lines
    int32_t op
    int32_t nvalues
    PyObject* key          # str, owned by the requirements tuple
    PyObject** values      # its values (borrowed), in the same block after the requirements
    PyObject* value_set    # frozenset of the values when there are many, else NULL
    int64_t number         # the integer of > and <
    Py_hash_t hash         # the key's str hash (what a dict probes with), -1 if not an exact str


assert sizeof(CReq) == 48


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


cdef inline int _holds(CReq* r, PyObject* value) except -1:
    """1 when requirement r holds for a label value (NULL: the key is absent), else 0."""
    cdef int op = r.op
    cdef int64_t have
    if value == NULL:
        return op == OP_NEQ or op == OP_NOTIN or op == OP_NOT_EXISTS
    if op == OP_EQ or op == OP_DEQ or op == OP_IN:
        return _has_value(r, value)
    if op == OP_EXISTS:
        return True
    if op == OP_NEQ or op == OP_NOTIN:
        return not _has_value(r, value)
    if op == OP_NOT_EXISTS:
        return False
    # OP_GT, OP_LT
    if not _str_int64(<object>value, &have):
        return False
    return have > r.number if op == OP_GT else have < r.number


cdef inline bint _match_reqs(CReq* reqs, Py_ssize_t n, dict labels) except -1:
    """The C loop: every requirement against a dict of labels. Keys are interned and carry
    their hash, so a look-up is one probe of the dict's table; values compare by identity,
    then by length and memcmp; nothing is allocated and no exception is set on a miss."""
    cdef Py_ssize_t i
    cdef void* keys = dict_keys(<PyObject*>labels)
    cdef PyObject* value
    for i in range(n):
        if keys != NULL and reqs[i].hash != -1:
            value = dict_probe(keys, reqs[i].key, reqs[i].hash)
        else:
            value = dict_get(<PyObject*>labels, reqs[i].key)
        if not _holds(&reqs[i], value):
            return False
    return True


cdef bint _match_pairs(CReq* reqs, Py_ssize_t n, PyObject** pairs, Py_ssize_t npairs) except -1:
    """Every requirement against a label set kept as (key, value) pointers: a label set in a
    SelectorIndex, whose strings are interned like the requirements' (so keys and most values
    compare as pointers)."""
    cdef Py_ssize_t i, j
    cdef PyObject* key
    cdef PyObject* value
    for i in range(n):
        key = reqs[i].key
        value = NULL
        for j in range(npairs):
            if pairs[2 * j] == key or (
                    not (unicode_check_exact(key) and unicode_check_exact(pairs[2 * j]))
                    and _str_eq(pairs[2 * j], key)):
                value = pairs[2 * j + 1]
                break
        if not _holds(&reqs[i], value):
            return False
    return True


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
        _aligned_free(self._reqs)

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
        _aligned_free(self._reqs)
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
        # one block aligned to a cache line: the requirements, then the pointers to their values
        self._reqs = <CReq*>_aligned_alloc(64, self._n * sizeof(CReq) + max(total, 1) * sizeof(PyObject*))
        if self._reqs == NULL:
            raise MemoryError()
        self._value_ptrs = <PyObject**>(self._reqs + self._n)
        total = 0
        for i in range(self._n):
            q = self._requirements[i]
            values = q[2]
            r = &self._reqs[i]
            r.op = q[1]
            r.key = <PyObject*>q[0]
            r.nvalues = <int32_t>len(values)
            r.values = self._value_ptrs + total
            r.value_set = NULL
            r.number = 0
            # the dict's own hash of the key (cached in the str), to probe label dicts with
            r.hash = PyObject_Hash(q[0]) if type(q[0]) is str else -1
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

    cdef bint _match(self, dict labels) except -1:
        """Every requirement against a dict of labels (see _match_reqs)."""
        if self._nothing:
            return False
        return _match_reqs(self._reqs, self._n, labels)

    @cython.always_allow_keywords(False)
    def matches(self, labels) -> bool:
        """True when every requirement holds for ``labels`` (a mapping of str to str)."""
        if type(labels) is not dict:
            labels = dict(labels)
        if self._nothing:
            return False
        return _match_reqs(self._reqs, self._n, <dict>labels)

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
    """Rebuild a pickled Selector from its requirements (``Selector.__reduce__``)."""
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
#
# Everything a change touches lives in C arrays of int32 ids; Python objects appear only at the
# API boundary (the ids the caller gave, the label dicts the selectors match against, the sets
# returned).
#
# - An *entry* is one label pair (key, value) or one key alone, found through an open-addressing
#   table keyed by XXH3 of the strings' data (verified against the strings it holds). It keeps
#   two postings: the label-set slots that have it, and the selector slots anchored on it.
# - An entry's label posting is a small open-addressing set of label-set slots: joining or leaving
#   it touches only the posting's own memory (a list would have to fix the position another
#   label set keeps of itself when it moves, two more cache misses a change).
# - A label-set slot keeps its entry ids and the sorted slots of the selectors it matches: the one
#   copy of the match relation.
# - A selector slot keeps its anchor entries and positions the same way. It keeps no list of the
#   label sets it matches: those are the label sets its anchors reach that list it, read when
#   asked. A label-set change then writes nothing in the selectors it gains or loses.
#
# Finding the selectors of a label set is then: its entries' selector postings, each candidate
# checked with Selector._match against the label dict.

from cpython.dict cimport PyDict_Next, PyDict_SetItem
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Realloc
from cpython.ref cimport Py_XINCREF, Py_XDECREF
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy, memmove, memset

from lbcore.core._hashing_c cimport XXH3_64bits_withSeed

cdef extern from *:
    """
    #include <stdlib.h>
    static void* lb_aligned_alloc(size_t alignment, size_t size) {
        void* p = NULL;
        return posix_memalign(&p, alignment, size) == 0 ? p : NULL;
    }
    """
    void* _aligned_alloc "lb_aligned_alloc"(size_t alignment, size_t size) noexcept
    void _aligned_free "free"(void* p) noexcept

cdef extern from "Python.h":
    bint unicode_check "PyUnicode_Check"(PyObject* o)
    void PyUnicode_InternInPlace(PyObject** p)
    void prefetch "__builtin_prefetch"(const void* p)
    int unicode_ready "PyUnicode_READY"(PyObject* o) except -1


cdef struct Vec:
    int32_t* data
    int32_t n
    int32_t cap


cdef int _vec_reserve(Vec* v, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = v.cap if v.cap > 0 else 4
    cdef int32_t* grown
    if need <= v.cap:
        return 0
    while cap < need:
        cap *= 2
    if cap > 0x7FFFFFFF:
        raise MemoryError("selector index posting too large")
    grown = <int32_t*>PyMem_Realloc(v.data, <size_t>cap * sizeof(int32_t))
    if grown == NULL:
        raise MemoryError()
    v.data = grown
    v.cap = <int32_t>cap
    return 0


cdef inline int _vec_push(Vec* v, int32_t x) except -1:
    if v.n == v.cap:
        _vec_reserve(v, <Py_ssize_t>v.n + 1)
    v.data[v.n] = x
    v.n += 1
    return 0


cdef inline void _vec_free(Vec* v) noexcept:
    PyMem_Free(v.data)
    v.data = NULL
    v.n = 0
    v.cap = 0


cdef Py_ssize_t _bisect(const Vec* v, int32_t x) noexcept:
    """First position in the sorted ``v`` whose element is not below ``x``."""
    cdef Py_ssize_t lo = 0, hi = v.n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if v.data[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef int _sorted_insert(Vec* v, int32_t x) except -1:
    cdef Py_ssize_t at = _bisect(v, x)
    if at < v.n and v.data[at] == x:
        return 0
    _vec_reserve(v, <Py_ssize_t>v.n + 1)
    memmove(v.data + at + 1, v.data + at, <size_t>(v.n - at) * sizeof(int32_t))
    v.data[at] = x
    v.n += 1
    return 0


cdef void _sorted_remove(Vec* v, int32_t x) noexcept:
    cdef Py_ssize_t at = _bisect(v, x)
    if at < v.n and v.data[at] == x:
        memmove(v.data + at, v.data + at + 1, <size_t>(v.n - at - 1) * sizeof(int32_t))
        v.n -= 1


cdef int _cmp_i32(const void* a, const void* b) noexcept nogil:
    cdef int32_t x = (<const int32_t*>a)[0], y = (<const int32_t*>b)[0]
    return (x > y) - (x < y)


cdef void _sort(int32_t* a, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i, j
    cdef int32_t x
    if n > 16:
        qsort(a, <size_t>n, sizeof(int32_t), _cmp_i32)
        return
    for i in range(1, n):
        x = a[i]
        j = i - 1
        while j >= 0 and a[j] > x:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = x


cdef void _sort_unique(Vec* v) noexcept:
    """Sort ``v`` and drop repeats (a label set reached through two values of one ``in``)."""
    cdef Py_ssize_t i, kept = 0
    _sort(v.data, v.n)
    for i in range(v.n):
        if kept == 0 or v.data[kept - 1] != v.data[i]:
            v.data[kept] = v.data[i]
            kept += 1
    v.n = <int32_t>kept


cdef inline bint _contains(const Vec* v, int32_t x) noexcept:
    """``x`` in the sorted ``v``."""
    cdef Py_ssize_t at = _bisect(v, x)
    return at < v.n and v.data[at] == x


# -- sets of slots: open addressing with linear probing, -1 for an empty place; ``cap`` is the
# table's size (a power of two, at most half full), ``n`` the members

cdef inline size_t _slot_home(int32_t x, size_t mask) noexcept:
    # Fibonacci hashing: slots that differ by a stride (a pod in every tenth place) spread out
    return <size_t>((<uint64_t>x * 0x9E3779B97F4A7C15ULL) >> 32) & mask


cdef bint _slotset_resize(Vec* v, Py_ssize_t size) noexcept:
    """Move the members to a table of ``size`` places; False (nothing changed) without memory."""
    cdef int32_t* table = <int32_t*>PyMem_Malloc(<size_t>size * sizeof(int32_t))
    cdef int32_t* old = v.data
    cdef size_t mask = <size_t>size - 1, i
    cdef Py_ssize_t t
    if table == NULL:
        return False
    memset(table, 0xFF, <size_t>size * sizeof(int32_t))
    for t in range(v.cap):
        if old[t] >= 0:
            i = _slot_home(old[t], mask)
            while table[i] >= 0:
                i = (i + 1) & mask
            table[i] = old[t]
    PyMem_Free(old)
    v.data = table
    v.cap = <int32_t>size
    return True


cdef int _slotset_add(Vec* v, int32_t x) except -1:
    """Add ``x``, which the set does not hold, at the first empty place from its home."""
    cdef size_t mask, i
    if 2 * (<Py_ssize_t>v.n + 1) > v.cap:
        if v.cap >= 0x40000000:
            raise MemoryError("selector index posting too large")
        if not _slotset_resize(v, 2 * v.cap if v.cap else 4):
            raise MemoryError()
    mask = <size_t>v.cap - 1
    i = _slot_home(x, mask)
    while v.data[i] >= 0:
        i = (i + 1) & mask
    v.data[i] = x
    v.n += 1
    return 0


cdef void _slotset_remove(Vec* v, int32_t x) noexcept:
    """Remove ``x``, which the set holds. The place is simply emptied: the set is never asked
    whether it holds a slot, and ``x`` is found by probing from its home up to ``x`` itself
    (the run it was added at the end of), so a hole left behind misleads no later search."""
    cdef size_t mask = <size_t>v.cap - 1
    cdef size_t i = _slot_home(x, mask)
    while v.data[i] != x:
        i = (i + 1) & mask
    v.data[i] = -1
    v.n -= 1
    if v.cap > 8 and 8 * <Py_ssize_t>v.n < v.cap:  # a posting most label sets left
        _slotset_resize(v, v.cap // 2)  # without memory it just stays larger


cdef inline bint _holds_entry(const int32_t* ents, Py_ssize_t n, int32_t e) noexcept:
    """Whether the n entry ids hold ``e`` (a label set's few: a scan)."""
    cdef Py_ssize_t j
    for j in range(n):
        if ents[j] == e:
            return True
    return False


cdef enum:
    ENTRY_TEXT = 52        # bytes of key and value text an entry keeps in itself


cdef struct Entry:
    # Two cache lines (the array is aligned to 64 bytes). The first holds all a label-set
    # change reads of an entry the label set keeps: the hash, the strings, the selectors filed
    # under it, and the start of a copy of the strs' text (12 bytes of it in this line), so
    # that a probe need not read the str objects (a label's value is most often a new object,
    # equal to the stored one but elsewhere).
    uint64_t hash
    PyObject* key          # owned; NULL while the entry is free
    PyObject* value        # owned; NULL for a key entry
    Vec sels               # anchored selector slots
    uint32_t mark          # scratch for one set_labels
    uint8_t key_size       # bytes of the key's text in ``text``, then of the value's;
    uint8_t value_size     # both 0 when the text is not kept (not exact strs, or too long)
    uint8_t key_kind       # PEP 393 kinds: equal strs have equal kinds and bytes
    uint8_t value_kind
    int32_t first_sel      # sels.data[0] when sels.n: most postings hold one selector, and
                           # the candidate is then known without reading the array
    char text[ENTRY_TEXT]
    Py_ssize_t refs        # label sets holding it plus selectors anchored on it
    Vec labels             # label-set slots, a set (_slotset_add)


assert sizeof(Entry) == 128


cdef inline bint _same_text(PyObject* text, const char* data, Py_ssize_t size, int kind) noexcept:
    """An exact, ready str against a kept copy of a str's text."""
    return (unicode_kind(text) == kind and unicode_length(text) * kind == size
            and memcmp(unicode_data(text), data, <size_t>size) == 0)


cdef void _keep_text(Entry* entry) noexcept:
    """Copy the key's and value's text into the entry when both are short exact strs."""
    cdef Py_ssize_t ks, vs = 0
    if not unicode_check_exact(entry.key):
        return
    ks = unicode_length(entry.key) * unicode_kind(entry.key)
    if entry.value != NULL:
        if not unicode_check_exact(entry.value):
            return
        vs = unicode_length(entry.value) * unicode_kind(entry.value)
    if ks == 0 or ks + vs > ENTRY_TEXT:
        return
    memcpy(entry.text, unicode_data(entry.key), <size_t>ks)
    entry.key_size = <uint8_t>ks
    entry.key_kind = <uint8_t>unicode_kind(entry.key)
    if entry.value != NULL:
        memcpy(entry.text + ks, unicode_data(entry.value), <size_t>vs)
        entry.value_size = <uint8_t>vs
        entry.value_kind = <uint8_t>unicode_kind(entry.value)


cdef struct LabelSlot:
    # one cache line (the array is aligned to 64 bytes): finding a label set and reaching its
    # labels and matches costs a single miss
    PyObject* id           # owned; NULL while the slot is free
    uint64_t hash          # the id's hash, mixed: where the id table files it
    int64_t number         # the id when it is an exact int of 64 bits (numeric), see _int64_id
    int32_t numeric
    int32_t n              # entries: a pair entry and a key entry per label
    int32_t cap
    PyObject** pairs       # per label: key, value (the pair entry's strings); then, in the same
                           # block, the cap entry ids (_items)
    Vec matched            # selector slots it matches, sorted


cdef inline int32_t* _items(LabelSlot* ls) noexcept:
    """A label set's entry ids: a pair entry and a key entry per label."""
    return <int32_t*>(ls.pairs + ls.cap)


assert sizeof(LabelSlot) == 64


cdef struct LabPlace:
    # a place of the label-set id table: the slot (-1 for none) and the high half of its hash
    int32_t slot
    uint32_t tag


cdef enum:
    LOCAL_REQS = 2         # requirements a selector slot keeps in itself (a Service's selector)
    LOCAL_VALUES = 5       # and their values


cdef struct SelectorSlot:
    # three cache lines (the array is aligned to 64 bytes): the first holds what naming it in
    # an answer reads; the other two a copy of a small selector's requirements, which a change
    # then loads along with the slot rather than after it (see _keep_reqs)
    PyObject* id           # owned; NULL while the slot is free
    PyObject* selector     # owned
    CReq* reqs             # the requirements, matched without touching the object: local_reqs,
                           # or the selector's own when they do not fit
    int32_t nreqs
    int32_t kind
    int32_t n
    int32_t* ents          # anchor entries
    int32_t* pos           # position in each entry's selector posting (or in the unanchored list)
    CReq local_reqs[LOCAL_REQS]
    PyObject* local_values[LOCAL_VALUES]


assert sizeof(SelectorSlot) == 192


cdef void _keep_reqs(SelectorSlot* ss, Selector selector) noexcept:
    """Point the slot at the selector's requirements: a copy in the slot itself when they fit
    (values and keys stay borrowed from the selector, which the slot holds)."""
    cdef Py_ssize_t i, j, used = 0
    ss.nreqs = <int32_t>selector._n
    ss.reqs = selector._reqs
    if selector._n > LOCAL_REQS:
        return
    for i in range(selector._n):
        used += selector._reqs[i].nvalues
    if used > LOCAL_VALUES:
        return
    used = 0
    for i in range(selector._n):
        ss.local_reqs[i] = selector._reqs[i]
        ss.local_reqs[i].values = &ss.local_values[used]
        for j in range(selector._reqs[i].nvalues):
            ss.local_values[used] = selector._reqs[i].values[j]
            used += 1
    ss.reqs = ss.local_reqs


cdef enum:
    ANCHOR_PAIRS = 0       # one entry per value of an =, ==, in requirement
    ANCHOR_KEY = 1         # the key of an exists, gt, lt requirement
    ANCHOR_NONE = 2        # only negative requirements: checked against every label set
    ANCHOR_NOTHING = 3     # the selector that matches nothing

cdef uint64_t _KEY_SEED = 0x6C62636F72656B79ULL
cdef uint64_t _OTHER = 0x9E3779B97F4A7C15ULL   # every label that is not a str: compared by ==


cdef inline uint64_t _text_hash(PyObject* text, uint64_t seed) except? 0:
    """XXH3 of a str's canonical (PEP 393) data, seeded; one shared value for anything else."""
    cdef Py_ssize_t kind
    if not unicode_check(text):
        return seed ^ _OTHER
    unicode_ready(text)
    kind = unicode_kind(text)
    return XXH3_64bits_withSeed(unicode_data(text), <size_t>(unicode_length(text) * kind), seed + <uint64_t>kind)


cdef extern from *:
    """
    /* str's own hash of a str or a str subclass (its text, whatever the subclass says): cached
       in the object, so a literal or interned label key costs a load */
    static inline Py_hash_t lb_str_hash(PyObject* s) { return PyUnicode_Type.tp_hash(s); }
    """
    Py_hash_t str_hash "lb_str_hash"(PyObject* s) noexcept


cdef inline uint64_t _key_hash(PyObject* key) except? 0:
    """A label key's hash (the seed of its pairs' hashes): str's own, so the keys a change
    repeats are not hashed again; one shared value for anything else."""
    if not unicode_check(key):
        return _KEY_SEED ^ _OTHER
    unicode_ready(key)  # entries compare the text of ready strs
    return <uint64_t>str_hash(key) ^ _KEY_SEED


cdef inline int _int64_id(object label_id, int64_t* number) except -1:
    """1 for an exact int id that fits 64 bits, stored in ``number``: two such ids are equal when
    their numbers are, so finding one need not read the stored id object (a cache miss)."""
    cdef int overflow = 0
    if type(label_id) is not int:
        return 0
    number[0] = PyLong_AsLongLongAndOverflow(label_id, &overflow)
    return overflow == 0


cdef PyObject* _canonical_text(PyObject* text) noexcept:
    """A new reference to the interned copy of an exact str (the very object selectors hold,
    so a match compares pointers), else to the object itself."""
    Py_XINCREF(text)
    if unicode_check_exact(text):
        PyUnicode_InternInPlace(&text)
    return text


cdef class SelectorIndex:
    """Selectors and label sets by id, and which of them match, kept up to date incrementally.

    Each selector is filed under one *anchor*, a requirement every matching label set must
    satisfy: ``key=value`` pairs for ``=``/``==``/``in``, the key for exists/``>``/``<``.
    Selectors with only negative requirements (``!=``, ``notin``, ``!key``) or none at all are
    kept apart and checked directly. Label sets are filed by their pairs and keys. A change of
    one label set or one selector then looks only at the candidates its anchors reach, and the
    match relation is stored both ways, so each change returns what it added and removed.

    The postings are C arrays of integer slots behind a table of pairs hashed with XXH3, so a
    change costs a few probes and array writes, not look-ups in large Python dicts. The match
    relation is kept once, on the label sets' side: a label-set change writes nothing in the
    selectors it gains or loses, and ``matching(selector_id)`` reads it back from the label sets
    the selector's anchors reach (every label set for a selector without a positive
    requirement).

    Ids are any hashable values. The index does not know namespaces: keep one index per
    namespace (``collections.defaultdict(SelectorIndex)``), since a Service selects only pods
    of its own namespace.
    """

    # pairs and keys
    cdef Entry* _entries
    cdef Py_ssize_t _entries_cap, _entries_top
    cdef Vec _free_entries
    cdef int32_t* _table        # entry id, or -1 for an empty place
    cdef size_t _mask
    cdef Py_ssize_t _live
    cdef uint32_t _stamp
    # label sets
    cdef LabelSlot* _labsets
    cdef Py_ssize_t _labsets_cap, _labsets_top
    cdef Vec _free_labsets
    cdef dict _lab_slot         # label id -> slot, in the order ids came (label_ids())
    cdef LabPlace* _lab_table   # the same, as a C table of slots by the id's hash (the hot path)
    cdef size_t _lab_mask
    # selectors
    cdef SelectorSlot* _selslots
    cdef Py_ssize_t _selslots_cap, _selslots_top
    cdef Vec _free_selslots
    cdef Vec _unanchored
    cdef dict _sel_slot         # selector id -> slot
    # scratch arrays, reused by every call
    cdef Vec _scr_ents, _scr_found, _scr_old
    cdef PyObject** _scr_pairs
    cdef Py_ssize_t _scr_pairs_cap
    cdef uint64_t* _scr_hash     # per label: its pair's hash, its key's hash
    cdef PyObject** _scr_kv      # per label: its key, its value (references held)
    cdef Py_ssize_t _scr_hash_cap, _scr_hash_n
    # the label set set_labels last wrote (its slot, -1 for none): a caller asks for its
    # selectors next, and need not have its id hashed and found again
    cdef object _last_id
    cdef int32_t _last_slot

    def __cinit__(self):
        self._table = <int32_t*>PyMem_Malloc(8 * sizeof(int32_t))
        if self._table == NULL:
            raise MemoryError()
        memset(self._table, 0xFF, 8 * sizeof(int32_t))
        self._mask = 7
        self._lab_table = <LabPlace*>PyMem_Malloc(8 * sizeof(LabPlace))
        if self._lab_table == NULL:
            raise MemoryError()
        memset(self._lab_table, 0xFF, 8 * sizeof(LabPlace))
        self._lab_mask = 7
        self._stamp = 0
        self._last_slot = -1

    def __init__(self):
        self._lab_slot = {}
        self._sel_slot = {}

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self._entries_top):
            if self._entries[i].key != NULL:
                Py_XDECREF(self._entries[i].key)
                Py_XDECREF(self._entries[i].value)
                _vec_free(&self._entries[i].labels)
                _vec_free(&self._entries[i].sels)
        for i in range(self._labsets_top):
            Py_XDECREF(self._labsets[i].id)
            PyMem_Free(self._labsets[i].pairs)
            _vec_free(&self._labsets[i].matched)
        for i in range(self._selslots_top):
            Py_XDECREF(self._selslots[i].id)
            Py_XDECREF(self._selslots[i].selector)
            PyMem_Free(self._selslots[i].ents)
            PyMem_Free(self._selslots[i].pos)
        _aligned_free(self._entries)
        PyMem_Free(self._table)
        PyMem_Free(self._lab_table)
        PyMem_Free(self._scr_pairs)
        self._drop_labels()
        PyMem_Free(self._scr_hash)
        PyMem_Free(self._scr_kv)
        _aligned_free(self._labsets)
        _aligned_free(self._selslots)
        _vec_free(&self._free_entries)
        _vec_free(&self._free_labsets)
        _vec_free(&self._free_selslots)
        _vec_free(&self._unanchored)
        _vec_free(&self._scr_ents)
        _vec_free(&self._scr_found)
        _vec_free(&self._scr_old)

    # -- the table of pairs and keys ---------------------------------------------------------

    cdef inline bint _is(self, Entry* e, uint64_t h, PyObject* key, PyObject* value) except -1:
        if e.hash != h or (e.value == NULL) != (value == NULL):
            return False
        if e.key_size and unicode_check_exact(key) and (value == NULL or unicode_check_exact(value)):
            # from the kept text (the hash was computed from ready strs: unicode_data is valid)
            if e.key != key and not _same_text(key, e.text, e.key_size, e.key_kind):
                return False
            return (value == NULL or e.value == value
                    or _same_text(value, e.text + e.key_size, e.value_size, e.value_kind))
        if not _str_eq(e.key, key):
            return False
        return value == NULL or _str_eq(e.value, value)

    cdef int32_t _find(self, uint64_t h, PyObject* key, PyObject* value) except -2:
        """The entry of (key, value), or of the key alone when value is NULL; -1 if none."""
        cdef size_t i = <size_t>h & self._mask
        cdef int32_t e
        while True:
            e = self._table[i]
            if e < 0:
                return -1
            if self._is(&self._entries[e], h, key, value):
                return e
            i = (i + 1) & self._mask

    cdef int32_t _find_or_add(self, uint64_t h, PyObject* key, PyObject* value) except -1:
        """The entry of (key, value), made (with no reference yet) when there is none."""
        cdef size_t i = <size_t>h & self._mask
        cdef int32_t e
        cdef Entry* entry
        while True:
            e = self._table[i]
            if e < 0:
                break
            if self._is(&self._entries[e], h, key, value):
                return e
            i = (i + 1) & self._mask
        if self._free_entries.n:
            self._free_entries.n -= 1
            e = self._free_entries.data[self._free_entries.n]
        else:
            if self._entries_top == self._entries_cap:
                self._grow_entries()
            e = <int32_t>self._entries_top
            self._entries_top += 1
        entry = &self._entries[e]
        memset(entry, 0, sizeof(Entry))
        entry.hash = h
        entry.key = _canonical_text(key)
        entry.value = _canonical_text(value) if value != NULL else NULL
        _keep_text(entry)
        self._table[i] = e
        self._live += 1
        if <size_t>self._live * 2 > self._mask + 1:
            self._rehash((self._mask + 1) * 2)
        return e

    cdef int _grow_entries(self) except -1:
        cdef Py_ssize_t cap = self._entries_cap * 2 if self._entries_cap else 64
        cdef Entry* grown
        if cap > 0x7FFFFFFF:
            raise MemoryError("too many label pairs in one selector index")
        grown = <Entry*>_aligned_alloc(64, <size_t>cap * sizeof(Entry))
        if grown == NULL:
            raise MemoryError()
        if self._entries != NULL:
            memcpy(grown, self._entries, <size_t>self._entries_top * sizeof(Entry))
            _aligned_free(self._entries)
        self._entries = grown
        self._entries_cap = cap
        _vec_reserve(&self._free_entries, cap)  # so that _release never allocates
        return 0

    cdef int _rehash(self, size_t size) except -1:
        cdef int32_t* table = <int32_t*>PyMem_Malloc(size * sizeof(int32_t))
        cdef size_t mask = size - 1, i
        cdef Py_ssize_t e
        if table == NULL:
            raise MemoryError()
        memset(table, 0xFF, size * sizeof(int32_t))
        for e in range(self._entries_top):
            if self._entries[e].key != NULL:
                i = <size_t>self._entries[e].hash & mask
                while table[i] >= 0:
                    i = (i + 1) & mask
                table[i] = <int32_t>e
        PyMem_Free(self._table)
        self._table = table
        self._mask = mask
        return 0

    cdef void _release(self, int32_t e) noexcept:
        """Drop one reference to an entry; the last one takes it out of the table."""
        cdef Entry* entry = &self._entries[e]
        cdef size_t i, j, home, mask = self._mask
        entry.refs -= 1
        if entry.refs > 0:
            return
        i = <size_t>entry.hash & mask
        while self._table[i] != e:
            i = (i + 1) & mask
        # backward-shift deletion: pull later members of the probe run into the hole
        j = i
        while True:
            j = (j + 1) & mask
            if self._table[j] < 0:
                break
            home = <size_t>self._entries[self._table[j]].hash & mask
            if (i < j and (home <= i or home > j)) or (i > j and home <= i and home > j):
                self._table[i] = self._table[j]
                i = j
        self._table[i] = -1
        Py_XDECREF(entry.key)
        Py_XDECREF(entry.value)
        entry.key = NULL
        entry.value = NULL
        _vec_free(&entry.labels)
        _vec_free(&entry.sels)
        self._live -= 1
        self._free_entries.data[self._free_entries.n] = e  # room reserved by _grow_entries
        self._free_entries.n += 1

    # -- postings ----------------------------------------------------------------------------

    cdef void _unpost_selector(self, int32_t e, int32_t at) noexcept:
        """Take the selector at position ``at`` out of entry e's selector posting."""
        cdef Vec* v = &self._entries[e].sels
        cdef int32_t moved
        cdef SelectorSlot* owner
        cdef Py_ssize_t j
        v.n -= 1
        if at == v.n:
            return
        moved = v.data[v.n]
        v.data[at] = moved
        self._entries[e].first_sel = v.data[0]
        owner = &self._selslots[moved]
        for j in range(owner.n):
            if owner.ents[j] == e:
                owner.pos[j] = at
                return

    # -- label-set ids -----------------------------------------------------------------------
    # A label set's id is found through a C table of slots keyed by the id's hash (Python's: ids
    # are any hashable values), checked against the id the slot holds. A Python dict would also
    # read its entry, the stored key and the slot number's int object: three more cache lines
    # at a random place of a large heap, on every change. Each place keeps the high half of the
    # hash beside the slot (its home is taken from it), so that passing a place that holds
    # another id reads no other label set's slot.

    cdef inline uint64_t _id_hash(self, object label_id) except? 0:
        # Fibonacci mixing, so that ids hashing to a stride (ints do) spread over the table
        return <uint64_t>PyObject_Hash(label_id) * 0x9E3779B97F4A7C15ULL

    cdef int32_t _lab_find(self, object label_id, uint64_t h) except -2:
        """The slot of a label-set id whose mixed hash is ``h``, or -1."""
        cdef uint32_t tag = <uint32_t>(h >> 32)
        cdef size_t i = <size_t>tag & self._lab_mask
        cdef int32_t slot
        cdef LabelSlot* ls
        cdef int64_t number = 0
        cdef bint numeric = _int64_id(label_id, &number)
        while True:
            slot = self._lab_table[i].slot
            if slot < 0:
                return -1
            if self._lab_table[i].tag == tag:
                ls = &self._labsets[slot]
                if ls.hash == h:
                    if numeric and ls.numeric:
                        if ls.number == number:
                            return slot
                    elif ls.id == <PyObject*>label_id or PyObject_RichCompareBool(<object>ls.id, label_id, Py_EQ):
                        return slot
            i = (i + 1) & self._lab_mask

    cdef int32_t _lab_slot_of(self, object label_id) except -1:
        """The slot of a stored label-set id; KeyError if there is none."""
        cdef int32_t slot = self._lab_find(label_id, self._id_hash(label_id))
        if slot < 0:
            raise KeyError(label_id)
        return slot

    cdef int _lab_file(self, int32_t slot) except -1:
        """File a new slot in the id table (its hash set), growing the table at half full."""
        cdef size_t i, size, t
        cdef LabPlace* table
        if <size_t>len(self._lab_slot) * 2 > self._lab_mask + 1:
            size = (self._lab_mask + 1) * 2
            table = <LabPlace*>PyMem_Malloc(size * sizeof(LabPlace))
            if table == NULL:
                raise MemoryError()
            memset(table, 0xFF, size * sizeof(LabPlace))
            for t in range(self._lab_mask + 1):
                if self._lab_table[t].slot >= 0:
                    i = <size_t>self._lab_table[t].tag & (size - 1)
                    while table[i].slot >= 0:
                        i = (i + 1) & (size - 1)
                    table[i] = self._lab_table[t]
            PyMem_Free(self._lab_table)
            self._lab_table = table
            self._lab_mask = size - 1
        i = <size_t>(self._labsets[slot].hash >> 32) & self._lab_mask
        while self._lab_table[i].slot >= 0:
            i = (i + 1) & self._lab_mask
        self._lab_table[i].slot = slot
        self._lab_table[i].tag = <uint32_t>(self._labsets[slot].hash >> 32)
        return 0

    cdef void _lab_unfile(self, int32_t slot) noexcept:
        """Take a slot out of the id table (backward-shift deletion, as for the pair table)."""
        cdef size_t mask = self._lab_mask, i, j, home
        i = <size_t>(self._labsets[slot].hash >> 32) & mask
        while self._lab_table[i].slot != slot:
            i = (i + 1) & mask
        j = i
        while True:
            j = (j + 1) & mask
            if self._lab_table[j].slot < 0:
                break
            home = <size_t>self._lab_table[j].tag & mask
            if (i < j and (home <= i or home > j)) or (i > j and home <= i and home > j):
                self._lab_table[i] = self._lab_table[j]
                i = j
        self._lab_table[i].slot = -1

    # -- slots -------------------------------------------------------------------------------

    cdef int32_t _new_label_slot(self, object label_id, uint64_t h) except -1:
        cdef int32_t slot
        cdef Py_ssize_t cap
        cdef LabelSlot* grown
        if self._free_labsets.n:
            self._free_labsets.n -= 1
            slot = self._free_labsets.data[self._free_labsets.n]
        else:
            if self._labsets_top == self._labsets_cap:
                cap = self._labsets_cap * 2 if self._labsets_cap else 64
                if cap > 0x7FFFFFFF:
                    raise MemoryError("too many label sets in one selector index")
                grown = <LabelSlot*>_aligned_alloc(64, <size_t>cap * sizeof(LabelSlot))
                if grown == NULL:
                    raise MemoryError()
                if self._labsets != NULL:
                    memcpy(grown, self._labsets, <size_t>self._labsets_top * sizeof(LabelSlot))
                    _aligned_free(self._labsets)
                self._labsets = grown
                self._labsets_cap = cap
                _vec_reserve(&self._free_labsets, cap)
            slot = <int32_t>self._labsets_top
            self._labsets_top += 1
        self._lab_slot[label_id] = slot
        memset(&self._labsets[slot], 0, sizeof(LabelSlot))
        Py_XINCREF(<PyObject*>label_id)
        self._labsets[slot].id = <PyObject*>label_id
        self._labsets[slot].hash = h
        self._labsets[slot].numeric = _int64_id(label_id, &self._labsets[slot].number)
        self._lab_file(slot)
        return slot

    cdef void _free_label_slot(self, int32_t slot) noexcept:
        cdef LabelSlot* ls = &self._labsets[slot]
        if slot == self._last_slot:
            self._last_slot = -1
            self._last_id = None
        Py_XDECREF(ls.id)
        PyMem_Free(ls.pairs)
        _vec_free(&ls.matched)
        memset(ls, 0, sizeof(LabelSlot))
        self._free_labsets.data[self._free_labsets.n] = slot  # room reserved on growth
        self._free_labsets.n += 1

    cdef int32_t _new_selector_slot(self, object selector_id) except -1:
        cdef int32_t slot
        cdef Py_ssize_t cap, t
        cdef SelectorSlot* grown
        if self._free_selslots.n:
            self._free_selslots.n -= 1
            slot = self._free_selslots.data[self._free_selslots.n]
        else:
            if self._selslots_top == self._selslots_cap:
                cap = self._selslots_cap * 2 if self._selslots_cap else 64
                if cap > 0x7FFFFFFF:
                    raise MemoryError("too many selectors in one selector index")
                grown = <SelectorSlot*>_aligned_alloc(64, <size_t>cap * sizeof(SelectorSlot))
                if grown == NULL:
                    raise MemoryError()
                if self._selslots != NULL:
                    memcpy(grown, self._selslots, <size_t>self._selslots_top * sizeof(SelectorSlot))
                    _aligned_free(self._selslots)
                self._selslots = grown
                for t in range(self._selslots_top):  # the copies point into their own slot
                    if self._selslots[t].selector != NULL:
                        _keep_reqs(&self._selslots[t], <Selector>self._selslots[t].selector)
                self._selslots_cap = cap
                _vec_reserve(&self._free_selslots, cap)
            slot = <int32_t>self._selslots_top
            self._selslots_top += 1
        self._sel_slot[selector_id] = slot
        memset(&self._selslots[slot], 0, sizeof(SelectorSlot))
        self._selslots[slot].kind = ANCHOR_NOTHING
        Py_XINCREF(<PyObject*>selector_id)
        self._selslots[slot].id = <PyObject*>selector_id
        return slot

    cdef void _unpost_unanchored(self, int32_t at) noexcept:
        cdef Vec* v = &self._unanchored
        cdef int32_t moved
        v.n -= 1
        if at == v.n:
            return
        moved = v.data[v.n]
        v.data[at] = moved
        self._selslots[moved].pos[0] = at

    cdef uint32_t _next_stamp(self) noexcept:
        cdef Py_ssize_t e
        self._stamp += 1
        if self._stamp == 0:  # wrapped: forget every old mark
            for e in range(self._entries_top):
                self._entries[e].mark = 0
            self._stamp = 1
        return self._stamp

    # -- sizes and look-ups ------------------------------------------------------------------

    def __len__(self):
        """Number of selectors plus label sets."""
        return len(self._sel_slot) + len(self._lab_slot)

    @property
    def selector_count(self):
        """Number of selectors."""
        return len(self._sel_slot)

    @property
    def label_count(self):
        """Number of label sets."""
        return len(self._lab_slot)

    def has_selector(self, selector_id) -> bool:
        """True when a selector is stored under this id."""
        return selector_id in self._sel_slot

    def has_labels(self, label_id) -> bool:
        """True when a label set is stored under this id."""
        return label_id in self._lab_slot

    def get_selector(self, selector_id) -> Selector:
        """The selector stored under this id (KeyError if none)."""
        return <object>self._selslots[<int32_t>self._sel_slot[selector_id]].selector

    def get_labels(self, label_id) -> dict:
        """A copy of the label set stored under this id (KeyError if none)."""
        cdef LabelSlot* ls = &self._labsets[<int32_t>self._lab_slot[label_id]]
        cdef dict labels = {}
        cdef Py_ssize_t j
        for j in range(ls.n // 2):
            PyDict_SetItem(labels, <object>ls.pairs[2 * j], <object>ls.pairs[2 * j + 1])
        return labels

    def selector_ids(self) -> list:
        """Ids of the stored selectors."""
        return list(self._sel_slot)

    def label_ids(self) -> list:
        """Ids of the stored label sets."""
        return list(self._lab_slot)

    def matching(self, selector) -> set:
        """Ids of the label sets a selector matches: by selector id, or for a Selector given.

        By id, the cost is that of the label sets its anchor reaches (for ``app=web,tier=db``
        those with ``app=web`` or those with ``tier=db``), not of the answer alone."""
        cdef set result = set()
        cdef Py_ssize_t t
        cdef Vec* found = &self._scr_found
        if isinstance(selector, Selector):
            self._labels_matching(<Selector>selector)
        else:
            self._selector_labels(<int32_t>self._sel_slot[selector], &self._scr_old)
            found = &self._scr_old
        for t in range(found.n):
            result.add(<object>self._labsets[found.data[t]].id)
        return result

    def selectors_matching(self, labels) -> set:
        """Ids of the selectors that match a label set: by label-set id, or for a mapping given."""
        cdef LabelSlot* ls
        cdef set result
        cdef Py_ssize_t t
        if type(labels) is dict:
            return self._selectors_for(<dict>labels)
        # an ABC check costs more than the look-up: not for the usual ids, never mappings
        if type(labels) is not int and type(labels) is not str and isinstance(labels, Mapping):
            return self._selectors_for(dict(labels))
        if self._last_slot >= 0 and labels is self._last_id:
            ls = &self._labsets[self._last_slot]
        else:
            ls = &self._labsets[self._lab_slot_of(labels)]
        result = set()
        for t in range(ls.matched.n):
            result.add(<object>self._selslots[ls.matched.data[t]].id)
        return result

    # -- label sets --------------------------------------------------------------------------

    cdef int _hash_labels(self, dict labels) except -1:
        """Take each label's key and value (with a reference, until _entries_of is done) and
        hash its pair and key into the scratch arrays, and start loading the table places they
        probe first: in a large index those loads miss the cache, and issued here they overlap
        with what the caller does next (its own look-up of the label set's id)."""
        cdef Py_ssize_t it = 0, i = 0, n = len(labels)
        cdef PyObject* k
        cdef PyObject* v
        cdef uint64_t hk, hp
        cdef uint64_t* grown
        cdef PyObject** grown_kv
        self._drop_labels()  # left over only if a call failed between the two
        if 2 * n > self._scr_hash_cap:
            grown = <uint64_t*>PyMem_Realloc(self._scr_hash, <size_t>(2 * n) * sizeof(uint64_t))
            if grown == NULL:
                raise MemoryError()
            self._scr_hash = grown
            grown_kv = <PyObject**>PyMem_Realloc(self._scr_kv, <size_t>(2 * n) * sizeof(PyObject*))
            if grown_kv == NULL:
                raise MemoryError()
            self._scr_kv = grown_kv
            self._scr_hash_cap = 2 * n
        # nothing below runs Python code (str hashes and text only), so the dict stays as it is
        while PyDict_Next(labels, &it, &k, &v):
            Py_XINCREF(k)
            Py_XINCREF(v)
            self._scr_kv[i] = k
            self._scr_kv[i + 1] = v
            self._scr_hash_n = i + 2
            hk = _key_hash(k)
            hp = _text_hash(v, hk)
            self._scr_hash[i] = hp
            self._scr_hash[i + 1] = hk
            prefetch(&self._table[<size_t>hp & self._mask])
            prefetch(&self._table[<size_t>hk & self._mask])
            i += 2
        return 0

    cdef void _drop_labels(self) noexcept:
        """Let go of the keys and values _hash_labels took."""
        cdef Py_ssize_t i
        for i in range(self._scr_hash_n):
            Py_XDECREF(self._scr_kv[i])
        self._scr_hash_n = 0

    cdef int _entries_of(self, bint add) except -1:
        """Fill the scratch entry list with the pair and key entries of the labels _hash_labels
        took just before (then let go of them): made when ``add``, else only those that exist.
        The labels are read from the scratch arrays, not the dict again: a label's own __eq__
        may change the dict, never what is compared."""
        try:
            self._find_entries(add)
        finally:
            self._drop_labels()
        return 0

    cdef int _find_entries(self, bint add) except -1:
        cdef Py_ssize_t i, n = self._scr_hash_n
        cdef SelectorSlot* ss
        cdef PyObject* k
        cdef PyObject* v
        cdef int32_t e
        cdef uint64_t* hashes = self._scr_hash
        # first the entries the first probes name, all loading at once
        for i in range(n):
            e = self._table[<size_t>hashes[i] & self._mask]
            if e >= 0:
                prefetch(&self._entries[e])
        self._scr_ents.n = 0
        _vec_reserve(&self._scr_ents, n)
        for i in range(0, n, 2):
            k = self._scr_kv[i]
            v = self._scr_kv[i + 1]
            if add:
                e = self._find_or_add(hashes[i], k, v)
                self._scr_ents.data[self._scr_ents.n] = e
                if self._entries[e].sels.n:  # the first candidate it brings, with its requirements
                    ss = &self._selslots[self._entries[e].first_sel]
                    prefetch(ss)
                    prefetch(<char*>ss + 64)
                    prefetch(<char*>ss + 128)
                if self._entries[e].sels.n > 1:
                    prefetch(self._entries[e].sels.data)
                prefetch(&self._entries[e].labels)  # the second line, if the pair is new to it
                e = self._find_or_add(hashes[i + 1], k, NULL)
                self._scr_ents.data[self._scr_ents.n + 1] = e
                self._scr_ents.n += 2
            else:
                e = self._find(hashes[i], k, v)
                if e >= 0:
                    self._scr_ents.data[self._scr_ents.n] = e
                    self._scr_ents.n += 1
                e = self._find(hashes[i + 1], k, NULL)
                if e >= 0:
                    self._scr_ents.data[self._scr_ents.n] = e
                    self._scr_ents.n += 1
        return 0

    cdef int _matching_selectors(self, dict labels, PyObject** pairs, Py_ssize_t npairs) except -1:
        """Fill the scratch found list with the sorted slots of the selectors that match a label
        set (``labels``, or when None the ``pairs``): those anchored on its entries (the scratch
        entry list) and the unanchored."""
        cdef Py_ssize_t j, t
        cdef Vec* sels
        cdef int32_t s, first
        cdef SelectorSlot* ss
        cdef bint ok
        self._scr_found.n = 0
        for j in range(self._scr_ents.n + 1):
            if j < self._scr_ents.n:
                sels = &self._entries[self._scr_ents.data[j]].sels
                first = self._entries[self._scr_ents.data[j]].first_sel
            else:
                sels = &self._unanchored
                first = sels.data[0] if sels.n else -1
            for t in range(sels.n):
                s = first if t == 0 else sels.data[t]
                ss = &self._selslots[s]
                if labels is None:
                    ok = _match_pairs(ss.reqs, ss.nreqs, pairs, npairs)
                else:
                    ok = _match_reqs(ss.reqs, ss.nreqs, labels)
                if ok:
                    prefetch(ss.id)  # the answer holds it
                    _vec_push(&self._scr_found, s)
        _sort(self._scr_found.data, self._scr_found.n)
        return 0

    cdef set _selectors_for(self, dict labels):
        cdef set result = set()
        cdef Py_ssize_t t
        self._hash_labels(labels)
        self._entries_of(False)
        self._matching_selectors(labels, NULL, 0)
        for t in range(self._scr_found.n):
            result.add(<object>self._selslots[self._scr_found.data[t]].id)
        return result

    def set_labels(self, label_id, labels) -> tuple:
        """Add or replace a label set; return (selector ids it now matches and did not,
        selector ids it matched and no longer does)."""
        cdef dict given = <dict>labels if type(labels) is dict else dict(labels)
        cdef uint64_t h = self._id_hash(label_id)
        cdef int32_t slot, e
        cdef LabelSlot* ls = NULL
        cdef Entry* entry
        cdef Py_ssize_t j, n, kept = 0
        cdef uint32_t stamp = self._next_stamp()
        prefetch(&self._lab_table[<size_t>(h >> 32) & self._lab_mask])
        self._hash_labels(given)
        # the label set first, while the pairs' table places load: its labels and matches then
        # load alongside the pairs' entries
        slot = self._lab_find(label_id, h)
        if slot >= 0:
            ls = &self._labsets[slot]
            prefetch(ls.pairs)
            prefetch(ls.matched.data)
        self._entries_of(True)
        n = self._scr_ents.n
        if ls != NULL:
            for j in range(ls.n):
                self._entries[_items(ls)[j]].mark = stamp
            for j in range(n):
                if self._entries[self._scr_ents.data[j]].mark == stamp:
                    kept += 1
            if kept == n and n == ls.n:  # nothing changed, nothing to do
                for j in range(n):
                    self._entries[self._scr_ents.data[j]].mark = 0
                self._last_id = label_id
                self._last_slot = slot
                return set(), set()
            # start loading what the rest reads at random places: the postings of the pairs it
            # joins and of those it leaves, and the selectors it matched (their ids may go into
            # the answer)
            for j in range(0, n, 2):
                entry = &self._entries[self._scr_ents.data[j]]
                if entry.mark != stamp and entry.labels.cap:
                    prefetch(&entry.labels.data[_slot_home(slot, <size_t>entry.labels.cap - 1)])
            for j in range(0, ls.n, 2):
                e = _items(ls)[j]
                if not _holds_entry(self._scr_ents.data, n, e):
                    entry = &self._entries[e]
                    prefetch(&entry.labels.data[_slot_home(slot, <size_t>entry.labels.cap - 1)])
            for j in range(ls.matched.n):
                prefetch(&self._selslots[ls.matched.data[j]])
        # the label set is kept as the pair entries' strings: shared by every label set with
        # the pair, interned like the selectors' (matching compares pointers), and no dict
        if n > self._scr_pairs_cap:
            self._grow_scratch_pairs(n)
        for j in range(0, n, 2):
            entry = &self._entries[self._scr_ents.data[j]]
            self._scr_pairs[j] = entry.key
            self._scr_pairs[j + 1] = entry.value
        self._matching_selectors(None, self._scr_pairs, n // 2)
        if ls != NULL:
            for j in range(ls.matched.n):
                prefetch(self._selslots[ls.matched.data[j]].id)
        if ls == NULL:
            slot = self._new_label_slot(label_id, h)
            ls = &self._labsets[slot]
        for j in range(n):
            entry = &self._entries[self._scr_ents.data[j]]
            if entry.mark == stamp:  # kept: it stays in the posting
                entry.mark = 0
            else:
                _slotset_add(&entry.labels, slot)
                entry.refs += 1
        for j in range(ls.n):
            e = _items(ls)[j]
            if self._entries[e].mark == stamp:  # an entry it no longer has
                self._entries[e].mark = 0
                _slotset_remove(&self._entries[e].labels, slot)
                self._release(e)
        if n > ls.cap:
            self._grow_label_slot(ls, n)
        memcpy(_items(ls), self._scr_ents.data, <size_t>n * sizeof(int32_t))
        memcpy(ls.pairs, self._scr_pairs, <size_t>n * sizeof(PyObject*))
        ls.n = <int32_t>n
        self._last_id = label_id
        self._last_slot = slot
        return self._update_matches(slot)

    cdef int _grow_label_slot(self, LabelSlot* ls, Py_ssize_t n) except -1:
        """Room for n entries: n pointers of pairs, then n int32 of entry ids, in one block."""
        cdef PyObject** pairs = <PyObject**>PyMem_Realloc(
            ls.pairs, <size_t>n * sizeof(PyObject*) + <size_t>n * sizeof(int32_t))
        if pairs == NULL:
            raise MemoryError()
        ls.pairs = pairs
        ls.cap = <int32_t>n
        return 0

    cdef int _grow_scratch_pairs(self, Py_ssize_t n) except -1:
        cdef PyObject** grown = <PyObject**>PyMem_Realloc(self._scr_pairs, <size_t>n * sizeof(PyObject*))
        if grown == NULL:
            raise MemoryError()
        self._scr_pairs = grown
        self._scr_pairs_cap = n
        return 0

    cdef tuple _update_matches(self, int32_t slot):
        """Replace the label set's matched selectors with the scratch found list; return the
        ids added and removed."""
        cdef LabelSlot* ls = &self._labsets[slot]
        cdef Vec* old = &ls.matched
        cdef Vec* now = &self._scr_found
        cdef set added = set(), removed = set()
        cdef Py_ssize_t a = 0, b = 0
        cdef int32_t s
        while a < old.n or b < now.n:
            if b == now.n or (a < old.n and old.data[a] < now.data[b]):
                s = old.data[a]
                a += 1
                removed.add(<object>self._selslots[s].id)
            elif a == old.n or now.data[b] < old.data[a]:
                s = now.data[b]
                b += 1
                added.add(<object>self._selslots[s].id)
            else:
                a += 1
                b += 1
        _vec_reserve(old, now.n)
        memcpy(old.data, now.data, <size_t>now.n * sizeof(int32_t))
        old.n = now.n
        return added, removed

    def remove_labels(self, label_id) -> set:
        """Forget a label set; return the selector ids it matched. Unknown ids are ignored."""
        cdef int32_t slot = self._lab_find(label_id, self._id_hash(label_id)), s
        cdef LabelSlot* ls
        cdef Py_ssize_t j
        cdef set before = set()
        if slot < 0:
            return before
        del self._lab_slot[label_id]
        self._lab_unfile(slot)
        ls = &self._labsets[slot]
        for j in range(ls.n):
            _slotset_remove(&self._entries[_items(ls)[j]].labels, slot)
            self._release(_items(ls)[j])
        for j in range(ls.matched.n):
            s = ls.matched.data[j]
            before.add(<object>self._selslots[s].id)
        self._free_label_slot(slot)
        return before

    # -- selectors ---------------------------------------------------------------------------

    cdef int _anchor(self, Selector selector) except -2:
        """The positive requirement with the fewest selectors already filed under it (then the
        fewest label sets), so that no anchor collects every selector; -1 when none."""
        cdef Py_ssize_t i, j, nsel, nlab, best_sel = 0, best_lab = 0
        cdef int best = -1, op
        cdef CReq* r
        cdef uint64_t hk
        cdef int32_t e
        for i in range(selector._n):
            r = &selector._reqs[i]
            op = r.op
            hk = _key_hash(r.key)
            nsel = 0
            nlab = 0
            if op == OP_EQ or op == OP_DEQ or op == OP_IN:
                for j in range(r.nvalues):
                    e = self._find(_text_hash(r.values[j], hk), r.key, r.values[j])
                    if e >= 0:
                        nsel += self._entries[e].sels.n
                        nlab += self._entries[e].labels.n
            elif op == OP_EXISTS or op == OP_GT or op == OP_LT:
                nsel = 1_000_000
                e = self._find(hk, r.key, NULL)
                if e >= 0:
                    nsel += self._entries[e].sels.n
                    nlab = self._entries[e].labels.n
            else:
                continue
            if best < 0 or nsel < best_sel or (nsel == best_sel and nlab < best_lab):
                best = <int>i
                best_sel = nsel
                best_lab = nlab
        return best

    cdef int _file_selector(self, int32_t slot, Selector selector) except -1:
        cdef SelectorSlot* ss = &self._selslots[slot]
        cdef int best
        cdef CReq* r
        cdef uint64_t hk
        cdef Py_ssize_t j, n
        cdef int32_t e
        cdef Entry* entry
        ss.kind = ANCHOR_NOTHING
        ss.n = 0
        if selector._nothing:
            return 0
        best = self._anchor(selector)
        n = 1 if best < 0 else (selector._reqs[best].nvalues or 1)
        ss.ents = <int32_t*>PyMem_Malloc(<size_t>n * sizeof(int32_t))
        ss.pos = <int32_t*>PyMem_Malloc(<size_t>n * sizeof(int32_t))
        if ss.ents == NULL or ss.pos == NULL:
            raise MemoryError()
        if best < 0:
            ss.kind = ANCHOR_NONE
            ss.n = 1
            ss.ents[0] = -1
            ss.pos[0] = self._unanchored.n
            _vec_push(&self._unanchored, slot)
            return 0
        r = &selector._reqs[best]
        hk = _key_hash(r.key)
        ss.kind = ANCHOR_KEY if r.nvalues == 0 or r.op == OP_GT or r.op == OP_LT else ANCHOR_PAIRS
        if ss.kind == ANCHOR_KEY:
            n = 1
        for j in range(n):
            if ss.kind == ANCHOR_KEY:
                e = self._find_or_add(hk, r.key, NULL)
            else:
                e = self._find_or_add(_text_hash(r.values[j], hk), r.key, r.values[j])
            entry = &self._entries[e]
            ss.ents[j] = e
            ss.pos[j] = entry.sels.n
            _vec_push(&entry.sels, slot)
            entry.first_sel = entry.sels.data[0]
            entry.refs += 1
            ss.n = <int32_t>(j + 1)
        return 0

    cdef void _unfile_selector(self, int32_t slot) noexcept:
        cdef SelectorSlot* ss = &self._selslots[slot]
        cdef Py_ssize_t j
        if ss.kind == ANCHOR_NONE:
            self._unpost_unanchored(ss.pos[0])
        elif ss.kind == ANCHOR_PAIRS or ss.kind == ANCHOR_KEY:
            for j in range(ss.n):
                self._unpost_selector(ss.ents[j], ss.pos[j])
                self._release(ss.ents[j])
        PyMem_Free(ss.ents)
        PyMem_Free(ss.pos)
        ss.ents = NULL
        ss.pos = NULL
        ss.n = 0
        ss.kind = ANCHOR_NOTHING

    cdef int _labels_matching(self, Selector selector) except -1:
        """Fill the scratch found list with the slots of the label sets ``selector`` matches,
        checking only the smallest candidate group a positive requirement gives."""
        cdef Py_ssize_t i, j, t, size = -1, total
        cdef int best = -1, op
        cdef CReq* r
        cdef uint64_t hk
        cdef int32_t e, lslot
        cdef Vec* group
        cdef LabelSlot* ls
        self._scr_found.n = 0
        if selector._nothing:
            return 0
        for i in range(selector._n):
            r = &selector._reqs[i]
            op = r.op
            hk = _key_hash(r.key)
            total = 0
            if op == OP_EQ or op == OP_DEQ or op == OP_IN:
                for j in range(r.nvalues):
                    e = self._find(_text_hash(r.values[j], hk), r.key, r.values[j])
                    if e >= 0:
                        total += self._entries[e].labels.n
            elif op == OP_EXISTS or op == OP_GT or op == OP_LT:
                e = self._find(hk, r.key, NULL)
                if e >= 0:
                    total = self._entries[e].labels.n
            else:
                continue
            if best < 0 or total < size:
                best = <int>i
                size = total
        if best < 0:  # no positive requirement: every label set is a candidate
            for t in range(self._labsets_top):
                ls = &self._labsets[t]
                if ls.id != NULL and _match_pairs(selector._reqs, selector._n, ls.pairs, ls.n // 2):
                    _vec_push(&self._scr_found, <int32_t>t)
            return 0
        r = &selector._reqs[best]
        hk = _key_hash(r.key)
        for j in range(r.nvalues if r.op == OP_EQ or r.op == OP_DEQ or r.op == OP_IN else 1):
            if r.op == OP_EQ or r.op == OP_DEQ or r.op == OP_IN:
                e = self._find(_text_hash(r.values[j], hk), r.key, r.values[j])
            else:
                e = self._find(hk, r.key, NULL)
            if e < 0:
                continue
            group = &self._entries[e].labels
            for t in range(group.cap):
                lslot = group.data[t]
                if lslot < 0:
                    continue
                ls = &self._labsets[lslot]
                if _match_pairs(selector._reqs, selector._n, ls.pairs, ls.n // 2):
                    _vec_push(&self._scr_found, lslot)
        return 0

    cdef int _selector_labels(self, int32_t slot, Vec* out) except -1:
        """Fill ``out`` with the sorted slots of the label sets a stored selector matches: those
        its anchor entries reach (every label set when it has none) that list it."""
        cdef SelectorSlot* ss = &self._selslots[slot]
        cdef Py_ssize_t j, t
        cdef int32_t lslot
        cdef Vec* group
        out.n = 0
        if ss.kind == ANCHOR_NONE:
            for t in range(self._labsets_top):
                if self._labsets[t].id != NULL and _contains(&self._labsets[t].matched, slot):
                    _vec_push(out, <int32_t>t)
            return 0
        if ss.kind == ANCHOR_NOTHING:
            return 0
        for j in range(ss.n):
            group = &self._entries[ss.ents[j]].labels
            for t in range(group.cap):
                lslot = group.data[t]
                if lslot >= 0 and _contains(&self._labsets[lslot].matched, slot):
                    _vec_push(out, lslot)
        _sort_unique(out)
        return 0

    def set_selector(self, selector_id, Selector selector not None) -> tuple:
        """Add or replace a selector; return (label-set ids it now matches and did not,
        label-set ids it matched and no longer does)."""
        cdef object found = self._sel_slot.get(selector_id)
        cdef int32_t slot, lslot
        cdef set added = set(), removed = set()
        cdef SelectorSlot* ss
        cdef Vec* old = &self._scr_old
        cdef Vec* now = &self._scr_found
        cdef Py_ssize_t a = 0, b = 0
        if found is None:
            slot = self._new_selector_slot(selector_id)
            old.n = 0
        else:
            slot = found
            self._selector_labels(slot, old)
            self._unfile_selector(slot)
        ss = &self._selslots[slot]
        Py_XINCREF(<PyObject*>selector)
        Py_XDECREF(ss.selector)
        ss.selector = <PyObject*>selector
        _keep_reqs(ss, selector)
        self._file_selector(slot, selector)
        self._labels_matching(selector)
        _sort_unique(now)
        # both lists sorted: one merge gives what it gains and what it loses
        while a < old.n or b < now.n:
            if b == now.n or (a < old.n and old.data[a] < now.data[b]):
                lslot = old.data[a]
                a += 1
                removed.add(<object>self._labsets[lslot].id)
                _sorted_remove(&self._labsets[lslot].matched, slot)
            elif a == old.n or now.data[b] < old.data[a]:
                lslot = now.data[b]
                b += 1
                added.add(<object>self._labsets[lslot].id)
                _sorted_insert(&self._labsets[lslot].matched, slot)
            else:
                a += 1
                b += 1
        return added, removed

    def remove_selector(self, selector_id) -> set:
        """Forget a selector; return the label-set ids it matched. Unknown ids are ignored."""
        cdef object found = self._sel_slot.pop(selector_id, None)
        cdef int32_t slot, lslot
        cdef set before = set()
        cdef SelectorSlot* ss
        cdef Py_ssize_t t
        if found is None:
            return before
        slot = found
        self._selector_labels(slot, &self._scr_old)
        for t in range(self._scr_old.n):
            lslot = self._scr_old.data[t]
            before.add(<object>self._labsets[lslot].id)
            _sorted_remove(&self._labsets[lslot].matched, slot)
        self._unfile_selector(slot)
        ss = &self._selslots[slot]
        Py_XDECREF(ss.id)
        Py_XDECREF(ss.selector)
        memset(ss, 0, sizeof(SelectorSlot))
        ss.kind = ANCHOR_NOTHING
        self._free_selslots.data[self._free_selslots.n] = slot  # room reserved on growth
        self._free_selslots.n += 1
        return before
