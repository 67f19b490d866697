"""Token ``:in`` and ``:not-in`` against value sets stored on the server (R4 search.html#token), on both stores."""

from __future__ import annotations

import pytest

from salus.fhir.outcome import FhirError

SYS = "http://example.org/cs/fruit"
CODE_SYSTEM = {
    "resourceType": "CodeSystem", "id": "fruit", "url": SYS, "status": "active", "content": "complete",
    "concept": [
        {"code": "citrus", "concept": [{"code": "lemon"}, {"code": "orange", "concept": [{"code": "blood-orange"}]}]},
        {"code": "apple"},
    ],
}


def vs(vid: str, compose: dict | None = None, expansion: list | None = None) -> dict:
    res: dict = {"resourceType": "ValueSet", "id": vid, "url": f"http://example.org/vs/{vid}", "status": "active"}
    if compose:
        res["compose"] = compose
    if expansion:
        res["expansion"] = {"timestamp": "2026-01-01T00:00:00Z", "contains": expansion}
    return res


def obs(oid: str, code: str, system: str = SYS) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"coding": [{"system": system, "code": code}]}}


@pytest.fixture
def loaded(service):  # type: ignore[no-untyped-def]
    service.load([
        CODE_SYSTEM,
        vs("listed", {"include": [{"system": SYS, "concept": [{"code": "lemon"}, {"code": "apple"}]}]}),
        vs("whole", {"include": [{"system": SYS}], "exclude": [{"system": SYS, "concept": [{"code": "apple"}]}]}),
        vs("isa", {"include": [{"system": SYS, "filter": [{"property": "concept", "op": "is-a", "value": "orange"}]}]}),
        vs("below", {"include": [{"system": SYS, "filter": [{"property": "concept", "op": "descendent-of",
                                                               "value": "citrus"}]}]}),
        vs("expanded", expansion=[{"system": SYS, "code": "apple"}, {"system": "http://other", "code": "lemon"}]),
        vs("empty", {"include": [{"system": SYS, "concept": [{"code": "kiwi"}]}]}),
        obs("o-lemon", "lemon"), obs("o-apple", "apple"), obs("o-orange", "orange"), obs("o-blood", "blood-orange"),
        obs("o-other-lemon", "lemon", "http://other"),
    ])
    return service


def ids(service, param: str, value: str) -> set[str]:  # type: ignore[no-untyped-def]
    return {rid for _, rid, _ in service.search("Observation", [(param, value)], count=100).entries}


def test_in(loaded) -> None:  # type: ignore[no-untyped-def]
    assert ids(loaded, "code:in", "http://example.org/vs/listed") == {"o-lemon", "o-apple"}
    assert ids(loaded, "code:in", "http://example.org/vs/whole") == {"o-lemon", "o-orange", "o-blood"}
    assert ids(loaded, "code:in", "http://example.org/vs/isa") == {"o-orange", "o-blood"}
    assert ids(loaded, "code:in", "http://example.org/vs/below") == {"o-lemon", "o-orange", "o-blood"}
    assert ids(loaded, "code:in", "http://example.org/vs/expanded") == {"o-apple", "o-other-lemon"}
    assert ids(loaded, "code:in", "http://example.org/vs/empty") == set()
    # OR across two value sets
    assert ids(loaded, "code:in", "http://example.org/vs/isa,http://example.org/vs/listed") == {
        "o-orange", "o-blood", "o-lemon", "o-apple"}


def test_not_in(loaded) -> None:  # type: ignore[no-untyped-def]
    assert ids(loaded, "code:not-in", "http://example.org/vs/whole") == {"o-apple", "o-other-lemon"}


def test_core_value_set_and_unknown(loaded) -> None:  # type: ignore[no-untyped-def]
    loaded.load([{"resourceType": "Patient", "id": "pf", "gender": "female"}, {"resourceType": "Patient", "id": "px"}])
    found = {rid for _, rid, _ in loaded.search(
        "Patient", [("gender:in", "http://hl7.org/fhir/ValueSet/administrative-gender")]).entries}
    assert found == {"pf"}
    with pytest.raises(FhirError) as err:
        loaded.search("Observation", [("code:in", "http://example.org/vs/nope")])
    assert err.value.status == 400


def test_identifier_of_type(service) -> None:  # type: ignore[no-untyped-def]
    v2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
    service.load([
        {"resourceType": "Patient", "id": "mr", "identifier": [
            {"type": {"coding": [{"system": v2, "code": "MR"}]}, "system": "urn:h", "value": "12345"}]},
        {"resourceType": "Patient", "id": "dl", "identifier": [
            {"type": {"coding": [{"system": v2, "code": "DL"}]}, "system": "urn:dmv", "value": "12345"}]},
    ])

    def found(value: str) -> set[str]:
        return {rid for _, rid, _ in service.search("Patient", [("identifier:of-type", value)]).entries}

    assert found(f"{v2}|MR|12345") == {"mr"}
    assert found(f"{v2}|DL|12345") == {"dl"}
    assert found(f"{v2}|MR|99999") == set()
    assert found(f"{v2}|MR|12345,{v2}|DL|12345") == {"mr", "dl"}
    with pytest.raises(FhirError):
        service.search("Patient", [("identifier:of-type", "12345")])


def test_list_parameter(service) -> None:  # type: ignore[no-untyped-def]
    service.load([
        {"resourceType": "Patient", "id": "a"}, {"resourceType": "Patient", "id": "b"}, {"resourceType": "Patient", "id": "c"},
        {"resourceType": "List", "id": "ward", "status": "current", "mode": "working",
         "entry": [{"item": {"reference": "Patient/a"}}, {"item": {"reference": "Patient/c"}}]},
        {"resourceType": "List", "id": "other", "status": "current", "mode": "working",
         "entry": [{"item": {"reference": "Patient/b"}}]},
    ])

    def found(query: list[tuple[str, str]]) -> set[str]:
        return {rid for _, rid, _ in service.search("Patient", query).entries}

    assert found([("_list", "ward")]) == {"a", "c"}
    assert found([("_list", "ward,other")]) == {"a", "b", "c"}
    assert found([("_list", "ward"), ("_id", "c")]) == {"c"}
    assert found([("_list", "missing-list")]) == set()
    service.delete("List", "ward")
    assert found([("_list", "ward")]) == set()


def test_above_and_below(loaded) -> None:  # type: ignore[no-untyped-def]
    assert ids(loaded, "code:below", f"{SYS}|citrus") == {"o-lemon", "o-orange", "o-blood"}
    assert ids(loaded, "code:below", f"{SYS}|orange") == {"o-orange", "o-blood"}
    assert ids(loaded, "code:above", f"{SYS}|blood-orange") == {"o-orange", "o-blood"}
    assert ids(loaded, "code:above", f"{SYS}|apple") == {"o-apple"}
    with pytest.raises(FhirError) as err:
        loaded.search("Observation", [("code:below", "http://unknown|x")])
    assert err.value.status == 400
