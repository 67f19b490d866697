"""Tests of the demo population generator: reproducibility, referential integrity, validity and plausibility."""

from __future__ import annotations

import itertools
import json
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

import pytest

from salus import demo

Resource = dict[str, Any]

ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
REFERENCE = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})")
DATE = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")
SHARED = {"Organization", "Location", "Practitioner", "PractitionerRole"}

# Every reference the generator may produce: (source type, element path) -> allowed target types.
ALLOWED_TARGETS: dict[tuple[str, str], set[str]] = {
    ("Organization", "partOf"): {"Organization"},
    ("Location", "managingOrganization"): {"Organization"},
    ("Location", "partOf"): {"Location"},
    ("PractitionerRole", "practitioner"): {"Practitioner"},
    ("PractitionerRole", "organization"): {"Organization"},
    ("PractitionerRole", "location"): {"Location"},
    ("Patient", "identifier.assigner"): {"Organization"},
    ("Patient", "generalPractitioner"): {"Practitioner", "PractitionerRole", "Organization"},
    ("Patient", "managingOrganization"): {"Organization"},
    ("Encounter", "subject"): {"Patient"},
    ("Encounter", "participant.individual"): {"Practitioner", "PractitionerRole"},
    ("Encounter", "location.location"): {"Location"},
    ("Encounter", "serviceProvider"): {"Organization"},
    ("Condition", "subject"): {"Patient"},
    ("Condition", "encounter"): {"Encounter"},
    ("Condition", "recorder"): {"Practitioner", "PractitionerRole"},
    ("Observation", "subject"): {"Patient"},
    ("Observation", "encounter"): {"Encounter"},
    ("DiagnosticReport", "subject"): {"Patient"},
    ("DiagnosticReport", "encounter"): {"Encounter"},
    ("DiagnosticReport", "performer"): {"Organization", "Practitioner", "PractitionerRole"},
    ("DiagnosticReport", "result"): {"Observation"},
    ("MedicationRequest", "subject"): {"Patient"},
    ("MedicationRequest", "encounter"): {"Encounter"},
    ("MedicationRequest", "requester"): {"Practitioner", "PractitionerRole"},
    ("MedicationRequest", "reasonReference"): {"Condition", "Observation"},
    ("AllergyIntolerance", "patient"): {"Patient"},
    ("AllergyIntolerance", "encounter"): {"Encounter"},
    ("AllergyIntolerance", "recorder"): {"Practitioner", "PractitionerRole"},
    ("Immunization", "patient"): {"Patient"},
    ("Immunization", "encounter"): {"Encounter"},
    ("Immunization", "location"): {"Location"},
    ("Immunization", "performer.actor"): {"Practitioner", "PractitionerRole", "Organization"},
    ("Procedure", "subject"): {"Patient"},
    ("Procedure", "encounter"): {"Encounter"},
    ("Procedure", "performer.actor"): {"Practitioner", "PractitionerRole", "Organization"},
    ("Procedure", "location"): {"Location"},
    ("Procedure", "reasonReference"): {"Condition", "Observation"},
}

# R4 minimum cardinalities plus what a realistic record should always carry.
REQUIRED: dict[str, tuple[str, ...]] = {
    "Organization": ("identifier", "name", "active"),
    "Location": ("name", "status", "managingOrganization", "address"),
    "Practitioner": ("identifier", "name", "gender"),
    "PractitionerRole": ("practitioner", "organization", "specialty"),
    "Patient": (
        "identifier",
        "name",
        "gender",
        "birthDate",
        "address",
        "telecom",
        "communication",
        "generalPractitioner",
    ),
    "Encounter": ("status", "class", "type", "subject", "participant", "period", "location", "serviceProvider"),
    "Condition": (
        "clinicalStatus",
        "verificationStatus",
        "category",
        "code",
        "subject",
        "encounter",
        "onsetDateTime",
        "recordedDate",
    ),
    "Observation": ("status", "category", "code", "subject", "encounter", "effectiveDateTime"),
    "DiagnosticReport": ("status", "category", "code", "subject", "encounter", "effectiveDateTime", "issued", "result"),
    "MedicationRequest": (
        "status",
        "intent",
        "medicationCodeableConcept",
        "subject",
        "encounter",
        "authoredOn",
        "requester",
        "dosageInstruction",
    ),
    "AllergyIntolerance": ("clinicalStatus", "verificationStatus", "code", "patient", "category"),
    "Immunization": ("status", "vaccineCode", "patient", "occurrenceDateTime", "primarySource"),
    "Procedure": ("status", "code", "subject", "encounter", "performedPeriod"),
}

# LOINC vital sign -> UCUM unit.
VITAL_UNITS = {
    "8867-4": "/min",
    "9279-1": "/min",
    "8310-5": "Cel",
    "59408-5": "%",
    "29463-7": "kg",
    "8302-2": "cm",
    "39156-5": "kg/m2",
}
BP_COMPONENTS = {"8480-6", "8462-4"}
LAB_UNITS = {m.code: m.ucum for m in demo.LABS.values()}


@pytest.fixture(scope="module")
def population() -> list[Resource]:
    """A small population shared by the read-only tests."""
    return list(demo.generate(60, seed=11))


def _dump(resources: list[Resource]) -> str:
    return json.dumps(resources, sort_keys=True, ensure_ascii=False)


def _references(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every Reference.reference below ``node``, with its element path (array positions dropped)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield path, value
            else:
                yield from _references(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item, path)


def _strings(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """Every (key, string value) below ``node``."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, k)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item, key)
    elif isinstance(node, str):
        yield key, node


def _by_patient(resources: list[Resource]) -> dict[str, list[Resource]]:
    """Each patient's id and the resources that follow it (the Patient included)."""
    groups: dict[str, list[Resource]] = {}
    current: list[Resource] | None = None
    for r in resources:
        if r["resourceType"] == "Patient":
            current = groups.setdefault(r["id"], [])
        if current is not None:
            current.append(r)
    return groups


def _coding(concept: dict[str, Any], system: str) -> dict[str, Any]:
    """The first coding of ``concept`` from ``system``."""
    return next(c for c in concept["coding"] if c["system"] == system)


# --- reproducibility ------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_output() -> None:
    assert _dump(list(demo.generate(15, seed=7))) == _dump(list(demo.generate(15, seed=7)))


def test_different_seeds_differ() -> None:
    a = list(demo.generate(10, seed=1))
    b = list(demo.generate(10, seed=2))
    assert _dump(a) != _dump(b)
    assert not {r["id"] for r in a} & {r["id"] for r in b}
    patients_a = [(p["name"][0]["text"], p["birthDate"]) for p in a if p["resourceType"] == "Patient"]
    patients_b = [(p["name"][0]["text"], p["birthDate"]) for p in b if p["resourceType"] == "Patient"]
    assert patients_a != patients_b


def test_patients_do_not_depend_on_population_size() -> None:
    small = list(demo.generate(5, seed=4))
    large = list(demo.generate(20, seed=4))
    assert _dump(small) == _dump(large[: len(small)])
    assert sum(r["resourceType"] == "Patient" for r in small) == 5


def test_generation_is_lazy() -> None:
    # A billion patients would never finish if the generator were not streaming.
    first = list(itertools.islice(demo.generate(10**9, seed=3), 500))
    assert len(first) == 500


def test_zero_patients_yields_only_the_shared_pool() -> None:
    pool = list(demo.generate(0))
    assert len(pool) == demo.POOL_SIZE
    assert {r["resourceType"] for r in pool} == SHARED
    with pytest.raises(ValueError):
        list(demo.generate(-1))


# --- identity and references ----------------------------------------------------------------------------------


def test_ids_are_valid_and_unique(population: list[Resource]) -> None:
    seen: set[tuple[str, str]] = set()
    for r in population:
        assert ID.fullmatch(r["id"]), r["id"]
        key = (r["resourceType"], r["id"])
        assert key not in seen, key
        seen.add(key)


def test_shared_resources_come_first(population: list[Resource]) -> None:
    types = [r["resourceType"] for r in population]
    first_patient = types.index("Patient")
    assert set(types[:first_patient]) == SHARED
    assert not SHARED & set(types[first_patient:])


def test_every_reference_resolves_to_an_earlier_resource_of_an_allowed_type(population: list[Resource]) -> None:
    earlier: set[str] = set()
    patient: str | None = None
    encounters: set[str] = set()  # of the current patient
    for r in population:
        rtype = r["resourceType"]
        if rtype == "Patient":
            patient, encounters = f"Patient/{r['id']}", set()
        for path, ref in _references(r):
            match = REFERENCE.fullmatch(ref)
            assert match, f"{rtype}.{path}: {ref!r} is not a relative Type/id reference"
            allowed = ALLOWED_TARGETS.get((rtype, path))
            assert allowed is not None, f"unexpected reference element {rtype}.{path}"
            assert match.group(1) in allowed, f"{rtype}.{path} -> {ref}"
            assert ref in earlier, f"{rtype}/{r['id']}.{path} -> {ref} does not point backwards"
            # A patient's records never point at another patient or another patient's encounters.
            if match.group(1) == "Patient":
                assert ref == patient
            if match.group(1) == "Encounter":
                assert ref in encounters
        earlier.add(f"{rtype}/{r['id']}")
        if rtype == "Encounter":
            encounters.add(f"Encounter/{r['id']}")


def test_diagnostic_reports_group_their_laboratory_observations(population: list[Resource]) -> None:
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in population}
    reports = [r for r in population if r["resourceType"] == "DiagnosticReport"]
    assert reports
    panels = {code for code, _display, _members in demo.PANELS.values()}
    for report in reports:
        assert _coding(report["code"], demo.LOINC)["code"] in panels
        for result in report["result"]:
            obs = by_ref[result["reference"]]
            assert obs["encounter"] == report["encounter"]
            assert obs["effectiveDateTime"] == report["effectiveDateTime"]
            assert _coding(obs["category"][0], demo.OBS_CATEGORY)["code"] == "laboratory"


# --- content --------------------------------------------------------------------------------------------------


def test_required_elements_present(population: list[Resource]) -> None:
    seen_types = set()
    for r in population:
        seen_types.add(r["resourceType"])
        for element in REQUIRED[r["resourceType"]]:
            assert r.get(element) not in (None, "", [], {}), f"{r['resourceType']}/{r['id']} lacks {element}"
        if r["resourceType"] == "Observation":
            assert ("valueQuantity" in r) != ("component" in r)
    assert seen_types == set(REQUIRED)


def test_required_bindings_use_the_right_codes_and_systems(population: list[Resource]) -> None:
    for r in population:
        rtype = r["resourceType"]
        if rtype in ("Patient", "Practitioner"):
            assert r["gender"] in {"male", "female", "other", "unknown"}
        elif rtype == "Encounter":
            assert r["status"] == "finished"
            assert r["class"]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActCode"
            assert r["class"]["code"] in {"AMB", "IMP", "EMER"}
            assert _coding(r["type"][0], demo.SNOMED)
        elif rtype == "Condition":
            assert _coding(r["clinicalStatus"], demo.COND_CLINICAL)["code"] in {"active", "resolved"}
            assert _coding(r["verificationStatus"], demo.COND_VERIFICATION)["code"] == "confirmed"
            assert _coding(r["code"], demo.SNOMED)
            # con-4: an abated condition is no longer active.
            if "abatementDateTime" in r:
                assert _coding(r["clinicalStatus"], demo.COND_CLINICAL)["code"] == "resolved"
        elif rtype == "Observation":
            assert r["status"] == "final"
        elif rtype == "MedicationRequest":
            assert r["status"] in {"active", "completed"}
            assert r["intent"] == "order"
            assert _coding(r["medicationCodeableConcept"], demo.RXNORM)
        elif rtype == "AllergyIntolerance":
            assert _coding(r["clinicalStatus"], demo.ALLERGY_CLINICAL)["code"] == "active"
            assert _coding(r["verificationStatus"], demo.ALLERGY_VERIFICATION)["code"] == "confirmed"
            assert r["code"]["coding"][0]["system"] in {demo.SNOMED, demo.RXNORM}
            assert r["category"][0] in {"food", "medication", "environment"}
        elif rtype == "Immunization":
            assert r["status"] == "completed"
            assert _coding(r["vaccineCode"], demo.CVX)
        elif rtype == "Procedure":
            assert r["status"] == "completed"
            assert _coding(r["code"], demo.SNOMED)
        elif rtype == "DiagnosticReport":
            assert r["status"] == "final"


def test_patient_identifiers_and_names(population: list[Resource]) -> None:
    patients = [r for r in population if r["resourceType"] == "Patient"]
    mrns = [p["identifier"][0]["value"] for p in patients]
    assert all(p["identifier"][0]["system"] == "http://salus.example.org/mrn" for p in patients)
    assert len(set(mrns)) == len(mrns)
    assert all(p["name"][0]["family"] and p["name"][0]["given"] for p in patients)
    npis = [r["identifier"][0]["value"] for r in population if r["resourceType"] == "Practitioner"]
    assert all(len(n) == 10 and n.isdigit() for n in npis)


def test_vital_signs_are_loinc_coded_ucum_quantities(population: list[Resource]) -> None:
    vitals = [
        r
        for r in population
        if r["resourceType"] == "Observation" and _coding(r["category"][0], demo.OBS_CATEGORY)["code"] == "vital-signs"
    ]
    assert len(vitals) > 100
    seen = set()
    for obs in vitals:
        code = _coding(obs["code"], demo.LOINC)["code"]
        seen.add(code)
        if code == "85354-9":
            assert "valueQuantity" not in obs
            components = {_coding(c["code"], demo.LOINC)["code"]: c["valueQuantity"] for c in obs["component"]}
            assert set(components) == BP_COMPONENTS
            for quantity in components.values():
                assert quantity["system"] == demo.UCUM and quantity["code"] == "mm[Hg]"
            assert components["8480-6"]["value"] > components["8462-4"]["value"]
            continue
        assert code in VITAL_UNITS, code
        quantity = obs["valueQuantity"]
        assert quantity["system"] == demo.UCUM
        assert quantity["code"] == VITAL_UNITS[code]
        assert isinstance(quantity["value"], int | float)
        if code == "59408-5":
            assert "2708-6" in {c["code"] for c in obs["code"]["coding"]}
    assert seen == set(VITAL_UNITS) | {"85354-9"}


def test_laboratory_results_are_ucum_quantities_with_reference_ranges(population: list[Resource]) -> None:
    labs = [
        r
        for r in population
        if r["resourceType"] == "Observation" and _coding(r["category"][0], demo.OBS_CATEGORY)["code"] == "laboratory"
    ]
    assert labs
    for obs in labs:
        code = _coding(obs["code"], demo.LOINC)["code"]
        quantity = obs["valueQuantity"]
        assert quantity["system"] == demo.UCUM and quantity["code"] == LAB_UNITS[code]
        (reference_range,) = obs["referenceRange"]
        assert "low" in reference_range or "high" in reference_range  # obs-3
        for flag in obs.get("interpretation", []):
            value = quantity["value"]
            code_flag = flag["coding"][0]["code"]
            if code_flag == "H":
                assert value > reference_range["high"]["value"]
            elif code_flag == "L":
                assert value < reference_range["low"]["value"]


def test_values_are_physiologically_plausible(population: list[Resource]) -> None:
    bounds = {
        "8867-4": (40, 200),
        "9279-1": (8, 70),
        "8310-5": (35, 41.5),
        "59408-5": (80, 100),
        "29463-7": (1.5, 250),
        "8302-2": (40, 215),
        "39156-5": (10, 70),
        "4548-4": (3.5, 15),
        "2345-7": (50, 450),
        "2339-0": (50, 450),
        "718-7": (5, 20),
        "2823-3": (2.5, 7),
        "2951-2": (120, 155),
    }
    for r in population:
        if r["resourceType"] != "Observation" or "valueQuantity" not in r:
            continue
        code = _coding(r["code"], demo.LOINC)["code"]
        if code in bounds:
            low, high = bounds[code]
            assert low <= r["valueQuantity"]["value"] <= high, (code, r["valueQuantity"])


def test_timestamps_carry_offsets_and_stay_in_the_past(population: list[Resource]) -> None:
    end = datetime.fromisoformat("2026-01-01T00:00:00-05:00")
    for r in population:
        for key, value in _strings(r):
            if key in (
                "birthDate",
                "onsetDateTime",
                "recordedDate",
                "start",
                "end",
                "issued",
                "authoredOn",
                "effectiveDateTime",
                "occurrenceDateTime",
                "abatementDateTime",
            ):
                if "T" in value:
                    assert TIMESTAMP.fullmatch(value), (key, value)
                    assert datetime.fromisoformat(value) < end, (key, value)
                else:
                    assert DATE.fullmatch(value), (key, value)
                    assert value < "2026-01-01"


def test_periods_are_ordered_and_follow_birth(population: list[Resource]) -> None:
    for records in _by_patient(population).values():
        birth = date.fromisoformat(records[0]["birthDate"])
        for r in records:
            for period in (r.get("period"), r.get("performedPeriod")):
                if period:
                    start, end = datetime.fromisoformat(period["start"]), datetime.fromisoformat(period["end"])
                    assert start <= end
                    assert start.date() >= birth
            if r["resourceType"] == "Condition" and "abatementDateTime" in r:
                assert r["abatementDateTime"] > r["onsetDateTime"]


def test_counts_per_patient_are_in_the_expected_range() -> None:
    resources = list(demo.generate(300, seed=5))
    groups = _by_patient(resources)
    assert len(groups) == 300
    sizes = [len(records) for records in groups.values()]
    assert 30 <= statistics.mean(sizes) <= 60, statistics.mean(sizes)
    assert max(sizes) < 400
    for records in groups.values():
        # Babies born in the last weeks before the reference date have not been seen yet.
        if records[0]["birthDate"] < "2025-11-01":
            assert any(r["resourceType"] == "Encounter" for r in records)
    counts = demo.count_by_type(resources)
    assert counts["Patient"] == 300
    assert counts["Observation"] > counts["Encounter"] > counts["Patient"]
    for rtype in (
        "Condition",
        "MedicationRequest",
        "Immunization",
        "Procedure",
        "DiagnosticReport",
        "AllergyIntolerance",
    ):
        assert counts[rtype] > 0, rtype
    assert abs(demo.estimate(300) - len(resources)) < 0.25 * len(resources)


def test_values_follow_conditions() -> None:
    """Diabetics run a higher HbA1c; hypertensive adults a higher systolic pressure."""
    a1c: dict[bool, list[float]] = defaultdict(list)
    systolic: dict[bool, list[float]] = defaultdict(list)
    for records in _by_patient(list(demo.generate(400, seed=8))).values():
        codes = {_coding(r["code"], demo.SNOMED)["code"] for r in records if r["resourceType"] == "Condition"}
        diabetic, hypertensive = "44054006" in codes, "59621000" in codes
        adult = records[0]["birthDate"] < "1985-01-01"
        for r in records:
            if r["resourceType"] != "Observation":
                continue
            code = _coding(r["code"], demo.LOINC)["code"]
            if code == "4548-4":
                a1c[diabetic].append(r["valueQuantity"]["value"])
            elif code == "85354-9" and adult:
                systolic[hypertensive].append(r["component"][0]["valueQuantity"]["value"])
    assert statistics.mean(a1c[True]) > statistics.mean(a1c[False]) + 0.8
    assert statistics.mean(systolic[True]) > statistics.mean(systolic[False]) + 5


def test_population_mix(population: list[Resource]) -> None:
    patients = [r for r in population if r["resourceType"] == "Patient"]
    genders = Counter(p["gender"] for p in patients)
    assert genders["female"] > 10 and genders["male"] > 10
    classes = Counter(r["class"]["code"] for r in population if r["resourceType"] == "Encounter")
    assert classes["AMB"] > classes["EMER"] > 0


def test_throughput() -> None:
    start = time.perf_counter()
    count = sum(1 for _ in demo.generate(300, seed=9))
    rate = count / (time.perf_counter() - start)
    assert rate > 5000, f"{rate:.0f} resources/s"


# --- validity ---------------------------------------------------------------------------------------------------


def test_every_resource_is_valid_r4() -> None:
    validate = pytest.importorskip("salus.fhir.validate").validate
    problems = []
    for r in demo.generate(20, seed=1):
        for issue in validate(r):
            problems.append(f"{r['resourceType']}/{r['id']}: {issue}")
    assert not problems, "\n".join(problems[:50])
