"""verify_access_token: what a resource server accepts, and every way a token is refused."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from salus.config import Settings
from salus.fhir.outcome import FhirError
from salus.security import keys
from salus.security.tokens import Grant, bearer_token, issue_access_token, revoke_token, verify_access_token
from salus.store import Store
from tests.security.conftest import BASE

GRANT = Grant("g1", "app", "doc", "user/*.rs launch/patient", role="clinician", fhir_user="Practitioner/pr1",
              patient="p1")


def verify(token: str, store: Store, settings: Settings) -> Any:
    return verify_access_token(token, store=store, settings=settings, base_url=BASE)


def refused(token: str, store: Store, settings: Settings, why: str) -> None:
    with pytest.raises(FhirError) as info:
        verify(token, store, settings)
    assert info.value.status == 401 and info.value.issues[0].code == "login"
    assert why in info.value.message


def signed(store: Store, **changes: Any) -> str:
    """A token signed by the server's own active key, with some claims changed."""
    key = keys.active_key(store)
    now = int(time.time())
    claims = {"iss": BASE, "sub": "doc", "aud": BASE, "exp": now + 600, "iat": now, "jti": "x", "scope": "user/*.rs",
              **changes}
    return jwt.encode({"alg": key.alg, "kid": key.kid}, claims, key.key, algorithms=[key.alg])


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_good_token_gives_its_principal(store: Store, smart_settings: Settings) -> None:
    issued = issue_access_token(store, smart_settings, BASE, GRANT)
    p = verify(issued.token, store, smart_settings)
    assert (p.subject, p.kind, p.role, p.client_id, p.patient, p.fhir_user) == (
        "doc", "user", "clinician", "app", "p1", "Practitioner/pr1")
    assert p.scopes == frozenset({"user/*.rs", "launch/patient"}) and p.token_id == issued.jti
    system = issue_access_token(store, smart_settings, BASE, Grant("g2", "bulk", "bulk", "system/*.rs",
                                                                   role="integration"))
    assert verify(system.token, store, smart_settings).kind == "system"


def test_wrong_signature(store: Store, smart_settings: Settings) -> None:
    good = issue_access_token(store, smart_settings, BASE, GRANT).token
    other = RSAKey.generate_key(2048, private=True)
    header, payload, _ = good.split(".")
    forged = jwt.encode(json.loads(base64.urlsafe_b64decode(header + "==")),
                        json.loads(base64.urlsafe_b64decode(payload + "==")), other, algorithms=["RS256"])
    refused(forged, store, smart_settings, "signature")
    tampered_payload = b64({**json.loads(base64.urlsafe_b64decode(payload + "==")), "patient": "p2"})
    refused(f"{header}.{tampered_payload}.{good.split('.')[2]}", store, smart_settings, "signature")


def test_alg_none_and_unused_algorithms(store: Store, smart_settings: Settings) -> None:
    good = issue_access_token(store, smart_settings, BASE, GRANT).token
    payload = good.split(".")[1]
    refused(f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.", store, smart_settings, "'none'")
    refused(f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{payload}.c2ln", store, smart_settings, "'HS256'")


def test_expired_and_not_yet_valid(store: Store, smart_settings: Settings) -> None:
    now = int(time.time())
    refused(signed(store, exp=now - 1), store, smart_settings, "expired")
    refused(signed(store, exp=None), store, smart_settings, "no expiry")
    refused(signed(store, nbf=now + 600), store, smart_settings, "not valid yet")
    refused(signed(store, iat=now + 600), store, smart_settings, "not valid yet")


def test_wrong_audience_and_issuer(store: Store, smart_settings: Settings) -> None:
    refused(signed(store, aud="https://other.example.org/fhir"), store, smart_settings, "not meant for this server")
    refused(signed(store, iss="https://evil.example.org"), store, smart_settings, "trusted issuer")


def test_revoked_and_unknown_jti(store: Store, smart_settings: Settings) -> None:
    issued = issue_access_token(store, smart_settings, BASE, GRANT)
    verify(issued.token, store, smart_settings)
    revoke_token(store, issued.token, "someone-else")  # only the client it was issued to can revoke it
    verify(issued.token, store, smart_settings)
    revoke_token(store, issued.token, "app")
    refused(issued.token, store, smart_settings, "revoked")
    # correctly signed, but never issued (no record of its jti)
    refused(signed(store, jti="never-issued"), store, smart_settings, "revoked")


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x.y", "....", "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.sig"])
def test_malformed(store: Store, smart_settings: Settings, garbage: str) -> None:
    with pytest.raises(FhirError) as info:
        verify(garbage, store, smart_settings)
    assert info.value.status == 401


def test_rotation_keeps_old_tokens_valid(store: Store, smart_settings: Settings) -> None:
    old = issue_access_token(store, smart_settings, BASE, GRANT).token
    first = keys.active_key(store)
    new_key = keys.rotate(store)
    assert keys.active_key(store).kid == new_key.kid != first.kid
    published = {k["kid"] for k in keys.jwks(store, smart_settings.access_token_ttl)["keys"]}
    assert published == {first.kid, new_key.kid}
    assert verify(old, store, smart_settings).subject == "doc"
    assert json.loads(base64.urlsafe_b64decode(
        issue_access_token(store, smart_settings, BASE, GRANT).token.split(".")[0] + "=="))["kid"] == new_key.kid
    # once the retention window (the token lifetime) has passed, the old key is no longer published
    assert {k["kid"] for k in keys.jwks(store, -10)["keys"]} == {new_key.kid}


def test_es384_signing_key(store: Store, smart_settings: Settings) -> None:
    keys.rotate(store, "ES384")
    token = issue_access_token(store, smart_settings, BASE, GRANT).token
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["alg"] == "ES384"
    assert verify(token, store, smart_settings).subject == "doc"


def test_external_oidc_provider(store: Store, smart_settings: Settings, tmp_path: Path) -> None:
    idp = RSAKey.generate_key(2048, parameters={"kid": "idp1"}, private=True)
    jwks = tmp_path / "idp.json"
    jwks.write_text(json.dumps({"keys": [idp.as_dict(private=False)]}))
    settings = replace(smart_settings, external_oidc_issuer="https://idp.example.org", external_oidc_jwks=str(jwks))
    now = int(time.time())
    claims = {"iss": "https://idp.example.org", "sub": "u-42", "aud": [BASE, "account"], "exp": now + 300,
              "iat": now, "scope": ["patient/*.rs", "openid"], "fhirUser": "https://ehr.example.org/fhir/Patient/p9",
              "patient": "p9", "azp": "portal"}
    token = jwt.encode({"alg": "RS256", "kid": "idp1"}, claims, idp, algorithms=["RS256"])
    p = verify(token, store, settings)
    assert (p.subject, p.patient, p.fhir_user, p.client_id) == ("u-42", "p9", "Patient/p9", "portal")
    assert p.scopes == {"patient/*.rs", "openid"}
    refused(token, store, smart_settings, "trusted issuer")  # not configured: not trusted
    other = RSAKey.generate_key(2048, parameters={"kid": "idp1"}, private=True)
    refused(jwt.encode({"alg": "RS256", "kid": "idp1"}, claims, other, algorithms=["RS256"]), store, settings,
            "signature")
    refused(jwt.encode({"alg": "RS256", "kid": "idp1"}, {**claims, "aud": "account"}, idp, algorithms=["RS256"]),
            store, settings, "not meant")


def test_bearer_token_header() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer  tok ") == "tok"
    assert bearer_token("Basic dXNlcjpwdw==") is None
    assert bearer_token("Bearer") is None
    assert bearer_token("Bearer a b") is None
    assert bearer_token(None) is None


def test_a_revocation_by_another_process_applies_within_seconds(store: Store, smart_settings: Settings) -> None:
    """Another worker's revocation reaches this process's memory of live tokens within REVOCATION_RECHECK."""
    from salus.security import tokens

    issued = issue_access_token(store, smart_settings, BASE, GRANT)
    t0 = time.time()
    verify_access_token(issued.token, store=store, settings=smart_settings, base_url=BASE, now=t0)
    with store.transaction() as tx:  # as `salus users remove` in another process would
        tx.query("UPDATE auth_tokens SET revoked = 1 WHERE token_id = ?", [issued.jti])
    # within the recheck interval this process still trusts what it checked (documented trade-off)...
    verify_access_token(issued.token, store=store, settings=smart_settings, base_url=BASE, now=t0 + 0.5)
    # ...and no longer after it
    with pytest.raises(FhirError) as info:
        verify_access_token(issued.token, store=store, settings=smart_settings, base_url=BASE,
                            now=t0 + tokens.REVOCATION_RECHECK + 0.5)
    assert info.value.status == 401
