"""The framework ceiling: uvicorn + Starlette answering a constant Patient, no store, no validation."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY = b'{"resourceType":"Patient","id":"x","meta":{"versionId":"1"},"name":[{"family":"Baseline"}]}'


async def constant(request: Request) -> Response:
    """Serve the same bytes for any path: what a read costs with no work behind it."""
    return Response(BODY, media_type="application/fhir+json")


app = Starlette(routes=[Route("/{path:path}", constant, methods=["GET", "POST"])])
