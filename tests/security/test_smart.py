"""SMART App Launch 2.0: discovery, the authorization code flow with PKCE through the HTML pages,
refresh rotation, Backend Services (client_credentials with a signed assertion), introspection, revocation.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from starlette.testclient import TestClient

from salus.config import Settings
from salus.security import accounts
from salus.security.tokens import verify_access_token
from salus.store import Store
from tests.security.conftest import BASE, REDIRECT, TOKEN_URL, Forms, authorize_params, login, pkce

APP_SCOPE = "launch/patient openid fhirUser offline_access patient/*.rs user/*.rs"
SECRET = "s3cret-s3cret-s3cret"


@pytest.fixture
def world(store: Store, smart_settings: Settings) -> Store:
    """Two patients, a clinician, a patient user, a public and a confidential app."""
    from salus.service import FhirService

    service = FhirService(store, smart_settings)
    service.update("Patient", "p1", {"resourceType": "Patient", "id": "p1", "name": [{"family": "Rossi", "given": ["Anna"]}]})
    service.update("Patient", "p2", {"resourceType": "Patient", "id": "p2", "name": [{"family": "Bianchi"}]})
    accounts.add_user(store, "doc", "correct horse", "clinician", "Practitioner/pr1")
    accounts.add_user(store, "anna", "anna-password", "patient", "Patient/p1")
    accounts.add_client(store, "app", "public", APP_SCOPE, redirect_uris=[REDIRECT])
    accounts.add_client(store, "conf", "confidential", APP_SCOPE, redirect_uris=[REDIRECT], secret=SECRET)
    return store


def exchange(http: TestClient, code: str, verifier: str, client_id: str = "app", **extra: Any) -> Any:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier,
            "client_id": client_id, **extra}
    return http.post("/fhir/auth/token", data=data)


def claims_of(token: str) -> dict[str, Any]:
    import json

    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# ---- discovery -------------------------------------------------------------------


def test_smart_configuration_advertises_what_is_supported(http: TestClient) -> None:
    doc = http.get("/fhir/.well-known/smart-configuration").json()
    assert doc["issuer"] == BASE
    assert doc["token_endpoint"] == TOKEN_URL
    assert doc["authorization_endpoint"] == f"{BASE}/auth/authorize"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["grant_types_supported"]) == {"authorization_code", "client_credentials", "refresh_token"}
    assert {"private_key_jwt", "client_secret_basic", "client_secret_post", "none"} <= set(
        doc["token_endpoint_auth_methods_supported"])
    assert "launch-ehr" not in doc["capabilities"]
    assert {"launch-standalone", "client-public", "permission-v2", "sso-openid-connect"} <= set(doc["capabilities"])
    assert "registration_endpoint" not in doc
    jwks = http.get("/fhir/auth/jwks").json()
    assert len(jwks["keys"]) == 1 and "d" not in jwks["keys"][0] and jwks["keys"][0]["alg"] == "RS256"


# ---- authorization code + PKCE ---------------------------------------------------


def test_full_flow_clinician_picks_a_patient(http: TestClient, world: Store, smart_settings: Settings) -> None:
    verifier, challenge = pkce()
    page = http.get("/fhir/auth/authorize", params=authorize_params("app", APP_SCOPE + " system/*.rs", challenge,
                                                                    nonce="n-1"))
    form = Forms(page.text).forms[0]
    form.update(username="doc", password="correct horse")
    picker = http.post("/fhir/auth/authorize", data=form)
    assert picker.status_code == 200
    parsed = Forms(picker.text)
    assert parsed.options["patient"] == ["p1", "p2"]
    assert "Anna Rossi" in picker.text
    form = parsed.forms[0]
    form["patient"] = "p2"
    res = http.post("/fhir/auth/authorize", data=form)
    assert res.status_code == 303
    query = parse_qs(urlsplit(res.headers["location"]).query)
    assert query["state"] == ["st-123"]
    tok = exchange(http, query["code"][0], verifier)
    assert tok.status_code == 200, tok.text
    assert tok.headers["cache-control"] == "no-store"
    body = tok.json()
    assert body["token_type"] == "Bearer" and body["patient"] == "p2" and body["expires_in"] == 3600
    # granted = requested ∩ allowed: system/*.rs was asked for but the app may not have it
    assert set(body["scope"].split()) == set(APP_SCOPE.split())
    claims = claims_of(body["access_token"])
    assert claims["aud"] == BASE and claims["patient"] == "p2" and claims["fhirUser"] == "Practitioner/pr1"
    assert claims["role"] == "clinician" and claims["client_id"] == "app"
    id_claims = claims_of(body["id_token"])
    assert id_claims["aud"] == "app" and id_claims["nonce"] == "n-1"
    assert id_claims["fhirUser"] == f"{BASE}/Practitioner/pr1"
    principal = verify_access_token(body["access_token"], store=world, settings=smart_settings, base_url=BASE)
    assert principal.subject == "doc" and principal.patient == "p2" and principal.kind == "user"
    assert "patient/*.rs" in principal.scopes
    assert body["refresh_token"]


def test_picker_refuses_an_unknown_patient(http: TestClient, world: Store) -> None:
    _, challenge = pkce()
    page = http.get("/fhir/auth/authorize", params=authorize_params("app", APP_SCOPE, challenge))
    form = Forms(page.text).forms[0]
    form.update(username="doc", password="correct horse")
    form = Forms(http.post("/fhir/auth/authorize", data=form).text).forms[0]
    form["patient"] = "nobody"
    res = http.post("/fhir/auth/authorize", data=form)
    assert res.status_code == 200 and "no patient with id" in res.text


def test_patient_user_gets_their_own_record_without_picker(http: TestClient, world: Store) -> None:
    verifier, challenge = pkce()
    query = login(http, authorize_params("app", "launch/patient openid fhirUser patient/*.rs", challenge),
                  "anna", "anna-password")
    body = exchange(http, query["code"][0], verifier).json()
    assert body["patient"] == "p1"
    assert "refresh_token" not in body  # neither offline_access nor online_access was asked for
    assert claims_of(body["id_token"])["fhirUser"] == f"{BASE}/Patient/p1"


def test_failed_login_shows_the_form_again(http: TestClient, world: Store) -> None:
    _, challenge = pkce()
    page = http.get("/fhir/auth/authorize", params=authorize_params("app", APP_SCOPE, challenge))
    form = Forms(page.text).forms[0]
    form.update(username="doc", password="wrong password")
    res = http.post("/fhir/auth/authorize", data=form)
    assert res.status_code == 401 and "location" not in res.headers
    again = Forms(res.text).forms[0]
    assert "password" in again and again["client_id"] == "app"
    assert "wrong password" in res.text.lower()


def test_confidential_client_must_authenticate(http: TestClient, world: Store) -> None:
    verifier, challenge = pkce()
    query = login(http, authorize_params("conf", "openid fhirUser user/*.rs", challenge), "doc", "correct horse")
    code = query["code"][0]
    bad = exchange(http, code, verifier, client_id="conf")  # no secret
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    query = login(http, authorize_params("conf", "openid fhirUser user/*.rs", challenge), "doc", "correct horse")
    ok = http.post("/fhir/auth/token", auth=("conf", SECRET), data={
        "grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": REDIRECT,
        "code_verifier": verifier})
    assert ok.status_code == 200, ok.text
    assert "patient" not in ok.json()
    wrong = http.post("/fhir/auth/token", auth=("conf", "not-the-secret"), data={"grant_type": "refresh_token"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"


def test_wrong_pkce_verifier_is_refused(http: TestClient, world: Store) -> None:
    _, challenge = pkce()
    other_verifier, _ = pkce()
    query = login(http, authorize_params("app", "patient/*.rs", challenge), "anna", "anna-password")
    res = exchange(http, query["code"][0], other_verifier)
    assert res.status_code == 400 and res.json()["error"] == "invalid_grant"
    assert "code_verifier" in res.json()["error_description"]


def test_code_reuse_fails_and_revokes_the_tokens_it_gave(http: TestClient, world: Store, smart_settings: Settings) -> None:
    verifier, challenge = pkce()
    query = login(http, authorize_params("app", APP_SCOPE, challenge), "anna", "anna-password")
    first = exchange(http, query["code"][0], verifier)
    assert first.status_code == 200
    access = first.json()["access_token"]
    verify_access_token(access, store=world, settings=smart_settings, base_url=BASE)
    second = exchange(http, query["code"][0], verifier)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
    from salus.fhir.outcome import FhirError

    with pytest.raises(FhirError, match="revoked"):
        verify_access_token(access, store=world, settings=smart_settings, base_url=BASE)
    refresh = http.post("/fhir/auth/token", data={"grant_type": "refresh_token", "client_id": "app",
                                                  "refresh_token": first.json()["refresh_token"]})
    assert refresh.json()["error"] == "invalid_grant"


def test_redirect_uri_must_match_exactly(http: TestClient, world: Store) -> None:
    _, challenge = pkce()
    params = authorize_params("app", APP_SCOPE, challenge, redirect_uri=REDIRECT + "/evil")
    res = http.get("/fhir/auth/authorize", params=params)
    assert res.status_code == 400 and "location" not in res.headers and "redirect_uri" in res.text
    res = http.get("/fhir/auth/authorize", params=authorize_params("ghost", APP_SCOPE, challenge))
    assert res.status_code == 400 and "location" not in res.headers
    # and at the token endpoint, the redirect_uri must be the one of the authorization request
    verifier, challenge = pkce()
    query = login(http, authorize_params("app", "patient/*.rs", challenge), "anna", "anna-password")
    res = exchange(http, query["code"][0], verifier, redirect_uri="https://app.example.org/other")
    assert res.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(("change", "description"), [
    ({"code_challenge_method": "plain"}, "S256"),
    ({"code_challenge_method": ""}, "S256"),
    ({"code_challenge": ""}, "PKCE is required"),
    ({"aud": "https://other.example.org/fhir"}, "aud"),
    ({"response_type": "token"}, "response_type"),
])
def test_bad_requests_redirect_with_an_error(http: TestClient, world: Store, change: dict[str, str],
                                             description: str) -> None:
    _, challenge = pkce()
    params = {k: v for k, v in {**authorize_params("app", APP_SCOPE, challenge), **change}.items() if v}
    res = http.get("/fhir/auth/authorize", params=params)
    assert res.status_code == 302
    query = parse_qs(urlsplit(res.headers["location"]).query)
    assert query["error"][0] in ("invalid_request", "unsupported_response_type")
    assert description in query["error_description"][0]
    assert query["state"] == ["st-123"] and "code" not in query


def test_authorize_by_post(http: TestClient, world: Store) -> None:
    _, challenge = pkce()
    res = http.post("/fhir/auth/authorize", data=authorize_params("app", "patient/*.rs", challenge))
    assert res.status_code == 200 and "username" in Forms(res.text).forms[0]


# ---- refresh ---------------------------------------------------------------------


def _tokens(http: TestClient, scope: str = APP_SCOPE) -> dict[str, Any]:
    verifier, challenge = pkce()
    query = login(http, authorize_params("app", scope, challenge), "anna", "anna-password")
    return exchange(http, query["code"][0], verifier).json()


def test_refresh_rotates_and_can_narrow_but_not_widen(http: TestClient, world: Store, smart_settings: Settings) -> None:
    first = _tokens(http)
    old = first["refresh_token"]
    wide = http.post("/fhir/auth/token", data={"grant_type": "refresh_token", "client_id": "app",
                                                "refresh_token": old, "scope": "patient/*.rs user/*.cruds"})
    assert wide.status_code == 400 and wide.json()["error"] == "invalid_scope"
    res = http.post("/fhir/auth/token", data={"grant_type": "refresh_token", "client_id": "app",
                                               "refresh_token": old, "scope": "patient/*.rs"})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["scope"] == "patient/*.rs" and body["patient"] == "p1"
    assert body["refresh_token"] != old
    assert verify_access_token(body["access_token"], store=world, settings=smart_settings,
                               base_url=BASE).scopes == {"patient/*.rs"}
    again = http.post("/fhir/auth/token", data={"grant_type": "refresh_token", "client_id": "app",
                                                 "refresh_token": old})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # replaying the rotated token revoked the whole grant: the new refresh token is dead too
    newer = http.post("/fhir/auth/token", data={"grant_type": "refresh_token", "client_id": "app",
                                                 "refresh_token": body["refresh_token"]})
    assert newer.json()["error"] == "invalid_grant"


def test_refresh_by_another_client_is_refused(http: TestClient, world: Store) -> None:
    first = _tokens(http)
    res = http.post("/fhir/auth/token", auth=("conf", SECRET),
                    data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert res.json()["error"] == "invalid_grant"


# ---- backend services ------------------------------------------------------------


@pytest.fixture
def backend_key(store: Store) -> RSAKey:
    """A backend client registered with the public half of a freshly generated RSA key."""
    key = RSAKey.generate_key(2048, parameters={"kid": "bk1"}, private=True)
    accounts.add_client(store, "bulk", "backend", "system/*.rs system/Patient.rs",
                        jwks={"keys": [key.as_dict(private=False)]})
    return key


def assertion(key: RSAKey | ECKey, alg: str = "RS384", **claims: Any) -> str:
    now = int(time.time())
    base = {"iss": "bulk", "sub": "bulk", "aud": TOKEN_URL, "exp": now + 240, "jti": uuid.uuid4().hex}
    return jwt.encode({"alg": alg, "kid": key.kid or "k"}, {**base, **claims}, key, algorithms=[alg])


def client_credentials(http: TestClient, signed: str, scope: str = "system/*.rs") -> Any:
    return http.post("/fhir/auth/token", data={
        "grant_type": "client_credentials", "scope": scope, "client_assertion": signed,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})


def test_backend_services_token(http: TestClient, store: Store, smart_settings: Settings, backend_key: RSAKey) -> None:
    res = client_credentials(http, assertion(backend_key), "system/*.rs system/Observation.cruds")
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["scope"] == "system/*.rs" and "refresh_token" not in body and "patient" not in body
    principal = verify_access_token(body["access_token"], store=store, settings=smart_settings, base_url=BASE)
    assert principal.kind == "system" and principal.subject == "bulk" and principal.client_id == "bulk"


def test_backend_services_es384(http: TestClient, store: Store) -> None:
    key = ECKey.generate_key("P-384", parameters={"kid": "ec1"}, private=True)
    accounts.add_client(store, "bulk", "backend", "system/*.rs", jwks={"keys": [key.as_dict(private=False)]})
    assert client_credentials(http, assertion(key, "ES384")).status_code == 200


@pytest.mark.parametrize(("claims", "why"), [
    ({"exp": int(time.time()) - 10}, "expired"),
    ({"exp": int(time.time()) + 3600}, "five minutes"),
    ({"aud": f"{BASE}/auth/authorize"}, "aud"),
    ({"sub": "someone-else"}, "sub"),
    ({"jti": ""}, "jti"),
])
def test_backend_assertion_claims_are_checked(http: TestClient, store: Store, backend_key: RSAKey,
                                              claims: dict[str, Any], why: str) -> None:
    res = client_credentials(http, assertion(backend_key, **claims))
    assert res.status_code == 401 and res.json()["error"] == "invalid_client"
    assert why in res.json()["error_description"]


def test_backend_assertion_signed_by_another_key(http: TestClient, store: Store, backend_key: RSAKey) -> None:
    intruder = RSAKey.generate_key(2048, parameters={"kid": "bk1"}, private=True)
    res = client_credentials(http, assertion(intruder))
    assert res.status_code == 401 and "signature" in res.json()["error_description"]


def test_backend_assertion_jti_is_single_use(http: TestClient, store: Store, backend_key: RSAKey) -> None:
    signed = assertion(backend_key)
    assert client_credentials(http, signed).status_code == 200
    replay = client_credentials(http, signed)
    assert replay.status_code == 401 and "already used" in replay.json()["error_description"]


def test_backend_services_system_scopes_only(http: TestClient, store: Store, backend_key: RSAKey) -> None:
    res = client_credentials(http, assertion(backend_key), "patient/*.rs")
    assert res.status_code == 400 and res.json()["error"] == "invalid_scope"
    res = client_credentials(http, assertion(backend_key), "system/Observation.cruds")
    assert res.json()["error"] == "invalid_scope"


def test_public_client_cannot_use_client_credentials(http: TestClient, world: Store) -> None:
    res = http.post("/fhir/auth/token", data={"grant_type": "client_credentials", "client_id": "app",
                                               "scope": "system/*.rs"})
    assert res.status_code == 400 and res.json()["error"] == "unauthorized_client"


# ---- introspection and revocation ------------------------------------------------


def test_introspection_and_revocation(http: TestClient, world: Store, backend_key: RSAKey) -> None:
    issued = _tokens(http)
    access, refresh = issued["access_token"], issued["refresh_token"]
    # the caller authenticates as a backend client (a resource server)
    def introspect(token: str) -> dict[str, Any]:
        res = http.post("/fhir/auth/introspect", data={
            "token": token, "client_assertion": assertion(backend_key),
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
        assert res.status_code == 200, res.text
        return res.json()

    info = introspect(access)
    assert info["active"] is True and info["client_id"] == "app" and info["sub"] == "anna"
    assert info["patient"] == "p1" and info["fhirUser"] == "Patient/p1" and info["exp"] > time.time()
    assert introspect(refresh)["active"] is True
    assert introspect("garbage") == {"active": False}
    # a bearer token of this server also lets one introspect
    res = http.post("/fhir/auth/introspect", data={"token": access}, headers={"Authorization": f"Bearer {access}"})
    assert res.json()["active"] is True
    # nobody else may
    res = http.post("/fhir/auth/introspect", data={"token": access})
    assert res.status_code == 401
    res = http.post("/fhir/auth/introspect", data={"token": access, "client_id": "app"})
    assert res.status_code == 401

    assert http.post("/fhir/auth/revoke", data={"token": access, "client_id": "app"}).status_code == 200
    assert introspect(access) == {"active": False}
    assert introspect(refresh)["active"] is True  # revoking an access token leaves the grant
    assert http.post("/fhir/auth/revoke", data={"token": refresh, "client_id": "app"}).status_code == 200
    assert introspect(refresh) == {"active": False}
    assert http.post("/fhir/auth/revoke", data={"token": "unknown", "client_id": "app"}).status_code == 200


def test_another_client_cannot_revoke(http: TestClient, world: Store) -> None:
    issued = _tokens(http)
    assert http.post("/fhir/auth/revoke", auth=("conf", SECRET), data={"token": issued["refresh_token"]}).status_code == 200
    res = http.post("/fhir/auth/token", data={"grant_type": "refresh_token", "client_id": "app",
                                               "refresh_token": issued["refresh_token"]})
    assert res.status_code == 200


def test_token_errors_are_rfc6749_json(http: TestClient, world: Store) -> None:
    res = http.post("/fhir/auth/token", data={"grant_type": "password", "client_id": "app"})
    assert res.status_code == 400 and res.json()["error"] == "unsupported_grant_type"
    assert res.headers["cache-control"] == "no-store"
    res = http.post("/fhir/auth/token", data={"grant_type": "authorization_code", "client_id": "app", "code": "x"})
    assert res.json()["error"] == "invalid_grant"
    res = http.post("/fhir/auth/token", content=b'{"grant_type": "x"}', headers={"content-type": "application/json"})
    assert res.json()["error"] == "invalid_request"
