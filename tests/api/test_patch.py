"""PATCH with JSON Patch (R4 3.1.0.6.1): the RFC 6902 conformance cases and the HTTP interaction."""

from __future__ import annotations

import json

import orjson
import pytest
from starlette.testclient import TestClient

from salus.fhir.outcome import FhirError
from salus.service import apply_json_patch
from tests.conftest import corpus

PATCH = {"Content-Type": "application/json-patch+json"}


def json_patch_cases() -> list[dict]:
    try:
        return json.loads(corpus("fhir-patch-r4", "json-patch-tests.json").read_text())
    except BaseException:  # collected without the corpus: the test itself skips or fails
        return [{"comment": "corpus missing"}]


@pytest.mark.parametrize("case", json_patch_cases(), ids=lambda c: c["comment"][:60])
def test_json_patch_conformance_cases(case: dict) -> None:
    corpus("fhir-patch-r4", "json-patch-tests.json")
    if "error" in case:
        with pytest.raises(FhirError) as err:
            apply_json_patch(case["doc"], case["patch"])
        assert err.value.status in (400, 422)
    else:
        assert apply_json_patch(case["doc"], case["patch"]) == case["expected"]


def test_patch_over_http(client: TestClient) -> None:
    client.put("/fhir/Patient/pp", content=orjson.dumps({"resourceType": "Patient", "id": "pp", "active": True}),
               headers={"Content-Type": "application/fhir+json"})
    ops = [{"op": "replace", "path": "/active", "value": False}, {"op": "add", "path": "/gender", "value": "female"}]
    r = client.patch("/fhir/Patient/pp", content=orjson.dumps(ops), headers={**PATCH, "If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["active"] is False and body["gender"] == "female" and body["meta"]["versionId"] == "2"
    # stale If-Match
    assert client.patch("/fhir/Patient/pp", content=orjson.dumps(ops), headers={**PATCH, "If-Match": 'W/"1"'}).status_code == 412
    # the result must still be a valid resource
    bad = [{"op": "replace", "path": "/gender", "value": "robot"}]
    assert client.patch("/fhir/Patient/pp", content=orjson.dumps(bad), headers=PATCH).status_code in (400, 422)
    # a patch may not change the id
    assert client.patch("/fhir/Patient/pp", content=orjson.dumps([{"op": "replace", "path": "/id", "value": "x"}]),
                        headers=PATCH).status_code == 422
    # a failing test op
    assert client.patch("/fhir/Patient/pp", content=orjson.dumps([{"op": "test", "path": "/active", "value": True}]),
                        headers=PATCH).status_code == 422
    assert client.patch("/fhir/Patient/pp", content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 415
    assert client.patch("/fhir/Patient/missing", content=orjson.dumps(ops), headers=PATCH).status_code == 404
    assert client.get("/fhir/Patient/pp").json()["meta"]["versionId"] == "2"
