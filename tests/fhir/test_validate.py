"""Tests of the structural validator: each kind of error with its location and code, and the public corpora."""

from __future__ import annotations

import copy
import gzip
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from salus.fhir.outcome import FhirError, Issue
from salus.fhir.validate import validate, validate_or_raise

CORPORA = Path(__file__).resolve().parents[2].parent / "shared" / "corpora"


def corpus(*parts: str) -> Path:
    """A corpus folder; skipped locally when the shared corpora are absent, but CI must have them."""
    path = CORPORA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"corpus {path} is missing on CI (expected a 'shared' folder beside the repository)")
        pytest.skip(f"corpus {path} not present (clone 'shared' beside the repository to run corpus tests)")
    return path


def found(resource: Any, **kwargs: Any) -> set[tuple[str, str | None]]:
    """The (code, expression) pairs reported for ``resource``."""
    return {(i.code, i.expression) for i in validate(resource, **kwargs)}


def status_of(resource: Any, **kwargs: Any) -> int | None:
    """The HTTP status validate_or_raise maps ``resource`` to, or None when it is accepted."""
    try:
        validate_or_raise(resource, **kwargs)
    except FhirError as e:
        return e.status
    return None


def patient(**elements: Any) -> dict[str, Any]:
    """A minimal valid Patient with extra elements."""
    return {"resourceType": "Patient", "id": "p1", **elements}


def observation(**elements: Any) -> dict[str, Any]:
    """A minimal valid Observation (status and code are 1..1) with extra elements."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        **elements,
    }


RICH_PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "example-1.2",
    "meta": {"versionId": "1", "lastUpdated": "2024-01-02T03:04:05.678Z", "profile": ["http://x.org/p"]},
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Ann</div>'},
    "extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": {"city": "Oslo"}},
        {"url": "http://x.org/nested", "extension": [{"url": "a", "valueQuantity": {"value": 1.5, "unit": "kg"}}]},
    ],
    "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
    "active": True,
    "name": [
        {
            "use": "official",
            "family": "Smith",
            "given": ["Ann", None],
            "_given": [
                None,
                {
                    "extension": [
                        {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"}
                    ]
                },
            ],
        },
    ],
    "telecom": [{"system": "phone", "value": "+47 555", "use": "home", "rank": 1}],
    "gender": "female",
    "birthDate": "2024-02-29",
    "_birthDate": {"extension": [{"url": "http://x.org/time", "valueDateTime": "2024-02-29T10:00:00+01:00"}]},
    "deceasedBoolean": False,
    "multipleBirthInteger": 2,
    "photo": [{"contentType": "image/png", "data": "aGVsbG8=", "size": 5}],
    "contained": [{"resourceType": "Organization", "id": "org1", "name": "Clinic"}],
    "managingOrganization": {"reference": "#org1"},
    "generalPractitioner": [
        {"reference": "Practitioner/abc"},
        {"reference": "Practitioner/abc/_history/2"},
        {"reference": "https://other.example/fhir/Practitioner/1"},
        {"reference": "urn:uuid:9d3c5d4e-1234-4a5b-8c7d-0123456789ab"},
        {"identifier": {"value": "no literal reference at all"}},
    ],
    "contact": [{"relationship": [{"text": "mother"}], "gender": "female", "period": {"start": "2020"}}],
    "communication": [{"language": {"text": "Norwegian"}, "preferred": True}],
}


# --- valid content ------------------------------------------------------------------------------------------------


def test_rich_valid_patient_is_accepted() -> None:
    assert validate(RICH_PATIENT) == []
    assert validate(RICH_PATIENT, "Patient") == []
    validate_or_raise(RICH_PATIENT)


@pytest.mark.parametrize(
    "value",
    ["2024", "2024-02", "2024-02-29T23:59:59Z", "2023-12-31T00:00:00.123+14:00", "1900-01-01T00:00:60-05:00"],
)
def test_valid_date_times(value: str) -> None:
    assert validate(observation(effectiveDateTime=value)) == []


def test_valid_observation_with_choices_and_components() -> None:
    obs = observation(
        valueQuantity={"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        component=[
            {"code": {"text": "a"}, "valueString": "x ü\u00a0y"},
            {"code": {"text": "b"}, "valueInteger": -2147483648},
            {"code": {"text": "c"}, "valueBoolean": False},
            {"code": {"text": "d"}, "valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 2.5}}},
            {"code": {"text": "e"}, "valueTime": "10:00:00", "dataAbsentReason": {"text": "n/a"}},
        ],
        issued="2024-01-01T00:00:00Z",
        subject={"reference": "Patient/p1", "display": "Ann"},
    )
    assert validate(obs) == []


def test_required_primitive_present_only_as_extension_is_accepted() -> None:
    obs = observation()
    del obs["status"]
    obs["_status"] = {
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]
    }
    assert validate(obs) == []


# --- the resource itself ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [[], "Patient", 3, None])
def test_not_a_json_object(bad: Any) -> None:
    issues = validate(bad)
    assert [i.code for i in issues] == ["structure"]
    assert status_of(bad) == 400


def test_missing_resource_type() -> None:
    assert found({"id": "x"}) == {("invalid", "Resource.resourceType")}
    assert status_of({"id": "x"}) == 400


@pytest.mark.parametrize("rt", ["Nope", "DomainResource", "Resource", "patient", 7])
def test_unknown_or_abstract_resource_type(rt: Any) -> None:
    assert found({"resourceType": rt}) == {("not-supported", "Resource.resourceType")}
    assert status_of({"resourceType": rt}) == 400


def test_expected_type_mismatch() -> None:
    assert found(patient(), expected_type="Observation") == {("invalid", "Patient.resourceType")}
    assert found(patient(), expected_type="Patient") == set()


@pytest.mark.parametrize("rid", ["a b", "x" * 65, "a_b", "", "é", 12])
def test_bad_resource_id(rid: Any) -> None:
    assert found(patient(id=rid)) == {("value", "Patient.id")}
    assert status_of(patient(id=rid)) == 400


def test_id_of_64_characters_is_fine() -> None:
    assert validate(patient(id="A-z.9" + "x" * 59)) == []


# --- unknown elements and JSON kinds -------------------------------------------------------------------------------


def test_unknown_elements_everywhere() -> None:
    res = patient(foo=1, name=[{"family": "A", "middle": "B"}], _name={"id": "x"}, contact=[{"bar": True}])
    assert found(res) == {
        ("structure", "Patient.foo"),
        ("structure", "Patient.name[0].middle"),
        ("structure", "Patient._name"),
        ("structure", "Patient.contact[0].bar"),
    }
    assert status_of(res) == 400


def test_array_for_single_element_and_scalar_for_repeating_one() -> None:
    res = patient(gender=["male"], birthDate=["2020"], maritalStatus=[{"text": "x"}], name={"family": "A"}, telecom="x")
    assert found(res) == {
        ("structure", "Patient.gender"),
        ("structure", "Patient.birthDate"),
        ("structure", "Patient.maritalStatus"),
        ("structure", "Patient.name"),
        ("structure", "Patient.telecom"),
    }


def test_wrong_json_kind_for_complex_and_primitive() -> None:
    res = patient(maritalStatus="married", name=["Ann"], gender={"code": "male"}, active=1)
    assert found(res) == {
        ("structure", "Patient.maritalStatus"),
        ("structure", "Patient.name[0]"),
        ("value", "Patient.gender"),
        ("value", "Patient.active"),
    }


def test_empty_values_and_nulls() -> None:
    res = patient(
        gender="", name=[], maritalStatus={}, telecom=[{}], birthDate=None, address=[None], identifier=[{"value": ""}]
    )
    assert found(res) == {
        ("value", "Patient.gender"),
        ("structure", "Patient.name"),
        ("structure", "Patient.maritalStatus"),
        ("structure", "Patient.telecom[0]"),
        ("structure", "Patient.birthDate"),
        ("structure", "Patient.address[0]"),
        ("value", "Patient.identifier[0].value"),
    }
    assert status_of(res) == 400


# --- choice types --------------------------------------------------------------------------------------------------


def test_choice_with_a_type_it_does_not_allow() -> None:
    assert found(patient(deceasedString="yes")) == {("structure", "Patient.deceasedString")}


def test_choice_with_two_types_present() -> None:
    res = patient(deceasedBoolean=True, deceasedDateTime="2020-01-01")
    assert found(res) == {("structure", "Patient.deceased")}
    assert status_of(res) == 422


def test_error_inside_a_choice_uses_of_type() -> None:
    obs = observation(valueQuantity={"value": "12", "unit": "kg"})
    assert found(obs) == {("value", "Observation.value.ofType(Quantity).value")}
    obs = observation(valueDateTime="2020-13-01")
    assert found(obs) == {("value", "Observation.value.ofType(dateTime)")}


# --- cardinality ---------------------------------------------------------------------------------------------------


def test_missing_required_elements() -> None:
    obs = {"resourceType": "Observation", "component": [{"valueString": "x"}]}
    assert found(obs) == {
        ("required", "Observation.status"),
        ("required", "Observation.code"),
        ("required", "Observation.component[0].code"),
    }
    assert status_of(obs) == 422


def test_missing_required_choice_element() -> None:
    mr = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/1"},
    }
    assert found(mr) == {("required", "MedicationRequest.medication")}
    mr["medicationCodeableConcept"] = {"text": "aspirin"}
    assert found(mr) == set()


def test_extension_needs_url() -> None:
    res = patient(extension=[{"valueString": "x"}], name=[{"extension": [{"url": "u", "extension": [{}]}]}])
    assert found(res) == {
        ("required", "Patient.extension[0].url"),
        ("structure", "Patient.name[0].extension[0].extension[0]"),
    }


def test_max_cardinality_zero() -> None:
    res = patient(text={"status": "generated", "div": "<div>x</div>", "_div": {"extension": [{"url": "u"}]}})
    assert ("structure", "Patient.text.div.extension") in found(res)


# --- primitives ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("element", "value"),
    [
        ("active", "true"),
        ("active", 1),
        ("multipleBirthInteger", True),
        ("multipleBirthInteger", 1.5),
        ("multipleBirthInteger", 2.0),
        ("multipleBirthInteger", 2**31),
        ("multipleBirthInteger", "3"),
        ("birthDate", "2023-02-29"),
        ("birthDate", "2023-04-31"),
        ("birthDate", "2023-13-01"),
        ("birthDate", "20230101"),
        ("birthDate", "2023-01-01T00:00:00Z"),
        ("birthDate", 2023),
        ("deceasedDateTime", "2023-01-01T10:00:00"),
        ("deceasedDateTime", "2023-01-01T10:00Z"),
        ("deceasedDateTime", "2023-02-30T10:00:00Z"),
        ("gender", "fe  male"),
        ("gender", " male"),
        ("implicitRules", "has space"),
        ("language", "en  GB"),
    ],
)
def test_malformed_primitives(element: str, value: Any) -> None:
    res = patient(**{element: value})
    expression = "Patient." + element.replace("Integer", ".ofType(integer)").replace("DateTime", ".ofType(dateTime)")
    assert found(res) == {("value", expression)}
    assert status_of(res) == 400


@pytest.mark.parametrize(
    ("element", "value"),
    [
        ("size", -1),
        ("size", True),
        ("size", 2**31),
        ("data", "abc"),
        ("data", "ab!="),
        ("creation", "2020-01-01T10:00:00"),
        ("url", "a b"),
        ("hash", 12),
    ],
)
def test_malformed_attachment_primitives(element: str, value: Any) -> None:
    assert found(patient(photo=[{element: value}])) == {("value", f"Patient.photo[0].{element}")}


def test_positive_int_decimal_instant_oid_uuid() -> None:
    res = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "issued": "2020-01-01",
        "valueQuantity": {"value": "1.0"},
        "identifier": [{"system": "urn:oid:1.2.x", "value": "a"}, {"system": "urn:uuid:not-a-uuid"}],
        "referenceRange": [{"low": {"value": float("nan")}}],
        "component": [
            {"code": {"text": "c"}, "valueSampledData": {"origin": {"value": 0}, "period": 1, "dimensions": 0}}
        ],
    }
    assert found(res) == {
        ("value", "Observation.issued"),
        ("value", "Observation.value.ofType(Quantity).value"),
        ("value", "Observation.referenceRange[0].low.value"),
        ("value", "Observation.component[0].value.ofType(SampledData).dimensions"),
    }


EXTENSION_VALUES: list[tuple[str, Any, Any]] = [
    # (type, a valid value, an invalid value)
    ("Oid", "urn:oid:2.16.840.1.113883", "urn:oid:2.16.08"),
    ("Uuid", "urn:uuid:c757873d-ec9a-4326-a141-556f43239520", "urn:uuid:C757873D-EC9A-4326-A141-556F43239520"),
    ("PositiveInt", 1, 0),
    ("UnsignedInt", 0, -1),
    ("Instant", "2015-02-07T13:28:17.239+02:00", "2015-02-07T13:28"),
    ("Time", "23:59:60.5", "24:00:00"),
    ("Markdown", "# title\n\n* item", ""),
    ("Canonical", "http://hl7.org/fhir/ValueSet/x|4.0.1", "has space"),
    ("Url", "http://x.org", "http://x.org/a b"),
    ("Id", "a-b.c", "a_b"),
    ("Decimal", -0.5e-10, "0.5"),
    ("Base64Binary", "AAAA", "AAA"),
    ("Code", "a b", "a\tb  c"),
]


def test_every_primitive_type_through_extension_values() -> None:
    good = patient(extension=[{"url": "u", f"value{t}": ok} for t, ok, _ in EXTENSION_VALUES])
    assert validate(good) == []
    bad = patient(extension=[{"url": "u", f"value{t}": nok} for t, _, nok in EXTENSION_VALUES])
    expected = {
        ("value", f"Patient.extension[{n}].value.ofType({t[0].lower() + t[1:]})")
        for n, (t, _, _) in enumerate(EXTENSION_VALUES)
    }
    assert found(bad) == expected


def test_strings_reject_form_feed_and_vertical_tab() -> None:
    res = patient(name=[{"family": "A\u000cB", "given": ["ok", "x\u000b"], "text": "tab\tnew\r\nline ok"}])
    assert found(res) == {("value", "Patient.name[0].family"), ("value", "Patient.name[0].given[1]")}


def test_xhtml_must_be_a_div() -> None:
    assert found(patient(text={"status": "generated", "div": "<p>hi</p>"})) == {("value", "Patient.text.div")}
    assert found(patient(text={"status": "generated", "div": 5})) == {("value", "Patient.text.div")}
    assert found(patient(text={"status": "generated"})) == {("required", "Patient.text.div")}


def test_base64_with_line_breaks_is_accepted() -> None:
    assert validate(patient(photo=[{"data": "aGVs\nbG8g\r\nd29y bGQ="}])) == []


def test_base64_regex_is_not_exponential() -> None:
    evil = "AAAA " * 5000 + "A"
    assert found(patient(photo=[{"data": evil}])) == {("value", "Patient.photo[0].data")}


# --- primitive extensions ------------------------------------------------------------------------------------------


def test_primitive_extension_object() -> None:
    res = patient(
        _birthDate={"value": "2020", "extension": [{"valueString": "x"}]},
        _gender="male",
        _active={},
    )
    assert found(res) == {
        ("structure", "Patient.birthDate.value"),
        ("required", "Patient.birthDate.extension[0].url"),
        ("structure", "Patient.gender"),
        ("structure", "Patient.active"),
    }


def test_primitive_extension_arrays() -> None:
    good_ext = {"extension": [{"url": "u", "valueBoolean": True}]}
    res = patient(
        name=[
            {"given": ["a", None], "_given": [None, good_ext]},  # fine
            {"given": ["a", None]},  # null without companion
            {"given": ["a", "b"], "_given": [good_ext]},  # misaligned
            {"given": ["a"], "_given": [None]},  # only nulls
            {"_given": [good_ext]},  # value-less primitive: fine
            {"given": ["a"], "_given": ["x"]},  # entries must be objects
            {"given": ["a"], "_given": {"extension": []}},  # must be an array
            {"given": [None], "_given": [None]},  # a position with neither value nor extension
        ]
    )
    assert found(res) == {
        ("structure", "Patient.name[1].given[1]"),
        ("structure", "Patient.name[2].given"),
        ("structure", "Patient.name[3].given"),
        ("structure", "Patient.name[5].given[0]"),
        ("structure", "Patient.name[6].given"),
        ("structure", "Patient.name[7].given[0]"),
        ("structure", "Patient.name[7].given"),
    }


def test_error_inside_primitive_extension_array() -> None:
    res = patient(name=[{"given": ["a"], "_given": [{"extension": [{"url": "u", "valueInteger": "1"}]}]}])
    assert found(res) == {("value", "Patient.name[0].given[0].extension[0].value.ofType(integer)")}


# --- required bindings ---------------------------------------------------------------------------------------------


def test_required_binding_on_code() -> None:
    res = patient(gender="M", telecom=[{"system": "phone"}, {"system": "pigeon"}], contact=[{"gender": "x"}])
    assert found(res) == {
        ("code-invalid", "Patient.gender"),
        ("code-invalid", "Patient.telecom[1].system"),
        ("code-invalid", "Patient.contact[0].gender"),
    }
    assert status_of(res) == 422
    issue = next(i for i in validate(res) if i.expression == "Patient.gender")
    assert "http://hl7.org/fhir/ValueSet/administrative-gender" in issue.diagnostics


def test_required_binding_on_codeable_concept() -> None:
    system = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    cond = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/1"},
        "clinicalStatus": {
            "coding": [
                {"system": system, "code": "active"},
                {"system": system, "code": "bogus"},
                {"code": "also-bogus"},
                {"system": "http://snomed.info/sct", "code": "55561003"},  # another system: not ours to judge
            ]
        },
        "verificationStatus": {"text": "confirmed"},
    }
    assert found(cond) == {
        ("code-invalid", "Condition.clinicalStatus.coding[1].code"),
        ("code-invalid", "Condition.clinicalStatus.coding[2].code"),
    }
    assert status_of(cond) == 422


# --- references ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "Patient/1",
        "Patient/a.b-C",
        "Patient/1/_history/3",
        "http://example.org/fhir/Patient/1",
        "https://example.org/fhir/Patient/1/_history/1",
        "urn:uuid:04121321-4af5-424c-a0e1-ed3aab1c349d",
        "urn:oid:1.2.3.4",
    ],
)
def test_valid_references(ref: str) -> None:
    assert validate(observation(subject={"reference": ref})) == []


@pytest.mark.parametrize(
    "ref",
    [
        "Patient",
        "Foo/1",
        "Patient/",
        "Patient/1/2",
        "Patient/a b",
        "Patient/1/_history/",
        "ftp:/x",
        "urn:uuid:xyz",
        "urn:oid:abc",
        "#bad id",
        "Patient?identifier=x",
    ],
)
def test_invalid_references(ref: str) -> None:
    res = observation(subject={"reference": ref})
    assert found(res) == {("value", "Observation.subject.reference")}
    assert status_of(res) == 422


def test_local_references_resolve_against_contained() -> None:
    res = observation(
        contained=[
            {"resourceType": "Patient", "id": "p", "managingOrganization": {"reference": "#o"}},
            {"resourceType": "Organization", "id": "o", "partOf": {"reference": "#"}},
        ],
        subject={"reference": "#p"},
        performer=[{"reference": "#missing"}],
    )
    assert found(res) == {("value", "Observation.performer[0].reference")}


def test_conditional_references_only_in_transactions() -> None:
    obs = observation(subject={"reference": "Patient?identifier=http://x|1"})
    assert found(obs) == {("value", "Observation.subject.reference")}
    assert validate(obs, conditional_references=True) == []
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": obs, "request": {"method": "POST", "url": "Observation"}}],
    }
    assert validate(bundle) == []
    bundle["type"] = "collection"
    del bundle["entry"][0]["request"]
    assert found(bundle) == {("value", "Bundle.entry[0].resource.ofType(Observation).subject.reference")}


# --- nested resources ----------------------------------------------------------------------------------------------


def test_bundle_entries_are_validated_as_resources() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:04121321-4af5-424c-a0e1-ed3aab1c349d", "resource": copy.deepcopy(RICH_PATIENT)},
            {"resource": patient(gender="unknown-ish")},
            {"resource": {"resourceType": "Nope"}},
            {"resource": {"id": "x"}},
            {"resource": [patient()]},
            {"resource": observation(status=None)},
            {"resource": {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": patient(bad=1)}]}},
        ],
    }
    assert found(bundle) == {
        ("code-invalid", "Bundle.entry[1].resource.ofType(Patient).gender"),
        ("not-supported", "Bundle.entry[2].resource"),
        ("invalid", "Bundle.entry[3].resource"),
        ("structure", "Bundle.entry[4].resource"),
        ("structure", "Bundle.entry[5].resource.ofType(Observation).status"),
        ("structure", "Bundle.entry[6].resource.ofType(Bundle).entry[0].resource.ofType(Patient).bad"),
    }
    assert status_of(bundle) == 400


def test_contained_and_parameters_resources() -> None:
    res = patient(contained=[{"resourceType": "Organization", "id": "o", "name": 5}, {"resourceType": "X"}])
    assert found(res) == {
        ("value", "Patient.contained[0].ofType(Organization).name"),
        ("not-supported", "Patient.contained[1]"),
    }
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "a", "valueString": "x"},
            {"name": "b", "resource": patient(gender="x")},
            {"name": "c", "part": [{"name": "d", "valueCoding": {"system": 1}}]},
            {"valueBoolean": True},
        ],
    }
    assert found(params) == {
        ("code-invalid", "Parameters.parameter[1].resource.ofType(Patient).gender"),
        ("value", "Parameters.parameter[2].part[0].value.ofType(Coding).system"),
        ("required", "Parameters.parameter[3].name"),
    }


# --- many errors, depth --------------------------------------------------------------------------------------------


def test_every_error_is_reported() -> None:
    res = patient(
        id="bad id",
        gender="x",
        birthDate="2023-02-30",
        foo=1,
        name=[{"given": "Ann"}],
        link=[{"type": "seealso"}],
        managingOrganization={"reference": "Nope/1"},
    )
    issues = validate(res)
    assert {(i.code, i.expression) for i in issues} == {
        ("value", "Patient.id"),
        ("code-invalid", "Patient.gender"),
        ("value", "Patient.birthDate"),
        ("structure", "Patient.foo"),
        ("structure", "Patient.name[0].given"),
        ("required", "Patient.link[0].other"),
        ("value", "Patient.managingOrganization.reference"),
    }
    assert all(isinstance(i, Issue) and i.severity == "error" and i.diagnostics for i in issues)
    with pytest.raises(FhirError) as info:
        validate_or_raise(res)
    assert info.value.status == 400
    assert len(info.value.issues) == 7


def _nested_items(levels: int) -> dict[str, Any]:
    item: dict[str, Any] = {"linkId": "leaf", "type": "display"}
    for n in range(levels):
        item = {"linkId": str(n), "type": "group", "item": [item]}
    return {"resourceType": "Questionnaire", "status": "active", "item": [item]}


def test_deep_nesting_is_cut_at_max_depth() -> None:
    q = _nested_items(100)
    issues = validate(q)
    assert [i.code for i in issues] == ["too-costly"]
    assert issues[0].expression == "Questionnaire" + ".item[0]" * 65
    assert status_of(q) == 400
    assert validate(q, max_depth=200) == []
    assert [i.code for i in validate(_nested_items(3), max_depth=2)] == ["too-costly"]


def test_nesting_beyond_the_interpreter_stack_is_an_issue_not_a_crash() -> None:
    ext: dict[str, Any] = {"url": "u", "valueString": "x"}
    for _ in range(20_000):
        ext = {"url": "u", "extension": [ext]}
    res = patient(extension=[ext])
    assert [i.code for i in validate(res)] == ["too-costly"]
    assert [i.code for i in validate(res, max_depth=10**9)] == ["too-costly"]


def test_nested_resources_count_towards_depth() -> None:
    res: dict[str, Any] = patient()
    for _ in range(40):
        res = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": res}]}
    assert [i.code for i in validate(res)] == ["too-costly"]


# --- corpora -------------------------------------------------------------------------------------------------------


def _items_without_link_id(items: list[dict[str, Any]], path: str) -> set[tuple[str, str]]:
    """The (code, expression) issues owed by Questionnaire items that lack their 1..1 linkId."""
    owed: set[tuple[str, str]] = set()
    for n, item in enumerate(items):
        if "linkId" not in item:
            owed.add(("required", f"{path}[{n}].linkId"))
        owed |= _items_without_link_id(item.get("item", []), f"{path}[{n}].item")
    return owed


# Official R4 examples that are genuinely invalid R4, each checked by hand against the R4 StructureDefinitions,
# with the reason. The test demands that exactly the expected issues are reported for them, so this list cannot
# hide a regression of ours.
KNOWN_INVALID_EXAMPLES: dict[str, str] = {
    # The generated "Account" form: its 32 'display' items (help texts under each group) carry no linkId, but
    # Questionnaire.item.linkId is 1..1 in R4 (it was optional for display items only in DSTU2).
    "Questionnaire-qs1.json": "display items without the mandatory Questionnaire.item.linkId",
}


def test_official_r4_examples_validate() -> None:
    root = corpus("fhir-r4-examples")
    index = json.loads((root / "index.json").read_text())
    assert len(index) >= 700
    failures: dict[str, list[str]] = {}
    for entry in index:
        resource = orjson.loads((root / entry["file"]).read_bytes())
        issues = validate(resource, expected_type=entry["resourceType"])
        if Path(entry["file"]).name not in KNOWN_INVALID_EXAMPLES and issues:
            failures[entry["file"]] = [f"{i.code} {i.expression}: {i.diagnostics}" for i in issues[:5]]
    assert not failures, json.dumps(failures, indent=1)


def test_known_invalid_examples_fail_for_the_stated_reason() -> None:
    root = corpus("fhir-r4-examples", "examples")
    q = orjson.loads((root / "Questionnaire-qs1.json").read_bytes())
    owed = _items_without_link_id(q["item"], "Questionnaire.item")
    assert len(owed) == 32
    assert found(q) == owed
    assert status_of(q) == 422
    assert set(KNOWN_INVALID_EXAMPLES) == {"Questionnaire-qs1.json"}


def test_synthea_bulk_100_validates() -> None:
    root = corpus("synthea-r4", "bulk-100")
    files = sorted(root.glob("*.ndjson.gz"))
    assert files
    count = 0
    failures: list[str] = []
    for path in files:
        with gzip.open(path, "rt") as fh:
            for line in fh:
                resource = orjson.loads(line)
                count += 1
                issues = validate(resource, expected_type=path.name.split(".")[0])
                failures += [f"{resource.get('id')} {i.code} {i.expression}: {i.diagnostics}" for i in issues]
    assert count == 26160
    assert not failures, "\n".join(failures[:50])
