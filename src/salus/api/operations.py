"""FHIR operations beyond the RESTful interactions: ``$reindex``, and the GDPR pair ``$everything``/``$erase``.

``$reindex`` rebuilds the search index rows of current resources, which is what
makes a SearchParameter added (or changed) on this server usable on the
resources stored before it. It answers a Parameters resource: ``reindexed``
(the count), one ``type`` part per resource type, and the parameters that
became ``ready`` or are still ``pending``. It runs to completion before it
answers; on a large system use ``salus reindex``, which shows its progress and
is bound by no HTTP timeout.

``Patient/[id]/$everything`` (R4 patient-operation-everything) is data
portability (GDPR Art. 20): the Patient and its compartment as a searchset,
paged with the search engine's keyset cursor. ``Patient/[id]/$erase`` is the
right to erasure (Art. 17), for administrators only; ``salus.service.erasure``
says exactly what it removes. docs/security.md has examples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import anyio.to_thread
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from salus.api.formats import dumps, negotiate
from salus.fhir.definitions import is_resource_type, patient_compartment
from salus.fhir.outcome import FhirError, Issue, operation_outcome
from salus.search.engine import SearchResult
from salus.service import fhir_instant, parse_instant

if TYPE_CHECKING:
    from salus.api.rest import RestApi


class Operations:
    """Operation handlers, beside the REST API whose service and settings they share."""

    def __init__(self, api: RestApi) -> None:
        self.api = api
        self.service = api.service

    async def reindex(self, request: Request) -> Response:
        """POST [base]/$reindex, [type]/$reindex and [type]/[id]/$reindex."""
        media = negotiate(request)
        t = request.path_params.get("type")
        i = request.path_params.get("id")
        if t is not None:
            self.service.check_type(t)
            types: list[str] | None = [t]
        else:
            types = await self._types(request)
        # not the write limiter: each batch is its own short transaction, and other writes go on between them
        report = await anyio.to_thread.run_sync(lambda: self.service.reindex(types, i))
        return Response(dumps(report.to_parameters(), request), media_type=media)

    async def _types(self, request: Request) -> list[str] | None:
        """The types a system-level ``$reindex`` names in its optional Parameters body (``type``, repeatable)."""
        if request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers:
            return None
        body: Any = await self.api.body(request)
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise FhirError.of(400, "structure", "$reindex takes a Parameters resource (or no body)")
        types = []
        for p in body.get("parameter") or []:
            value = p.get("valueCode", p.get("valueString")) if isinstance(p, dict) else None
            if not isinstance(p, dict) or p.get("name") != "type" or not isinstance(value, str):
                raise FhirError.of(400, "invalid", "$reindex takes only 'type' parameters (valueCode), e.g. Patient")
            self.service.check_type(value)
            types.append(value)
        return types or None

    # ---- GDPR: portability and erasure ------------------------------------------------------

    async def everything(self, request: Request) -> Response:
        """GET/POST Patient/[id]/$everything: the Patient and its compartment, ``_since``, ``_type``, ``_count``.

        One system search over the compartment (``service.search`` with no type): the
        authorization checks and the audit trail of searches apply to every page, and
        its keyset cursor keeps ``next`` links right while resources are written.
        Referenced resources outside the compartment (Organization, Practitioner,
        Medication...) are not added: fetch them by their references.
        """
        media = negotiate(request)
        pid = request.path_params["id"]
        args = await self._everything_args(request)
        since, count, cursor = args.get("_since"), args.get("_count"), request.query_params.get("_cursor") or None
        members = {"Patient", *patient_compartment()}
        types: list[str] = []
        issues: list[Issue] = []
        for t in (x.strip() for x in args.get("_type", "").split(",") if x.strip()):
            if not is_resource_type(t):
                raise FhirError.of(400, "invalid", f"'{t}' in _type is not a resource type")
            if t in members:
                types.append(t)
            else:
                issues.append(Issue("not-supported", f"{t} is not in the Patient compartment: $everything has none",
                                    severity="warning"))
        issues += [Issue("not-supported", f"{name} is not supported by $everything and was ignored", severity="warning")
                   for name in ("start", "end") if name in args]
        page_size: int | None = None
        if count is not None:
            if not (count.isascii() and count.isdigit()):
                raise FhirError.of(400, "invalid", f"_count must be a non-negative integer, not {count!r}")
            page_size = int(count)
        query: list[tuple[str, str]] = []
        if types:
            query.append(("_type", ",".join(dict.fromkeys(types))))
        if since:
            query.append(("_lastUpdated", "ge" + fhir_instant(parse_instant(since, "_since"))))

        def run() -> SearchResult:
            self.service.read("Patient", pid)  # 404, 410 or 403 before anything else is looked at
            if args.get("_type") and not types:
                return SearchResult([], total=0)  # only types outside the compartment: nothing can match
            return self.service.search(None, query, count=page_size, compartment=("Patient", pid), cursor=cursor)

        result = await run_in_threadpool(run)
        bundle = self.api.searchset(request, result, page_size, 0, cursor)
        if issues and not cursor:
            bundle.setdefault("entry", []).append({"resource": operation_outcome(issues), "search": {"mode": "outcome"}})
        bundle["link"] = self._everything_links(request, pid, args, result, page_size, cursor)
        return Response(dumps(bundle, request), media_type=media)

    async def _everything_args(self, request: Request) -> dict[str, str]:
        """$everything's parameters: the query string, and for POST the Parameters body (which wins)."""
        args = {k: v for k, v in request.query_params.items() if k in ("_since", "_type", "_count", "start", "end")}
        if request.method != "POST" or (
            request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers
        ):
            return args
        body: Any = await self.api.body(request)
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise FhirError.of(400, "structure", "$everything takes a Parameters resource (or no body)")
        types: list[str] = []
        for p in body.get("parameter") or []:
            name = p.get("name") if isinstance(p, dict) else None
            value = next((v for k, v in p.items() if k.startswith("value")), None) if isinstance(p, dict) else None
            if name not in ("_since", "_type", "_count", "start", "end") or value is None:
                raise FhirError.of(400, "invalid", "$everything takes _since, _type, _count, start and end parameters")
            if name == "_type":
                types.append(str(value))
            else:
                args[name] = str(value)
        if types:
            args["_type"] = ",".join(types)
        return args

    def _everything_links(
        self, request: Request, pid: str, args: dict[str, str], result: SearchResult, count: int | None,
        cursor: str | None,
    ) -> list[dict[str, str]]:
        """self/first/next as GET URLs of the operation (a POST's parameters move into them)."""
        url = f"{self.api.base_url(request)}/Patient/{pid}/$everything"
        kept = [(k, args[k]) for k in ("_since", "_type") if k in args]
        kept.append(("_count", str(self.service.page_size(count))))
        links = [{"relation": "self", "url": f"{url}?{urlencode([*kept, *([('_cursor', cursor)] if cursor else [])])}"}]
        if cursor:
            links.append({"relation": "first", "url": f"{url}?{urlencode(kept)}"})
        if result.has_next and result.next_cursor:
            links.append({"relation": "next", "url": f"{url}?{urlencode([*kept, ('_cursor', result.next_cursor)])}"})
        return links

    async def erase(self, request: Request) -> Response:
        """POST Patient/[id]/$erase: GDPR erasure, administrators only; a Parameters resource of the counts."""
        media = negotiate(request)
        pid = request.path_params["id"]
        report = await self.api.write(lambda: self.service.erase_patient(pid))
        return Response(dumps(report.to_parameters(), request), media_type=media)
