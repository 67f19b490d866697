"""SearchParameter resources stored on the server add search parameters, usable once a reindex has covered them.

Until then the parameter is pending: resources written meanwhile are indexed for it, but
search leaves it out and says so (strict: 400), never answering as if it were complete.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from salus.fhir.outcome import FhirError
from salus.service import FhirService
from salus.service.transaction import process_bundle

EYE_URL = "http://example.org/eye-colour"
EYE_COLOUR: dict[str, Any] = {
    "resourceType": "SearchParameter",
    "url": "http://example.org/SearchParameter/eye-colour",
    "name": "EyeColour",
    "status": "active",
    "description": "The colour of the patient's eyes",
    "code": "eye-colour",
    "base": ["Patient"],
    "type": "token",
    "expression": f"Patient.extension.where(url='{EYE_URL}').value",
}


def patient(colour: str, family: str = "Doe", given: str = "Jo") -> dict[str, Any]:
    """A Patient with an eye-colour extension."""
    return {
        "resourceType": "Patient",
        "name": [{"family": family, "given": [given]}],
        "extension": [{"url": EYE_URL, "valueCode": colour}],
    }


def ids(service: FhirService, res_type: str, query: list[tuple[str, str]], **kw: Any) -> list[str]:
    return sorted(i for _, i, _ in service.search(res_type, query, count=100, **kw).entries)


def new(service: FhirService, resource: dict[str, Any]) -> str:
    result = service.create(resource["resourceType"], resource)
    assert result.version is not None
    return result.version.res_id


def indexed(service: FhirService, param: str) -> list[str]:
    """Which resources have index rows for ``param``."""
    rows = service.store.query(
        "SELECT DISTINCT r.res_id FROM idx_token i JOIN resources r ON r.rid = i.rid WHERE i.param = ?", (param,)
    )
    return sorted(r[0] for r in rows)


def test_pending_until_reindex_then_ready(service: FhirService) -> None:
    before = new(service, patient("blue"))
    sp = new(service, EYE_COLOUR)
    after = new(service, patient("blue"))
    brown = new(service, patient("brown"))
    # written after the parameter exists: indexed for it at once; the older one is not yet
    assert indexed(service, "eye-colour") == sorted([after, brown])

    lenient = service.search("Patient", [("eye-colour", "blue")], count=100)
    assert lenient.pending == ["eye-colour"] and lenient.unknown == []
    assert len(lenient.entries) == 3  # the parameter was left out, and the result says so
    with pytest.raises(FhirError) as err:
        service.search("Patient", [("eye-colour", "blue")], strict=True)
    assert err.value.status == 400 and "not indexed yet" in err.value.message
    with pytest.raises(FhirError):  # conditional interactions are always strict
        service.conditional_update("Patient", "eye-colour=blue", patient("blue"))
    assert [p.name for p in service.search_parameters.pending(service.store)] == ["Patient.eye-colour"]

    report = service.reindex(["Patient"])
    assert report.counts == {"Patient": 3}
    assert report.ready == ["Patient.eye-colour"] and report.pending == []
    assert ids(service, "Patient", [("eye-colour", "blue")]) == sorted([before, after])
    assert ids(service, "Patient", [("eye-colour", "brown")]) == [brown]
    assert service.search("Patient", [("eye-colour", "blue")], strict=True).pending == []
    # the other parameters' rows were rebuilt too, not lost
    assert len(ids(service, "Patient", [("family", "doe")])) == 3

    # a change of meaning makes it pending again; a change of description does not
    service.update("SearchParameter", sp, {**EYE_COLOUR, "id": sp, "description": "Eye colour, again"})
    assert service.search("Patient", [("eye-colour", "blue")]).pending == []
    service.update("SearchParameter", sp, {**EYE_COLOUR, "id": sp, "type": "string"})
    assert service.search("Patient", [("eye-colour", "blue")]).pending == ["eye-colour"]
    assert service.reindex().ready == ["Patient.eye-colour"]
    assert ids(service, "Patient", [("eye-colour", "blu")]) == sorted([before, after])  # a string prefix now

    service.delete("SearchParameter", sp)
    gone = service.search("Patient", [("eye-colour", "blue")])
    assert gone.unknown == ["eye-colour"] and gone.pending == []


def test_state_is_persisted_for_other_processes(service: FhirService) -> None:
    new(service, EYE_COLOUR)
    other = FhirService(service.store, service.settings)  # another worker, or after a restart
    assert other.search("Patient", [("eye-colour", "blue")]).pending == ["eye-colour"]
    service.reindex(["Patient"])
    other.search_parameters.invalidate()  # otherwise seen within its cache's ttl (1 s)
    assert other.search("Patient", [("eye-colour", "blue")]).pending == []


def test_chains_sort_and_include_on_a_pending_parameter(service: FhirService) -> None:
    p = new(service, patient("blue"))
    new(service, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                  "subject": {"reference": f"Patient/{p}"}})
    new(service, EYE_COLOUR)
    chained = service.search("Observation", [("subject:Patient.eye-colour", "blue")])
    assert chained.pending == ["subject:Patient.eye-colour"]
    has = service.search("Patient", [("_has:Observation:subject:status", "final"), ("eye-colour", "blue")])
    assert has.pending == ["eye-colour"] and [i for _, i, _ in has.entries] == [p]
    assert service.search("Patient", [("_sort", "eye-colour")]).pending == ["eye-colour"]
    service.reindex(["Patient"])
    assert ids(service, "Observation", [("subject:Patient.eye-colour", "blue")]) != []


def test_a_transaction_indexes_its_resources_for_a_parameter_it_adds(service: FhirService) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": EYE_COLOUR, "request": {"method": "POST", "url": "SearchParameter"}},
        {"resource": patient("green"), "request": {"method": "POST", "url": "Patient"}},
    ]}
    process_bundle(service, bundle, "http://localhost/fhir")
    assert len(indexed(service, "eye-colour")) == 1
    # no Patient existed before it: a reindex of nothing still has to say so
    assert service.reindex(["Patient"]).ready == ["Patient.eye-colour"]


def test_overriding_an_r4_parameter_and_giving_it_back(service: FhirService) -> None:
    p = new(service, patient("blue", family="Smith", given="Ann"))
    # HAPI's rule: the same code on the same base replaces the R4 parameter
    family = {**EYE_COLOUR, "url": "http://example.org/SearchParameter/family-is-given", "code": "family",
              "type": "string", "expression": "Patient.name.given"}
    sp = new(service, family)
    assert service.search("Patient", [("family", "ann")]).pending == ["family"]
    service.reindex(["Patient"])
    assert ids(service, "Patient", [("family", "ann")]) == [p]
    assert ids(service, "Patient", [("family", "smith")]) == []
    service.delete("SearchParameter", sp)
    # R4's family is back, but the index holds the override's rows until a reindex
    assert service.search("Patient", [("family", "smith")]).pending == ["family"]
    assert service.reindex(["Patient"]).ready == ["Patient.family"]
    assert ids(service, "Patient", [("family", "smith")]) == [p]
    assert service.search_parameters.pending(service.store) == []


def test_a_definition_r4_already_has_changes_nothing(service: FhirService) -> None:
    us_core_family = {**EYE_COLOUR, "url": "http://hl7.org/fhir/us/core/SearchParameter/us-core-patient-family",
                      "code": "family", "type": "string", "expression": "Patient.name.family"}
    new(service, us_core_family)
    new(service, {**us_core_family, "url": "http://example.org/another-family"})  # no duplicate either
    assert service.search("Patient", [("family", "x")]).pending == []


def test_resource_base_parameters_are_ready_type_by_type(service: FhirService) -> None:
    source = {**EYE_COLOUR, "url": "http://example.org/SearchParameter/source", "code": "source-system",
              "base": ["Resource"], "type": "uri", "expression": "Resource.meta.source"}
    new(service, source)
    p = new(service, {"resourceType": "Patient", "meta": {"source": "http://lab.example"}})
    assert service.reindex(["Patient"]).ready == ["Patient.source-system"]
    assert ids(service, "Patient", [("source-system", "http://lab.example")]) == [p]
    assert service.search("Observation", [("source-system", "x")]).pending == ["source-system"]


def test_composite_of_r4_components(service: FhirService) -> None:
    composite = {**EYE_COLOUR, "url": "http://example.org/SearchParameter/code-valueq", "code": "code-valueq",
                 "base": ["Observation"], "type": "composite", "expression": "Observation",
                 "component": [
                     {"definition": "http://hl7.org/fhir/SearchParameter/clinical-code", "expression": "code"},
                     {"definition": "http://hl7.org/fhir/SearchParameter/Observation-value-quantity",
                      "expression": "value.as(Quantity)"},
                 ]}
    new(service, composite)
    o = new(service, {"resourceType": "Observation", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                      "valueQuantity": {"value": 150, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}})
    service.reindex(["Observation"])
    assert ids(service, "Observation", [("code-valueq", "http://loinc.org|8480-6$gt100")]) == [o]
    assert ids(service, "Observation", [("code-valueq", "http://loinc.org|8480-6$lt100")]) == []


@pytest.mark.parametrize(("change", "where"), [
    ({"expression": "Patient.extension.where("}, "SearchParameter.expression"),
    ({"expression": "Patient.extension.frobnicate()"}, "SearchParameter.expression"),
    ({"type": "special"}, "SearchParameter.type"),
    ({"code": "_eyes"}, "SearchParameter.code"),
    ({"code": "eye.colour"}, "SearchParameter.code"),
    ({"base": ["Patient", "NotAType"]}, "SearchParameter.base"),
    ({"type": "composite", "component": [{"definition": "http://nowhere/x", "expression": "code"}]},
     "SearchParameter.component"),
])
def test_unusable_search_parameters_are_rejected(service: FhirService, change: dict[str, Any], where: str) -> None:
    with pytest.raises(FhirError) as err:
        service.create("SearchParameter", {**EYE_COLOUR, **change})
    assert err.value.status == 422
    assert (err.value.issues[0].expression or "").startswith(where), err.value.message
    assert service.search("SearchParameter", []).entries == []  # nothing was stored


def test_drafts_are_stored_but_not_in_force_and_codes_are_not_shared(service: FhirService) -> None:
    draft = new(service, {**EYE_COLOUR, "status": "draft", "expression": "Patient.frobnicate("})
    assert service.search("Patient", [("eye-colour", "blue")]).unknown == ["eye-colour"]
    first = new(service, EYE_COLOUR)
    with pytest.raises(FhirError) as err:
        new(service, {**EYE_COLOUR, "url": "http://example.org/SearchParameter/eyes-again"})
    assert err.value.status == 422 and first in err.value.message
    # making the draft active (with a valid expression) collides too
    with pytest.raises(FhirError):
        service.update("SearchParameter", draft, {**EYE_COLOUR, "id": draft, "url": "http://example.org/x"})


def test_bulk_load_registers_search_parameters(service: FhirService) -> None:
    service.load([{**EYE_COLOUR, "id": "eyes"}, {**patient("blue"), "id": "p1"}])
    assert service.search("Patient", [("eye-colour", "blue")]).pending == ["eye-colour"]
    service.reindex(["Patient"])
    assert ids(service, "Patient", [("eye-colour", "blue")]) == ["p1"]


def test_instance_reindex_does_not_make_a_parameter_ready(service: FhirService) -> None:
    p = new(service, patient("blue"))
    new(service, EYE_COLOUR)
    report = service.reindex(["Patient"], p)
    assert report.counts == {"Patient": 1} and report.ready == [] and report.pending == ["Patient.eye-colour"]
    assert indexed(service, "eye-colour") == [p]
    with pytest.raises(FhirError) as err:
        service.reindex(["Patient"], "nobody")
    assert err.value.status == 404


# PostgreSQL only: SQLite writers take turns, so a SearchParameter cannot commit while another write is open
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_reindex_waits_for_writers_that_began_before_the_change(service: FhirService) -> None:
    """A writer holding rows extracted without the new parameter must commit before the batches pass."""
    began, release = threading.Event(), threading.Event()
    written: list[str] = []

    def slow_writer() -> None:
        with service.transaction() as tx:
            began.set()
            release.wait(20)
            result = service.create("Patient", patient("green"), tx=tx)
            assert result.version is not None
            written.append(result.version.res_id)

    writer = threading.Thread(target=slow_writer)
    writer.start()
    began.wait(10)
    new(service, EYE_COLOUR)  # commits while the writer, which read the parameters before, is still open
    reports: list[Any] = []
    reindexer = threading.Thread(target=lambda: reports.append(service.reindex(["Patient"])))
    reindexer.start()
    time.sleep(0.5)
    assert reindexer.is_alive()  # waiting for the older writer
    release.set()
    writer.join(20)
    reindexer.join(20)
    assert reports[0].ready == ["Patient.eye-colour"]
    assert ids(service, "Patient", [("eye-colour", "green")]) == written
