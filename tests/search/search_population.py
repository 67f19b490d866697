"""A small hand-built population; the expected result sets in the tests are reasoned from it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.search.search_db import Db

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MRN = "http://hosp/mrn"


def _obs(id_: str, **kw: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": id_, **kw}


def _height(value: Any, unit: str = "cm") -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


HEIGHT = {"coding": [{"system": LOINC, "code": "8302-2", "display": "Body Height"}], "text": "Body Height"}
WEIGHT = {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body Weight"}], "text": "Weight"}

PATIENTS = [
    {
        "resourceType": "Patient",
        "id": "p1",
        "active": True,
        "gender": "male",
        "birthDate": "1970-05-12",
        "name": [{"family": "Smith", "given": ["John"]}],
        "identifier": [{"system": MRN, "value": "MRN1"}],
        "telecom": [{"system": "phone", "value": "555-1234", "use": "home"}],
        "address": [{"city": "Boston", "postalCode": "02115"}],
    },
    {
        "resourceType": "Patient",
        "id": "p2",
        "active": False,
        "gender": "male",
        "birthDate": "1985",
        "name": [{"family": "Müller", "given": ["Jürgen"]}],
        "identifier": [{"system": MRN, "value": "MRN2"}],
    },
    {
        "resourceType": "Patient",
        "id": "p3",
        "gender": "female",
        "birthDate": "1970-05",
        "name": [{"family": "Smithson", "given": ["Anna", "Maria"]}],
        "identifier": [{"system": "http://other/id", "value": "MRN1"}],
        "generalPractitioner": [{"reference": "Practitioner/dr1"}],
    },
    {
        "resourceType": "Patient",
        "id": "p4",
        "gender": "other",
        "birthDate": "2001-02-03",
        "name": [{"text": "Zoë  Ng"}],
        "managingOrganization": {"reference": "Organization/org1"},
    },
]

OTHERS = [
    {"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "House"}]},
    {"resourceType": "Organization", "id": "org1", "name": "Acme Health"},
    _obs(
        "o1",
        status="final",
        code=HEIGHT,
        subject={"reference": "Patient/p1"},
        encounter={"reference": "Encounter/e1"},
        effectiveDateTime="2020-03-15T10:30:00Z",
        valueQuantity=_height(180),
        category=[{"coding": [{"code": "vital-signs"}]}],
        meta={
            "tag": [{"system": "http://tags", "code": "test"}],
            "profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"],
        },
    ),
    _obs(
        "o2",
        status="final",
        code=HEIGHT,
        subject={"reference": "Patient/p2"},
        effectiveDateTime="2020-03-15",
        valueQuantity=_height(175.5),
        meta={"profile": ["http://example.org/fhir/StructureDefinition/custom-obs"]},
    ),
    _obs(
        "o3",
        status="amended",
        code=WEIGHT,
        subject={"reference": "Patient/p1"},
        effectivePeriod={"start": "2019-12-31T22:00:00-05:00", "end": "2020-01-02"},
        valueQuantity=_height(70, "kg"),
        meta={"source": "http://example.org/fhir/source/a"},
    ),
    _obs(
        "o4",
        status="preliminary",
        code={"text": "Free text only"},
        subject={"reference": "http://other.org/fhir/Patient/p1"},
        effectiveDateTime="2021",
        valueString="Positive result",
        performer=[{"reference": "Practitioner/dr1"}],
    ),
    _obs(
        "o5",
        status="final",
        code={"coding": [{"system": "http://snomed.info/sct", "code": "271649006"}]},
        subject={"reference": "Patient/p3"},
        valueQuantity={"value": 120, "comparator": "<", "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"},
    ),
    _obs(
        "o6",
        status="cancelled",
        code=HEIGHT,
        subject={"identifier": {"system": MRN, "value": "MRN9"}},
        valueQuantity=_height(100.0),
    ),
    _obs(
        "o7",
        status="final",
        code={"coding": [{"system": LOINC, "code": "85354-9"}]},
        subject={"reference": "Patient/p4"},
        component=[
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": _height(120, "mm[Hg]")},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": _height(80, "mm[Hg]")},
        ],
    ),
    {
        "resourceType": "RiskAssessment",
        "id": "ra1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "prediction": [{"probabilityDecimal": 0.25}],
    },
    {
        "resourceType": "RiskAssessment",
        "id": "ra2",
        "status": "final",
        "subject": {"reference": "Patient/p2"},
        "prediction": [{"probabilityDecimal": 0.3}],
    },
    {
        "resourceType": "RiskAssessment",
        "id": "ra3",
        "status": "final",
        "subject": {"reference": "Patient/p2"},
        "prediction": [{"probabilityRange": {"low": {"value": 0.1}, "high": {"value": 0.2}}}],
    },
    {
        "resourceType": "RiskAssessment",
        "id": "ra4",
        "status": "final",
        "subject": {"reference": "Patient/p3"},
        "prediction": [{"probabilityDecimal": 100}],
    },
]

# a deleted patient: a resources row, a tombstone version and no index rows
DELETED = {"resourceType": "Patient", "id": "p5", "gender": "male", "name": [{"family": "Smith"}]}


def last_updated(i: int) -> str:
    """Patient i (1-based) was last updated at noon on 2024-01-0i."""
    return f"2024-01-0{i}T12:00:00.000000Z"


def loaded_db(dialect: str) -> Db:
    """A fresh test database of ``dialect`` holding the whole population (the deleted Patient as a tombstone)."""
    from tests.search.search_db import insert, open_db

    d = open_db(dialect)
    for i, p in enumerate(PATIENTS, 1):
        insert(d, p, last_updated=last_updated(i))
    insert(d, DELETED, deleted=True)
    for r in OTHERS:
        insert(d, r)
    return d
