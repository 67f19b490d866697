"""The OpenAPI description: structurally valid OpenAPI 3.0, consistent with the CapabilityStatement and the routes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from salus.api.capability import capability_statement
from salus.api.openapi import openapi_document
from salus.fhir.definitions import r4

BASE = "http://example.org/fhir"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
COMPONENT_KEY = re.compile(r"^[a-zA-Z0-9.\-_]+$")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    """The document once per module: building it is the slow part."""
    return openapi_document(BASE)


def walk(node: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object in the document with its location, so each $ref can be checked."""
    if isinstance(node, dict):
        yield where, node
        for k, v in node.items():
            yield from walk(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{where}/{i}")


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local $ref (components only) to its target."""
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/components/"), ref
        target: Any = doc
        for part in ref[2:].split("/"):
            assert part in target, f"unresolved $ref {ref}"
            target = target[part]
        node = target
    return node


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(path, method, path item, operation) for every operation."""
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item, item[method]


def query_names(doc: dict[str, Any], op: dict[str, Any]) -> set[str]:
    """The names of an operation's query parameters."""
    return {p["name"] for p in (resolve(doc, x) for x in op.get("parameters", [])) if p["in"] == "query"}


def test_top_level(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.0.3"
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["servers"] == [{"url": BASE}]
    assert {"/metadata", "/", "/_history"} <= doc["paths"].keys()
    orjson.dumps(doc)  # plain JSON all the way down


def test_every_ref_resolves_and_stands_alone(doc: dict[str, Any]) -> None:
    refs = 0
    for where, node in walk(doc):
        if "$ref" in node:
            refs += 1
            assert set(node) == {"$ref"}, f"{where}: siblings of $ref are ignored in OpenAPI 3.0"
            resolve(doc, node)
    assert refs > 1000
    for kind, entries in doc["components"].items():
        for key in entries:
            assert COMPONENT_KEY.match(key), f"components/{kind}/{key}"


def test_paths_operations_and_responses(doc: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        assert any(m in item for m in METHODS), f"{path} has no operation"
        assert set(item) <= {*METHODS, "parameters", "summary", "description"}, path
    for path, method, _item, op in operations(doc):
        op_id = op["operationId"]
        assert op_id not in seen, f"operationId {op_id} on {method} {path} and {seen[op_id]}"
        seen[op_id] = f"{method} {path}"
        assert op["summary"]
        assert op["responses"], f"{method} {path}"
        for code, response in op["responses"].items():
            assert code == "default" or re.fullmatch(r"[1-5]\d\d", code), code
            assert resolve(doc, response)["description"]
        if "requestBody" in op:
            assert method in ("post", "put", "patch"), f"{method} {path} has a body"
            assert resolve(doc, op["requestBody"])["content"]


def test_parameters(doc: dict[str, Any]) -> None:
    for path, method, item, op in operations(doc):
        params = [resolve(doc, p) for p in [*item.get("parameters", []), *op.get("parameters", [])]]
        keys = [(p["name"], p["in"]) for p in params]
        assert len(keys) == len(set(keys)), f"duplicate parameters on {method} {path}"
        for p in params:
            assert p["name"] and p["in"] in ("query", "header", "path", "cookie"), p
            assert isinstance(p["schema"], dict), p
            if p["in"] == "path":
                assert p["required"] is True, p
        template = set(re.findall(r"{([^}]+)}", path))
        assert template == {p["name"] for p in params if p["in"] == "path"}, f"{method} {path}"


def test_per_type_paths(doc: dict[str, Any]) -> None:
    types = r4()["resourceTypes"]
    assert len(types) == 146
    for t in types:
        for suffix in ("", "/_search", "/_history", "/$validate", "/{id}", "/{id}/_history", "/{id}/_history/{vid}"):
            assert f"/{t}{suffix}" in doc["paths"], f"/{t}{suffix}"
    patient = doc["paths"]["/Patient"]
    assert {"get", "post", "put", "delete", "patch"} <= patient.keys()
    assert {"get", "put", "patch", "delete"} <= doc["paths"]["/Patient/{id}"].keys()
    assert "/Patient/{id}/{type}" in doc["paths"]


def test_search_parameters_match_the_capability_statement(doc: dict[str, Any]) -> None:
    cs = capability_statement(BASE, "2026-01-01")
    common = query_names(doc, doc["paths"]["/Observation"]["get"]) & query_names(doc, doc["paths"]["/Patient"]["get"])
    for entry in cs["rest"][0]["resource"]:
        t = entry["type"]
        declared = {p["name"] for p in entry["searchParam"]}
        for method in ("get", "put", "patch", "delete"):
            names = query_names(doc, doc["paths"][f"/{t}"][method])
            assert declared <= names, f"{method} /{t} lacks {declared - names}"
        assert query_names(doc, doc["paths"][f"/{t}"]["get"]) - common == declared - common, t
    name = next(
        resolve(doc, p) for p in doc["paths"]["/Patient"]["get"]["parameters"] if resolve(doc, p)["name"] == "name"
    )
    assert name["in"] == "query" and "string" in name["description"]


def test_headers_and_bodies(doc: dict[str, Any]) -> None:
    def headers(op: dict[str, Any]) -> set[str]:
        return {p["name"] for p in (resolve(doc, x) for x in op.get("parameters", [])) if p["in"] == "header"}

    paths = doc["paths"]
    assert "If-None-Exist" in headers(paths["/Patient"]["post"])
    assert {"If-Match", "Prefer"} <= headers(paths["/Patient/{id}"]["put"])
    assert {"If-None-Match", "If-Modified-Since"} <= headers(paths["/Patient/{id}"]["get"])
    assert "Prefer" in headers(paths["/Patient"]["get"])
    patch = resolve(doc, paths["/Patient/{id}"]["patch"]["requestBody"])
    assert set(patch["content"]) == {"application/json-patch+json", "application/fhir+json"}
    assert resolve(doc, patch["content"]["application/json-patch+json"]["schema"])["type"] == "array"
    assert patch["content"]["application/fhir+json"]["schema"] == {"$ref": "#/components/schemas/Parameters"}
    assert "_cascade" in query_names(doc, paths["/Patient/{id}"]["delete"])
    assert {"_since", "_at", "_count", "_cursor"} <= query_names(doc, paths["/_history"]["get"])
    assert {"OperationOutcome", "Bundle", "Parameters", "Resource", "JsonPatch"} <= doc["components"]["schemas"].keys()
    for code in ("400", "404", "410"):
        error = resolve(doc, paths["/Patient/{id}"]["get"]["responses"].get(code, {"$ref": "#/components/responses/Error"}))
        schema = error["content"]["application/fhir+json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/OperationOutcome"}


def test_validator(doc: dict[str, Any]) -> None:
    """The document passes openapi-spec-validator (a dev dependency)."""
    from openapi_spec_validator import validate

    validate(orjson.loads(orjson.dumps(doc)))


def test_routes_are_described(client: TestClient, doc: dict[str, Any]) -> None:
    """Every route the app serves under the base has an operation (with a concrete type for {type})."""
    for route in client.app.routes:  # type: ignore[attr-defined]
        assert isinstance(route, Route)
        if not route.path.startswith("/fhir") or route.endpoint.__name__ == "not_allowed":
            continue
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # a parameter's convertor is not part of the URL
        path = path.removeprefix("/fhir").rstrip("/") or "/"
        path = path.replace("{compartment_type}/{compartment_id}", "Patient/{id}")
        if "{compartment" not in route.path:
            path = path.replace("{type}", "Patient")
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in doc["paths"].get(path, {}), f"{method} {route.path} ({path})"


def test_http(client: TestClient) -> None:
    r = client.get("/fhir/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["openapi"] == "3.0.3"
    assert body["servers"] == [{"url": "http://testserver/fhir"}]
    assert {"/Patient", "/Patient/{id}", "/Patient/{id}/_history/{vid}"} <= body["paths"].keys()
    params = body["components"]["parameters"]
    names = [resolve(body, p)["name"] for p in body["paths"]["/Patient"]["get"]["parameters"]]
    assert "name" in names and "Patient.name" in params
    assert client.get("/fhir/openapi.json?_pretty=true").json() == body
    docs = client.get("/fhir/api-docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert 'href="openapi.json"' in docs.text and "<script" not in docs.text
    # the new paths do not shadow resource types
    assert client.get("/fhir/Patient").json()["resourceType"] == "Bundle"
