"""Security at the door: with SMART on, FHIR requests need a valid access token; discovery stays public."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace

import pytest
from starlette.testclient import TestClient

from salus.api import create_app
from salus.config import Settings
from salus.security.tokens import Grant, issue_access_token
from salus.store import Store

BASE = "http://testserver/fhir"


@pytest.fixture
def secure(store: Store, settings: Settings) -> Iterator[TestClient]:
    """The whole app with SMART on."""
    from salus.service import FhirService

    smart = replace(settings, auth="smart")
    with TestClient(create_app(smart, FhirService(store, smart)), base_url="http://testserver") as c:
        yield c


def token(store: Store, scope: str, *, role: str | None = "integration", **kw: str) -> str:
    """An access token of this server, as its token endpoint would issue it."""
    grant = Grant(grant_id="g1", client_id="test-client", subject="tester", scope=scope, role=role, **kw)
    return issue_access_token(store, Settings(auth="smart"), BASE, grant).token


def test_no_token_is_401_with_a_bearer_challenge(secure: TestClient) -> None:
    r = secure.get("/fhir/Patient")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "login"


def test_bad_tokens_are_401(secure: TestClient, store: Store) -> None:
    good = token(store, "system/*.cruds")
    header, payload, _ = good.split(".")
    for bad in ("garbage", f"{header}.{payload}.", f"{header}.{payload}.AAAA", good[:-4] + "AAAA"):
        r = secure.get("/fhir/Patient", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, bad
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert secure.get("/fhir/Patient", headers={"Authorization": "Basic dXNlcjpwYXNz"}).status_code == 401


def test_discovery_and_metadata_stay_public(secure: TestClient) -> None:
    assert secure.get("/fhir/metadata").status_code == 200
    conf = secure.get("/fhir/.well-known/smart-configuration")
    assert conf.status_code == 200
    assert conf.json()["token_endpoint"].endswith("/fhir/auth/token")


def test_a_valid_token_reaches_the_api(secure: TestClient, store: Store) -> None:
    auth = {"Authorization": f"Bearer {token(store, 'system/*.cruds')}"}
    created = secure.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "female"}, headers=auth)
    assert created.status_code == 201, created.text
    r = secure.get("/fhir/Patient", headers=auth)
    assert r.status_code == 200 and r.json()["total"] == 1


SALUS = [sys.executable, "-m", "salus"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "only listens on loopback"),
        (["--host", "0.0.0.0", "--auth", "smart"], "without TLS"),
        (["--auth", "bogus"], "--auth must be"),
        (["--auth", "smart", "--tls-cert", "x.pem"], "go together"),
    ],
)
def test_serve_refuses_unsafe_starts(tmp_path: object, args: list[str], message: str) -> None:
    res = subprocess.run([*SALUS, "serve", "--data-dir", str(tmp_path), *args],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_capability_statement_names_smart(secure: TestClient, client: TestClient) -> None:
    security = secure.get("/fhir/metadata").json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["token"].endswith("/fhir/auth/token") and uris["authorize"].endswith("/fhir/auth/authorize")
    assert "security" not in client.get("/fhir/metadata").json()["rest"][0]


def test_reindex_is_for_administrators(secure: TestClient, store: Store) -> None:
    clinician = {"Authorization": f"Bearer {token(store, 'user/*.cruds', role='clinician')}"}
    admin = {"Authorization": f"Bearer {token(store, 'user/*.cruds', role='admin')}"}
    r = secure.post("/fhir/Patient/$reindex", headers=clinician)
    assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"
    assert secure.post("/fhir/Patient/$reindex", headers=admin).status_code == 200


def test_audit_events_are_never_rewritten(client: TestClient) -> None:
    event = {"resourceType": "AuditEvent", "type": {"system": "http://dicom.nema.org/resources/ontology/DCM",
             "code": "110100"}, "recorded": "2026-01-01T00:00:00Z",
             "agent": [{"requestor": True, "who": {"display": "x"}}], "source": {"observer": {"display": "x"}}}
    created = client.post("/fhir/AuditEvent", json=event)
    assert created.status_code == 201, created.text
    aid = created.json()["id"]
    assert client.put(f"/fhir/AuditEvent/{aid}", json={**event, "id": aid}).status_code == 405
    assert client.delete(f"/fhir/AuditEvent/{aid}").status_code == 405
    assert client.get(f"/fhir/AuditEvent/{aid}").status_code == 200
