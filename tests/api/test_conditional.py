"""Conditional create, update and delete (R4 3.1.0.4.1, 3.1.0.5.1, 3.1.0.7.1), and concurrency."""

from __future__ import annotations

import threading

import orjson
from starlette.testclient import TestClient

from salus.fhir.outcome import FhirError

FHIR = {"Content-Type": "application/fhir+json"}


def patient(mrn: str, family: str = "Doe") -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "http://hospital.example/mrn", "value": mrn}],
        "name": [{"family": family}],
    }


def test_if_none_exist_returns_the_existing_resource(client: TestClient) -> None:
    cond = {"If-None-Exist": "identifier=http://hospital.example/mrn|123", **FHIR}
    first = client.post("/fhir/Patient", content=orjson.dumps(patient("123")), headers=cond)
    assert first.status_code == 201
    second = client.post("/fhir/Patient", content=orjson.dumps(patient("123", "Other")), headers=cond)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["name"][0]["family"] == "Doe"
    assert client.get("/fhir/Patient?identifier=123").json()["total"] == 1
    # some clients put the type in front of the query: same meaning
    third = client.post("/fhir/Patient", content=orjson.dumps(patient("123")),
                        headers={"If-None-Exist": "Patient?identifier=http://hospital.example/mrn|123", **FHIR})
    assert third.status_code == 200 and third.json()["id"] == first.json()["id"]


def test_if_none_exist_with_several_matches_is_412(client: TestClient) -> None:
    for _ in range(2):
        client.post("/fhir/Patient", content=orjson.dumps(patient("9")), headers=FHIR)
    r = client.post("/fhir/Patient", content=orjson.dumps(patient("9")),
                    headers={"If-None-Exist": "identifier=9", **FHIR})
    assert r.status_code == 412


def test_concurrent_identical_conditional_creates_make_one_resource(service) -> None:  # type: ignore[no-untyped-def]
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        try:
            barrier.wait()
            r = service.create("Patient", patient("race"), if_none_exist="identifier=http://hospital.example/mrn|race")
            results.append(r.status)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results) == [200] * 7 + [201]
    assert service.store.query("SELECT COUNT(*) FROM resources WHERE res_type = 'Patient'")[0][0] == 1


def test_concurrent_updates_with_the_same_if_match_one_wins(service) -> None:  # type: ignore[no-untyped-def]
    created = service.create("Patient", patient("m1")).version
    outcomes: list[object] = []
    barrier = threading.Barrier(6)

    def worker(n: int) -> None:
        barrier.wait()
        try:
            service.update("Patient", created.res_id, {**patient("m1", f"N{n}"), "id": created.res_id}, if_match='W/"1"')
            outcomes.append("ok")
        except FhirError as err:
            outcomes.append(err.status)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1
    assert outcomes.count(412) == 5
    assert service.read("Patient", created.res_id).version == 2


def test_conditional_update(client: TestClient) -> None:
    # no match: creates
    r = client.put("/fhir/Patient?identifier=http://hospital.example/mrn|cu", content=orjson.dumps(patient("cu")), headers=FHIR)
    assert r.status_code == 201
    pid = r.json()["id"]
    # one match: updates that resource
    r = client.put("/fhir/Patient?identifier=http://hospital.example/mrn|cu", content=orjson.dumps(patient("cu", "New")), headers=FHIR)
    assert r.status_code == 200 and r.json()["id"] == pid and r.json()["meta"]["versionId"] == "2"
    # body id contradicting the match
    r = client.put("/fhir/Patient?identifier=cu", content=orjson.dumps({**patient("cu"), "id": "other"}), headers=FHIR)
    assert r.status_code == 400
    # several matches
    client.post("/fhir/Patient", content=orjson.dumps(patient("cu")), headers=FHIR)
    r = client.put("/fhir/Patient?identifier=cu", content=orjson.dumps(patient("cu")), headers=FHIR)
    assert r.status_code == 412


def test_conditional_delete(client: TestClient) -> None:
    pid = client.post("/fhir/Patient", content=orjson.dumps(patient("cd")), headers=FHIR).json()["id"]
    assert client.delete("/fhir/Patient?identifier=nothing-matches").status_code == 204
    assert client.delete("/fhir/Patient?identifier=cd").status_code == 204
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410
    for _ in range(2):
        client.post("/fhir/Patient", content=orjson.dumps(patient("cd2")), headers=FHIR)
    assert client.delete("/fhir/Patient?identifier=cd2").status_code == 412
