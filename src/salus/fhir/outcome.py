"""Errors as values of one kind: ``FhirError(status, issues)``.

Raised anywhere below the doors; each door turns it into its own answer
(an OperationOutcome over HTTP, an ACK with ERR over MLLP, a rejection line
in an import summary).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: severity, code (IssueType), a message and where."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: str | None = None

    def to_fhir(self) -> dict[str, Any]:
        """This issue as an ``OperationOutcome.issue`` element."""
        d: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            d["expression"] = [self.expression]
        return d


@dataclass
class FhirError(Exception):
    """A failed FHIR interaction: the HTTP status it maps to and every problem found."""

    status: int
    issues: list[Issue] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @classmethod
    def of(cls, status: int, code: str, diagnostics: str, expression: str | None = None) -> FhirError:
        """An error carrying one issue."""
        return cls(status, [Issue(code, diagnostics, expression=expression)])

    @property
    def message(self) -> str:
        """The issues' diagnostics joined, for logs and CLI summaries."""
        return "; ".join(
            (f"{i.expression}: " if i.expression else "") + i.diagnostics for i in self.issues
        ) or f"HTTP {self.status}"

    def to_outcome(self) -> dict[str, Any]:
        """The error as an OperationOutcome resource."""
        return operation_outcome(self.issues)


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """An OperationOutcome resource for ``issues`` (an informational one if empty)."""
    if not issues:
        issues = [Issue("informational", "All OK", severity="information")]
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


def not_found(resource_type: str, rid: str) -> FhirError:
    """The 404 for a resource that never existed."""
    return FhirError.of(404, "not-found", f"Resource {resource_type}/{rid} is not known")
