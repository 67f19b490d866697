"""The tamper-evident audit trail: BALP AuditEvents in an HMAC hash chain.

Every read, search, write, delete, export, login, failed login and denied access
becomes one FHIR R4 AuditEvent shaped after the IHE Basic Audit Log Patterns
(BALP, https://profiles.ihe.net/ITI/BALP/): who (agents), what patient, what
resource, what query, the outcome, and this server as the observer.

Events are kept in ``audit_log`` (deflated against a preset dictionary, ``audit_codec``), each row carrying
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
import hmac
import ipaddress
import logging
import os
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
INTERACTIONS: frozenset[str] = frozenset(_REST_ACTIONS) | frozenset(_DICOM_EVENTS)
OUTCOMES = (0, 4, 8, 12)  # success, minor failure (4xx, denied), serious failure (5xx), major failure

GENESIS = "0" * 64  # prev_hash of the first entry
HEAD_KEY = "audit_head"
_LOCK_KEY = "salus.audit_log.chain"


def now_instant() -> str:
    """The current time as a FHIR ``instant`` with microseconds (UTC), the form ``recorded`` takes."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


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


# the agents of recent callers: a caller's requests all name the same agents, and building them
# (codings, the address parsed) was a third of an event's cost; events share them, read-only
_AGENTS: dict[tuple[Principal, str | None, str | None, str | None], list[dict[str, Any]]] = {}
_AGENTS_MAX = 1024


def _agents(ctx: RequestContext, username: str | None) -> list[dict[str, Any]]:
    """The agents of an event by this caller (shared by its events: never modify them)."""
    key = (ctx.principal, ctx.source, ctx.purpose, username)
    agents = _AGENTS.get(key)
    if agents is None:
        if len(_AGENTS) >= _AGENTS_MAX:
            _AGENTS.clear()
        agents = _AGENTS[key] = _build_agents(ctx, username)
    return agents


def _build_agents(ctx: RequestContext, username: str | None) -> list[dict[str, Any]]:
    """BALP agents: the user (requestor), the client application, and this server (the destination).

    A system principal (backend service) is itself the requestor; a failed login names the
    attempted ``username`` since no principal exists yet.
    """
    p: Principal = ctx.principal
    agents: list[dict[str, Any]] = []
    network = _network(ctx.source) if ctx.source else None
    purpose = [{"coding": [_coding(ACT_REASON, ctx.purpose)]}] if ctx.purpose else []
    if p.break_glass and not any(c["coding"][0]["code"] == "BTG" for c in purpose):
        purpose.append({"coding": [_coding(ACT_REASON, "BTG", "break the glass")]})
    if p.kind == "system":
        client: dict[str, Any] = {
            "type": {"coding": [_coding(DICOM, "110153", "Source Role ID")]},
            "who": {"identifier": {"system": CLIENT_SYSTEM, "value": p.client_id or p.subject},
                    "display": p.client_id or p.subject},
            "requestor": True,
        }
        if p.role:
            client["role"] = [{"coding": [_coding(ROLE_SYSTEM, p.role)]}]
        if network:
            client["network"] = network
        if p.token_id:
            client["policy"] = [p.token_id]
        if purpose:
            client["purposeOfUse"] = purpose
        agents.append(client)
    else:
        name = username if (username and p.kind == "anonymous") else p.subject
        user: dict[str, Any] = {
            "type": {"coding": [_coding(PARTICIPATION, "IRCP", "information recipient")]},
            "who": {"identifier": {"system": USER_SYSTEM, "value": name}, "display": name},
            "requestor": True,
        }
        if p.fhir_user:
            user["who"]["reference"] = p.fhir_user
        if p.role:
            user["role"] = [{"coding": [_coding(ROLE_SYSTEM, p.role)]}]
        if p.token_id:
            # BALP puts the OAuth token identifier (jti) in agent.policy
            user["policy"] = [p.token_id]
        if purpose:
            user["purposeOfUse"] = purpose
        if network and not p.client_id:
            user["network"] = network
        agents.append(user)
        if p.client_id:
            client = {
                "type": {"coding": [_coding(DICOM, "110153", "Source Role ID")]},
                "who": {"identifier": {"system": CLIENT_SYSTEM, "value": p.client_id}, "display": p.client_id},
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


def audit_event(
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
    recorded: str | None = None,
) -> dict[str, Any]:
    """One BALP AuditEvent (R4 JSON) for an interaction, so every door records the same facts alike.

    Its codings and agents are shared with other events: add to ``entity``, never change a part.

    ``interaction`` is a restful-interaction code (read, vread, search-type, create, update, patch,
    delete, history-*, transaction, batch, operation, capabilities) or ``login``, ``logout``,
    ``export``; ``action`` None takes BALP's action for it. A denied access is the interaction that
    was refused with ``outcome=4`` and the reason in ``description``. ``patient`` is the Patient id
    or reference whose data was touched (BALP: one event per patient); ``query`` is the search as
    received (``Observation?patient=1&code=x``), recorded base64 in ``entity.query`` per R4.
    ``username`` names the attempted account of a failed login.
    """
    if interaction in _DICOM_EVENTS:
        type_, subtype, default_action = _DICOM_EVENTS[interaction]
    elif interaction in _REST_ACTIONS:
        type_, subtype, default_action = _REST_TYPE, _SUBTYPES[interaction], _REST_ACTIONS[interaction]
    else:
        raise ValueError(f"unknown audit interaction {interaction!r}")
    action = action or default_action
    if action not in ("C", "R", "U", "D", "E"):
        raise ValueError(f"audit action must be one of C R U D E, not {action!r}")
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome must be one of {OUTCOMES}, not {outcome!r}")
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": type_,
        "subtype": [subtype],
        "action": action,
        "recorded": recorded or now_instant(),
        "outcome": str(outcome),
    }
    if description:
        event["outcomeDesc"] = description
    event["agent"] = _agents(ctx, username)
    event["source"] = _SOURCE
    entities: list[dict[str, Any]] = [{
        # BALP ties the entries of one request together by its X-Request-Id
        "what": {"identifier": {"value": ctx.request_id}},
        "type": _REQUEST_ID_TYPE,
    }]
    if resource_type and resource_id:
        ref = f"{resource_type}/{resource_id}" + (f"/_history/{version}" if version is not None else "")
        entities.append({"what": {"reference": ref}, "type": _SYSTEM_OBJECT, "role": _DOMAIN_RESOURCE})
    elif resource_type and interaction != "export":
        # a type-level interaction (search-type, history-type, create without id yet): the type alone
        entities.append({"what": {"display": resource_type}, "type": _SYSTEM_OBJECT, "role": _DOMAIN_RESOURCE})
    if patient is None and resource_type == "Patient" and resource_id:
        patient = resource_id  # BALP: touching a Patient resource is touching that patient's data
    if patient:
        entities.append({"what": {"reference": _patient_ref(patient)}, "type": _PERSON, "role": _PATIENT_ROLE})
    if query is not None:
        entities.append({
            "type": _SYSTEM_OBJECT,
            "role": _QUERY_ROLE,
            "query": base64.b64encode(query.encode("utf-8")).decode("ascii"),
        })
    event["entity"] = entities
    return event


def per_patient(event: dict[str, Any], patients: list[str]) -> list[dict[str, Any]]:
    """One event per patient, as BALP asks of a query: ``event`` (built for ``patients[0]``) and copies of it.

    The copies differ only in ``id`` and the patient entity; building each from scratch cost
    twice as much, and a search that returns fifty patients records fifty events.
    """
    out = [event]
    slot = next((k for k, e in enumerate(event["entity"]) if e.get("role") is _PATIENT_ROLE), None)
    for patient in patients[1:]:
        copy = dict(event, id=str(uuid.uuid4()))
        entities = list(event["entity"])
        entity = {"what": {"reference": _patient_ref(patient)}, "type": _PERSON, "role": _PATIENT_ROLE}
        if slot is None:
            entities.append(entity)
        else:
            entities[slot] = entity
        copy["entity"] = entities
        out.append(copy)
    return out


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


def entry_hash(key: bytes, seq: int, recorded: str, event_id: str, body: str, prev_hash: str) -> str:
    """HMAC-SHA256 over the canonical JSON array of an entry: unambiguous, whatever the strings hold."""
    msg = orjson.dumps([seq, recorded, event_id, body, prev_hash])
    return hmac.digest(key, msg, "sha256").hex()  # the one-shot C path: a third of hmac.new's cost


def _read_head(q: Queryable) -> tuple[int, str]:
    rows = q.query("SELECT value FROM salus_meta WHERE key = ?", (HEAD_KEY,))
    if not rows:
        return 0, GENESIS
    seq, _, digest = str(rows[0][0]).partition(":")
    return int(seq), digest


_INSERT_CHUNK = 100  # rows per multi-row INSERT: 600 parameters, under SQLite's oldest limit of 999


def append_many(tx: Transaction, events: Iterable[dict[str, Any]], key: bytes) -> list[str]:
    """Append events to the chain inside the caller's open write transaction; return their ids.

    An event without ``id`` or ``recorded`` gets them (the dict is updated, so the caller sees them).

    Takes the chain lock (PostgreSQL: a transaction-scoped advisory lock; SQLite already has one
    writer) and holds it until commit, so seq order is commit order and the chain stays linear.
    Call it last in the transaction: every audited writer queues on this lock, and taking it
    before other row locks could deadlock with a writer that holds those rows.
    """
    batch = list(events)
    if not batch:
        return []
    tx.lock(_LOCK_KEY)
    seq, prev = _read_head(tx)
    rows: list[tuple[int, str, str, str, str, str]] = []
    for event in batch:
        event_id = str(event.get("id") or uuid.uuid4())
        event["id"] = event_id
        recorded = str(event.get("recorded") or now_instant())
        event["recorded"] = recorded
        body = audit_codec.pack(orjson.dumps(event))
        seq += 1
        if tx.crypto is not None:  # encryption at rest: queries and names in events are data too
            body = tx.crypto.seal("AuditEvent", event_id, seq, body)
        digest = entry_hash(key, seq, recorded, event_id, body, prev)
        rows.append((seq, event_id, recorded, body, prev, digest))
        prev = digest
    for start in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[start:start + _INSERT_CHUNK]
        marks = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk))
        tx.query(
            f"INSERT INTO audit_log (seq, event_id, recorded, body, prev_hash, hash) VALUES {marks}",
            [v for row in chunk for v in row],
        )
    tx.query(
        "INSERT INTO salus_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (HEAD_KEY, f"{seq}:{prev}"),
    )
    return [row[1] for row in rows]


def read_event(q: Queryable, seq: int) -> dict[str, Any] | None:
    """The AuditEvent at ``seq`` as recorded (opened, when encryption at rest sealed it)."""
    found = read_events(q, after=seq - 1, limit=1)
    return found[0][1] if found and found[0][0] == seq else None


def read_events(q: Queryable, after: int = 0, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """``(seq, event)`` in chain order after ``after`` (at most ``limit``), opened and unpacked."""
    sql = "SELECT seq, event_id, body FROM audit_log WHERE seq > ? ORDER BY seq"
    rows = q.query(sql + (" LIMIT ?" if limit is not None else ""), (after, limit) if limit is not None else (after,))
    out = []
    for seq, event_id, body in rows:
        if q.crypto is not None:
            body = q.crypto.open("AuditEvent", event_id, int(seq), body) or "{}"
        out.append((int(seq), orjson.loads(audit_codec.unpack(body))))
    return out


def append(tx: Transaction, event: dict[str, Any], key: bytes) -> str:
    """Append one event inside the caller's open write transaction (see ``append_many``); return its id."""
    return append_many(tx, [event], key)[0]


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
    """Batches the audit events of reads and searches: many events per transaction, not one each.

    Trade-off: ``record`` only queues the event; a background thread appends queued events every
    ``interval`` seconds or as soon as ``max_batch`` are waiting, and ``close`` flushes the rest.
    An event still queued when the process is killed (SIGKILL, power loss) is lost. Writes never
    go through here: they append in their own transaction, so a change is never without its entry.
    If the database refuses a batch, it is kept and retried; beyond ``max_pending`` queued events
    the oldest are dropped and counted in ``dropped`` (memory must stay bounded under an outage).
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
        self._queue: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="salus-audit-writer", daemon=True)
        self._thread.start()

    def record(self, event: dict[str, Any] | Callable[[], dict[str, Any] | list[dict[str, Any]]]) -> None:
        """Queue one event, or a function that builds it at flush time (never blocks on the database).

        A builder keeps the request's cost to a queue append: building a BALP event takes ~10 us.
        It must capture what it records (the request context, the time) when it is made.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the audit writer is closed")
            self._queue.append(event)
            over = len(self._queue) - self.max_pending
            for _ in range(max(0, over)):
                self._queue.popleft()
                self.dropped += 1
            full = len(self._queue) >= self.max_batch
        if full:
            self._wake.set()

    @property
    def pending(self) -> int:
        """How many events wait for the next flush."""
        return len(self._queue)

    def flush(self) -> int:
        """Append everything queued now, ``max_batch`` events per transaction; return how many."""
        done = 0
        with self._flush_lock:
            while True:
                with self._lock:
                    n = min(len(self._queue), self.max_batch)
                    batch = [self._queue.popleft() for _ in range(n)]
                if not batch:
                    return done
                # events queued as builders are built here, off the request's path (one may make several)
                built: list[dict[str, Any]] = []
                for e in batch:
                    made = e() if callable(e) else e
                    built.extend(made if isinstance(made, list) else [made])
                batch = built
                try:
                    with self.store.transaction() as tx:
                        append_many(tx, batch, self.key)
                except BaseException:
                    with self._lock:
                        self._queue.extendleft(reversed(batch))
                    raise
                done += len(batch)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:
                log.exception("audit flush failed; %d events kept for the next attempt", self.pending)
                time.sleep(self.interval)
            if self._closed:
                return

    def close(self) -> None:
        """Stop the background thread and append every queued event before returning."""
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
