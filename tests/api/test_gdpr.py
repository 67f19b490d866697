"""GDPR: Patient/$everything (portability, R4 patient-operation-everything) and Patient/$erase (erasure)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from salus.api import create_app
from salus.config import Settings
from salus.security import audit
from salus.security.tokens import Grant, issue_access_token
from salus.store import Store
from salus.store.schema import INDEX_TABLES

BASE = "http://testserver/fhir"
NAME = "Zyxwvutsrq"  # the erased patient's family name: it must survive nowhere


@dataclass
class World:
    """Two patients with their data, an Organization, and what each patient's compartment holds."""

    p1: str
    p2: str
    org: str
    compartment: dict[str, set[str]] = field(default_factory=dict)  # patient -> {"Type/id"} current
    deleted_obs: str = ""
    moved_obs: str = ""
    provenance: str = ""


def create(client: TestClient, resource: dict[str, Any]) -> str:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def obs(pid: str, enc: str | None, text: str) -> dict[str, Any]:
    o: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"text": text},
                         "subject": {"reference": f"Patient/{pid}"}}
    if enc:
        o["encounter"] = {"reference": f"Encounter/{enc}"}
    return o


def build(client: TestClient) -> World:
    """p1: 2 Encounters, 5 Observations, a Condition (and a deleted and a moved Observation); p2: less."""
    org = create(client, {"resourceType": "Organization", "name": "Clinic"})
    patient = {"resourceType": "Patient", "name": [{"family": NAME, "given": ["Erin"]}],
               "managingOrganization": {"reference": f"Organization/{org}"}}
    p1 = create(client, patient)
    # a second version of p1, so erasure has history to remove
    assert client.put(f"/fhir/Patient/{p1}", json={**patient, "id": p1, "gender": "female"}).status_code == 200
    p2 = create(client, {"resourceType": "Patient", "name": [{"family": "Other"}],
                         "managingOrganization": {"reference": f"Organization/{org}"}})
    w = World(p1, p2, org)
    w.compartment = {p1: {f"Patient/{p1}"}, p2: {f"Patient/{p2}"}}
    for pid, n_enc, n_obs in ((p1, 2, 5), (p2, 1, 2)):
        encs = [create(client, {"resourceType": "Encounter", "status": "finished",
                                "class": {"code": "AMB"}, "subject": {"reference": f"Patient/{pid}"},
                                "serviceProvider": {"reference": f"Organization/{org}"}}) for _ in range(n_enc)]
        w.compartment[pid] |= {f"Encounter/{e}" for e in encs}
        for k in range(n_obs):
            w.compartment[pid].add(f"Observation/{create(client, obs(pid, encs[k % n_enc], f'obs {k}'))}")
    cond = create(client, {"resourceType": "Condition", "subject": {"reference": f"Patient/{p1}"},
                           "code": {"text": "asthma"}})
    w.compartment[p1].add(f"Condition/{cond}")
    # p1's data that only history remembers: a deleted Observation, and one moved to p2 (its v1 was p1's)
    w.deleted_obs = create(client, obs(p1, None, "deleted"))
    assert client.delete(f"/fhir/Observation/{w.deleted_obs}").status_code == 204
    w.moved_obs = create(client, obs(p1, None, "moved"))
    assert client.put(f"/fhir/Observation/{w.moved_obs}",
                      json={**obs(p2, None, "moved"), "id": w.moved_obs}).status_code == 200
    w.compartment[p2].add(f"Observation/{w.moved_obs}")
    # outside the compartment, pointing into it: its reference is left dangling by the erasure
    target = sorted(r for r in w.compartment[p1] if r.startswith("Observation/"))[0]
    w.provenance = create(client, {"resourceType": "Provenance", "target": [{"reference": target}],
                                   "recorded": "2024-01-01T00:00:00Z",
                                   "agent": [{"who": {"reference": f"Organization/{org}"}}]})
    return w


def everything(client: TestClient, pid: str, **params: str) -> list[dict[str, Any]]:
    """Every page of $everything, following next links; returns the match entries' resources."""
    url: str | None = f"/fhir/Patient/{pid}/$everything"
    found: list[dict[str, Any]] = []
    query: dict[str, str] | None = params
    while url:
        r = client.get(url, params=query)
        assert r.status_code == 200, r.text
        bundle = r.json()
        assert bundle["type"] == "searchset"
        found += [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        query = None
        if url:
            url = url.removeprefix("http://testserver")
    return found


def refs(resources: list[dict[str, Any]]) -> list[str]:
    return [f"{r['resourceType']}/{r['id']}" for r in resources]


# ---- $everything -------------------------------------------------------------------------------


def test_everything_is_exactly_the_compartment(client: TestClient) -> None:
    w = build(client)
    for pid in (w.p1, w.p2):
        got = refs(everything(client, pid))
        assert len(got) == len(set(got))
        assert set(got) == w.compartment[pid]
    assert f"Organization/{w.org}" not in refs(everything(client, w.p1))  # referenced, not patient data
    first = client.get(f"/fhir/Patient/{w.p1}/$everything").json()
    assert first["total"] == len(w.compartment[w.p1])


def test_everything_type_and_since(client: TestClient) -> None:
    w = build(client)
    got = refs(everything(client, w.p1, _type="Observation,Condition"))
    assert set(got) == {r for r in w.compartment[w.p1] if r.split("/")[0] in ("Observation", "Condition")}
    # a type outside the compartment: a warning, no data
    r = client.get(f"/fhir/Patient/{w.p1}/$everything", params={"_type": "Organization"}).json()
    assert [e["search"]["mode"] for e in r["entry"]] == ["outcome"]
    assert client.get(f"/fhir/Patient/{w.p1}/$everything", params={"_type": "Bogus"}).status_code == 400

    one = sorted(x for x in w.compartment[w.p1] if x.startswith("Observation/"))[-1]
    body = client.get(f"/fhir/{one}").json()
    updated = client.put(f"/fhir/{one}", json={**body, "status": "amended"}).json()
    since = updated["meta"]["lastUpdated"]
    assert refs(everything(client, w.p1, _since=since)) == [one]
    assert client.get(f"/fhir/Patient/{w.p1}/$everything", params={"_since": "yesterday"}).status_code == 400
    # POST with a Parameters body says the same
    r = client.post(f"/fhir/Patient/{w.p1}/$everything", json={"resourceType": "Parameters", "parameter": [
        {"name": "_since", "valueInstant": since}, {"name": "_type", "valueCode": "Observation"}]})
    assert r.status_code == 200, r.text
    assert [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in r.json()["entry"]] == [one]


def test_everything_pages_without_duplicates_or_gaps(client: TestClient) -> None:
    w = build(client)
    first = client.get(f"/fhir/Patient/{w.p1}/$everything", params={"_count": "3"}).json()
    assert len(first["entry"]) == 3
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert "_count=3" in nxt and "_cursor=" in nxt and "/Patient/" in nxt and "$everything" in nxt
    got = refs(everything(client, w.p1, _count="3"))
    assert len(got) == len(set(got)) == len(w.compartment[w.p1])
    assert set(got) == w.compartment[w.p1]
    # a resource written while paging does not disturb the pages already handed out
    pages = client.get(f"/fhir/Patient/{w.p1}/$everything", params={"_count": "4"}).json()
    seen = refs([e["resource"] for e in pages["entry"]])
    extra = create(client, obs(w.p1, None, "late"))
    url: str | None = next(link["url"] for link in pages["link"] if link["relation"] == "next")
    while url:
        b = client.get(url.removeprefix("http://testserver")).json()
        seen += refs([e["resource"] for e in b.get("entry", [])])
        url = next((link["url"] for link in b["link"] if link["relation"] == "next"), None)
    assert len(seen) == len(set(seen))
    assert set(seen) == w.compartment[w.p1] | {f"Observation/{extra}"}


def test_everything_404_and_410(client: TestClient) -> None:
    assert client.get("/fhir/Patient/nobody/$everything").status_code == 404
    pid = create(client, {"resourceType": "Patient"})
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204
    assert client.get(f"/fhir/Patient/{pid}/$everything").status_code == 410
    assert client.put(f"/fhir/Patient/{pid}/$everything", json={}).status_code == 405


# ---- $erase ------------------------------------------------------------------------------------


def rids(store: Store, refs_: set[str]) -> list[int]:
    out = []
    for r in sorted(refs_):
        t, i = r.split("/")
        out += [int(x) for (x,) in store.query("SELECT rid FROM resources WHERE res_type = ? AND res_id = ?", (t, i))]
    return out


def rows_of(store: Store, rid_list: list[int]) -> dict[str, int]:
    marks = ", ".join("?" * len(rid_list))
    return {
        table: int(store.query(f"SELECT COUNT(*) FROM {table} WHERE rid IN ({marks})", rid_list)[0][0])
        for table in (*INDEX_TABLES, "resource_versions", "resources")
    }


def snapshot(store: Store) -> dict[str, int]:
    return {t: int(store.query(f"SELECT COUNT(*) FROM {t}")[0][0])
            for t in (*INDEX_TABLES, "resource_versions", "resources", "audit_log")}


def test_erase_removes_every_row_and_nothing_else(client: TestClient, store: Store) -> None:
    w = build(client)
    erased = w.compartment[w.p1] | {f"Observation/{w.deleted_obs}"}
    doomed = rids(store, erased)
    assert len(doomed) == len(erased)
    before = rows_of(store, doomed)
    assert before["resource_versions"] > len(doomed) and before["idx_reference"] > 0 and before["refs"] > 0
    p2_before = sorted(refs(everything(client, w.p2)))

    r = client.post(f"/fhir/Patient/{w.p1}/$erase")
    assert r.status_code == 200, r.text
    params = {p["name"]: p for p in r.json()["parameter"]}
    assert params["erased"]["valueInteger"] == len(erased)
    per_type = {p["part"][0]["valueCode"]: {q["name"]: q.get("valueInteger") for q in p["part"][1:]}
                for p in r.json()["parameter"] if p["name"] == "type"}
    assert per_type["Observation"]["erased"] == 6 and per_type["Patient"] == {"erased": 1, "versions": 2}
    assert per_type["Observation"]["purgedVersions"] == 1  # v1 of the Observation moved to p2
    assert [p["valueString"] for p in r.json()["parameter"] if p["name"] == "danglingReferrer"] == [
        f"Provenance/{w.provenance}"]

    assert all(n == 0 for n in rows_of(store, doomed).values()), rows_of(store, doomed)
    assert store.query("SELECT COUNT(*) FROM resource_versions WHERE body LIKE ?", (f"%{NAME}%",))[0][0] == 0
    assert store.query("SELECT COUNT(*) FROM resource_versions WHERE body LIKE ?", (f"%Patient/{w.p1}%",))[0][0] == 0
    # nothing remains: 404 (not 410), no history, no search hit, no $everything
    for ref in sorted(erased):
        assert client.get(f"/fhir/{ref}").status_code == 404, ref
        assert client.get(f"/fhir/{ref}/_history").status_code == 404, ref
    history = client.get("/fhir/_history", params={"_count": "1000"}).json()
    listed = {e["fullUrl"].removeprefix(f"{BASE}/") for e in history.get("entry", [])}
    assert listed and not listed & erased
    assert client.get("/fhir/Observation", params={"subject": f"Patient/{w.p1}"}).json()["total"] == 0
    assert client.get(f"/fhir/Patient/{w.p1}/$everything").status_code == 404
    assert client.post(f"/fhir/Patient/{w.p1}/$erase").status_code == 404
    # the other patient, the Organization and the referrer are intact; the moved Observation lost only v1
    assert sorted(refs(everything(client, w.p2))) == p2_before
    assert client.get(f"/fhir/Organization/{w.org}").status_code == 200
    assert client.get(f"/fhir/Provenance/{w.provenance}").status_code == 200
    moved = client.get(f"/fhir/Observation/{w.moved_obs}/_history").json()
    assert [e["response"]["etag"] for e in moved["entry"]] == ['W/"2"']
    assert client.get(f"/fhir/Observation/{w.moved_obs}/_history/1").status_code == 404
    assert client.get(f"/fhir/Patient/{w.p1}/$erase").status_code == 405


def test_erase_of_a_deleted_patient(client: TestClient, store: Store) -> None:
    pid = create(client, {"resourceType": "Patient", "name": [{"family": NAME}]})
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204
    r = client.post(f"/fhir/Patient/{pid}/$erase")
    assert r.status_code == 200, r.text
    assert client.get(f"/fhir/Patient/{pid}").status_code == 404
    assert store.query("SELECT COUNT(*) FROM resource_versions WHERE res_id = ?", (pid,))[0][0] == 0


def test_a_failure_mid_erasure_rolls_everything_back(client: TestClient, store: Store, service: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from salus.service import erasure

    w = build(client)
    before = snapshot(store)

    def fail(*args: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(erasure, "_record", fail)  # runs after every row is deleted
    with pytest.raises(RuntimeError):
        service.erase_patient(w.p1)
    assert snapshot(store) == before
    assert client.get(f"/fhir/Patient/{w.p1}").status_code == 200
    assert set(refs(everything(client, w.p1))) == w.compartment[w.p1]


def test_erasure_is_audited_without_the_erased_data(audited: tuple[TestClient, Settings], store: Store) -> None:
    client, settings = audited
    w = build(client)
    count = int(store.query("SELECT COUNT(*) FROM audit_log")[0][0])
    assert client.post(f"/fhir/Patient/{w.p1}/$erase").status_code == 200
    bodies = [orjson.dumps(e).decode() for _, e in audit.read_events(store, after=count)]
    erasures = [orjson.loads(b) for b in bodies if "$erase" in b]
    assert len(erasures) == 1
    event = erasures[0]
    assert event["action"] == "D" and event["subtype"][0]["code"] == "delete"
    erased = [e for e in event["entity"] if e.get("what", {}).get("identifier", {}).get("value") == f"Patient/{w.p1}"]
    assert len(erased) == 1 and "reference" not in erased[0]["what"]
    every = [orjson.dumps(e).decode() for _, e in audit.read_events(store)]
    assert not any(NAME in b for b in every)
    assert audit.verify(store, audit.load_key(settings.data_dir)).ok


# ---- who may erase -----------------------------------------------------------------------------


@pytest.fixture
def secure(store: Store, settings: Settings) -> Iterator[TestClient]:
    """The whole app with SMART on (and so the audit trail)."""
    from salus.service import FhirService

    smart = replace(settings, auth="smart")
    with TestClient(create_app(smart, FhirService(store, smart)), base_url="http://testserver") as c:
        yield c


def bearer(store: Store, role: str, scope: str = "user/*.cruds") -> dict[str, str]:
    grant = Grant(grant_id=f"g-{role}", client_id="test-client", subject=f"{role}-user", scope=scope, role=role)
    return {"Authorization": f"Bearer {issue_access_token(store, Settings(auth='smart'), BASE, grant).token}"}


def test_only_an_administrator_may_erase(secure: TestClient, store: Store) -> None:
    clinician, admin = bearer(store, "clinician"), bearer(store, "admin")
    r = secure.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": NAME}]}, headers=clinician)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    assert secure.get(f"/fhir/Patient/{pid}/$everything", headers=clinician).status_code == 200
    refused = secure.post(f"/fhir/Patient/{pid}/$erase", headers=clinician)
    assert refused.status_code == 403, refused.text
    assert secure.get(f"/fhir/Patient/{pid}", headers=clinician).status_code == 200
    assert secure.post(f"/fhir/Patient/{pid}/$erase").status_code == 401
    done = secure.post(f"/fhir/Patient/{pid}/$erase", headers=admin)
    assert done.status_code == 200, done.text
    assert secure.get(f"/fhir/Patient/{pid}", headers=admin).status_code == 404


def test_capability_statement_lists_the_operations(client: TestClient) -> None:
    cs = client.get("/fhir/metadata").json()
    patient = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"everything", "erase"} <= {op["name"] for op in patient["operation"]}


def test_everything_goes_through_the_authorization_checks(secure: TestClient, store: Store) -> None:
    admin = bearer(store, "admin")
    pids = []
    for family in ("Mine", "Theirs"):
        r = secure.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": family}]}, headers=admin)
        pids.append(r.json()["id"])
        assert secure.post("/fhir/Observation", json=obs(pids[-1], None, "x"), headers=admin).status_code == 201
    grant = Grant(grant_id="g-app", client_id="test-client", subject="anna", scope="patient/*.rs", role="patient",
                  fhir_user=f"Patient/{pids[0]}", patient=pids[0])
    app = {"Authorization": f"Bearer {issue_access_token(store, Settings(auth='smart'), BASE, grant).token}"}
    mine = secure.get(f"/fhir/Patient/{pids[0]}/$everything", headers=app)
    assert mine.status_code == 200, mine.text
    assert {e["resource"]["resourceType"] for e in mine.json()["entry"]} == {"Patient", "Observation"}
    assert secure.get(f"/fhir/Patient/{pids[1]}/$everything", headers=app).status_code == 403
    assert secure.post(f"/fhir/Patient/{pids[0]}/$erase", headers=app).status_code == 403
