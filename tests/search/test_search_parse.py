"""Parsing a search query into the typed tree; malformed values are 400s."""

from __future__ import annotations

from decimal import Decimal

import pytest

from salus.fhir.outcome import FhirError
from salus.search import parse_query
from salus.search.tree import (
    CompositeValue,
    DateValue,
    Include,
    Missing,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    SortKey,
    StringValue,
    TokenValue,
)


def test_tree_shape() -> None:
    """Filters become clauses (comma = OR inside, repeats = AND); result parameters are kept apart."""
    q = parse_query(
        "Patient",
        [
            ("name", "smi,jo"),
            ("birthdate", "ge1970"),
            ("birthdate", "lt1980-06"),
            ("_count", "10"),
            ("_sort", "-birthdate,_id"),
            ("_include", "Patient:organization"),
            ("_summary", "true"),
            ("_elements", "id,name"),
            ("_total", "accurate"),
        ],
    )
    assert [(c.param.code, c.modifier) for c in q.clauses] == [("name", None), ("birthdate", None), ("birthdate", None)]
    assert q.clauses[0].values == (StringValue("smi"), StringValue("jo"))
    assert q.clauses[1].values == (
        DateValue("ge", "1970-01-01T00:00:00.000000", "1971-01-01T00:00:00.000000", "ge1970"),
    )
    assert q.clauses[2].values[0].high_excl == "1980-07-01T00:00:00.000000"  # type: ignore[union-attr]
    assert q.count == 10 and q.summary == "true" and q.elements == ["id", "name"] and q.total == "accurate"
    assert [(k.param.code, k.descending) for k in q.sort] == [("birthdate", True), ("_id", False)]
    assert q.includes == [Include("Patient", "organization")]
    assert len(q.applied) == 9 and q.unknown == []
    assert isinstance(q.sort[0], SortKey)


def test_values_per_type() -> None:
    """Token forms, reference forms, numbers, quantities, :missing, escaping."""
    q = parse_query(
        "Observation",
        [
            ("code", "http://loinc.org|8302-2,|x,sys|,plain"),
            ("subject", "Patient/1,2,http://o.org/fhir/Patient/3"),
            ("value-quantity", "le5.40|http://unitsofmeasure.org|mg"),
            ("value-string", r"a\,b"),
            ("subject:missing", "true"),
            ("encounter:Encounter", "e1"),
            ("code:text", "Body"),
        ],
    )
    assert q.clauses[0].values == (
        TokenValue("http://loinc.org", "8302-2", True),
        TokenValue(None, "x", True),
        TokenValue("sys", None, True),
        TokenValue(None, "plain"),
    )
    assert q.clauses[1].values == (
        ReferenceValue("Patient", "1"),
        ReferenceValue(None, "2"),
        ReferenceValue(url="http://o.org/fhir/Patient/3"),
    )
    qv = q.clauses[2].values[0]
    assert isinstance(qv, QuantityValue) and qv.system == "http://unitsofmeasure.org" and qv.code == "mg"
    assert qv.number.prefix == "le" and qv.number.value == Decimal("5.40")
    assert qv.number.low == pytest.approx(5.395) and qv.number.high == pytest.approx(5.405)
    assert q.clauses[3].values == (StringValue("a,b"),)  # an escaped comma is not OR
    assert q.clauses[4].values == (Missing(True),)
    assert q.clauses[5].values == (ReferenceValue("Encounter", "e1"),)
    assert q.clauses[6].values == (TokenValue(None, None, text="Body"),)
    single = parse_query("Patient", [("organization", "o1")]).clauses[0].values[0]
    assert single == ReferenceValue("Organization", "o1")  # only one target type
    n = parse_query("RiskAssessment", [("probability", "gt0.5")]).clauses[0].values[0]
    assert isinstance(n, NumberValue) and (n.prefix, n.low, n.high) == ("gt", 0.45, 0.55)


def test_unknown_and_unsupported_are_collected() -> None:
    """Unknown names, chains, _has, composites, specials and expression-less parameters: not applied."""
    q = parse_query(
        "Observation",
        [
            ("foo", "1"),
            ("subject.nothing", "x"),
            ("subject:Patient.foo.name", "x"),
            ("_has:Observation:code:code", "1"),
            ("code.name", "x"),
            ("_text", "x"),
            ("_format", "json"),
            ("status", ""),
        ],
    )
    assert q.unknown == [
        "foo",
        "subject.nothing",
        "subject:Patient.foo.name",
        "_has:Observation:code:code",
        "code.name",
        "_text",
    ]
    assert q.clauses == [] and q.applied == []  # _format is the doors' business; empty values are absent
    assert parse_query("Patient", [("age", "5")]).unknown == ["age"]


def test_system_level() -> None:
    """No type: Resource parameters only; _type narrows and its common parameters apply."""
    q = parse_query(None, [("_type", "Patient,Practitioner"), ("name", "x"), ("_tag", "t")])
    assert q.resource_types == ("Patient", "Practitioner")
    assert [c.param.code for c in q.clauses] == ["name", "_tag"]  # both types have name
    q = parse_query(None, [("name", "x"), ("_id", "1")])
    assert q.resource_types is None and q.unknown == ["name"]


@pytest.mark.parametrize(
    ("rtype", "query", "code"),
    [
        ("Patient", [("birthdate", "1970-13")], "invalid"),
        ("Patient", [("birthdate", "xx1970")], "invalid"),
        ("RiskAssessment", [("probability", "abc")], "invalid"),
        ("Observation", [("value-quantity", "5|a")], "invalid"),
        ("Patient", [("name:foo", "x")], "invalid"),
        ("Patient", [("gender:above", "x")], "invalid"),
        ("Patient", [("gender:missing", "maybe")], "invalid"),
        ("Patient", [("identifier", "a|b|c")], "invalid"),
        ("Patient", [("identifier", "|")], "invalid"),
        ("Observation", [("subject", "Foo/1")], "invalid"),
        ("Observation", [("subject:Organization", "1")], "invalid"),
        ("Patient", [("_count", "-1")], "invalid"),
        ("Patient", [("_sort", "nope")], "invalid"),
        ("Patient", [("_sort", "organization")], "not-supported"),
        ("Patient", [("_include", "Patient:gender")], "invalid"),
        ("Patient", [("_include", "*")], "not-supported"),
        ("Patient", [("_summary", "maybe")], "invalid"),
        ("Patient", [("_id:exact", "1")], "invalid"),
        ("Patient", [("_lastUpdated", "soon")], "invalid"),
        (None, [("_type", "Nope")], "invalid"),
        ("Nope", [], "not-supported"),
    ],
)
def test_malformed_values_are_400(rtype: str | None, query: list[tuple[str, str]], code: str) -> None:
    """A malformed value is an error with a clear message, not an ignored parameter."""
    with pytest.raises(FhirError) as e:
        parse_query(rtype, query)
    assert e.value.status == 400
    assert e.value.issues[0].code == code
    assert e.value.issues[0].diagnostics


def test_chains_and_has() -> None:
    """Chains become forward links, _has reverse ones; the clause sits on the last link's types."""
    q = parse_query("Observation", [("subject:Patient.general-practitioner.name:exact", "House")])
    (c,) = q.clauses
    assert [(lk.param.code, lk.source_types, lk.target_types, lk.reverse) for lk in c.chain] == [
        ("subject", ("Observation",), ("Patient",), False),
        ("general-practitioner", ("Patient",), ("Practitioner", "Organization"), False),  # those with 'name'
    ]
    assert (c.resource_types, c.param.code, c.modifier) == (("Practitioner", "Organization"), "name", "exact")
    q = parse_query("Patient", [("_has:Observation:patient:code", "1234")])
    (c,) = q.clauses
    assert [(lk.param.code, lk.source_types, lk.target_types, lk.reverse) for lk in c.chain] == [
        ("patient", ("Observation",), ("Patient",), True)
    ]
    assert (c.resource_types, c.param.code) == (("Observation",), "code")
    with pytest.raises(FhirError):
        parse_query("Patient", [("_has:Observation:patient", "1")])  # no parameter after the link


def test_composite_values() -> None:
    """``a$b``: each part parsed by its component's type."""
    q = parse_query("Observation", [("code-value-quantity", "http://loinc.org|8480-6$gt100,x$1")])
    (c,) = q.clauses
    first = c.values[0]
    assert isinstance(first, CompositeValue)
    assert first.parts[0] == TokenValue("http://loinc.org", "8480-6", True)
    assert isinstance(first.parts[1], QuantityValue) and first.parts[1].number.prefix == "gt"
    with pytest.raises(FhirError):
        parse_query("Observation", [("code-value-quantity", "8480-6")])  # one part missing
