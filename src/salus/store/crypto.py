"""Encryption at rest: AES-256-GCM resource bodies under wrapped data keys, keyed hashes in the index.

Envelope encryption. A *master key* (256 bits, from ``SALUS_MASTER_KEY`` or
``SALUS_MASTER_KEY_FILE``; never stored in the database) wraps *data keys*,
which live wrapped in the ``data_keys`` table. Bodies are sealed under the
newest ``body`` data key; each sealed body names its key, so rotation never
has to touch the bodies: ``salus keys rotate`` wraps every data key under the
current master key and adds a new body key for new writes, in one short
transaction, while servers keep running (they hold unwrapped keys in memory
and load a key they have not seen when they first meet a body sealed with it).

A sealed body is ``enc1:<kid>:<base64(nonce | ciphertext | tag)>``, with the
resource's ``type/id/version`` as associated data: a body copied onto another
row, or another version of the same resource, does not open.

Search on identifying values (names, addresses, telecoms, identifiers of
Patient, Practitioner, RelatedPerson and Person) works through keyed hashes:
the index holds HMAC-SHA256 of each value under a separate *index key*, never
the value. String parameters store one hash per prefix, so the default
starts-with match and ``:exact`` still work; ``:contains`` and sorting on these
parameters cannot, and are refused with a clear 400 (``docs/security.md`` says what this trades away).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pybase64
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from salus.store.base import Queryable, Store

SEALED = "enc1:"
KEY_BYTES = 32
NONCE_BYTES = 12
# a string value longer than this gets prefix hashes up to here and one hash of the whole value
MAX_PREFIX = 64

# the resources whose identifying search values are hashed, and those values' parameters
PERSON_TYPES = frozenset({"Patient", "Practitioner", "RelatedPerson", "Person"})
PROTECTED_STRINGS = frozenset({
    "name", "family", "given", "phonetic",
    "address", "address-city", "address-country", "address-postalcode", "address-state",
})
PROTECTED_TOKENS = frozenset({"identifier", "telecom", "phone", "email"})


class EncryptionError(Exception):
    """The store's encryption cannot be set up as configured (a missing or wrong master key, a plain database)."""


class SealedBodyError(Exception):
    """A stored body does not open: tampered with, moved to another row, or sealed under an unknown key."""


def parse_master_keys(text: str) -> list[bytes]:
    """Master keys from text: base64 keys of 32 bytes separated by commas or whitespace, the current one first."""
    keys: list[bytes] = []
    for i, item in enumerate(text.replace(",", " ").split()):
        try:
            raw = base64.b64decode(item + "=" * (-len(item) % 4), altchars=b"-_" if ("-" in item or "_" in item) else None,
                                   validate=True)
        except (binascii.Error, ValueError):
            raise EncryptionError(f"master key {i + 1} is not base64") from None
        if len(raw) != KEY_BYTES:
            raise EncryptionError(f"master key {i + 1} has {len(raw)} bytes; AES-256 needs {KEY_BYTES}")
        keys.append(raw)
    return keys


def read_master_keys(value: str | None, file: Path | None) -> list[bytes]:
    """The configured master keys: the variable's, then the file's (one per line), the current one first."""
    keys = parse_master_keys(value) if value else []
    if file is not None:
        try:
            keys += parse_master_keys(file.read_text())
        except OSError as e:
            raise EncryptionError(f"cannot read the master key file {file}: {e.strerror}") from None
    return keys


def new_master_key() -> str:
    """A fresh random master key, base64 (what ``salus keys new-master`` prints)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def fingerprint(master: bytes) -> str:
    """A master key's public name: it says which key wrapped a data key without revealing the key."""
    return hmac.new(master, b"salus master key id", hashlib.sha256).hexdigest()[:16]


def _wrap_aad(kid: int, purpose: str) -> bytes:
    return f"salus data key {kid} {purpose}".encode()


def wrap(master: bytes, kid: int, purpose: str, key: bytes) -> str:
    """A data key sealed under a master key, bound to its id and purpose."""
    nonce = os.urandom(NONCE_BYTES)
    return base64.b64encode(nonce + AESGCM(master).encrypt(nonce, key, _wrap_aad(kid, purpose))).decode()


def unwrap(master: bytes, kid: int, purpose: str, wrapped: str) -> bytes:
    """The data key a ``wrap`` sealed; ``EncryptionError`` if this master key did not wrap it."""
    raw = base64.b64decode(wrapped)
    try:
        return AESGCM(master).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _wrap_aad(kid, purpose))
    except InvalidTag:
        raise EncryptionError(f"data key {kid} does not open with the master key that claims to wrap it") from None


@dataclass(frozen=True)
class KeyRow:
    """One row of ``data_keys``."""

    kid: int
    purpose: str  # "body" or "index"
    master: str  # fingerprint of the master key that wraps it
    wrapped: str


class Crypto:
    """What one store needs to seal and open bodies and blind index values; shared by its threads."""

    def __init__(self, masters: Sequence[bytes], rows: Iterable[KeyRow], fetch: Callable[[], list[KeyRow]]) -> None:
        self._masters = {fingerprint(m): m for m in masters}
        self._fetch = fetch
        self._aead: dict[int, AESGCM] = {}
        self._lock = threading.Lock()
        self.body_kid = 0
        self._index_key = b""
        self._learn(rows)
        if not self._index_key or not self.body_kid:
            raise EncryptionError("the data_keys table lacks an index key or a body key")

    def _learn(self, rows: Iterable[KeyRow]) -> None:
        for row in rows:
            if row.kid in self._aead or (row.purpose == "index" and self._index_key):
                continue
            master = self._masters.get(row.master)
            if master is None:
                raise EncryptionError(
                    f"data key {row.kid} is wrapped by master key {row.master}, which is not configured "
                    f"(configured: {', '.join(self._masters) or 'none'}); add it to SALUS_MASTER_KEY or the key file"
                )
            key = unwrap(master, row.kid, row.purpose, row.wrapped)
            if row.purpose == "index":
                self._index_key = key
            else:
                self._aead[row.kid] = AESGCM(key)
                self.body_kid = max(self.body_kid, row.kid)

    def _key(self, kid: int) -> AESGCM:
        aead = self._aead.get(kid)
        if aead is None:
            with self._lock:  # sealed by a key made after we started (salus keys rotate elsewhere)
                self._learn(self._fetch())
            aead = self._aead.get(kid)
            if aead is None:
                raise SealedBodyError(f"no data key {kid}")
        return aead

    def seal(self, res_type: str, res_id: str, version: int, body: str) -> str:
        """The stored form of a body: AES-GCM under the current body key, bound to ``type/id/version``."""
        nonce = os.urandom(NONCE_BYTES)
        aad = f"{res_type}/{res_id}/{version}".encode()
        ct = self._aead[self.body_kid].encrypt(nonce, body.encode(), aad)
        return f"{SEALED}{self.body_kid}:{pybase64.b64encode(nonce + ct).decode()}"

    def open(self, res_type: str, res_id: str, version: int, text: str | None) -> str | None:
        """The body a ``seal`` stored (None stays None: a deletion); a plain or damaged body is an error."""
        if text is None:
            return None
        if not text.startswith(SEALED):
            raise SealedBodyError(f"{res_type}/{res_id}/_history/{version} is stored unencrypted in an encrypted store")
        kid_text, _, payload = text[len(SEALED):].partition(":")
        try:
            raw = pybase64.b64decode(payload, validate=True)
            plain = self._key(int(kid_text)).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                                     f"{res_type}/{res_id}/{version}".encode())
        except (InvalidTag, ValueError):  # ValueError: not base64, or no key id
            raise SealedBodyError(f"{res_type}/{res_id}/_history/{version} does not open: it was altered or moved") from None
        return plain.decode()

    def blind(self, code: str, value: str) -> str:
        """The keyed hash the index keeps for one value of parameter ``code`` (per parameter: no cross-linking)."""
        return hmac.new(self._index_key, f"{code}\x1f{value}".encode(), hashlib.sha256).hexdigest()[:32]

    def blind_index(self, res_type: str, index: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
        """Index rows with identifying values replaced by keyed hashes (other types' rows pass unchanged).

        A string value ``norm`` becomes one row per prefix (the hash of ``norm[:k]``, up to
        ``MAX_PREFIX`` characters) and one for the whole value, which also carries the hash of
        the exact text; a token keeps its system and gets the hash of its code.
        """
        if res_type not in PERSON_TYPES:
            return index
        out = dict(index)
        strings = index.get("idx_string")
        if strings:
            rows: list[tuple[Any, ...]] = []
            for row in strings:
                code, grp, norm, exact = row
                if code not in PROTECTED_STRINGS:
                    rows.append(row)
                    continue
                for k in range(1, min(len(norm) - 1, MAX_PREFIX) + 1):
                    rows.append((code, grp, self.blind(code, norm[:k]), None))
                rows.append((code, grp, self.blind(code, norm), self.blind(code + ":exact", exact)))
            out["idx_string"] = rows
        tokens = index.get("idx_token")
        if tokens:
            out["idx_token"] = [
                (code, grp, system, self.blind(_base(code), value), text)
                if value is not None and _base(code) in PROTECTED_TOKENS else (code, grp, system, value, text)
                for code, grp, system, value, text in tokens
            ]
        return out


def _base(code: str) -> str:
    """``identifier:of-type`` -> ``identifier``: the derived rows of a parameter are protected with it."""
    return code.partition(":")[0]


def protected(resource_types: Iterable[str], code: str) -> bool | None:
    """Whether parameter ``code`` on these types is hashed: True, False, or None when it is on some only."""
    protected_code = code in PROTECTED_STRINGS or code in PROTECTED_TOKENS
    flags = {protected_code and t in PERSON_TYPES for t in resource_types}
    if len(flags) == 1:
        return flags.pop()
    return None if flags else False


# ---- the data keys of one database ------------------------------------------------

_KEYS_SQL = "SELECT kid, purpose, master, wrapped FROM data_keys ORDER BY kid"
_LOCK = "salus-data-keys"


def _rows(db: Queryable) -> list[KeyRow]:
    return [KeyRow(int(k), p, m, w) for k, p, m, w in db.query(_KEYS_SQL)]


def _add_key(db: Queryable, master: bytes, kid: int, purpose: str) -> KeyRow:
    row = KeyRow(kid, purpose, fingerprint(master), wrap(master, kid, purpose, os.urandom(KEY_BYTES)))
    db.query("INSERT INTO data_keys (kid, purpose, master, wrapped, created) VALUES (?, ?, ?, ?, ?)",
             (row.kid, row.purpose, row.master, row.wrapped, _now()))
    return row


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def attach(store: Store, masters: Sequence[bytes]) -> Crypto | None:
    """The store's ``Crypto`` (None when encryption is off), creating the data keys of a new database.

    Refuses, rather than guesses: an encrypted database opened without its master key, and
    a database holding plain resources opened with one (half-encrypted data would leave
    identifying values in the index in clear, and make searches miss them).
    """
    rows = _rows(store)
    if not masters:
        if rows:
            raise EncryptionError(
                "this database is encrypted: set SALUS_MASTER_KEY or SALUS_MASTER_KEY_FILE to its master key"
            )
        return None
    if not rows:
        with store.transaction() as tx:
            tx.lock(_LOCK)
            rows = _rows(tx)
            if not rows:
                plain = int(tx.query("SELECT COUNT(*) FROM resource_versions")[0][0])
                if plain:
                    raise EncryptionError(
                        f"this database holds {plain} unencrypted resource versions, and encryption can only be "
                        "turned on for a new database: export it (salus export), then import it into a new "
                        "database with the master key set"
                    )
                rows = [_add_key(tx, masters[0], 1, "index"), _add_key(tx, masters[0], 2, "body")]
    return Crypto(masters, rows, lambda: _rows(store))


@dataclass(frozen=True)
class Rotation:
    """What ``rotate`` did: the new body key, and how many data keys moved to the current master key."""

    new_kid: int
    rewrapped: int
    master: str


def rotate(store: Store, masters: Sequence[bytes]) -> Rotation:
    """A new body key for new writes, and every data key wrapped under the current (first) master key.

    One short transaction over a few rows: nothing is re-encrypted, readers and writers
    carry on (servers hold unwrapped keys and load the new one when they first meet it),
    and once it commits the old master keys can be removed from the configuration.
    """
    if not masters:
        raise EncryptionError("encryption is off: set SALUS_MASTER_KEY or SALUS_MASTER_KEY_FILE")
    current = masters[0]
    by_print = {fingerprint(m): m for m in masters}
    with store.transaction() as tx:
        tx.lock(_LOCK)
        rows = _rows(tx)
        if not rows:
            raise EncryptionError("this database is not encrypted")
        moved = 0
        for row in rows:
            if row.master == fingerprint(current):
                continue
            old = by_print.get(row.master)
            if old is None:
                raise EncryptionError(f"data key {row.kid} is wrapped by master key {row.master}, which is not configured")
            key = unwrap(old, row.kid, row.purpose, row.wrapped)
            tx.query("UPDATE data_keys SET master = ?, wrapped = ? WHERE kid = ?",
                     (fingerprint(current), wrap(current, row.kid, row.purpose, key), row.kid))
            moved += 1
        new = _add_key(tx, current, max(r.kid for r in rows) + 1, "body")
    return Rotation(new.kid, moved, fingerprint(current))
