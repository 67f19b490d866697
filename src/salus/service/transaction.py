"""Batch and transaction Bundles (R4 http.html#transaction).

A transaction runs in one database transaction: entries are processed
DELETE, then POST, then PUT/PATCH, then GET (R4 3.1.0.11.2), ``urn:uuid:``
and other full URLs of created resources are rewritten to the ids assigned,
conditional references (``Patient?identifier=...``) are resolved, references
are checked once every entry is written, and any failure rolls everything
back. A batch runs each entry on its own and reports each outcome.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from salus.fhir.definitions import is_resource_type
from salus.fhir.outcome import FhirError, Issue, operation_outcome
from salus.fhir.refs import rewrite_references, targets_in_json
from salus.service import FhirService, WriteResult, fhir_instant, search_issues
from salus.store import StoredVersion, Transaction

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclass
class Entry:
    """One parsed Bundle entry request."""

    index: int
    method: str
    res_type: str | None
    res_id: str | None
    vid: str | None
    query: str
    resource: Any
    full_url: str | None
    if_match: str | None = None
    if_none_exist: str | None = None
    target_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _fail(index: int, err: FhirError) -> FhirError:
    issues = [Issue(i.code, f"Bundle.entry[{index}]: {i.diagnostics}", i.severity, i.expression) for i in err.issues]
    return FhirError(err.status, issues)


def parse_entry(index: int, raw: Any, base_url: str) -> Entry:
    """An entry's request as method, type, id, version and query; 400 when unusable."""
    if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
        raise FhirError.of(400, "required", f"Bundle.entry[{index}] has no request", f"Bundle.entry[{index}].request")
    req = raw["request"]
    method = str(req.get("method", "")).upper()
    url = req.get("url")
    if method not in ORDER or not isinstance(url, str) or not url:
        raise FhirError.of(400, "invalid", f"Bundle.entry[{index}].request needs a method and url", f"Bundle.entry[{index}].request")
    if url.startswith(base_url + "/"):
        url = url[len(base_url) + 1:]
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    res_type = path[0] if path else None
    if res_type is not None and not is_resource_type(res_type):
        raise FhirError.of(404, "not-supported", f"Bundle.entry[{index}]: unknown resource type {res_type!r}")
    res_id = path[1] if len(path) > 1 and path[1] != "_history" else None
    vid = path[3] if len(path) > 3 and path[2] == "_history" else None
    return Entry(
        index, method, res_type, res_id, vid, parts.query, raw.get("resource"), raw.get("fullUrl"),
        if_match=req.get("ifMatch"), if_none_exist=req.get("ifNoneExist"),
        extra={"history": "_history" in path},
    )


def process_bundle(service: FhirService, bundle: Any, base_url: str) -> dict[str, Any]:
    """Run a batch or transaction Bundle and return its response Bundle."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError.of(400, "invalid", "POST to the base needs a Bundle of type batch or transaction")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise FhirError.of(400, "invalid", f"Bundle.type must be batch or transaction, not {kind!r}", "Bundle.type")
    raw_entries = bundle.get("entry", [])
    if not isinstance(raw_entries, list):
        raise FhirError.of(400, "structure", "Bundle.entry must be an array", "Bundle.entry")
    if kind == "transaction":
        return _transaction(service, raw_entries, base_url)
    return _batch(service, raw_entries, base_url)


def _batch(service: FhirService, raw_entries: list[Any], base_url: str) -> dict[str, Any]:
    out = []
    for i, raw in enumerate(raw_entries):
        try:
            entry = parse_entry(i, raw, base_url)
            out.append(_execute(service, None, entry, base_url))
        except FhirError as err:
            out.append({"response": {"status": str(err.status), "outcome": err.to_outcome()}})
    return {"resourceType": "Bundle", "type": "batch-response", "entry": out}


def _transaction(service: FhirService, raw_entries: list[Any], base_url: str) -> dict[str, Any]:
    entries = [parse_entry(i, raw, base_url) for i, raw in enumerate(raw_entries)]
    seen: set[str] = set()
    for e in entries:
        if e.full_url:
            if e.full_url in seen:
                raise FhirError.of(400, "invalid", f"Bundle.entry[{e.index}]: duplicate fullUrl {e.full_url}")
            seen.add(e.full_url)
    results: dict[int, dict[str, Any]] = {}
    with service.transaction() as tx:
        mapping = _assign_ids(service, tx, entries)
        for e in entries:
            if isinstance(e.resource, dict):
                _resolve_references(service, tx, e, mapping)
        written: list[tuple[str, str, str]] = []
        for e in sorted(entries, key=lambda e: (ORDER[e.method], e.index)):
            try:
                results[e.index] = _execute(service, tx, e, base_url, check_refs=False)
            except FhirError as err:
                raise _fail(e.index, err) from err
            if e.method in ("POST", "PUT", "PATCH") and "_stored" in e.extra:
                v: StoredVersion = e.extra["_stored"]
                if v.body is not None:
                    written.append((v.res_type, v.res_id, v.body))
        for t, i, body in written:
            try:
                service.check_references(tx, t, i, targets_in_json(body))
            except FhirError as err:
                raise FhirError(err.status, [Issue(x.code, f"{t}/{i}: {x.diagnostics}") for x in err.issues]) from err
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": [results[i] for i in range(len(entries))]}


def _assign_ids(service: FhirService, tx: Transaction, entries: list[Entry]) -> dict[str, str]:
    """Decide the id of every created resource up front so any entry can reference any other."""
    mapping: dict[str, str] = {}
    for e in entries:
        if e.method == "POST" and e.res_type:
            if e.if_none_exist:
                matches = service._lock_and_match(tx, e.res_type, e.if_none_exist)
                if len(matches) > 1:
                    raise FhirError.of(412, "duplicate", f"Bundle.entry[{e.index}]: ifNoneExist matched several resources")
                if matches:
                    e.target_id = matches[0][0]
                    e.extra["exists"] = True
            if e.target_id is None:
                e.target_id = str(uuid.uuid4())
            if e.full_url:
                mapping[e.full_url] = f"{e.res_type}/{e.target_id}"
        elif e.method == "PUT" and e.res_type:
            if e.res_id is None and e.query:
                matches = service._lock_and_match(tx, e.res_type, e.query)
                if len(matches) > 1:
                    raise FhirError.of(412, "multiple-matches", f"Bundle.entry[{e.index}]: conditional update matched several resources")
                e.target_id = matches[0][0] if matches else (
                    e.resource.get("id") if isinstance(e.resource, dict) and e.resource.get("id") else str(uuid.uuid4())
                )
            else:
                e.target_id = e.res_id
            if e.full_url and e.target_id:
                mapping[e.full_url] = f"{e.res_type}/{e.target_id}"
    return mapping


def _resolve_references(service: FhirService, tx: Transaction, e: Entry, mapping: dict[str, str]) -> None:
    """Rewrite full URLs to assigned ids and conditional references to their single match."""

    def resolve(ref: str) -> str | None:
        if ref in mapping:
            return mapping[ref]
        if ref.startswith("urn:uuid:") or ref.startswith("urn:oid:"):
            raise FhirError.of(
                400, "not-found", f"Bundle.entry[{e.index}]: reference {ref} matches no fullUrl in the transaction"
            )
        head, sep, query = ref.partition("?")
        if sep and "/" not in head and is_resource_type(head):
            matches = service._lock_and_match(tx, head, query)
            if len(matches) != 1:
                raise FhirError.of(
                    412, "not-found" if not matches else "multiple-matches",
                    f"Bundle.entry[{e.index}]: conditional reference {ref} matched {len(matches)} resources (needs one)",
                )
            return f"{head}/{matches[0][0]}"
        return None

    rewrite_references(e.resource, resolve)


def _execute(
    service: FhirService, tx: Transaction | None, e: Entry, base_url: str, *, check_refs: bool = True,
) -> dict[str, Any]:
    """Run one entry (inside ``tx`` for a transaction) and return its response entry."""
    if e.res_type is None:
        raise FhirError.of(400, "not-supported", f"Bundle.entry[{e.index}]: system-level requests are not supported in bundles")
    if e.method in ("GET", "HEAD"):
        return _get(service, tx, e, base_url)
    if e.method == "DELETE":
        if e.res_id:
            result = service.delete(e.res_type, e.res_id, if_match=e.if_match, tx=tx)
        else:
            result = service.conditional_delete(e.res_type, e.query, tx=tx)
        return {"response": {"status": "204 No Content"}} if result.version is None else _written(e, result)
    if e.method == "POST":
        if e.extra.get("exists") and tx is not None:
            return _written(e, WriteResult(200, tx.read(e.res_type, e.target_id or "")))
        if tx is None and e.if_none_exist:
            result = service.create(e.res_type, e.resource, if_none_exist=e.if_none_exist)
        else:
            result = service.create(e.res_type, e.resource, res_id=e.target_id, tx=tx, check_refs=check_refs)
        e.extra["_stored"] = result.version
        return _written(e, result)
    if e.method == "PUT":
        if e.res_id:
            result = service.update(e.res_type, e.res_id, e.resource, if_match=e.if_match, tx=tx, check_refs=check_refs)
        elif tx is None:
            result = service.conditional_update(e.res_type, e.query, e.resource, if_match=e.if_match)
        else:
            body = {**e.resource, "id": e.target_id} if isinstance(e.resource, dict) else e.resource
            result = service.update(e.res_type, e.target_id or "", body, if_match=e.if_match, tx=tx, check_refs=check_refs)
        e.extra["_stored"] = result.version
        return _written(e, result)
    # PATCH: a JSON Patch travels as a Binary, a FHIRPath Patch as a Parameters resource (R4 3.1.0.11.1)
    if not e.res_id:
        raise FhirError.of(400, "not-supported", f"Bundle.entry[{e.index}]: conditional PATCH in a bundle is not supported")
    result = service.patch(e.res_type, e.res_id, _patch_document(e), if_match=e.if_match, tx=tx, check_refs=check_refs)
    e.extra["_stored"] = result.version
    return _written(e, result)


def _patch_document(e: Entry) -> Any:
    """The patch an entry carries: a Binary holding a JSON Patch, or a Parameters resource (FHIRPath Patch)."""
    r = e.resource
    if isinstance(r, dict) and r.get("resourceType") == "Binary":
        try:
            return orjson.loads(base64.b64decode(r.get("data", "")))
        except (ValueError, orjson.JSONDecodeError) as exc:
            raise FhirError.of(400, "structure", f"Bundle.entry[{e.index}]: the Binary does not hold a JSON Patch") from exc
    if isinstance(r, dict) and r.get("resourceType") == "Parameters":
        return r
    if isinstance(r, list):
        return r
    raise FhirError.of(
        400, "not-supported",
        f"Bundle.entry[{e.index}]: PATCH needs a Binary holding a JSON Patch or a Parameters resource (FHIRPath Patch)",
    )


def _written(e: Entry, result: WriteResult) -> dict[str, Any]:
    v = result.version
    assert v is not None
    response: dict[str, Any] = {
        "status": STATUS_TEXT.get(result.status, str(result.status)),
        "etag": f'W/"{v.version}"',
        "lastModified": fhir_instant(v.last_updated),
    }
    if v.body is not None:
        response["location"] = f"{v.res_type}/{v.res_id}/_history/{v.version}"
    out: dict[str, Any] = {}
    if e.full_url:
        out["fullUrl"] = e.full_url
    if v.body is not None:
        out["resource"] = orjson.Fragment(v.body)
    out["response"] = response
    return out


def _get(service: FhirService, tx: Transaction | None, e: Entry, base_url: str) -> dict[str, Any]:
    assert e.res_type is not None
    if e.extra.get("history") and e.vid is None:
        versions, total = service.history(e.res_type, e.res_id)
        bundle = {"resourceType": "Bundle", "type": "history", "total": total, "entry": [
            {"fullUrl": f"{base_url}/{v.res_type}/{v.res_id}", **({"resource": orjson.Fragment(v.body)} if v.body else {})}
            for v in versions
        ]}
        return {"resource": bundle, "response": {"status": "200 OK"}}
    if e.res_id:
        v = service.vread(e.res_type, e.res_id, e.vid) if e.vid else service.read(e.res_type, e.res_id)
        return {"resource": orjson.Fragment(v.body), "response": {
            "status": "200 OK", "etag": f'W/"{v.version}"', "lastModified": fhir_instant(v.last_updated)}}
    query = parse_qsl(e.query, keep_blank_values=True)
    count = next((int(v) for k, v in query if k == "_count" and v.isascii() and v.isdigit()), None)
    result = service.search(e.res_type, query, count=count, tx=tx)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None:
        bundle["total"] = result.total
    bundle["entry"] = [
        {"fullUrl": f"{base_url}/{t}/{i}", "resource": orjson.Fragment(b), "search": {"mode": "match"}}
        for t, i, b in result.entries
    ]
    if issues := search_issues(result):
        bundle["entry"].append({"resource": operation_outcome(issues), "search": {"mode": "outcome"}})
    return {"resource": bundle, "response": {"status": "200 OK"}}
