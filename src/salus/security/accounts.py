"""Users and client applications of the SMART authorization server, kept in the store.

Passwords and client secrets are stored only as scrypt hashes (standard library, no extra
dependency), in a self-describing string so that the cost parameters can be raised later
without invalidating what is stored: ``scrypt$N$r$p$salt_b64$hash_b64``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from salus.security.principal import PERSON_ROLES
from salus.store.base import Queryable, Store

CLIENT_KINDS = ("backend", "confidential", "public")
_N, _R, _P = 2**14, 8, 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_FHIR_USER = re.compile(r"^(Practitioner|PractitionerRole|Patient|RelatedPerson|Person)/[A-Za-z0-9\-.]{1,64}$")


# ---- hashing ---------------------------------------------------------------------


def hash_secret(secret: str) -> str:
    """A salted scrypt hash of a password or client secret, self-describing."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches a stored hash, compared in constant time."""
    try:
        scheme, n, r, p, salt_b64, hash_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(hash_b64)
        digest = hashlib.scrypt(
            secret.encode(), salt=base64.b64decode(salt_b64), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


# a hash to compare against when the user does not exist, so a wrong username costs as much as a wrong password
_DUMMY_HASH = hash_secret(secrets.token_urlsafe(16))


# ---- users -----------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """A person who can log in to the authorization server (the hash never leaves this module's callers)."""

    username: str
    role: str
    fhir_user: str | None
    password_hash: str = ""

    @property
    def patient_id(self) -> str | None:
        """The Patient id a ``patient``-role user's data is about (their own record)."""
        if self.fhir_user and self.fhir_user.startswith("Patient/"):
            return self.fhir_user.split("/", 1)[1]
        return None


def add_user(store: Store, username: str, password: str, role: str, fhir_user: str | None = None) -> User:
    """Register a user; ``ValueError`` says what is wrong with the input."""
    if not _NAME.match(username or ""):
        raise ValueError(f"invalid username {username!r}: use 1-128 letters, digits, '.', '_', '@' or '-'")
    if len(password or "") < 8:
        raise ValueError("the password must be at least 8 characters long")
    if role not in PERSON_ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(PERSON_ROLES)}")
    if fhir_user is not None and not _FHIR_USER.match(fhir_user):
        raise ValueError(f"invalid fhirUser {fhir_user!r}: expected e.g. Practitioner/x or Patient/y")
    if role == "patient" and not (fhir_user or "").startswith("Patient/"):
        raise ValueError("a user with the patient role needs --fhir-user Patient/<id> (their own record)")
    user = User(username, role, fhir_user, hash_secret(password))
    with store.transaction() as tx:
        if tx.query("SELECT 1 FROM auth_users WHERE username = ?", (username,)):
            raise ValueError(f"user {username!r} already exists")
        tx.query(
            "INSERT INTO auth_users (username, password_hash, role, fhir_user, created) VALUES (?, ?, ?, ?, ?)",
            (username, user.password_hash, role, fhir_user, int(time.time())),
        )
    return user


def get_user(store: Queryable, username: str) -> User | None:
    """The user with that name, or None."""
    rows = store.query("SELECT username, role, fhir_user, password_hash FROM auth_users WHERE username = ?", (username,))
    return User(*rows[0]) if rows else None


def list_users(store: Queryable) -> list[User]:
    """Every user, by name (without their hashes)."""
    rows = store.query("SELECT username, role, fhir_user FROM auth_users ORDER BY username")
    return [User(*row) for row in rows]


def remove_user(store: Store, username: str) -> None:
    """Delete a user and revoke every token issued to them; ``ValueError`` if there is none of that name."""
    with store.transaction() as tx:
        if not tx.query("SELECT 1 FROM auth_users WHERE username = ?", (username,)):
            raise ValueError(f"no user {username!r}")
        tx.query("DELETE FROM auth_users WHERE username = ?", (username,))
        tx.query("UPDATE auth_tokens SET revoked = 1 WHERE subject = ? AND (role IS NULL OR role <> 'integration')", (username,))


def authenticate_user(store: Queryable, username: str, password: str) -> User | None:
    """The user if the password is right, else None (same cost whether or not the user exists)."""
    user = get_user(store, username)
    if user is None:
        verify_secret(password, _DUMMY_HASH)
        return None
    return user if verify_secret(password, user.password_hash) else None


# ---- clients ---------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    """A registered application: ``backend`` (JWKS, private_key_jwt), ``confidential`` (secret) or ``public``."""

    client_id: str
    kind: str
    scope: str
    redirect_uris: tuple[str, ...]
    secret_hash: str | None = None
    jwks: dict[str, Any] | None = None

    @property
    def scopes(self) -> frozenset[str]:
        """The scopes this client may be granted."""
        return frozenset(self.scope.split())


def _check_redirect_uri(uri: str) -> None:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise ValueError(f"invalid redirect URI {uri!r}: an absolute http(s) URL without a fragment")


def _check_jwks(jwks: Any) -> dict[str, Any]:
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValueError('the JWKS must be a JSON object {"keys": [...]} with at least one key')
    for key in jwks["keys"]:
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC"):
            raise ValueError("every JWKS key must be an RSA or EC public key")
        if "d" in key:
            raise ValueError("the JWKS contains a private key: register only the public keys")
    try:
        KeySet.import_key_set(jwks)
    except (JoseError, ValueError, TypeError) as err:
        raise ValueError(f"the JWKS cannot be read: {err}") from err
    return jwks


def add_client(
    store: Store, client_id: str, kind: str, scope: str, *, redirect_uris: list[str] | tuple[str, ...] = (),
    secret: str | None = None, jwks: dict[str, Any] | None = None,
) -> Client:
    """Register a client application; ``ValueError`` says what is wrong with the input."""
    if not _NAME.match(client_id or ""):
        raise ValueError(f"invalid client id {client_id!r}: use 1-128 letters, digits, '.', '_', '@' or '-'")
    if kind not in CLIENT_KINDS:
        raise ValueError(f"unknown client kind {kind!r}: one of {', '.join(CLIENT_KINDS)}")
    if not scope or not scope.split():
        raise ValueError("a client needs at least one allowed scope")
    for uri in redirect_uris:
        _check_redirect_uri(uri)
    if kind == "backend":
        if jwks is None:
            raise ValueError("a backend client needs its public keys (a JWKS file)")
        jwks = _check_jwks(jwks)
        if secret:
            raise ValueError("a backend client authenticates with its key, not a secret")
    elif kind == "confidential":
        if not redirect_uris:
            raise ValueError("a confidential app needs at least one redirect URI")
        if not secret or len(secret) < 16:
            raise ValueError("a confidential app needs a secret of at least 16 characters")
        if jwks is not None:
            raise ValueError("a confidential app authenticates with its secret; register keys as a backend client")
    else:
        if not redirect_uris:
            raise ValueError("a public app needs at least one redirect URI")
        if secret or jwks is not None:
            raise ValueError("a public app has no secret and no keys")
    client = Client(client_id, kind, " ".join(scope.split()), tuple(redirect_uris),
                    hash_secret(secret) if secret else None, jwks)
    with store.transaction() as tx:
        if tx.query("SELECT 1 FROM auth_clients WHERE client_id = ?", (client_id,)):
            raise ValueError(f"client {client_id!r} already exists")
        tx.query(
            "INSERT INTO auth_clients (client_id, kind, scope, redirect_uris, secret_hash, jwks, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (client_id, kind, client.scope, json.dumps(list(client.redirect_uris)), client.secret_hash,
             json.dumps(jwks) if jwks is not None else None, int(time.time())),
        )
    return client


def _client(row: tuple[Any, ...]) -> Client:
    return Client(row[0], row[1], row[2], tuple(json.loads(row[3])), row[4], json.loads(row[5]) if row[5] else None)


_CLIENT_COLUMNS = "client_id, kind, scope, redirect_uris, secret_hash, jwks"


def get_client(store: Queryable, client_id: str) -> Client | None:
    """The client with that id, or None."""
    rows = store.query(f"SELECT {_CLIENT_COLUMNS} FROM auth_clients WHERE client_id = ?", (client_id,))
    return _client(rows[0]) if rows else None


def list_clients(store: Queryable) -> list[Client]:
    """Every registered client, by id."""
    return [_client(r) for r in store.query(f"SELECT {_CLIENT_COLUMNS} FROM auth_clients ORDER BY client_id")]


def remove_client(store: Store, client_id: str) -> None:
    """Delete a client and revoke every token issued to it; ``ValueError`` if there is none."""
    with store.transaction() as tx:
        if not tx.query("SELECT 1 FROM auth_clients WHERE client_id = ?", (client_id,)):
            raise ValueError(f"no client {client_id!r}")
        tx.query("DELETE FROM auth_clients WHERE client_id = ?", (client_id,))
        tx.query("UPDATE auth_tokens SET revoked = 1 WHERE client_id = ?", (client_id,))


def verify_client_secret(client: Client, secret: str) -> bool:
    """Whether ``secret`` is this confidential client's secret."""
    return client.secret_hash is not None and verify_secret(secret, client.secret_hash)
