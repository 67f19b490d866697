"""Search paging (R4 search.html#paging, http.html#paging): next links stay right while data changes."""

from __future__ import annotations

import orjson
from starlette.testclient import TestClient

FHIR = {"Content-Type": "application/fhir+json"}


def make(client: TestClient, n: int) -> None:
    for i in range(n):
        body = {"resourceType": "Patient", "id": f"pg{i:02d}", "name": [{"family": f"F{(i * 7) % n:02d}"}],
                "birthDate": f"19{50 + i % 40}-01-01"}
        assert client.put(f"/fhir/Patient/pg{i:02d}", content=orjson.dumps(body), headers=FHIR).status_code == 201


def walk(client: TestClient, url: str, between=None) -> list[str]:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    while url:
        page = client.get(url).json()
        assert page["type"] == "searchset"
        seen += [e["resource"]["id"] for e in page.get("entry", []) if e["search"]["mode"] == "match"]
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        url = nxt[0].split("testserver", 1)[1] if nxt else ""
        if between and url:
            between(seen)
    return seen


def test_pages_cover_every_match_once(client: TestClient) -> None:
    make(client, 23)
    ids = walk(client, "/fhir/Patient?_count=5")
    assert ids == [f"pg{i:02d}" for i in range(23)]
    by_name = walk(client, "/fhir/Patient?_count=4&_sort=-family")
    assert len(by_name) == 23 and len(set(by_name)) == 23
    names = [client.get(f"/fhir/Patient/{i}").json()["name"][0]["family"] for i in by_name]
    assert names == sorted(names, reverse=True)


def test_deletes_and_inserts_between_pages_neither_skip_nor_repeat(client: TestClient) -> None:
    make(client, 20)

    def churn(seen: list[str]) -> None:
        # delete something already shown, and add something that sorts first: an offset would now
        # skip a match (the delete) or repeat one (the insert); a cursor does neither
        client.delete(f"/fhir/Patient/{seen[0]}")
        new = {"resourceType": "Patient", "name": [{"family": "F000"}]}
        client.post("/fhir/Patient", content=orjson.dumps(new), headers=FHIR)

    seen = walk(client, "/fhir/Patient?_count=6&_sort=family&family=F", between=churn)
    assert len(seen) == len(set(seen)) == 20


def test_bad_cursor_is_400(client: TestClient) -> None:
    make(client, 3)
    assert client.get("/fhir/Patient?_cursor=not-a-cursor").status_code == 400
    page = client.get("/fhir/Patient?_count=1&_sort=birthdate").json()
    nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
    cursor = nxt.split("_cursor=")[1]
    # a cursor belongs to its sort
    assert client.get(f"/fhir/Patient?_count=1&_sort=family&_cursor={cursor}").status_code == 400
