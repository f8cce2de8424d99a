"""The few ways a use case can refuse, in domain words and free of HTTP.

Domain cores and handlers raise these; the HTTP layer maps each to one
problem status (``shared.http.app``), so a rule is written once and every
entry point reports it the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class DomainError(Exception):
    pass


class NotFound(DomainError):
    """Also raised for another tenant's resource, so ids leak nothing."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} does not exist")


class Conflict(DomainError):
    """The request is valid but the resource's current state forbids it."""


class Contended(DomainError):
    """Others changed the resource every time this change was about to land.

    Not the request's fault and not a state that forbids it: the same request
    may well succeed when sent again (HTTP 503 with ``Retry-After``).
    """


class NotAllowed(DomainError):
    """The caller can see the resource but may not do this to it."""


@dataclass(frozen=True)
class Violation:
    field: str
    message: str


class RuleViolated(DomainError):
    """One or more fields break a business rule (HTTP 422)."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(f"{v.field}: {v.message}" for v in self.violations))

    @classmethod
    def single(cls, field: str, message: str) -> RuleViolated:
        return cls([Violation(field, message)])
