"""_summary and _elements on read and search (R4 search.html#summary, #elements)."""

from __future__ import annotations

import orjson
from starlette.testclient import TestClient

FHIR = {"Content-Type": "application/fhir+json"}
PATIENT = {
    "resourceType": "Patient", "id": "sum", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
    "name": [{"family": "Summary"}], "gender": "male", "birthDate": "1970-01-01", "maritalStatus": {"text": "M"},
    "deceasedBoolean": False, "contact": [{"name": {"family": "Kin"}}],
}


def subsetted(resource: dict) -> bool:
    return any(t.get("code") == "SUBSETTED" for t in resource.get("meta", {}).get("tag", []))


def test_summary_modes_on_read(client: TestClient) -> None:
    client.put("/fhir/Patient/sum", content=orjson.dumps(PATIENT), headers=FHIR)
    full = client.get("/fhir/Patient/sum").json()
    assert not subsetted(full) and "contact" in full
    true = client.get("/fhir/Patient/sum?_summary=true").json()
    # summary elements of Patient: name, gender, birthDate, deceased[x] ...; not text, maritalStatus, contact
    assert {"name", "gender", "birthDate", "deceasedBoolean"} <= true.keys()
    assert not {"text", "maritalStatus", "contact"} & true.keys()
    assert subsetted(true)
    text = client.get("/fhir/Patient/sum?_summary=text").json()
    assert set(text) == {"resourceType", "id", "meta", "text"} and subsetted(text)
    data = client.get("/fhir/Patient/sum?_summary=data").json()
    assert "text" not in data and "contact" in data and subsetted(data)
    assert client.get("/fhir/Patient/sum?_summary=bogus").status_code == 400


def test_elements_on_read_and_search(client: TestClient) -> None:
    client.put("/fhir/Patient/sum", content=orjson.dumps(PATIENT), headers=FHIR)
    el = client.get("/fhir/Patient/sum?_elements=gender,deceased").json()
    assert set(el) == {"resourceType", "id", "meta", "gender", "deceasedBoolean"} and subsetted(el)
    bundle = client.get("/fhir/Patient?_id=sum&_elements=birthDate").json()
    res = bundle["entry"][0]["resource"]
    assert set(res) == {"resourceType", "id", "meta", "birthDate"} and subsetted(res)
    bundle = client.get("/fhir/Patient?_id=sum&_summary=count").json()
    assert bundle["total"] == 1 and "entry" not in bundle
