"""Content negotiation, request bodies and FHIR responses.

Stored resource bodies are served as the bytes the store holds; Bundles embed
them with ``orjson.Fragment`` so nothing is parsed and re-serialised on the way out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response

from salus.fhir.outcome import FhirError, Issue, operation_outcome
from salus.store import StoredVersion

FHIR_JSON = "application/fhir+json"
JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "json", "text/json"}
XML_TYPES = {"application/fhir+xml", "application/xml", "application/xml+fhir", "xml", "text/xml"}
PATCH_JSON = "application/json-patch+json"


def negotiate(request: Request) -> str:
    """The response media type; 406 for XML (not supported yet) or anything else we cannot produce."""
    fmt = request.query_params.get("_format")
    if fmt:
        # an unencoded "+" in the query string arrives as a space: application/fhir+json
        base = fmt.split(";")[0].strip().lower().replace(" ", "+")
        if base in JSON_TYPES:
            return FHIR_JSON if base != "application/json" else "application/json"
        raise FhirError.of(406, "not-supported", f"_format {fmt!r} is not supported: this server speaks FHIR JSON only")
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return FHIR_JSON
    ok = False
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        q = 1.0
        for p in part.split(";")[1:]:
            if p.strip().startswith("q="):
                try:
                    q = float(p.strip()[2:])
                except ValueError:
                    q = 1.0
        if q <= 0:
            continue
        if media in ("application/fhir+json", "application/json+fhir", "*/*", "application/*"):
            return FHIR_JSON
        if media == "application/json":
            ok = True
    if ok:
        return "application/json"
    raise FhirError.of(406, "not-supported", f"Cannot produce any of {accept!r}: this server speaks FHIR JSON only")


async def read_limited(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``max_bytes`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise FhirError.of(413, "too-costly", f"The body is larger than the limit of {max_bytes} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise FhirError.of(413, "too-costly", f"The body is larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_body(request: Request, max_bytes: int, *, allow: tuple[str, ...] = ()) -> Any:
    """The request body parsed as JSON, with 415 for other media types and 413 past ``max_bytes``."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in XML_TYPES:
        raise FhirError.of(415, "not-supported", "FHIR XML is not supported; send application/fhir+json")
    if ctype not in JSON_TYPES and ctype not in allow:
        raise FhirError.of(415, "not-supported", f"Unsupported media type {ctype or '(none)'!r}; send application/fhir+json")
    raw = await read_limited(request, max_bytes)
    if not raw.strip():
        raise FhirError.of(400, "structure", "The request body is empty")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FhirError.of(400, "structure", f"The body is not valid JSON: {exc}") from exc


async def read_form(request: Request, max_bytes: int) -> list[tuple[str, str]]:
    """An ``application/x-www-form-urlencoded`` body as ordered pairs (POST ``_search``), within the size limit."""
    raw = await read_limited(request, max_bytes)
    try:
        return parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError as exc:
        raise FhirError.of(400, "structure", "The form body is not UTF-8") from exc


def pretty(request: Request) -> bool:
    """Whether the client asked for ``_pretty=true``."""
    return request.query_params.get("_pretty", "").lower() == "true"


def dumps(obj: Any, request: Request) -> bytes:
    """Serialise a response document, indented when ``_pretty=true``."""
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 if pretty(request) else 0)


def etag(version: int) -> str:
    """The weak ETag FHIR uses for a version id."""
    return f'W/"{version}"'


def http_date(db_instant: str) -> str:
    """A stored instant as an HTTP date (Last-Modified)."""
    ts = datetime.fromisoformat(db_instant).replace(tzinfo=UTC)
    return format_datetime(ts, usegmt=True)


def modified_at(db_instant: str) -> datetime:
    """A stored instant truncated to the whole second, as Last-Modified states it."""
    return datetime.fromisoformat(db_instant).replace(tzinfo=UTC, microsecond=0)


def parse_http_date(value: str) -> datetime | None:
    """An HTTP date header, or None if unreadable (then the condition is ignored, as RFC 9110 says)."""
    try:
        ts = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def resource_response(
    request: Request, version: StoredVersion, *, status: int = 200, media: str = FHIR_JSON,
    location: str | None = None, prefer_return: str | None = None,
) -> Response:
    """A single resource answer with ETag, Last-Modified and (for writes) Location, honouring ``Prefer: return``."""
    headers = {"ETag": etag(version.version), "Last-Modified": http_date(version.last_updated)}
    if location:
        headers["Location"] = location
    if prefer_return == "minimal":
        return Response(status_code=status, headers=headers)
    if prefer_return == "OperationOutcome":
        oo = operation_outcome([Issue("informational", f"{version.res_type}/{version.res_id} version {version.version} stored", severity="information")])
        return Response(dumps(oo, request), status_code=status, headers=headers, media_type=media)
    body = version.body or b""
    if pretty(request):
        body = dumps(orjson.loads(body), request)
    return Response(body, status_code=status, headers=headers, media_type=media)


def outcome_response(request: Request | None, error: FhirError) -> Response:
    """An error as an OperationOutcome with its status."""
    option = orjson.OPT_INDENT_2 if request is not None and pretty(request) else 0
    return Response(orjson.dumps(error.to_outcome(), option=option), status_code=error.status, media_type=FHIR_JSON)


def prefer(request: Request, name: str) -> str | None:
    """One token of the ``Prefer`` header, e.g. ``return`` -> ``minimal``."""
    for part in request.headers.get("prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"')
    return None
