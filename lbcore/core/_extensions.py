"""Choose compiled or readable twins: compiled unless ``LBCORE_NO_EXTENSIONS`` is set to a
non-empty value other than ``0``, or the interpreter is not CPython."""

from __future__ import annotations

import os
import platform

NO_EXTENSIONS = os.environ.get("LBCORE_NO_EXTENSIONS", "") not in ("", "0") or (
    platform.python_implementation() != "CPython"
)
