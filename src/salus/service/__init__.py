"""The one read/write path every door goes through.

validate -> (authorize, later) -> store.transaction(resource row + version +
index rows) -> after commit, publish ``ResourceChanged``. Doors (REST, bundles,
import, HL7 v2 ...) call these methods and format the answers; none of them
talks SQL, and none re-implements versioning, validation or integrity.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode

import jsonpatch
import orjson

from salus.config import Settings
from salus.events import EventBus, ResourceChanged
from salus.fhir.definitions import is_resource_type
from salus.fhir.outcome import FhirError, Issue
from salus.fhir.refs import is_valid_id, targets_in_json
from salus.fhir.validate import validate_or_raise
from salus.search.engine import SearchResult, match_ids, run_search
from salus.search.indexing import index_rows
from salus.search.parse import parse_query
from salus.search.registry import Overlay, SearchParameterRegistry, in_force, pending_issue
from salus.security import audit as audit_trail
from salus.security.policy import Access
from salus.service import audit_events
from salus.service.auditing import Auditor
from salus.service.consents import ConsentIndex
from salus.service.fhirpath_patch import apply_fhirpath_patch
from salus.service.guard import Guard, access, link_types
from salus.store import Store, StoredVersion, Transaction
from salus.store.base import IndexRows, NewResource

if TYPE_CHECKING:
    from salus.service.erasure import ErasureReport
    from salus.service.reindex import ReindexReport

T = TypeVar("T")


@dataclass(frozen=True)
class WriteResult:
    """What a write did: the HTTP-ish status, the stored version (None when nothing was written)."""

    status: int
    version: StoredVersion | None
    created: bool = False
    issues: list[Issue] = field(default_factory=list)


def db_instant(ts: datetime) -> str:
    """The fixed-width UTC text the store orders by (the index tables use the same form)."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def fhir_instant(db_value: str) -> str:
    """A stored instant as a FHIR ``instant``."""
    return db_value + "Z"


def parse_instant(value: str, what: str) -> str:
    """A client-supplied instant/dateTime (``_since``, ``_at``) in store form; 400 if unreadable."""
    v = value.strip().replace(" ", "+")
    try:
        if len(v) == 4:
            ts = datetime(int(v), 1, 1, tzinfo=UTC)
        elif len(v) == 7:
            ts = datetime(int(v[:4]), int(v[5:7]), 1, tzinfo=UTC)
        else:
            ts = datetime.fromisoformat(v.replace("Z", "+00:00"))
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=UTC)
    except ValueError as exc:
        raise FhirError.of(400, "invalid", f"{what} is not a valid instant: {value!r}") from exc
    return db_instant(ts)


def canonical_query(query: str) -> list[tuple[str, str]]:
    """A conditional operation's query string as ordered pairs."""
    # clients send both "identifier=x" (the spec's form) and "Patient?identifier=x"
    return parse_qsl(query.split("?", 1)[-1], keep_blank_values=True)


class FhirService:
    """FHIR interactions over a ``Store``: the only place where writes happen."""

    def __init__(self, store: Store, settings: Settings | None = None, events: EventBus | None = None) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.events = events or EventBus()
        self._clock_lock = threading.Lock()
        self._last_ts = datetime.min.replace(tzinfo=UTC)
        self._pending = threading.local()
        self.search_parameters = SearchParameterRegistry(store)
        self.events.subscribe(self._search_parameter_changed)
        self.audit = Auditor(store, self.settings) if self.settings.audit_enabled else None
        self.guard = Guard(self.audit, ConsentIndex(store, self.events))

    def close(self) -> None:
        """Flush what is still buffered (read audit events); the store stays open for its owner."""
        if self.audit is not None:
            self.audit.close()

    def audit_key(self) -> bytes:
        """The audit trail's key (AuditEvents other systems send are chained even with auditing off)."""
        return self.audit.key if self.audit is not None else audit_trail.load_or_create_key(self.settings.data_dir)

    # ---- plumbing ------------------------------------------------------------------

    def now(self) -> datetime:
        """A strictly increasing timestamp, so versions of one resource never share a lastUpdated."""
        with self._clock_lock:
            ts = datetime.now(UTC)
            if ts <= self._last_ts:
                ts = self._last_ts + timedelta(microseconds=1)
            self._last_ts = ts
            return ts

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A write transaction whose changes are published once it commits."""
        outer = getattr(self._pending, "events", None)
        if outer is not None:
            raise RuntimeError("nested service transactions are not supported")
        self._pending.events = []
        try:
            # the parameters in force are read inside the transaction: rows are never extracted for stale ones
            with self.store.transaction() as tx, self.search_parameters.active(self.search_parameters.sync(tx)):
                yield tx
                if self.audit is not None:
                    # last, in the same transaction: the chain's lock is then held only until the commit
                    self.audit.writes(tx, self._pending.events)
            events = self._pending.events
        finally:
            self._pending.events = None
        self.events.publish(events)

    def _run(self, tx: Transaction | None, fn: Callable[[Transaction], T]) -> T:
        if tx is not None:
            return fn(tx)
        with self.transaction() as own:
            return fn(own)

    @staticmethod
    def check_type(res_type: str) -> None:
        """404 with an OperationOutcome for an unknown resource type."""
        if not is_resource_type(res_type):
            raise FhirError.of(404, "not-supported", f"Resource type {res_type!r} is not supported")

    @staticmethod
    def check_id(res_id: str) -> None:
        """400 for a logical id outside ``[A-Za-z0-9-.]{1,64}``."""
        if not is_valid_id(res_id):
            raise FhirError.of(400, "invalid", f"Invalid resource id {res_id[:80]!r}")

    # ---- reads -----------------------------------------------------------------------

    def read(self, res_type: str, res_id: str) -> StoredVersion:
        """The current version; 404 if it never existed, 410 if deleted."""
        self.check_type(res_type)
        self.check_id(res_id)
        if res_type == audit_events.TYPE:
            v = audit_events.read(self, res_id)
            if self.audit is not None:
                self.audit.read("read", v)
            return v
        v = self.store.read(res_type, res_id)
        if v is None:
            raise FhirError.of(404, "not-found", f"Resource {res_type}/{res_id} is not known")
        if v.deleted:
            raise FhirError.of(410, "deleted", f"Resource {res_type}/{res_id} was deleted (version {v.version})")
        self.guard.check_body("r", res_type, res_id, v.body)
        if self.audit is not None:
            self.audit.read("read", v)
        return v

    def vread(self, res_type: str, res_id: str, version: str) -> StoredVersion:
        """One version; 404 if unknown, 410 if that version is a deletion."""
        self.check_type(res_type)
        self.check_id(res_id)
        if not (version.isascii() and version.isdigit()) or len(version) > 18:  # past 64 bits no version can exist
            raise FhirError.of(404, "not-found", f"Version {version[:40]!r} of {res_type}/{res_id} is not known")
        if res_type == audit_events.TYPE:
            v = audit_events.read(self, res_id)  # an AuditEvent has one version
            if int(version) != 1:
                raise FhirError.of(404, "not-found", f"Version {version} of {res_type}/{res_id} is not known")
            if self.audit is not None:
                self.audit.read("vread", v)
            return v
        v = self.store.vread(res_type, res_id, int(version))
        if v is None:
            raise FhirError.of(404, "not-found", f"Version {version} of {res_type}/{res_id} is not known")
        if v.deleted:
            raise FhirError.of(410, "deleted", f"Version {version} of {res_type}/{res_id} is a deletion")
        self.guard.check_body("r", res_type, res_id, v.body)
        if self.audit is not None:
            self.audit.read("vread", v)
        return v

    def history(
        self, res_type: str | None, res_id: str | None, *, since: str | None = None, at: str | None = None,
        count: int | None = None, before_seq: int | None = None,
    ) -> tuple[list[StoredVersion], int]:
        """Versions newest first, and how many in total match (for ``Bundle.total``)."""
        if res_type is not None:
            self.check_type(res_type)
        if res_id is not None:
            assert res_type is not None
            self.check_id(res_id)
            if res_type == audit_events.TYPE:
                event = audit_events.read(self, res_id)
                if self.audit is not None:
                    self.audit.history(res_type, res_id)
                return [event], 1
            now = self.store.read(res_type, res_id)
            if now is None:
                raise FhirError.of(404, "not-found", f"Resource {res_type}/{res_id} is not known")
            if access() is not None:
                latest = now
                if now.body is None:  # deleted: the latest version with content says whose it was
                    latest = next((v for v in self.store.history(res_type, res_id, since=None, at=None,
                                                                 before_seq=None, limit=1000) if v.body is not None), now)
                self.guard.check_body("r", res_type, res_id, latest.body)
        elif res_type is not None:
            self.guard.require("s", res_type)
        since_db = parse_instant(since, "_since") if since else None
        at_db = parse_instant(at, "_at") if at else None
        limit = self.page_size(count)
        versions = self.store.history(res_type, res_id, since=since_db, at=at_db, before_seq=before_seq, limit=limit)
        total = len(versions) if at_db else self.store.history_count(res_type, res_id, since=since_db)
        if res_id is None and (acc := access()) is not None:
            # type and system history: only the versions the caller may see; the total of what it may see is
            # unknown without reading them all, so it is the page's (no count of others' data leaks)
            kept = [v for v in versions if v.body is not None and self.guard.permits(acc, "s", v.res_type, orjson.loads(v.body))]
            if len(kept) != len(versions):
                versions, total = kept, len(kept)
        if self.audit is not None:
            self.audit.history(res_type, res_id)
        return versions, total

    def page_size(self, count: int | None) -> int:
        """``_count`` bounded by the configured maximum."""
        if count is None:
            return self.settings.default_page_size
        return max(0, min(count, self.settings.max_page_size))

    def search(
        self, res_type: str | None, query: list[tuple[str, str]], *, count: int | None = None, offset: int = 0,
        strict: bool = False, compartment: tuple[str, str] | None = None, tx: Transaction | None = None,
        cursor: str | None = None,
    ) -> SearchResult:
        """Run a FHIR search at type (or system, with ``res_type=None``) level."""
        if res_type is not None:
            self.check_type(res_type)
        if res_type == audit_events.TYPE and compartment is None:
            result = audit_events.search(self, query, count=self.page_size(count), cursor=cursor, strict=strict)
            if self.audit is not None:
                self.audit.search(res_type, query, compartment, result)
            return result
        with self.search_parameters.active():
            acc = access()
            post = False
            if acc is not None:
                parsed = parse_query(res_type, query)
                acc, compartment = self.guard.search_scope(res_type, link_types(parsed), compartment,
                                                           parsed.resource_types)
                assert acc is not None
                post = self.guard.post_filtered(acc, res_type, compartment)
                if post and (parsed.summary == "count" or count == 0):
                    # a count of what the query matched would count what the caller may not see
                    return self._count_visible(acc, res_type, query, strict, compartment)
            result = run_search(
                tx or self.store, res_type, query, count=self.page_size(count), offset=offset, strict=strict,
                compartment=compartment, cursor=cursor,
            )
        if acc is not None:
            self._visible_only(acc, result)
            if post:  # the counted total included what was dropped: only a complete first page knows it
                result.total = len(result.entries) + offset if not result.has_next and not cursor else None
        if self.audit is not None:
            self.audit.search(res_type, query, compartment, result)
        return result

    def _count_visible(
        self, acc: Access, res_type: str | None, query: list[tuple[str, str]], strict: bool,
        compartment: tuple[str, str] | None, limit: int = 10_000,
    ) -> SearchResult:
        """``_summary=count`` for a caller whose matches are filtered: count what it may see (up to ``limit``)."""
        pairs = [(k, v) for k, v in query if k not in ("_summary", "_count", "_include", "_revinclude")]
        seen, cursor = 0, None
        while True:
            page = run_search(self.store, res_type, pairs, count=1000, strict=strict, compartment=compartment,
                              cursor=cursor)
            self._visible_only(acc, page)
            seen += len(page.entries)
            if not page.has_next or seen >= limit:
                break
            cursor = page.next_cursor
        # the last page's result carries what was applied; it answers with the count only
        page.entries, page.included, page.has_next, page.next_cursor = [], [], False, None
        page.total = seen if seen < limit else None  # beyond the limit: unknown rather than a leak
        page.summary = "count"
        return page

    def _visible_only(self, acc: Access, result: SearchResult) -> None:
        """Drop the matches and included resources the caller may not see (granular scopes, system search, consent)."""
        def ok(interaction: str, entry: tuple[str, str, str]) -> bool:
            t, i, body = entry
            if self.guard.confined(acc, interaction, t) and not self.guard.permits(acc, interaction, t, orjson.loads(body)):
                return False
            return not self.guard.withheld(acc, interaction, t, i, body)

        kept = [e for e in result.entries if ok("s", e)]
        if len(kept) != len(result.entries):
            result.entries, result.total = kept, None  # the total counted what the caller may not see
        result.included = [e for e in result.included if ok("r", e)]

    # ---- writes ------------------------------------------------------------------------

    def _prepare(self, res_type: str, resource: Any, *, url_id: str | None = None) -> dict[str, Any]:
        if not isinstance(resource, dict):
            raise FhirError.of(400, "structure", "The body must be a JSON object holding a FHIR resource")
        if resource.get("resourceType") != res_type:
            raise FhirError.of(
                400, "invalid",
                f"resourceType {resource.get('resourceType')!r} does not match the endpoint's type {res_type!r}",
            )
        if url_id is not None:
            if "id" not in resource:
                raise FhirError.of(400, "required", "An update must carry the resource id in the body", "id")
            if resource["id"] != url_id:
                raise FhirError.of(
                    400, "invalid", f"The body's id {resource['id']!r} does not match the URL's id {url_id!r}", "id"
                )
        validate_or_raise(resource, res_type)
        return resource

    def check_references(self, tx: Transaction, res_type: str, res_id: str, targets: set[tuple[str, str]]) -> None:
        """422 listing every local reference whose target does not exist (or is deleted)."""
        if not self.settings.referential_integrity:
            return
        missing = []
        for t, i in sorted(targets):
            if (t, i) == (res_type, res_id):
                continue
            rows = tx.query("SELECT deleted FROM resources WHERE res_type = ? AND res_id = ?", (t, i))
            if not rows or rows[0][0]:
                missing.append(f"{t}/{i}")
        if missing:
            raise FhirError(422, [
                Issue("processing", f"Reference to {m} cannot be resolved: no such resource on this server")
                for m in missing
            ])

    def _write(
        self, tx: Transaction, res_type: str, res_id: str, resource: dict[str, Any] | None, method: str,
        *, check_refs: bool = True, rows: IndexRows | None = None, authorized: bool = False,
    ) -> StoredVersion:
        """Write the next version of ``res_type/res_id`` (a deletion when ``resource`` is None).

        ``authorized``: the caller already checked this write against the policy (``_authorize_write``).
        """
        if res_type == audit_events.TYPE:
            return audit_events.append(self, tx, res_id, resource, authorized=authorized)
        current = tx.current(res_type, res_id)
        if not authorized:
            self._authorize_write(tx, res_type, res_id, resource, current is not None and not current.deleted)
        version = (current.version + 1) if current else 1
        stamp = db_instant(self.now())
        body: str | None = None
        if res_type == "SearchParameter":
            # before the write, so that an unusable definition (422) rolls it back
            self.search_parameters.apply(tx, res_id, resource, stamp)
        if resource is not None:
            body, rows, targets = self._render(res_type, res_id, version, stamp, resource, rows=rows)
            if check_refs:
                self.check_references(tx, res_type, res_id, targets)
        tx.write_version(res_type, res_id, version, stamp, method, body, rows, current)
        self._changed(res_type, res_id, version, method, body)
        return StoredVersion(res_type, res_id, version, stamp, method, body)

    def _authorize_write(
        self, tx: Transaction, res_type: str, res_id: str, resource: dict[str, Any] | None, exists: bool,
    ) -> None:
        """The policy's check of a write: the new content and, when it exists, the stored one."""
        if access() is None:
            return
        old = tx.read(res_type, res_id) if exists else None
        self.guard.check_write(res_type, res_id, resource, old.body if old else None, exists)

    @staticmethod
    def _render(
        res_type: str, res_id: str, version: int, stamp: str, resource: dict[str, Any], *,
        rows: IndexRows | None = None,
    ) -> tuple[str, IndexRows, set[tuple[str, str]]]:
        """The stored JSON text of a version (id and meta set by the server), its index rows and local targets.

        Index rows do not depend on the id, version or lastUpdated (``_id`` and ``_lastUpdated``
        are answered from the resources table), so callers may extract them before taking the
        write lock and pass them in.
        """
        meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
        final: dict[str, Any] = {
            "resourceType": res_type,
            "id": res_id,
            "meta": {"versionId": str(version), "lastUpdated": fhir_instant(stamp), **meta},
        }
        for k, v in resource.items():
            if k not in final:
                final[k] = v
        body = orjson.dumps(final).decode()
        if "\\u0000" in body and _has_nul(final):
            # PostgreSQL text cannot hold U+0000, and no FHIR string needs it: refused alike on every store
            raise FhirError.of(400, "invalid", "Strings must not contain the NUL character (U+0000)")
        targets = targets_in_json(body)
        rows = dict(rows) if rows is not None else index_rows(final)
        rows["refs"] = [("", 0, t, i) for t, i in targets]
        return body, rows, targets

    def _changed(self, res_type: str, res_id: str, version: int, method: str, body: str | None) -> None:
        pending = getattr(self._pending, "events", None)
        if pending is not None:
            pending.append(ResourceChanged(res_type, res_id, version, method, body))

    def _index_rows(self, resource: dict[str, Any]) -> tuple[IndexRows, Overlay]:
        """Index rows extracted before the write lock, with the search parameters they were extracted for."""
        with self.search_parameters.active() as overlay:
            return index_rows(resource), overlay

    @staticmethod
    def _unless_stale(early: tuple[IndexRows, Overlay], res_type: str) -> IndexRows | None:
        """The early rows, or None (extract again) if the transaction found a SearchParameter changed since."""
        rows, overlay = early
        return rows if in_force(res_type) == overlay.narrow((res_type,)) else None

    def _search_parameter_changed(self, event: ResourceChanged) -> None:
        # this process's next search sees the change at once, not when the registry's cache expires
        if event.res_type == "SearchParameter":
            self.search_parameters.invalidate()

    def reindex(
        self, types: Sequence[str] | None = None, res_id: str | None = None, *, batch: int = 500,
        progress: Callable[[int, int], None] | None = None,
    ) -> ReindexReport:
        """Rebuild the index rows of the current resources of ``types`` (None: every type), or of one resource."""
        from salus.service.reindex import reindex  # it calls back into this service

        self.guard.operation("$reindex")
        return reindex(self, types, res_id, batch=batch, progress=progress)

    def erase_patient(self, patient_id: str) -> ErasureReport:
        """GDPR erasure: every version of the Patient and of its compartment, gone in one audited transaction.

        Administrators only (``$erase``); see ``salus.service.erasure`` for what counts as the patient's.
        """
        from salus.service.erasure import erase_patient  # it calls back into this service

        return erase_patient(self, patient_id)

    def _lock_and_match(self, tx: Transaction, res_type: str, query: str) -> list[tuple[str, int]]:
        pairs = canonical_query(query)
        if not pairs:
            raise FhirError.of(400, "invalid", "A conditional operation needs search parameters")
        tx.lock(f"{res_type}?{urlencode(sorted(pairs))}")
        compartment = None
        if access() is not None:
            # the criteria are a search: the caller must be allowed it, and matches only what it may search
            _, compartment = self.guard.search_scope(res_type, link_types(parse_query(res_type, pairs)), None)
        return match_ids(tx, res_type, pairs, limit=2, compartment=compartment)

    def create(
        self, res_type: str, resource: Any, *, if_none_exist: str | None = None, res_id: str | None = None,
        tx: Transaction | None = None, check_refs: bool = True,
    ) -> WriteResult:
        """Create with a server-assigned id; with ``If-None-Exist``, return the match instead (200), 412 if several."""
        self.check_type(res_type)
        resource = self._prepare(res_type, resource)
        early = self._index_rows(resource)  # outside the write lock: it is the costly part of a write

        def work(t: Transaction) -> WriteResult:
            if if_none_exist:
                self.guard.require("c", res_type)  # before matching: the answer would reveal what exists
                matches = self._lock_and_match(t, res_type, if_none_exist)
                if len(matches) > 1:
                    raise FhirError.of(412, "duplicate", f"If-None-Exist matched several {res_type} resources")
                if matches:
                    found = t.read(res_type, matches[0][0])
                    assert found is not None
                    self.guard.check_body("r", res_type, found.res_id, found.body)  # it is returned to the caller
                    return WriteResult(200, found)
            new_id = res_id or str(uuid.uuid4())
            rows = self._unless_stale(early, res_type)
            written = self._write(t, res_type, new_id, resource, "POST", check_refs=check_refs, rows=rows)
            return WriteResult(201, written, created=True)

        return self._run(tx, work)

    def update(
        self, res_type: str, res_id: str, resource: Any, *, if_match: str | None = None, tx: Transaction | None = None,
        method: str = "PUT", check_refs: bool = True,
    ) -> WriteResult:
        """Update (or create with the client's id); ``If-Match`` must name the current version."""
        self.check_type(res_type)
        self.check_id(res_id)
        audit_events.refuse_change(res_type)
        resource = self._prepare(res_type, resource, url_id=res_id)
        early = self._index_rows(resource)

        def work(t: Transaction) -> WriteResult:
            current = t.current(res_type, res_id)
            created = current is None or current.deleted
            # before If-Match: its 412 would tell a caller without the right which version is current
            self._authorize_write(t, res_type, res_id, resource, not created)
            check_if_match(if_match, None if created else current.version, f"{res_type}/{res_id}")  # type: ignore[union-attr]
            rows = self._unless_stale(early, res_type)
            written = self._write(t, res_type, res_id, resource, method, check_refs=check_refs, rows=rows,
                                  authorized=True)
            return WriteResult(201 if created else 200, written, created=created)

        return self._run(tx, work)

    def conditional_update(
        self, res_type: str, query: str, resource: Any, *, if_match: str | None = None, tx: Transaction | None = None,
        check_refs: bool = True,
    ) -> WriteResult:
        """Update the single match of ``query``; create if none; 412 if several."""
        self.check_type(res_type)
        if not isinstance(resource, dict):
            raise FhirError.of(400, "structure", "The body must be a JSON object holding a FHIR resource")

        def work(t: Transaction) -> WriteResult:
            matches = self._lock_and_match(t, res_type, query)
            if len(matches) > 1:
                raise FhirError.of(412, "multiple-matches", f"The conditional update matched several {res_type} resources")
            if matches:
                match_id = matches[0][0]
                if "id" in resource and resource["id"] != match_id:
                    raise FhirError.of(400, "invalid", f"The body's id {resource['id']!r} is not the matching resource {match_id!r}", "id")
                return self.update(
                    res_type, match_id, {**resource, "id": match_id}, if_match=if_match, tx=t, check_refs=check_refs
                )
            if "id" in resource:
                return self.update(res_type, resource["id"], resource, tx=t, check_refs=check_refs)
            return self.create(res_type, resource, tx=t, check_refs=check_refs)

        return self._run(tx, work)

    def patch(
        self, res_type: str, res_id: str, patch: Any, *, if_match: str | None = None, tx: Transaction | None = None,
        check_refs: bool = True,
    ) -> WriteResult:
        """Apply a JSON Patch (an RFC 6902 array) or a FHIRPath Patch (a Parameters resource) to the current version.

        The result is stored as a new version through ``update``, so it is validated like any other write.
        """
        self.check_type(res_type)
        self.check_id(res_id)
        audit_events.refuse_change(res_type)
        patch_kind(patch)  # a body that is neither kind is refused before the row lock is taken

        def work(t: Transaction) -> WriteResult:
            current = t.current(res_type, res_id)  # locks the row: the patch applies to what we replace
            if current is None:
                raise FhirError.of(404, "not-found", f"Resource {res_type}/{res_id} is not known")
            if current.deleted:
                raise FhirError.of(410, "deleted", f"Resource {res_type}/{res_id} was deleted")
            stored = t.read(res_type, res_id)
            assert stored is not None and stored.body is not None
            patched = apply_patch(orjson.loads(stored.body), patch)
            if not isinstance(patched, dict) or patched.get("id") != res_id or patched.get("resourceType") != res_type:
                raise FhirError.of(422, "processing", "A patch may not change the resource's type or id")
            self._authorize_write(t, res_type, res_id, patched, True)  # before If-Match, as for an update
            check_if_match(if_match, current.version, f"{res_type}/{res_id}")
            return self.update(res_type, res_id, patched, tx=t, method="PATCH", check_refs=check_refs)

        return self._run(tx, work)

    def delete(
        self, res_type: str, res_id: str, *, cascade: bool = False, if_match: str | None = None,
        tx: Transaction | None = None,
    ) -> WriteResult:
        """Delete (a versioned tombstone); 409 while other resources reference it unless ``cascade``."""
        self.check_type(res_type)
        self.check_id(res_id)
        audit_events.refuse_change(res_type)

        def work(t: Transaction) -> WriteResult:
            current = t.current(res_type, res_id)
            if current is not None and not current.deleted:
                # before If-Match and the referrers: their answers would tell a stranger about the resource
                self._authorize_write(t, res_type, res_id, None, True)
            check_if_match(if_match, current.version if current and not current.deleted else None, f"{res_type}/{res_id}")
            if current is None or current.deleted:
                return WriteResult(204, None)
            referrers = self._referrers(t, res_type, res_id)
            if referrers and not cascade:
                shown = ", ".join(f"{a}/{b}" for a, b in referrers[:5])
                raise FhirError.of(
                    409, "conflict",
                    f"{res_type}/{res_id} is referenced by {shown}{' and others' if len(referrers) > 5 else ''}; "
                    "delete those first or ask for _cascade=delete",
                )
            for a, b in referrers:
                self.delete(a, b, cascade=True, tx=t)
            return WriteResult(204, self._write(t, res_type, res_id, None, "DELETE", authorized=True))

        return self._run(tx, work)

    def _referrers(self, tx: Transaction, res_type: str, res_id: str) -> list[tuple[str, str]]:
        rows = tx.query(
            "SELECT DISTINCT r.res_type, r.res_id FROM refs f JOIN resources r ON r.rid = f.rid "
            "WHERE f.target_type = ? AND f.target_id = ? AND NOT r.deleted ORDER BY r.res_type, r.res_id",
            (res_type, res_id),
        )
        return [(a, b) for a, b in rows if (a, b) != (res_type, res_id)]

    def conditional_delete(
        self, res_type: str, query: str, *, cascade: bool = False, tx: Transaction | None = None,
    ) -> WriteResult:
        """Delete the single match of ``query`` (nothing if none); 412 if several."""
        self.check_type(res_type)
        audit_events.refuse_change(res_type)

        def work(t: Transaction) -> WriteResult:
            matches = self._lock_and_match(t, res_type, query)
            if len(matches) > 1:
                raise FhirError.of(412, "multiple-matches", f"The conditional delete matched several {res_type} resources")
            if not matches:
                return WriteResult(204, None)
            return self.delete(res_type, matches[0][0], cascade=cascade, tx=t)

        return self._run(tx, work)

    def load(self, resources: list[dict[str, Any]], *, validate: bool = True) -> None:
        """Write a batch of resources with their own ids in one transaction (bulk import, demo loading).

        References are not checked here: bulk files arrive in any order (Patient after
        Encounter), so integrity is the importer's report, not a per-row rule.
        """
        for r in resources:
            res_type = r.get("resourceType")
            if not isinstance(res_type, str):
                raise FhirError.of(400, "invalid", "resourceType is missing")
            self.check_type(res_type)
            if "id" not in r:
                r["id"] = str(uuid.uuid4())
            self.check_id(str(r["id"]))
            if validate:
                validate_or_raise(r, res_type)
        with self.transaction() as tx:
            resources = audit_events.load(self, tx, resources)  # AuditEvents join the trail, the rest go on
            found = tx.existing(list({(r["resourceType"], r["id"]) for r in resources}))
            fresh: list[NewResource] = []
            seen: set[tuple[str, str]] = set()
            for r in resources:
                key = (r["resourceType"], r["id"])
                if key in found or key in seen:
                    continue
                seen.add(key)
                stamp = db_instant(self.now())
                body, rows, _ = self._render(key[0], key[1], 1, stamp, r)
                fresh.append(NewResource(key[0], key[1], stamp, "PUT", body, rows))
            # new resources go in bulk (COPY on PostgreSQL); updates and repeats take the ordinary path
            tx.insert_new(fresh)
            for item in fresh:
                if item.res_type == "SearchParameter":
                    self.search_parameters.apply(tx, item.res_id, orjson.loads(item.body), item.last_updated)
                self._changed(item.res_type, item.res_id, 1, "PUT", item.body)
            firsts = {(f.res_type, f.res_id) for f in fresh}
            for r in resources:
                key = (r["resourceType"], r["id"])
                if key in firsts:
                    firsts.discard(key)  # its first occurrence was inserted above
                    continue
                self._write(tx, key[0], key[1], r, "PUT", check_refs=False)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def search_issues(result: SearchResult) -> list[Issue]:
    """The warnings a searchset carries: parameters left out because unknown, or because not indexed yet."""
    return [
        Issue("not-supported", f"Unknown or unsupported search parameter {name!r} was ignored", severity="warning")
        for name in result.unknown
    ] + [pending_issue(name, strict=False) for name in result.pending]


def patch_kind(patch: Any) -> str:
    """``json`` for a JSON Patch array, ``fhirpath`` for a FHIRPath Patch Parameters resource; 400 for anything else."""
    if isinstance(patch, list):
        return "json"
    if isinstance(patch, dict) and patch.get("resourceType") == "Parameters":
        return "fhirpath"
    raise FhirError.of(
        400, "structure", "A patch must be a JSON Patch array or a FHIRPath Patch (a Parameters resource)"
    )


def apply_patch(document: Any, patch: Any) -> Any:
    """Apply either kind of patch the FHIR API accepts (R4 http.html#patch), told apart by its JSON shape."""
    if patch_kind(patch) == "fhirpath":
        return apply_fhirpath_patch(document, patch)
    return apply_json_patch(document, patch)


def apply_json_patch(document: Any, patch: Any) -> Any:
    """Apply an RFC 6902 JSON Patch; a patch that cannot apply is 422, a malformed one 400."""
    if not isinstance(patch, list):
        raise FhirError.of(400, "structure", "A JSON Patch document must be a JSON array of operations")
    try:
        return jsonpatch.JsonPatch(patch).apply(document)
    except jsonpatch.InvalidJsonPatch as exc:
        raise FhirError.of(400, "structure", f"Malformed JSON Patch: {exc}") from exc
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise FhirError.of(422, "processing", f"The patch could not be applied: {exc}") from exc
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as exc:
        raise FhirError.of(400, "structure", f"Malformed JSON Patch: {exc}") from exc


def check_if_match(if_match: str | None, current_version: int | None, what: str) -> None:
    """412 unless ``If-Match`` (``W/"n"`` or ``n``) names the current version."""
    if if_match is None:
        return
    wanted = if_match.strip()
    if wanted.startswith("W/"):
        wanted = wanted[2:]
    wanted = wanted.strip('"')
    if current_version is None or wanted != str(current_version):
        raise FhirError.of(
            412, "conflict",
            f"If-Match {if_match} does not match the current version of {what} ({current_version or 'none'})",
        )
