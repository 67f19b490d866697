"""Who may do what: the roles' table, combined with the token's SMART scopes.

A request's right to an interaction on a resource type is what its scopes grant
(``salus.security.scopes``) *and* what its role allows: a token can only narrow a
role (an app asking for ``user/*.cruds`` on behalf of a receptionist still sees
no Observation), and a role can only narrow a token. ``Access.of(principal)``
works this out once per request; the service asks it before each interaction
and applies the confinement it names (a Patient compartment, granular queries)
to what it reads, searches and writes.

Pure logic: no HTTP, no database. ``in_patient_compartment`` and
``matches_granular`` check one resource, using the same extraction the search
index uses, so that what a read allows is what a search would have found.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from salus.fhir.definitions import patient_compartment, resource_types
from salus.search.indexing import index_rows
from salus.search.registry import search_parameters
from salus.search.types import split_unescaped, unescape
from salus.security.principal import Principal
from salus.security.scopes import Grants, Query, check_interaction

# Infrastructure that changes how the server itself behaves (a SearchParameter
# re-indexes, a StructureDefinition changes validation, a CompartmentDefinition
# or Subscription changes who sees or receives what) and terminology the whole
# hospital shares: everyone who works with data may read them, only an
# administrator (or an integration allowed by its scopes) changes them.
CONFORMANCE = frozenset({
    "CapabilityStatement", "StructureDefinition", "ImplementationGuide", "SearchParameter", "MessageDefinition",
    "OperationDefinition", "CompartmentDefinition", "StructureMap", "GraphDefinition", "ExampleScenario",
    "TerminologyCapabilities", "CodeSystem", "ValueSet", "ConceptMap", "NamingSystem", "TestScript", "TestReport",
    "Subscription",
})
AUDIT = frozenset({"AuditEvent"})
NURSING_WRITES = frozenset({
    "Observation", "MedicationAdministration", "Flag", "Communication", "Task", "DocumentReference",
})
FRONT_DESK = frozenset({
    "Patient", "RelatedPerson", "Appointment", "AppointmentResponse", "Schedule", "Slot", "Coverage",
})
DIRECTORY = frozenset({"Practitioner", "PractitionerRole", "Organization", "Location", "HealthcareService"})
# roles break-the-glass applies to: those who treat patients in an emergency
BREAK_GLASS_ROLES = frozenset({"clinician", "nurse"})
OPERATIONS = ("$erase", "$reindex", "$export", "audit")


@cache
def compartment_types() -> frozenset[str]:
    """Types that can be in a Patient compartment (those of the R4 CompartmentDefinition, and Patient)."""
    return frozenset(patient_compartment()) | {"Patient"}


@dataclass(frozen=True)
class Rule:
    """One row of a role: these interaction letters on these types (None: every type) but those excluded."""

    interactions: str
    types: frozenset[str] | None
    why: str
    exclude: frozenset[str] = frozenset()

    def allows(self, interaction: str, res_type: str) -> bool:
        """Whether the row covers the interaction on the type."""
        return (
            interaction in self.interactions
            and (self.types is None or res_type in self.types)
            and res_type not in self.exclude
        )


def _patient_rows() -> tuple[Rule, ...]:
    types = compartment_types()
    return (
        Rule("rs", types, "a patient reads their own record (confined to their compartment by Access); "
             "the audit trail stays with the admin and the auditor", exclude=AUDIT),
        Rule("c", frozenset({"QuestionnaireResponse", "Communication"}) & types,
             "a patient answers questionnaires and writes to their care team, in their own compartment"),
    )


ROLES: dict[str, tuple[Rule, ...]] = {
    "admin": (
        Rule("cruds", None, "runs the server: fixes any record, manages conformance resources and the audit"),
    ),
    "clinician": (
        Rule("cruds", None, "treats patients: reads and records everything clinical and administrative",
             exclude=AUDIT | CONFORMANCE),
        Rule("rs", CONFORMANCE, "reads the shared terminology and profiles, does not reconfigure the server"),
    ),
    "nurse": (
        Rule("rs", None, "cares for patients: needs the whole record, but not the audit trail", exclude=AUDIT),
        Rule("cu", NURSING_WRITES,
             "records vitals, administrations, flags, messages, tasks and notes; orders and diagnoses are "
             "the clinician's; nothing is deleted at the bedside"),
    ),
    "receptionist": (
        Rule("cruds", FRONT_DESK, "registers patients and their contacts, books appointments, records coverage"),
        Rule("cu", frozenset({"Encounter"}),
             "checks patients in and out; an encounter's reasons and diagnoses are clinical, so not read"),
        Rule("rs", DIRECTORY, "finds the right practitioner, service and place to book"),
        Rule("rs", CONFORMANCE, "reads the shared terminology its forms need"),
    ),
    "patient": _patient_rows(),
    "auditor": (
        Rule("rs", AUDIT | {"Provenance"}, "reviews who did what; sees no clinical data itself"),
    ),
    "device": (
        Rule("cu", frozenset({"Observation"}), "a monitor or instrument sends (and corrects) its measurements"),
        Rule("r", frozenset({"Device", "DeviceMetric"}), "a device reads its own registration and calibration"),
    ),
    "integration": (
        Rule("cruds", None, "a backend service is confined by the system scopes its client was granted"),
    ),
}


def role_allows(role: str | None, interaction: str, res_type: str) -> bool:
    """Whether the role's table allows the interaction letter on the type (unknown or no role: nothing)."""
    return any(rule.allows(interaction, res_type) for rule in ROLES.get(role or "", ()))


def _own_patient(principal: Principal) -> str | None:
    """The Patient a patient-role user is: their ``fhirUser`` when it names a Patient, else the launch context."""
    fhir_user = principal.fhir_user or ""
    kind, _, pid = fhir_user.partition("/")
    if kind == "Patient" and pid:
        return pid
    return principal.patient


# Access.reach: how much of a type an interaction reaches
NOTHING, SOME, ALL = 0, 1, 2


@dataclass(frozen=True)
class Access:
    """What one request's principal may do, computed once from its role and scopes."""

    principal: Principal
    grants: Grants
    # the Patient every patient-level grant (or, for the patient role, every grant) is confined to
    patient: str | None
    # the patient role is confined whatever the level of its scopes
    patient_role: bool
    break_glass: bool
    # _levels answers by (interaction, type): the same few questions are asked several times a request
    _memo: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict, compare=False, repr=False)
    _reach: dict[tuple[str, str], int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, principal: Principal) -> Access:
        """The access of ``principal`` (once per request)."""
        patient_role = principal.role == "patient"
        patient = principal.patient
        if patient_role:
            own = _own_patient(principal)
            # a patient's token launched on someone else's record is incoherent: it grants nothing
            patient = own if principal.patient in (None, own) else None
        return cls(
            principal=principal,
            # sorted: a frozenset's order varies between processes, and filters feed cached SQL
            grants=Grants.of(sorted(principal.scopes)),
            patient=patient,
            patient_role=patient_role,
            break_glass=principal.break_glass and principal.role in BREAK_GLASS_ROLES,
        )

    def _role_allows(self, interaction: str, res_type: str) -> bool:
        if role_allows(self.principal.role, interaction, res_type):
            return True
        # break-the-glass: any record may be read in an emergency, never written, never the audit trail
        return self.break_glass and interaction in "rs" and res_type not in AUDIT

    def _levels(self, interaction: str, res_type: str) -> frozenset[str]:
        """The levels of the grants that allow the interaction once the role and confinement are applied."""
        key = (interaction, res_type)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = frozenset(self._compute_levels(interaction, res_type))
        return found

    def _compute_levels(self, interaction: str, res_type: str) -> set[str]:
        if not self._role_allows(interaction, res_type):
            return set()
        levels = self.grants.levels(interaction, res_type)
        confined_types = compartment_types()
        if self.patient is None or res_type not in confined_types:
            # patient-level access is access to one compartment: without a patient, or for a type that is
            # never in a compartment, it reaches nothing
            levels.discard("patient")
        if self.patient_role and (self.patient is None or res_type not in confined_types):
            return set()
        return levels

    def allowed(self, interaction: str, res_type: str) -> bool:
        """Whether the interaction letter (c r u d s) on ``res_type`` is allowed at any level."""
        check_interaction(interaction)
        if self.principal.unrestricted:
            return True
        return bool(self._levels(interaction, res_type))

    def compartment(self, interaction: str, res_type: str) -> str | None:
        """The Patient id the interaction is confined to; None when it is not confined.

        Confined when every grant allowing it is patient-level, or always for the
        patient role. Fails closed: asking about a denied interaction raises
        ``PermissionError`` rather than answer "not confined".
        """
        check_interaction(interaction)
        if self.principal.unrestricted:
            return None
        levels = self._levels(interaction, res_type)
        if not levels:
            raise PermissionError(f"{interaction!r} on {res_type} is not allowed: ask allowed() first")
        if self.patient_role or levels == {"patient"}:
            return self.patient
        return None

    def filters(self, interaction: str, res_type: str) -> list[Query] | None:
        """The granular queries of the grants that allow the interaction (any one suffices); None: none apply.

        Only the grants at the levels ``compartment`` answered for count: with
        both ``user/Observation.rs?category=vital-signs`` and
        ``patient/Observation.rs``, the request sees every patient's vital signs
        but not the launch patient's other observations (a narrowing, never a
        widening: one compartment and one filter cannot say "either").
        """
        check_interaction(interaction)
        if self.principal.unrestricted:
            return None
        levels = self._levels(interaction, res_type)
        if not levels:
            raise PermissionError(f"{interaction!r} on {res_type} is not allowed: ask allowed() first")
        if not self.patient_role and levels != {"patient"}:
            levels = levels - {"patient"}
        out: list[Query] = []
        for level in sorted(levels):
            found = self.grants.filters(interaction, res_type, level)
            if found is None:
                return None
            out.extend(q for q in found if q not in out)
        return out

    def reach(self, interaction: str, res_type: str) -> int:
        """``NOTHING``, ``SOME`` (confined to a compartment or by granular scopes: the content decides) or ``ALL``.

        Remembered: a read asks it of every request, and the three questions it stands for
        (allowed, compartment, filters) cost more than the rest of the policy check.
        """
        key = (interaction, res_type)
        found = self._reach.get(key)
        if found is None:
            if not self.allowed(interaction, res_type):
                found = NOTHING
            elif self.compartment(interaction, res_type) is None and self.filters(interaction, res_type) is None:
                found = ALL
            else:
                found = SOME
            self._reach[key] = found
        return found

    def overrides_consent(self, interaction: str, res_type: str) -> bool:
        """Whether break-the-glass lifts consent restrictions for this interaction (reads and searches only)."""
        return self.break_glass and interaction in "rs" and res_type not in AUDIT and self.allowed(interaction, res_type)

    def _any_unconfined(self, interactions: str, types: Iterable[str]) -> bool:
        return any(
            self._levels(i, t) - {"patient"} and not self.patient_role for i in interactions for t in types
        )

    def can_operation(self, name: str) -> bool:
        """Whether the principal may run ``$erase``, ``$reindex``, ``$export`` or read and verify the ``audit``.

        Each needs its role and a user- or system-level grant of what it does (a
        patient-launched app never runs a server-wide operation): ``$erase``
        purges history beyond a delete, so only an admin with delete rights;
        ``$reindex`` rewrites every index row, so only an admin with update
        rights; ``$export`` copies data in bulk, so an admin or a backend
        integration with read rights (the exported types are each checked again);
        ``audit`` is the tamper-evident trail, for the admin and the auditor.
        """
        if self.principal.unrestricted:
            return name in OPERATIONS
        role = self.principal.role
        every = resource_types()
        if name == "$erase":
            return role == "admin" and self._any_unconfined("d", every)
        if name == "$reindex":
            return role == "admin" and self._any_unconfined("u", every)
        if name == "$export":
            return role in ("admin", "integration") and self._any_unconfined("r", every)
        if name == "audit":
            return role in ("admin", "auditor") and self._any_unconfined("rs", AUDIT)
        return False


# --- one resource against a confinement ---------------------------------------------------------


def in_patient_compartment(resource: dict[str, Any], patient_id: str) -> bool:
    """Whether ``resource`` is in Patient/``patient_id``'s compartment (R4 CompartmentDefinition for Patient).

    The parameters the definition names are read from the resource's index rows,
    so a reference counts here exactly when a compartment search would find it.
    """
    res_type = resource.get("resourceType")
    if res_type == "Patient" and resource.get("id") == patient_id:
        return True
    params = patient_compartment().get(res_type) if isinstance(res_type, str) else None
    if not params:
        return False
    wanted = set(params)
    for row in index_rows(resource).get("idx_reference", ()):
        # (param, grp, target_type, target_id, target_version, url)
        if row[0] in wanted and row[2] == "Patient" and row[3] == patient_id:
            return True
    return False


def _token_matches(value: str, rows: list[tuple[Any, ...]]) -> bool:
    """Whether one token value (``code``, ``system|code``, ``|code``, ``system|``) matches some row."""
    parts = split_unescaped(value, "|")
    if len(parts) == 1:
        code = unescape(parts[0])
        return bool(code) and any(r[3] == code for r in rows)
    if len(parts) != 2:
        return False
    system, code = unescape(parts[0]) or None, unescape(parts[1]) or None
    if system is None and code is None:
        return False
    # row: (param, grp, system, code, text); '|code' means "no system", 'system|' any code of it
    return any(r[2] == system and (code is None or r[3] == code) for r in rows)


def matches_granular(resource: dict[str, Any], query: Query | Iterable[tuple[str, str]]) -> bool:
    """Whether ``resource`` satisfies a granular scope's query: every parameter, any of its comma-separated values.

    Only plain token parameters are understood; any other type, a modifier or
    an unknown parameter makes the query match nothing, so a filter this server
    cannot evaluate denies rather than allows.
    """
    res_type = resource.get("resourceType")
    if not isinstance(res_type, str):
        return False
    params = search_parameters(res_type)
    tokens = index_rows(resource).get("idx_token", [])
    pairs = list(query)
    if not pairs:
        return False
    for name, value in pairs:
        p = params.get(name)
        if p is None or p.get("type") != "token":
            return False
        rows = [r for r in tokens if r[0] == name]
        if not any(_token_matches(v, rows) for v in split_unescaped(value, ",")):
            return False
    return True

