"""Consent: an active Consent denying a patient's data (or a labelled part of it) to an actor is enforced."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace

import orjson
import pytest
from starlette.testclient import TestClient

from salus.api import create_app
from salus.config import Settings
from salus.security import audit
from salus.security.tokens import Grant, issue_access_token
from salus.store import Store

BASE = "http://testserver/fhir"
PSY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}


@pytest.fixture
def world(store: Store, settings: Settings) -> Iterator[tuple[TestClient, object]]:
    from salus.service import FhirService

    smart = replace(settings, auth="smart", audit=True)
    service = FhirService(store, smart)
    for dr in ("dr-no", "dr-yes", "n1", "d", "er", "desk"):
        service.update("Practitioner", dr, {"resourceType": "Practitioner", "id": dr})
    for pid in ("p1", "p2"):
        service.update("Patient", pid, {"resourceType": "Patient", "id": pid})
        service.update("Condition", f"flu-{pid}", {"resourceType": "Condition", "id": f"flu-{pid}",
                                                   "subject": {"reference": f"Patient/{pid}"}})
        service.update("Condition", f"psy-{pid}", {"resourceType": "Condition", "id": f"psy-{pid}",
                                                   "meta": {"security": [PSY]},
                                                   "subject": {"reference": f"Patient/{pid}"}})
    with TestClient(create_app(smart, service), base_url="http://testserver") as c:
        yield c, service


def auth(store: Store, who: str, role: str = "clinician", scope: str = "user/*.cruds", **kw: str) -> dict[str, str]:
    grant = Grant(grant_id=who, client_id="t", subject=who, scope=scope, role=role, fhir_user=who, **kw)
    return {"Authorization": f"Bearer {issue_access_token(store, Settings(auth='smart'), BASE, grant).token}"}


def consent(patient: str, *, actor: str | None = None, label: dict | None = None, status: str = "active") -> dict:
    provision: dict = {"type": "deny"}
    if actor:
        provision["actor"] = [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                                    "code": "IRCP"}]}, "reference": {"reference": actor}}]
    if label:
        provision["securityLabel"] = [label]
    return {"resourceType": "Consent", "status": status,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{patient}"}, "provision": provision}


def ids(client: TestClient, headers: dict[str, str], query: str) -> set[str]:
    r = client.get(f"/fhir/{query}", headers=headers)
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", [])}


def test_a_denial_to_one_practitioner_of_sensitive_data(world: tuple[TestClient, object], store: Store) -> None:
    client, service = world
    service.create("Consent", consent("p1", actor="Practitioner/dr-no", label=PSY))  # type: ignore[attr-defined]
    dr_no, dr_yes = auth(store, "Practitioner/dr-no"), auth(store, "Practitioner/dr-yes")
    assert client.get("/fhir/Condition/psy-p1", headers=dr_no).status_code == 403
    assert client.get("/fhir/Condition/flu-p1", headers=dr_no).status_code == 200  # not labelled
    assert client.get("/fhir/Condition/psy-p2", headers=dr_no).status_code == 200  # another patient
    assert client.get("/fhir/Condition/psy-p1", headers=dr_yes).status_code == 200  # another actor
    assert ids(client, dr_no, "Condition") == {"flu-p1", "flu-p2", "psy-p2"}
    assert ids(client, dr_no, "Patient?_revinclude=Condition:subject&_id=p1") == {"p1", "flu-p1"}
    assert ids(client, dr_yes, "Condition") == {"flu-p1", "flu-p2", "psy-p1", "psy-p2"}


def test_a_denial_to_everyone_spares_the_patient(world: tuple[TestClient, object], store: Store) -> None:
    client, service = world
    service.create("Consent", consent("p2"))  # type: ignore[attr-defined]
    nurse = auth(store, "Practitioner/n1", role="nurse", scope="user/*.rs")
    assert client.get("/fhir/Condition/flu-p2", headers=nurse).status_code == 403
    assert ids(client, nurse, "Condition") == {"flu-p1", "psy-p1"}
    patient = auth(store, "Patient/p2", role="patient", scope="patient/*.rs", patient="p2")
    assert ids(client, patient, "Condition") == {"flu-p2", "psy-p2"}


def test_inactive_consent_is_ignored_and_withdrawal_applies_at_once(world: tuple[TestClient, object], store: Store) -> None:
    client, service = world
    dr = auth(store, "Practitioner/d")
    draft = service.create("Consent", consent("p1", status="draft")).version  # type: ignore[attr-defined]
    assert client.get("/fhir/Condition/flu-p1", headers=dr).status_code == 200
    active = orjson.loads(draft.body)
    active["status"] = "active"
    service.update("Consent", draft.res_id, active)  # type: ignore[attr-defined]
    assert client.get("/fhir/Condition/flu-p1", headers=dr).status_code == 403
    active["status"] = "inactive"
    service.update("Consent", draft.res_id, active)  # type: ignore[attr-defined]
    assert client.get("/fhir/Condition/flu-p1", headers=dr).status_code == 200


def test_break_the_glass_overrides_with_an_alert_and_an_audit_entry(
    world: tuple[TestClient, object], store: Store, caplog: pytest.LogCaptureFixture,
) -> None:
    client, service = world
    service.create("Consent", consent("p1"))  # type: ignore[attr-defined]
    dr = auth(store, "Practitioner/er")
    assert client.get("/fhir/Condition/flu-p1", headers=dr).status_code == 403
    with caplog.at_level(logging.WARNING, logger="salus.security"):
        r = client.get("/fhir/Condition/flu-p1", headers={**dr, "X-Salus-Break-Glass": "cardiac arrest in ER"})
    assert r.status_code == 200
    assert any("BREAK-THE-GLASS" in m for m in caplog.messages)
    # a receptionist cannot break the glass into clinical data
    desk = auth(store, "Practitioner/desk", role="receptionist")
    assert client.get("/fhir/Condition/flu-p1",
                      headers={**desk, "X-Salus-Break-Glass": "curious"}).status_code == 403
    service.close()  # type: ignore[attr-defined]
    bodies = [orjson.dumps(e).decode() for _, e in audit.read_events(store)]
    assert any("break-the-glass declared: cardiac arrest in ER" in b for b in bodies)
    assert any("break-the-glass: read against the patient's consent" in b for b in bodies)
