"""The authorization matrix: every role and kind of scope, every interaction, inside and outside the compartment.

The expected answer of each case comes from the rules below, written from the
issue and SMART App Launch 2 (not from ``salus.security.policy``): a role's
rights per type, confinement to the launch patient's compartment for
``patient/`` scopes and the patient role, and granular scopes. Each case runs
over HTTP with a real access token; "allowed" means the interaction succeeds
(for a search: the resource is in the results), "denied" means a 403 (or, for a
confined search, that the resource is not in the results). The test prints the
number of cases and of wrong answers, which must be zero.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from starlette.testclient import TestClient

from salus.api import create_app
from salus.config import Settings
from salus.security.tokens import Grant, issue_access_token
from salus.store import Store

BASE = "http://testserver/fhir"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
COMPARTMENT_TYPES = {"Patient", "Observation", "Condition"}


@dataclass(frozen=True)
class Case:
    """One caller: role, scopes, launch patient, and the rights we expect."""

    name: str
    role: str
    scope: str
    rights: dict[str, str]  # type (or "*") -> interaction letters the role and scopes together allow
    patient: str | None = None  # confined to this patient's compartment
    fhir_user: str | None = None
    vitals_only: bool = False  # granular scope: Observations of category vital-signs only
    exclude: frozenset[str] = field(default_factory=frozenset)

    def letters(self, res_type: str) -> str:
        return self.rights.get(res_type, self.rights.get("*", ""))


CASES = [
    Case("patient, patient/*.cruds", "patient", "launch/patient patient/*.cruds", {"*": "rs"}, "p1", "Patient/p1"),
    Case("patient, v1 patient/*.read", "patient", "patient/*.read", {"*": "rs"}, "p1", "Patient/p1"),
    Case("patient, granular vital signs", "patient", f"patient/Observation.rs?category={CATEGORY}|vital-signs",
         {"Observation": "rs"}, "p1", "Patient/p1", vitals_only=True),
    Case("clinician, user/*.cruds", "clinician", "user/*.cruds", {"*": "cruds"}),
    Case("clinician app, patient/*.rs", "clinician", "launch/patient patient/*.rs", {"*": "rs"}, "p1"),
    Case("nurse, user/*.cruds", "nurse", "user/*.cruds", {"*": "rs", "Observation": "crus"}),
    Case("receptionist, user/*.cruds", "receptionist", "user/*.cruds", {"Patient": "cruds", "Organization": "rs"}),
    Case("auditor, user/*.rs", "auditor", "user/*.rs", {}),
    Case("admin, user/*.cruds", "admin", "user/*.cruds", {"*": "cruds"}),
    Case("backend, system/*.rs", "integration", "system/*.rs", {"*": "rs"}),
    Case("backend, system/Observation.cruds", "integration", "system/Observation.cruds", {"Observation": "cruds"}),
    Case("clinician, v1 user/Observation.read", "clinician", "user/Observation.read", {"Observation": "rs"}),
]


def _obs(oid: str, patient: str, category: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
            "code": {"text": "x"}, "subject": {"reference": f"Patient/{patient}"}}


# (resource, patient whose compartment holds it or None, is a vital-signs Observation)
POPULATION = [
    ({"resourceType": "Patient", "id": "p1", "gender": "female"}, "p1", False),
    ({"resourceType": "Patient", "id": "p2", "gender": "male"}, "p2", False),
    (_obs("o1v", "p1", "vital-signs"), "p1", True),
    (_obs("o1l", "p1", "laboratory"), "p1", False),
    (_obs("o2v", "p2", "vital-signs"), "p2", True),
    ({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}, "p1", False),
    ({"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p2"}}, "p2", False),
    ({"resourceType": "Organization", "id": "org1", "name": "Ward 3"}, None, False),
]
INTERACTIONS = ("read", "search", "history", "update", "delete", "create")
LETTER = {"read": "r", "history": "r", "search": "s", "update": "u", "delete": "d", "create": "c"}


def expected(case: Case, interaction: str, resource: dict[str, Any], owner: str | None, vital: bool) -> bool:
    """Whether ``case`` may do ``interaction`` on ``resource`` (for create: a new one like it)."""
    res_type = resource["resourceType"]
    if LETTER[interaction] not in case.letters(res_type):
        return False
    if case.patient is not None and (res_type not in COMPARTMENT_TYPES or owner != case.patient):
        return False
    return not case.vitals_only or (res_type == "Observation" and vital)


@pytest.fixture
def app_client(store: Store, settings: Settings) -> Iterator[TestClient]:
    """SMART on, the population loaded as an unrestricted caller would."""
    from salus.service import FhirService

    smart = replace(settings, auth="smart", audit=False)
    service = FhirService(store, smart)
    for resource, _, _ in POPULATION:
        service.update(resource["resourceType"], resource["id"], resource)
    with TestClient(create_app(smart, service), base_url="http://testserver") as c:
        c.service = service  # type: ignore[attr-defined]
        yield c


def _token(store: Store, case: Case) -> str:
    grant = Grant(grant_id=case.name, client_id="matrix", subject=case.name, scope=case.scope, role=case.role,
                  fhir_user=case.fhir_user, patient=case.patient)
    return issue_access_token(store, Settings(auth="smart"), BASE, grant).token


def _attempt(client: TestClient, auth: dict[str, str], interaction: str, resource: dict[str, Any]) -> bool:
    """Run the interaction; True when it was allowed, False when refused; anything else fails the test."""
    t, i = resource["resourceType"], resource["id"]
    if interaction == "search":
        r = client.get(f"/fhir/{t}", params={"_id": i}, headers=auth)
        if r.status_code == 403:
            return False
        assert r.status_code == 200, r.text
        return any(e["resource"]["id"] == i for e in r.json().get("entry", []))
    if interaction == "create":
        body = {k: v for k, v in resource.items() if k != "id"}
        r = client.post(f"/fhir/{t}", json=body, headers=auth)
        ok = {201}
    elif interaction == "read":
        r = client.get(f"/fhir/{t}/{i}", headers=auth)
        ok = {200}
    elif interaction == "history":
        r = client.get(f"/fhir/{t}/{i}/_history", headers=auth)
        ok = {200}
    elif interaction == "update":
        r = client.put(f"/fhir/{t}/{i}", json=resource, headers=auth)
        ok = {200}
    else:
        r = client.delete(f"/fhir/{t}/{i}", headers=auth)
        ok = {200, 204, 409}  # 409: allowed, then refused by referential integrity (checked after the policy)
    assert r.status_code in ok | {403}, f"{interaction} {t}/{i}: {r.status_code} {r.text}"
    if r.status_code == 403:
        assert r.json()["issue"][0]["code"] == "forbidden"
    return r.status_code in ok


def test_authorization_matrix(app_client: TestClient, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    service = app_client.service  # type: ignore[attr-defined]
    cases = wrong = 0
    failures: list[str] = []
    for case, (resource, owner, vital), interaction in itertools.product(CASES, POPULATION, INTERACTIONS):
        auth = {"Authorization": f"Bearer {_token(store, case)}"}
        got = _attempt(app_client, auth, interaction, resource)
        want = expected(case, interaction, resource, owner, vital)
        cases += 1
        if got != want:
            wrong += 1
            failures.append(f"{case.name}: {interaction} {resource['resourceType']}/{resource['id']} "
                            f"{'allowed' if got else 'denied'}, expected {'allowed' if want else 'denied'}")
        if interaction == "delete" and got:  # put the population back (a cascade may have taken more)
            for res, _, _ in POPULATION:
                service.update(res["resourceType"], res["id"], res)
    with capsys.disabled():
        print(f"\nauthorization matrix ({store.dialect}): {cases} cases, {wrong} wrong answers")
    assert not failures, "\n".join(failures)


def test_includes_and_chains_do_not_escalate(app_client: TestClient, store: Store) -> None:
    """A patient/Observation-only token: _include of the Patient is dropped; a chain into Patient is refused."""
    case = Case("obs only", "patient", "patient/Observation.rs", {"Observation": "rs"}, "p1", "Patient/p1")
    auth = {"Authorization": f"Bearer {_token(store, case)}"}
    r = app_client.get("/fhir/Observation", params={"_include": "Observation:subject"}, headers=auth)
    assert r.status_code == 200
    types = [e["resource"]["resourceType"] for e in r.json()["entry"]]
    assert "Patient" not in types and set(types) == {"Observation"}
    ids = {e["resource"]["id"] for e in r.json()["entry"]}
    assert ids == {"o1v", "o1l"}
    assert app_client.get("/fhir/Observation", params={"subject.gender": "male"}, headers=auth).status_code == 403
    assert app_client.get("/fhir/Patient", params={"_has:Observation:subject:category": "vital-signs"},
                          headers=auth).status_code == 403
    # another patient's compartment by URL
    assert app_client.get("/fhir/Patient/p2/Observation", headers=auth).status_code == 403


def test_transaction_cannot_reach_another_patient(app_client: TestClient, store: Store) -> None:
    case = Case("patient", "patient", "patient/*.cruds", {"*": "rs"}, "p1", "Patient/p1")
    auth = {"Authorization": f"Bearer {_token(store, case)}"}
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/o2v"}},
        {"request": {"method": "GET", "url": "Observation/o1v"}},
        {"request": {"method": "GET", "url": "Observation?_id=o2v"}},
    ]}
    r = app_client.post("/fhir", json=bundle, headers=auth)
    assert r.status_code == 200
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses[0].startswith("403") and statuses[1].startswith("200")
    assert r.json()["entry"][2]["resource"].get("entry", []) == []
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _obs("evil", "p2", "vital-signs"), "request": {"method": "PUT", "url": "Observation/evil"}},
    ]}
    assert app_client.post("/fhir", json=tx, headers=auth).status_code == 403
