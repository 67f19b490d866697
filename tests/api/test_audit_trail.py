"""Every interaction leaves an AuditEvent in the tamper-evident chain, written with the change it records."""

from __future__ import annotations

import base64

from starlette.testclient import TestClient

from salus.config import Settings
from salus.security import audit
from salus.store import Store


def events(store: Store) -> list[dict]:
    return [e for _, e in audit.read_events(store)]


def test_writes_reads_and_searches_are_audited_and_chained(audited: tuple[TestClient, Settings], store: Store) -> None:
    client, settings = audited
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "male"}).json()["id"]
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": f"Patient/{pid}"}}
    oid = client.post("/fhir/Observation", json=obs).json()["id"]
    # writes are in the chain as soon as they commit
    written = events(store)
    assert [e["subtype"][0]["code"] for e in written] == ["create", "create"]
    assert written[1]["action"] == "C"
    whats = [ent["what"].get("reference") for ent in written[1]["entity"] if "what" in ent]
    assert f"Observation/{oid}/_history/1" in whats
    assert f"Patient/{pid}" in whats  # BALP: the patient the data is about

    client.get(f"/fhir/Observation/{oid}")
    client.get("/fhir/Observation", params={"subject": f"Patient/{pid}"})
    assert client.delete(f"/fhir/Observation/{oid}").status_code in (200, 204)
    client.__exit__(None, None, None)  # the app's shutdown flushes the buffered read events

    codes = [e["subtype"][0]["code"] for e in events(store)]
    assert codes.count("read") == 1 and codes.count("search-type") == 1 and codes.count("delete") == 1
    search = next(e for e in events(store) if e["subtype"][0]["code"] == "search-type")
    query = next(ent["query"] for ent in search["entity"] if "query" in ent)
    assert f"subject=Patient%2F{pid}" in base64.b64decode(query).decode()
    result = audit.verify(store, audit.load_key(settings.data_dir))
    assert result.ok and result.checked == len(codes)


def test_a_search_records_one_event_per_patient_it_returned(audited: tuple[TestClient, Settings], store: Store) -> None:
    client, settings = audited
    pids = sorted(client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "other"}).json()["id"]
                  for _ in range(3))
    client.get("/fhir/Patient", params={"gender": "other"})
    client.get("/fhir/Patient", params={"gender": "unknown"})  # nothing found: one event, no patient
    client.__exit__(None, None, None)
    searches = [e for e in events(store) if e["subtype"][0]["code"] == "search-type"]
    assert len(searches) == 4 and len({e["id"] for e in searches}) == 4

    def patients(e: dict) -> list[str]:
        return [ent["what"]["reference"] for ent in e["entity"] if ent.get("role", {}).get("code") == "1"]

    assert sorted(p for e in searches[:3] for p in patients(e)) == [f"Patient/{p}" for p in pids]
    assert all(len(patients(e)) == 1 for e in searches[:3]) and patients(searches[3]) == []
    for e in searches:  # the query, the request id and the agents are in every copy
        assert base64.b64decode(next(x["query"] for x in e["entity"] if "query" in x)).decode().startswith("Patient?")
        assert e["agent"] == searches[0]["agent"] and e["entity"][0] == searches[0]["entity"][0] or e is searches[3]
    assert audit.verify(store, audit.load_key(settings.data_dir)).ok


def test_a_failed_write_leaves_no_audit_entry(audited: tuple[TestClient, Settings], store: Store) -> None:
    client, _ = audited
    bad = client.post("/fhir/Observation", json={"resourceType": "Observation", "status": "nonsense"})
    assert bad.status_code in (400, 422)
    assert events(store) == []


def test_audit_is_off_by_default_without_security(client: TestClient, store: Store) -> None:
    client.post("/fhir/Patient", json={"resourceType": "Patient"})
    assert events(store) == []
