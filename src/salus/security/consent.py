"""Patient consent: an active FHIR Consent that denies sharing a patient's data is enforced on reads and searches.

Supported shape (R4 Consent, scope ``patient-privacy``): ``status = active``,
``patient`` the Patient, and a ``provision`` whose ``type`` is ``deny`` (or a
``permit`` base with nested ``deny`` provisions). A denial names, each optional:

- ``actor[].reference``: who is denied (a Practitioner, PractitionerRole,
  Organization...); none: everyone but the patient;
- ``securityLabel``: which data (resources carrying one of these codings in
  ``meta.security``, e.g. ``http://terminology.hl7.org/CodeSystem/v3-ActCode|PSY``);
  none: all of the patient's data;
- ``class``: which resource types (``http://hl7.org/fhir/resource-types``).

An empty ``provision.period`` is always in force; a period outside now is
not. Nested ``permit`` exceptions inside a deny are not interpreted (the denial
stands), which errs on the side of the patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from salus.security.principal import Principal


@dataclass(frozen=True)
class Denial:
    """One ``deny`` provision: who is denied (empty: everyone), which labels and which types (empty: all)."""

    actors: frozenset[str]
    labels: frozenset[tuple[str | None, str]]
    classes: frozenset[str]

    def applies(self, principal: Principal, resource: dict[str, Any]) -> bool:
        """Whether this denial covers ``principal`` reading ``resource``."""
        if self.actors and not (principal.fhir_user and principal.fhir_user in self.actors):
            return False
        if self.classes and resource.get("resourceType") not in self.classes:
            return False
        if self.labels:
            meta = resource.get("meta")
            security = meta.get("security") if isinstance(meta, dict) else None
            found = {(c.get("system"), c.get("code")) for c in security or [] if isinstance(c, dict)}
            if not any((s, code) in found or (s is None and any(fc == code for _, fc in found))
                       for s, code in self.labels):
                return False
        return True


def _in_force(provision: dict[str, Any], now: str) -> bool:
    period = provision.get("period") or {}
    start, end = period.get("start"), period.get("end")
    return not ((isinstance(start, str) and start > now) or (isinstance(end, str) and end < now))


def _relative(reference: str) -> str:
    parts = reference.rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


def _denial(provision: dict[str, Any]) -> Denial:
    actors = frozenset(
        _relative(a["reference"]["reference"]) for a in provision.get("actor") or []
        if isinstance(a, dict) and isinstance(a.get("reference"), dict) and isinstance(a["reference"].get("reference"), str)
    )
    labels = frozenset(
        (c.get("system"), c["code"]) for c in provision.get("securityLabel") or []
        if isinstance(c, dict) and isinstance(c.get("code"), str)
    )
    classes = frozenset(
        c["code"] for c in provision.get("class") or [] if isinstance(c, dict) and isinstance(c.get("code"), str)
    )
    return Denial(actors, labels, classes)


def denials(consent: dict[str, Any], now: str | None = None) -> list[Denial]:
    """The denials an active Consent imposes (none when it is not active or not in force)."""
    if consent.get("status") != "active":
        return []
    now = now or datetime.now(UTC).isoformat()
    provision = consent.get("provision")
    if not isinstance(provision, dict) or not _in_force(provision, now):
        return []
    if provision.get("type") == "deny":
        return [_denial(provision)]
    return [
        _denial(p) for p in provision.get("provision") or []
        if isinstance(p, dict) and p.get("type") == "deny" and _in_force(p, now)
    ]


def exempt(principal: Principal, patient: str) -> bool:
    """Who a patient's consent never restricts: the patient, and security being off.

    (An administrator is not exempt: running the server is no reason to read what a patient withheld.
    Break-the-glass is decided by the policy, per interaction.)
    """
    return principal.unrestricted or principal.fhir_user == f"Patient/{patient}" or (
        principal.role == "patient" and principal.patient == patient
    )
