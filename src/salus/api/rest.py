"""The FHIR RESTful API (R4 http.html): each handler translates HTTP to one service call and back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import urlencode

import anyio
import anyio.to_thread
import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from salus.api import formats
from salus.api.formats import FHIR_JSON, dumps, negotiate, prefer, read_form, read_json_body, resource_response
from salus.fhir.outcome import FhirError, Issue, operation_outcome
from salus.fhir.subset import check_summary, subset, wants_subset
from salus.fhir.validate import validate
from salus.search.engine import SearchResult
from salus.service import FhirService, WriteResult, search_issues
from salus.service.transaction import process_bundle
from salus.store import StoredVersion

T = TypeVar("T")

# parameters that shape the HTTP answer and never reach the search engine
FORMAT_PARAMS = {"_format", "_pretty"}
PAGING_PARAMS = {"_offset", "_cursor"}


class RestApi:
    """Route handlers bound to one service and its settings."""

    def __init__(self, service: FhirService) -> None:
        self.service = service
        self.settings = service.settings
        # an SQLite point read takes microseconds: cheaper on the event loop than a hop to a worker
        # thread; PostgreSQL reads wait on the network, so they go to the thread pool
        self.inline_reads = service.store.dialect == "sqlite"
        self.write_limiter = anyio.CapacityLimiter(1 if service.store.dialect == "sqlite" else 40)

    async def write(self, fn: Callable[..., T]) -> T:
        """Run a write off the event loop, one at a time per process on SQLite.

        SQLite has one writer anyway; letting many threads race for it made the lock
        holder wait on the GIL behind threads doing validation (a convoy that capped
        creates at ~1,000/s). PostgreSQL writers run side by side.
        """
        return await anyio.to_thread.run_sync(fn, limiter=self.write_limiter)

    async def point_read(self, fn: Callable[..., StoredVersion], *args: str) -> StoredVersion:
        """Run a read by primary key inline (SQLite) or in the thread pool (PostgreSQL)."""
        if self.inline_reads:
            return fn(*args)
        return await run_in_threadpool(fn, *args)

    # ---- helpers ---------------------------------------------------------------------

    def base_url(self, request: Request) -> str:
        """The server's FHIR base URL as clients see it."""
        if self.settings.public_base_url:
            return self.settings.public_base_url
        return str(request.base_url).rstrip("/") + self.settings.base_path

    def location(self, request: Request, v: StoredVersion) -> str:
        """The versioned Location of a stored version."""
        return f"{self.base_url(request)}/{v.res_type}/{v.res_id}/_history/{v.version}"

    def write_response(self, request: Request, result: WriteResult, media: str) -> Response:
        """The answer to a create/update/patch, honouring ``Prefer: return``."""
        assert result.version is not None
        return resource_response(
            request, result.version, status=result.status, media=media,
            location=self.location(request, result.version), prefer_return=prefer(request, "return"),
        )

    async def body(self, request: Request, allow: tuple[str, ...] = ()) -> Any:
        """The parsed JSON body within the configured size limit."""
        return await read_json_body(request, self.settings.max_body_bytes, allow=allow)

    @staticmethod
    def search_params(request: Request, form: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
        """Search parameters of the URL (and form body), without formatting and paging parameters."""
        items = list(request.query_params.multi_items()) + (form or [])
        return [(k, v) for k, v in items if k not in FORMAT_PARAMS and k not in PAGING_PARAMS]

    @staticmethod
    def int_param(request: Request, name: str) -> int | None:
        """An integer query parameter; 400 if present and not an integer."""
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return None
        if not (raw.isascii() and raw.lstrip("-").isdigit()):
            raise FhirError.of(400, "invalid", f"{name} must be an integer, not {raw!r}")
        return int(raw)

    # ---- instance level ----------------------------------------------------------------

    async def read(self, request: Request) -> Response:
        """GET [type]/[id], with If-None-Match and If-Modified-Since answered by 304."""
        media = negotiate(request)
        t, i = request.path_params["type"], request.path_params["id"]
        v = await self.point_read(self.service.read, t, i)
        inm = request.headers.get("if-none-match")
        if inm and any(tag.strip() in (formats.etag(v.version), f'"{v.version}"', "*") for tag in inm.split(",")):
            return Response(status_code=304, headers={"ETag": formats.etag(v.version)})
        ims = request.headers.get("if-modified-since")
        if ims and not inm:
            since = formats.parse_http_date(ims)
            # HTTP dates have whole seconds: compare at that precision
            if since is not None and formats.modified_at(v.last_updated) <= since:
                return Response(status_code=304, headers={"ETag": formats.etag(v.version)})
        return resource_response(request, self.subset_read(request, v), media=media)

    @staticmethod
    def subset_read(request: Request, v: StoredVersion) -> StoredVersion:
        """The version cut down by ``_summary``/``_elements`` on a read, if asked for."""
        summary = check_summary(request.query_params.get("_summary"))
        raw = request.query_params.get("_elements")
        elements = raw.split(",") if raw else None
        if not wants_subset(summary, elements) or v.body is None:
            return v
        return replace(v, body=orjson.dumps(subset(orjson.loads(v.body), summary, elements)).decode())

    async def vread(self, request: Request) -> Response:
        """GET [type]/[id]/_history/[vid]."""
        media = negotiate(request)
        p = request.path_params
        v = await self.point_read(self.service.vread, p["type"], p["id"], p["vid"])
        return resource_response(request, self.subset_read(request, v), media=media)

    async def update(self, request: Request) -> Response:
        """PUT [type]/[id]: update, or create with the client's id."""
        media = negotiate(request)
        t, i = request.path_params["type"], request.path_params["id"]
        self.service.check_type(t)
        body = await self.body(request)
        result = await self.write(
            lambda: self.service.update(t, i, body, if_match=request.headers.get("if-match"))
        )
        return self.write_response(request, result, media)

    async def patch(self, request: Request) -> Response:
        """PATCH [type]/[id] with a JSON Patch or FHIRPath Patch document."""
        media = negotiate(request)
        t, i = request.path_params["type"], request.path_params["id"]
        self.service.check_type(t)
        body = await self.patch_body(request)
        result = await self.write(
            lambda: self.service.patch(t, i, body, if_match=request.headers.get("if-match"))
        )
        return self.write_response(request, result, media)

    async def patch_body(self, request: Request) -> Any:
        """The PATCH body, whose kind the media type names: JSON Patch, or FHIRPath Patch as FHIR JSON; else 415."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == formats.PATCH_JSON:
            body = await self.body(request, allow=(formats.PATCH_JSON,))
            if not isinstance(body, list):
                raise FhirError.of(400, "structure", "A JSON Patch document must be a JSON array of operations")
            return body
        if ctype in formats.JSON_TYPES:
            body = await self.body(request)
            # checked here so the service's by-shape dispatch never takes a FHIR JSON body for a JSON Patch
            if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
                raise FhirError.of(
                    400, "structure", f"A PATCH with {ctype} must carry a FHIRPath Patch (a Parameters resource)"
                )
            return body
        raise FhirError.of(
            415, "not-supported",
            f"PATCH needs {formats.PATCH_JSON} (JSON Patch) or {formats.FHIR_JSON} (FHIRPath Patch), "
            f"not {ctype or '(none)'!r}",
        )

    async def delete(self, request: Request) -> Response:
        """DELETE [type]/[id] (``_cascade=delete`` also deletes what references it)."""
        t, i = request.path_params["type"], request.path_params["id"]
        cascade = request.query_params.get("_cascade") == "delete"
        if_match = request.headers.get("if-match")
        result = await self.write(lambda: self.service.delete(t, i, cascade=cascade, if_match=if_match))
        return self.delete_response(request, result)

    def delete_response(self, request: Request, result: WriteResult) -> Response:
        """200 with an OperationOutcome when the client prefers one, else 204; ETag of the tombstone."""
        headers = {"ETag": formats.etag(result.version.version)} if result.version else {}
        if prefer(request, "return") == "OperationOutcome":
            msg = "Deleted" if result.version else "Nothing to delete"
            oo = operation_outcome([Issue("informational", msg, severity="information")])
            return Response(dumps(oo, request), status_code=200, headers=headers, media_type=FHIR_JSON)
        return Response(status_code=204, headers=headers)

    # ---- type level --------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        """POST [type] (``If-None-Exist`` makes it conditional)."""
        media = negotiate(request)
        t = request.path_params["type"]
        self.service.check_type(t)
        body = await self.body(request)
        ine = request.headers.get("if-none-exist")
        result = await self.write(lambda: self.service.create(t, body, if_none_exist=ine))
        return self.write_response(request, result, media)

    async def conditional_update(self, request: Request) -> Response:
        """PUT [type]?[search]."""
        media = negotiate(request)
        t = request.path_params["type"]
        self.service.check_type(t)
        query = urlencode(self.search_params(request))
        body = await self.body(request)
        result = await self.write(
            lambda: self.service.conditional_update(t, query, body, if_match=request.headers.get("if-match"))
        )
        return self.write_response(request, result, media)

    async def conditional_delete(self, request: Request) -> Response:
        """DELETE [type]?[search]."""
        t = request.path_params["type"]
        self.service.check_type(t)
        params = [(k, v) for k, v in self.search_params(request) if k != "_cascade"]
        cascade = request.query_params.get("_cascade") == "delete"
        result = await self.write(
            lambda: self.service.conditional_delete(t, urlencode(params), cascade=cascade)
        )
        return self.delete_response(request, result)

    async def conditional_patch(self, request: Request) -> Response:
        """PATCH [type]?[search]: patch the single match."""
        media = negotiate(request)
        t = request.path_params["type"]
        self.service.check_type(t)
        body = await self.patch_body(request)
        params = self.search_params(request)

        def work() -> WriteResult:
            with self.service.transaction() as tx:
                matches = self.service._lock_and_match(tx, t, urlencode(params))
                if len(matches) != 1:
                    raise FhirError.of(
                        412 if matches else 404, "multiple-matches" if matches else "not-found",
                        f"A conditional patch needs exactly one match; {len(matches)} found",
                    )
                return self.service.patch(t, matches[0][0], body, if_match=request.headers.get("if-match"), tx=tx)

        return self.write_response(request, await self.write(work), media)

    async def search(self, request: Request) -> Response:
        """GET [type]?... , POST [type]/_search, and system search ``GET [base]?_type=...``."""
        media = negotiate(request)
        t = request.path_params.get("type")
        if t is not None:
            self.service.check_type(t)
        form: list[tuple[str, str]] = []
        if request.method == "POST":
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/x-www-form-urlencoded":
                raise FhirError.of(415, "not-supported", "POST _search needs application/x-www-form-urlencoded")
            form = await read_form(request, self.settings.max_body_bytes)
        params = self.search_params(request, form)
        compartment = None
        if "compartment_id" in request.path_params:
            compartment = (request.path_params["compartment_type"], request.path_params["compartment_id"])
            self.service.check_type(compartment[0])
        count_raw = next((v for k, v in params if k == "_count"), None)
        count = None
        if count_raw is not None:
            if not (count_raw.isascii() and count_raw.isdigit()):
                raise FhirError.of(400, "invalid", f"_count must be a non-negative integer, not {count_raw!r}")
            count = int(count_raw)
        offset = self.int_param(request, "_offset") or 0
        cursor = request.query_params.get("_cursor") or None
        strict = prefer(request, "handling") == "strict"
        result: SearchResult = await run_in_threadpool(
            lambda: self.service.search(
                t, params, count=count, offset=offset, strict=strict, compartment=compartment, cursor=cursor
            )
        )
        return Response(dumps(self.searchset(request, result, count, offset, cursor), request), media_type=media)

    def searchset(
        self, request: Request, result: SearchResult, count: int | None, offset: int, cursor: str | None,
    ) -> dict[str, Any]:
        """The searchset Bundle, with self/first/next links carrying only the applied parameters.

        ``next`` carries a keyset cursor (the last row's sort values), so following it stays
        right while resources are written; there is no ``previous`` link for the same reason.
        """
        base = self.base_url(request)
        path = request.url.path
        if path.endswith("/_search"):
            path = path[: -len("/_search")]
        page = self.service.page_size(count)
        applied = [(k, v) for k, v in result.applied if k != "_count"]

        def link(rel: str, paging: list[tuple[str, str]]) -> dict[str, str]:
            q = urlencode([*applied, ("_count", str(page)), *paging])
            url = (f"{base}{path[len(self.settings.base_path):]}?{q}" if self.settings.public_base_url
                   else f"{str(request.base_url).rstrip('/')}{path}?{q}")
            return {"relation": rel, "url": url}

        here = [("_cursor", cursor)] if cursor else [("_offset", str(offset))] if offset else []
        links = [link("self", here)]
        if cursor or offset:
            links.append(link("first", []))
        if result.has_next and result.next_cursor:
            links.append(link("next", [("_cursor", result.next_cursor)]))
        cut = wants_subset(result.summary, result.elements)
        entries: list[dict[str, Any]] = [
            {"fullUrl": f"{base}/{rt}/{rid}",
             "resource": subset(orjson.loads(body), result.summary, result.elements) if cut else orjson.Fragment(body),
             "search": {"mode": "match"}}
            for rt, rid, body in result.entries
        ]
        entries += [
            {"fullUrl": f"{base}/{rt}/{rid}", "resource": orjson.Fragment(body), "search": {"mode": "include"}}
            for rt, rid, body in result.included
        ]
        if issues := search_issues(result):
            entries.append({"resource": operation_outcome(issues), "search": {"mode": "outcome"}})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if result.total is not None:
            bundle["total"] = result.total
        bundle["link"] = links
        if entries:
            bundle["entry"] = entries
        return bundle

    # ---- history ------------------------------------------------------------------------

    async def history(self, request: Request) -> Response:
        """GET [base]/_history, [type]/_history, [type]/[id]/_history."""
        media = negotiate(request)
        t = request.path_params.get("type")
        i = request.path_params.get("id")
        q = request.query_params
        count = self.int_param(request, "_count")
        cursor = self.int_param(request, "_cursor")
        versions, total = await run_in_threadpool(
            lambda: self.service.history(t, i, since=q.get("_since"), at=q.get("_at"), count=count, before_seq=cursor)
        )
        base = self.base_url(request)
        page = self.service.page_size(count)
        kept = [(k, v) for k, v in q.multi_items() if k in ("_since", "_at")]
        self_url = f"{str(request.base_url).rstrip('/')}{request.url.path}"
        links = [{"relation": "self", "url": f"{self_url}?{urlencode([*kept, ('_count', str(page))] + ([('_cursor', str(cursor))] if cursor else []))}"}]
        if len(versions) == page and page > 0:
            nxt = [*kept, ("_count", str(page)), ("_cursor", str(versions[-1].seq))]
            links.append({"relation": "next", "url": f"{self_url}?{urlencode(nxt)}"})
        entries = [history_entry(base, v) for v in versions]
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history", "total": total, "link": links}
        if entries:
            bundle["entry"] = entries
        return Response(dumps(bundle, request), media_type=media)

    # ---- system level -------------------------------------------------------------------

    async def bundle(self, request: Request) -> Response:
        """POST [base] with a batch or transaction Bundle."""
        media = negotiate(request)
        body = await self.body(request)
        response = await self.write(lambda: process_bundle(self.service, body, self.base_url(request)))
        return Response(dumps(response, request), media_type=media)

    async def validate_op(self, request: Request) -> Response:
        """$validate at type and instance level: 200 with an OperationOutcome listing every problem."""
        media = negotiate(request)
        t = request.path_params["type"]
        self.service.check_type(t)
        i = request.path_params.get("id")
        mode = request.query_params.get("mode")
        resource: Any = None
        if request.method == "POST":
            body = await self.body(request)
            if isinstance(body, dict) and body.get("resourceType") == "Parameters":
                for p in body.get("parameter", []):
                    if p.get("name") == "resource":
                        resource = p.get("resource")
                    elif p.get("name") == "mode":
                        mode = p.get("valueCode")
            else:
                resource = body
        if mode == "delete":
            if i is None:
                raise FhirError.of(400, "invalid", "mode=delete needs an instance ($validate on [type]/[id])")
            refs = await run_in_threadpool(self._referrers, t, i)
            issues = [Issue("conflict", f"{t}/{i} is referenced by {a}/{b}") for a, b in refs]
        else:
            if resource is None:
                if i is None:
                    raise FhirError.of(400, "required", "$validate needs a resource in the body")
                resource = orjson.loads((await run_in_threadpool(self.service.read, t, i)).body or b"{}")
            issues = validate(resource, t)
            if i is not None and isinstance(resource, dict) and resource.get("id") not in (None, i):
                issues.append(Issue("invalid", f"The resource's id does not match {i!r}", expression="id"))
        return Response(dumps(operation_outcome(issues), request), media_type=media)

    def _referrers(self, t: str, i: str) -> list[tuple[str, str]]:
        with self.service.store.transaction() as tx:
            return self.service._referrers(tx, t, i)


def history_entry(base: str, v: StoredVersion) -> dict[str, Any]:
    """One history Bundle entry: the version (absent for a delete) with its request and response."""
    method = {"POST": "POST", "PUT": "PUT", "PATCH": "PATCH", "DELETE": "DELETE"}.get(v.method, "PUT")
    entry: dict[str, Any] = {"fullUrl": f"{base}/{v.res_type}/{v.res_id}"}
    if v.body is not None:
        entry["resource"] = orjson.Fragment(v.body)
    entry["request"] = {"method": method, "url": v.res_type if method == "POST" else f"{v.res_type}/{v.res_id}"}
    status = {"POST": "201 Created", "DELETE": "204 No Content"}.get(method, "200 OK")
    entry["response"] = {
        "status": status, "etag": formats.etag(v.version), "lastModified": v.last_updated + "Z",
    }
    return entry
