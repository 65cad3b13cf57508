"""Strategic merge patch, as the API server applies it, driven by the kinds' schema.

``kubectl edit`` and ``kubectl apply`` send strategic merge patches for built-in kinds: maps
merge key by key (``null`` removes a key), lists marked ``x-kubernetes-patch-strategy: merge``
merge element by element on their ``x-kubernetes-patch-merge-key`` (a service's ``ports`` on
``port``, a pod's ``containers`` on ``name``), other lists are replaced. The directives are
those of Kubernetes' ``strategicpatch`` package: ``$patch: replace | delete | merge`` on a map
or a list element, ``$retainKeys``, ``$setElementOrder/<list>`` and
``$deleteFromPrimitiveList/<list>``. Where the schema says nothing (an open object) the patch
is a JSON merge patch (RFC 7386). The list semantics come from :mod:`lbcore.model.schema`.

Beside it, the two other patches the API server takes: :func:`json_patch` (RFC 6902,
``application/json-patch+json``, by the ``jsonpatch`` package) and :func:`merge_patch` (RFC 7386,
``application/merge-patch+json``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch

from lbcore.errors import LbcoreError
from lbcore.model.schema import DEFINITIONS, KIND_SCHEMAS, Array, Definition, Map, Ref, Type

__all__ = ["PatchError", "PatchNotApplicable", "json_patch", "merge_patch",
           "strategic_merge_patch"]

_ORDER = "$setElementOrder/"
_DELETE_FROM = "$deleteFromPrimitiveList/"


class PatchError(LbcoreError, ValueError):
    """A strategic merge patch that cannot be applied; the message names the place."""


class PatchNotApplicable(PatchError):
    """A well-formed JSON patch whose operations cannot be applied to this object (a ``test``
    that fails, a path that is not there)."""


def strategic_merge_patch(kind: str, current: Mapping[str, Any],
                          patch: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` (an object of ``kind``) with ``patch`` applied; neither is changed.

    :raises PatchError: a directive the patch misuses (an unknown ``$patch``, a list element
        without its merge key).
    """
    name = KIND_SCHEMAS.get(kind)
    schema = DEFINITIONS[name] if name is not None else None
    return _merge_map(copy.deepcopy(dict(current)), patch, schema, "")


def _resolve(t: Type | Definition | None) -> Type | Definition | None:
    return DEFINITIONS[t.name] if isinstance(t, Ref) else t


def _child(t: Type | Definition | None, key: str) -> Type | Definition | None:
    """The schema of field ``key`` of an object of schema ``t`` (None: not described)."""
    t = _resolve(t)
    if isinstance(t, Definition) and t.properties:
        prop = t.properties.get(key)
        return None if prop is None else _resolve(prop.type)
    if isinstance(t, Map):
        return _resolve(t.values)
    return None


def _merge_map(target: dict[str, Any], patch: Mapping[str, Any],
               t: Type | Definition | None, path: str) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return {}
    if directive not in (None, "merge"):
        raise PatchError(f"{path or '.'}: $patch: unknown directive {directive!r}")
    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchError(f"{path or '.'}: $retainKeys: must be a list, got {retain!r}")
        target = {k: v for k, v in target.items() if k in retain}
    orders = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith(_ORDER):
            orders[key[len(_ORDER):]] = value
            continue
        if key.startswith(_DELETE_FROM):
            field = key[len(_DELETE_FROM):]
            if isinstance(target.get(field), list) and isinstance(value, list):
                target[field] = [v for v in target[field] if v not in value]
            continue
        where = f"{path}.{key}" if path else key
        if value is None:
            target.pop(key, None)
            continue
        child = _child(t, key)
        old = target.get(key)
        if isinstance(value, dict):
            target[key] = _merge_map(old if isinstance(old, dict) else {}, value, child, where)
        elif isinstance(value, list) and isinstance(child, Array) and child.strategy \
                and "merge" in child.strategy.split(","):
            target[key] = _merge_list(old if isinstance(old, list) else [], value, child, where)
        else:
            target[key] = copy.deepcopy(value)
    for field, order in orders.items():
        child = _child(t, field)
        if isinstance(target.get(field), list) and isinstance(order, list):
            merge_key = child.merge_key if isinstance(child, Array) else None
            target[field] = _ordered(target[field], order, merge_key)
    return target


def _merge_list(target: list[Any], patch: list[Any], t: Array, path: str) -> list[Any]:
    key = t.merge_key
    if key is None or not all(isinstance(v, dict) for v in patch):
        # a primitive list that merges: the union, in order
        return target + [copy.deepcopy(v) for v in patch if v not in target]
    if any(v.get("$patch") == "replace" for v in patch):
        return [{k: copy.deepcopy(x) for k, x in v.items() if k != "$patch"}
                for v in patch if v.get("$patch") != "replace"]
    out = list(target)
    for i, element in enumerate(patch):
        if key not in element:
            raise PatchError(f"{path}[{i}]: the merge key {key!r} is missing")
        found = next((j for j, old in enumerate(out)
                      if isinstance(old, dict) and old.get(key) == element[key]), None)
        if element.get("$patch") == "delete":
            if found is not None:
                del out[found]
            continue
        item = _resolve(t.items)
        if found is None:
            out.append(_merge_map({}, element, item, f"{path}[{i}]"))
        else:
            out[found] = _merge_map(out[found], element, item, f"{path}[{i}]")
    return out


def _ordered(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    """``items`` in the order ``$setElementOrder`` gives; those it does not name keep their
    places after the named ones."""
    def ident(v: Any) -> Any:
        return v.get(key) if key is not None and isinstance(v, dict) else v

    wanted = [ident(v) for v in order]
    rank = {repr(w): i for i, w in enumerate(wanted)}
    named = sorted((v for v in items if repr(ident(v)) in rank),
                   key=lambda v: rank[repr(ident(v))])
    return named + [v for v in items if repr(ident(v)) not in rank]


# --- JSON patch and JSON merge patch ----------------------------------------------------------


def json_patch(target: Mapping[str, Any], patch: Any) -> dict[str, Any]:
    """RFC 6902 JSON patch of ``target``, as a new object.

    :raises PatchError: the patch is not a list of operations of the right shape.
    :raises PatchNotApplicable: an operation cannot be applied.
    """
    if not isinstance(patch, list):
        raise PatchError(f"a JSON patch is a list of operations, got {type(patch).__name__}")
    try:
        patched = jsonpatch.JsonPatch(patch).apply(dict(target), in_place=False)
    except jsonpatch.InvalidJsonPatch as exc:
        raise PatchError(f"not a valid JSON patch: {exc}") from None
    except (AttributeError, KeyError, TypeError) as exc:  # an operation of the wrong shape
        raise PatchError(f"not a valid JSON patch: {type(exc).__name__}: {exc}") from None
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise PatchNotApplicable(f"the JSON patch cannot be applied: {exc}") from None
    if not isinstance(patched, dict):
        raise PatchNotApplicable("the JSON patch cannot be applied: it replaces the object")
    return patched


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, ``null`` removes, others replace."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
