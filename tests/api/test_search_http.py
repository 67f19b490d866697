"""Search over HTTP (R4 search.html 3.1.1): GET and POST, strict and lenient handling, self links, compartments."""

from __future__ import annotations

import orjson
from starlette.testclient import TestClient

FHIR = {"Content-Type": "application/fhir+json"}


def put(client: TestClient, resource: dict) -> None:
    r = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", content=orjson.dumps(resource), headers=FHIR)
    assert r.status_code in (200, 201), r.text


def population(client: TestClient) -> None:
    put(client, {"resourceType": "Patient", "id": "p1", "name": [{"family": "Smith"}], "gender": "female"})
    put(client, {"resourceType": "Patient", "id": "p2", "name": [{"family": "Smythe"}], "gender": "male"})
    for i, (pid, code) in enumerate([("p1", "8867-4"), ("p1", "8310-5"), ("p2", "8867-4")]):
        put(client, {"resourceType": "Observation", "id": f"o{i}", "status": "final",
                     "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                     "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": f"2024-0{i + 1}-01"})


def match_ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def test_get_and_post_search_agree(client: TestClient) -> None:
    population(client)
    got = client.get("/fhir/Patient?name=sm&gender=female").json()
    posted = client.post("/fhir/Patient/_search", data={"name": "sm", "gender": "female"}).json()
    assert match_ids(got) == match_ids(posted) == ["p1"]
    assert got["total"] == 1
    assert client.post("/fhir/Patient/_search", content=b"{}", headers=FHIR).status_code == 415


def test_lenient_ignores_unknown_parameters_and_says_so(client: TestClient) -> None:
    population(client)
    bundle = client.get("/fhir/Patient?gender=male&colour=blue").json()
    assert match_ids(bundle) == ["p2"]
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and "colour" in orjson.dumps(outcome).decode()
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert "gender=male" in self_link and "colour" not in self_link


def test_strict_rejects_unknown_and_everyone_rejects_malformed(client: TestClient) -> None:
    population(client)
    r = client.get("/fhir/Patient?colour=blue", headers={"Prefer": "handling=strict"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Patient?birthdate=notadate").status_code == 400
    assert client.get("/fhir/Patient?_count=abc").status_code == 400
    # digits that str.isdigit() accepts but are not ASCII (found by the attack suite: int('²') raised, a 500)
    for odd in ("²", "٣", "１"):
        assert client.get("/fhir/Patient", params={"_count": odd}).status_code == 400, odd
        assert client.get("/fhir/Patient", params={"_offset": odd}).status_code == 400, odd
        assert client.get(f"/fhir/Patient/x/_history/{odd}").status_code in (400, 404), odd


def test_compartment_and_system_search(client: TestClient) -> None:
    population(client)
    comp = client.get("/fhir/Patient/p1/Observation").json()
    assert sorted(match_ids(comp)) == ["o0", "o1"]
    comp = client.get("/fhir/Patient/p1/Observation?code=http://loinc.org|8867-4").json()
    assert match_ids(comp) == ["o0"]
    system = client.get("/fhir?_type=Patient,Observation&_id=p2,o2").json()
    assert sorted(match_ids(system)) == ["o2", "p2"]


def test_include_revinclude_and_sort_over_http(client: TestClient) -> None:
    population(client)
    b = client.get("/fhir/Observation?code=8867-4&_include=Observation:subject&_sort=-date").json()
    assert match_ids(b) == ["o2", "o0"]
    assert sorted(e["resource"]["id"] for e in b["entry"] if e["search"]["mode"] == "include") == ["p1", "p2"]
    b = client.get("/fhir/Patient?_id=p1&_revinclude=Observation:subject").json()
    assert sorted(e["resource"]["id"] for e in b["entry"] if e["search"]["mode"] == "include") == ["o0", "o1"]
