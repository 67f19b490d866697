"""The service's "authorize" step: the policy's answer applied to each interaction.

Every door reaches the data through the service, so checking here covers the
REST API, the entries of batch and transaction Bundles, and whatever door comes
next. With security off the caller is unrestricted and each check is a single
context-variable read.

What is checked (``salus.security.policy.Access``):
- the interaction letter (c r u d s) on the type, from scopes and role;
- the Patient compartment a patient-level grant or the patient role confines
  the caller to, on every resource read, returned by a search (its includes
  too), written (its new content and, on update and delete, its old one);
- granular scopes (``patient/Observation.rs?category=...``) on the same;
- searches whose chains or ``_has`` reach types the caller may not search:
  their conditions would otherwise reveal those resources' content.
A refusal is a 403 OperationOutcome and an audited denial.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import orjson

from salus.fhir.definitions import resource_types
from salus.fhir.outcome import FhirError
from salus.search.tree import SearchQuery
from salus.security.consent import exempt
from salus.security.policy import ALL, NOTHING, Access, in_patient_compartment, matches_granular
from salus.security.principal import Principal, current
from salus.service.auditing import Auditor, patient_of
from salus.service.consents import ConsentIndex

log = logging.getLogger("salus.security")


@lru_cache(maxsize=4096)
@lru_cache(maxsize=1024)
def _access(principal: Principal) -> Access:
    """The access of a principal, remembered: a token's principal is the same object on every request."""
    return Access.of(principal)


def access() -> Access | None:
    """The caller's access, or None when unrestricted (security off)."""
    principal = current().principal
    if principal.unrestricted:
        return None
    return _access(principal)


class Guard:
    """Checks an interaction for the current caller; records what it refuses."""

    def __init__(self, auditor: Auditor | None, consents: ConsentIndex | None = None) -> None:
        self.auditor = auditor
        self.consents = consents

    def deny(self, interaction: str, res_type: str | None, res_id: str | None, reason: str) -> FhirError:
        """The 403 to raise, after auditing the refusal."""
        if self.auditor is not None:
            self.auditor.denied(_AUDIT_INTERACTIONS[interaction], res_type, res_id, reason)
        return FhirError.of(403, "forbidden", reason)

    def require(self, interaction: str, res_type: str, res_id: str | None = None) -> Access | None:
        """The caller's access, after checking the interaction on the type; 403 if not allowed."""
        acc = access()
        if acc is not None and acc.reach(interaction, res_type) == NOTHING:
            raise self.deny(interaction, res_type, res_id,
                            f"Access denied: {_INTERACTION_NAMES[interaction]} of {res_type} is not granted")
        return acc

    def operation(self, name: str) -> None:
        """403 unless the caller may run the operation (``$reindex``, ``$erase``, ``$export``, ``audit``)."""
        acc = access()
        if acc is not None and not acc.can_operation(name):
            if self.auditor is not None:
                self.auditor.denied("operation", None, None, f"{name} is not granted")
            raise FhirError.of(403, "forbidden", f"Access denied: {name} is not granted to this caller")

    @staticmethod
    def permits(acc: Access | None, interaction: str, res_type: str, resource: dict[str, Any] | None) -> bool:
        """Whether the caller may see or write this resource (type allowed, compartment, granular scopes)."""
        if acc is None:
            return True
        if not acc.allowed(interaction, res_type):
            return False
        patient = acc.compartment(interaction, res_type)
        filters = acc.filters(interaction, res_type)
        if patient is None and filters is None:
            return True
        if resource is None:  # a deletion: nothing to show the caller belongs to them
            return False
        if patient is not None and not in_patient_compartment(resource, patient):
            return False
        return filters is None or any(matches_granular(resource, f) for f in filters)

    def post_filtered(self, acc: Access, res_type: str | None, compartment: tuple[str, str] | None) -> bool:
        """Whether a search's matches are filtered after the query (so its counts include what is dropped)."""
        if res_type is None:
            return compartment is None
        if acc.allowed("s", res_type) and acc.filters("s", res_type) is not None:
            return True
        return self.consents is not None and self.consents.any()

    @staticmethod
    def confined(acc: Access | None, interaction: str, res_type: str) -> bool:
        """Whether allowing the interaction depends on the resource's content (compartment, granular scopes)."""
        # refused whatever it holds (``permits`` says no), or allowed depending on what it holds
        return acc is not None and acc.reach(interaction, res_type) != ALL

    def check_body(self, interaction: str, res_type: str, res_id: str, body: str | None) -> None:
        """403 unless the caller may ``interaction`` this stored version (policy, then the patient's consent)."""
        acc = self.require(interaction, res_type, res_id)
        if acc is None:
            return
        if self.confined(acc, interaction, res_type):
            resource = orjson.loads(body) if body is not None else None
            if not self.permits(acc, interaction, res_type, resource):
                raise self.deny(interaction, res_type, res_id,
                                f"Access denied: {res_type}/{res_id} is outside what this caller may "
                                f"{_INTERACTION_NAMES[interaction]}")
        if body is not None and self.withheld(acc, interaction, res_type, res_id, body):
            raise self.deny(interaction, res_type, res_id,
                            f"Access denied: the patient's consent withholds {res_type}/{res_id} from this caller")

    def withheld(self, acc: Access, interaction: str, res_type: str, res_id: str, body: str) -> bool:
        """Whether an active Consent of the resource's patient denies it to the caller.

        Break-the-glass (a clinician or nurse in an emergency) lifts the denial for reads and
        searches, and every such override is logged as an alert and audited.
        """
        if self.consents is None or interaction not in "rs" or not self.consents.any():
            return False
        patient = patient_of(res_type, res_id, body)
        if patient is None or exempt(acc.principal, patient):
            return False
        denials = self.consents.denials(patient)
        if not denials:
            return False
        resource = orjson.loads(body)
        if not any(d.applies(acc.principal, resource) for d in denials):
            return False
        if acc.overrides_consent(interaction, res_type):
            log.warning("BREAK-THE-GLASS: %s read %s/%s against the consent of Patient/%s",
                        acc.principal.subject, res_type, res_id, patient)
            if self.auditor is not None:
                self.auditor.break_glass(res_type, res_id, patient)
            return False
        return True

    def check_write(
        self, res_type: str, res_id: str, resource: dict[str, Any] | None, old_body: str | None, exists: bool,
    ) -> None:
        """A create, update or delete: the new content and the old one must both be the caller's to write."""
        interaction = "d" if resource is None else "u" if exists else "c"
        acc = self.require(interaction, res_type, res_id)
        if acc is None:
            return
        if resource is not None and not self.permits(acc, interaction, res_type, resource):
            raise self.deny(interaction, res_type, res_id,
                            f"Access denied: the {res_type} written is outside what this caller may write")
        if exists and old_body is not None and not self.permits(acc, interaction, res_type, orjson.loads(old_body)):
            raise self.deny(interaction, res_type, res_id,
                            f"Access denied: {res_type}/{res_id} is outside what this caller may write")

    def search_scope(
        self, res_type: str | None, link_types: set[str], compartment: tuple[str, str] | None,
        types: tuple[str, ...] | None = None,
    ) -> tuple[Access | None, tuple[str, str] | None]:
        """Check a search and return the compartment it must run in (the caller's, when confined)."""
        acc = access()
        if acc is None:
            return None, compartment
        if res_type is not None:
            self.require("s", res_type)
        for t in sorted(link_types):
            if not acc.allowed("s", t):
                raise self.deny("s", res_type, None,
                                f"Access denied: the search reaches {t} (chain or _has), which is not granted")
        if res_type is None:
            # system search: confined like a type search when every type it may return is confined to one
            # patient (a patient's app); otherwise every entry is checked on the way out
            allowed = [t for t in (types or resource_types()) if acc.allowed("s", t)]
            patients = {acc.compartment("s", t) for t in allowed}
            if len(patients) == 1 and (patient := patients.pop()) is not None:
                if compartment is not None and compartment != ("Patient", patient):
                    raise self.deny("s", None, None, "Access denied: another patient's compartment")
                return acc, ("Patient", patient)
            return acc, compartment
        patient = acc.compartment("s", res_type)
        if patient is None:
            return acc, compartment
        if compartment is not None and compartment != ("Patient", patient):
            raise self.deny("s", res_type, None, "Access denied: another patient's compartment")
        return acc, ("Patient", patient)


_INTERACTION_NAMES = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
_AUDIT_INTERACTIONS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search-type"}


def link_types(q: SearchQuery) -> set[str]:
    """The types a search's chains and ``_has`` reach (what its conditions reveal something about)."""
    reached: set[str] = set()
    for clause in q.clauses:
        for link in clause.chain:
            reached.update((link.source_types or ()) if link.reverse else link.target_types)
    return reached
