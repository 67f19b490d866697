"""AuditEvent through the FHIR API: the trail itself, read and searched; other systems' events appended to it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from starlette.testclient import TestClient

from salus.config import Settings
from salus.fhir.outcome import FhirError
from salus.fhir.validate import validate
from salus.security import audit
from salus.security.principal import Principal, RequestContext, acting_as
from salus.store import Store


def _flush(client: TestClient) -> None:
    """Append the buffered events of reads and searches (the app would within 200 ms)."""
    client.app.state.service.audit.buffer.flush()  # type: ignore[attr-defined]


def _search(client: TestClient, **params: Any) -> dict[str, Any]:
    res = client.get("/fhir/AuditEvent", params=params)
    assert res.status_code == 200, res.text
    return res.json()


def _events(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def _patients(event: dict[str, Any]) -> set[str]:
    return {e["what"]["reference"] for e in event["entity"] if e.get("role", {}).get("code") == "1" and "reference" in e["what"]}


@pytest.fixture
def history(audited: tuple[TestClient, Settings]) -> tuple[TestClient, str, str, str]:
    """Two patients, an observation of the first, a read and a search of it: (client, p1, p2, observation)."""
    client, _ = audited
    p1 = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "female"}).json()["id"]
    p2 = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "male"}).json()["id"]
    obs = client.post("/fhir/Observation", json={"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                                 "subject": {"reference": f"Patient/{p1}"}}).json()["id"]
    assert client.get(f"/fhir/Patient/{p1}").status_code == 200
    assert client.get("/fhir/Observation", params={"subject": f"Patient/{p1}"}).status_code == 200
    _flush(client)
    return client, p1, p2, obs


def test_who_touched_a_patients_data(history: tuple[TestClient, str, str, str]) -> None:
    client, p1, p2, obs = history
    found = _events(_search(client, patient=p1))
    # newest first: the search, the read, the observation's create, the patient's create
    assert [e["subtype"][0]["code"] for e in found] == ["search-type", "read", "create", "create"]
    assert all(f"Patient/{p1}" in _patients(e) for e in found)
    assert all(validate(e, "AuditEvent") == [] for e in found)
    assert [e["subtype"][0]["code"] for e in _events(_search(client, patient=f"Patient/{p2}"))] == ["create"]
    assert _events(_search(client, patient="nobody")) == []
    # entity: the resource itself, with or without its version
    assert [e["action"] for e in _events(_search(client, entity=f"Observation/{obs}"))] == ["C"]
    assert len(_events(_search(client, entity=f"Observation/{obs}/_history/1"))) == 1


def test_tokens_dates_and_combinations(history: tuple[TestClient, str, str, str]) -> None:
    client, p1, _, _ = history
    every = _events(_search(client, _count=100))
    assert len(every) == 5
    assert {e["subtype"][0]["code"] for e in _events(_search(client, subtype="read"))} == {"read"}
    assert len(_events(_search(client, subtype="http://hl7.org/fhir/restful-interaction|create"))) == 3
    assert _events(_search(client, subtype="http://other.org|create")) == []
    assert len(_events(_search(client, action="C,R"))) == 4
    assert len(_events(_search(client, action="C", patient=p1))) == 2  # repeated parameters: all must hold
    assert len(_events(_search(client, type="rest", outcome="0"))) == 5
    assert len(_events(_search(client, address="testcl"))) == 5  # the TestClient's address, starts-with
    # users and clients are named by identifier (BALP): the anonymous caller of a server without security
    assert len(_events(_search(client, **{"agent:identifier": "urn:salus:user|anonymous"}))) == 5
    assert _events(_search(client, **{"agent:identifier": "urn:salus:client|anonymous"})) == []
    now = datetime.now(UTC)
    hour_ago = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    assert len(_events(_search(client, date=f"ge{hour_ago}"))) == 5
    assert _events(_search(client, date="lt2000")) == []
    assert len(_events(_search(client, date=now.strftime("%Y-%m-%d")))) == 5
    assert len(_events(_search(client, date=now.strftime("ap%Y-%m-%dT%H:%M:%SZ")))) == 5
    assert len(_events(_search(client, date=f"ne{now:%Y-%m-%d}"))) == 0
    first = min(every, key=lambda e: e["recorded"])["recorded"]
    assert len(_events(_search(client, date=f"gt{first}"))) == 4  # an instant: strictly after it
    assert len(_events(_search(client, _id=f"{every[0]['id']},{every[1]['id']}"))) == 2


def test_paging_and_sorting(history: tuple[TestClient, str, str, str]) -> None:
    client, _, _, _ = history
    newest = [e["id"] for e in _events(_search(client, _count=100))]
    assert [e["id"] for e in _events(_search(client, _sort="date", _count=100))] == newest[::-1]
    seen: list[str] = []
    bundle = _search(client, _count=2)
    assert "total" not in bundle  # more pages follow: the total is not known without reading them all
    while True:
        seen += [e["id"] for e in _events(bundle)]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            break
        query = parse_qs(urlparse(nxt[0]).query)
        assert "_cursor" in query
        bundle = _search(client, **{k: v[0] for k, v in query.items()})
    assert seen == newest
    assert _search(client, _summary="count")["total"] == 5
    assert _search(client, subtype="read", _summary="count")["total"] == 1


def test_read_vread_and_instance_history(history: tuple[TestClient, str, str, str]) -> None:
    client, p1, _, _ = history
    event = _events(_search(client, patient=p1, subtype="read"))[0]
    res = client.get(f"/fhir/AuditEvent/{event['id']}")
    assert res.status_code == 200 and res.headers["etag"] == 'W/"1"'
    assert res.json() == event and event["meta"]["versionId"] == "1"
    assert client.get(f"/fhir/AuditEvent/{event['id']}/_history/1").json() == event
    assert client.get(f"/fhir/AuditEvent/{event['id']}/_history/2").status_code == 404
    assert client.get("/fhir/AuditEvent/not-there").status_code == 404
    hist = client.get(f"/fhir/AuditEvent/{event['id']}/_history").json()
    assert hist["total"] == 1 and hist["entry"][0]["resource"]["id"] == event["id"]


def test_bad_and_unknown_parameters(history: tuple[TestClient, str, str, str]) -> None:
    client, _, _, _ = history
    assert client.get("/fhir/AuditEvent", params={"patient:missing": "true"}).status_code == 400
    assert client.get("/fhir/AuditEvent", params={"date": "yesterday"}).status_code == 400
    assert client.get("/fhir/AuditEvent", params={"_sort": "action"}).status_code == 400
    assert client.get("/fhir/AuditEvent", params={"_cursor": "x'; DROP TABLE audit_log"}).status_code == 400
    lenient = _search(client, colour="blue")
    assert len(_events(lenient)) == 5
    assert any(e["search"]["mode"] == "outcome" for e in lenient["entry"])
    strict = client.get("/fhir/AuditEvent", params={"colour": "blue"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and strict.json()["resourceType"] == "OperationOutcome"


EXTERNAL = {
    "resourceType": "AuditEvent",
    "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110", "display": "Patient Record"},
    "action": "R",
    "recorded": "2026-03-01T10:15:00+01:00",
    "outcome": "0",
    "agent": [{"who": {"display": "Dr Lab"}, "requestor": True, "altId": "lab-user-7"}],
    "source": {"observer": {"display": "Lab system"}},
    "entity": [{"what": {"reference": "Patient/ext-1"}}],
}


def test_other_systems_events_join_the_chain(audited: tuple[TestClient, Settings], store: Store) -> None:
    client, settings = audited
    res = client.post("/fhir/AuditEvent", json=EXTERNAL)
    assert res.status_code == 201, res.text
    eid = res.json()["id"]
    assert res.headers["location"].endswith(f"/AuditEvent/{eid}/_history/1")
    stored = client.get(f"/fhir/AuditEvent/{eid}").json()
    assert stored["agent"] == EXTERNAL["agent"] and stored["recorded"] == EXTERNAL["recorded"]
    # found by when it happened (09:15 UTC), by patient and by the agent's alternative id
    assert [e["id"] for e in _events(_search(client, date="2026-03-01T09:15:00Z"))] == [eid]
    assert _events(_search(client, date="2026-03-01T10:15:00Z")) == []
    assert [e["id"] for e in _events(_search(client, patient="ext-1", altid="lab-user-7"))] == [eid]
    # never rewritten
    assert client.put(f"/fhir/AuditEvent/{eid}", json={**EXTERNAL, "id": eid}).status_code == 405
    assert client.put("/fhir/AuditEvent/chosen-id", json={**EXTERNAL, "id": "chosen-id"}).status_code == 405
    assert client.delete(f"/fhir/AuditEvent/{eid}").status_code == 405
    patch = [{"op": "replace", "path": "/action", "value": "D"}]
    assert client.patch(f"/fhir/AuditEvent/{eid}", json=patch,
                        headers={"Content-Type": "application/json-patch+json"}).status_code == 405
    assert client.get(f"/fhir/AuditEvent/{eid}").json() == stored
    # and in the chain, with the server's own record of receiving it
    chained = [e for _, e in audit.read_events(store)]
    assert [e["id"] for e in chained if e.get("source", {}).get("observer", {}).get("display") == "Lab system"] == [eid]
    assert audit.verify(store, audit.load_key(settings.data_dir)).ok
    invalid = client.post("/fhir/AuditEvent", json={**EXTERNAL, "recorded": "not a date"})
    assert invalid.status_code in (400, 422)
    assert len([e for _, e in audit.read_events(store)]) == len(chained)


def test_only_the_auditor_and_the_admin_see_the_trail(history: tuple[TestClient, str, str, str]) -> None:
    client, p1, _, _ = history
    service = client.app.state.service  # type: ignore[attr-defined]

    def as_role(role: str, scope: str, patient: str | None = None) -> RequestContext:
        return RequestContext(Principal(f"{role}-1", role=role, scopes=frozenset({scope}), patient=patient,
                                        fhir_user=f"Patient/{patient}" if role == "patient" else None))

    for role in ("auditor", "admin"):
        with acting_as(as_role(role, "user/*.rs")):
            assert len(service.search("AuditEvent", [("patient", p1)]).entries) == 4
    for role, scope, patient in (("clinician", "user/*.rs", None), ("nurse", "user/*.rs", None),
                                 ("patient", "patient/*.rs", p1)):
        with acting_as(as_role(role, scope, patient)), pytest.raises(FhirError) as err:
            service.search("AuditEvent", [("patient", p1)])
        assert err.value.status == 403
    event_id = service.search("AuditEvent", [("patient", p1)]).entries[0][1]
    with acting_as(as_role("clinician", "user/*.rs")), pytest.raises(FhirError) as err:
        service.read("AuditEvent", event_id)
    assert err.value.status == 403
    # reading the trail is itself on the record
    _flush(client)
    auditors = [e for _, e in audit.read_events(service.store)
                if e["agent"][0]["who"]["identifier"]["value"] == "auditor-1"]
    assert auditors and all(e["entity"][1]["what"]["display"] == "AuditEvent" for e in auditors)


def test_imported_audit_events_join_the_chain_once(service: Any, store: Store, settings: Settings) -> None:
    events = [{**EXTERNAL, "id": "imported-1", "entity": [{"what": {"reference": "Patient/ext-2"}}]},
              {**EXTERNAL, "id": "imported-1"},  # a repeat in the batch: skipped, as for any type
              {"resourceType": "Patient", "id": "ext-2"}]
    service.load(events)
    service.load(events[:1])  # and in a later batch
    assert [e["id"] for e in _trail_events(store)] == ["imported-1"]
    assert service.read("AuditEvent", "imported-1").body is not None
    assert store.query("SELECT COUNT(*) FROM resources WHERE res_type = 'AuditEvent'")[0][0] == 0
    assert audit.verify(store, audit.load_or_create_key(settings.data_dir)).ok


def _trail_events(store: Store) -> list[dict[str, Any]]:
    return [e for _, e in audit.read_events(store)]


def test_the_capability_statement_says_what_the_trail_does(client: TestClient) -> None:
    cs = client.get("/fhir/metadata").json()
    (entry,) = [r for r in cs["rest"][0]["resource"] if r["type"] == "AuditEvent"]
    assert {i["code"] for i in entry["interaction"]} == {"read", "vread", "history-instance", "create", "search-type"}
    names = {p["name"] for p in entry["searchParam"]}
    assert {"patient", "date", "agent", "entity", "subtype", "action", "_id"} <= names
    assert "entity-name" not in names  # not answered by the trail
    for name in names:  # every one listed is accepted
        res = client.get("/fhir/AuditEvent", params={name: "2026" if name == "date" else "x"},
                         headers={"Prefer": "handling=strict"})
        assert res.status_code == 200, (name, res.text)


def test_a_search_of_several_patients_is_one_entry_and_one_event_each(history: tuple[TestClient, str, str, str],
                                                                       store: Store) -> None:
    client, p1, p2, _ = history
    before = store.query("SELECT COUNT(*) FROM audit_log")[0][0]
    assert len(client.get("/fhir/Patient").json()["entry"]) == 2
    _flush(client)
    assert store.query("SELECT COUNT(*) FROM audit_log")[0][0] == before + 1
    found = _events(_search(client, subtype="search-type", _count=10))
    found = [e for e in found if any(x.get("what", {}).get("display") == "Patient" for x in e["entity"])]
    assert sorted(p for e in found for p in _patients(e)) == sorted([f"Patient/{p1}", f"Patient/{p2}"])
    first, second = sorted(found, key=lambda e: e["id"])
    assert second["id"] == f"{first['id']}.1" and second["recorded"] == first["recorded"]
    assert client.get(f"/fhir/AuditEvent/{second['id']}").json() == second
    assert [e["id"] for e in _events(_search(client, _id=second["id"]))] == [second["id"]]
    assert [e["id"] for e in _events(_search(client, _id=first["id"]))] == [first["id"]]
    assert client.get(f"/fhir/AuditEvent/{first['id']}.2").status_code == 404
