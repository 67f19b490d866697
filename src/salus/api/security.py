"""The door's half of security: who is calling, set once per request for every layer below.

With ``auth = "off"`` (the loopback default) every request acts as the
unrestricted anonymous principal. With ``auth = "smart"`` every FHIR request
needs a bearer access token of this server (or of the configured OpenID
Connect provider); discovery, the CapabilityStatement, the API description and
the authorization server's own endpoints stay public, as SMART requires.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from salus.api.formats import outcome_response
from salus.config import Settings
from salus.fhir.outcome import FhirError
from salus.security.principal import ANONYMOUS, Principal, RequestContext, bind, unbind
from salus.security.tokens import NeedsDatabase, bearer_token, fhir_base_url, verify_access_token
from salus.store import Store

log = logging.getLogger("salus.security")

# nobody: what an unauthenticated caller of a public endpoint acts as when security is on
NOBODY = Principal(subject="anonymous", kind="anonymous")
BREAK_GLASS_HEADER = "x-salus-break-glass"
_READ = {name.encode(): name for name in ("authorization", "host", "user-agent", BREAK_GLASS_HEADER)}


class SecurityMiddleware:
    """Resolve the caller of each HTTP request into a ``RequestContext`` (pure ASGI, no buffering)."""

    def __init__(
        self, app: ASGIApp, settings: Settings, store: Store,
        on_break_glass: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.on_break_glass = on_break_glass
        self.settings = settings
        self.store = store
        b = settings.base_path
        self.public_exact = {"/", f"{b}/metadata", f"{b}/openapi.json", f"{b}/api-docs",
                             f"{b}/.well-known/smart-configuration"}
        self.public_prefix = f"{b}/auth/"
        self.needs_context = settings.auth != "off" or settings.audit_enabled
        self._bases: dict[tuple[object, ...], str] = {}

    def _public(self, path: str) -> bool:
        return path in self.public_exact or path.startswith(self.public_prefix)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate, then run the app as the caller; a bad or missing token is a 401 OperationOutcome."""
        if scope["type"] != "http" or not self.needs_context:
            # security and audit off: every request is the anonymous caller, which is also what a request
            # without a context reads (salus.security.principal.current), so nothing needs doing
            await self.app(scope, receive, send)
            return
        # the raw ASGI headers this reads (names lower-cased: not every client does; the first of repeated
        # ones): a starlette Request, its Headers and URL objects cost more than the token check they serve
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            name = _READ.get(k) or _READ.get(k.lower())
            if name is not None and name not in headers:
                headers[name] = v.decode("latin-1")
        try:
            principal = await self._principal(scope, headers)
        except FhirError as err:
            request = Request(scope)
            response = outcome_response(request, err)
            detail = err.issues[0].diagnostics if err.issues else "authentication required"
            response.headers["WWW-Authenticate"] = (
                f'Bearer realm="salus", error="invalid_token", error_description="{_quote(detail)}"'
                if headers.get("authorization") else 'Bearer realm="salus"'
            )
            await response(scope, receive, send)
            return
        client = scope.get("client")
        ctx = RequestContext(
            principal=principal,
            source=client[0] if client else None,
            user_agent=headers.get("user-agent"),
            purpose="BTG" if principal.break_glass else None,
        )
        bound = bind(ctx)
        try:
            if principal.break_glass:
                # an emergency access is never quiet: an alert in the log and an entry in the audit trail
                log.warning("BREAK-THE-GLASS by %s (%s): %s %s; reason: %s", principal.subject, principal.role,
                            scope["method"], scope["path"], headers.get(BREAK_GLASS_HEADER))
                if self.on_break_glass is not None:
                    self.on_break_glass(headers.get(BREAK_GLASS_HEADER, "")[:500])
            await self.app(scope, receive, send)
        finally:
            unbind(bound)

    def _base_url(self, scope: Scope, headers: dict[str, str]) -> str:
        """The FHIR base URL the request came to (the tokens' audience), remembered per host."""
        server = scope.get("server")
        key = (scope.get("scheme"), headers.get("host"), scope.get("root_path", ""), tuple(server) if server else None)
        base = self._bases.get(key)
        if base is None:
            if len(self._bases) >= 256:  # the Host header is the caller's to choose
                self._bases.clear()
            base = self._bases[key] = fhir_base_url(self.settings, str(Request(scope).base_url))
        return base

    async def _principal(self, scope: Scope, headers: dict[str, str]) -> Principal:
        if self.settings.auth == "off":
            return ANONYMOUS
        token = bearer_token(headers.get("authorization"))
        if token is None:
            if self._public(scope["path"]):
                return NOBODY
            raise FhirError.of(401, "login", "This server requires a SMART on FHIR bearer access token")
        base = self._base_url(scope, headers)
        try:
            # a token seen in the last seconds needs no database read: checked here, without a thread hop
            principal = verify_access_token(token, store=self.store, settings=self.settings, base_url=base,
                                            offline=True)
        except NeedsDatabase:
            principal = await run_in_threadpool(
                verify_access_token, token, store=self.store, settings=self.settings, base_url=base
            )
        reason = headers.get(BREAK_GLASS_HEADER)
        if reason:
            principal = replace(principal, break_glass=True)
        return principal


def _quote(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")
