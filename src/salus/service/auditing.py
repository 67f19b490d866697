"""The service's side of the audit trail: which interaction produced which AuditEvent.

Writes are recorded in their own transaction, after every change of it
(``writes``); reads, searches and history go through a buffered writer that
appends them in batches, so a read does not pay for a transaction of its own
(``salus.security.audit.BufferedAuditWriter`` documents what that trades away).
The actor is the request's context (``salus.security.principal.current``).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlencode

from salus.config import Settings
from salus.events import ResourceChanged
from salus.fhir.refs import targets_in_json
from salus.search.engine import SearchResult
from salus.security import audit
from salus.security.principal import current
from salus.store import Store, StoredVersion, Transaction

_INTERACTION = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def patient_of(res_type: str, res_id: str, body: str | None) -> str | None:
    """The patient a version is about: itself, or the first Patient it refers to (BALP's patient entity)."""
    if res_type == "Patient":
        return res_id
    if body is None:
        return None
    return next((i for t, i in sorted(targets_in_json(body)) if t == "Patient"), None)


class Auditor:
    """Builds and records the AuditEvents of one service."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.key = audit.load_or_create_key(settings.data_dir)
        self.buffer = audit.BufferedAuditWriter(store, self.key)

    def close(self) -> None:
        """Append what is still queued."""
        self.buffer.close()

    def writes(self, tx: Transaction, changes: Sequence[ResourceChanged]) -> None:
        """One AuditEvent per version written, appended in the writing transaction."""
        ctx = current()
        records = [
            audit.audit_record(
                ctx, None, _INTERACTION.get(c.method, "update"), resource_type=c.res_type, resource_id=c.res_id,
                version=c.version, patient=patient_of(c.res_type, c.res_id, c.body),
            )
            for c in changes
        ]
        if records:
            audit.append_many(tx, records, self.key)

    def read(self, interaction: str, v: StoredVersion) -> None:
        """A read or vread of one version (its patient, read off the body, is found at flush time)."""
        record = audit.audit_record(current(), None, interaction, resource_type=v.res_type, resource_id=v.res_id,
                                    version=v.version)
        if record.patient is not None or v.body is None:
            self.buffer.record(record)
        else:
            self.buffer.record(lambda: record._replace(patient=patient_of(v.res_type, v.res_id, v.body)))

    def search(
        self, res_type: str | None, query: list[tuple[str, str]], compartment: tuple[str, str] | None,
        result: SearchResult,
    ) -> None:
        """A search: its query, and the patients whose data it returned (BALP: one event per patient)."""
        ctx, at, entries = current(), audit.now_micros(), list(result.entries)

        def build() -> audit.AuditRecord:
            patients = sorted({p for t, i, body in entries if (p := patient_of(t, i, body))})
            if compartment and compartment[0] == "Patient":
                patients = sorted({*patients, compartment[1]})
            path = "/".join(x for x in (*(compartment or ()), res_type) if x)
            text = f"{path}?{urlencode(query)}"
            interaction = "search-type" if res_type else "search-system"
            first = audit.audit_record(ctx, None, interaction, resource_type=res_type,
                                       patient=patients[0] if patients else None, query=text, at=at)
            return audit.per_patient(first, patients)

        self.buffer.record(build)

    def history(self, res_type: str | None, res_id: str | None) -> None:
        """A history interaction at instance, type or system level."""
        interaction = "history-instance" if res_id else "history-type" if res_type else "history-system"
        self.buffer.record(audit.audit_record(
            current(), None, interaction, resource_type=res_type, resource_id=res_id,
            patient=res_id if res_type == "Patient" else None,
        ))

    def login(self, username: str, succeeded: bool) -> None:
        """A login at the authorization server, successful or not (BALP: user authentication)."""
        self.buffer.record(audit.audit_record(
            current(), None, "login", outcome=0 if succeeded else 4, username=username,
            description=None if succeeded else "Unknown username or wrong password",
        ))

    def break_glass_declared(self, reason: str) -> None:
        """A request made under break-the-glass, with the reason its caller gave."""
        self.buffer.record(audit.audit_record(
            current(), None, "operation", description=f"break-the-glass declared: {reason}",
        ))

    def break_glass(self, res_type: str, res_id: str, patient: str) -> None:
        """A read that a patient's consent denied, allowed by break-the-glass: always on the record."""
        self.buffer.record(audit.audit_record(
            current(), None, "read", resource_type=res_type, resource_id=res_id, patient=patient,
            description="break-the-glass: read against the patient's consent",
        ))

    def denied(self, interaction: str, res_type: str | None, res_id: str | None, reason: str) -> None:
        """An access the policy refused (outcome 4, minor failure, with the reason)."""
        self.buffer.record(audit.audit_record(
            current(), None, interaction, outcome=4, resource_type=res_type, resource_id=res_id,
            description=reason,
        ))
