"""The attacks a security reviewer would try, each as a test against the whole app with SMART on.

The population is two patients, p1 and p2, each with an Observation and a Condition. The attacker
holds a patient-role token confined to p1 (``patient/*.rs``), sometimes a clinician app's token
confined to p1 that may write (``patient/*.cruds``), and tries to reach p2's data: with forged or
stale tokens, through search features that follow references (``_include``, chains, ``_has``,
compartments, system search, history), through Bundles and conditional interactions, with odd
ids and paths, with oversized or deeply nested bodies, and with injection strings in every kind
of search parameter (property-based, with hypothesis). Every answer must be a clean one: a 401,
403 or other 4xx OperationOutcome, or a 200 that holds nothing of p2's; never a 5xx. Every p2
resource carries ``P2_SECRET`` so a leak shows in the raw response text, wherever it hides.

Each test runs on SQLite and PostgreSQL (the ``store`` fixture of ``tests/conftest.py``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.testclient import TestClient

from salus.api import create_app
from salus.config import Settings
from salus.security import keys
from salus.security.tokens import Grant, issue_access_token, revoke_token
from salus.store import Store

BASE = "http://testserver/fhir"
P2_SECRET = "p2-secret-7f3a9c"
P2_IDS = {("Patient", "p2"), ("Observation", "o2"), ("Condition", "c2")}
P1_IDS = {("Patient", "p1"), ("Observation", "o1"), ("Condition", "c1")}
LOINC = "http://loinc.org"
MRN = "urn:oid:1.2.36.146.595.217.0.1"


def _population() -> list[dict[str, Any]]:
    def patient(pid: str, family: str, mrn: str, birth: str, secret: str | None) -> dict[str, Any]:
        p: dict[str, Any] = {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": birth,
                             "name": [{"family": family, "given": ["Ann"]}],
                             "identifier": [{"system": MRN, "value": mrn}]}
        if secret:
            p["identifier"].append({"system": "urn:secret", "value": secret})
        return p

    def obs(oid: str, pid: str, code: str, value: float, secret: str | None) -> dict[str, Any]:
        o: dict[str, Any] = {"resourceType": "Observation", "id": oid, "status": "final",
                             "code": {"coding": [{"system": LOINC, "code": code}]},
                             "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2024-03-01",
                             "valueQuantity": {"value": value, "unit": "kg", "system": "http://unitsofmeasure.org",
                                               "code": "kg"}}
        if secret:
            o["note"] = [{"text": secret}]
        return o

    def cond(cid: str, pid: str, secret: str | None) -> dict[str, Any]:
        c: dict[str, Any] = {"resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{pid}"},
                             "code": {"text": "asthma"}}
        if secret:
            c["note"] = [{"text": secret}]
        return c

    return [
        patient("p1", "Alpha", "A-111", "1980-01-01", None),
        patient("p2", "Bravo", "B-222", "1990-02-02", P2_SECRET),
        obs("o1", "p1", "29463-7", 61.5, None),
        obs("o2", "p2", "8302-2", 92.25, P2_SECRET),
        cond("c1", "p1", None),
        cond("c2", "p2", P2_SECRET),
    ]


class World:
    """The app with SMART on, the store under it, and the attackers' and the clinician's headers."""

    def __init__(self, client: TestClient, store: Store, p1: str, writer: str, clinician: str) -> None:
        self.client = client
        self.store = store
        self.p1_token = p1
        self.patient = _bearer(p1)  # patient role, patient/*.rs, confined to p1
        self.writer = _bearer(writer)  # clinician app, patient/*.cruds, confined to p1 (may write p1's data)
        self.clinician = _bearer(clinician)  # clinician, user/*.cruds, unconfined

    def __repr__(self) -> str:
        return f"World({self.store.dialect})"


def _issue(store: Store, scope: str, role: str, **kw: str | None) -> str:
    grant = Grant(grant_id=f"g-{role}-{scope}", client_id="attack-client", subject=f"{role}-user", scope=scope,
                  role=role, **kw)
    return issue_access_token(store, Settings(auth="smart"), BASE, grant).token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def world(store: Store, settings: Settings) -> Iterator[World]:
    """SMART on, the population loaded, tokens issued; server errors come back as 500s, not exceptions."""
    from salus.service import FhirService

    smart = replace(settings, auth="smart", audit=False)
    service = FhirService(store, smart)
    for resource in _population():
        service.update(resource["resourceType"], resource["id"], resource)
    p1 = _issue(store, "patient/*.rs", "patient", fhir_user="Patient/p1", patient="p1")
    writer = _issue(store, "launch/patient patient/*.cruds", "clinician", patient="p1")
    clinician = _issue(store, "user/*.cruds", "clinician", fhir_user="Practitioner/pr1")
    with TestClient(create_app(smart, service), base_url="http://testserver", raise_server_exceptions=False) as c:
        yield World(c, store, p1, writer, clinician)


# ---- what every answer must be ------------------------------------------------------


def _resources(doc: Any) -> Iterator[dict[str, Any]]:
    """Every resource in a response, Bundles (and Bundles inside batch responses) opened."""
    if isinstance(doc, dict):
        if "resourceType" in doc:
            yield doc
        for entry in doc.get("entry", []) if doc.get("resourceType") == "Bundle" else []:
            if isinstance(entry, dict):
                yield from _resources(entry.get("resource"))


def assert_clean(r: Any) -> None:
    """Never a 5xx; a 4xx is an OperationOutcome."""
    assert r.status_code < 500, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:500]}"
    if r.status_code >= 400:
        body = r.json()
        assert body.get("resourceType") == "OperationOutcome", r.text[:500]
        assert body.get("issue"), r.text[:500]


def _scrubbed(doc: Any) -> Any:
    """The answer without what echoes the request (Bundle links, OperationOutcome diagnostics)."""
    if isinstance(doc, dict):
        if doc.get("resourceType") == "OperationOutcome":
            return None
        return {k: _scrubbed(v) for k, v in doc.items() if k != "link"}
    if isinstance(doc, list):
        return [_scrubbed(v) for v in doc]
    return doc


def assert_no_p2(r: Any) -> None:
    """A clean answer holding nothing of p2's: not its secret, not one of its resources."""
    assert_clean(r)
    text = r.text
    asked = unquote(str(r.request.url)) + r.request.content.decode("utf-8", "replace")
    if P2_SECRET in asked:  # the secret was in the request: only what does not echo it counts
        text = json.dumps(_scrubbed(r.json()))
    assert P2_SECRET not in text, f"{r.request.method} {r.request.url} leaked p2's data: {r.text[:500]}"
    if r.headers.get("content-type", "").startswith(("application/fhir+json", "application/json")) and r.text:
        for res in _resources(r.json()):
            assert (res.get("resourceType"), res.get("id")) not in P2_IDS, f"{r.request.url} returned {res['id']}"
            assert (res.get("subject") or {}).get("reference") != "Patient/p2", f"{r.request.url}: {res}"


def entry_ids(r: Any) -> set[tuple[str, str]]:
    """The (type, id) of each entry of a Bundle answer."""
    return {(e["resource"]["resourceType"], e["resource"]["id"]) for e in r.json().get("entry", [])
            if e["resource"]["resourceType"] != "OperationOutcome"}  # a search's warnings have no id


def resource_count(store: Store) -> int:
    """Rows of the ``resources`` table (the current version of every resource)."""
    return int(store.query("SELECT COUNT(*) FROM resources")[0][0])


def current(world: World, res_type: str, res_id: str) -> dict[str, Any]:
    """A resource as the unconfined clinician reads it now."""
    r = world.client.get(f"/fhir/{res_type}/{res_id}", headers=world.clinician)
    assert r.status_code == 200, r.text
    return r.json()


# ---- forged, stale and revoked tokens ------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64json(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    h, p, _ = token.split(".")
    return (json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4))),
            json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))))


def _resigned(store: Store, token: str, **changes: Any) -> str:
    """The token with some claims changed, signed again with the server's own key (a valid signature)."""
    key = keys.active_key(store)
    header, claims = _parts(token)
    claims.update(changes)
    return jwt.encode(header, claims, key.key, algorithms=[key.alg])


def _public_pem(world: World) -> bytes:
    """The server's public signing key as PEM, fetched as an attacker would: from the published JWKS."""
    r = world.client.get("/fhir/auth/jwks")
    assert r.status_code == 200, r.text
    return RSAKey.import_key(r.json()["keys"][0]).as_pem(private=False)


def _hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{_b64json(header)}.{_b64json(claims)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


def _forgeries(world: World) -> dict[str, str]:
    """Each token attack, built from the p1 token (full rights claimed where the attack allows it)."""
    store, token = world.store, world.p1_token
    header, claims = _parts(token)
    now = int(time.time())
    escalated = {**claims, "scope": "system/*.cruds", "role": "admin"}
    escalated.pop("patient")
    rogue = RSAKey.generate_key(2048, parameters={"kid": header["kid"]}, private=True)
    pem = _public_pem(world)
    h, _, s = token.split(".")
    return {
        # re-signed by another RSA key that claims the server's kid
        "wrong signature": jwt.encode(header, escalated, rogue, algorithms=["RS256"]),
        # the attacker's key embedded in the header (CVE-2018-0114 style): must not be trusted
        "embedded jwk": jwt.encode({**header, "jwk": rogue.as_dict(private=False)}, escalated, rogue,
                                   algorithms=["RS256"]),
        "expired": _resigned(store, token, exp=now - 120, iat=now - 4000, nbf=now - 4000),
        "not yet valid": _resigned(store, token, nbf=now + 3600, iat=now + 3600, exp=now + 7200),
        "wrong audience": _resigned(store, token, aud="https://evil.example.org/fhir"),
        "audience list without us": _resigned(store, token, aud=["https://evil.example.org/fhir"]),
        "wrong issuer": _resigned(store, token, iss="https://evil.example.org/fhir"),
        "no expiry": _resigned(store, token, exp=None),
        "unknown jti": _resigned(store, token, jti="never-issued-here"),
        # alg=none with an empty signature
        "alg none": f"{_b64json({'alg': 'none', 'typ': 'JWT'})}.{_b64json(escalated)}.",
        "alg None": f"{_b64json({'alg': 'None'})}.{_b64json(escalated)}.",
        # key confusion: HS256 with the server's public key (as published) as the HMAC secret
        "HS256 with the public key": _hs256({"alg": "HS256", "typ": "JWT"}, escalated, pem),
        "HS256 with the public key, kid": _hs256({"alg": "HS256", "kid": header["kid"]}, escalated, pem),
        "HS256 with the public key, no newline": _hs256({"alg": "HS256"}, escalated, pem.strip()),
        # the scope claim edited, signature kept
        "edited scope": f"{h}.{_b64json(escalated)}.{s}",
        "edited patient": f"{h}.{_b64json({**claims, 'patient': 'p2', 'fhirUser': 'Patient/p2'})}.{s}",
        # kid pointing elsewhere (path traversal, SQL) on a token signed by the attacker
        "kid injection": jwt.encode({**header, "kid": "../../../../dev/null' OR '1'='1"}, escalated, rogue,
                                    algorithms=["RS256"]),
    }


FORGERIES = ["wrong signature", "embedded jwk", "expired", "not yet valid", "wrong audience",
             "audience list without us", "wrong issuer", "no expiry", "unknown jti", "alg none", "alg None",
             "HS256 with the public key", "HS256 with the public key, kid", "HS256 with the public key, no newline",
             "edited scope", "edited patient", "kid injection"]


@pytest.mark.parametrize("attack", FORGERIES)
def test_forged_and_stale_tokens_are_401(world: World, attack: str) -> None:
    """A token that is forged (other key, alg=none, HS256 key confusion, edited claims), stale or misdirected
    (expired, not yet valid, other audience or issuer, no expiry, a jti never issued) is a 401 everywhere."""
    assert world.client.get("/fhir/Patient/p1", headers=world.patient).status_code == 200  # the original works
    forged = _forgeries(world)[attack]
    for method, url in (("GET", "/fhir/Patient/p2"), ("GET", "/fhir/Observation"), ("GET", "/fhir?_type=Condition"),
                        ("DELETE", "/fhir/Observation/o2")):
        r = world.client.request(method, url, headers=_bearer(forged))
        assert r.status_code == 401, f"{attack}: {method} {url} -> {r.status_code} {r.text[:300]}"
        assert_no_p2(r)
        assert r.json()["issue"][0]["code"] == "login"
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert current(world, "Observation", "o2")["meta"]["versionId"] == "1"


def test_revoked_token_is_401_at_once(world: World) -> None:
    """A token revoked (RFC 7009) after it was used, and so remembered as live, is refused on the next request."""
    assert world.client.get("/fhir/Patient/p1", headers=world.patient).status_code == 200
    revoke_token(world.store, world.p1_token, "attack-client")
    r = world.client.get("/fhir/Patient/p1", headers=world.patient)
    assert r.status_code == 401 and "revoked" in r.json()["issue"][0]["diagnostics"]
    assert_no_p2(r)


def test_malformed_authorization_headers_are_401(world: World) -> None:
    """Garbage where a JWT should be (bad base64, JSON arrays, huge headers, two tokens) is a 401, never a 500."""
    not_utf8 = _b64(bytes([0xFF, 0xFE]))
    for value in ("Bearer " + "A" * 20000, "Bearer a.b.c", "Bearer e30.e30.", "Bearer W10.W10.x",
                  f"Bearer {not_utf8}.{not_utf8}.x", "Bearer .", "Bearer ..",
                  f"Bearer {world.p1_token} {world.p1_token}", "bearer", "Bearer \u00e9\u00e9.\u00e9.\u00e9".encode()):
        r = world.client.get("/fhir/Observation", headers={"Authorization": value})
        assert r.status_code == 401, f"{value[:40]!r}: {r.status_code} {r.text[:300]}"
        assert_no_p2(r)


# ---- scope escalation through search and the other read interactions --------------------


ESCALATIONS = [
    "/fhir/Observation?_include=Observation:subject",
    "/fhir/Observation?_include=Observation:patient&_include:iterate=Patient:link",
    "/fhir/Patient?_revinclude=Observation:subject",
    "/fhir/Patient?_revinclude=Observation:subject&_revinclude=Condition:subject&_id=p1,p2",
    "/fhir/Patient?_revinclude:iterate=Observation:patient",
    "/fhir/Condition?_include=Condition:subject&_include=Condition:patient",
    "/fhir/Observation?subject.name=Bravo",
    "/fhir/Observation?subject:Patient.name=Bravo",
    f"/fhir/Observation?subject:Patient.identifier={MRN}|B-222",
    "/fhir/Observation?patient.birthdate=1990-02-02",
    "/fhir/Patient?_has:Observation:subject:code=8302-2",
    "/fhir/Patient?_has:Observation:patient:code=8302-2&_revinclude=Observation:patient",
    "/fhir/Patient?_has:Condition:subject:code:text=asthma",
    "/fhir/Patient/p2/Observation",
    "/fhir/Patient/p2/Condition",
    "/fhir/Patient/p2/Patient",
    "/fhir/Patient/p1,p2/Observation",
    "/fhir?_type=Observation,Condition",
    "/fhir?_type=Patient&_revinclude=Observation:subject",
    "/fhir?_id=p2,o2,c2",
    "/fhir?_type=Observation&_count=1",
    "/fhir/Observation/_history",
    "/fhir/Patient/_history",
    "/fhir/Condition/_history?_since=2000-01-01",
    "/fhir/_history",
    "/fhir/_history?_count=1",
    "/fhir/Observation?_id=o2",
    "/fhir/Observation?_id=o1,o2",
    "/fhir/Patient?_id=p2",
    "/fhir/Condition?_id=c2&_include=Condition:subject",
    "/fhir/Observation?subject=Patient/p2",
    "/fhir/Observation?subject=p2",
    "/fhir/Observation?patient=p2&_include=Observation:patient",
    f"/fhir/Observation?subject={BASE}/Patient/p2",
    "/fhir/Observation?code=8302-2",
    "/fhir/Observation?value-quantity=92.25",
    "/fhir/Patient?name=Bravo",
    "/fhir/Patient?identifier=B-222",
    f"/fhir/Patient?identifier=urn:secret|{P2_SECRET}",
    "/fhir/Observation?_sort=-_lastUpdated&_count=100",
    "/fhir/Observation?_elements=subject,note",
    "/fhir/Observation?_summary=true",
    "/fhir/Patient/p2",
    "/fhir/Observation/o2",
    "/fhir/Condition/c2",
    "/fhir/Observation/o2/_history",
    "/fhir/Observation/o2/_history/1",
    "/fhir/Patient/p2/$validate",
]


@pytest.mark.parametrize("url", ESCALATIONS)
def test_search_features_do_not_escalate(world: World, url: str) -> None:
    """The p1 token following references out of its compartment (includes, chains, _has, p2's compartment,
    system search and history, _id, p2's ids and values as criteria, reads): a 403 or only p1's data."""
    r = world.client.get(url, headers=world.patient)
    assert r.status_code in (200, 400, 403), f"{url}: {r.status_code} {r.text[:300]}"
    assert_no_p2(r)
    if r.status_code == 200 and r.json().get("resourceType") == "Bundle":
        assert entry_ids(r) <= P1_IDS


def test_search_post_does_not_escalate(world: World) -> None:
    """The same escalations through POST _search (criteria in a form body) at type and system level."""
    for url, form in (("/fhir/Observation/_search", {"_include": "Observation:subject", "subject": "Patient/p2"}),
                      ("/fhir/Patient/_search", {"_revinclude": "Observation:subject", "_id": "p2"}),
                      ("/fhir/_search", {"_type": "Observation,Condition"})):
        r = world.client.post(url, data=form, headers=world.patient)
        assert r.status_code in (200, 403), r.text
        assert_no_p2(r)


def test_includes_still_return_p1s_own_data(world: World) -> None:
    """Control for the escalation tests: the confined searches do find p1's resources (they are not vacuous)."""
    r = world.client.get("/fhir/Observation", params={"_include": "Observation:subject"}, headers=world.patient)
    assert r.status_code == 200 and entry_ids(r) == {("Observation", "o1"), ("Patient", "p1")}
    r = world.client.get("/fhir/Patient", params={"_revinclude": "Observation:subject"}, headers=world.patient)
    assert r.status_code == 200 and entry_ids(r) == {("Observation", "o1"), ("Patient", "p1")}
    r = world.client.get("/fhir", params={"_type": "Observation,Condition"}, headers=world.patient)
    assert r.status_code == 200 and entry_ids(r) == {("Observation", "o1"), ("Condition", "c1")}
    r = world.client.get("/fhir/Observation", params={"_id": "o2"}, headers=world.clinician)
    assert entry_ids(r) == {("Observation", "o2")}  # and the clinician does see p2's data


COUNT_ORACLES = [
    # (query answered for p1, query that tells p2's data apart)
    ({"_type": "Patient", "name": "Nobody-At-All"}, {"_type": "Patient", "name": "Bravo"}),
    ({"_type": "Observation", "code": "0000-0"}, {"_type": "Observation", "code": "8302-2"}),
    ({"_id": "nothing-here"}, {"_id": "o2"}),
    ({"_type": "Patient", "identifier": "urn:secret|nope"}, {"_type": "Patient", "identifier": f"urn:secret|{P2_SECRET}"}),
]


@pytest.mark.parametrize(("miss", "hit"), COUNT_ORACLES)
def test_system_search_totals_are_not_an_oracle(world: World, miss: dict[str, str], hit: dict[str, str]) -> None:
    """The p1 token asks /fhir?...&_summary=count with criteria only p2's data meets: the total must not differ
    from a search that matches nothing (else the count answers yes/no questions about p2)."""
    a = world.client.get("/fhir", params={**miss, "_summary": "count"}, headers=world.patient)
    b = world.client.get("/fhir", params={**hit, "_summary": "count"}, headers=world.patient)
    assert_no_p2(a)
    assert_no_p2(b)
    assert b.json().get("total", 0) == a.json().get("total", 0) == 0, b.text


def test_system_search_paging_total_is_confined(world: World) -> None:
    """The p1 token pages through /fhir?_type=Observation&_count=1: the total is p1's one Observation, not two."""
    r = world.client.get("/fhir", params={"_type": "Observation", "_count": "1"}, headers=world.patient)
    assert_no_p2(r)
    assert r.json().get("total", 1) == 1, r.text


# ---- Bundles --------------------------------------------------------------------------


def _obs_body(pid: str, code: str = "1234-5", oid: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Observation", "status": "final",
                            "code": {"coding": [{"system": LOINC, "code": code}]},
                            "subject": {"reference": f"Patient/{pid}"}}
    if oid:
        body["id"] = oid
    return body


def test_batch_cannot_read_or_write_p2(world: World) -> None:
    """A batch from the p1 writer that reads p2's resources every way it can and writes, updates and deletes
    them: each such entry is a 403 (or an empty search); the p1 entries work; nothing of p2 changes."""
    before = resource_count(world.store)
    entries = [
        {"request": {"method": "GET", "url": "Observation/o2"}},
        {"request": {"method": "GET", "url": "Patient/p2"}},
        {"request": {"method": "GET", "url": "Patient/p2/Observation"}},
        {"request": {"method": "GET", "url": "Observation?subject=Patient/p2&_include=Observation:subject"}},
        {"request": {"method": "GET", "url": "Observation/o2/_history"}},
        {"request": {"method": "GET", "url": "Condition?_id=c2"}},
        {"request": {"method": "PUT", "url": "Observation/o2"}, "resource": _obs_body("p1", oid="o2")},
        {"request": {"method": "PUT", "url": "Observation/o2"}, "resource": _obs_body("p2", oid="o2")},
        {"request": {"method": "POST", "url": "Observation"}, "resource": _obs_body("p2")},
        {"request": {"method": "DELETE", "url": "Condition/c2"}},
        {"request": {"method": "PUT", "url": "Observation?code=8302-2"}, "resource": _obs_body("p1", "8302-2")},
        {"request": {"method": "DELETE", "url": "Observation?subject=Patient/p2"}},
        {"request": {"method": "GET", "url": "Observation/o1"}},
    ]
    r = world.client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries},
                          headers=world.writer)
    assert r.status_code == 200, r.text
    assert_no_p2(r)
    answers = r.json()["entry"]
    assert answers[-1]["response"]["status"].startswith("200")
    for i, (asked, answer) in enumerate(zip(entries, answers, strict=True)):
        status = answer["response"]["status"]
        assert not status.startswith("5"), f"entry {i}: {status}"
        if i < len(entries) - 1 and status.startswith("2"):  # allowed only when it touched nothing of p2
            assert asked["request"]["method"] in ("GET", "PUT", "DELETE") and "?" in asked["request"]["url"], (
                f"entry {i} {asked['request']} answered {status}")
    assert current(world, "Observation", "o2")["meta"]["versionId"] == "1"
    assert current(world, "Condition", "c2")["meta"]["versionId"] == "1"
    assert current(world, "Observation", "o2")["subject"]["reference"] == "Patient/p2"
    r = world.client.get("/fhir/Observation", params={"subject": "Patient/p2"}, headers=world.clinician)
    assert entry_ids(r) == {("Observation", "o2")}  # nothing new for p2
    assert resource_count(world.store) >= before


@pytest.mark.parametrize("target", ["o2 with p1 content", "o2 kept p2", "new for p2", "delete c2", "p2 itself",
                                    "conditional on p2"])
def test_transaction_touching_p2_fails_whole(world: World, target: str) -> None:
    """A transaction from the p1 writer with one legitimate p1 write and one write of p2's data: the whole
    transaction is refused (403) and nothing is written, the p1 part included."""
    p2_entry = {
        "o2 with p1 content": {"request": {"method": "PUT", "url": "Observation/o2"},
                               "resource": _obs_body("p1", oid="o2")},
        "o2 kept p2": {"request": {"method": "PUT", "url": "Observation/o2"}, "resource": _obs_body("p2", oid="o2")},
        "new for p2": {"request": {"method": "POST", "url": "Observation"}, "resource": _obs_body("p2")},
        "delete c2": {"request": {"method": "DELETE", "url": "Condition/c2"}},
        "p2 itself": {"request": {"method": "PUT", "url": "Patient/p2"},
                      "resource": {"resourceType": "Patient", "id": "p2", "gender": "male"}},
        "conditional on p2": {"request": {"method": "PUT", "url": "Observation?code=8302-2"},
                              "resource": _obs_body("p2", "8302-2")},
    }[target]
    before = resource_count(world.store)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b9e4f7e-3a41-4c59-9d0a-7a1f1c1b2c3d", "request": {"method": "POST", "url": "Observation"},
         "resource": _obs_body("p1", "5555-5")},
        p2_entry,
    ]}
    r = world.client.post("/fhir", json=bundle, headers=world.writer)
    assert r.status_code in (403, 404, 412), f"{target}: {r.status_code} {r.text[:300]}"
    assert_no_p2(r)
    assert resource_count(world.store) == before
    assert current(world, "Observation", "o2")["meta"]["versionId"] == "1"
    assert current(world, "Condition", "c2")["meta"]["versionId"] == "1"
    assert current(world, "Patient", "p2")["meta"]["versionId"] == "1"
    r = world.client.get("/fhir/Observation", params={"code": "5555-5"}, headers=world.clinician)
    assert r.json().get("entry", []) == []


def test_patient_role_cannot_write_even_its_own_data(world: World) -> None:
    """A transaction from the read-only patient token writing only p1's data is refused as a whole."""
    before = resource_count(world.store)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Observation"}, "resource": _obs_body("p1")}]}
    r = world.client.post("/fhir", json=bundle, headers=world.patient)
    assert r.status_code == 403, r.text
    assert_clean(r)
    assert resource_count(world.store) == before


# ---- conditional interactions whose criteria match p2's resources ------------------------


CONDITIONALS = [
    ("PUT", "/fhir/Observation?subject=Patient/p2", _obs_body("p1")),
    ("PUT", "/fhir/Observation?code=8302-2", _obs_body("p1", "8302-2")),
    ("PUT", "/fhir/Observation?_id=o2", _obs_body("p1")),
    ("PUT", "/fhir/Patient?name=Bravo", {"resourceType": "Patient", "gender": "male"}),
    ("PUT", "/fhir/Observation?code=8302-2", _obs_body("p2", "8302-2")),
    ("DELETE", "/fhir/Observation?subject=Patient/p2", None),
    ("DELETE", "/fhir/Observation?code=8302-2", None),
    ("DELETE", "/fhir/Patient?name=Bravo", None),
    ("DELETE", "/fhir/Condition?_id=c2", None),
    ("PATCH", "/fhir/Observation?code=8302-2",
     [{"op": "replace", "path": "/subject/reference", "value": "Patient/p1"}]),
]


@pytest.mark.parametrize(("method", "url", "body"), CONDITIONALS)
def test_conditional_writes_cannot_reach_p2(world: World, method: str, url: str, body: Any) -> None:
    """Conditional update, delete and patch from the p1 writer whose criteria match p2's resources: refused,
    or run within p1's compartment; p2's resources are unchanged and nothing of them is returned."""
    headers = dict(world.writer)
    kwargs: dict[str, Any] = {}
    if method == "PATCH":
        headers["Content-Type"] = "application/json-patch+json"
        kwargs["content"] = json.dumps(body)
    elif body is not None:
        kwargs["json"] = body
    r = world.client.request(method, url, headers=headers, **kwargs)
    assert r.status_code in (200, 201, 204, 403, 404, 412), f"{method} {url}: {r.status_code} {r.text[:300]}"
    assert_no_p2(r)
    for t, i in sorted(P2_IDS):
        res = current(world, t, i)
        assert res["meta"]["versionId"] == "1", f"{method} {url} changed {t}/{i}"
        assert P2_SECRET in json.dumps(res)
    location = r.headers.get("location", "")
    assert "/o2" not in location and "/c2" not in location and "/p2" not in location


CONDITIONAL_CREATES = [
    pytest.param(who, door, criteria, id=f"{who}-{door}-{criteria}")
    for who in ("writer", "patient") for door, criteria in (
        ("rest", "subject=Patient/p2"), ("rest", "code=8302-2"), ("rest", "_id=o2"),
        ("batch", "_id=o2"), ("transaction", "code=8302-2"))
] + [pytest.param(who, "rest", f"subject={BASE}/Patient/p2", id=f"{who}-rest-absolute-reference")
     for who in ("writer", "patient")]


@pytest.mark.parametrize(("who", "door", "criteria"), CONDITIONAL_CREATES)
def test_conditional_create_does_not_reveal_p2(world: World, who: str, door: str, criteria: str) -> None:
    """POST with If-None-Exist criteria that match p2's Observation (by REST, or as a batch or transaction entry's
    ifNoneExist), from the p1 writer or the read-only p1 patient: the answer must not be p2's resource (nor its
    id in Location), and p2's data is unchanged."""
    headers = getattr(world, who)
    body = _obs_body("p1", "8302-2")
    if door == "rest":
        r = world.client.post("/fhir/Observation", json=body, headers={**headers, "If-None-Exist": criteria})
        assert "/o2" not in r.headers.get("location", ""), r.headers.get("location")
    else:
        bundle = {"resourceType": "Bundle", "type": door, "entry": [
            {"fullUrl": "urn:uuid:6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f", "resource": body,
             "request": {"method": "POST", "url": "Observation", "ifNoneExist": criteria}}]}
        r = world.client.post("/fhir", json=bundle, headers=headers)
    assert r.status_code in (200, 201, 403, 412), f"{criteria}: {r.status_code} {r.text[:300]}"
    if who == "patient" and door == "rest":
        assert r.status_code == 403, r.text[:300]  # patient/*.rs: no create, conditional or not
    assert_no_p2(r)
    assert current(world, "Observation", "o2")["meta"]["versionId"] == "1"


# ---- path traversal and odd ids ---------------------------------------------------------


ODD_PATHS = [
    "/fhir/Patient/..%2F..%2Fetc%2Fpasswd",
    "/fhir/Patient/%2e%2e",
    "/fhir/Patient/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/fhir/Patient/..%5C..%5Cwindows%5Cwin.ini",
    "/fhir/Patient/p1%2F..%2F..%2FPatient%2Fp2",
    "/fhir/..%2FPatient/p2",
    "/fhir/%2e%2e/Patient/p2",
    "/fhir/Patient/p1%00",
    "/fhir/Patient/p2%00.json",
    "/fhir/Patient/%00",
    "/fhir/Patient/" + "a" * 65,
    "/fhir/Patient/" + "a" * 5000,
    "/fhir/Patient/%C3%A9t%C3%A9",
    "/fhir/Patient/%F0%9F%92%A9",
    "/fhir/Patient/%E2%80%AEp2",
    "/fhir/Patient/%FF%FE",
    "/fhir/Patient/p1'%20OR%20'1'='1",
    "/fhir/Patient/p1;DROP%20TABLE%20resources",
    "/fhir/Patient/p2%20",
    "/fhir/Patient/%20p2",
    "/fhir/Patient/p2/_history/1%00",
    "/fhir/Patient/p2/_history/-1",
    "/fhir/Patient/p2/_history/..%2F..",
    "/fhir/Pat%00ient/p2",
    "/fhir/patient/p2",
    "/fhir/Resource/p2",
    "/fhir/DomainResource/p2",
]


@pytest.mark.parametrize("path", ODD_PATHS)
@pytest.mark.parametrize("who", ["patient", "clinician"])
def test_odd_paths_and_ids_are_clean_4xx(world: World, path: str, who: str) -> None:
    """Path traversal (encoded ../ and \\), NUL bytes, over-long, unicode and bidi-override ids, SQL in ids, and
    types that are no concrete resource: a clean 4xx OperationOutcome (never p2's data, never a 5xx)."""
    r = world.client.get(path, headers=getattr(world, who))
    assert 400 <= r.status_code < 500, f"{path}: {r.status_code} {r.text[:300]}"
    assert_no_p2(r)


@pytest.mark.parametrize("who", ["patient", "clinician"])
def test_huge_version_id_is_clean_4xx(world: World, who: str) -> None:
    """vread with a version id of 23 digits (past 64-bit integers): a clean 4xx."""
    r = world.client.get("/fhir/Patient/p2/_history/99999999999999999999999", headers=getattr(world, who))
    assert 400 <= r.status_code < 500, f"{r.status_code} {r.text[:300]}"
    assert_no_p2(r)


NUL_PARAMETERS = [("Patient", "name", "\x00"), ("Patient", "family:exact", "a\x00"), ("Patient", "name:contains", "\x00"),
                  ("Patient", "identifier", "urn:x|\x00"), ("Observation", "code", "\x00"),
                  ("Observation", "code:not", "\x00"), ("Observation", "subject", "Patient/\x00"),
                  ("Observation", "subject:Patient.name", "\x00"), ("Patient", "_has:Observation:subject:code", "\x00"),
                  ("Observation", "_profile", "http://x/\x00"), ("Patient", "_id", "p1\x00")]


@pytest.mark.parametrize(("res_type", "param", "value"), NUL_PARAMETERS, ids=[p[1] for p in NUL_PARAMETERS])
def test_nul_in_search_values_is_not_a_500(world: World, res_type: str, param: str, value: str) -> None:
    """A NUL byte (%00) in a search value, the classic C-string truncation probe: a 400 on every store."""
    r = world.client.get(f"/fhir/{res_type}", params={param: value}, headers=world.patient)
    assert r.status_code == 400, f"{param}={value!r}: {r.status_code} {r.text[:300]}"
    assert_no_p2(r)


def test_nul_in_a_resource_is_not_a_500(world: World) -> None:
    """A resource whose string holds an escaped NUL (\\u0000): refused (400) on every store, never a 500."""
    body = json.dumps({"resourceType": "Patient", "name": [{"family": "a\u0000b"}]})
    before = resource_count(world.store)
    r = world.client.post("/fhir/Patient", content=body,
                          headers={**world.clinician, "Content-Type": "application/fhir+json"})
    assert r.status_code == 400, f"{r.status_code} {r.text[:300]}"
    assert_clean(r)
    assert resource_count(world.store) == before


@pytest.mark.parametrize("rid", ["..", "a" * 65, "\u00e9", "p1\u0000", "a/b", "x y", "p2'--"])
def test_writes_with_odd_ids_are_clean_4xx(world: World, rid: str) -> None:
    """PUT with an id that is no FHIR id (in the URL and in the body): a clean 4xx, and nothing written."""
    before = resource_count(world.store)
    r = world.client.put(f"/fhir/Observation/{quote(rid, safe='')}", json=_obs_body("p1", oid=rid),
                         headers=world.clinician)
    assert 400 <= r.status_code < 500, f"{rid!r}: {r.status_code} {r.text[:300]}"
    assert_clean(r)
    assert resource_count(world.store) == before


# ---- oversized and deeply nested bodies ------------------------------------------------------


def _post_raw(world: World, body: bytes | Iterator[bytes], path: str = "/fhir/Patient") -> Any:
    headers = {**world.clinician, "Content-Type": "application/fhir+json"}
    return world.client.post(path, content=body, headers=headers)


def test_body_over_the_limit_is_413(world: World) -> None:
    """A body past max_body_bytes (1 MiB in the tests) is a 413, announced by Content-Length or not (chunked)."""
    big = json.dumps({"resourceType": "Patient", "name": [{"family": "x" * (2 * 1024 * 1024)}]}).encode()
    before = resource_count(world.store)
    r = _post_raw(world, big)
    assert r.status_code == 413, r.text[:300]
    assert_clean(r)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 64 * 1024):
            yield big[i:i + 64 * 1024]

    r = _post_raw(world, chunks())
    assert r.status_code == 413, r.text[:300]
    assert_clean(r)
    r = world.client.post("/fhir", content=big, headers={**world.clinician, "Content-Type": "application/fhir+json"})
    assert r.status_code == 413
    assert resource_count(world.store) == before


@pytest.mark.parametrize("shape", ["arrays", "objects", "extensions", "bundle"])
def test_deeply_nested_json_is_400(world: World, shape: str) -> None:
    """10,000 levels of nesting (arrays, objects, nested extensions, nested Bundles): a 400, not a stack
    overflow or a 500."""
    depth = 10_000
    if shape == "arrays":
        body = '{"resourceType":"Patient","name":' + "[" * depth + "]" * depth + "}"
    elif shape == "objects":
        body = '{"resourceType":"Patient","name":[' + '{"a":' * depth + "1" + "}" * depth + "]}"
    elif shape == "extensions":
        body = ('{"resourceType":"Patient",' + '"extension":[{"url":"http://x",' * depth + '"valueString":"x"'
                + "}]" * depth + "}")
    else:
        body = ('{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"POST","url":"Bundle"},'
                '"resource":' * 1000 + '{"resourceType":"Bundle","type":"collection"}' + "}]}" * 1000)
    before = resource_count(world.store)
    r = _post_raw(world, body.encode(), "/fhir" if shape == "bundle" else "/fhir/Patient")
    assert 400 <= r.status_code < 500, f"{shape}: {r.status_code} {r.text[:300]}"
    assert_clean(r)
    assert resource_count(world.store) == before


@pytest.mark.parametrize("shape", ["numbers as names", "empty objects", "bundle entries", "search values"])
def test_huge_arrays_are_clean_4xx(world: World, shape: str) -> None:
    """Arrays of hundreds of thousands of items, within the size limit: a clean 4xx, quickly, nothing written."""
    n = 200_000
    if shape == "numbers as names":
        r = _post_raw(world, ('{"resourceType":"Patient","name":[' + ",".join(["1"] * n) + "]}").encode())
    elif shape == "empty objects":
        r = _post_raw(world, ('{"resourceType":"Patient","name":[' + ",".join(["{}"] * n) + "]}").encode())
    elif shape == "bundle entries":
        r = _post_raw(world, ('{"resourceType":"Bundle","type":"transaction","entry":['
                              + ",".join(["{}"] * n) + "]}").encode(), "/fhir")
    else:  # a query string with 5,000 comma-separated values (httpx caps a URL's query at 64 KiB)
        r = world.client.get("/fhir/Patient", params={"_id": ",".join(f"x{i}" for i in range(5_000))},
                             headers=world.clinician)
        assert r.status_code in (200, 400, 414, 431), r.status_code
        assert_clean(r)
        return
    assert 400 <= r.status_code < 500, f"{shape}: {r.status_code} {r.text[:300]}"
    assert_clean(r)
    assert resource_count(world.store) == 6


# ---- injection through every kind of search parameter (property-based) --------------------------------


NASTY = ["'", '"', "%", "_", "\\", "'; DROP TABLE resources; --", "\" OR 1=1 --", "' OR '1'='1", "\u0000",
         "|", ",", "$", ":", "*", "\\,", "\\|", "\\$", "%00", "%27", "..", "/", "?", "&", "=", "#", "+", " ",
         "\u00e9", "\u200b", "\u202e", "\U0001f4a9", "ge", "lt", "eq", "sa", "ap", "2024", "-", "e999", "1e-999",
         "NaN", "-Infinity", "null", "[]", "{}", "$(reboot)", "`id`", "../../etc/passwd", "\n", "\r\n", "\t",
         "Patient/p2", "http://loinc.org", "' UNION SELECT body FROM resources --", "); DELETE FROM resources; --",
         "regexp", "'||(SELECT 1)||'", "\\'", "%%", "__", "%_%", "\\%"]
FRAGMENT = st.one_of(st.sampled_from(NASTY), st.text(st.characters(codec="utf-8"), max_size=12))
VALUE = st.lists(FRAGMENT, min_size=0, max_size=5).map("".join)

# (resource type, parameter, template of the value: {} is the drawn text)
PARAMETERS = [
    ("Patient", "name", "{}"),  # string
    ("Patient", "family:exact", "{}"),  # string, modifier
    ("Patient", "name:contains", "{}"),
    ("Patient", "identifier", "{}|{}"),  # token system|code
    ("Observation", "code", "{}"),  # token
    ("Observation", "code:in", "{}"),  # token, value set modifier
    ("Observation", "code:not", "{}|{}"),
    ("Observation", "subject", "{}"),  # reference
    ("Observation", "subject:Patient", "Patient/{}"),
    ("Observation", "subject:Patient.name", "{}"),  # chain
    ("Patient", "_has:Observation:subject:code", "{}"),
    ("Patient", "birthdate", "{}"),  # date
    ("Observation", "date", "ge{}"),
    ("RiskAssessment", "probability", "{}"),  # number
    ("Observation", "value-quantity", "{}|{}|{}"),  # quantity
    ("Observation", "_profile", "{}"),  # uri
    ("Observation", "code-value-quantity", "{}${}"),  # composite
    ("Observation", "_sort", "{}"),
    ("Patient", "_count", "{}"),
    ("Observation", "_include", "{}"),
    ("Patient", "_revinclude", "Observation:{}"),
    ("Patient", "_id", "{}"),
    ("Patient", "_lastUpdated", "{}"),
    ("Patient", "gender:missing", "{}"),
    ("Patient", "_elements", "{}"),
    ("Patient", "_summary", "{}"),
]

FAST = hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize(("res_type", "param", "template"), PARAMETERS, ids=[p[1] for p in PARAMETERS])
@FAST
@given(values=st.lists(VALUE, min_size=3, max_size=3), as_post=st.booleans())
def test_injection_in_search_parameters(world: World, res_type: str, param: str, template: str,
                                        values: list[str], as_post: bool) -> None:
    """SQL and LIKE metacharacters, escapes, NUL, unicode and FHIR separators in a search parameter of each type
    (string, token, reference, chain, _has, date, number, quantity, uri, composite, _sort, _count, _include,
    _revinclude, modifiers), by GET or POST _search: 200 or a 4xx OperationOutcome, and no row lost."""
    value = template.format(*values[: template.count("{}")])
    before = resource_count(world.store)
    if as_post:
        r = world.client.post(f"/fhir/{res_type}/_search", data={param: value}, headers=world.clinician)
    else:
        r = world.client.get(f"/fhir/{res_type}", params={param: value}, headers=world.clinician)
    assert r.status_code == 200 or 400 <= r.status_code < 500, f"{param}={value!r}: {r.status_code} {r.text[:300]}"
    assert_clean(r)
    assert resource_count(world.store) == before == 6


@FAST
@given(name=st.one_of(st.sampled_from(NASTY), st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)),
       value=VALUE, res_type=st.sampled_from(["Patient", "Observation"]))
def test_injection_in_parameter_names(world: World, name: str, value: str, res_type: str) -> None:
    """Injection in the parameter's name (and its modifier) rather than its value: never a 5xx, no row lost."""
    before = resource_count(world.store)
    r = world.client.get(f"/fhir/{res_type}", params={name: value}, headers=world.clinician)
    assert r.status_code == 200 or 400 <= r.status_code < 500, f"{name!r}={value!r}: {r.status_code} {r.text[:300]}"
    assert_clean(r)
    assert resource_count(world.store) == before


@FAST
@given(param=st.sampled_from(["name", "identifier", "_id", "subject", "code", "_has:Observation:subject:code",
                              "subject:Patient.name", "_content", "_text", "address", "family"]),
       value=st.one_of(VALUE, st.sampled_from(["Bravo", "B-222", "p2", "o2", "Patient/p2", "8302-2", "%", "_",
                                               "*", P2_SECRET, f"urn:secret|{P2_SECRET}", "' OR '1'='1"])),
       res_type=st.sampled_from(["Patient", "Observation", "Condition"]))
def test_injection_never_leaks_p2(world: World, param: str, value: str, res_type: str) -> None:
    """The same injection strings from the p1 token (wildcards, quotes, p2's own ids and values): whatever the
    answer, it holds nothing of p2's."""
    r = world.client.get(f"/fhir/{res_type}", params={param: value}, headers=world.patient)
    assert r.status_code in (200, 403) or 400 <= r.status_code < 500, f"{param}={value!r}: {r.status_code}"
    assert_no_p2(r)
    if r.status_code == 200:
        assert entry_ids(r) <= P1_IDS


def test_if_match_answers_only_a_caller_with_the_right(world: World) -> None:
    """A stale If-Match is a 412 only for a caller who may write: to anyone else it would say which version is
    current (or that the resource exists), so the policy answers first."""
    c = world.client
    obs_p2 = {"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "x"},
              "subject": {"reference": "Patient/p2"}}
    stale = {"If-Match": 'W/"999"'}
    # read-only patient on their own record; the p1-confined writer on p2's data
    assert c.put("/fhir/Patient/p1", json={"resourceType": "Patient", "id": "p1"},
                 headers={**world.patient, **stale}).status_code == 403
    assert c.put("/fhir/Observation/o2", json=obs_p2, headers={**world.writer, **stale}).status_code == 403
    patch = [{"op": "replace", "path": "/status", "value": "amended"}]
    for who in (world.patient, world.writer):
        r = c.patch("/fhir/Observation/o2", json=patch,
                    headers={**who, **stale, "Content-Type": "application/json-patch+json"})
        assert r.status_code == 403, r.text
    # the same stale If-Match from a caller with the right: 412
    assert c.put("/fhir/Observation/o2", json=obs_p2, headers={**world.clinician, **stale}).status_code == 412
    r = c.patch("/fhir/Observation/o2", json=patch,
                headers={**world.clinician, **stale, "Content-Type": "application/json-patch+json"})
    assert r.status_code == 412, r.text
