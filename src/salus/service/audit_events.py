"""AuditEvent as a resource type: served from the audit trail, never from the resource tables.

The trail (``salus.security.audit``) is the record of what happened, hash-chained
so that tampering shows. A second home for AuditEvents in the resource tables
would be a record beside the record, searchable but unprotected, and the
server's own events would be missing from it. So every interaction on the type
goes to the trail: read, vread and instance history find the event by id, search
is ``salus.security.audit_query``, and a create (an AuditEvent another system
sends, as to IHE BALP's audit record repository) appends it to the chain.
Updates and deletes are refused with 405: a record of what happened is never
rewritten. Its references are not checked against this server (referential
integrity): an event records what happened, also to data held elsewhere. Type and system history, ``$everything`` and ``_include`` do not reach
the trail.

Access is the policy's, as for any type: the admin and the auditor read and
search it; a grant confined to a patient sees the events of that patient's
compartment only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from salus.fhir.outcome import FhirError
from salus.search.engine import SearchResult
from salus.search.types.date import bounds
from salus.security import audit, audit_query
from salus.service.guard import access
from salus.store import StoredVersion, Transaction

if TYPE_CHECKING:
    from salus.service import FhirService

TYPE = audit_query.TYPE


def refuse_change(res_type: str) -> None:
    """405 for an update, patch or delete of an AuditEvent: a record of what happened is never rewritten."""
    if res_type == TYPE:
        raise FhirError.of(405, "not-supported", "AuditEvents cannot be updated or deleted")


def _version(event_id: str, recorded: str, event: dict[str, Any], seq: int) -> StoredVersion:
    stamp = recorded[:-1] if recorded.endswith("Z") else recorded  # the store's form, as lastUpdated is kept
    return StoredVersion(TYPE, event_id, 1, stamp, "POST", orjson.dumps(event).decode(), seq)


def read(service: FhirService, event_id: str) -> StoredVersion:
    """The AuditEvent with this id; 404 when the trail has none."""
    found = audit_query.read(service.store, event_id)
    if found is None:
        raise FhirError.of(404, "not-found", f"Resource {TYPE}/{event_id} is not known")
    seq, recorded, event = found
    v = _version(event_id, recorded, event, seq)
    service.guard.check_body("r", TYPE, event_id, v.body)
    return v


def search(
    service: FhirService, query: list[tuple[str, str]], *, count: int, cursor: str | None, strict: bool,
) -> SearchResult:
    """A search of the trail, with what the caller may not see left out (a grant confined to a patient)."""
    acc = service.guard.require("s", TYPE)
    result = audit_query.search(service.store, query, count=count, cursor=cursor, strict=strict)
    if acc is not None:
        service._visible_only(acc, result)
    return result


def append(service: FhirService, tx: Transaction, event_id: str, resource: dict[str, Any] | None,
           *, authorized: bool) -> StoredVersion:
    """Append an AuditEvent another system sent to the chain (a create); 405 for an update or a delete."""
    if resource is None or audit_query.read(tx, event_id) is not None:
        refuse_change(TYPE)
    assert resource is not None
    if not authorized and access() is not None:
        service.guard.check_write(TYPE, event_id, resource, None, False)
    return _append(service, tx, event_id, resource)


def load(service: FhirService, tx: Transaction, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append the AuditEvents of an import batch to the chain (those it holds already are skipped); the rest."""
    rest = []
    for r in resources:
        if r["resourceType"] != TYPE:
            rest.append(r)
        elif audit_query.read(tx, str(r["id"])) is None:
            _append(service, tx, str(r["id"]), r)
    return rest


def _append(service: FhirService, tx: Transaction, event_id: str, resource: dict[str, Any]) -> StoredVersion:
    from salus.service import db_instant

    recorded = resource.get("recorded")
    span = bounds(recorded) if isinstance(recorded, str) else None
    if span is None:
        raise FhirError.of(400, "invalid", "AuditEvent.recorded must be an instant")
    # the version's meta says when the trail received it; `recorded` keeps when it happened
    stamp = db_instant(service.now())
    # no referential integrity: an event records what happened elsewhere too, to data this server may not hold;
    # and no index rows (rows={}: none extracted), since the trail is searched by audit_query, not the index
    body, _, _ = service._render(TYPE, event_id, 1, stamp, resource, rows={})
    audit.append(tx, audit.Submitted(event_id, audit.parse_instant(span[0] + "Z"), body), service.audit_key())
    service._changed(TYPE, event_id, 1, "POST", body)
    return StoredVersion(TYPE, event_id, 1, stamp, "POST", body)
