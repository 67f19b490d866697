"""A third-party FHIR client (fhirpy) drives a real server over HTTP: create, read, update, history, search, transaction."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fhirpy import SyncFHIRClient

from salus.api import create_app


@pytest.fixture
def server(service, settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A uvicorn server on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(settings, service), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/fhir"
    srv.should_exit = True
    thread.join(10)


def test_fhirpy_round_trip(server: str) -> None:
    client = SyncFHIRClient(server)
    patient = client.resource("Patient", name=[{"family": "Fhirpy", "given": ["Flo"]}], gender="female",
                              birthDate="1980-02-03")
    patient.save()
    assert patient.id
    got = client.reference("Patient", patient.id).to_resource()
    assert got["name"][0]["family"] == "Fhirpy"
    got["gender"] = "other"
    got.save()
    again = client.reference("Patient", patient.id).to_resource()
    assert again["gender"] == "other" and again["meta"]["versionId"] == "2"
    found = client.resources("Patient").search(family="fhirpy").fetch_all()
    assert [p.id for p in found] == [patient.id]
    assert client.resources("Patient").search(birthdate__ge="1980-01-01").count() == 1
    assert client.resources("Patient").search(birthdate__lt="1980-01-01").count() == 0
    obs = client.resource("Observation", status="final", code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                          subject=patient.to_reference(), valueQuantity={"value": 72, "unit": "/min",
                                                                         "system": "http://unitsofmeasure.org", "code": "/min"})
    obs.save()
    by_subject = client.resources("Observation").search(subject=f"Patient/{patient.id}", code="http://loinc.org|8867-4").fetch()
    assert [o.id for o in by_subject] == [obs.id]
    history = httpx.get(f"{server}/Patient/{patient.id}/_history").json()
    assert history["total"] == 2
    tx = client.execute("/", method="post", data={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:a5b7a8a6-a1f4-4e32-8d2b-8f0b0c5a2f11", "resource": {"resourceType": "Patient", "active": True},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:a5b7a8a6-a1f4-4e32-8d2b-8f0b0c5a2f11"}},
         "request": {"method": "POST", "url": "Observation"}},
    ]})
    assert tx["type"] == "transaction-response"
    assert [e["response"]["status"] for e in tx["entry"]] == ["201 Created", "201 Created"]
    obs.delete()
    patient.delete()
    with pytest.raises(Exception):  # noqa: B017 - fhirpy raises its own error type for 410
        client.reference("Patient", patient.id).to_resource()
