"""R4 http.html: create, read, vread, update, delete, and what goes with them (3.1.0.1 - 3.1.0.7)."""

from __future__ import annotations

import orjson
from starlette.testclient import TestClient

FHIR = "application/fhir+json"
PATIENT = {"resourceType": "Patient", "name": [{"family": "Chalmers", "given": ["Peter"]}], "gender": "male"}


def post(client: TestClient, body: dict, **headers: str):  # type: ignore[no-untyped-def]
    return client.post(f"/fhir/{body['resourceType']}", content=orjson.dumps(body), headers={"Content-Type": FHIR, **headers})


def put(client: TestClient, path: str, body: dict, **headers: str):  # type: ignore[no-untyped-def]
    return client.put(f"/fhir/{path}", content=orjson.dumps(body), headers={"Content-Type": FHIR, **headers})


def issues(resp) -> list[dict]:  # type: ignore[no-untyped-def]
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"]


def test_create_assigns_id_version_and_headers(client: TestClient) -> None:
    r = post(client, {**PATIENT, "id": "ignored-by-server"})
    assert r.status_code == 201
    body = r.json()
    assert body["id"] != "ignored-by-server"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert "last-modified" in r.headers
    read = client.get(f"/fhir/Patient/{body['id']}")
    assert read.status_code == 200
    assert read.json() == body


def test_update_makes_new_versions_and_vread_returns_each(client: TestClient) -> None:
    pid = post(client, PATIENT).json()["id"]
    r = put(client, f"Patient/{pid}", {**PATIENT, "id": pid, "gender": "female"})
    assert r.status_code == 200
    assert r.json()["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Patient/{pid}/_history/1").json()["gender"] == "male"
    assert client.get(f"/fhir/Patient/{pid}/_history/2").json()["gender"] == "female"
    assert client.get(f"/fhir/Patient/{pid}/_history/3").status_code == 404


def test_update_as_create_uses_the_clients_id(client: TestClient) -> None:
    r = put(client, "Patient/client-chosen-1", {**PATIENT, "id": "client-chosen-1"})
    assert r.status_code == 201
    assert r.headers["location"].endswith("/fhir/Patient/client-chosen-1/_history/1")
    assert client.get("/fhir/Patient/client-chosen-1").status_code == 200


def test_update_id_must_match_url(client: TestClient) -> None:
    r = put(client, "Patient/a", {**PATIENT, "id": "b"})
    assert r.status_code == 400
    r = put(client, "Patient/a", PATIENT)
    assert r.status_code == 400


def test_delete_then_read_is_gone_and_history_keeps_versions(client: TestClient) -> None:
    pid = post(client, PATIENT).json()["id"]
    r = client.delete(f"/fhir/Patient/{pid}")
    assert r.status_code == 204
    assert r.headers["etag"] == 'W/"2"'
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    assert client.get(f"/fhir/Patient/{pid}/_history/2").status_code == 410
    # deleting again, or something that never existed, is not an error
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204
    assert client.delete("/fhir/Patient/never-was").status_code == 204
    hist = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert hist["type"] == "history" and hist["total"] == 2
    assert hist["entry"][0]["request"]["method"] == "DELETE" and "resource" not in hist["entry"][0]
    # a delete can be undone by an update, which continues the version sequence
    r = put(client, f"Patient/{pid}", {**PATIENT, "id": pid})
    assert r.status_code == 201 and r.json()["meta"]["versionId"] == "3"


def test_if_match_must_name_the_current_version(client: TestClient) -> None:
    pid = post(client, PATIENT).json()["id"]
    r = put(client, f"Patient/{pid}", {**PATIENT, "id": pid}, **{"If-Match": 'W/"2"'})
    assert r.status_code == 412
    assert issues(r)[0]["severity"] == "error"
    r = put(client, f"Patient/{pid}", {**PATIENT, "id": pid}, **{"If-Match": 'W/"1"'})
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"


def test_version_aware_delete(client: TestClient) -> None:
    pid = post(client, PATIENT).json()["id"]
    assert client.delete(f"/fhir/Patient/{pid}", headers={"If-Match": 'W/"2"'}).status_code == 412
    assert client.get(f"/fhir/Patient/{pid}").status_code == 200
    assert client.delete(f"/fhir/Patient/{pid}", headers={"If-Match": 'W/"1"'}).status_code == 204


def test_conditional_read_answers_304(client: TestClient) -> None:
    r = post(client, PATIENT)
    pid = r.json()["id"]
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"0"'}).status_code == 200
    lm = r.headers["last-modified"]
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": lm}).status_code == 304
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200


def test_prefer_return(client: TestClient) -> None:
    r = post(client, PATIENT, Prefer="return=minimal")
    assert r.status_code == 201 and r.content == b"" and "location" in r.headers
    r = post(client, PATIENT, Prefer="return=OperationOutcome")
    assert r.status_code == 201 and r.json()["resourceType"] == "OperationOutcome"
    r = post(client, PATIENT, Prefer="return=representation")
    assert r.json()["resourceType"] == "Patient"


def test_format_negotiation_and_pretty(client: TestClient) -> None:
    pid = post(client, PATIENT).json()["id"]
    assert client.get(f"/fhir/Patient/{pid}", headers={"Accept": "application/fhir+xml"}).status_code == 406
    assert client.get(f"/fhir/Patient/{pid}?_format=xml").status_code == 406
    assert client.get(f"/fhir/Patient/{pid}?_format=application/fhir+json").status_code == 200
    assert client.get(f"/fhir/Patient/{pid}?_format=application/fhir%2Bjson").status_code == 200
    r = client.get(f"/fhir/Patient/{pid}?_format=json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    r = client.get(f"/fhir/Patient/{pid}", headers={"Accept": "application/json"})
    assert r.headers["content-type"].startswith("application/json")
    r = client.get(f"/fhir/Patient/{pid}?_pretty=true")
    assert b"\n  " in r.content and r.json()["id"] == pid


def test_bad_input_gets_an_operation_outcome_never_a_500(client: TestClient) -> None:
    cases = [
        (client.get("/fhir/NotAType/1"), 404),
        (client.get("/fhir/patient/1"), 404),  # not the read route's type shape: still an unknown type, not a 405
        (client.post("/fhir/NotAType", content=b"{}", headers={"Content-Type": FHIR}), 404),
        (client.get("/fhir/Patient/" + "x" * 65), 400),
        (client.get("/fhir/Patient/bad$id"), 400),
        (client.get("/fhir/Patient/missing"), 404),
        (client.post("/fhir/Patient", content=b"{not json", headers={"Content-Type": FHIR}), 400),
        (client.post("/fhir/Patient", content=b"", headers={"Content-Type": FHIR}), 400),
        (client.post("/fhir/Patient", content=b"[1,2]", headers={"Content-Type": FHIR}), 400),
        (client.post("/fhir/Patient", content=orjson.dumps({"resourceType": "Observation"}), headers={"Content-Type": FHIR}), 400),
        (client.post("/fhir/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"}), 415),
        (client.post("/fhir/Patient", content=b"{}", headers={"Content-Type": "text/plain"}), 415),
        (client.post("/fhir/Patient", content=b"[" * 100000 + b"]" * 100000, headers={"Content-Type": FHIR}), 400),
        (client.post("/fhir/Patient", content=b" " * (2 * 1024 * 1024), headers={"Content-Type": FHIR}), 413),
    ]
    for resp, status in cases:
        assert resp.status_code == status, (resp.request.url, resp.status_code, resp.text[:300])
        assert resp.json()["resourceType"] == "OperationOutcome"


def test_validation_errors_list_every_problem_and_write_nothing(client: TestClient) -> None:
    bad = {"resourceType": "Patient", "gender": "robot", "birthDate": "1970-13-45", "unknownThing": 1}
    r = post(client, bad)
    assert r.status_code in (400, 422)
    where = {e for i in issues(r) for e in i.get("expression", [])}
    assert any("gender" in e for e in where)
    assert any("birthDate" in e for e in where)
    assert any("unknownThing" in e for e in where)
    assert client.get("/fhir/Patient/_history").json()["total"] == 0


def test_deeply_nested_resource_is_rejected_cleanly(client: TestClient) -> None:
    node: dict = {"valueString": "x"}
    for _ in range(100):  # beyond the validator's depth limit of 64, within what JSON encoders allow
        node = {"url": "http://e.org/x", "extension": [node]}
    r = post(client, {"resourceType": "Patient", "extension": [node]})
    assert r.status_code == 400


def test_metadata_is_a_capability_statement(client: TestClient) -> None:
    cs = client.get("/fhir/metadata").json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    assert cs["format"] == ["application/fhir+json", "json"]
    rest = cs["rest"][0]
    types = {r["type"] for r in rest["resource"]}
    assert {"Patient", "Observation", "Encounter"} <= types and len(types) == 146
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert {"read", "vread", "update", "delete", "create", "search-type", "history-instance"} <= {
        i["code"] for i in patient["interaction"]
    }
    names = {p["name"] for p in patient["searchParam"]}
    assert {"name", "birthdate", "identifier", "general-practitioner", "_id", "_lastUpdated"} <= names
    assert {"transaction", "batch"} <= {i["code"] for i in rest["interaction"]}


def test_unknown_route_and_method_are_operation_outcomes(client: TestClient) -> None:
    r = client.get("/fhir/Patient/1/2/3/4/5")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    r = client.put("/fhir/metadata", content=b"{}")
    assert r.status_code == 405 and r.json()["resourceType"] == "OperationOutcome"
