"""Batch and transaction (R4 3.1.0.11): atomicity, processing order, urn:uuid and conditional references."""

from __future__ import annotations

import gzip
import json

import orjson
from starlette.testclient import TestClient

from tests.conftest import corpus

FHIR = {"Content-Type": "application/fhir+json"}


def send(client: TestClient, bundle: dict):  # type: ignore[no-untyped-def]
    return client.post("/fhir", content=orjson.dumps(bundle), headers=FHIR)


def count(client: TestClient, rt: str) -> int:
    return client.get(f"/fhir/{rt}?_count=0").json()["total"]


def test_transaction_resolves_urn_uuid_references(client: TestClient) -> None:
    pat, enc = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a", "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        # the observation comes first and points at entries created later in the bundle
        {"fullUrl": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", "resource": {
            "resourceType": "Observation", "status": "final", "code": {"text": "hr"},
            "subject": {"reference": pat}, "encounter": {"reference": enc}},
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": enc, "resource": {"resourceType": "Encounter", "status": "finished",
                                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                                      "subject": {"reference": pat}},
         "request": {"method": "POST", "url": "Encounter"}},
        {"fullUrl": pat, "resource": {"resourceType": "Patient", "name": [{"family": "Urn"}]},
         "request": {"method": "POST", "url": "Patient"}},
    ]}
    r = send(client, bundle)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created"] * 3
    obs_loc, enc_loc, pat_loc = (e["response"]["location"] for e in out["entry"])
    pid = pat_loc.split("/")[1]
    obs = client.get("/fhir/" + obs_loc.rsplit("/_history", 1)[0]).json()
    assert obs["subject"]["reference"] == f"Patient/{pid}"
    assert obs["encounter"]["reference"] == enc_loc.rsplit("/_history", 1)[0]


def test_failed_transaction_leaves_nothing_behind(client: TestClient) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": "Kept?"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "gender": "not-a-gender"}, "request": {"method": "POST", "url": "Patient"}},
    ]}
    r = send(client, bundle)
    assert r.status_code in (400, 422)
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "entry[1]" in r.text
    assert count(client, "Patient") == 0
    assert client.get("/fhir/_history").json()["total"] == 0


def test_transaction_processing_order_delete_post_put_get(client: TestClient) -> None:
    client.put("/fhir/Patient/old", content=orjson.dumps({"resourceType": "Patient", "id": "old"}), headers=FHIR)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "Patient?_id=new"}},
        {"resource": {"resourceType": "Patient", "id": "new", "active": True}, "request": {"method": "PUT", "url": "Patient/new"}},
        {"request": {"method": "DELETE", "url": "Patient/old"}},
    ]}
    r = send(client, bundle)
    assert r.status_code == 200, r.text
    get, put, delete = r.json()["entry"]
    # GET runs last, so it sees the PUT of the same transaction
    assert get["resource"]["total"] == 1
    assert put["response"]["status"] == "201 Created"
    assert delete["response"]["status"] == "204 No Content"
    assert client.get("/fhir/Patient/old").status_code == 410


def test_conditional_create_and_conditional_reference_in_transaction(client: TestClient) -> None:
    existing = client.post("/fhir/Patient", content=orjson.dumps(
        {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "42"}]}), headers=FHIR).json()
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:3f2504e0-4f89-41d3-9a0c-0305e82c3301",
         "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "42"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|42"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:3f2504e0-4f89-41d3-9a0c-0305e82c3301"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "y"},
                      "subject": {"reference": "Patient?identifier=urn:mrn|42"}},
         "request": {"method": "POST", "url": "Observation"}},
    ]}
    r = send(client, bundle)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK"
    for e in entries[1:]:
        obs = client.get("/fhir/" + e["response"]["location"].rsplit("/_history", 1)[0]).json()
        assert obs["subject"]["reference"] == f"Patient/{existing['id']}"
    assert count(client, "Patient") == 1


def test_unresolvable_reference_fails_the_transaction(client: TestClient) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "Patient/does-not-exist"}},
         "request": {"method": "POST", "url": "Observation"}},
    ]}
    r = send(client, bundle)
    assert r.status_code == 422
    assert count(client, "Observation") == 0


def test_batch_entries_succeed_or_fail_independently(client: TestClient) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "active": True}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "gender": "bad"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
    ]}
    r = send(client, bundle)
    assert r.status_code == 200
    out = r.json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses[0] == "201 Created"
    assert statuses[1] in ("400", "422")
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert statuses[2] == "404"
    assert count(client, "Patient") == 1


def test_bundle_that_is_not_batch_or_transaction_is_rejected(client: TestClient) -> None:
    r = send(client, {"resourceType": "Bundle", "type": "collection"})
    assert r.status_code == 400
    r = send(client, {"resourceType": "Patient"})
    assert r.status_code == 400


def test_synthea_transaction_bundle_loads_atomically(client: TestClient) -> None:
    path = sorted(corpus("synthea-r4", "transaction-bundles").glob("*.json.gz"))[0]
    with gzip.open(path, "rt") as f:
        bundle = json.load(f)
    r = send(client, bundle)
    assert r.status_code == 200, r.text[:2000]
    entries = r.json()["entry"]
    assert len(entries) == len(bundle["entry"])
    assert all(e["response"]["status"].startswith("201") for e in entries)
    assert count(client, "Patient") == 1
