"""Encryption at rest on both stores: sealed bodies, hashed identifying index values, keys and rotation."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from salus.api import create_app
from salus.config import Settings
from salus.service import FhirService
from salus.store import Store, open_store
from salus.store.crypto import (
    EncryptionError,
    SealedBodyError,
    fingerprint,
    new_master_key,
    parse_master_keys,
    rotate,
)

K1, K2 = parse_master_keys(new_master_key()), parse_master_keys(new_master_key())
FAMILY, GIVEN, MRN, PHONE = "Öbergström", "Zelda", "MRN-77123", "+44 20 7946 0958"
PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:mrn", "value": MRN, "type": {"text": "Medical record number"}}],
    "name": [{"family": FAMILY, "given": [GIVEN]}],
    "telecom": [{"system": "phone", "value": PHONE}],
    "address": [{"line": ["12 Quayside"], "city": "Tromsø", "postalCode": "9008"}],
    "birthDate": "1970-03-04",
}


@pytest.fixture
def enc(backend: str) -> Iterator[Store]:
    s = open_store(backend, pool_size=4, master_keys=K1)
    yield s
    s.close()


@pytest.fixture
def api(enc: Store, tmp_path: Any) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path)
    with TestClient(create_app(settings, FhirService(enc, settings)), base_url="http://testserver") as c:
        yield c


def post(client: TestClient, resource: dict[str, Any]) -> str:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def ids(client: TestClient, url: str, **params: str) -> list[str]:
    r = client.get(url, params=params)
    assert r.status_code == 200, r.text
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match")


def test_bodies_and_identifying_index_values_are_not_stored_in_clear(api: TestClient, enc: Store) -> None:
    pid = post(api, PATIENT)
    assert api.put(f"/fhir/Patient/{pid}", json={**PATIENT, "id": pid, "gender": "female"}).status_code == 200
    rows = enc.query("SELECT body FROM resource_versions")
    assert len(rows) == 2 and all(b.startswith("enc1:") for (b,) in rows)
    everything = " ".join(str(r) for t in ("resource_versions", "idx_string", "idx_token")
                          for r in enc.query(f"SELECT * FROM {t}")).lower()
    for secret in (FAMILY, GIVEN, MRN, PHONE, "tromsø", "quayside", "oberg"):
        assert secret.lower() not in everything, secret
    # what is not identifying stays searchable as before
    assert enc.query("SELECT COUNT(*) FROM idx_date WHERE param = 'birthdate'")[0][0] == 1
    # and every read path gives the plain resource back
    assert api.get(f"/fhir/Patient/{pid}").json()["name"][0]["family"] == FAMILY
    assert api.get(f"/fhir/Patient/{pid}/_history/1").json()["name"][0]["given"] == [GIVEN]
    history = api.get(f"/fhir/Patient/{pid}/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert [v.body is not None for v in enc.iter_current("Patient")] == [True]


def test_search_on_hashed_values(api: TestClient) -> None:
    pid = post(api, PATIENT)
    other = post(api, {"resourceType": "Patient", "name": [{"family": "Obermann", "given": ["Zed"]}],
                       "identifier": [{"system": "urn:other", "value": MRN}]})
    obs = post(api, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                     "subject": {"reference": f"Patient/{pid}"}})
    p = "/fhir/Patient"
    assert ids(api, p, family="oBERG") == [pid]  # prefix, case and accents as before
    assert ids(api, p, family="Öbergström") == [pid]
    assert ids(api, p, family="ober") == sorted([pid, other])
    assert ids(api, p, name="zeld") == [pid]
    assert ids(api, p, name="zelda oberg") == [pid]  # the whole name, as a prefix
    assert ids(api, p, **{"family:exact": FAMILY}) == [pid]
    assert ids(api, p, **{"family:exact": FAMILY.lower()}) == []
    assert ids(api, p, given="Ze") == sorted([pid, other])
    assert ids(api, p, **{"address-city": "TROMSØ"}) == [pid]
    assert ids(api, p, address="12 QUAY") == [pid]
    assert ids(api, p, identifier=f"urn:mrn|{MRN}") == [pid]
    assert ids(api, p, identifier=MRN) == sorted([pid, other])
    assert ids(api, p, identifier="urn:mrn|") == [pid]
    assert ids(api, p, identifier="MRN-7712") == []  # tokens match whole codes
    assert ids(api, p, **{"identifier:text": "medical record"}) == [pid]
    assert ids(api, p, phone=PHONE) == [pid]
    assert ids(api, p, telecom=PHONE) == [pid]
    assert ids(api, p, **{"family:missing": "false"}) == sorted([pid, other])
    assert ids(api, p, **{"family": "ober", "identifier:not": f"urn:mrn|{MRN}"}) == [other]
    assert ids(api, "/fhir/Observation", **{"subject:Patient.family": "oberg"}) == [obs]
    assert ids(api, p, **{"_has:Observation:subject:status": "final"}) == [pid]


def test_what_hashes_cannot_answer_is_a_clear_400(api: TestClient) -> None:
    post(api, PATIENT)
    org = post(api, {"resourceType": "Organization", "name": "Quayside Clinic"})
    for params in ({"family:contains": "berg"}, {"_sort": "family"}, {"_sort": "-name"}):
        r = api.get("/fhir/Patient", params=params)
        assert r.status_code == 400, (params, r.text)
        issue = r.json()["issue"][0]
        assert issue["code"] == "not-supported" and "keyed hashes" in issue["diagnostics"]
    # other types keep their values in clear, with everything string search can do
    assert ids(api, "/fhir/Organization", **{"name:contains": "side"}) == [org]
    assert api.get("/fhir/Organization", params={"_sort": "name"}).status_code == 200
    assert api.get("/fhir/Patient", params={"_sort": "birthdate"}).status_code == 200


def test_a_body_moved_or_altered_does_not_open(enc: Store) -> None:
    for i in ("a", "b"):
        with enc.transaction() as tx:
            tx.write_version("Basic", i, 1, "2024-01-01T00:00:00Z", "PUT",
                             orjson.dumps({"resourceType": "Basic", "id": i}).decode(), None, None)
    body_a = enc.query("SELECT body FROM resource_versions WHERE res_id = 'a'")[0][0]
    with enc.transaction() as tx:
        tx.query("UPDATE resource_versions SET body = ? WHERE res_id = 'b'", (body_a,))
    with pytest.raises(SealedBodyError, match="altered or moved"):
        enc.read("Basic", "b")
    flipped = body_a[:-6] + ("A" if body_a[-6] != "A" else "B") + body_a[-5:]
    with enc.transaction() as tx:
        tx.query("UPDATE resource_versions SET body = ? WHERE res_id = 'a'", (flipped,))
    with pytest.raises(SealedBodyError):
        enc.read("Basic", "a")
    with enc.transaction() as tx:
        tx.query("UPDATE resource_versions SET body = ? WHERE res_id = 'a'", ('{"resourceType":"Basic","id":"a"}',))
    with pytest.raises(SealedBodyError, match="unencrypted"):
        enc.read("Basic", "a")


def test_the_master_key_is_required_and_checked(backend: str) -> None:
    open_store(backend, pool_size=2, master_keys=K1).close()
    with pytest.raises(EncryptionError, match="this database is encrypted"):
        open_store(backend, pool_size=2)
    with pytest.raises(EncryptionError, match=f"wrapped by master key {fingerprint(K1[0])}, which is not configured"):
        open_store(backend, pool_size=2, master_keys=K2)


def test_encryption_is_refused_on_a_database_holding_plain_data(backend: str) -> None:
    plain = open_store(backend, pool_size=2)
    with plain.transaction() as tx:
        tx.write_version("Basic", "x", 1, "2024-01-01T00:00:00Z", "PUT", '{"resourceType":"Basic","id":"x"}', None, None)
    plain.close()
    with pytest.raises(EncryptionError, match="1 unencrypted resource versions"):
        open_store(backend, pool_size=2, master_keys=K1)


def test_master_keys_are_parsed_strictly() -> None:
    assert parse_master_keys(f" {base64.b64encode(K1[0]).decode()},\n{base64.urlsafe_b64encode(K2[0]).decode()} ") == [K1[0], K2[0]]
    with pytest.raises(EncryptionError, match="16 bytes"):
        parse_master_keys(base64.b64encode(b"x" * 16).decode())
    with pytest.raises(EncryptionError, match="not base64"):
        parse_master_keys("not*base64")


def _basic(store: Store, i: str) -> None:
    with store.transaction() as tx:
        tx.write_version("Basic", i, 1, "2024-01-01T00:00:00Z", "PUT", f'{{"resourceType":"Basic","id":"{i}"}}', None, None)


def test_rotation_rewraps_without_downtime(backend: str) -> None:
    # a server that keeps running throughout; step 1 of a master key change gave it the new key as a second one
    running = open_store(backend, pool_size=2, master_keys=[K1[0], K2[0]])
    _basic(running, "before")
    rotated = rotate(running, [K2[0], K1[0]])  # the operator's new master key first, the old one still known
    assert rotated.rewrapped == 2 and rotated.master == fingerprint(K2[0])
    # a process started after the rotation writes under the new body key ...
    fresh = open_store(backend, pool_size=2, master_keys=[K2[0], K1[0]])
    assert fresh.crypto is not None and fresh.crypto.body_kid == rotated.new_kid
    _basic(fresh, "after")
    # ... and the running one, which never restarted, reads it (and still writes)
    assert running.read("Basic", "after") is not None
    _basic(running, "during")
    fresh.close()
    running.close()
    # the old master key can now go: every data key is wrapped by the new one
    only_new = open_store(backend, pool_size=2, master_keys=K2)
    assert [only_new.read("Basic", i).body is not None for i in ("before", "during", "after")] == [True] * 3  # type: ignore[union-attr]
    kids = {b.split(":")[1] for (b,) in only_new.query("SELECT body FROM resource_versions")}
    assert kids == {"2", str(rotated.new_kid)}
    only_new.close()
    with pytest.raises(EncryptionError, match="not configured"):
        open_store(backend, pool_size=2, master_keys=K1)


def test_a_new_data_key_under_the_same_master_key(backend: str) -> None:
    running = open_store(backend, pool_size=2, master_keys=K1)
    _basic(running, "before")
    rotated = rotate(running, K1)
    assert rotated.rewrapped == 0
    other = open_store(backend, pool_size=2, master_keys=K1)
    _basic(other, "after")
    assert running.read("Basic", "after") is not None and other.read("Basic", "before") is not None
    other.close()
    running.close()


def test_reindex_and_erasure_work_on_sealed_bodies(backend: str, tmp_path: Any) -> None:
    from tests.api import test_gdpr

    store = open_store(backend, pool_size=4, master_keys=K1)
    settings = Settings(data_dir=tmp_path)
    service = FhirService(store, settings)
    try:
        with TestClient(create_app(settings, service), base_url="http://testserver") as client:
            pid = post(client, PATIENT)
            before = sorted(store.query("SELECT param, norm, exact FROM idx_string"), key=str)
            r = client.post("/fhir/Patient/$reindex")
            assert r.status_code == 200, r.text
            assert sorted(store.query("SELECT param, norm, exact FROM idx_string"), key=str) == before
            assert ids(client, "/fhir/Patient", family="oberg") == [pid]
            test_gdpr.test_erase_removes_every_row_and_nothing_else(client, store)
    finally:
        store.close()


def test_audit_events_are_sealed_and_the_chain_still_verifies(enc: Store, tmp_path: Any) -> None:
    from salus.security import audit

    settings = Settings(data_dir=tmp_path, audit=True)
    service = FhirService(enc, settings)
    with TestClient(create_app(settings, service), base_url="http://testserver") as client:
        post(client, PATIENT)
        assert ids(client, "/fhir/Patient", family="oberg")
    service.close()
    rows = enc.query("SELECT seq, body FROM audit_log ORDER BY seq")
    assert len(rows) >= 2 and all(b.startswith("enc1:") for _, b in rows)
    assert "oberg" not in str(rows).lower()
    events = [audit.read_event(enc, seq) for seq, _ in rows]
    queries = [base64.b64decode(e["query"]).decode() for ev in events if ev for e in ev["entity"] if "query" in e]
    assert any("family=oberg" in q for q in queries), queries
    assert audit.verify(enc, audit.load_key(tmp_path)).ok
