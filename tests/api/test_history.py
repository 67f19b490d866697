"""History at instance, type and system level (R4 3.1.0.9) with _since, _at and paging."""

from __future__ import annotations

import orjson
from starlette.testclient import TestClient

FHIR = {"Content-Type": "application/fhir+json"}


def put(client: TestClient, rt: str, rid: str, **extra: object) -> dict:
    r = client.put(f"/fhir/{rt}/{rid}", content=orjson.dumps({"resourceType": rt, "id": rid, **extra}), headers=FHIR)
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_levels_and_paging(client: TestClient) -> None:
    put(client, "Patient", "a", active=True)
    put(client, "Patient", "a", active=False)
    put(client, "Organization", "o", name="Org")
    put(client, "Patient", "b")
    system = client.get("/fhir/_history").json()
    assert system["total"] == 4
    assert [e["fullUrl"].split("/fhir/")[1] for e in system["entry"]] == ["Patient/b", "Organization/o", "Patient/a", "Patient/a"]
    assert system["entry"][2]["request"] == {"method": "PUT", "url": "Patient/a"}
    assert system["entry"][2]["response"]["etag"] == 'W/"2"'
    assert client.get("/fhir/Patient/_history").json()["total"] == 3
    inst = client.get("/fhir/Patient/a/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in inst["entry"]] == ["2", "1"]
    # paging follows next links to the end without repeats
    seen = []
    url = "/fhir/_history?_count=3"
    while url:
        page = client.get(url).json()
        seen += [(e["fullUrl"], e["response"]["etag"]) for e in page.get("entry", [])]
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        url = nxt[0].split("testserver", 1)[1] if nxt else ""
    assert len(seen) == 4 and len(set(seen)) == 4
    assert client.get("/fhir/Patient/zzz/_history").status_code == 404


def test_since_and_at(client: TestClient) -> None:
    first = put(client, "Patient", "s")
    second = put(client, "Patient", "s", active=True)
    since = second["meta"]["lastUpdated"]
    h = client.get("/fhir/Patient/s/_history", params={"_since": since}).json()
    assert [e["resource"]["meta"]["versionId"] for e in h["entry"]] == ["2"]
    at = client.get("/fhir/Patient/_history", params={"_at": first["meta"]["lastUpdated"]}).json()
    assert [e["resource"]["meta"]["versionId"] for e in at["entry"]] == ["1"]
    assert client.get("/fhir/_history", params={"_since": "yesterday"}).status_code == 400
