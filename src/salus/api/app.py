"""The ASGI application: routes under the FHIR base path, errors as OperationOutcomes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from salus.api.capability import capability_statement
from salus.api.formats import FHIR_JSON, dumps, negotiate, outcome_response
from salus.api.openapi import api_docs, openapi_endpoint
from salus.api.operations import Operations
from salus.api.rest import RestApi
from salus.api.security import SecurityMiddleware
from salus.config import Settings
from salus.fhir.outcome import FhirError
from salus.security.smart import auth_routes
from salus.service import FhirService
from salus.store import open_configured

log = logging.getLogger("salus.api")


class ResourceTypeConvertor(Convertor[str]):
    """A path segment shaped like a resource type: R4's all start with a capital letter."""

    regex = "[A-Z][A-Za-z]*"

    def convert(self, value: str) -> str:
        """The segment itself."""
        return value

    def to_string(self, value: str) -> str:
        """The segment itself."""
        return value


register_url_convertor("resource_type", ResourceTypeConvertor())


def create_app(settings: Settings | None = None, service: FhirService | None = None) -> Starlette:
    """Build the app over a service (or over the store the settings name)."""
    settings = settings or Settings.from_env()
    if service is None:
        service = FhirService(open_configured(settings), settings)
    api = RestApi(service)
    ops = Operations(api)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    b = settings.base_path

    async def metadata(request: Request) -> Response:
        media = negotiate(request)
        with api.service.search_parameters.active():  # it lists the custom parameters too
            cs = capability_statement(api.base_url(request), started, smart=settings.auth == "smart")
        return Response(dumps(cs, request), media_type=media)

    async def not_allowed(request: Request) -> Response:
        raise FhirError.of(405, "not-supported", f"{request.method} is not allowed on {request.url.path}")

    async def root(request: Request) -> Response:
        return RedirectResponse(f"{b}/metadata")

    on_login = service.audit.login if service.audit is not None else None
    routes = [
        # Starlette tries routes in order: the read, the hottest route, comes first, after the only two
        # two-segment GET paths it would otherwise take (a type's history, a type's $reindex). Its type
        # segment starts with a capital, as every resource type does, so it passes over the authorization
        # server's paths (auth/jwks, .well-known/...), which come next
        Route(f"{b}/{{type}}/_history", api.history, methods=["GET"]),
        Route(f"{b}/{{type}}/$reindex", not_allowed, methods=["GET", "PUT", "DELETE", "PATCH"]),
        Route(f"{b}/{{type:resource_type}}/{{id}}", api.read, methods=["GET"]),
        *(auth_routes(settings, service.store, on_login) if settings.auth == "smart" else []),
        # anything else read as a type and an id: an unknown type's 404 OperationOutcome, not a 405
        Route(f"{b}/{{type}}/{{id}}", api.read, methods=["GET"]),
        Route("/", root, methods=["GET"]),
        Route(f"{b}/metadata", metadata, methods=["GET"]),
        Route(f"{b}/metadata", not_allowed, methods=["POST", "PUT", "DELETE", "PATCH"]),
        Route(f"{b}/openapi.json", openapi_endpoint(api.base_url), methods=["GET"]),
        Route(f"{b}/api-docs", api_docs, methods=["GET"]),
        Route(f"{b}", api.bundle, methods=["POST"]),
        Route(f"{b}", api.search, methods=["GET"]),
        Route(f"{b}/", api.bundle, methods=["POST"]),
        Route(f"{b}/_search", api.search, methods=["POST"]),
        Route(f"{b}/_history", api.history, methods=["GET"]),
        Route(f"{b}/$reindex", ops.reindex, methods=["POST"]),
        # else the generic {type} and {type}/{id} routes would answer them as an unknown type or id
        Route(f"{b}/$reindex", not_allowed, methods=["GET", "PUT", "DELETE", "PATCH"]),
        # GDPR portability and erasure: before {type}/{id}/... and the compartment search, which would take them
        Route(f"{b}/Patient/{{id}}/$everything", ops.everything, methods=["GET", "POST"]),
        Route(f"{b}/Patient/{{id}}/$everything", not_allowed, methods=["PUT", "DELETE", "PATCH"]),
        Route(f"{b}/Patient/{{id}}/$erase", ops.erase, methods=["POST"]),
        Route(f"{b}/Patient/{{id}}/$erase", not_allowed, methods=["GET", "PUT", "DELETE", "PATCH"]),
        Route(f"{b}/{{type}}", api.search, methods=["GET"]),
        Route(f"{b}/{{type}}", api.create, methods=["POST"]),
        Route(f"{b}/{{type}}", api.conditional_update, methods=["PUT"]),
        Route(f"{b}/{{type}}", api.conditional_delete, methods=["DELETE"]),
        Route(f"{b}/{{type}}", api.conditional_patch, methods=["PATCH"]),
        Route(f"{b}/{{type}}/_search", api.search, methods=["POST"]),
        Route(f"{b}/{{type}}/$validate", api.validate_op, methods=["POST"]),
        Route(f"{b}/{{type}}/$reindex", ops.reindex, methods=["POST"]),
        Route(f"{b}/{{type}}/{{id}}", api.update, methods=["PUT"]),
        Route(f"{b}/{{type}}/{{id}}", api.patch, methods=["PATCH"]),
        Route(f"{b}/{{type}}/{{id}}", api.delete, methods=["DELETE"]),
        Route(f"{b}/{{type}}/{{id}}/$validate", api.validate_op, methods=["GET", "POST"]),
        Route(f"{b}/{{type}}/{{id}}/$reindex", ops.reindex, methods=["POST"]),
        Route(f"{b}/{{type}}/{{id}}/_history", api.history, methods=["GET"]),
        Route(f"{b}/{{type}}/{{id}}/_history/{{vid}}", api.vread, methods=["GET"]),
        Route(f"{b}/{{compartment_type}}/{{compartment_id}}/{{type}}", api.search, methods=["GET"]),
    ]

    async def fhir_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FhirError)
        return outcome_response(request, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        err = FhirError.of(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")
        resp = outcome_response(request, err)
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return Response(
            dumps(FhirError.of(500, "exception", "Internal server error").to_outcome(), request),
            status_code=500, media_type=FHIR_JSON,
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.close()  # what is still buffered (audit events of reads) reaches the database

    app = Starlette(
        lifespan=lifespan,
        routes=routes,
        middleware=[Middleware(
            SecurityMiddleware, settings=settings, store=service.store,
            on_break_glass=service.audit.break_glass_declared if service.audit is not None else None,
        )],
        exception_handlers={FhirError: fhir_error, HTTPException: http_error, Exception: server_error},
    )
    app.state.service = service
    app.state.settings = settings
    return app
