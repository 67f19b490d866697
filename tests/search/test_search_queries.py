"""Search semantics per parameter type, modifier and prefix (R4 search), on SQLite and PostgreSQL.

Every expected set is reasoned from ``population.py``; see the comments.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest

from salus.fhir.outcome import FhirError
from salus.search import engine, match_ids, run_search
from salus.search.types import date as date_type
from tests.search.search_db import Db
from tests.search.search_population import loaded_db


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[Db]:
    """The population loaded once per backend."""
    d = loaded_db(request.param)
    yield d
    d.close()


def ids(db: Db, rtype: str | None, query: str, **kw: object) -> set[str]:
    """The ids a search matches (all pages)."""
    pairs = [tuple(p.split("=", 1)) for p in query.split("&")] if query else []
    res = run_search(db, rtype, pairs, count=1000, **kw)  # type: ignore[arg-type]
    return {rid for _, rid, _ in res.entries}


S = {"p1", "p2", "p3", "p4"}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("name=smi", {"p1", "p3"}),  # Smith, Smithson: prefix
        ("name=SMITH", {"p1", "p3"}),  # case-insensitive; Smithson starts with smith
        ("name:exact=Smith", {"p1"}),
        ("name:exact=smith", set()),  # exact is case-sensitive
        ("name:contains=ths", {"p3"}),  # smi-ths-on
        ("name:contains=%", set()),  # wildcards are escaped
        ("name=muller", {"p2"}),  # accents removed
        ("name=jürg", {"p2"}),
        ("name=zoe ng", {"p4"}),  # text 'Zoë  Ng': accent and double space normalised
        ("name=john smith", {"p1"}),  # the whole name
        ("family=smith", {"p1", "p3"}),
        ("given=maria", {"p3"}),
        ("address-city=bos", {"p1"}),
        ("name=smi,mul", {"p1", "p2", "p3"}),  # comma: OR
        ("name=smi&name=smithson", {"p3"}),  # repeat: AND
        ("given:missing=true", {"p4"}),  # text-only name
        ("given:missing=false", {"p1", "p2", "p3"}),
    ],
)
def test_string(db: Db, query: str, expected: set[str]) -> None:
    """String: prefix on the normalised form; :exact, :contains, :missing; deleted p5 never appears."""
    assert ids(db, "Patient", query) == expected


@pytest.mark.parametrize(
    ("rtype", "query", "expected"),
    [
        ("Patient", "gender=male", {"p1", "p2"}),
        ("Patient", "gender=male,female", {"p1", "p2", "p3"}),
        ("Patient", "gender:not=male", {"p3", "p4"}),
        ("Patient", "identifier=MRN1", {"p1", "p3"}),  # any system
        ("Patient", "identifier=http://hosp/mrn|MRN1", {"p1"}),
        ("Patient", "identifier=http://hosp/mrn|", {"p1", "p2"}),
        ("Patient", "identifier=|MRN1", set()),  # both MRN1 identifiers have a system
        ("Patient", "active=true", {"p1"}),
        ("Patient", "active=false", {"p2"}),
        ("Patient", "active:missing=true", {"p3", "p4"}),
        ("Patient", "active:missing=false", {"p1", "p2"}),
        ("Patient", "telecom=555-1234", {"p1"}),
        ("Patient", "_id=p1,p3", {"p1", "p3"}),
        ("Patient", "_id:not=p1", {"p2", "p3", "p4"}),
        ("Observation", "code=8302-2", {"o1", "o2", "o6"}),
        ("Observation", "code=http://loinc.org|8302-2", {"o1", "o2", "o6"}),
        ("Observation", "code=http://snomed.info/sct|8302-2", set()),
        ("Observation", "code=|271649006", set()),  # it has a system
        ("Observation", "code:text=body", {"o1", "o2", "o3", "o6"}),  # displays Body Height/Weight
        ("Observation", "code:text=weight", {"o3"}),  # CodeableConcept.text 'Weight'
        ("Observation", "code:text=free", {"o4"}),
        ("Observation", "_tag=test", {"o1"}),
        ("Observation", "_tag=http://tags|test", {"o1"}),
        ("Observation", "status=final&code=8302-2", {"o1", "o2"}),
        ("Observation", "category=vital-signs", {"o1"}),
    ],
)
def test_token(db: Db, rtype: str, query: str, expected: set[str]) -> None:
    """Token: code, system|code, |code, system|, :not, :text, :missing, _id."""
    assert ids(db, rtype, query) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("subject=Patient/p1", {"o1", "o3", "o4"}),  # o4's absolute URL ends in Patient/p1
        ("subject=p1", {"o1", "o3", "o4"}),
        ("subject:Patient=p1", {"o1", "o3", "o4"}),
        ("patient=p1", {"o1", "o3", "o4"}),
        ("subject=http://other.org/fhir/Patient/p1", {"o4"}),
        ("subject:missing=true", {"o6"}),  # only an identifier
        ("subject:identifier=http://hosp/mrn|MRN9", {"o6"}),
        ("performer=Practitioner/dr1", {"o4"}),
        ("subject=Patient/p1/_history/2", set()),  # no stored reference is versioned
        ("subject=Patient/p1,Patient/p3", {"o1", "o3", "o4", "o5"}),
        ("encounter=e1", {"o1"}),
    ],
)
def test_reference(db: Db, query: str, expected: set[str]) -> None:
    """Reference: id, Type/id, absolute URL, :Type, :identifier, :missing."""
    assert ids(db, "Observation", query) == expected


# resource ranges of Observation.effective (UTC):
# o1 2020-03-15T10:30:00.000000 .. 10:30:00.999999    (seconds precision)
# o2 2020-03-15T00:00:00.000000 .. 23:59:59.999999    (a day)
# o3 2020-01-01T03:00:00.000000 .. 2020-01-02T23:59:59.999999 (Period; start at -05:00)
# o4 2021-01-01 .. 2021-12-31T23:59:59.999999          (a year)
# o5, o6, o7: no date
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("date=2020-03-15", {"o1", "o2"}),  # eq: resource range within the day
        ("date=eq2020", {"o1", "o2", "o3"}),
        ("date=2020-01", {"o3"}),
        ("date=2020-01-01", set()),  # o3 runs into 01-02: not contained
        ("date=ne2020-01-01", {"o1", "o2", "o3", "o4"}),
        ("date=gt2020-03-15", {"o4"}),  # ends after the day
        ("date=ge2020-03-15", {"o1", "o2", "o4"}),
        ("date=lt2020-03-15", {"o3"}),  # starts before the day
        ("date=le2020-03-15", {"o1", "o2", "o3"}),
        ("date=sa2020-01-01", {"o1", "o2", "o4"}),  # starts after 2020-01-01 ends
        ("date=eb2020-03-15", {"o3"}),  # ends before 2020-03-15 starts
        ("date=2020-03-15T10:30", {"o1"}),  # minute precision, UTC
        ("date=2020-03-15T12:30:00+02:00", {"o1"}),  # the same instant in another zone
        ("date=2020-03-15T12:30:00 02:00", {"o1"}),  # an unencoded '+' arrives as a space
        ("date:missing=true", {"o5", "o6", "o7"}),
        ("date=lt2020-01-01,gt2020-12-31", {"o4"}),  # OR of two prefixes
    ],
)
def test_date(db: Db, query: str, expected: set[str]) -> None:
    """Date prefixes on ranges, per the R4 search prefix table."""
    assert ids(db, "Observation", query) == expected


def test_date_approximately(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    """ap widens the search range by 10% of its distance from now on each side."""
    # now = 2022-03-15: ap2021-03-15 +/- ~36.5 days covers 2021-02-07..2021-04-21: o4 (2021) only
    monkeypatch.setattr(date_type, "now", lambda: datetime(2022, 3, 15))
    assert ids(db, "Observation", "date=ap2021-03-15") == {"o4"}
    # ap2020-04-01: 713 days before now, +/- 71.3 days = 2020-01-20..2020-06-11: o1 and o2 (03-15),
    # not o3 (ends 2020-01-02)
    assert ids(db, "Observation", "date=ap2020-04-01") == {"o1", "o2"}
    # ap2020-03-01: +/- 74.4 days starts 2019-12-17, so o3 now overlaps
    assert ids(db, "Observation", "date=ap2020-03-01") == {"o1", "o2", "o3"}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("_lastUpdated=ge2024-01-03", {"p3", "p4"}),
        ("_lastUpdated=2024-01-02", {"p2"}),
        ("_lastUpdated=lt2024-01-02", {"p1"}),
        ("_lastUpdated=2024-01-02T12:00:00Z", {"p2"}),  # second precision contains the stored instant
        ("_lastUpdated=gt2024-01-02T12:00:00.000000Z", {"p3", "p4"}),
        ("_lastUpdated=le2024-01-02T12:00:00.000000Z", {"p1", "p2"}),
        ("_lastUpdated=sa2024-01-03", {"p4"}),
    ],
)
def test_last_updated(db: Db, query: str, expected: set[str]) -> None:
    """_lastUpdated compares resources.last_updated with the same prefix semantics."""
    assert ids(db, "Patient", query) == expected


# RiskAssessment.prediction.probability: ra1 0.25, ra2 0.3, ra3 Range 0.1..0.2, ra4 100; stored values are exact,
# the search value has the implicit range of its digits for eq/ne/ap, and is exact for gt lt ge le sa eb
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("probability=0.25", {"ra1"}),
        ("probability=0.30", {"ra2"}),  # [0.295, 0.305)
        ("probability=100", {"ra4"}),
        ("probability=1e2", {"ra4"}),  # one significant figure: [50, 150)
        ("probability=gt0.5", {"ra4"}),
        ("probability=lt0.2", {"ra3"}),
        ("probability=ge0.25", {"ra1", "ra2", "ra4"}),
        ("probability=le0.25", {"ra1", "ra3"}),
        ("probability=ne0.25", {"ra2", "ra3", "ra4"}),
        ("probability=sa0.25", {"ra2", "ra4"}),  # 0.3 starts after exactly 0.25
        ("probability=gt0.30", {"ra4"}),  # 0.3 is not greater than 0.30, whatever the precision
        ("probability=lt0.26", {"ra1", "ra3"}),
        ("probability=eb0.5", {"ra1", "ra2", "ra3"}),
        ("probability=ap100", {"ra4"}),
    ],
)
def test_number(db: Db, query: str, expected: set[str]) -> None:
    """Number: eq/ne/ap use the search value's implicit range; gt lt ge le sa eb compare exactly."""
    assert ids(db, "RiskAssessment", query) == expected


# value-quantity: o1 180 cm; o2 175.5 cm; o3 70 kg; o5 <120 mm[Hg] (-inf..120); o6 100.0 cm
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("value-quantity=180", {"o1"}),
        ("value-quantity=180||cm", {"o1"}),
        ("value-quantity=180|http://unitsofmeasure.org|cm", {"o1"}),
        ("value-quantity=180||kg", set()),
        ("value-quantity=gt170||cm", {"o1", "o2"}),
        ("value-quantity=lt100", {"o3", "o5"}),
        ("value-quantity=100", {"o6"}),
        ("value-quantity=le70", {"o3", "o5"}),
        ("value-quantity=175.5", {"o2"}),
        ("value-quantity=ap175", {"o1", "o2"}),  # 175 +/- 17.5 and the precision
    ],
)
def test_quantity(db: Db, query: str, expected: set[str]) -> None:
    """Quantity: number semantics plus system and code; a comparator opens the range."""
    assert ids(db, "Observation", query) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("_profile=http://hl7.org/fhir/StructureDefinition/vitalsigns", {"o1"}),
        ("_profile=http://hl7.org/fhir/StructureDefinition", set()),
        ("_profile:below=http://example.org/fhir/", {"o2"}),
        ("_profile:above=http://example.org/fhir/StructureDefinition/custom-obs/extra", {"o2"}),
        ("_source=http://example.org/fhir/source/a", {"o3"}),
    ],
)
def test_uri(db: Db, query: str, expected: set[str]) -> None:
    """URI: equality, :below, :above."""
    assert ids(db, "Observation", query) == expected


def order(db: Db, rtype: str, query: str) -> list[str]:
    """The ids in result order."""
    pairs = [tuple(p.split("=", 1)) for p in query.split("&")]
    return [rid for _, rid, _ in run_search(db, rtype, pairs, count=100).entries]  # type: ignore[arg-type]


def test_sort(db: Db) -> None:
    """_sort on dates (start ascending, end descending), strings, tokens, _id; missing values last."""
    assert order(db, "Patient", "_sort=birthdate") == ["p3", "p1", "p2", "p4"]  # 1970-05-01, 1970-05-12, ...
    assert order(db, "Patient", "_sort=-birthdate") == ["p4", "p2", "p3", "p1"]  # ends: 2001, 1985, 1970-05-31
    assert order(db, "Patient", "_sort=family") == ["p2", "p1", "p3", "p4"]  # muller, smith, smithson, none
    assert order(db, "Patient", "_sort=gender") == ["p3", "p1", "p2", "p4"]  # ties keep rid order
    assert order(db, "Patient", "_sort=-_id") == ["p4", "p3", "p2", "p1"]
    assert order(db, "Patient", "_sort=-_lastUpdated") == ["p4", "p3", "p2", "p1"]
    assert order(db, "Patient", "_sort=gender,-birthdate") == ["p3", "p2", "p1", "p4"]


def test_paging_and_total(db: Db) -> None:
    """Pages follow rid order; the total is exact whether counted or known from the last page."""
    q = [("_count", "2")]
    first = run_search(db, "Patient", q)
    assert [e[1] for e in first.entries] == ["p1", "p2"]
    assert first.has_next and first.total == 4
    second = run_search(db, "Patient", q, offset=2)
    assert [e[1] for e in second.entries] == ["p3", "p4"]
    assert not second.has_next and second.total == 4
    beyond = run_search(db, "Patient", q, offset=10)
    assert beyond.entries == [] and beyond.total == 4
    assert run_search(db, "Patient", [("_total", "none")]).total is None
    counted = run_search(db, "Patient", [("gender", "male"), ("_summary", "count")])
    assert counted.entries == [] and counted.total == 2
    assert run_search(db, "Patient", [], count_only=True).total == 4  # the deleted p5 is not counted


def test_bodies_are_current_json(db: Db) -> None:
    """Entries carry the stored body text."""
    res = run_search(db, "Patient", [("_id", "p1")])
    assert res.entries[0][0] == "Patient" and '"family": "Smith"' in str(res.entries[0][2])


def test_include_and_revinclude(db: Db) -> None:
    """_include adds the targets of the page; _revinclude what refers to it; never a match twice."""
    res = run_search(db, "Observation", [("code", "8302-2"), ("_include", "Observation:subject:Patient")])
    assert {e[1] for e in res.entries} == {"o1", "o2", "o6"}
    assert {e[1] for e in res.included} == {"p1", "p2"}  # o6 refers by identifier only
    res = run_search(db, "Patient", [("_id", "p1"), ("_revinclude", "Observation:subject")])
    assert {e[1] for e in res.included} == {"o1", "o3", "o4"}
    res = run_search(db, "Patient", [("_id", "p3"), ("_include", "Patient:general-practitioner")])
    assert [(e[0], e[1]) for e in res.included] == [("Practitioner", "dr1")]
    res = run_search(
        db,
        "Patient",
        [("_id", "p1,p2"), ("_revinclude", "RiskAssessment:subject"), ("_revinclude", "Observation:patient")],
    )
    assert {e[1] for e in res.included} == {"ra1", "ra2", "ra3", "o1", "o2", "o3", "o4"}


def test_include_iterate(db: Db) -> None:
    """_include applies to the matches; _include:iterate also to what was included."""
    res = run_search(
        db,
        "Observation",
        [("_id", "o5"), ("_include", "Observation:subject"), ("_include", "Patient:general-practitioner")],
    )
    assert [e[1] for e in res.included] == ["p3"]  # the matches are Observations, not Patients
    res = run_search(
        db,
        "Observation",
        [("_id", "o5"), ("_include", "Observation:subject"), ("_include:iterate", "Patient:general-practitioner")],
    )
    assert [e[1] for e in res.included] == ["p3", "dr1"]
    res = run_search(db, "Patient", [("_id", "p4"), ("_include", "Patient:*")])
    assert [e[1] for e in res.included] == ["org1"]  # every reference parameter


def test_compartment(db: Db) -> None:
    """Patient compartment: the patient and what refers to it through the compartment parameters."""
    assert ids(db, "Observation", "", compartment=("Patient", "p1")) == {"o1", "o3", "o4"}  # subject, performer
    assert ids(db, "Patient", "", compartment=("Patient", "p1")) == {"p1"}
    assert ids(db, "Practitioner", "", compartment=("Patient", "p1")) == set()  # not in the compartment
    assert ids(db, None, "", compartment=("Patient", "p1")) == {"p1", "o1", "o3", "o4", "ra1"}
    assert ids(db, "Observation", "code=8302-2", compartment=("Patient", "p1")) == {"o1"}


def test_system_search(db: Db) -> None:
    """Without a type: Resource-level parameters over every type; _type narrows."""
    assert ids(db, None, "_id=p1,o1") == {"p1", "o1"}
    assert ids(db, None, "_type=Observation&_id=p1,o1") == {"o1"}
    assert ids(db, None, "_tag=test") == {"o1"}
    assert ids(db, None, "_type=Patient,Practitioner&_sort=_id") == S | {"dr1"}


def test_unknown_parameters(db: Db) -> None:
    """Lenient: unknown and not-yet-supported parameters are ignored and reported; strict: 400."""
    res = run_search(db, "Patient", [("foo", "bar"), ("gender", "male"), ("general-practitioner.nothing", "x")])
    assert {e[1] for e in res.entries} == {"p1", "p2"}
    assert res.unknown == ["foo", "general-practitioner.nothing"]
    assert res.applied == [("gender", "male")]
    with pytest.raises(FhirError) as e:
        run_search(db, "Patient", [("foo", "bar")], strict=True)
    assert e.value.status == 400 and e.value.issues[0].code == "not-supported"


def test_match_ids(db: Db) -> None:
    """Conditional interactions get (id, version) pairs, and unknown parameters always fail."""
    assert match_ids(db, "Patient", [("identifier", "http://hosp/mrn|MRN1")]) == [("p1", 1)]
    assert len(match_ids(db, "Patient", [("name", "smi")], limit=2)) == 2
    assert match_ids(db, "Patient", [("identifier", "nobody")]) == []
    with pytest.raises(FhirError):
        match_ids(db, "Patient", [("nonsense", "1")])


@pytest.mark.parametrize(
    ("rtype", "query", "expected"),
    [
        ("Observation", "subject:Patient.name=smith", {"o1", "o3", "o4", "o5"}),  # p1 Smith, p3 Smithson
        ("Observation", "subject.name=muller", {"o2"}),
        ("Observation", "patient.gender=female", {"o5"}),
        ("Observation", "subject:Patient.general-practitioner.name=house", {"o5"}),  # p3's GP is dr1 House
        ("Observation", "subject:Patient.active:missing=true", {"o5", "o7"}),  # p3 and p4 have no active
        ("Observation", "patient._id=p2", {"o2"}),
        ("Patient", "_has:Observation:patient:code=29463-7", {"p1"}),  # o3, the weight
        ("Patient", "_has:Observation:subject:status=final", {"p1", "p2", "p3", "p4"}),
        ("Patient", "_has:RiskAssessment:subject:probability=gt0.5", {"p3"}),
        ("Patient", "_has:Observation:patient:status=amended&gender=female", set()),
        ("Practitioner", "_has:Patient:general-practitioner:_has:Observation:patient:code=271649006", {"dr1"}),
    ],
)
def test_chain_and_has(db: Db, rtype: str, query: str, expected: set[str]) -> None:
    """Chained parameters follow references forward; _has follows them backwards."""
    assert ids(db, rtype, query) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("code-value-quantity=http://loinc.org|8302-2$gt170", {"o1", "o2"}),
        ("code-value-quantity=8302-2$100", {"o6"}),
        ("code-value-quantity=29463-7$gt170", set()),  # the weight is 70
        ("code-value-quantity=29463-7$gt170,8302-2$100", {"o6"}),
        ("component-code-value-quantity=http://loinc.org|8480-6$gt100", {"o7"}),
        ("component-code-value-quantity=8480-6$lt100", set()),  # 80 belongs to the other component
        ("component-code-value-quantity=8462-4$lt100", {"o7"}),
        ("component-code-value-quantity:missing=false", {"o7"}),
    ],
)
def test_composite(db: Db, query: str, expected: set[str]) -> None:
    """Composite: every part must match within one composite value (same grp)."""
    assert ids(db, "Observation", query) == expected


def test_total_estimate(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    """_total=estimate: exact below the floor; above it PostgreSQL gives its planner's estimate, SQLite counts."""
    q = [("_count", "1"), ("_total", "estimate")]
    assert run_search(db, "Patient", q).total == 4
    monkeypatch.setattr(engine, "ESTIMATE_FLOOR", 0)
    estimated = run_search(db, "Patient", q).total
    assert estimated is not None
    if db.dialect == "sqlite":
        assert estimated == 4
    else:
        assert 1 <= estimated <= 1000  # a planner figure for a 4-row table: the order of magnitude only
    assert run_search(db, "Patient", [("_total", "accurate"), ("_count", "1")]).total == 4
