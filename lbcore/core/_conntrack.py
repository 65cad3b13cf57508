"""Connection tracking and ClientIP affinity tables: the compiled ones unless
``LBCORE_NO_EXTENSIONS`` is set (or they are not built), else the readable twin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbcore.core._extensions import NO_EXTENSIONS

if TYPE_CHECKING:
    from lbcore.core._conntrack_py import AffinityTable, ConnTable, entry_size, pack_address
elif NO_EXTENSIONS:
    from lbcore.core._conntrack_py import AffinityTable, ConnTable, entry_size, pack_address
else:
    try:
        from lbcore.core._conntrack_c import AffinityTable, ConnTable, entry_size, pack_address
    except ImportError:  # pragma: no cover - an unbuilt checkout
        from lbcore.core._conntrack_py import AffinityTable, ConnTable, entry_size, pack_address

__all__ = ["AffinityTable", "ConnTable", "entry_size", "pack_address"]
