"""FHIR operations beyond the RESTful interactions: ``$reindex`` at system, type and instance level.

``$reindex`` rebuilds the search index rows of current resources, which is what
makes a SearchParameter added (or changed) on this server usable on the
resources stored before it. It answers a Parameters resource: ``reindexed``
(the count), one ``type`` part per resource type, and the parameters that
became ``ready`` or are still ``pending``. It runs to completion before it
answers; on a large system use ``salus reindex``, which shows its progress and
is bound by no HTTP timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from salus.api.formats import dumps, negotiate
from salus.fhir.outcome import FhirError

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
