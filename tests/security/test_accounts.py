"""Users and clients: hashed secrets, roles, and the input each kind of client needs."""

from __future__ import annotations

import pytest
from joserfc.jwk import RSAKey

from salus.security import accounts
from salus.store import Store

REDIRECT = "https://app.example.org/cb"


def test_password_hash_is_salted_scrypt() -> None:
    h1, h2 = accounts.hash_secret("pw-123456"), accounts.hash_secret("pw-123456")
    assert h1 != h2 and h1.startswith("scrypt$16384$8$1$") and "pw-123456" not in h1
    assert accounts.verify_secret("pw-123456", h1) and accounts.verify_secret("pw-123456", h2)
    assert not accounts.verify_secret("pw-1234567", h1)
    assert not accounts.verify_secret("pw-123456", "bcrypt$x") and not accounts.verify_secret("x", "garbage")


def test_users(store: Store) -> None:
    accounts.add_user(store, "doc", "correct horse", "clinician", "Practitioner/pr1")
    accounts.add_user(store, "anna", "anna-password", "patient", "Patient/p1")
    assert [(u.username, u.role, u.fhir_user, u.password_hash) for u in accounts.list_users(store)] == [
        ("anna", "patient", "Patient/p1", ""), ("doc", "clinician", "Practitioner/pr1", "")]
    assert accounts.authenticate_user(store, "doc", "correct horse").role == "clinician"  # type: ignore[union-attr]
    assert accounts.authenticate_user(store, "doc", "wrong horse") is None
    assert accounts.authenticate_user(store, "nobody", "correct horse") is None
    assert accounts.get_user(store, "anna").patient_id == "p1"  # type: ignore[union-attr]
    accounts.remove_user(store, "doc")
    assert accounts.get_user(store, "doc") is None
    with pytest.raises(ValueError, match="no user"):
        accounts.remove_user(store, "doc")


@pytest.mark.parametrize(("args", "message"), [
    (("doc", "correct horse", "surgeon", None), "unknown role"),
    (("doc", "short", "clinician", None), "at least 8"),
    (("bad name", "correct horse", "clinician", None), "invalid username"),
    (("anna", "anna-password", "patient", None), "Patient/"),
    (("anna", "anna-password", "patient", "Practitioner/x"), "Patient/"),
    (("doc", "correct horse", "clinician", "Observation/1"), "invalid fhirUser"),
])
def test_bad_users(store: Store, args: tuple[str, str, str, str | None], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        accounts.add_user(store, *args)
    assert accounts.list_users(store) == []


def test_duplicate_user(store: Store) -> None:
    accounts.add_user(store, "doc", "correct horse", "clinician")
    with pytest.raises(ValueError, match="already exists"):
        accounts.add_user(store, "doc", "other horse", "nurse")


def test_clients(store: Store) -> None:
    key = RSAKey.generate_key(2048, private=True)
    accounts.add_client(store, "bulk", "backend", "system/*.rs", jwks={"keys": [key.as_dict(private=False)]})
    accounts.add_client(store, "app", "public", "patient/*.rs", redirect_uris=[REDIRECT])
    conf = accounts.add_client(store, "conf", "confidential", "user/*.rs", redirect_uris=[REDIRECT],
                               secret="a-long-enough-secret")
    assert [c.client_id for c in accounts.list_clients(store)] == ["app", "bulk", "conf"]
    stored = accounts.get_client(store, "conf")
    assert stored is not None and stored.redirect_uris == (REDIRECT,) and stored.secret_hash == conf.secret_hash
    assert accounts.verify_client_secret(stored, "a-long-enough-secret")
    assert not accounts.verify_client_secret(stored, "a-long-enough-secreT")
    assert accounts.get_client(store, "bulk").jwks["keys"][0]["n"] == key.as_dict()["n"]  # type: ignore[union-attr]
    accounts.remove_client(store, "app")
    assert accounts.get_client(store, "app") is None
    with pytest.raises(ValueError, match="no client"):
        accounts.remove_client(store, "app")
    with pytest.raises(ValueError, match="already exists"):
        accounts.add_client(store, "conf", "public", "user/*.rs", redirect_uris=[REDIRECT])


@pytest.mark.parametrize(("kind", "kw", "message"), [
    ("public", {}, "redirect URI"),
    ("public", {"redirect_uris": [REDIRECT], "secret": "a-long-enough-secret"}, "no secret"),
    ("confidential", {"redirect_uris": [REDIRECT]}, "secret"),
    ("confidential", {"redirect_uris": [REDIRECT], "secret": "short"}, "16 characters"),
    ("backend", {}, "JWKS"),
    ("backend", {"jwks": {"keys": []}}, "at least one key"),
    ("backend", {"jwks": {"keys": [{"kty": "oct", "k": "abc"}]}}, "RSA or EC"),
    ("public", {"redirect_uris": ["app.example.org/cb"]}, "invalid redirect URI"),
    ("public", {"redirect_uris": [REDIRECT + "#frag"]}, "invalid redirect URI"),
    ("robot", {"redirect_uris": [REDIRECT]}, "unknown client kind"),
])
def test_bad_clients(store: Store, kind: str, kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        accounts.add_client(store, "c1", kind, "user/*.rs", **kw)  # type: ignore[arg-type]
    assert accounts.list_clients(store) == []


def test_backend_jwks_with_a_private_key_is_refused(store: Store) -> None:
    key = RSAKey.generate_key(2048, private=True)
    with pytest.raises(ValueError, match="private key"):
        accounts.add_client(store, "bulk", "backend", "system/*.rs", jwks={"keys": [key.as_dict(private=True)]})
