"""The SMART App Launch 2.0 authorization server: discovery, authorize (PKCE), token, introspect, revoke.

Routes sit under the FHIR base (``{base}/.well-known/smart-configuration``, ``{base}/auth/...``)
because SMART clients discover everything from the FHIR base URL. The login and patient-picker
pages are plain HTML forms (no JavaScript, no cookies): the original authorization request
travels in hidden fields, and after a successful login a short-lived signed *login ticket*
stands for the user until the code is issued, so the password is sent exactly once.

What is deliberately absent: EHR launch (``launch`` parameter), a consent screen (logging in
grants the requested scopes the client is allowed), dynamic client registration and
``plain`` PKCE. Form bodies are parsed here (``application/x-www-form-urlencoded`` only),
so no multipart dependency is needed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from salus.config import Settings
from salus.fhir.outcome import FhirError
from salus.security import keys, tokens
from salus.security.accounts import Client, User, authenticate_user, get_client, get_user, verify_client_secret
from salus.store.base import Store, opened

CODE_TTL = 60
LOGIN_TICKET_TTL = 600
ASSERTION_MAX_LIFETIME = 300  # SMART Backend Services: exp no more than five minutes in the future
ASSERTION_ALGORITHMS = ["RS384", "ES384", "RS256"]
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_PKCE_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
_S256_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_MAX_FORM_BYTES = 64 * 1024
_OAUTH_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "aud", "code_challenge",
                 "code_challenge_method", "nonce")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

SCOPES_SUPPORTED = [
    "openid", "fhirUser", "launch/patient", "offline_access", "online_access",
    "patient/*.rs", "patient/*.cruds", "patient/*.read", "patient/*.write",
    "user/*.rs", "user/*.cruds", "user/*.read", "user/*.write",
    "system/*.rs", "system/*.cruds", "system/*.read", "system/*.write",
]
CAPABILITIES = [
    "launch-standalone", "client-public", "client-confidential-symmetric", "client-confidential-asymmetric",
    "context-standalone-patient", "permission-offline", "permission-online", "permission-patient", "permission-user",
    "permission-v1", "permission-v2", "sso-openid-connect", "authorize-post",
]


class OAuthError(Exception):
    """An RFC 6749 error answer: ``{"error", "error_description"}`` with its HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.error, self.description, self.status, self.headers = error, description, status, headers or {}

    def response(self) -> JSONResponse:
        """The JSON error response, never cached."""
        return JSONResponse({"error": self.error, "error_description": self.description}, status_code=self.status,
                            headers={**NO_STORE, **self.headers})


def _form(body: bytes, content_type: str | None) -> dict[str, str]:
    """An urlencoded form body; a parameter given twice is an error (RFC 6749 section 3.1)."""
    if body and (content_type or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    if len(body) > _MAX_FORM_BYTES:
        raise OAuthError("invalid_request", "the request body is too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as err:
        raise OAuthError("invalid_request", "the body is not UTF-8") from err
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise OAuthError("invalid_request", f"parameter {name!r} is given more than once")
        out[name] = value
    return out


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def _with_query(uri: str, params: dict[str, str | None]) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{uri}{'&' if '?' in uri else '?'}{query}"


# ---- HTML ------------------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}}
label{{display:block;margin:.8rem 0 .2rem}}input,select{{width:100%;padding:.4rem;font-size:1rem}}
button{{margin-top:1rem;padding:.5rem 1.2rem;font-size:1rem}}.error{{color:#a00}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    # the pages must never be framed (clickjacking of the login form) nor cached (they carry tickets)
    headers = {**NO_STORE, "X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=status, headers=headers)


def _hidden(params: dict[str, str]) -> str:
    return "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in params.items()
    )


def _error_page(message: str) -> HTMLResponse:
    # an unknown client or redirect URI: redirecting would make us an open redirector, so say it here
    return _page("Authorization error", f'<p class="error">{html.escape(message)}</p>', 400)


# ---- the server ------------------------------------------------------------------


@dataclass
class AuthServer:
    """The endpoints of the authorization server over one store."""

    settings: Settings
    store: Store
    # told of every login attempt (username, succeeded): the audit trail records both kinds
    on_login: Callable[[str, bool], None] | None = None

    def base_url(self, request: Request) -> str:
        """The FHIR base URL this request reached (the ``aud`` of SMART tokens)."""
        return tokens.fhir_base_url(self.settings, str(request.base_url))

    # -- discovery --

    async def smart_configuration(self, request: Request) -> Response:
        """``/.well-known/smart-configuration`` (SMART App Launch 2.0.0, "SMART configuration")."""
        base = self.base_url(request)
        doc = {
            "issuer": tokens.issuer(self.settings, base),
            "jwks_uri": f"{base}/auth/jwks",
            "authorization_endpoint": f"{base}/auth/authorize",
            "token_endpoint": f"{base}/auth/token",
            "token_endpoint_auth_methods_supported": [
                "private_key_jwt", "client_secret_basic", "client_secret_post", "none",
            ],
            "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
            "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
            # no registration_endpoint: clients are registered by the operator (salus clients add)
            "scopes_supported": SCOPES_SUPPORTED,
            "response_types_supported": ["code"],
            "introspection_endpoint": f"{base}/auth/introspect",
            "revocation_endpoint": f"{base}/auth/revoke",
            "code_challenge_methods_supported": ["S256"],
            "capabilities": CAPABILITIES,
        }
        return JSONResponse(doc, headers={"Cache-Control": "public, max-age=300"})

    async def jwks(self, request: Request) -> Response:
        """The public keys that verify this server's tokens."""
        doc = await run_in_threadpool(self._jwks)
        return JSONResponse(doc, headers={"Cache-Control": "public, max-age=300"})

    def _jwks(self) -> dict[str, Any]:
        keys.active_key(self.store)  # the first request creates the first key
        return keys.jwks(self.store, self.settings.access_token_ttl)

    # -- authorize --

    async def authorize(self, request: Request) -> Response:
        """The authorization endpoint: GET or POST (``authorize-post``), login and patient picker included."""
        if request.method == "POST":
            try:
                params = _form(await request.body(), request.headers.get("content-type"))
            except OAuthError as err:
                return _error_page(err.description)
        else:
            params = dict(request.query_params)
        return await run_in_threadpool(self._authorize, params, request.method == "POST", self.base_url(request))

    def _authorize(self, params: dict[str, str], posted: bool, base: str) -> Response:
        client_id = params.get("client_id", "")
        client = get_client(self.store, client_id) if client_id else None
        if client is None:
            return _error_page("Unknown client: this application is not registered with the server.")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            return _error_page("The redirect_uri is not one registered for this application.")
        state = params.get("state")

        def fail(error: str, description: str) -> Response:
            return RedirectResponse(
                _with_query(redirect_uri, {"error": error, "error_description": description, "state": state}),
                status_code=303 if posted else 302,
            )

        if params.get("response_type") != "code":
            return fail("unsupported_response_type", "response_type must be 'code'")
        challenge = params.get("code_challenge", "")
        if not challenge:
            return fail("invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256")
        if params.get("code_challenge_method") != "S256":
            return fail("invalid_request", "only the S256 code_challenge_method is supported")
        if not _S256_CHALLENGE.match(challenge):
            return fail("invalid_request", "code_challenge is not a base64url SHA-256 value")
        if params.get("aud", "").rstrip("/") != base:
            return fail("invalid_request", f"aud must be this server's FHIR base URL, {base}")
        if params.get("launch"):
            return fail("invalid_request", "EHR launch is not supported: use a standalone launch")
        granted = list(dict.fromkeys(s for s in params.get("scope", "").split() if s in client.scopes))
        if not granted:
            return fail("invalid_scope", "none of the requested scopes is allowed for this application")

        oauth = {k: params[k] for k in _OAUTH_PARAMS if k in params}
        user: User | None = None
        ticket = params.get("login_ticket")
        if posted and ticket:
            user = self._check_ticket(ticket, client.client_id, base)
        elif posted and "username" in params:
            user = authenticate_user(self.store, params.get("username", ""), params.get("password", ""))
            if self.on_login is not None:
                self.on_login(params.get("username", "")[:200], user is not None)
            if user is None:
                return self._login_page(oauth, client, "Unknown username or wrong password.", 401)
        if user is None:
            return self._login_page(oauth, client)

        patient = user.patient_id if user.role == "patient" else None
        if "launch/patient" in granted and user.role != "patient":
            ticket = ticket or self._ticket(user, client.client_id, base)
            chosen = params.get("patient", "").strip()
            if not chosen:
                return self._picker_page(oauth, ticket)
            if not self._patient_exists(chosen):
                return self._picker_page(oauth, ticket, f"There is no patient with id {chosen!r}.")
            patient = chosen

        code = secrets.token_urlsafe(32)
        with self.store.transaction() as tx:
            tx.query(
                "INSERT INTO auth_codes (code_hash, client_id, redirect_uri, code_challenge, scope, username, role, "
                "fhir_user, patient, nonce, expires, used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (tokens.token_hash(code), client.client_id, redirect_uri, challenge, " ".join(granted),
                 user.username, user.role, user.fhir_user, patient, params.get("nonce"), int(time.time()) + CODE_TTL),
            )
        return RedirectResponse(_with_query(redirect_uri, {"code": code, "state": state}),
                                status_code=303 if posted else 302)

    def _ticket(self, user: User, client_id: str, base: str) -> str:
        """A signed, short-lived proof that ``user`` logged in for ``client_id`` (between the form steps)."""
        key = keys.active_key(self.store)
        now = int(time.time())
        claims = {"iss": tokens.issuer(self.settings, base), "aud": f"{base}/auth/authorize", "sub": user.username,
                  "client_id": client_id, "iat": now, "exp": now + LOGIN_TICKET_TTL, "use": "login"}
        return jwt.encode({"alg": key.alg, "kid": key.kid}, claims, key.key, algorithms=[key.alg])

    def _check_ticket(self, ticket: str, client_id: str, base: str) -> User | None:
        keyset, algorithms = keys.verification_keys(self.store, self.settings.access_token_ttl)
        try:
            claims = jwt.decode(ticket, keyset, algorithms=algorithms).claims
        except (JoseError, ValueError):
            return None
        if (claims.get("use") != "login" or claims.get("aud") != f"{base}/auth/authorize"
                or claims.get("client_id") != client_id or not isinstance(claims.get("exp"), int)
                or claims["exp"] <= time.time()):
            return None
        return get_user(self.store, str(claims.get("sub")))

    def _patient_exists(self, patient_id: str) -> bool:
        v = self.store.read("Patient", patient_id)
        return v is not None and not v.deleted

    def _login_page(self, oauth: dict[str, str], client: Client, error: str | None = None,
                    status: int = 200) -> Response:
        err = f'<p class="error">{html.escape(error)}</p>' if error else ""
        body = (
            f"<p>Sign in to let <strong>{html.escape(client.client_id)}</strong> access: "
            f"<code>{html.escape(oauth.get('scope', ''))}</code></p>{err}"
            '<form method="post" action="">'
            f"{_hidden(oauth)}"
            '<label for="username">Username</label>'
            '<input id="username" name="username" autocomplete="username" required autofocus>'
            '<label for="password">Password</label>'
            '<input id="password" name="password" type="password" autocomplete="current-password" required>'
            '<button type="submit">Sign in</button></form>'
        )
        return _page("Sign in to Salus", body, status)

    def _picker_page(self, oauth: dict[str, str], ticket: str, error: str | None = None) -> Response:
        rows = self.store.query(
            "SELECT r.res_id, r.version, v.body FROM resources r JOIN resource_versions v ON v.rid = r.rid "
            "AND v.version = r.version WHERE r.res_type = 'Patient' AND r.deleted = ? ORDER BY r.res_id LIMIT 101",
            (False,),
        )
        err = f'<p class="error">{html.escape(error)}</p>' if error else ""
        if 0 < len(rows) <= 100:
            options = "".join(
                f'<option value="{html.escape(rid)}">'
                f'{html.escape(_patient_label(rid, opened(self.store, "Patient", rid, ver, body) or "{}"))}</option>'
                for rid, ver, body in rows
            )
            field = f'<select id="patient" name="patient" required>{options}</select>'
        else:  # too many to list (or none): type the id, which is then checked
            field = '<input id="patient" name="patient" required placeholder="Patient id">'
        body = (
            f"{err}<form method=\"post\" action=\"\">{_hidden({**oauth, 'login_ticket': ticket})}"
            f'<label for="patient">Patient</label>{field}<button type="submit">Continue</button></form>'
        )
        return _page("Choose a patient", body)

    # -- token --

    async def token(self, request: Request) -> Response:
        """The token endpoint: authorization_code, refresh_token and client_credentials grants."""
        base = self.base_url(request)
        try:
            form = _form(await request.body(), request.headers.get("content-type"))
            result = await run_in_threadpool(self._token, form, request.headers.get("authorization"), base)
        except OAuthError as err:
            return err.response()
        return JSONResponse(result, headers=NO_STORE)

    def _token(self, form: dict[str, str], authorization: str | None, base: str) -> dict[str, Any]:
        grant_type = form.get("grant_type")
        if grant_type not in ("authorization_code", "refresh_token", "client_credentials"):
            raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
        client = self._authenticate(form, authorization, base)
        tokens.prune(self.store)
        if grant_type == "authorization_code":
            return self._code_grant(form, client, base)
        if grant_type == "refresh_token":
            return self._refresh_grant(form, client, base)
        return self._client_credentials(form, client, base)

    def _authenticate(self, form: dict[str, str], authorization: str | None, base: str) -> Client:
        """The client making the request, by whichever single method it used (RFC 6749 section 2.3)."""
        basic = authorization is not None and authorization.lower().startswith("basic ")
        methods = [basic, "client_assertion" in form, "client_secret" in form]
        if sum(methods) > 1:
            raise OAuthError("invalid_request", "use exactly one client authentication method")
        if basic:
            assert authorization is not None
            try:
                raw = base64.b64decode(authorization[6:].strip(), validate=True).decode()
                cid, _, secret = raw.partition(":")
                cid, secret = unquote(cid), unquote(secret)
            except (ValueError, UnicodeDecodeError) as err:
                raise OAuthError("invalid_client", "malformed Basic credentials", 401,
                                 {"WWW-Authenticate": 'Basic realm="salus"'}) from err
            client = get_client(self.store, cid)
            if client is None or client.kind != "confidential" or not verify_client_secret(client, secret):
                raise OAuthError("invalid_client", "client authentication failed", 401,
                                 {"WWW-Authenticate": 'Basic realm="salus"'})
        elif "client_assertion" in form:
            if form.get("client_assertion_type") != JWT_BEARER:
                raise OAuthError("invalid_client", f"client_assertion_type must be {JWT_BEARER}", 401)
            client = self._verify_assertion(form["client_assertion"], f"{base}/auth/token")
        elif "client_secret" in form:
            client = get_client(self.store, form.get("client_id", ""))
            if client is None or client.kind != "confidential" or not verify_client_secret(client, form["client_secret"]):
                raise OAuthError("invalid_client", "client authentication failed", 401)
        else:
            client = get_client(self.store, form.get("client_id", ""))
            if client is None:
                raise OAuthError("invalid_client", "unknown client_id", 401)
            if client.kind != "public":
                raise OAuthError("invalid_client", "this client must authenticate", 401)
        if form.get("client_id") not in (None, client.client_id):
            raise OAuthError("invalid_client", "client_id does not match the client's credentials", 401)
        return client

    def _verify_assertion(self, assertion: str, token_url: str) -> Client:
        """A SMART Backend Services client assertion (``private_key_jwt``), each ``jti`` accepted once."""
        def bad(why: str) -> OAuthError:
            return OAuthError("invalid_client", f"client assertion rejected: {why}", 401)

        try:
            header, claims = tokens.unverified(assertion)
        except FhirError as err:
            raise bad("not a signed JWT") from err
        iss = claims.get("iss")
        client = get_client(self.store, iss) if isinstance(iss, str) else None
        if client is None or client.kind != "backend" or not client.jwks:
            raise bad("the issuer is not a registered client with keys")
        if header.get("alg") not in ASSERTION_ALGORITHMS:
            raise bad(f"algorithm {header.get('alg')!r} is not accepted (use RS384 or ES384)")
        try:
            claims = jwt.decode(assertion, KeySet.import_key_set(client.jwks), algorithms=ASSERTION_ALGORITHMS).claims
        except (JoseError, ValueError) as err:
            raise bad("the signature does not verify with the client's registered keys") from err
        now = time.time()
        if claims.get("sub") != iss:
            raise bad("sub must equal iss (the client_id)")
        aud = claims.get("aud")
        if token_url not in (aud if isinstance(aud, list) else [aud]):
            raise bad(f"aud must be the token endpoint {token_url}")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= now:
            raise bad("expired or without exp")
        if exp > now + ASSERTION_MAX_LIFETIME + tokens.CLOCK_SKEW:
            raise bad("exp is more than five minutes in the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise bad("jti is missing")
        with self.store.transaction() as tx:
            fresh = tx.query(
                "INSERT INTO auth_assertions (client_id, jti, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (client_id, jti) DO NOTHING RETURNING jti",
                (client.client_id, jti, int(exp)),
            )
        if not fresh:
            raise bad("this jti was already used")
        return client

    def _code_grant(self, form: dict[str, str], client: Client, base: str) -> dict[str, Any]:
        code = form.get("code", "")
        h = tokens.token_hash(code)
        with self.store.transaction() as tx:
            rows = tx.query(
                "UPDATE auth_codes SET used = 1 WHERE code_hash = ? AND used = 0 RETURNING client_id, redirect_uri, "
                "code_challenge, scope, username, role, fhir_user, patient, nonce, expires",
                (h,),
            )
        if not rows:
            if self.store.query("SELECT 1 FROM auth_codes WHERE code_hash = ?", (h,)):
                # a code used twice was probably intercepted: revoke what the first use got (RFC 6749 4.1.2)
                tokens.revoke_grant(self.store, h)
                raise OAuthError("invalid_grant", "the authorization code was already used")
            raise OAuthError("invalid_grant", "unknown or expired authorization code")
        cid, redirect_uri, challenge, scope, username, role, fhir_user, patient, nonce, expires = rows[0]
        if cid != client.client_id:
            raise OAuthError("invalid_grant", "the code was issued to another client")
        if int(expires) <= time.time():
            raise OAuthError("invalid_grant", "the authorization code has expired")
        if form.get("redirect_uri") != redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
        verifier = form.get("code_verifier", "")
        if not _PKCE_VERIFIER.match(verifier) or not hmac.compare_digest(_s256(verifier), challenge):
            raise OAuthError("invalid_grant", "the PKCE code_verifier does not match the code_challenge")
        grant = tokens.Grant(h, client.client_id, username, scope, role, fhir_user, patient)
        return self._issue(grant, base, nonce=nonce)

    def _refresh_grant(self, form: dict[str, str], client: Client, base: str) -> dict[str, Any]:
        value = form.get("refresh_token", "")
        rows = self.store.query("SELECT scope FROM auth_tokens WHERE token_id = ? AND kind = 'refresh'",
                                (tokens.token_hash(value),))
        requested = form.get("scope")
        if rows and requested is not None and not set(requested.split()) <= set(rows[0][0].split()):
            raise OAuthError("invalid_scope", "a refresh can narrow the granted scopes, never widen them")
        grant = tokens.use_refresh_token(self.store, value, client.client_id)
        if grant is None:
            raise OAuthError("invalid_grant", "the refresh token is unknown, expired, revoked or not this client's")
        scope = " ".join(dict.fromkeys(requested.split())) if requested else grant.scope
        return self._issue(grant, base, access_scope=scope)

    def _client_credentials(self, form: dict[str, str], client: Client, base: str) -> dict[str, Any]:
        if client.kind != "backend":
            raise OAuthError("unauthorized_client", "client_credentials is for backend clients (private_key_jwt)")
        requested = form.get("scope", "").split()
        if not requested:
            raise OAuthError("invalid_scope", "scope is required (system/... scopes)")
        if any(not s.startswith("system/") for s in requested):
            raise OAuthError("invalid_scope", "backend services may request system/ scopes only")
        granted = [s for s in dict.fromkeys(requested) if s in client.scopes]
        if not granted:
            raise OAuthError("invalid_scope", "none of the requested scopes is allowed for this client")
        grant = tokens.Grant(secrets.token_urlsafe(16), client.client_id, client.client_id, " ".join(granted),
                             role="integration")
        return self._issue(grant, base, refresh=False)

    def _issue(self, grant: tokens.Grant, base: str, *, nonce: str | None = None, access_scope: str | None = None,
               refresh: bool = True) -> dict[str, Any]:
        """The SMART token response for ``grant`` (access token, and refresh/ID tokens when granted)."""
        scope = access_scope or grant.scope
        access = tokens.issue_access_token(self.store, self.settings, base,
                                           replace(grant, scope=scope))
        out: dict[str, Any] = {"access_token": access.token, "token_type": "Bearer",
                               "expires_in": access.expires_in, "scope": scope}
        scopes = set(scope.split())
        if grant.patient and grant.role != "integration":
            out["patient"] = grant.patient
        if {"openid", "fhirUser"} <= scopes and grant.fhir_user:
            out["id_token"] = tokens.issue_id_token(self.store, self.settings, base, subject=grant.subject,
                                                    client_id=grant.client_id, fhir_user=grant.fhir_user, nonce=nonce)
        if refresh and {"offline_access", "online_access"} & set(grant.scope.split()):
            out["refresh_token"] = tokens.issue_refresh_token(self.store, self.settings, grant)
        return out

    # -- introspect and revoke --

    async def introspect(self, request: Request) -> Response:
        """RFC 7662 introspection, for a resource server holding a client credential or a token of ours.

        Rule: the caller is either a confidential or backend client authenticated as at the token
        endpoint, or presents ``Authorization: Bearer`` with a live access token of this server.
        Public clients cannot introspect (they have no credential to prove who they are).
        """
        base = self.base_url(request)
        try:
            form = _form(await request.body(), request.headers.get("content-type"))
            result = await run_in_threadpool(self._introspect, form, request.headers.get("authorization"), base)
        except OAuthError as err:
            return err.response()
        return JSONResponse(result, headers=NO_STORE)

    def _introspect(self, form: dict[str, str], authorization: str | None, base: str) -> dict[str, Any]:
        bearer = tokens.bearer_token(authorization)
        if bearer is not None:
            try:
                tokens.verify_access_token(bearer, store=self.store, settings=self.settings, base_url=base)
            except FhirError as err:
                raise OAuthError("invalid_client", "the bearer token is not valid", 401,
                                 {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from err
        else:
            client = self._authenticate(form, authorization, base)
            if client.kind == "public":
                raise OAuthError("invalid_client", "public clients cannot introspect tokens", 401)
        if "token" not in form:
            raise OAuthError("invalid_request", "token is required")
        return tokens.introspect(self.store, self.settings, base, form["token"])

    async def revoke(self, request: Request) -> Response:
        """RFC 7009 revocation: 200 whether or not the token was known (so it reveals nothing)."""
        base = self.base_url(request)
        try:
            form = _form(await request.body(), request.headers.get("content-type"))
            await run_in_threadpool(self._revoke, form, request.headers.get("authorization"), base)
        except OAuthError as err:
            return err.response()
        return Response(status_code=200, headers=NO_STORE)

    def _revoke(self, form: dict[str, str], authorization: str | None, base: str) -> None:
        client = self._authenticate(form, authorization, base)
        if "token" not in form:
            raise OAuthError("invalid_request", "token is required")
        tokens.revoke_token(self.store, form["token"], client.client_id)


def _patient_label(rid: str, body: str | None) -> str:
    try:
        name = (json.loads(body or "{}").get("name") or [{}])[0]
        text = name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip()
    except (ValueError, AttributeError, TypeError, IndexError):
        text = ""
    return f"{text} ({rid})" if text else rid


def auth_routes(
    settings: Settings, store: Store, on_login: Callable[[str, bool], None] | None = None,
) -> list[BaseRoute]:
    """The authorization server's routes, to mount at the server root (paths include the FHIR base path).

    The ``auth/`` endpoints sit under one Mount, tried before the FHIR routes that would take
    ``auth/token`` as a type and an id (salus.api.app): one prefix test costs every FHIR request less than five.
    """
    server = AuthServer(settings, store, on_login)
    b = settings.base_path
    return [
        Route(f"{b}/.well-known/smart-configuration", server.smart_configuration, methods=["GET"]),
        Mount(f"{b}/auth", routes=[
            Route("/jwks", server.jwks, methods=["GET"]),
            Route("/authorize", server.authorize, methods=["GET", "POST"]),
            Route("/token", server.token, methods=["POST"]),
            Route("/introspect", server.introspect, methods=["POST"]),
            Route("/revoke", server.revoke, methods=["POST"]),
        ]),
    ]
