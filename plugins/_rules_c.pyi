"""Type stub of the compiled per-port rule writers (plugins/_rules_c.pyx)."""

from typing import Any

class IptablesWriter:
    """Writes what one service port contributes to the iptables-restore input of one family."""

    def __init__(self, masquerade_all: bool, cidr: str | None, node_dst_matches: list[str]) -> None: ...
    def write(self, plan: Any) -> tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None:
        """(declarations, rules, nat LBCORE-SERVICES lines, LBCORE-NODEPORTS lines, filter
        LBCORE-SERVICES lines) of ``plan``; None when a name or address is not ASCII or the
        writer is in use by another call."""

class NftWriter:
    """Writes what one service port puts in the ``inet lbcore`` table (``cascade`` and
    ``inline`` without ClientIP affinity; the elements of a ``maps`` port without it)."""

    def __init__(self, masquerade_all: bool, cluster_cidrs: dict[int, str], endpoint_selection: str) -> None: ...
    def write(self, plan: Any) -> tuple[dict[str, tuple[str, ...]], str, str] | None:
        """(map -> ``key : verdict`` elements, set definitions, chain definitions) of ``plan``;
        None for a shape left to ``NftRenderer.port_objects_py``, or while the writer is in use
        by another call."""

def plan_port(sp: Any, family: int, node: str | None) -> Any:
    """``netfilter.plan_port``: the PortPlan of ``sp`` for ``family`` on ``node``, or None."""

def plan_key(plan: Any) -> str:
    """``netfilter.plan_key``: ``family|namespace/name:port_name/protocol``."""
