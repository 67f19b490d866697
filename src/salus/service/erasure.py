"""GDPR erasure (Art. 17): remove a patient and everything in their compartment, history included.

A FHIR delete keeps every version (it writes a tombstone), which is what an
audit-minded server wants and what the right to erasure forbids. ``$erase``
therefore removes rows outright: every ``resource_versions`` row, the
``resources`` row and every ``idx_*``/``refs`` row of the Patient and of each
resource in its compartment, in one transaction with the AuditEvent that says
it happened, so either all of it is gone and recorded, or nothing changed.

What belongs to the patient is decided from the stored versions themselves,
with the same rule as compartment search and the access policy
(``salus.security.policy.in_patient_compartment``: the R4 CompartmentDefinition's
parameters), applied to *every* version, not only the current one:

- a resource whose latest content is in the compartment is erased entirely,
  deleted ones included (a tombstone has no index rows, so only its history
  says whose it was);
- a resource that was once in the compartment but now belongs elsewhere (an
  Observation moved to the right patient) keeps its current data, and only
  the versions that were about this patient are purged from its history;
- other Patient resources are never erased, even when they ``link`` to this
  one: they are other records (perhaps of the same person, which is for a
  human to decide).

Resources outside the compartment that refer to erased ones (a Group, a
Practitioner's Appointment list, ...) keep their references, now dangling:
rewriting or deleting them would change data that is not the patient's. The
report lists them so an administrator can follow up; note that with
referential integrity on, their next update is refused (422) until the
dangling reference is removed.

The audit trail (``audit_log``) is not touched: it is hash-chained, names
patients only by id, and is kept under Art. 17(3)(b) and (e).

Cost: finding past versions scans ``resource_versions`` with a text filter
(``LIKE '%Patient/<id>%'``) before the exact check; erasure is rare, and a
complete answer matters more than a fast one. On SQLite it holds the write
lock meanwhile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from salus.events import ResourceChanged
from salus.fhir.outcome import FhirError
from salus.security import audit
from salus.security.policy import in_patient_compartment
from salus.security.principal import current
from salus.store.base import opened
from salus.store.schema import INDEX_TABLES

if TYPE_CHECKING:
    from salus.service import FhirService
    from salus.store import Transaction

# rows per IN (...) list: well under SQLite's oldest limit of 999 bound parameters
CHUNK = 500


@dataclass
class ErasureReport:
    """What an erasure removed: resources and versions per type, and what it left pointing at them."""

    patient_id: str
    resources: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    # versions purged from the history of resources that now belong elsewhere, per type
    purged: dict[str, int] = field(default_factory=dict)
    # resources outside the compartment whose references to erased resources are now dangling
    referrers: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """How many resources were erased."""
        return sum(self.resources.values())

    def to_parameters(self) -> dict[str, Any]:
        """The Parameters resource ``$erase`` answers with: counts only, never content."""
        params: list[dict[str, Any]] = [
            {"name": "patient", "valueString": f"Patient/{self.patient_id}"},
            {"name": "erased", "valueInteger": self.total},
            {"name": "versions", "valueInteger": sum(self.versions.values())},
        ]
        for t in sorted(set(self.resources) | set(self.purged)):
            parts = [{"name": "type", "valueCode": t}, {"name": "erased", "valueInteger": self.resources.get(t, 0)},
                     {"name": "versions", "valueInteger": self.versions.get(t, 0)}]
            if self.purged.get(t):
                parts.append({"name": "purgedVersions", "valueInteger": self.purged[t]})
            params.append({"name": "type", "part": parts})
        params += [{"name": "danglingReferrer", "valueString": r} for r in self.referrers]
        return {"resourceType": "Parameters", "parameter": params}

    def description(self) -> str:
        """The AuditEvent's ``outcomeDesc``: the counts per type (nothing about the content)."""
        per_type = ", ".join(f"{t} {n}" for t, n in sorted(self.resources.items()))
        return (f"$erase of Patient/{self.patient_id}: {self.total} resources ({per_type}), "
                f"{sum(self.versions.values())} versions, {sum(self.purged.values())} past versions purged")


def erase_patient(service: FhirService, patient_id: str) -> ErasureReport:
    """Erase Patient/``patient_id`` and its compartment in one transaction; 404 if the patient never existed."""
    service.check_id(patient_id)
    service.guard.operation("$erase")
    with service.store.transaction() as tx:
        # locks the Patient row (PostgreSQL), so two erasures or a concurrent update of it queue
        if tx.current("Patient", patient_id) is None:
            raise FhirError.of(404, "not-found", f"Resource Patient/{patient_id} is not known")
        whole, purged_seqs = _members(tx, patient_id)
        report = ErasureReport(patient_id)
        for _rid, (t, _i, n) in whole.items():
            report.resources[t] = report.resources.get(t, 0) + 1
            report.versions[t] = report.versions.get(t, 0) + n
        report.purged = dict(Counter(t for _seq, t in purged_seqs))
        report.referrers = _referrers(tx, whole)
        _delete_rows(tx, list(whole), [seq for seq, _t in purged_seqs])
        _record(service, tx, report)
    # after the commit, so caches keyed on resources (the consent index, search parameters) drop what is gone;
    # method ERASE and version 0: no version remains, and no tombstone was written
    service.events.publish([ResourceChanged(t, i, 0, "ERASE", None) for t, i, _n in whole.values()])
    return report


def _members(tx: Transaction, patient_id: str) -> tuple[dict[int, tuple[str, str, int]], list[tuple[int, str]]]:
    """The resources to erase whole (rid -> type, id, version count) and the past versions to purge (seq, type)."""
    whole: dict[int, tuple[str, str, int]] = {}
    own = tx.query("SELECT rid, res_id FROM resources WHERE res_type = 'Patient' AND res_id = ?", (patient_id,))
    in_compartment: dict[int, set[int]] = {}
    for seq, rid, body in _candidates(tx, patient_id):
        if in_patient_compartment(orjson.loads(body), patient_id):
            in_compartment.setdefault(int(rid), set()).add(int(seq))
    purged: list[tuple[int, str]] = []
    rids = sorted(in_compartment)
    for chunk in _chunks(rids):
        marks = ", ".join("?" * len(chunk))
        # the latest version with content says whose the resource is now (a tombstone has none)
        latest = tx.query(
            f"SELECT v.rid, v.seq, v.res_type, v.res_id, (SELECT COUNT(*) FROM resource_versions a WHERE a.rid = v.rid) "
            f"FROM resource_versions v WHERE v.rid IN ({marks}) AND v.body IS NOT NULL AND v.version = "
            f"(SELECT MAX(b.version) FROM resource_versions b WHERE b.rid = v.rid AND b.body IS NOT NULL)",
            chunk,
        )
        for rid, seq, t, i, n in latest:
            seqs = in_compartment[int(rid)]
            if int(seq) in seqs:
                whole[int(rid)] = (t, i, int(n))
            else:
                purged += [(s, t) for s in sorted(seqs)]
    for rid, i in own:
        n = tx.query("SELECT COUNT(*) FROM resource_versions WHERE rid = ?", (rid,))[0][0]
        whole[int(rid)] = ("Patient", i, int(n))
    return whole, purged


def _candidates(tx: Transaction, patient_id: str) -> Iterator[tuple[int, int, str]]:
    """``(seq, rid, body)`` of every version whose text names the patient (a filter before the exact rule).

    Every version is read, past ones too: the index knows only current versions. Plain bodies
    are filtered by the database (every local form of the reference contains ``Patient/id``);
    sealed ones (encryption at rest) are opened here in batches, a scan of the whole store.
    """
    needle = f"Patient/{patient_id}"
    if tx.crypto is None:
        yield from tx.query(
            "SELECT seq, rid, body FROM resource_versions WHERE res_type <> 'Patient' AND body LIKE ?",
            (f"%{needle}%",),
        )
        return
    last = 0
    while rows := tx.query(
        "SELECT seq, rid, res_type, res_id, version, body FROM resource_versions "
        "WHERE seq > ? AND res_type <> 'Patient' AND body IS NOT NULL ORDER BY seq LIMIT 2000",
        (last,),
    ):
        for seq, rid, t, i, v, body in rows:
            text = opened(tx, t, i, v, body) or ""
            if needle in text:
                yield seq, rid, text
        last = rows[-1][0]


def _referrers(tx: Transaction, whole: dict[int, tuple[str, str, int]]) -> list[str]:
    """Current resources left outside the erasure that refer to something it removes (their refs stay)."""
    by_type: dict[str, list[str]] = {}
    for t, i, _n in whole.values():
        by_type.setdefault(t, []).append(i)
    found: set[str] = set()
    for t, ids in sorted(by_type.items()):
        for chunk in _chunks(sorted(ids)):
            marks = ", ".join("?" * len(chunk))
            rows = tx.query(
                "SELECT DISTINCT f.rid, r.res_type, r.res_id FROM refs f JOIN resources r ON r.rid = f.rid "
                f"WHERE f.target_type = ? AND f.target_id IN ({marks}) AND NOT r.deleted",
                [t, *chunk],
            )
            found.update(f"{a}/{b}" for rid, a, b in rows if int(rid) not in whole)
    return sorted(found)


def _delete_rows(tx: Transaction, rids: list[int], seqs: list[int]) -> None:
    """Remove every row of the erased resources, then the purged past versions of the others."""
    for chunk in _chunks(sorted(rids)):
        marks = ", ".join("?" * len(chunk))
        for table in (*INDEX_TABLES, "resource_versions", "resources"):
            tx.query(f"DELETE FROM {table} WHERE rid IN ({marks})", chunk)
    for chunk in _chunks(sorted(seqs)):
        marks = ", ".join("?" * len(chunk))
        tx.query(f"DELETE FROM resource_versions WHERE seq IN ({marks})", chunk)


def _record(service: FhirService, tx: Transaction, report: ErasureReport) -> None:
    """The AuditEvent of the erasure, in its transaction: who, when, which patient id and the counts; no content.

    The patient is named by an identifier, not a reference: the reference would
    point at nothing, and the event must not look like data about a live record.
    """
    if service.audit is None:
        return  # the audit trail is off: the erasure still happens
    record = audit.audit_record(current(), "D", "delete", resource_type="Patient", description=report.description(),
                                erased=f"Patient/{report.patient_id}")
    audit.append(tx, record, service.audit.key)


def _chunks(items: Sequence[Any]) -> list[list[Any]]:
    return [list(items[k:k + CHUNK]) for k in range(0, len(items), CHUNK)]
