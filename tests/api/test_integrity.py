"""Referential integrity: writes may not point at missing local resources; deletes may not orphan references."""

from __future__ import annotations

import orjson
from starlette.testclient import TestClient

FHIR = {"Content-Type": "application/fhir+json"}


def obs(subject: str) -> bytes:
    return orjson.dumps({"resourceType": "Observation", "status": "final", "code": {"text": "t"},
                         "subject": {"reference": subject}})


def test_reference_to_missing_resource_is_422(client: TestClient) -> None:
    r = client.post("/fhir/Observation", content=obs("Patient/nobody"), headers=FHIR)
    assert r.status_code == 422
    assert "Patient/nobody" in r.text


def test_external_and_absolute_references_are_not_checked(client: TestClient) -> None:
    r = client.post("/fhir/Observation", content=obs("http://elsewhere.example/fhir/Patient/1"), headers=FHIR)
    assert r.status_code == 201


def test_delete_of_referenced_resource_is_409_unless_cascade(client: TestClient) -> None:
    client.put("/fhir/Patient/p", content=orjson.dumps({"resourceType": "Patient", "id": "p"}), headers=FHIR)
    oid = client.post("/fhir/Observation", content=obs("Patient/p"), headers=FHIR).json()["id"]
    r = client.delete("/fhir/Patient/p")
    assert r.status_code == 409
    assert f"Observation/{oid}" in r.text
    assert client.get("/fhir/Patient/p").status_code == 200
    assert client.delete("/fhir/Patient/p?_cascade=delete").status_code == 204
    assert client.get(f"/fhir/Observation/{oid}").status_code == 410


def test_reference_to_deleted_resource_is_422(client: TestClient) -> None:
    client.put("/fhir/Patient/gone", content=orjson.dumps({"resourceType": "Patient", "id": "gone"}), headers=FHIR)
    client.delete("/fhir/Patient/gone")
    assert client.post("/fhir/Observation", content=obs("Patient/gone"), headers=FHIR).status_code == 422


def test_integrity_can_be_switched_off(service, settings) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    service.settings = replace(settings, referential_integrity=False)
    r = service.create("Observation", orjson.loads(obs("Patient/nobody")))
    assert r.status == 201
