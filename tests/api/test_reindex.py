"""$reindex over HTTP (system, type and instance level) and ``salus reindex``, with SearchParameters POSTed to the server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from salus.config import Settings
from salus.service import FhirService
from salus.store import open_store
from tests.search.test_search_parameter_resource import EYE_COLOUR, patient

FHIR = {"Content-Type": "application/fhir+json"}


def post(client: TestClient, resource: dict[str, Any]) -> str:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def matches(bundle: dict[str, Any]) -> list[str]:
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match")


def outcome(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome" for i in e["resource"]["issue"]]


def parameters(body: dict[str, Any]) -> dict[str, list[Any]]:
    """A Parameters resource as name -> values (parts as dicts)."""
    out: dict[str, list[Any]] = {}
    for p in body["parameter"]:
        value = {q["name"]: next(v for k, v in q.items() if k.startswith("value")) for q in p["part"]} \
            if "part" in p else next(v for k, v in p.items() if k.startswith("value"))
        out.setdefault(p["name"], []).append(value)
    return out


def test_type_reindex_makes_a_posted_search_parameter_usable(client: TestClient) -> None:
    old = post(client, patient("blue"))
    sp = post(client, EYE_COLOUR)
    fresh = post(client, patient("blue"))

    r = client.get("/fhir/Patient", params={"eye-colour": "blue"})
    assert r.status_code == 200
    issues = outcome(r.json())
    assert [i["code"] for i in issues] == ["incomplete"] and issues[0]["severity"] == "warning"
    assert "'eye-colour' is not indexed yet" in issues[0]["diagnostics"]
    strict = client.get("/fhir/Patient", params={"eye-colour": "blue"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    assert strict.json()["resourceType"] == "OperationOutcome"
    assert "not indexed yet" in strict.json()["issue"][0]["diagnostics"]

    cs = client.get("/fhir/metadata").json()
    patient_cs = next(x for x in cs["rest"][0]["resource"] if x["type"] == "Patient")
    eyes = next(p for p in patient_cs["searchParam"] if p["name"] == "eye-colour")
    assert eyes["definition"] == EYE_COLOUR["url"] and eyes["type"] == "token" and "Not indexed yet" in eyes["documentation"]
    assert {"name": "reindex"}.items() <= cs["rest"][0]["operation"][0].items()
    assert "reindex" in {o["name"] for o in patient_cs["operation"]}

    r = client.post("/fhir/Patient/$reindex")
    assert r.status_code == 200, r.text
    report = parameters(r.json())
    assert report["reindexed"] == [2] and report["type"] == [{"type": "Patient", "reindexed": 2}]
    assert report["ready"] == ["Patient.eye-colour"] and "pending" not in report

    r = client.get("/fhir/Patient", params={"eye-colour": "blue"}, headers={"Prefer": "handling=strict"})
    assert r.status_code == 200 and matches(r.json()) == sorted([old, fresh]) and outcome(r.json()) == []
    cs = client.get("/fhir/metadata").json()
    patient_cs = next(x for x in cs["rest"][0]["resource"] if x["type"] == "Patient")
    assert "documentation" not in next(p for p in patient_cs["searchParam"] if p["name"] == "eye-colour")

    assert client.delete(f"/fhir/SearchParameter/{sp}").status_code == 204
    r = client.get("/fhir/Patient", params={"eye-colour": "blue"})
    assert "Unknown or unsupported search parameter 'eye-colour'" in outcome(r.json())[0]["diagnostics"]


def test_instance_and_system_reindex(client: TestClient) -> None:
    p = post(client, patient("brown"))
    post(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    post(client, EYE_COLOUR)

    r = client.post(f"/fhir/Patient/{p}/$reindex")
    assert r.status_code == 200, r.text
    report = parameters(r.json())
    assert report["reindexed"] == [1] and report["pending"] == ["Patient.eye-colour"] and "ready" not in report
    assert outcome(client.get("/fhir/Patient", params={"eye-colour": "brown"}).json())  # still not indexed

    assert client.post("/fhir/Patient/nobody/$reindex").status_code == 404
    assert client.post("/fhir/NotAType/$reindex").status_code == 404

    # system level, narrowed by a Parameters body
    body = {"resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": "Observation"}]}
    report = parameters(client.post("/fhir/$reindex", json=body, headers=FHIR).json())
    assert report["reindexed"] == [1] and report["pending"] == ["Patient.eye-colour"]
    bad = client.post("/fhir/$reindex", json={"resourceType": "Parameters", "parameter": [{"name": "nope"}]}, headers=FHIR)
    assert bad.status_code == 400

    report = parameters(client.post("/fhir/$reindex").json())
    assert report["reindexed"] == [3]  # the SearchParameter itself is a resource too
    assert {t["type"] for t in report["type"]} == {"Patient", "Observation", "SearchParameter"}
    assert report["ready"] == ["Patient.eye-colour"]
    assert matches(client.get("/fhir/Patient", params={"eye-colour": "brown"}).json()) == [p]
    assert client.get("/fhir/$reindex").status_code == 405
    assert client.get("/fhir/Patient/$reindex").status_code == 405


def test_unusable_search_parameter_is_rejected_with_an_outcome(client: TestClient) -> None:
    r = client.post("/fhir/SearchParameter", json={**EYE_COLOUR, "expression": "Patient.extension.where("},
                    headers=FHIR)
    assert r.status_code == 422
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    assert oo["issue"][0]["expression"] == ["SearchParameter.expression"]
    assert "not valid FHIRPath" in oo["issue"][0]["diagnostics"]


def test_batch_search_entries_say_when_a_parameter_is_not_indexed(client: TestClient) -> None:
    post(client, EYE_COLOUR)
    batch = {"resourceType": "Bundle", "type": "batch",
             "entry": [{"request": {"method": "GET", "url": "Patient?eye-colour=blue"}}]}
    r = client.post("/fhir", json=batch, headers=FHIR)
    assert r.status_code == 200, r.text
    searchset = r.json()["entry"][0]["resource"]
    assert [i["code"] for i in outcome(searchset)] == ["incomplete"]


def test_cli_reindex_reports_counts_and_ready_parameters(backend: str, tmp_path: Path) -> None:
    service = FhirService(open_store(backend, pool_size=2), Settings(data_dir=tmp_path))
    for colour in ("blue", "green"):
        service.create("Patient", patient(colour))
    service.create("SearchParameter", EYE_COLOUR)
    service.store.close()

    res = subprocess.run(
        [sys.executable, "-m", "salus", "reindex", "--type", "Patient", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "SALUS_DATABASE_URL": backend},
    )
    assert res.returncode == 0, res.stderr
    assert "2 resources reindexed" in res.stderr
    assert "ready Patient.eye-colour" in res.stderr

    service = FhirService(open_store(backend, pool_size=2), Settings(data_dir=tmp_path))
    try:
        found = service.search("Patient", [("eye-colour", "green")], strict=True)
        assert len(found.entries) == 1
    finally:
        service.store.close()
    bad = subprocess.run(
        [sys.executable, "-m", "salus", "reindex", "--type", "NotAType", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "SALUS_DATABASE_URL": backend},
    )
    assert bad.returncode == 2 and "NotAType" in bad.stderr
