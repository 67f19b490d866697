"""Quantity search in canonical UCUM units, on both stores (R4 search.html#quantity)."""

from __future__ import annotations

from salus.search.types import ucum

UCUM = "http://unitsofmeasure.org"


def obs(oid: str, value: float | int, code: str, loinc: str = "2339-0") -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "valueQuantity": {"value": value, "unit": code, "system": UCUM, "code": code}}


def ids(service, query: list[tuple[str, str]]) -> set[str]:  # type: ignore[no-untyped-def]
    return {rid for _, rid, _ in service.search("Observation", query, count=100).entries}


def test_conversions_are_exact_for_listed_units() -> None:
    assert ucum.convert(5.4, "mg") == 0.0054
    assert ucum.convert(37.0, "Cel") == 310.15
    assert abs(ucum.convert(98.6, "[degF]") - 310.15) < 1e-9
    assert ucum.convert(1.0, "mg/dL") == 0.01
    assert ucum.canonical_unit(UCUM, "mg/dL") == "g/L"
    assert ucum.canonical_unit(UCUM, "mg/dL") != ucum.canonical_unit(UCUM, "mmol/L")  # needs a molar mass
    assert ucum.canonical_unit("http://other", "mg") is None


def test_search_in_other_units_finds_the_same_amount(service) -> None:  # type: ignore[no-untyped-def]
    service.load([
        obs("mg", 5400, "mg"), obs("g", 5.4, "g"), obs("kg", 0.0054, "kg"), obs("lb", 12, "[lb_av]"),
        obs("gl", 1.2, "g/L"), obs("mgdl", 120, "mg/dL"), obs("mmol", 6.7, "mmol/L"),
        obs("cel", 37.0, "Cel"), obs("f", 98.6, "[degF]"), obs("plain", 5.4, "widgets"),
    ])
    assert ids(service, [("value-quantity", f"5.4|{UCUM}|g")]) == {"mg", "g", "kg"}
    assert ids(service, [("value-quantity", f"5400|{UCUM}|mg")]) == {"mg", "g", "kg"}
    assert ids(service, [("value-quantity", f"gt5000|{UCUM}|g")]) == {"lb"}  # 12 lb = 5443 g
    assert ids(service, [("value-quantity", f"120|{UCUM}|mg/dL")]) == {"gl", "mgdl"}
    assert ids(service, [("value-quantity", f"37.0|{UCUM}|Cel")]) == {"cel", "f"}
    # mmol/L is another dimension: never mixed with mass concentrations
    assert ids(service, [("value-quantity", f"ge0|{UCUM}|mg/dL")]) == {"gl", "mgdl"}
    # a bare number compares with what was written, not with canonical copies (0.0054 g is not "lt1")
    assert ids(service, [("value-quantity", "lt1")]) == {"kg"}
    assert ids(service, [("value-quantity", "5.4")]) == {"g", "plain"}
    # a code without a system matches that code as written
    assert ids(service, [("value-quantity", "5.4||widgets")]) == {"plain"}
