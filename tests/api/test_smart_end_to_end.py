"""A SMART app end to end on the whole server: log in through the forms, use the token, see the audit trail."""

from __future__ import annotations

from dataclasses import replace

from starlette.testclient import TestClient

from salus.api import create_app
from salus.config import Settings
from salus.security import accounts, audit
from salus.store import Store
from tests.security.conftest import REDIRECT, Forms, authorize_params, login, pkce

SCOPE = "launch/patient openid fhirUser patient/*.rs"


def test_patient_app_end_to_end(store: Store, settings: Settings) -> None:
    from salus.service import FhirService

    smart = replace(settings, auth="smart")
    service = FhirService(store, smart)
    for pid in ("p1", "p2"):
        service.update("Patient", pid, {"resourceType": "Patient", "id": pid})
        service.update("Observation", f"o-{pid}", {
            "resourceType": "Observation", "id": f"o-{pid}", "status": "final", "code": {"text": "hr"},
            "subject": {"reference": f"Patient/{pid}"}})
    accounts.add_user(store, "anna", "anna-password", "patient", "Patient/p1")
    accounts.add_client(store, "app", "public", SCOPE, redirect_uris=[REDIRECT])

    with TestClient(create_app(smart, service), base_url="http://testserver", follow_redirects=False) as http:
        # a failed login first: the form again, and an audited failure
        _, challenge = pkce()
        page = http.get("/fhir/auth/authorize", params=authorize_params("app", SCOPE, challenge))
        form = Forms(page.text).forms[0]
        form.update(username="anna", password="not her password")
        assert http.post("/fhir/auth/authorize", data=form).status_code == 401

        verifier, challenge = pkce()
        code = login(http, authorize_params("app", SCOPE, challenge), "anna", "anna-password")["code"][0]
        tok = http.post("/fhir/auth/token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": verifier, "client_id": "app"}).json()
        assert tok["patient"] == "p1"
        auth = {"Authorization": f"Bearer {tok['access_token']}"}

        found = http.get("/fhir/Observation", headers=auth).json()
        assert [e["resource"]["id"] for e in found["entry"]] == ["o-p1"]
        assert http.get("/fhir/Observation/o-p2", headers=auth).status_code == 403
        assert http.get("/fhir/Observation/o-p1", headers=auth).status_code == 200
        assert http.post("/fhir/Observation", headers=auth, json={
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"}}).status_code == 403  # rs only

    events = [e for _, e in audit.read_events(store)]
    logins = [e for e in events if e["type"]["code"] == "110114"]
    assert [e["outcome"] for e in logins] == ["4", "0"]
    denied = [e for e in events if e["outcome"] == "4" and e["type"]["code"] != "110114"]
    assert len(denied) == 2  # the other patient's Observation, and the create
    reads = [e for e in events if e.get("subtype", [{}])[0].get("code") == "read" and e["outcome"] == "0"]
    assert len(reads) == 1
    who = {a.get("who", {}).get("identifier", {}).get("value") for a in reads[0]["agent"]}
    assert "anna" in who or any("Patient/p1" in str(a) for a in reads[0]["agent"])
    assert audit.verify(store, audit.load_key(smart.data_dir)).ok
