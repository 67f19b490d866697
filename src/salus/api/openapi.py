"""An OpenAPI 3.0 description of the REST API, generated from the same definitions as the CapabilityStatement."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache, lru_cache
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from salus import __version__
from salus.api.capability import answers
from salus.api.formats import FHIR_JSON, PATCH_JSON, dumps
from salus.fhir.definitions import r4, search_parameters

OPENAPI_VERSION = "3.0.3"
FORM = "application/x-www-form-urlencoded"
# what every FHIR answer may be served as (application/json when the client asks for it)
JSON_MEDIA = (FHIR_JSON, "application/json")
SPEC = "http://hl7.org/fhir/R4"

# error statuses the server answers with an OperationOutcome, as reusable responses
ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Bad request: an invalid parameter, malformed JSON or a resource that is not valid"),
    403: ("Forbidden", "Forbidden: the caller's scopes or role do not allow it"),
    404: ("NotFound", "Not found: the resource, version or resource type is not known"),
    405: ("MethodNotAllowed", "The method is not allowed on this path"),
    406: ("NotAcceptable", "Cannot produce the requested format (FHIR JSON only)"),
    409: ("Conflict", "Conflict: the resource is still referenced (see _cascade=delete)"),
    410: ("Gone", "The resource (or this version of it) was deleted"),
    412: ("PreconditionFailed", "If-Match did not match the current version, or a conditional request matched several"),
    413: ("PayloadTooLarge", "The body is larger than the configured limit"),
    415: ("UnsupportedMediaType", "The body's media type is not supported (FHIR XML is not)"),
    422: ("UnprocessableEntity", "The resource breaks a rule (e.g. a reference to a resource that does not exist)"),
}

READ_ERRORS = (404, 406)
WRITE_ERRORS = (400, 404, 406, 412, 413, 415, 422)
DELETE_ERRORS = (400, 404, 409, 412)
SEARCH_ERRORS = (400, 406)


def _ref(kind: str, name: str) -> dict[str, str]:
    """A JSON reference into ``components``, so the document repeats nothing large."""
    return {"$ref": f"#/components/{kind}/{name}"}


def _param(name: str, where: str, description: str, schema: dict[str, Any] | None = None,
           required: bool = False) -> dict[str, Any]:
    """One Parameter Object (query values are strings unless a schema says otherwise)."""
    p: dict[str, Any] = {"name": name, "in": where, "description": description, "schema": schema or {"type": "string"}}
    if required or where == "path":
        p["required"] = True
    return p


def supported_search_parameters(resource_type: str) -> list[tuple[str, dict[str, Any]]]:
    """The type's search parameters the server really indexes: the same selection as the CapabilityStatement."""
    return [
        (code, p) for code, p in sorted(search_parameters(resource_type).items()) if answers(resource_type, code, p)
    ]


def _common_parameters() -> dict[str, dict[str, Any]]:
    """Parameters shared by many operations: formatting, paging, history, result control and headers."""
    integer = {"type": "integer", "minimum": 0}
    instant = {"type": "string", "format": "date-time"}
    return {
        "_format": _param("_format", "query", "Response format; JSON only (XML answers 406)",
                          {"type": "string", "enum": ["json", "application/json", "application/fhir+json"]}),
        "_pretty": _param("_pretty", "query", "Indent the answer", {"type": "boolean"}),
        "_count": _param("_count", "query", "Page size (bounded by the server's maximum)", integer),
        "_offset": _param("_offset", "query", "Search paging: the number of matches to skip (from the next link)", integer),
        "_cursor": _param("_cursor", "query", "History paging: the cursor carried by the next link", integer),
        "_since": _param("_since", "query", "Only versions written after this instant", instant),
        "_at": _param("_at", "query", "The versions current at this instant", instant),
        "_cascade": _param("_cascade", "query", "Also delete the resources that reference this one",
                           {"type": "string", "enum": ["delete"]}),
        "_sort": _param("_sort", "query", "Comma-separated parameters to sort on, '-' for descending"),
        "_include": _param("_include", "query", "Source:parameter[:Target] to include (_include:iterate also works)"),
        "_revinclude": _param("_revinclude", "query", "Source:parameter[:Target] of resources referring to the matches"),
        "_summary": _param("_summary", "query", "Return a summary of each match",
                           {"type": "string", "enum": ["true", "false", "text", "data", "count"]}),
        "_elements": _param("_elements", "query", "Comma-separated elements to return"),
        "_total": _param("_total", "query", "Whether to count the matches",
                         {"type": "string", "enum": ["none", "estimate", "accurate"]}),
        "_type": _param("_type", "query", "System search: comma-separated resource types to search"),
        "system._id": _param("_id", "query", "token search parameter: the logical id"),
        "system._lastUpdated": _param("_lastUpdated", "query", "date search parameter: when the version was written"),
        "everything._since": _param("_since", "query", "$everything: only resources updated at or after this instant",
                                    instant),
        "everything._type": _param("_type", "query", "$everything: comma-separated resource types to return"),
        "everything._cursor": _param("_cursor", "query", "$everything paging: the cursor carried by the next link"),
        "validate.mode": _param("mode", "query", "What the validation is for",
                                {"type": "string", "enum": ["create", "update", "delete"]}),
        "id": _param("id", "path", "The logical id", {"type": "string", "pattern": "^[A-Za-z0-9\\-\\.]{1,64}$"}),
        "vid": _param("vid", "path", "The version id"),
        "If-Match": _param("If-Match", "header", 'Only act on this version, e.g. W/"3"; 412 otherwise'),
        "If-None-Exist": _param("If-None-Exist", "header",
                                "Conditional create: a search query; if it matches, the match is returned instead"),
        "If-None-Match": _param("If-None-Match", "header", 'Answer 304 if the current version has this ETag, e.g. W/"3"'),
        "If-Modified-Since": _param("If-Modified-Since", "header", "Answer 304 unless modified after this HTTP date"),
        "Prefer.return": _param("Prefer", "header", "What a write returns: return=minimal, return=representation "
                                "(default) or return=OperationOutcome",
                                {"type": "string", "enum": ["return=minimal", "return=representation",
                                                            "return=OperationOutcome"]}),
        "Prefer.handling": _param("Prefer", "header", "handling=strict answers 400 on unknown parameters; "
                                  "handling=lenient (default) ignores them with a warning",
                                  {"type": "string", "enum": ["handling=strict", "handling=lenient"]}),
    }


def _schemas() -> dict[str, dict[str, Any]]:
    """The generic schemas, plus one per resource type that fixes its resourceType."""
    resource = _ref("schemas", "Resource")
    schemas: dict[str, dict[str, Any]] = {
        "Resource": {
            "type": "object", "description": "Any FHIR R4 resource (JSON representation)",
            "required": ["resourceType"], "additionalProperties": True,
            "properties": {
                "resourceType": {"type": "string"}, "id": {"type": "string"},
                "meta": {"type": "object", "properties": {
                    "versionId": {"type": "string"}, "lastUpdated": {"type": "string", "format": "date-time"}}},
            },
        },
        "JsonPatch": {
            "type": "array", "description": "A JSON Patch document (RFC 6902)",
            "items": {"type": "object", "required": ["op", "path"], "properties": {
                "op": {"type": "string", "enum": ["add", "remove", "replace", "move", "copy", "test"]},
                "path": {"type": "string"}, "from": {"type": "string"}, "value": {},
            }},
        },
        "SearchForm": {
            "type": "object", "description": "Search parameters as form fields", "additionalProperties": {"type": "string"},
        },
    }
    special: dict[str, dict[str, Any]] = {
        "Bundle": {
            "type": {"type": "string", "enum": ["searchset", "history", "batch", "transaction",
                                                "batch-response", "transaction-response", "collection", "document",
                                                "message"]},
            "total": {"type": "integer"},
            "link": {"type": "array", "items": {"type": "object", "properties": {
                "relation": {"type": "string"}, "url": {"type": "string"}}}},
            "entry": {"type": "array", "items": {"type": "object", "properties": {
                "fullUrl": {"type": "string"}, "resource": resource,
                "search": {"type": "object"}, "request": {"type": "object"}, "response": {"type": "object"}}}},
        },
        "OperationOutcome": {
            "issue": {"type": "array", "items": {"type": "object", "required": ["severity", "code"], "properties": {
                "severity": {"type": "string", "enum": ["fatal", "error", "warning", "information"]},
                "code": {"type": "string"}, "diagnostics": {"type": "string"},
                "expression": {"type": "array", "items": {"type": "string"}}}}},
        },
        "Parameters": {
            "parameter": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "resource": resource, "valueCode": {"type": "string"}},
                "additionalProperties": True}},
        },
    }
    for t in r4()["resourceTypes"]:
        props = {"resourceType": {"type": "string", "enum": [t]}, **special.get(t, {})}
        schemas[t] = {
            "description": f"A FHIR R4 {t}: {SPEC}/{t.lower()}.html",
            "allOf": [resource, {"type": "object", "properties": props}],
        }
    return schemas


def _content(schema: str) -> dict[str, Any]:
    """A JSON body of a component schema in each media type the server speaks."""
    return {m: {"schema": _ref("schemas", schema)} for m in JSON_MEDIA}


def _responses() -> dict[str, dict[str, Any]]:
    """Reusable responses: every error is an OperationOutcome."""
    out: dict[str, dict[str, Any]] = {
        name: {"description": text, "content": _content("OperationOutcome")} for name, text in ERRORS.values()
    }
    out["Error"] = {"description": "Any other error, as an OperationOutcome", "content": _content("OperationOutcome")}
    out["Bundle"] = {"description": "A Bundle", "content": _content("Bundle")}
    out["Outcome"] = {"description": "An OperationOutcome", "content": _content("OperationOutcome")}
    out["Reindexed"] = {"description": "Parameters: reindexed (the count), a type part per resource type, and the "
                        "search parameters now ready or still pending", "content": _content("Parameters")}
    out["Erased"] = {"description": "Parameters: patient, erased (the count), versions, a type part per resource type "
                     "(erased, versions, purgedVersions) and each danglingReferrer", "content": _content("Parameters")}
    out["Deleted"] = {"description": "Deleted (or nothing matched)", "headers": {"ETag": _ref("headers", "ETag")}}
    out["NotModified"] = {"description": "Not modified since the given version or date",
                          "headers": {"ETag": _ref("headers", "ETag")}}
    return out


def _headers() -> dict[str, dict[str, Any]]:
    """Response headers of single-resource answers."""
    return {
        "ETag": {"description": 'The version as a weak ETag, e.g. W/"3"', "schema": {"type": "string"}},
        "Last-Modified": {"description": "When the version was written (HTTP date)", "schema": {"type": "string"}},
        "Location": {"description": "The versioned URL: [base]/[type]/[id]/_history/[vid]", "schema": {"type": "string"}},
    }


def _resource_response(t: str, description: str, location: bool = False) -> dict[str, Any]:
    """A single-resource answer with its version headers."""
    headers = {h: _ref("headers", h) for h in ("ETag", "Last-Modified", *(("Location",) if location else ()))}
    return {"description": description, "headers": headers, "content": _content(t)}


def _op(op_id: str, summary: str, tag: str, responses: dict[str, Any], errors: tuple[int, ...] = (),
        params: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None,
        description: str | None = None) -> dict[str, Any]:
    """One Operation Object; errors become references to the shared OperationOutcome responses."""
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": [tag]}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    op["responses"] = {
        **responses, **{str(code): _ref("responses", ERRORS[code][0]) for code in errors},
        "default": _ref("responses", "Error"),
    }
    return op


def _body(schema: str, description: str, media: tuple[str, ...] = JSON_MEDIA) -> dict[str, Any]:
    """A required request body of a component schema."""
    return {"required": True, "description": description, "content": {m: {"schema": _ref("schemas", schema)} for m in media}}


def _p(*names: str) -> list[dict[str, Any]]:
    """References to shared parameters."""
    return [_ref("parameters", n) for n in names]


FMT = ("_format", "_pretty")
WRITE_HEADERS = ("Prefer.return",)
RESULT = ("_count", "_offset", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total")
HISTORY = ("_since", "_at", "_count", "_cursor")
SEARCH_NOTE = ("Search parameters take the modifiers and prefixes of FHIR search (e.g. name:exact=, "
               "birthdate=ge1970, subject.name=, _has:...); unknown ones are ignored with a warning "
               "unless Prefer: handling=strict.")
REINDEX_NOTE = ("Rewrites the index rows of the current resources in batches, then marks the SearchParameters that "
                "were pending ready. Answers when done: on a large system run `salus reindex` instead.")


def _type_components(t: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A type's reusable responses and request bodies, referenced by its operations instead of repeated."""
    responses = {
        t: _resource_response(t, f"The {t}"),
        f"{t}.stored": _resource_response(t, f"The stored {t} (empty with Prefer: return=minimal)", location=True),
    }
    bodies = {
        t: _body(t, f"A {t}"),
        f"{t}.validate": {"required": True, "description": f"A {t}, or Parameters holding resource (and mode)",
                          "content": {m: {"schema": {"oneOf": [_ref("schemas", t), _ref("schemas", "Parameters")]}}
                                      for m in JSON_MEDIA}},
    }
    return responses, bodies


def _type_paths(t: str, search_refs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The path items of one resource type."""
    ok = _ref("responses", t)
    written = _ref("responses", f"{t}.stored")
    bundle = {"200": _ref("responses", "Bundle")}
    deleted = {"200": _ref("responses", "Outcome"), "204": _ref("responses", "Deleted")}
    body = _ref("requestBodies", t)
    patch = _ref("requestBodies", "JsonPatch")
    form = _ref("requestBodies", "SearchForm")
    validate_body = _ref("requestBodies", f"{t}.validate")
    conditional = "Conditional: the search parameters select the single target. "
    return {
        f"/{t}": {
            "get": _op(f"search{t}", f"Search {t}", t, bundle, SEARCH_ERRORS,
                       [*search_refs, *_p(*RESULT, *FMT, "Prefer.handling")], description=SEARCH_NOTE),
            "post": _op(f"create{t}", f"Create a {t}", t,
                        {"201": written, "200": ok},
                        WRITE_ERRORS, _p("If-None-Exist", *WRITE_HEADERS, *FMT), body),
            "put": _op(f"conditionalUpdate{t}", f"Update the {t} matching the search (create if none)", t,
                       {"200": written, "201": written}, WRITE_ERRORS,
                       [*search_refs, *_p("If-Match", *WRITE_HEADERS, *FMT)], body,
                       conditional + "Several matches answer 412."),
            "delete": _op(f"conditionalDelete{t}", f"Delete the {t} matching the search", t, deleted, DELETE_ERRORS,
                          [*search_refs, *_p("_cascade", "Prefer.return")],
                          description=conditional + "None matching does nothing; several answer 412."),
            "patch": _op(f"conditionalPatch{t}", f"Patch the {t} matching the search", t, {"200": written},
                         WRITE_ERRORS, [*search_refs, *_p("If-Match", *WRITE_HEADERS, *FMT)], patch,
                         conditional + "None matching answers 404; several answer 412."),
        },
        f"/{t}/_search": {
            "post": _op(f"search{t}Post", f"Search {t} with form parameters", t, bundle, (*SEARCH_ERRORS, 415),
                        [*search_refs, *_p(*RESULT, *FMT, "Prefer.handling")], form, SEARCH_NOTE),
        },
        f"/{t}/_history": {
            "get": _op(f"history{t}Type", f"History of every {t}", t, bundle, (400, 406), _p(*HISTORY, *FMT)),
        },
        f"/{t}/$validate": {
            "post": _op(f"validate{t}", f"Validate a {t} ($validate)", t, {"200": _ref("responses", "Outcome")},
                        (400, 406, 413, 415), _p("validate.mode", *FMT), validate_body),
        },
        f"/{t}/{{id}}": {
            "parameters": _p("id"),
            "get": _op(f"read{t}", f"Read a {t}", t, {"200": ok, "304": _ref("responses", "NotModified")},
                       (*READ_ERRORS, 410), _p("If-None-Match", "If-Modified-Since", *FMT)),
            "put": _op(f"update{t}", f"Update a {t} (or create it with this id)", t, {"200": written, "201": written},
                       WRITE_ERRORS, _p("If-Match", *WRITE_HEADERS, *FMT), body),
            "patch": _op(f"patch{t}", f"Patch a {t} with JSON Patch or FHIRPath Patch", t, {"200": written}, (*WRITE_ERRORS, 410),
                         _p("If-Match", *WRITE_HEADERS, *FMT), patch),
            "delete": _op(f"delete{t}", f"Delete a {t}", t, deleted, DELETE_ERRORS, _p("_cascade", "Prefer.return")),
        },
        f"/{t}/{{id}}/$validate": {
            "parameters": _p("id"),
            "get": _op(f"validate{t}Instance", f"Validate the stored {t} ($validate)", t,
                       {"200": _ref("responses", "Outcome")}, (400, 404, 406, 410), _p("validate.mode", *FMT)),
            "post": _op(f"validate{t}InstancePost", f"Validate a {t} against this instance ($validate)", t,
                        {"200": _ref("responses", "Outcome")}, (400, 404, 406, 413, 415),
                        _p("validate.mode", *FMT), validate_body),
        },
        f"/{t}/$reindex": {
            "post": _op(f"reindex{t}", f"Rebuild the search index of every {t} ($reindex)", t,
                        {"200": _ref("responses", "Reindexed")}, (400, 406), _p(*FMT), description=REINDEX_NOTE),
        },
        f"/{t}/{{id}}/$reindex": {
            "parameters": _p("id"),
            "post": _op(f"reindex{t}Instance", f"Rebuild the search index of one {t} ($reindex)", t,
                        {"200": _ref("responses", "Reindexed")}, (400, 404, 406, 410), _p(*FMT)),
        },
        f"/{t}/{{id}}/_history": {
            "parameters": _p("id"),
            "get": _op(f"history{t}Instance", f"History of a {t}", t, bundle, (400, 404, 406), _p(*HISTORY, *FMT)),
        },
        f"/{t}/{{id}}/_history/{{vid}}": {
            "parameters": _p("id", "vid"),
            "get": _op(f"vread{t}", f"Read a version of a {t}", t, {"200": ok}, (*READ_ERRORS, 410), _p(*FMT)),
        },
    }


EVERYTHING_NOTE = ("The Patient and every resource in its Patient compartment (R4 CompartmentDefinition), as a "
                   "searchset paged by a cursor in the next link; referenced resources outside the compartment "
                   "are not included. POST takes the same parameters in a Parameters body.")
ERASE_NOTE = ("GDPR erasure, administrators only: removes every version of the Patient and of each resource in its "
              "compartment (no tombstone remains: reads answer 404) and records one AuditEvent, in one transaction.")


def _patient_paths() -> dict[str, dict[str, Any]]:
    """Patient/{id}/$everything and Patient/{id}/$erase (GDPR portability and erasure)."""
    bundle = {"200": _ref("responses", "Bundle")}
    params = _p("everything._since", "everything._type", "_count", "everything._cursor", *FMT)
    return {
        "/Patient/{id}/$everything": {
            "parameters": _p("id"),
            "get": _op("everythingPatient", "The Patient and its compartment ($everything)", "Patient", bundle,
                       (400, 403, 404, 406, 410), params, description=EVERYTHING_NOTE),
            "post": _op("everythingPatientPost", "The Patient and its compartment ($everything, Parameters body)",
                        "Patient", bundle, (400, 403, 404, 406, 410, 415), params,
                        {"required": False, "description": "Parameters: _since, _type, _count",
                         "content": _content("Parameters")}, EVERYTHING_NOTE),
        },
        "/Patient/{id}/$erase": {
            "parameters": _p("id"),
            "post": _op("erasePatient", "Erase a Patient and its compartment, history included ($erase)", "Patient",
                        {"200": _ref("responses", "Erased")}, (400, 403, 404, 406), _p(*FMT), description=ERASE_NOTE),
        },
    }


def _system_paths() -> dict[str, dict[str, Any]]:
    """The paths at the base: metadata, batch/transaction, system search and history, these docs."""
    bundle = {"200": _ref("responses", "Bundle")}
    system_search = _p("_type", "system._id", "system._lastUpdated", *RESULT, *FMT, "Prefer.handling")
    return {
        "/metadata": {"get": _op("capabilities", "The CapabilityStatement", "System",
                                 {"200": {"description": "The CapabilityStatement",
                                          "content": _content("CapabilityStatement")}},
                                 (406,), _p(*FMT))},
        "/": {
            "get": _op("searchSystem", "Search across resource types", "System", bundle, SEARCH_ERRORS, system_search),
            "post": _op("transaction", "Process a batch or transaction Bundle", "System", bundle,
                        (400, 404, 406, 409, 412, 413, 415, 422), _p(*FMT),
                        _body("Bundle", "A Bundle of type batch or transaction")),
        },
        "/_search": {
            "post": _op("searchSystemPost", "Search across resource types with form parameters", "System", bundle,
                        (*SEARCH_ERRORS, 415), system_search, _ref("requestBodies", "SearchForm")),
        },
        "/_history": {"get": _op("historySystem", "History of every resource", "System", bundle, (400, 406),
                                 _p(*HISTORY, *FMT))},
        "/$reindex": {"post": _op("reindexSystem", "Rebuild the search index ($reindex)", "System",
                                  {"200": _ref("responses", "Reindexed")}, (400, 406, 415), _p(*FMT),
                                  {"required": False, "description": "Parameters naming the types (type, repeatable)",
                                   "content": _content("Parameters")}, REINDEX_NOTE)},
        "/openapi.json": {"get": _op("openapi", "This OpenAPI description", "System",
                                     {"200": {"description": "The OpenAPI document",
                                              "content": {"application/json": {"schema": {"type": "object"}}}}})},
        "/api-docs": {"get": _op("apiDocs", "A page linking to this description", "System",
                                 {"200": {"description": "An HTML page", "content": {"text/html": {"schema":
                                                                                                  {"type": "string"}}}}})},
    }


def _compartment_paths() -> dict[str, dict[str, Any]]:
    """Compartment search, one path per compartment (Patient, Encounter, ...) with its member types."""
    paths: dict[str, dict[str, Any]] = {}
    for c, members in sorted(r4()["compartments"].items()):
        types = {"type": "string", "enum": sorted(members)}
        paths[f"/{c}/{{id}}/{{type}}"] = {
            "parameters": [*_p("id"), _param("type", "path", f"A resource type in the {c} compartment", types)],
            "get": _op(f"search{c}Compartment", f"Search the resources in a {c}'s compartment", c,
                       {"200": _ref("responses", "Bundle")}, SEARCH_ERRORS,
                       _p(*RESULT, *FMT, "Prefer.handling"), description=SEARCH_NOTE),
        }
    return paths


@cache
def _document_body() -> dict[str, Any]:
    """Everything but the server URL: built once per process (146 types take a few tens of milliseconds)."""
    parameters = _common_parameters()
    paths = _system_paths()
    responses = _responses()
    bodies: dict[str, Any] = {
        "JsonPatch": {
            "required": True,
            "description": "A JSON Patch document (application/json-patch+json) or a FHIRPath Patch Parameters resource",
            "content": {PATCH_JSON: {"schema": _ref("schemas", "JsonPatch")},
                        FHIR_JSON: {"schema": _ref("schemas", "Parameters")}},
        },
        "SearchForm": {"required": True, "description": "Search parameters as a form",
                       "content": {FORM: {"schema": _ref("schemas", "SearchForm")}}},
    }
    for t in r4()["resourceTypes"]:
        type_responses, type_bodies = _type_components(t)
        responses.update(type_responses)
        bodies.update(type_bodies)
        refs = []
        for code, p in supported_search_parameters(t):
            key = f"{t}.{code}"
            parameters[key] = _param(code, "query", f"{p['type']} search parameter: {p.get('expression') or code}")
            refs.append(_ref("parameters", key))
        paths.update(_type_paths(t, refs))
    paths.update(_compartment_paths())
    paths.update(_patient_paths())
    return {
        "paths": paths,
        "components": {
            "schemas": _schemas(), "parameters": parameters, "responses": responses, "requestBodies": bodies,
            "headers": _headers(),
        },
    }


@lru_cache(maxsize=8)
def openapi_document(base_url: str) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document for a server at ``base_url``, for tools that do not read CapabilityStatements.

    Cached and shared between callers: treat it as read-only.
    """
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Salus FHIR R4 server", "version": __version__,
            "description": "FHIR R4 (4.0.1) REST API, JSON only. Generated from the same definitions as "
                           f"{base_url}/metadata, which remains the authoritative description.",
        },
        "externalDocs": {"description": "FHIR R4 RESTful API", "url": f"{SPEC}/http.html"},
        "servers": [{"url": base_url}],
        **_document_body(),
    }


API_DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Salus FHIR API</title></head>
<body>
<h1>Salus FHIR R4 API</h1>
<ul>
<li><a href="openapi.json">openapi.json</a>: the OpenAPI 3.0 description (load it into any OpenAPI viewer)</li>
<li><a href="metadata">metadata</a>: the FHIR CapabilityStatement</li>
</ul>
</body></html>
"""


def openapi_endpoint(base_url_of: Callable[[Request], str]) -> Callable[[Request], Awaitable[Response]]:
    """The handler of GET [base]/openapi.json, given how the app sees its base URL (public_base_url or the request)."""

    async def openapi_json(request: Request) -> Response:
        return Response(dumps(openapi_document(base_url_of(request)), request), media_type="application/json")

    return openapi_json


async def api_docs(request: Request) -> Response:
    """GET [base]/api-docs: a static page pointing at the description, so nothing is fetched from a CDN."""
    return HTMLResponse(API_DOCS_HTML)
