"""The authorization server's signing keys, kept in the store so every worker and restart agrees.

The newest key signs; ``rotate()`` adds a new one and keeps the previous ones published in the
JWKS for as long as a token they signed can still be valid (the access token lifetime), so a
rotation never logs anyone out. RS256 is the default because every SMART client library verifies
it; ES384 is offered for deployments that prefer elliptic curves.

The private JWKs are stored as JSON in ``auth_keys``: protect the database (and its backups)
accordingly; encryption at rest of these rows is the job of ``salus.security.crypto``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey

from salus.store.base import Queryable, Store

SIGNING_ALGORITHMS = ("RS256", "ES384")

Key = RSAKey | ECKey

# parsed keys by kid: parsing an RSA private key costs more than the lookup, and a kid is random and
# never reused, so the cache can be shared by every store of the process
_parsed: dict[str, Key] = {}
_parsed_lock = threading.Lock()


@dataclass(frozen=True)
class SigningKey:
    """One stored key: its id, algorithm, creation time and (once parsed) the JWK itself."""

    kid: str
    alg: str
    created: int
    retired: int | None  # when a newer key took over signing (None: the active key)
    key: Key

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK, with ``kid``, ``alg`` and ``use`` set."""
        return {**self.key.as_dict(private=False), "kid": self.kid, "alg": self.alg, "use": "sig"}


def _generate(alg: str, kid: str) -> Key:
    params = {"kid": kid, "alg": alg, "use": "sig"}
    if alg == "RS256":
        return RSAKey.generate_key(2048, parameters=params, private=True)
    if alg == "ES384":
        return ECKey.generate_key("P-384", parameters=params, private=True)
    raise ValueError(f"unsupported signing algorithm {alg!r}: one of {', '.join(SIGNING_ALGORITHMS)}")


def _parse(kid: str, alg: str, private_jwk: str) -> Key:
    with _parsed_lock:
        key = _parsed.get(kid)
    if key is None:
        data = json.loads(private_jwk)
        key = RSAKey.import_key(data) if alg.startswith("RS") else ECKey.import_key(data)
        with _parsed_lock:
            _parsed[kid] = key
    return key


def rotate(store: Store, alg: str = "RS256") -> SigningKey:
    """Create a new signing key and make it the active one; older keys stay published until retired."""
    kid = secrets.token_urlsafe(12)
    key = _generate(alg, kid)
    now = int(time.time())
    with store.transaction() as tx:
        tx.query(
            "INSERT INTO auth_keys (kid, alg, private_jwk, created) VALUES (?, ?, ?, ?)",
            (kid, alg, json.dumps(key.as_dict(private=True)), now),
        )
    return SigningKey(kid, alg, now, None, key)


def list_keys(store: Queryable) -> list[SigningKey]:
    """Every stored key, newest first, each with when it stopped signing."""
    rows = store.query("SELECT kid, alg, private_jwk, created FROM auth_keys ORDER BY seq DESC")
    out: list[SigningKey] = []
    successor: int | None = None
    for kid, alg, jwk, created in rows:
        out.append(SigningKey(kid, alg, int(created), successor, _parse(kid, alg, jwk)))
        successor = int(created)
    return out


def active_key(store: Store) -> SigningKey:
    """The key that signs now, creating the first one on first use."""
    rows = store.query("SELECT kid, alg, private_jwk, created FROM auth_keys ORDER BY seq DESC LIMIT 1")
    if not rows:
        return rotate(store)
    kid, alg, jwk, created = rows[0]
    return SigningKey(kid, alg, int(created), None, _parse(kid, alg, jwk))


def published_keys(store: Queryable, retain_seconds: int) -> list[SigningKey]:
    """The keys whose signatures may still be valid: the active one and those retired within ``retain_seconds``."""
    cutoff = int(time.time()) - retain_seconds
    return [k for k in list_keys(store) if k.retired is None or k.retired >= cutoff]


def jwks(store: Queryable, retain_seconds: int) -> dict[str, Any]:
    """The public JWKS to publish at ``/auth/jwks``."""
    return {"keys": [k.public_jwk() for k in published_keys(store, retain_seconds)]}


def verification_keys(store: Queryable, retain_seconds: int) -> tuple[KeySet, list[str]]:
    """The published keys as a ``KeySet`` for verification, and the algorithms they sign with."""
    keys = published_keys(store, retain_seconds)
    return KeySet([k.key for k in keys]), sorted({k.alg for k in keys})
