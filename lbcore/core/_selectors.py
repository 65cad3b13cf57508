"""Kubernetes label selectors: the compiled twin unless ``LBCORE_NO_EXTENSIONS`` is set (or the
compiled module is missing), else the readable twin. Both have the same API; see
``docs/selectors.md``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbcore.core._extensions import NO_EXTENSIONS

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

if TYPE_CHECKING:  # type checkers read the readable twin
    from lbcore.core._selectors_py import (
        Requirement,
        Selector,
        SelectorIndex,
        parse_selector,
        selector_from_label_selector,
        selector_from_map,
        validate_label_key,
        validate_label_value,
    )
else:
    if not NO_EXTENSIONS:
        try:
            from lbcore.core._selectors_c import (
                Requirement,
                Selector,
                SelectorIndex,
                parse_selector,
                selector_from_label_selector,
                selector_from_map,
                validate_label_key,
                validate_label_value,
            )
        except ImportError:  # pragma: no cover - built without the extension
            NO_EXTENSIONS = True
    if NO_EXTENSIONS:
        from lbcore.core._selectors_py import (
            Requirement,
            Selector,
            SelectorIndex,
            parse_selector,
            selector_from_label_selector,
            selector_from_map,
            validate_label_key,
            validate_label_value,
        )
