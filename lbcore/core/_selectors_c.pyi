"""Type stub of the compiled selectors; the behaviour is documented in lbcore/core/_selectors_py.py."""

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from typing_extensions import disjoint_base

from lbcore.core._selectors_py import Requirement as Requirement

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

def validate_label_key(key: str) -> list[str]:
    """Kubernetes' messages for an invalid label key (a qualified name); ``[]`` when valid."""

def validate_label_value(value: str) -> list[str]:
    """Kubernetes' messages for an invalid label value; ``[]`` when valid."""

@disjoint_base
class Selector:
    """A parsed label selector: an AND of requirements, or the selector that matches nothing."""

    def __init__(self, requirements: Iterable[Requirement | tuple[str, str, Iterable[str]]] = ()) -> None: ...
    @staticmethod
    def everything() -> Selector:
        """The selector that matches every label set."""
    @staticmethod
    def nothing() -> Selector:
        """The selector that matches no label set."""
    @property
    def requirements(self) -> tuple[Requirement, ...]: ...
    @property
    def empty(self) -> bool: ...
    @property
    def is_nothing(self) -> bool: ...
    def matches(self, labels: Mapping[str, str], /) -> bool:
        """True when every requirement holds for ``labels`` (positional: a one-argument C call)."""
    def requires_exact_match(self, key: str) -> str | None: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __reduce__(self) -> tuple[Any, ...]: ...

def parse_selector(text: str) -> Selector:
    """Parse a Kubernetes label-selector string; ``""`` matches everything."""

def selector_from_map(selector: Mapping[str, str] | None) -> Selector:
    """A Service's ``spec.selector``; empty or None matches nothing."""

def selector_from_label_selector(label_selector: Mapping[str, Any] | Any | None) -> Selector:
    """A ``metav1.LabelSelector``; None matches nothing, ``{}`` matches everything."""

@disjoint_base
class SelectorIndex:
    """Selectors and label sets by id, and which of them match, kept up to date incrementally.

    Postings are C arrays of integer slots behind an XXH3 table of label pairs; label sets are
    kept as interned (key, value) string pointers, so one change costs a few probes and writes.
    The match relation is kept on the label sets' side only: a label-set change writes nothing
    in its selectors, and ``matching(selector_id)`` reads the label sets its anchors reach.
    """

    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    @property
    def selector_count(self) -> int: ...
    @property
    def label_count(self) -> int: ...
    def has_selector(self, selector_id: Hashable) -> bool: ...
    def has_labels(self, label_id: Hashable) -> bool: ...
    def get_selector(self, selector_id: Hashable) -> Selector: ...
    def get_labels(self, label_id: Hashable) -> dict[str, str]: ...
    def selector_ids(self) -> list[Hashable]: ...
    def label_ids(self) -> list[Hashable]: ...
    def matching(self, selector: Hashable | Selector) -> set[Hashable]:
        """Ids of the label sets a selector matches (by id, or for a Selector given).

        By id, the cost is that of the label sets the selector's anchor reaches."""
    def selectors_matching(self, labels: Hashable | Mapping[str, str]) -> set[Hashable]:
        """Ids of the selectors that match a label set (by id, or for a mapping given)."""
    def set_labels(self, label_id: Hashable, labels: Mapping[str, str]) -> tuple[set[Hashable], set[Hashable]]:
        """Add or replace a label set; return (selector ids added, selector ids removed)."""
    def remove_labels(self, label_id: Hashable) -> set[Hashable]:
        """Forget a label set; return the selector ids it matched."""
    def set_selector(self, selector_id: Hashable, selector: Selector) -> tuple[set[Hashable], set[Hashable]]:
        """Add or replace a selector; return (label-set ids added, label-set ids removed)."""
    def remove_selector(self, selector_id: Hashable) -> set[Hashable]:
        """Forget a selector; return the label-set ids it matched."""
