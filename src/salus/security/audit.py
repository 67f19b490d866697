"""The tamper-evident audit trail: BALP AuditEvents in an HMAC hash chain.

Every read, search, write, delete, export, login, failed login and denied access
becomes one FHIR R4 AuditEvent shaped after the IHE Basic Audit Log Patterns
(BALP, https://profiles.ihe.net/ITI/BALP/): who (agents), what patient, what
resource, what query, the outcome, and this server as the observer.

An event is kept in ``audit_log`` as its facts (``AuditRecord``: who, when, what, which patient,
which query, the outcome; ``c1:`` and a JSON array) and rendered into the BALP AuditEvent when it
is read (``render``, ``read_events``); rows of earlier versions hold the event's JSON, deflated
(``audit_codec``) or plain. Each row carries
``HMAC-SHA256(key, [seq, recorded, event_id, body, prev_hash])``. The key lives
outside the database (``audit.key`` in the data dir), so someone who can edit the
database but cannot read the key cannot forge a valid chain; ``verify`` walks
the chain and names the first entry that was changed, removed, moved or forged.
The chain head (``seq:hash``) is kept in ``salus_meta`` key ``audit_head``,
written in the same transaction as the entries, so a truncated tail shows too.

Writes append their events inside their own transaction (``append`` /
``append_many``), so a change and its audit entry commit or vanish together.
With encryption at rest on, bodies are sealed like resources (``read_event`` opens
one) and the chain covers the sealed form: ``verify`` needs the audit key, not the
master key.
Reads and searches, which open no write transaction, go through
``BufferedAuditWriter``: events are batched, many per transaction.
See docs/audit.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import itertools
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from salus.security import audit_codec
from salus.security.principal import Principal, RequestContext
from salus.store.base import Queryable, Store, Transaction

log = logging.getLogger(__name__)

# ---- code systems (R4 and BALP) -------------------------------------------------------

EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
# Salus' own identifier systems for the agents it knows by name (users, clients, roles)
USER_SYSTEM = "urn:salus:user"
CLIENT_SYSTEM = "urn:salus:client"
ROLE_SYSTEM = "urn:salus:role"
ERASED_SYSTEM = "urn:salus:erased"

OBSERVER = "Salus"

# interaction -> (type coding, subtype coding or None, default action)
# RESTful interactions are BALP's "rest" type with the restful-interaction subtype; BALP records
# searches (and operations) with action E(xecute), reads R, creates C, updates U, deletes D.
_REST_ACTIONS = {
    "read": "R", "vread": "R", "history": "R", "history-instance": "R", "history-type": "R",
    "history-system": "R", "capabilities": "R", "search": "E", "search-type": "E", "search-system": "E",
    "create": "C", "update": "U", "patch": "U", "delete": "D", "transaction": "E", "batch": "E",
    "operation": "E",
}
_REST_TYPE = {"system": EVENT_TYPE, "code": "rest", "display": "Restful Operation"}
_DICOM_EVENTS = {
    # BALP "User Authentication" (after ATNA): DICOM 110114 with subtype Login / Logout
    "login": ({"system": DICOM, "code": "110114", "display": "User Authentication"},
              {"system": DICOM, "code": "110122", "display": "Login"}, "E"),
    "logout": ({"system": DICOM, "code": "110114", "display": "User Authentication"},
               {"system": DICOM, "code": "110123", "display": "Logout"}, "E"),
    # data leaving the server in bulk ($export, salus export): DICOM 110106 Export, action R(ead)
    "export": ({"system": DICOM, "code": "110106", "display": "Export"},
               {"system": RESTFUL, "code": "operation"}, "R"),
}
_DEFAULT_ACTION = {**_REST_ACTIONS, **{name: action for name, (_, _, action) in _DICOM_EVENTS.items()}}
INTERACTIONS: frozenset[str] = frozenset(_DEFAULT_ACTION)
OUTCOMES = (0, 4, 8, 12)  # success, minor failure (4xx, denied), serious failure (5xx), major failure

GENESIS = "0" * 64  # prev_hash of the first entry
HEAD_KEY = "audit_head"
_LOCK_KEY = "salus.audit_log.chain"


# ---- what an event records, and the AuditEvent it renders -------------------------------------


class Actor(NamedTuple):
    """Who acted, as an event stores it: the facts its agents are rendered from."""

    subject: str
    kind: str
    role: str | None
    client_id: str | None
    fhir_user: str | None
    token_id: str | None
    break_glass: bool
    source: str | None  # the client's address
    purpose: str | None
    username: str | None  # the attempted account of a failed login


class AuditRecord(NamedTuple):
    """The facts of one AuditEvent, as stored in the chain; ``render`` gives the BALP AuditEvent.

    Why facts and not the AuditEvent itself: a BALP event is ~2 kB of JSON, nine tenths of it codings
    every event repeats; building, serialising and compressing it was most of what auditing a read cost.
    The facts serialise in well under a microsecond, and the event is rendered when someone reads it.
    """

    id: str
    at: int  # microseconds since the epoch, UTC (``recorded``)
    interaction: str
    action: str
    outcome: int
    actor: Actor
    request_id: str
    resource_type: str | None = None
    resource_id: str | None = None
    version: str | None = None
    patient: str | None = None
    query: str | None = None
    description: str | None = None
    erased: str | None = None  # the reference of an erased Patient (named by identifier, not by reference)
    # the other patients of a search: the entry renders one AuditEvent per patient (ids ``<id>.1``, ``<id>.2``...)
    patients: tuple[str, ...] = ()


# the actors of recent callers: a caller's requests all record the same one. Keyed by the principal's
# identity (a token's Principal is one object for the token's life; hashing its fields cost more than
# the rest of a record), and checked to be that object, since an id can be reused after it is freed.
_ACTORS: dict[tuple[int, str | None, str | None, str | None], tuple[Principal, Actor]] = {}
_CACHE_MAX = 1024


def _actor(ctx: RequestContext, username: str | None) -> Actor:
    p = ctx.principal
    key = (id(p), ctx.source, ctx.purpose, username)
    hit = _ACTORS.get(key)
    if hit is not None and hit[0] is p:
        return hit[1]
    if len(_ACTORS) >= _CACHE_MAX:
        _ACTORS.clear()
    actor = Actor(p.subject, p.kind, p.role, p.client_id, p.fhir_user, p.token_id, p.break_glass, ctx.source,
                  ctx.purpose, username)
    _ACTORS[key] = (p, actor)
    return actor


# ids name their process (random per process, again after a fork) and count within it: unique without
# a random draw (a system call) per event
_NODE = [os.urandom(5).hex()]
_COUNTER = itertools.count()
os.register_at_fork(after_in_child=lambda: _NODE.__setitem__(0, os.urandom(5).hex()))


def new_event_id(at: int) -> str:
    """An AuditEvent id: its time (``at``, hex), this process, and a count within it.

    Time first, so that ids arrive in order and the ``event_id`` index grows at its end: with random
    ids, every append touched a random page of an index as large as the trail, and an audited read
    on a trail of a few hundred thousand entries cost a tenth more.
    """
    return f"{at:014x}{_NODE[0]}{next(_COUNTER) & 0xFFFFFFFF:08x}"


def now_micros() -> int:
    """Now, in the microseconds since the epoch that ``AuditRecord.at`` holds."""
    return time.time_ns() // 1000


_SECOND: list[Any] = [None, ""]  # the last second formatted: events come many to a second


def instant(at: int) -> str:
    """A FHIR ``instant`` (UTC, microseconds) of ``AuditRecord.at``: the form ``recorded`` takes."""
    second, micros = divmod(at, 1_000_000)
    if _SECOND[0] != second:
        _SECOND[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _SECOND[0] = second
    return f"{_SECOND[1]}.{micros:06d}Z"


def now_instant() -> str:
    """The current time as a FHIR ``instant`` with microseconds (UTC)."""
    return instant(now_micros())


def audit_record(
    ctx: RequestContext,
    action: str | None,
    interaction: str,
    *,
    outcome: int = 0,
    resource_type: str | None = None,
    resource_id: str | None = None,
    version: int | str | None = None,
    patient: str | None = None,
    query: str | None = None,
    description: str | None = None,
    username: str | None = None,
    at: int | None = None,
    erased: str | None = None,
) -> AuditRecord:
    """What one interaction records, so every door records the same facts alike (``render`` shows the event).

    ``interaction`` is a restful-interaction code (read, vread, search-type, create, update, patch,
    delete, history-*, transaction, batch, operation, capabilities) or ``login``, ``logout``,
    ``export``; ``action`` None takes BALP's action for it. A denied access is the interaction that
    was refused with ``outcome=4`` and the reason in ``description``. ``patient`` is the Patient id
    or reference whose data was touched (BALP: one event per patient); ``query`` is the search as
    received (``Observation?patient=1&code=x``). ``username`` names the attempted account of a
    failed login; ``erased`` the Patient an erasure removed; ``at`` defaults to now.
    """
    default_action = _DEFAULT_ACTION.get(interaction)
    if default_action is None:
        raise ValueError(f"unknown audit interaction {interaction!r}")
    action = action or default_action
    if action not in ("C", "R", "U", "D", "E"):
        raise ValueError(f"audit action must be one of C R U D E, not {action!r}")
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome must be one of {OUTCOMES}, not {outcome!r}")
    if patient is None and resource_type == "Patient" and resource_id:
        patient = resource_id  # BALP: touching a Patient resource is touching that patient's data
    at = now_micros() if at is None else at
    return AuditRecord(
        new_event_id(at), at, interaction, action, outcome, _actor(ctx, username),
        ctx.request_id, resource_type, resource_id, None if version is None else str(version), patient, query,
        description, erased,
    )


def audit_event(ctx: RequestContext, action: str | None, interaction: str, **facts: Any) -> dict[str, Any]:
    """The BALP AuditEvent of an interaction (``audit_record``'s arguments): what ``read_events`` gives back."""
    return render(audit_record(ctx, action, interaction, **facts))


class Submitted(NamedTuple):
    """An AuditEvent another system sent (``POST AuditEvent``): kept in the chain as its JSON."""

    id: str
    at: int  # its ``recorded``, in UTC microseconds (the ``recorded`` column, for searches by date)
    body: str  # the AuditEvent's JSON text, as served


def per_patient(record: AuditRecord, patients: list[str]) -> AuditRecord:
    """A query's record for every patient whose data it returned: one AuditEvent per patient, as BALP asks.

    One entry in the chain all the same (``render_all`` gives the events): a search returning fifty
    patients cost fifty entries, each sealed, hashed and inserted, when the facts differ by one id.
    """
    return record._replace(patient=patients[0], patients=tuple(patients[1:])) if patients else record


# ---- the stored form of a record: "c1:" + a JSON array of its facts ---------------------------

COMPACT = "c1:"


def pack(record: AuditRecord | Submitted) -> str:
    """The stored body of a record (its id and ``recorded`` are columns of their own, hashed with it)."""
    if isinstance(record, Submitted):
        return record.body
    return COMPACT + orjson.dumps(record[2:], default=tuple).decode()  # the Actor, a NamedTuple, as an array


def unpack(event_id: str, at: int, body: str) -> AuditRecord:
    """The record a ``pack``ed body holds."""
    facts = orjson.loads(body[len(COMPACT):])
    facts[3] = Actor(*facts[3])
    return AuditRecord(event_id, at, *facts)


def parse_instant(recorded: str) -> int:
    """``AuditRecord.at`` of a ``recorded`` instant (``instant``'s inverse)."""
    stamp = datetime.fromisoformat(recorded)  # the C parser: a fifth of strptime's cost, and it reads the Z
    return int(stamp.timestamp()) * 1_000_000 + stamp.microsecond


def stored_events(event_id: str, recorded: str, body: str) -> list[dict[str, Any]]:
    """The AuditEvents of a stored (opened) body: a packed record's, or the deflated or plain JSON of older rows."""
    if body.startswith(COMPACT):
        return render_all(unpack(event_id, parse_instant(recorded), body), recorded)
    return [orjson.loads(audit_codec.unpack(body))]


# ---- rendering -------------------------------------------------------------------------


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def _network(address: str) -> dict[str, str]:
    """R4 agent.network: type 2 for an IP address, 1 for a machine name."""
    try:
        ipaddress.ip_address(address)
        kind = "2"
    except ValueError:
        kind = "1"
    return {"address": address, "type": kind}


_AGENTS: dict[Actor, list[dict[str, Any]]] = {}


def _agents(actor: Actor) -> list[dict[str, Any]]:
    """The agents of an event by this actor (shared by its events: never modify them)."""
    agents = _AGENTS.get(actor)
    if agents is None:
        if len(_AGENTS) >= _CACHE_MAX:
            _AGENTS.clear()
        agents = _AGENTS[actor] = _build_agents(actor)
    return agents


def _build_agents(a: Actor) -> list[dict[str, Any]]:
    """BALP agents: the user (requestor), the client application, and this server (the destination).

    A system principal (backend service) is itself the requestor; a failed login names the
    attempted ``username`` since no principal exists yet.
    """
    agents: list[dict[str, Any]] = []
    network = _network(a.source) if a.source else None
    purpose = [{"coding": [_coding(ACT_REASON, a.purpose)]}] if a.purpose else []
    if a.break_glass and not any(c["coding"][0]["code"] == "BTG" for c in purpose):
        purpose.append({"coding": [_coding(ACT_REASON, "BTG", "break the glass")]})
    if a.kind == "system":
        client: dict[str, Any] = {
            "type": {"coding": [_coding(DICOM, "110153", "Source Role ID")]},
            "who": {"identifier": {"system": CLIENT_SYSTEM, "value": a.client_id or a.subject},
                    "display": a.client_id or a.subject},
            "requestor": True,
        }
        if a.role:
            client["role"] = [{"coding": [_coding(ROLE_SYSTEM, a.role)]}]
        if network:
            client["network"] = network
        if a.token_id:
            client["policy"] = [a.token_id]
        if purpose:
            client["purposeOfUse"] = purpose
        agents.append(client)
    else:
        name = a.username if (a.username and a.kind == "anonymous") else a.subject
        user: dict[str, Any] = {
            "type": {"coding": [_coding(PARTICIPATION, "IRCP", "information recipient")]},
            "who": {"identifier": {"system": USER_SYSTEM, "value": name}, "display": name},
            "requestor": True,
        }
        if a.fhir_user:
            user["who"]["reference"] = a.fhir_user
        if a.role:
            user["role"] = [{"coding": [_coding(ROLE_SYSTEM, a.role)]}]
        if a.token_id:
            # BALP puts the OAuth token identifier (jti) in agent.policy
            user["policy"] = [a.token_id]
        if purpose:
            user["purposeOfUse"] = purpose
        if network and not a.client_id:
            user["network"] = network
        agents.append(user)
        if a.client_id:
            client = {
                "type": {"coding": [_coding(DICOM, "110153", "Source Role ID")]},
                "who": {"identifier": {"system": CLIENT_SYSTEM, "value": a.client_id}, "display": a.client_id},
                "requestor": False,
            }
            if network:
                client["network"] = network
            agents.append(client)
    agents.append({
        "type": {"coding": [_coding(DICOM, "110152", "Destination Role ID")]},
        "who": {"display": OBSERVER},
        "requestor": False,
    })
    return agents


def _patient_ref(patient: str) -> str:
    return patient if "/" in patient else f"Patient/{patient}"


# the constant parts of events, built once and shared by every event (read-only: events are only serialised)
_SOURCE = {"observer": {"display": OBSERVER}, "type": [_coding(SOURCE_TYPE, "4", "Application Server")]}
_REQUEST_ID_TYPE = _coding(BALP_ENTITY_TYPE, "XrequestId", "X-Request-Id")
_SYSTEM_OBJECT = _coding(ENTITY_TYPE, "2", "System Object")
_DOMAIN_RESOURCE = _coding(OBJECT_ROLE, "4", "Domain Resource")
_PERSON = _coding(ENTITY_TYPE, "1", "Person")
_PATIENT_ROLE = _coding(OBJECT_ROLE, "1", "Patient")
_QUERY_ROLE = _coding(OBJECT_ROLE, "24", "Query")
_SUBTYPES = {name: _coding(RESTFUL, name) for name in _REST_ACTIONS}


def render_all(r: AuditRecord, recorded: str | None = None) -> list[dict[str, Any]]:
    """Every AuditEvent of an entry: one, or one per patient of a search (``<id>.1``, ``<id>.2``... after the first)."""
    first = render(r, recorded)
    if not r.patients:
        return [first]
    slot = next(k for k, e in enumerate(first["entity"]) if e.get("role") is _PATIENT_ROLE)
    out = [first]
    for k, patient in enumerate(r.patients, start=1):
        entities = list(first["entity"])
        entities[slot] = {"what": {"reference": _patient_ref(patient)}, "type": _PERSON, "role": _PATIENT_ROLE}
        out.append({**first, "id": f"{r.id}.{k}", "entity": entities})
    return out


def render(r: AuditRecord, recorded: str | None = None) -> dict[str, Any]:
    """The R4 AuditEvent of a record, shaped after BALP (its codings and agents are shared: do not modify them)."""
    if r.interaction in _DICOM_EVENTS:
        type_, subtype, _ = _DICOM_EVENTS[r.interaction]
    else:
        type_, subtype = _REST_TYPE, _SUBTYPES[r.interaction]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": r.id,
        "type": type_,
        "subtype": [subtype],
        "action": r.action,
        "recorded": recorded or instant(r.at),
        "outcome": str(r.outcome),
    }
    if r.description:
        event["outcomeDesc"] = r.description
    event["agent"] = _agents(r.actor)
    event["source"] = _SOURCE
    entities: list[dict[str, Any]] = [{
        # BALP ties the entries of one request together by its X-Request-Id
        "what": {"identifier": {"value": r.request_id}},
        "type": _REQUEST_ID_TYPE,
    }]
    if r.resource_type and r.resource_id:
        ref = f"{r.resource_type}/{r.resource_id}" + (f"/_history/{r.version}" if r.version is not None else "")
        entities.append({"what": {"reference": ref}, "type": _SYSTEM_OBJECT, "role": _DOMAIN_RESOURCE})
    elif r.resource_type and r.interaction != "export":
        # a type-level interaction (search-type, history-type, create without id yet): the type alone
        entities.append({"what": {"display": r.resource_type}, "type": _SYSTEM_OBJECT, "role": _DOMAIN_RESOURCE})
    if r.patient:
        entities.append({"what": {"reference": _patient_ref(r.patient)}, "type": _PERSON, "role": _PATIENT_ROLE})
    if r.erased:
        # an erased patient is named by an identifier: a reference would point at nothing
        entities.append({"what": {"identifier": {"system": ERASED_SYSTEM, "value": r.erased},
                                  "display": f"{r.erased} (erased)"}, "type": _PERSON, "role": _PATIENT_ROLE})
    if r.query is not None:
        entities.append({
            "type": _SYSTEM_OBJECT,
            "role": _QUERY_ROLE,
            # R4 entity.query is base64Binary
            "query": base64.b64encode(r.query.encode("utf-8")).decode("ascii"),
        })
    event["entity"] = entities
    return event


# ---- the key --------------------------------------------------------------------------


def read_key(path: Path) -> bytes:
    """The key in a key file (hex text); FileNotFoundError if absent: verifying needs the real key."""
    key = bytes.fromhex(Path(path).read_text(encoding="ascii").strip())
    if len(key) < 32:
        raise ValueError(f"{path} holds a key shorter than 32 bytes")
    return key


def load_key(data_dir: Path) -> bytes:
    """The audit key of ``data_dir`` (``audit.key``), without creating one."""
    return read_key(Path(data_dir) / "audit.key")


def load_or_create_key(data_dir: Path) -> bytes:
    """The audit key in ``data_dir/audit.key``, created (32 random bytes, hex, mode 0600) if absent.

    Created under a temporary name and hard-linked into place, so two processes starting at once
    end up with the same key, and nobody ever reads a half-written file.
    """
    data_dir = Path(data_dir)
    path = data_dir / "audit.key"
    if path.exists():
        return load_key(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".audit.key.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_bytes(32).hex() + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won the race: use its key
    finally:
        tmp.unlink()
    return load_key(data_dir)


# ---- the chain --------------------------------------------------------------------------


def _sha256(data: bytes = b"") -> Any:
    return hashlib.sha256(data)


# an HMAC keyed once per key, copied per entry. Keyed with a digest constructor the C HMAC does not take,
# the stdlib builds it from two hashlib objects, whose copies cost a third less than OpenSSL's HMAC context
# (and keying anew, as hmac.digest does, costs more still); the result is the same HMAC-SHA256
_KEYED: dict[bytes, hmac.HMAC] = {}


def entry_hash(key: bytes, seq: int, recorded: str, event_id: str, body: str, prev_hash: str) -> str:
    """HMAC-SHA256 over the canonical JSON array of an entry: unambiguous, whatever the strings hold."""
    keyed = _KEYED.get(key)
    if keyed is None:
        keyed = _KEYED[key] = hmac.new(key, digestmod=_sha256)
    h = keyed.copy()
    h.update(orjson.dumps([seq, recorded, event_id, body, prev_hash]))
    return h.hexdigest()


def _read_head(q: Queryable) -> tuple[int, str]:
    rows = q.query("SELECT value FROM salus_meta WHERE key = ?", (HEAD_KEY,))
    if not rows:
        return 0, GENESIS
    seq, _, digest = str(rows[0][0]).partition(":")
    return int(seq), digest


_ROW = ["seq", "event_id", "recorded", "body", "prev_hash", "hash"]


def append_many(tx: Transaction, records: Iterable[AuditRecord | Submitted], key: bytes) -> list[str]:
    """Append records to the chain inside the caller's open write transaction; return their event ids.

    Takes the chain lock (PostgreSQL: a transaction-scoped advisory lock; SQLite already has one
    writer) and holds it until commit, so seq order is commit order and the chain stays linear.
    Call it last in the transaction: every audited writer queues on this lock, and taking it
    before other row locks could deadlock with a writer that holds those rows.
    """
    batch = list(records)
    if not batch:
        return []
    tx.lock(_LOCK_KEY)
    seq, prev = _read_head(tx)
    crypto = tx.crypto
    rows: list[tuple[int, str, str, str, str, str]] = []
    for record in batch:
        seq += 1
        recorded = instant(record.at)
        body = pack(record)
        if crypto is not None:  # encryption at rest: queries and names in events are data too
            body = crypto.seal("AuditEvent", record.id, seq, body)
        digest = entry_hash(key, seq, recorded, record.id, body, prev)
        rows.append((seq, record.id, recorded, body, prev, digest))
        prev = digest
    tx.insert_rows("audit_log", _ROW, rows)
    tx.query(
        "INSERT INTO salus_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (HEAD_KEY, f"{seq}:{prev}"),
    )
    return [row[1] for row in rows]


def read_event(q: Queryable, seq: int) -> dict[str, Any] | None:
    """The (first) AuditEvent of the entry at ``seq`` as recorded (opened, when encryption at rest sealed it)."""
    found = read_events(q, after=seq - 1, limit=1)
    return found[0][1] if found and found[0][0] == seq else None


ENTRY_COLUMNS = "seq, event_id, recorded, body"


def entry_events(q: Queryable, row: Sequence[Any]) -> list[dict[str, Any]]:
    """The AuditEvents of one ``audit_log`` row selected as ``ENTRY_COLUMNS``, opened when sealed and rendered."""
    seq, event_id, recorded, body = row
    if q.crypto is not None:
        body = q.crypto.open("AuditEvent", event_id, int(seq), body) or "{}"
    return stored_events(event_id, recorded, body)


def read_events(q: Queryable, after: int = 0, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """``(seq, AuditEvent)`` in chain order after ``after`` (of at most ``limit`` entries), opened and rendered.

    An entry of a search that returned several patients gives one event per patient, all with its seq.
    """
    sql = f"SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq"
    rows = q.query(sql + (" LIMIT ?" if limit is not None else ""), (after, limit) if limit is not None else (after,))
    return [(int(row[0]), event) for row in rows for event in entry_events(q, row)]


def append(tx: Transaction, record: AuditRecord | Submitted, key: bytes) -> str:
    """Append one record inside the caller's open write transaction (see ``append_many``); return its event id."""
    return append_many(tx, [record], key)[0]


# ---- verification -------------------------------------------------------------------------

CONTENT_CHANGED = "content changed"
ENTRY_MISSING = "entry missing"
OUT_OF_ORDER = "out of order"
BAD_LINK = "bad link"
FORGED = "entry not in the chain"


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify`` found: ``ok``, how many entries it checked, and the first broken one if any."""

    ok: bool
    checked: int
    broken_seq: int | None = None
    reason: str | None = None
    head_seq: int = 0
    head_hash: str = GENESIS

    def __str__(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.checked:,} entries"
        return f"audit chain broken at entry {self.broken_seq}: {self.reason}"


_COLUMNS = "seq, event_id, recorded, body, prev_hash, hash"


def _moved_from(q: Queryable, key: bytes, row: Sequence[Any]) -> int | None:
    """The seq an entry was hashed at, when it is intact but stands elsewhere (a reordered row)."""
    prev = row[4]
    if prev == GENESIS:
        origin = 1
    else:
        found = q.query("SELECT seq FROM audit_log WHERE hash = ?", (prev,))
        if not found:
            return None
        origin = int(found[0][0]) + 1
    if origin != int(row[0]) and hmac.compare_digest(entry_hash(key, origin, row[2], row[1], row[3], prev), row[5]):
        return origin
    return None


def verify(
    store: Queryable, key: bytes, *, batch: int = 5000, progress: Callable[[int], None] | None = None,
) -> VerifyResult:
    """Walk the chain in seq order, a batch at a time, and report the first entry that does not hold.

    The head and the highest seq are read in one statement (one snapshot), so entries appended
    while we walk are never mistaken for forgeries; only entries up to that head are walked.
    """
    snap = store.query(
        "SELECT (SELECT value FROM salus_meta WHERE key = ?), (SELECT MAX(seq) FROM audit_log), "
        "(SELECT MIN(seq) FROM audit_log)",
        (HEAD_KEY,),
    )[0]
    head_seq, head_hash = (0, GENESIS)
    if snap[0] is not None:
        s, _, h = str(snap[0]).partition(":")
        head_seq, head_hash = int(s), h
    max_seq = None if snap[1] is None else int(snap[1])
    min_seq = None if snap[2] is None else int(snap[2])

    def broken(seq: int, reason: str, checked: int) -> VerifyResult:
        return VerifyResult(False, checked, seq, reason, head_seq, head_hash)

    if min_seq is not None and min_seq < 1:
        return broken(min_seq, FORGED, 0)
    expected, prev, checked = 1, GENESIS, 0
    while expected <= head_seq:
        rows = store.query(
            f"SELECT {_COLUMNS} FROM audit_log WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?",
            (expected, head_seq, batch),
        )
        if not rows:
            return broken(expected, ENTRY_MISSING, checked)
        for row in rows:
            seq = int(row[0])
            if seq != expected:
                return broken(expected, ENTRY_MISSING, checked)
            digest = entry_hash(key, seq, row[2], row[1], row[3], row[4])
            if not hmac.compare_digest(digest, str(row[5])):
                origin = _moved_from(store, key, row)
                if origin is not None:
                    return broken(seq, f"{OUT_OF_ORDER} (entry {origin} stands at {seq})", checked)
                return broken(seq, CONTENT_CHANGED, checked)
            if row[4] != prev:
                return broken(seq, BAD_LINK, checked)
            prev = digest
            expected += 1
            checked += 1
        if progress is not None:
            progress(checked)
    if head_seq and prev != head_hash:
        return broken(head_seq, f"{BAD_LINK} (the recorded head does not match entry {head_seq})", checked)
    if max_seq is not None and max_seq > head_seq:
        return broken(head_seq + 1, f"{FORGED} (after the recorded head {head_seq})", checked)
    return VerifyResult(True, checked, head_seq=head_seq, head_hash=head_hash)


# ---- buffered writer for reads and searches ------------------------------------------------


class BufferedAuditWriter:
    """Batches the audit records of reads and searches: many per transaction, not one each.

    Trade-off: ``record`` only queues; the thread that queues the ``max_batch``-th record appends
    the batch, and a timer thread appends what waited ``interval`` seconds without one, and
    ``close`` the rest. A record still queued when the process is killed (SIGKILL, power loss)
    is lost. Writes never go through here: they append in their own transaction, so a change is
    never without its entry. If the database refuses a batch, it is kept and retried; beyond
    ``max_pending`` queued records the oldest are dropped and counted in ``dropped`` (memory must
    stay bounded under an outage).

    Why the request's thread flushes under load, not a thread of its own: measured in-process on
    SQLite, a background writer contending with the event loop for the GIL made an audited read
    cost ~100 us more, where appending the same batch inline cost ~15 us a record. The timer
    thread only runs when traffic is too light to fill a batch, when there is no one to contend with.
    """

    def __init__(
        self, store: Store, key: bytes, *, interval: float = 0.2, max_batch: int = 500, max_pending: int = 100_000,
    ) -> None:
        self.store = store
        self.key = key
        self.interval = interval
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.dropped = 0
        self._queue: deque[AuditRecord | Callable[[], AuditRecord]] = deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._last_flush = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="salus-audit-writer", daemon=True)
        self._thread.start()

    def record(self, record: AuditRecord | Callable[[], AuditRecord]) -> None:
        """Queue one record, or a function that makes it at flush time.

        A builder defers what the request need not wait for (finding the patients of a search's
        results); it must capture what it records (the record's time, the request context) when made.
        The call that fills a batch appends it, unless another flush is under way (it never waits).
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the audit writer is closed")
            self._queue.append(record)
            over = len(self._queue) - self.max_pending
            for _ in range(max(0, over)):
                self._queue.popleft()
                self.dropped += 1
            full = len(self._queue) >= self.max_batch
        if full and self._flush_lock.acquire(blocking=False):
            try:
                self._flush_locked()
            except Exception:
                log.exception("audit flush failed; %d records kept for the next attempt", self.pending)
            finally:
                self._flush_lock.release()

    @property
    def pending(self) -> int:
        """How many records (or builders) wait for the next flush."""
        return len(self._queue)

    def flush(self) -> int:
        """Append everything queued now, ``max_batch`` records per transaction; return how many."""
        with self._flush_lock:
            return self._flush_locked()

    def _flush_locked(self) -> int:
        done = 0
        while True:
            with self._lock:
                n = min(len(self._queue), self.max_batch)
                batch = [self._queue.popleft() for _ in range(n)]
            if not batch:
                self._last_flush = time.monotonic()
                return done
            # records queued as builders are made here
            built = [e if isinstance(e, AuditRecord) else e() for e in batch]
            try:
                with self.store.transaction() as tx:
                    append_many(tx, built, self.key)
            except BaseException:
                with self._lock:
                    self._queue.extendleft(reversed(built))
                raise
            done += len(built)

    def _run(self) -> None:
        while not self._closed:
            # sleep until the oldest possible record has waited ``interval`` since the last flush
            self._wake.wait(max(0.0, self._last_flush + self.interval - time.monotonic()))
            self._wake.clear()
            if self._closed or time.monotonic() - self._last_flush < self.interval:
                continue  # a request's thread flushed meanwhile: traffic is filling batches
            try:
                self.flush()
            except Exception:
                log.exception("audit flush failed; %d records kept for the next attempt", self.pending)
                self._last_flush = time.monotonic()

    def close(self) -> None:
        """Stop the timer thread and append every queued record before returning."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        self._thread.join()
        self.flush()

    def __enter__(self) -> BufferedAuditWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
