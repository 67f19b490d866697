"""Index rows at write time: normalisation per parameter type (what the store writes to idx_*)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from salus.search.indexing import index_rows
from salus.search.types import date, number, quantity, reference, string, token


def rows(resource: dict[str, Any], table: str, param: str) -> list[tuple[Any, ...]]:
    """The value columns of one parameter's rows."""
    return [r[2:] for r in index_rows(resource).get(table, []) if r[0] == param]


PATIENT = {
    "resourceType": "Patient",
    "id": "p",
    "active": True,
    "gender": "female",
    "name": [{"family": "Müller-Lüdenscheidt", "given": ["Anna", "Maria"], "prefix": ["Dr."]}, {"text": "Zoë  Ng"}],
    "address": [{"line": ["1 Main St"], "city": "Boston", "postalCode": "02115", "country": "US"}],
    "identifier": [{"system": "http://hosp/mrn", "value": "MRN1", "type": {"text": "Medical  Record"}}],
    "telecom": [{"system": "email", "value": "anna@example.org", "use": "work"}],
    "meta": {"lastUpdated": "2024-01-01T00:00:00Z", "tag": [{"system": "http://t", "code": "x"}]},
}


def test_normalise() -> None:
    """Lowercase, accents removed (NFKD), whitespace collapsed; compatibility forms folded."""
    assert string.normalise("  Zoë \t Ng ") == "zoe ng"
    assert string.normalise("ÅNGSTRÖM") == "angstrom"
    assert string.normalise("ﬁsh") == "fish"


def test_human_name() -> None:
    """One row per family, given, prefix, suffix and text, plus the whole name when there is no text."""
    assert rows(PATIENT, "idx_string", "name") == [
        ("muller-ludenscheidt", "Müller-Lüdenscheidt"),
        ("anna", "Anna"),
        ("maria", "Maria"),
        ("dr.", "Dr."),
        ("dr. anna maria muller-ludenscheidt", "Dr. Anna Maria Müller-Lüdenscheidt"),
        ("zoe ng", "Zoë  Ng"),
    ]
    assert rows(PATIENT, "idx_string", "family") == [("muller-ludenscheidt", "Müller-Lüdenscheidt")]
    assert rows(PATIENT, "idx_string", "given") == [("anna", "Anna"), ("maria", "Maria")]


def test_address() -> None:
    """Address: line, city, district, state, postalCode, country, text."""
    assert rows(PATIENT, "idx_string", "address") == [
        ("1 main st", "1 Main St"),
        ("boston", "Boston"),
        ("02115", "02115"),
        ("us", "US"),
    ]
    assert rows(PATIENT, "idx_string", "address-city") == [("boston", "Boston")]


def test_tokens() -> None:
    """Identifier, ContactPoint, code and boolean primitives, Coding; _id and _lastUpdated are not indexed."""
    assert rows(PATIENT, "idx_token", "identifier") == [("http://hosp/mrn", "MRN1", "medical record")]
    assert rows(PATIENT, "idx_token", "email") == [(None, "anna@example.org", None)]  # use is not :text
    assert rows(PATIENT, "idx_token", "gender") == [(None, "female", None)]
    assert rows(PATIENT, "idx_token", "active") == [(None, "true", None)]
    assert rows(PATIENT, "idx_token", "_tag") == [("http://t", "x", None)]
    assert rows(PATIENT, "idx_token", "_id") == []
    assert rows(PATIENT, "idx_date", "_lastUpdated") == []


def test_codeable_concept() -> None:
    """One row per coding (display as text) plus the text row unless a display already says it."""
    cc = {
        "coding": [
            {"system": "http://loinc.org", "code": "8302-2", "display": "Body Height"},
            {"system": "http://snomed.info/sct", "code": "50373000"},
        ],
        "text": "Height (standing)",
    }
    assert token.extract(cc, "CodeableConcept") == [
        ("http://loinc.org", "8302-2", "body height"),
        ("http://snomed.info/sct", "50373000", None),
        (None, None, "height (standing)"),
    ]
    same = {"coding": [{"system": "s", "code": "c", "display": "Body Height"}], "text": "body  height"}
    assert token.extract(same, "CodeableConcept") == [("s", "c", "body height")]
    # shape inference when fhirpathpy gave an untyped value
    assert token.extract(cc, None) == token.extract(cc, "CodeableConcept")
    assert token.extract({"system": "phone", "value": "555"}, None) == [(None, "555", None)]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("Patient/1", ("Patient", "1", None, None)),
        ("Patient/1/_history/2", ("Patient", "1", "2", None)),
        ("http://x.org/fhir/Patient/1", ("Patient", "1", None, "http://x.org/fhir/Patient/1")),
        ("http://x.org/fhir/ValueSet/vs|1.0", ("ValueSet", "vs", "1.0", "http://x.org/fhir/ValueSet/vs")),
        ("http://x.org/cs", (None, None, None, "http://x.org/cs")),
        ("urn:uuid:0e3a", (None, None, None, "urn:uuid:0e3a")),
        ("#contained", None),
        ("Foo/1", None),
        ("", None),
    ],
)
def test_reference_forms(ref: str, expected: tuple[Any, ...] | None) -> None:
    """Relative, versioned, absolute, canonical with version, urn; contained and junk are skipped."""
    assert reference.parse_reference(ref) == expected


def test_reference_rows_and_resolve_targets() -> None:
    """Observation.patient keeps only Patient references; Reference.identifier goes to idx_token."""
    obs = {
        "resourceType": "Observation",
        "id": "o",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Group/g1"},
        "performer": [
            {"reference": "Practitioner/d1"},
            {"identifier": {"system": "http://npi", "value": "9"}},
            {"reference": "#c"},
        ],
    }
    assert rows(obs, "idx_reference", "subject") == [("Group", "g1", None, None)]
    assert rows(obs, "idx_reference", "patient") == []
    assert rows(obs, "idx_reference", "performer") == [("Practitioner", "d1", None, None)]
    assert rows(obs, "idx_token", "performer:identifier") == [("http://npi", "9", None)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020", ("2020-01-01T00:00:00.000000", "2020-12-31T23:59:59.999999")),
        ("2020-02", ("2020-02-01T00:00:00.000000", "2020-02-29T23:59:59.999999")),  # leap year
        ("2021-02", ("2021-02-01T00:00:00.000000", "2021-02-28T23:59:59.999999")),
        ("2020-03-15", ("2020-03-15T00:00:00.000000", "2020-03-15T23:59:59.999999")),
        ("2020-03-15T10:30", ("2020-03-15T10:30:00.000000", "2020-03-15T10:30:59.999999")),
        ("2020-03-15T10:30:05Z", ("2020-03-15T10:30:05.000000", "2020-03-15T10:30:05.999999")),
        ("2020-03-15T10:30:05", ("2020-03-15T10:30:05.000000", "2020-03-15T10:30:05.999999")),  # no zone: UTC
        ("2020-03-15T10:30:05.12+02:00", ("2020-03-15T08:30:05.120000", "2020-03-15T08:30:05.129999")),
        ("2020-01-01T01:00:00+05:00", ("2019-12-31T20:00:00.000000", "2019-12-31T20:00:00.999999")),
        ("2020-12-31T23:00:00-02:00", ("2021-01-01T01:00:00.000000", "2021-01-01T01:00:00.999999")),
        ("2020-13", None),
        ("2020-02-30", None),
        ("2020-03-15T25:00:00Z", None),
        ("yesterday", None),
    ],
)
def test_date_bounds(text: str, expected: tuple[str, str] | None) -> None:
    """The implicit UTC range of each precision, as fixed-width text."""
    assert date.bounds(text) == expected


def test_period_and_timing() -> None:
    """Period start..end with open ends; Timing: the span of its events and its boundsPeriod."""
    assert date.extract({"start": "2020-01-01"}, "Period") == [("2020-01-01T00:00:00.000000", date.MAX)]
    assert date.extract({"end": "2020"}, "Period") == [(date.MIN, "2020-12-31T23:59:59.999999")]
    timing = {
        "event": ["2020-05-02", "2020-05-01T10:00:00Z"],
        "repeat": {"boundsPeriod": {"start": "2021-01-01", "end": "2021-01-31"}},
    }
    assert date.extract(timing, "Timing") == [
        ("2020-05-01T10:00:00.000000", "2020-05-02T23:59:59.999999"),
        ("2021-01-01T00:00:00.000000", "2021-01-31T23:59:59.999999"),
    ]
    enc = {
        "resourceType": "Encounter",
        "id": "e",
        "status": "finished",
        "class": {"code": "AMB"},
        "period": {"start": "2020-01-01T10:00:00Z", "end": "2020-01-01T11:00:00Z"},
    }
    assert rows(enc, "idx_date", "date") == [("2020-01-01T10:00:00.000000", "2020-01-01T11:00:00.999999")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (100, (100.0, 100.0)),
        (100.0, (100.0, 100.0)),
        (Decimal("1.50"), (1.5, 1.5)),
        (0.25, (0.25, 0.25)),
        ("12", (12.0, 12.0)),
        (True, None),
        ("abc", None),
        (float("nan"), None),
    ],
)
def test_number_stored_exactly(value: Any, expected: tuple[float, float] | None) -> None:
    """A stored number is the value itself: the precision belongs to the search value (R4 3.1.1.4.6)."""
    assert number.value_range(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("100"), (99.5, 100.5)),
        (Decimal("100.0"), (99.95, 100.05)),
        (Decimal("1.50"), (1.495, 1.505)),  # Decimal keeps the trailing zero a float loses
        (Decimal("0.25"), (0.245, 0.255)),
        (Decimal("1E+2"), (50.0, 150.0)),
    ],
)
def test_search_value_precision(value: Decimal, expected: tuple[float, float]) -> None:
    """A search value's implicit range: half a unit of its last digit either side."""
    assert number.precision_range(value) == pytest.approx(expected)


def test_quantities() -> None:
    """Quantity keeps system and code (or the unit), a comparator opens a side; Range, Money, SampledData."""
    q = {"value": 5.4, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}
    # UCUM units also get a row in canonical units (grams), under the marker system
    assert quantity.extract(q, "Quantity") == [
        ("http://unitsofmeasure.org", "mg", 5.4, 5.4),
        ("urn:salus:ucum-canonical", "g", pytest.approx(0.0054), pytest.approx(0.0054)),
    ]
    assert quantity.extract({"value": 3, "unit": "tablets"}, "Quantity") == [(None, "tablets", 3.0, 3.0)]
    assert quantity.extract({"value": 3, "comparator": ">=", "code": "a"}, "Age") == [(None, "a", 3.0, float("inf"))]
    rng = {"low": {"value": 1, "code": "kg", "system": "s"}, "high": {"value": 2, "code": "kg", "system": "s"}}
    assert quantity.extract(rng, "Range") == [("s", "kg", 1.0, 2.0)]
    assert quantity.extract({"value": 10, "currency": "EUR"}, "Money") == [(quantity.CURRENCY_SYSTEM, "EUR", 10.0, 10.0)]
    assert quantity.extract({"origin": {"value": 0}, "period": 1, "dimensions": 1}, "SampledData") == []


BP = {
    "resourceType": "Observation",
    "id": "bp",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
    "component": [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
            "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        },
    ],
}


def test_composite_groups() -> None:
    """Each component value gets its own grp; component rows go to their type's table as <code>#<index>."""
    idx = index_rows(BP)
    tok = [r for r in idx["idx_token"] if r[0].startswith("component-code-value-quantity#")]
    qty = [r for r in idx["idx_quantity"] if r[0].startswith("component-code-value-quantity#")
           and r[2] != "urn:salus:ucum-canonical"]
    assert tok == [
        ("component-code-value-quantity#0", 1, "http://loinc.org", "8480-6", None),
        ("component-code-value-quantity#0", 2, "http://loinc.org", "8462-4", None),
    ]
    assert qty == [
        ("component-code-value-quantity#1", 1, "http://unitsofmeasure.org", "mm[Hg]", 120.0, 120.0),
        ("component-code-value-quantity#1", 2, "http://unitsofmeasure.org", "mm[Hg]", 80.0, 80.0),
    ]
    # the Observation itself has no value: its code-value-quantity group would be incomplete, so none
    assert not any(r[0].startswith("code-value-quantity#") for r in idx["idx_token"])
    # combo-: the Observation is not complete, each component is (groups 1 and 2)
    combo = sorted({r[1] for r in idx["idx_quantity"] if r[0] == "combo-code-value-quantity#1"})
    assert combo == [1, 2]


def test_odd_data_never_raises() -> None:
    """Values that cannot be normalised are skipped; a non-resource gives no rows."""
    odd = {
        "resourceType": "Observation",
        "id": "x",
        "status": 5,
        "code": "not a concept",
        "subject": 7,
        "effectiveDateTime": "someday",
        "valueQuantity": {"value": "abc"},
        "identifier": [None, {"value": 3}],
        "component": [{"code": None}, 4],
        "meta": {"tag": "t"},
        "performer": [{"reference": 12}],
    }
    assert index_rows(odd) == {}
    assert index_rows({"resourceType": "NotAType"}) == {}
    assert index_rows({}) == {}


def test_fhirpath_fallback() -> None:
    """Patient.deceased is real FHIRPath (exists() and != false): evaluated by fhirpathpy, also when absent."""
    assert rows({"resourceType": "Patient", "id": "a"}, "idx_token", "deceased") == [(None, "false", None)]
    assert rows({"resourceType": "Patient", "id": "a", "deceasedDateTime": "2020"}, "idx_token", "deceased") == [
        (None, "true", None)
    ]
