"""Access, refresh and ID tokens: issuing them, and turning a bearer token back into a ``Principal``.

Access tokens are JWTs signed by the server's active key (``salus.security.keys``) so a resource
server can check them offline; each is also recorded by its ``jti`` in ``auth_tokens`` so that it
can be revoked before it expires (RFC 7009) and introspected (RFC 7662). Refresh tokens are opaque
random strings stored only as a hash. Every token of one authorization shares a ``grant_id``, so
a replayed authorization code or refresh token revokes the whole grant (RFC 6749 section 4.1.2,
OAuth 2.0 Security BCP section 4.14).

Tokens from an external OpenID Connect provider (``external_oidc_issuer`` with its JWKS) are
accepted too, with their ``scope`` (or ``scp``), ``fhirUser`` and ``patient`` claims; they are not
recorded here, so they cannot be revoked here either.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from salus.config import Settings
from salus.fhir.outcome import FhirError
from salus.security import keys
from salus.security.principal import SYSTEM_ROLES, Principal
from salus.store.base import Queryable, Store

CLOCK_SKEW = 30  # seconds of tolerance for nbf/iat set by a clock slightly ahead of ours
EXTERNAL_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "ES256", "ES384"]
_JWKS_CACHE_SECONDS = 300


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None for anything else."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or " " in value:
        return None
    return value


def fhir_base_url(settings: Settings, request_base_url: str | None = None) -> str:
    """The FHIR base URL tokens are issued for (the SMART ``aud``): the public one if configured."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    if request_base_url is None:
        raise ValueError("the FHIR base URL is unknown: set public_base_url or pass the request's base URL")
    return request_base_url.rstrip("/") + settings.base_path


def issuer(settings: Settings, base_url: str) -> str:
    """The ``iss`` of this server's tokens: ``auth_issuer`` if set, else the FHIR base URL."""
    return (settings.auth_issuer or base_url).rstrip("/")


def token_hash(value: str) -> str:
    """How opaque secrets (codes, refresh tokens) are stored: SHA-256, since they are long and random."""
    return hashlib.sha256(value.encode()).hexdigest()


def _unauthorized(message: str) -> FhirError:
    return FhirError.of(401, "login", message)


# ---- issuing ---------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """What an authorization granted: who, to which client, which scopes and launch context."""

    grant_id: str
    client_id: str
    subject: str
    scope: str
    role: str | None = None
    fhir_user: str | None = None
    patient: str | None = None


@dataclass(frozen=True)
class IssuedToken:
    """A signed access token with its id and expiry."""

    token: str
    jti: str
    expires_in: int


def prune(store: Store) -> None:
    """Forget expired tokens, codes and assertion ids: nothing can use them any more."""
    now = int(time.time())
    with store.transaction() as tx:
        tx.query("DELETE FROM auth_tokens WHERE expires < ?", (now - CLOCK_SKEW,))
        tx.query("DELETE FROM auth_codes WHERE expires < ?", (now - CLOCK_SKEW,))
        tx.query("DELETE FROM auth_assertions WHERE expires < ?", (now - CLOCK_SKEW,))


def issue_access_token(store: Store, settings: Settings, base_url: str, grant: Grant) -> IssuedToken:
    """Sign an access token for ``grant`` and record its ``jti`` (for revocation and introspection)."""
    key = keys.active_key(store)
    now = int(time.time())
    ttl = settings.access_token_ttl
    jti = secrets.token_urlsafe(16)
    claims: dict[str, Any] = {
        "iss": issuer(settings, base_url), "sub": grant.subject, "aud": base_url, "exp": now + ttl, "iat": now,
        "nbf": now, "jti": jti, "scope": grant.scope, "client_id": grant.client_id,
    }
    for name, value in (("patient", grant.patient), ("fhirUser", grant.fhir_user), ("role", grant.role)):
        if value:
            claims[name] = value
    token = jwt.encode({"alg": key.alg, "kid": key.kid}, claims, key.key, algorithms=[key.alg])
    _record(store, jti, "access", grant, now, now + ttl)
    return IssuedToken(token, jti, ttl)


def issue_refresh_token(store: Store, settings: Settings, grant: Grant) -> str:
    """A new opaque refresh token for ``grant``, stored as a hash."""
    value = secrets.token_urlsafe(32)
    now = int(time.time())
    _record(store, token_hash(value), "refresh", grant, now, now + settings.refresh_token_ttl)
    return value


def _record(store: Store, token_id: str, kind: str, grant: Grant, issued: int, expires: int) -> None:
    with store.transaction() as tx:
        tx.query(
            "INSERT INTO auth_tokens (token_id, kind, grant_id, client_id, subject, role, fhir_user, patient, "
            "scope, issued, expires, revoked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (token_id, kind, grant.grant_id, grant.client_id, grant.subject, grant.role, grant.fhir_user,
             grant.patient, grant.scope, issued, expires),
        )


def issue_id_token(
    store: Store, settings: Settings, base_url: str, *, subject: str, client_id: str, fhir_user: str,
    nonce: str | None,
) -> str:
    """An OpenID Connect ID token (RS256 as OIDC requires by default), ``fhirUser`` as an absolute URL."""
    key = keys.active_key(store)
    if key.alg != "RS256":  # OIDC clients must support RS256; an ES384 active key still signs access tokens
        key = next((k for k in keys.list_keys(store) if k.alg == "RS256"), None) or keys.rotate(store, "RS256")
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer(settings, base_url), "sub": subject, "aud": client_id, "exp": now + settings.access_token_ttl,
        "iat": now, "fhirUser": f"{base_url}/{fhir_user}",
    }
    if nonce:
        claims["nonce"] = nonce
    return jwt.encode({"alg": key.alg, "kid": key.kid}, claims, key.key, algorithms=[key.alg])


def revoke_grant(store: Store, grant_id: str) -> None:
    """Revoke every token of one authorization (a replayed code or refresh token)."""
    with store.transaction() as tx:
        tx.query("UPDATE auth_tokens SET revoked = 1 WHERE grant_id = ?", (grant_id,))
    forget()


def use_refresh_token(store: Store, value: str, client_id: str) -> Grant | None:
    """Consume a refresh token (rotation): its grant, or None if unknown, expired, revoked or another client's.

    A refresh token presented after it was rotated away is a sign it was stolen: the whole grant
    is revoked, the legitimate client's current tokens included.
    """
    h = token_hash(value)
    now = int(time.time())
    with store.transaction() as tx:
        rows = tx.query(
            "UPDATE auth_tokens SET revoked = 1 WHERE token_id = ? AND kind = 'refresh' AND revoked = 0 "
            "AND expires > ? AND client_id = ? "
            "RETURNING grant_id, client_id, subject, scope, role, fhir_user, patient",
            (h, now, client_id),
        )
        if rows:
            return Grant(*rows[0])
        replay = tx.query(
            "SELECT grant_id FROM auth_tokens WHERE token_id = ? AND kind = 'refresh' AND revoked = 1 AND client_id = ?",
            (h, client_id),
        )
        if replay:
            tx.query("UPDATE auth_tokens SET revoked = 1 WHERE grant_id = ?", (replay[0][0],))
    return None


def revoke_token(store: Store, value: str, client_id: str) -> None:
    """Revoke a refresh token (with its whole grant) or an access token (that one), if it is this client's."""
    h = token_hash(value)
    rows = store.query("SELECT grant_id FROM auth_tokens WHERE token_id = ? AND kind = 'refresh' AND client_id = ?",
                       (h, client_id))
    if rows:
        revoke_grant(store, rows[0][0])
        return
    try:
        claims = unverified(value)[1]
    except FhirError:
        return
    jti = claims.get("jti")
    if isinstance(jti, str):
        with store.transaction() as tx:
            tx.query("UPDATE auth_tokens SET revoked = 1 WHERE token_id = ? AND kind = 'access' AND client_id = ?",
                     (jti, client_id))
        forget(jti)


# ---- verifying -------------------------------------------------------------------


def _b64json(part: str) -> dict[str, Any]:
    data = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, unverified: only to choose the issuer's keys, never to trust (401 if malformed)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise _unauthorized("the access token is not a signed JWT")
    try:
        return _b64json(parts[0]), _b64json(parts[1])
    except (ValueError, UnicodeDecodeError) as err:
        raise _unauthorized("the access token is malformed") from err


_external: dict[str, tuple[float, KeySet]] = {}
_external_lock = threading.Lock()


def external_keys(source: str) -> KeySet:
    """The external provider's JWKS from a URL (cached for five minutes) or a file."""
    with _external_lock:
        hit = _external.get(source)
    if hit and time.monotonic() - hit[0] < _JWKS_CACHE_SECONDS:
        return hit[1]
    if source.startswith(("https://", "http://")):
        with urllib.request.urlopen(source, timeout=5) as resp:  # noqa: S310 (configured by the operator)
            data = json.loads(resp.read())
    else:
        data = json.loads(Path(source).read_text())
    keyset = KeySet.import_key_set(data)
    with _external_lock:
        _external[source] = (time.monotonic(), keyset)
    return keyset


def _relative_fhir_user(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    parts = value.rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else value


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    raw = claims.get("scope", claims.get("scp", ""))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list):
        return frozenset(s for s in raw if isinstance(s, str))
    return frozenset()


class _Verified:
    """A token whose signature has been checked: its claims, whether its issuer is external, and the
    Principal it stands for once a request has accepted it (built once: the same object on every
    request lets what is derived from it, the policy's Access and the audit agents, be remembered)."""

    __slots__ = ("claims", "external", "principal", "expires", "not_before")

    def __init__(self, claims: dict[str, Any], external: bool) -> None:
        self.claims = claims
        self.external = external
        self.principal: Principal | None = None
        # once accepted, only the clock and revocation can change the answer: these are all a request checks
        self.expires = 0.0
        self.not_before = 0.0


# verifying an RS256 signature and parsing the JWT took most of a request's time (~80 us); expiry
# and revocation are still checked on every request. Read without the lock (a dict lookup is atomic);
# when full, the oldest entries go first.
_VERIFIED: dict[tuple[str, str, str | None, str | None], _Verified] = {}
_VERIFIED_LOCK = threading.Lock()
_VERIFIED_MAX = 10_000


def _signed_claims(token: str, store: Queryable, settings: Settings, base: str) -> tuple[dict[str, Any], bool]:
    """The claims of a token whose signature verifies with its issuer's keys, and whether the issuer is external."""
    header, untrusted = unverified(token)
    iss = untrusted.get("iss")
    external = False
    if iss == issuer(settings, base):
        keyset, algorithms = keys.verification_keys(store, settings.access_token_ttl)
    elif settings.external_oidc_issuer and settings.external_oidc_jwks and iss == settings.external_oidc_issuer:
        external = True
        try:
            keyset = external_keys(settings.external_oidc_jwks)
        except (OSError, ValueError, JoseError) as err:
            raise _unauthorized("the identity provider's keys cannot be loaded") from err
        algorithms = EXTERNAL_ALGORITHMS
    else:
        raise _unauthorized("the access token was not issued by a trusted issuer")
    if header.get("alg") not in algorithms:
        raise _unauthorized(f"the access token's algorithm {header.get('alg')!r} is not accepted")
    try:
        claims = jwt.decode(token, keyset, algorithms=algorithms).claims
    except (JoseError, ValueError) as err:
        raise _unauthorized("the access token's signature is not valid") from err
    return claims, external


class NeedsDatabase(Exception):
    """Raised by ``verify_access_token(offline=True)`` when the answer needs a database read."""


# when each token id was last found not revoked: the check is repeated at most every REVOCATION_RECHECK
# seconds per process (a revocation here clears it at once; other worker processes see it within that time)
REVOCATION_RECHECK = 2.0
_LIVE: OrderedDict[str, float] = OrderedDict()


def _check_not_revoked(store: Queryable, jti: str, at: float, offline: bool) -> None:
    seen = _LIVE.get(jti)  # an atomic lookup: the lock guards the changes
    if seen is not None and at - seen < REVOCATION_RECHECK:
        return
    if offline:
        raise NeedsDatabase
    rows = store.query("SELECT revoked FROM auth_tokens WHERE token_id = ? AND kind = 'access'", (jti,))
    if not rows or int(rows[0][0]):
        forget(jti)
        raise _unauthorized("the access token has been revoked")
    with _VERIFIED_LOCK:
        _LIVE[jti] = at
        _LIVE.move_to_end(jti)
        while len(_LIVE) > _VERIFIED_MAX:
            _LIVE.popitem(last=False)


def forget(jti: str | None = None) -> None:
    """Drop what this process remembers of a token id (every id: None), so a revocation applies at once."""
    with _VERIFIED_LOCK:
        if jti is None:
            _LIVE.clear()
        else:
            _LIVE.pop(jti, None)


def verify_access_token(
    token: str, *, store: Queryable, settings: Settings, base_url: str | None = None, now: float | None = None,
    offline: bool = False,
) -> Principal:
    """The ``Principal`` a bearer access token stands for; ``FhirError`` 401 when it is not acceptable.

    Checked: a signature by a key of its issuer (this server or the configured external OpenID
    Connect provider) with an algorithm that issuer signs with (never ``none``), ``exp``, ``nbf``
    and ``iat``, the audience (the FHIR base URL) and, for this server's tokens, that the ``jti``
    was issued here and not revoked. ``base_url`` is the FHIR base URL the request came to, needed
    when ``settings.public_base_url`` is not set.
    """
    base = (settings.public_base_url or base_url or "").rstrip("/")
    if not base:
        raise ValueError("the FHIR base URL is unknown: set public_base_url or pass base_url")
    key = (token, base, settings.auth_issuer, settings.external_oidc_issuer)
    at = time.time() if now is None else now
    cached = _VERIFIED.get(key)
    if cached is not None and cached.principal is not None:
        # accepted before, by the same base URL and issuers: its claims are as they were
        if cached.expires <= at:
            raise _unauthorized("the access token has expired")
        if at < cached.not_before:
            raise _unauthorized("the access token is not valid yet")
        if not cached.external:
            _check_not_revoked(store, cached.claims["jti"], at, offline)
        return cached.principal
    if cached is None:
        if offline:
            raise NeedsDatabase  # the issuer's keys are read from the database
        cached = _Verified(*_signed_claims(token, store, settings, base))
        with _VERIFIED_LOCK:
            _VERIFIED[key] = cached
            while len(_VERIFIED) > _VERIFIED_MAX:
                del _VERIFIED[next(iter(_VERIFIED))]
    claims, external = cached.claims, cached.external
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise _unauthorized("the access token has no expiry")
    if exp <= at:
        raise _unauthorized("the access token has expired")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is not None and (not isinstance(value, int | float) or value > at + CLOCK_SKEW):
            raise _unauthorized("the access token is not valid yet")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if base not in audiences:
        raise _unauthorized("the access token is not meant for this server")
    jti = claims.get("jti")
    if not external:
        if not isinstance(jti, str):
            raise _unauthorized("the access token has no id")
        _check_not_revoked(store, jti, at, offline)
    principal = _principal_of(claims)
    cached.expires = float(exp)
    cached.not_before = max((float(claims[n]) - CLOCK_SKEW for n in ("nbf", "iat") if claims.get(n) is not None),
                            default=float("-inf"))
    cached.principal = principal  # last: a request that sees it also sees the bounds above
    return principal


def _principal_of(claims: dict[str, Any]) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _unauthorized("the access token has no subject")
    role = claims.get("role") if isinstance(claims.get("role"), str) else None
    patient = claims.get("patient")
    jti = claims.get("jti")
    return Principal(
        subject=sub,
        kind="system" if role in SYSTEM_ROLES else "user",
        role=role,
        client_id=claims.get("client_id") or claims.get("azp"),
        scopes=_scopes(claims),
        patient=patient if isinstance(patient, str) and patient else None,
        fhir_user=_relative_fhir_user(claims.get("fhirUser")),
        token_id=jti if isinstance(jti, str) else None,
    )


def introspect(store: Store, settings: Settings, base_url: str, value: str) -> dict[str, Any]:
    """RFC 7662 introspection of an access or refresh token of this server: ``{"active": false}`` unless live."""
    rows = store.query(
        "SELECT client_id, subject, scope, patient, fhir_user, issued, expires, revoked FROM auth_tokens "
        "WHERE token_id = ? AND kind = 'refresh'",
        (token_hash(value),),
    )
    if rows:
        client_id, subject, scope, patient, fhir_user, issued, expires, revoked = rows[0]
        if int(revoked) or int(expires) <= time.time():
            return {"active": False}
        out: dict[str, Any] = {
            "active": True, "token_type": "refresh_token", "client_id": client_id, "sub": subject, "scope": scope,
            "iat": int(issued), "exp": int(expires), "iss": issuer(settings, base_url),
        }
        if patient:
            out["patient"] = patient
        if fhir_user:
            out["fhirUser"] = fhir_user
        return out
    try:
        principal = verify_access_token(value, store=store, settings=settings, base_url=base_url)
    except FhirError:
        return {"active": False}
    claims = unverified(value)[1]
    out = {
        "active": True, "token_type": "Bearer", "client_id": principal.client_id, "sub": principal.subject,
        "scope": " ".join(sorted(principal.scopes)), "exp": claims.get("exp"), "iat": claims.get("iat"),
        "iss": claims.get("iss"), "aud": claims.get("aud"),
    }
    if principal.patient:
        out["patient"] = principal.patient
    if principal.fhir_user:
        out["fhirUser"] = principal.fhir_user
    if principal.role:
        out["role"] = principal.role
    return out
