"""Roles, scopes and their intersection; compartment confinement, granular filters and break-the-glass."""

from __future__ import annotations

from typing import Any

import pytest

from salus.security.policy import (
    OPERATIONS,
    ROLES,
    Access,
    compartment_types,
    in_patient_compartment,
    matches_granular,
    role_allows,
)
from salus.security.principal import ANONYMOUS, Principal

EVERYTHING = frozenset({"user/*.cruds"})
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB = f"{CATEGORY}|laboratory"
VITALS = f"{CATEGORY}|vital-signs"


def access(role: str | None, scopes: set[str] | frozenset[str] = EVERYTHING, **kw: Any) -> Access:
    return Access.of(Principal(subject="someone", role=role, scopes=frozenset(scopes), **kw))


def letters(a: Access, res_type: str) -> str:
    return "".join(i for i in "cruds" if a.allowed(i, res_type))


# --- the role table (with a token that would allow everything) ----------------------------------


def test_every_row_says_why() -> None:
    for role, rules in ROLES.items():
        assert rules, role
        for rule in rules:
            assert rule.why and set(rule.interactions) <= set("cruds"), (role, rule)


@pytest.mark.parametrize("res_type", ["Patient", "Observation", "AuditEvent", "SearchParameter", "Provenance"])
def test_admin_does_everything(res_type: str) -> None:
    assert letters(access("admin"), res_type) == "cruds"


@pytest.mark.parametrize(
    ("res_type", "expected"),
    [
        ("Patient", "cruds"),
        ("Observation", "cruds"),
        ("MedicationRequest", "cruds"),
        ("Condition", "cruds"),
        ("Appointment", "cruds"),
        ("Provenance", "cruds"),
        ("Consent", "cruds"),
        ("AuditEvent", ""),
        ("SearchParameter", "rs"),
        ("ValueSet", "rs"),
        ("Subscription", "rs"),
    ],
)
def test_clinician(res_type: str, expected: str) -> None:
    assert letters(access("clinician"), res_type) == expected


@pytest.mark.parametrize(
    ("res_type", "expected"),
    [
        ("Observation", "crus"),
        ("MedicationAdministration", "crus"),
        ("Flag", "crus"),
        ("Communication", "crus"),
        ("Task", "crus"),
        ("DocumentReference", "crus"),
        ("MedicationRequest", "rs"),
        ("Condition", "rs"),
        ("Patient", "rs"),
        ("Procedure", "rs"),
        ("AuditEvent", ""),
    ],
)
def test_nurse(res_type: str, expected: str) -> None:
    assert letters(access("nurse"), res_type) == expected


@pytest.mark.parametrize(
    ("res_type", "expected"),
    [
        ("Patient", "cruds"),
        ("RelatedPerson", "cruds"),
        ("Appointment", "cruds"),
        ("AppointmentResponse", "cruds"),
        ("Schedule", "cruds"),
        ("Slot", "cruds"),
        ("Coverage", "cruds"),
        ("Encounter", "cu"),
        ("Practitioner", "rs"),
        ("PractitionerRole", "rs"),
        ("Organization", "rs"),
        ("Location", "rs"),
        ("HealthcareService", "rs"),
        ("Observation", ""),
        ("Condition", ""),
        ("MedicationRequest", ""),
        ("DiagnosticReport", ""),
        ("AuditEvent", ""),
    ],
)
def test_receptionist(res_type: str, expected: str) -> None:
    assert letters(access("receptionist"), res_type) == expected


@pytest.mark.parametrize(
    ("res_type", "expected"),
    [("AuditEvent", "rs"), ("Provenance", "rs"), ("Patient", ""), ("Observation", ""), ("Practitioner", "")],
)
def test_auditor(res_type: str, expected: str) -> None:
    assert letters(access("auditor"), res_type) == expected


@pytest.mark.parametrize(
    ("res_type", "expected"),
    [("Observation", "cu"), ("Device", "r"), ("DeviceMetric", "r"), ("Patient", ""), ("Condition", "")],
)
def test_device(res_type: str, expected: str) -> None:
    assert letters(access("device", {"system/*.cruds"}, kind="system"), res_type) == expected


def test_integration_is_what_its_system_scopes_grant() -> None:
    a = access("integration", {"system/Patient.rs", "system/Observation.cruds"}, kind="system")
    assert letters(a, "Patient") == "rs"
    assert letters(a, "Observation") == "cruds"
    assert letters(a, "Condition") == ""


@pytest.mark.parametrize("role", [None, "", "superuser", "Admin"])
def test_unknown_or_missing_role_does_nothing(role: str | None) -> None:
    a = access(role, {"user/*.cruds", "system/*.cruds"})
    for res_type in ("Patient", "Observation", "AuditEvent"):
        assert letters(a, res_type) == ""
    assert not any(a.can_operation(op) for op in OPERATIONS)


def test_role_allows_directly() -> None:
    assert role_allows("nurse", "c", "Observation")
    assert not role_allows("nurse", "d", "Observation")
    assert not role_allows(None, "r", "Patient")


def test_unrestricted_principal_allows_everything() -> None:
    a = Access.of(ANONYMOUS)
    assert letters(a, "AuditEvent") == "cruds"
    assert a.compartment("r", "Observation") is None
    assert a.filters("s", "Observation") is None
    assert all(a.can_operation(op) for op in OPERATIONS)
    assert not a.can_operation("$nonsense")


def test_unknown_interaction_letter_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        access("admin").allowed("read", "Patient")
    with pytest.raises(ValueError):
        Access.of(ANONYMOUS).allowed("x", "Patient")


# --- scopes intersected with the role ------------------------------------------------------------


def test_scopes_narrow_the_role() -> None:
    a = access("clinician", {"user/Observation.rs", "user/Patient.r"})
    assert letters(a, "Observation") == "rs"
    assert letters(a, "Patient") == "r"
    assert letters(a, "Condition") == ""


def test_role_narrows_the_scopes() -> None:
    a = access("receptionist", {"user/*.cruds"})
    assert letters(a, "Observation") == ""
    a = access("nurse", {"user/Observation.cruds"})
    assert letters(a, "Observation") == "crus"


def test_no_scopes_no_access_whatever_the_role() -> None:
    a = access("admin", set())
    assert letters(a, "Patient") == ""
    assert not any(a.can_operation(op) for op in OPERATIONS)


def test_non_resource_and_invalid_scopes_grant_nothing() -> None:
    a = access("clinician", {"openid", "fhirUser", "launch/patient", "user/*.sr", "admin/*.cruds"})
    assert letters(a, "Patient") == ""


def test_v1_scopes_count_like_v2() -> None:
    a = access("clinician", {"user/*.read"})
    assert letters(a, "Observation") == "rs"
    a = access("clinician", {"user/Observation.write"})
    assert letters(a, "Observation") == "cud"


# --- compartment confinement -----------------------------------------------------------------------


def test_patient_scopes_confine_to_the_launch_patient() -> None:
    a = access("clinician", {"patient/*.rs"}, patient="p1")
    assert a.allowed("s", "Observation")
    assert a.compartment("s", "Observation") == "p1"
    assert a.compartment("r", "Patient") == "p1"
    # a type that is never in a Patient compartment cannot be reached through patient/ scopes
    assert not a.allowed("r", "Organization")


def test_patient_scopes_without_a_patient_context_allow_nothing() -> None:
    a = access("clinician", {"patient/*.cruds"})
    assert letters(a, "Observation") == ""
    assert letters(a, "Patient") == ""


def test_a_user_level_grant_lifts_the_confinement() -> None:
    a = access("clinician", {"patient/*.rs", "user/Observation.rs"}, patient="p1")
    assert a.compartment("s", "Observation") is None
    assert a.compartment("s", "Condition") == "p1"


def test_compartment_of_a_denied_interaction_fails_closed() -> None:
    a = access("receptionist", {"user/*.cruds"})
    with pytest.raises(PermissionError):
        a.compartment("r", "Observation")
    with pytest.raises(PermissionError):
        a.filters("r", "Observation")


def test_patient_role_is_confined_even_with_user_scopes() -> None:
    a = access("patient", {"user/*.cruds"}, fhir_user="Patient/p7")
    assert letters(a, "Observation") == "rs"
    assert letters(a, "Patient") == "rs"
    assert a.compartment("s", "Observation") == "p7"
    assert a.compartment("r", "Patient") == "p7"
    assert letters(a, "QuestionnaireResponse") == "crs"
    assert letters(a, "Communication") == "crs"
    assert a.compartment("c", "QuestionnaireResponse") == "p7"
    # not in the compartment, and not the audit trail
    assert letters(a, "Practitioner") == ""
    assert letters(a, "Organization") == ""
    assert letters(a, "AuditEvent") == ""


def test_patient_role_takes_the_launch_context_without_a_fhir_user() -> None:
    a = access("patient", {"patient/*.rs"}, patient="p7")
    assert a.compartment("r", "Observation") == "p7"


def test_patient_role_without_any_patient_gets_nothing() -> None:
    a = access("patient", {"user/*.cruds"}, fhir_user="Practitioner/x")
    assert letters(a, "Observation") == ""


def test_patient_role_launched_on_another_patient_gets_nothing() -> None:
    a = access("patient", {"patient/*.rs", "user/*.rs"}, fhir_user="Patient/p7", patient="p8")
    assert letters(a, "Observation") == ""


def test_patient_role_is_bound_by_its_scopes_too() -> None:
    a = access("patient", {"patient/Observation.rs"}, fhir_user="Patient/p7", patient="p7")
    assert letters(a, "Observation") == "rs"
    assert letters(a, "Condition") == ""
    assert letters(a, "QuestionnaireResponse") == ""


# --- granular filters -------------------------------------------------------------------------------


def test_filters_of_granular_patient_scopes() -> None:
    a = access("clinician", {f"patient/Observation.rs?category={LAB}", f"patient/Observation.rs?category={VITALS}"},
               patient="p1")
    assert a.compartment("s", "Observation") == "p1"
    assert a.filters("s", "Observation") == [(("category", LAB),), (("category", VITALS),)]


def test_an_unrestricted_grant_drops_the_filters() -> None:
    a = access("clinician", {f"patient/Observation.rs?category={LAB}", "patient/Observation.rs"}, patient="p1")
    assert a.filters("s", "Observation") is None


def test_mixed_levels_never_widen() -> None:
    # everyone's vital signs, and all of p1's observations: a single (compartment, filters) pair cannot say
    # "either", so the patient-level grant adds nothing rather than lift the filter for everyone
    a = access("clinician", {f"user/Observation.rs?category={VITALS}", "patient/Observation.rs"}, patient="p1")
    assert a.compartment("s", "Observation") is None
    assert a.filters("s", "Observation") == [(("category", VITALS),)]


def test_filters_of_the_patient_role_come_from_every_level() -> None:
    a = access("patient", {f"user/Observation.rs?category={LAB}"}, fhir_user="Patient/p7")
    assert a.compartment("s", "Observation") == "p7"
    assert a.filters("s", "Observation") == [(("category", LAB),)]


# --- break-the-glass -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["clinician", "nurse"])
def test_break_glass_lifts_consent_for_reads_only(role: str) -> None:
    a = access(role, break_glass=True)
    assert a.break_glass
    assert a.overrides_consent("r", "Observation")
    assert a.overrides_consent("s", "Condition")
    for letter in "cud":
        assert not a.overrides_consent(letter, "Observation")


@pytest.mark.parametrize("role", ["clinician", "nurse"])
def test_break_glass_never_opens_the_audit(role: str) -> None:
    a = access(role, break_glass=True)
    assert letters(a, "AuditEvent") == ""
    assert not a.overrides_consent("r", "AuditEvent")
    assert not a.can_operation("audit")


def test_break_glass_never_writes() -> None:
    a = access("nurse", break_glass=True)
    assert not a.allowed("d", "Observation")
    assert not a.allowed("c", "MedicationRequest")
    assert letters(a, "MedicationRequest") == "rs"


@pytest.mark.parametrize("role", ["receptionist", "auditor", "patient", "device", "admin"])
def test_break_glass_is_for_clinicians_and_nurses_only(role: str) -> None:
    a = access(role, break_glass=True, fhir_user="Patient/p7")
    assert not a.break_glass
    assert not a.overrides_consent("r", "Observation")
    if role == "receptionist":
        assert letters(a, "Observation") == ""


def test_break_glass_does_not_lift_scopes() -> None:
    a = access("clinician", {"patient/Observation.rs"}, patient="p1", break_glass=True)
    assert not a.allowed("r", "Condition")
    assert a.compartment("r", "Observation") == "p1"


def test_without_break_glass_consent_holds() -> None:
    assert not access("clinician").overrides_consent("r", "Observation")


# --- operations ------------------------------------------------------------------------------------


def test_admin_operations() -> None:
    a = access("admin", {"user/*.cruds"})
    assert all(a.can_operation(op) for op in OPERATIONS)
    assert not a.can_operation("$everything-else")


def test_admin_operations_need_matching_unconfined_grants() -> None:
    a = access("admin", {"user/*.rs"})
    assert not a.can_operation("$erase")
    assert not a.can_operation("$reindex")
    assert a.can_operation("$export")
    assert a.can_operation("audit")
    # a patient-launched app never runs server-wide operations
    a = access("admin", {"patient/*.cruds"}, patient="p1")
    assert not any(a.can_operation(op) for op in OPERATIONS)


@pytest.mark.parametrize("role", ["clinician", "nurse", "receptionist", "patient", "device"])
def test_other_roles_run_no_admin_operation(role: str) -> None:
    a = access(role, {"user/*.cruds", "system/*.cruds"}, fhir_user="Patient/p7")
    assert not a.can_operation("$erase")
    assert not a.can_operation("$reindex")
    assert not a.can_operation("$export")
    assert not a.can_operation("audit")


def test_auditor_reads_the_audit_only() -> None:
    a = access("auditor", {"user/*.rs"})
    assert a.can_operation("audit")
    assert not a.can_operation("$export")
    assert not a.can_operation("$erase")


def test_integration_exports_with_system_read_scopes() -> None:
    assert access("integration", {"system/*.read"}, kind="system").can_operation("$export")
    assert not access("integration", {"system/*.read"}, kind="system").can_operation("$erase")
    assert not access("integration", {"system/*.c"}, kind="system").can_operation("$export")


# --- in_patient_compartment --------------------------------------------------------------------------


def test_compartment_types_come_from_the_definition() -> None:
    types = compartment_types()
    assert {"Patient", "Observation", "Encounter", "Condition"} <= types
    assert "Organization" not in types and "Practitioner" not in types


def test_observation_by_subject() -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/p1"}}
    assert in_patient_compartment(obs, "p1")
    assert not in_patient_compartment(obs, "p2")


def test_observation_by_performer() -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/p1"}, "performer": [{"reference": "Patient/p2"}]}
    assert in_patient_compartment(obs, "p2")


def test_observation_about_a_group_or_without_subject() -> None:
    assert not in_patient_compartment(
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Group/p1"}},
        "p1",
    )
    assert not in_patient_compartment({"resourceType": "Observation", "status": "final"}, "p1")


def test_encounter_by_subject() -> None:
    enc = {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
           "subject": {"reference": "Patient/p1"}}
    assert in_patient_compartment(enc, "p1")
    assert not in_patient_compartment(enc, "p2")


def test_versioned_references_count() -> None:
    enc = {"resourceType": "Encounter", "status": "finished", "subject": {"reference": "Patient/p1/_history/3"}}
    assert in_patient_compartment(enc, "p1")


def test_patient_is_in_its_own_compartment() -> None:
    assert in_patient_compartment({"resourceType": "Patient", "id": "p1"}, "p1")
    assert not in_patient_compartment({"resourceType": "Patient", "id": "p2"}, "p1")


def test_patient_linked_to_another() -> None:
    other = {"resourceType": "Patient", "id": "p2", "link": [{"other": {"reference": "Patient/p1"}, "type": "seealso"}]}
    assert in_patient_compartment(other, "p1")


def test_organization_is_never_in_a_patient_compartment() -> None:
    org = {"resourceType": "Organization", "id": "p1", "name": "Patient/p1"}
    assert not in_patient_compartment(org, "p1")


def test_odd_input_is_not_in_the_compartment() -> None:
    assert not in_patient_compartment({}, "p1")
    assert not in_patient_compartment({"resourceType": "NotAType", "subject": {"reference": "Patient/p1"}}, "p1")


# --- matches_granular ----------------------------------------------------------------------------------


def _observation(*categories: tuple[str | None, str], status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": status,
        "category": [{"coding": [{"system": s, "code": c} if s else {"code": c}]} for s, c in categories],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": "Patient/p1"},
    }


def test_system_and_code() -> None:
    lab = _observation((CATEGORY, "laboratory"))
    assert matches_granular(lab, (("category", LAB),))
    assert not matches_granular(lab, (("category", VITALS),))
    assert not matches_granular(_observation(("http://other.org", "laboratory")), (("category", LAB),))


def test_code_alone_and_system_alone() -> None:
    lab = _observation((CATEGORY, "laboratory"))
    assert matches_granular(lab, (("category", "laboratory"),))
    assert matches_granular(lab, (("category", f"{CATEGORY}|"),))
    assert not matches_granular(lab, (("category", "http://other.org|"),))


def test_code_without_system() -> None:
    assert matches_granular(_observation((None, "laboratory")), (("category", "|laboratory"),))
    assert not matches_granular(_observation((CATEGORY, "laboratory")), (("category", "|laboratory"),))


def test_any_of_several_categories() -> None:
    both = _observation((CATEGORY, "vital-signs"), (CATEGORY, "laboratory"))
    assert matches_granular(both, (("category", LAB),))


def test_comma_separated_values_are_alternatives() -> None:
    lab = _observation((CATEGORY, "laboratory"))
    assert matches_granular(lab, (("category", f"{VITALS},{LAB}"),))
    assert not matches_granular(lab, (("category", f"{VITALS},{CATEGORY}|imaging"),))


def test_every_parameter_must_match() -> None:
    lab = _observation((CATEGORY, "laboratory"), status="preliminary")
    assert matches_granular(lab, (("category", LAB), ("code", "http://loinc.org|2345-7")))
    assert not matches_granular(lab, (("category", LAB), ("status", "final")))
    assert matches_granular(lab, (("category", LAB), ("status", "preliminary")))


def test_no_category_no_match() -> None:
    bare = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert not matches_granular(bare, (("category", LAB),))


def test_what_cannot_be_evaluated_denies() -> None:
    lab = _observation((CATEGORY, "laboratory"))
    assert not matches_granular(lab, (("subject", "Patient/p1"),))  # a reference parameter
    assert not matches_granular(lab, (("date", "2020"),))  # a date parameter
    assert not matches_granular(lab, (("no-such-param", "x"),))
    assert not matches_granular(lab, (("category:not", LAB),))  # modifiers are not understood
    assert not matches_granular(lab, (("category", "a|b|c"),))
    assert not matches_granular(lab, (("category", "|"),))
    assert not matches_granular(lab, ())
    assert not matches_granular({"status": "final"}, (("status", "final"),))
