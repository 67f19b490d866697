"""Reindexing: rewrite the index rows of current resources, then mark the parameters that were pending ready.

Each batch is one transaction that locks its resources, extracts their rows
with the search parameters in force at that moment and replaces their
``idx_*`` rows, so writers carry on between batches and a failure loses at
most one batch (run it again: reindexing is idempotent). A parameter is
marked ready only if it was pending when the reindex began, its definition
has not changed since, and every resource of its type was reindexed: a type
or system reindex, never an instance one.

Why that is enough: resources written after a SearchParameter changed are
indexed for it by their own transaction (it reads the parameters in force
first), and those written before are read by the batches. On PostgreSQL a
writer that began before the change may still be running when the batches
pass it by, so the reindex first waits for every transaction older than
itself. SQLite writers take turns and need no wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from salus.fhir.outcome import FhirError
from salus.search.indexing import index_rows
from salus.service import db_instant
from salus.store.base import opened

if TYPE_CHECKING:
    from salus.service import FhirService
    from salus.store.base import Queryable

log = logging.getLogger(__name__)

BATCH = 500
# how long to wait for older PostgreSQL transactions before giving up (an idle session holding one open)
WAIT_SECONDS = 120.0


@dataclass
class ReindexReport:
    """What a reindex did: resources per type, the parameters it made ready, and those still pending anywhere."""

    counts: dict[str, int] = field(default_factory=dict)
    ready: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """How many resources were reindexed."""
        return sum(self.counts.values())

    def to_parameters(self) -> dict[str, Any]:
        """The report as the Parameters resource ``$reindex`` answers with."""
        params: list[dict[str, Any]] = [{"name": "reindexed", "valueInteger": self.total}]
        params += [
            {"name": "type", "part": [{"name": "type", "valueCode": t}, {"name": "reindexed", "valueInteger": n}]}
            for t, n in sorted(self.counts.items())
        ]
        params += [{"name": "ready", "valueString": name} for name in self.ready]
        params += [{"name": "pending", "valueString": name} for name in self.pending]
        return {"resourceType": "Parameters", "parameter": params}


def reindex(
    service: FhirService, types: Sequence[str] | None = None, res_id: str | None = None, *, batch: int = BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> ReindexReport:
    """Reindex the current resources of ``types`` (None: every type), or only ``res_id`` (of the one type given).

    ``progress(done, total)`` is called after each batch.
    """
    registry = service.search_parameters
    wanted = tuple(sorted(set(types))) if types else None
    for t in wanted or ():
        service.check_type(t)
    where, args = "", []
    if res_id is not None:
        if wanted is None or len(wanted) != 1:
            raise ValueError("reindexing one resource needs its type")
        service.read(wanted[0], res_id)  # 404 or 410 as a read would say
        where, args = " AND r.res_type = ? AND r.res_id = ?", [wanted[0], res_id]
    elif wanted is not None:
        where, args = f" AND r.res_type IN ({', '.join('?' * len(wanted))})", list(wanted)
    # read before the wait: every change it lists committed before the transactions waited for began
    was_pending = [] if res_id is not None else registry.pending(service.store, wanted)
    _wait_for_older_transactions(service.store)
    total = int(service.store.query(f"SELECT COUNT(*) FROM resources r WHERE NOT r.deleted{where}", args)[0][0])
    # PostgreSQL: lock the batch's rows, so a concurrent update cannot interleave its index rows with ours
    lock = " FOR UPDATE OF r" if service.store.dialect == "postgresql" else ""
    sql = (
        "SELECT r.rid, r.res_type, r.res_id, r.version, v.body FROM resources r JOIN resource_versions v "
        f"ON v.rid = r.rid AND v.version = r.version WHERE r.rid > ? AND NOT r.deleted{where} "
        f"ORDER BY r.rid LIMIT ?{lock}"
    )
    report = ReindexReport()
    done, last = 0, 0
    started = time.perf_counter()
    while True:
        with service.transaction() as tx:
            rows = tx.query(sql, [last, *args, batch])
            # extracted inside the transaction, with the parameters it read as it began
            tx.replace_index([(int(rid), rt, index_rows(orjson.loads(opened(tx, rt, i, ver, body) or "{}")))
                              for rid, rt, i, ver, body in rows])
        if not rows:
            break
        last = int(rows[-1][0])
        for row in rows:
            report.counts[row[1]] = report.counts.get(row[1], 0) + 1
        done += len(rows)
        if progress is not None:
            progress(done, total)
        log.info("reindexed %d of %d resources", done, total)
    if was_pending:
        with service.transaction() as tx:
            report.ready = sorted(p.name for p in registry.mark_ready(tx, was_pending, db_instant(service.now())))
    registry.invalidate()
    # on any type, not only those reindexed: what still needs a reindex on this server
    report.pending = sorted(p.name for p in registry.pending(service.store))
    log.info("reindex of %d resources took %.1f s; ready: %s", done, time.perf_counter() - started, report.ready)
    return report


def _wait_for_older_transactions(db: Queryable, timeout: float = WAIT_SECONDS) -> None:
    """PostgreSQL: wait until every transaction of this database that began before now has ended.

    A writer reads the parameters in force as its transaction begins. One that began
    before a SearchParameter changed may commit rows extracted without it after the
    batches have passed its resource; waiting for it closes that gap. Sessions whose
    ``xact_start`` this role cannot see (other roles, without pg_read_all_stats) are
    not waited for.
    """
    if db.dialect != "postgresql":
        return
    start = db.query("SELECT clock_timestamp()")[0][0]
    deadline = time.monotonic() + timeout
    while db.query(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend' AND xact_start < ?",
        (start,),
    )[0][0]:
        if time.monotonic() > deadline:
            raise FhirError.of(
                503, "transient",
                f"Transactions begun before the reindex are still open after {timeout:.0f} s; try again later",
            )
        time.sleep(0.05)
