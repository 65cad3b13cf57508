"""Error types. Each message names the field (or token) and the offending value."""

from __future__ import annotations

from dataclasses import dataclass


class LbcoreError(Exception):
    """Base of every error lbcore raises on purpose."""


class SelectorError(LbcoreError, ValueError):
    """A label selector that does not parse or does not validate."""


@dataclass(frozen=True)
class Cause:
    """One field problem, as in a Kubernetes Status ``details.causes`` entry."""

    field: str
    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueDuplicate, FieldValueNotSupported, ...
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ValidationError(LbcoreError, ValueError):
    """An invalid object; ``causes`` lists every problem, one by one."""

    def __init__(self, kind: str, name: str, causes: list[Cause]):
        self.kind = kind
        self.name = name
        self.causes = list(causes)
        detail = ", ".join(str(c) for c in self.causes) if self.causes else "invalid"
        super().__init__(f'{kind} "{name}" is invalid: {detail}')


class AllocationError(LbcoreError, ValueError):
    """A ClusterIP or NodePort that cannot be given: in use, out of range, or none left."""


class ConfigError(LbcoreError, ValueError):
    """An invalid configuration file or flag; the message names the key."""
