"""PATCH with FHIRPath Patch (R4 fhirpatch.html): the official conformance cases, edge cases and the HTTP interaction.

The conformance cases (``fhir-patch-tests.xml``) are FHIR XML; the server speaks JSON only, so each
case is converted here by a small converter driven by the R4 definitions (element names, repeats,
primitive types, choice elements), kept in the tests because the server itself never reads XML.
"""

from __future__ import annotations

import base64
import copy
import xml.etree.ElementTree as ET
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import orjson
import pytest
from starlette.testclient import TestClient

from salus.fhir.definitions import r4
from salus.fhir.outcome import FhirError
from salus.service.fhirpath_patch import apply_fhirpath_patch
from tests.conftest import corpus

FHIR = {"Content-Type": "application/fhir+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}

# Conformance cases we do not pass, each with the exact reason. Empty: all 33 pass.
SKIPPED: dict[str, str] = {}


# ---- FHIR XML -> FHIR JSON, driven by the R4 definitions ---------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _slot(type_name: str, name: str) -> tuple[str, str, bool]:
    """The JSON key, type and repetition of the XML child ``name`` of ``type_name`` (choice names resolved)."""
    elements = r4()["types"][type_name]["elements"]
    if name in elements:
        d = elements[name]
        return name, d[2][0], d[1] != 1
    for ename, d in elements.items():
        if ename.endswith("[x]"):
            for t in d[2]:
                if ename[:-3] + t[:1].upper() + t[1:] == name:
                    return name, t, False
    raise AssertionError(f"{type_name} has no element {name!r}")


def _xhtml(el: ET.Element, root: bool = True) -> str:
    """Narrative XHTML as the JSON string FHIR carries it (the default namespace on the root div)."""
    tag = _local(el.tag)
    attrs = ' xmlns="http://www.w3.org/1999/xhtml"' if root else ""
    attrs += "".join(f" {_local(k)}={quoteattr(v)}" for k, v in el.attrib.items())
    inner = escape(el.text or "") + "".join(_xhtml(c, False) + escape(c.tail or "") for c in el)
    return f"<{tag}{attrs}>{inner}</{tag}>"


def _primitive(el: ET.Element, type_name: str) -> Any:
    if type_name == "xhtml":
        return _xhtml(el)
    v = el.get("value")
    if v is None:
        return None
    if type_name == "boolean":
        return v == "true"
    if type_name in ("integer", "positiveInt", "unsignedInt"):
        return int(v)
    if type_name == "decimal":
        return float(v) if any(c in v for c in ".eE") else int(v)
    return v


def _put(out: dict[str, Any], key: str, value: Any, ext: dict[str, Any] | None, many: bool) -> None:
    """Set or append a value, keeping a primitive list and its ``_key`` companion aligned."""
    if not many:
        if value is not None:
            out[key] = value
        if ext:
            out[f"_{key}"] = ext
        return
    n = max(len(out.get(key, [])), len(out.get(f"_{key}", [])))
    if value is not None or key in out:
        out.setdefault(key, [None] * n).append(value)
    if ext or f"_{key}" in out:
        out.setdefault(f"_{key}", [None] * n).append(ext or None)
    for k in (key, f"_{key}"):
        if k in out:
            out[k].extend([None] * (n + 1 - len(out[k])))


def _fill(out: dict[str, Any], el: ET.Element, type_name: str) -> dict[str, Any]:
    for attr in ("id", "url"):  # attributes on datatypes and backbone elements (Extension.url)
        if attr in el.attrib:
            out[attr] = el.attrib[attr]
    for child in el:
        key, t, many = _slot(type_name, _local(child.tag))
        if t in r4()["primitiveTypes"]:
            ext: dict[str, Any] = {}
            if "id" in child.attrib:
                ext["id"] = child.attrib["id"]
            exts = [_fill({}, x, "Extension") for x in child if _local(x.tag) == "extension"]
            if exts:
                ext["extension"] = exts
            _put(out, key, _primitive(child, t), ext or None, many)
        elif t == "Resource":
            _put(out, key, xml_resource(next(iter(child))), None, many)
        else:
            _put(out, key, _fill({}, child, t), None, many)
    return out


def xml_resource(el: ET.Element) -> dict[str, Any]:
    """A FHIR XML resource element as FHIR JSON."""
    rtype = _local(el.tag)
    return _fill({"resourceType": rtype}, el, rtype)


def _first_child(el: ET.Element | None) -> ET.Element:
    assert el is not None
    return next(iter(el))


def conformance_cases() -> list[Any]:
    try:
        root = ET.parse(corpus("fhir-patch-r4", "fhir-patch-tests.xml")).getroot()
    except BaseException:  # collected without the corpus: the test itself skips or fails
        return [pytest.param(None, id="corpus-missing")]
    return [pytest.param(case, id=case.get("name")) for case in root.findall("case")]


def test_the_corpus_has_33_cases() -> None:
    root = ET.parse(corpus("fhir-patch-r4", "fhir-patch-tests.xml")).getroot()
    assert len(root.findall("case")) == 33


@pytest.mark.parametrize("case", conformance_cases())
def test_fhirpath_patch_conformance_cases(case: ET.Element | None) -> None:
    corpus("fhir-patch-r4", "fhir-patch-tests.xml")
    assert case is not None
    if case.get("name") in SKIPPED:
        pytest.skip(SKIPPED[case.get("name", "")])
    resource = xml_resource(_first_child(case.find("input")))
    patch = xml_resource(_first_child(case.find("diff")))
    error = case.find("error")
    if error is not None:
        with pytest.raises(FhirError) as err:
            apply_fhirpath_patch(resource, patch)
        assert err.value.status == 422, err.value.message
        assert err.value.issues[0].code == "processing"
        return
    expected = xml_resource(_first_child(case.find("output")))
    before = orjson.dumps(resource)
    assert apply_fhirpath_patch(resource, patch) == expected
    assert orjson.dumps(resource) == before  # the input is not modified


def test_xml_converter_knows_primitives_lists_extensions_and_narrative() -> None:
    el = ET.fromstring(
        '<Patient xmlns="http://hl7.org/fhir"><id value="p"/><text><status value="generated"/>'
        '<div xmlns="http://www.w3.org/1999/xhtml"><p>a &amp; <b>b</b></p></div></text>'
        '<active value="true"/><name><given value="A"/><given><extension url="u"><valueString value="x"/>'
        '</extension></given></name><deceasedBoolean value="false"/><multipleBirthInteger value="2"/></Patient>'
    )
    assert xml_resource(el) == {
        "resourceType": "Patient", "id": "p",
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>a &amp; <b>b</b></p></div>'},
        "active": True,
        "name": [{"given": ["A", None], "_given": [None, {"extension": [{"url": "u", "valueString": "x"}]}]}],
        "deceasedBoolean": False, "multipleBirthInteger": 2,
    }


# ---- building patches ---------------------------------------------------------------------------------


def op(
    kind: str, path: str, *, name: str | None = None, value: dict[str, Any] | None = None,
    index: int | None = None, source: int | None = None, destination: int | None = None,
) -> dict[str, Any]:
    """One ``operation`` parameter; ``value`` is the value part's body (``{"valueString": "x"}`` or ``{"part": [...]}``)."""
    parts: list[dict[str, Any]] = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    if name is not None:
        parts.append({"name": "name", "valueString": name})
    if value is not None:
        parts.append({"name": "value", **value})
    for label, v in (("index", index), ("source", source), ("destination", destination)):
        if v is not None:
            parts.append({"name": label, "valueInteger": v})
    return {"name": "operation", "part": parts}


def params(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(ops)}


def patched(resource: dict[str, Any], *ops: dict[str, Any]) -> dict[str, Any]:
    return apply_fhirpath_patch(resource, params(*ops))


def failure(resource: dict[str, Any], document: Any) -> FhirError:
    with pytest.raises(FhirError) as err:
        apply_fhirpath_patch(resource, document)
    return err.value


EXT = {"extension": [{"url": "http://example.org/x", "valueString": "ext"}]}
PATIENT: dict[str, Any] = {
    "resourceType": "Patient", "id": "p",
    "identifier": [{"use": "official", "value": "1"}, {"use": "usual", "value": "2"}],
    "name": [{"family": "A", "given": ["a", "b", "c"], "_given": [None, EXT, None]}, {"family": "B"}],
    "birthDate": "1970-01-01",
    "deceasedBoolean": False,
    "maritalStatus": {"text": "single"},
}


def patient() -> dict[str, Any]:
    return copy.deepcopy(PATIENT)


# ---- locating elements --------------------------------------------------------------------------------


def test_where_first_last_and_bare_or_delimited_names_locate_one_element() -> None:
    r = patched(
        patient(),
        op("replace", "Patient.identifier.where(use = 'usual').value", value={"valueString": "3"}),
        op("replace", "Patient.name.first().family", value={"valueString": "F"}),
        op("replace", "name.last().family", value={"valueString": "L"}),
        op("replace", "Patient.`birthDate`", value={"valueDate": "1980-02-02"}),
    )
    assert [i["value"] for i in r["identifier"]] == ["1", "3"]
    assert [n["family"] for n in r["name"]] == ["F", "L"]
    assert r["birthDate"] == "1980-02-02"


def test_where_criteria_are_typed_fhirpath() -> None:
    r = patched(
        {"resourceType": "Patient", "name": [
            {"family": "Old", "period": {"start": "1990-01-01"}}, {"family": "New", "period": {"start": "2010-05-01"}},
        ]},
        op("delete", "Patient.name.where(period.start < @2000-01-01)"),
    )
    assert r["name"] == [{"family": "New", "period": {"start": "2010-05-01"}}]


def test_skip_take_tail_and_single() -> None:
    r = {"resourceType": "Patient", "identifier": [{"value": str(i)} for i in range(4)]}
    assert patched(r, op("delete", "Patient.identifier.skip(1).take(1)"))["identifier"] == [
        {"value": "0"}, {"value": "2"}, {"value": "3"}]
    assert patched(r, op("replace", "Patient.identifier.tail().tail().first().value", value={"valueString": "x"}))[
        "identifier"][2] == {"value": "x"}
    err = failure(r, params(op("delete", "Patient.identifier.single()")))
    assert err.status == 422 and "single()" in err.message


def test_choice_elements_by_fhirpath_name_json_key_and_of_type() -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "valueQuantity": {"value": 1, "unit": "mg"}}
    assert patched(obs, op("replace", "Observation.value.unit", value={"valueString": "g"}))["valueQuantity"] == {
        "value": 1, "unit": "g"}
    assert patched(obs, op("replace", "Observation.value.ofType(Quantity).value", value={"valueDecimal": 2}))[
        "valueQuantity"]["value"] == 2
    assert patched(obs, op("delete", "Observation.valueQuantity")).get("valueQuantity") is None
    assert patched(obs, op("delete", "Observation.value.ofType(string)")) == obs  # nothing of that type: no-op


def test_replacing_a_choice_element_with_another_type_changes_its_key() -> None:
    r = patched(patient(), op("replace", "Patient.deceased", value={"valueDateTime": "2020-01-01"}))
    assert r["deceasedDateTime"] == "2020-01-01" and "deceasedBoolean" not in r
    err = failure(patient(), params(op("replace", "Patient.deceased", value={"valueString": "yes"})))
    assert err.status == 422 and "does not fit" in err.message


def test_add_to_a_choice_element_names_the_key_from_the_value_type() -> None:
    r = patched({"resourceType": "Patient"}, op("add", "Patient", name="deceased", value={"valueBoolean": True}))
    assert r == {"resourceType": "Patient", "deceasedBoolean": True}
    err = failure(r, params(op("add", "Patient", name="deceased", value={"valueDateTime": "2020-01-01"})))
    assert err.status == 422 and "already has a value" in err.message


def test_contained_resources_are_typed_by_their_resource_type() -> None:
    r = {"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o", "name": "Acme"}],
         "managingOrganization": {"reference": "#o"}}
    out = patched(r, op("replace", "Patient.contained.ofType(Organization).name", value={"valueString": "Apex"}))
    assert out["contained"][0]["name"] == "Apex"


# ---- primitive extensions ----------------------------------------------------------------------------


def test_deleting_from_a_primitive_list_keeps_the_extensions_aligned() -> None:
    r = patched(patient(), op("delete", "Patient.name[0].given[0]"))
    assert r["name"][0]["given"] == ["b", "c"] and r["name"][0]["_given"] == [EXT, None]
    r = patched(patient(), op("delete", "Patient.name[0].given[1]"))
    assert r["name"][0]["given"] == ["a", "c"] and "_given" not in r["name"][0]  # only nulls left: dropped


def test_inserting_and_moving_in_a_primitive_list_keeps_the_extensions_aligned() -> None:
    r = patched(patient(), op("insert", "Patient.name[0].given", index=0, value={"valueString": "z"}))
    assert r["name"][0]["given"] == ["z", "a", "b", "c"] and r["name"][0]["_given"] == [None, None, EXT, None]
    r = patched(patient(), op("move", "Patient.name[0].given", source=1, destination=2))
    assert r["name"][0]["given"] == ["a", "c", "b"] and r["name"][0]["_given"] == [None, None, EXT]
    r = patched(patient(), op("insert", "Patient.name[0].given", index=3, value={"valueString": "d", "_valueString": EXT}))
    assert r["name"][0]["given"] == ["a", "b", "c", "d"] and r["name"][0]["_given"] == [None, EXT, None, EXT]


def test_replacing_a_primitive_replaces_the_element_with_its_extensions() -> None:
    r = patched(patient(), op("replace", "Patient.name[0].given[1]", value={"valueString": "q"}))
    assert r["name"][0]["given"] == ["a", "q", "c"] and "_given" not in r["name"][0]


def test_extensions_on_a_primitive_are_added_and_deleted_in_its_companion() -> None:
    ext_parts = {"part": [{"name": "url", "valueUri": "http://example.org/x"}, {"name": "value", "valueString": "ext"}]}
    r = patched(patient(), op("add", "Patient.birthDate", name="extension", value=ext_parts))
    assert r["birthDate"] == "1970-01-01" and r["_birthDate"] == EXT
    assert patched(r, op("delete", "Patient.birthDate.extension('http://example.org/x')")) == PATIENT
    assert patched(r, op("delete", "Patient.birthDate.extension[0]")) == PATIENT
    # an extension on a list item: the companion array is created aligned
    r = patched(patient(), op("add", "Patient.name[0].given[2]", name="extension", value=ext_parts))
    assert r["name"][0]["_given"] == [None, EXT, EXT]


def test_deleting_the_last_child_removes_the_emptied_parent() -> None:
    r = patched(patient(), op("delete", "Patient.maritalStatus.text"))
    assert "maritalStatus" not in r
    r = patched(patient(), op("delete", "Patient.identifier[0]"), op("delete", "Patient.identifier[0]"))
    assert "identifier" not in r


# ---- values ------------------------------------------------------------------------------------------


def test_anonymous_values_from_parts_follow_the_definitions() -> None:
    value = {"part": [
        {"name": "name", "valueHumanName": {"family": "C"}},
        {"name": "telecom", "valueContactPoint": {"system": "phone", "value": "1"}},
        {"name": "telecom", "valueContactPoint": {"system": "email", "value": "a@b"}},
        {"name": "gender", "valueCode": "female"},
    ]}
    r = patched(patient(), op("add", "Patient", name="contact", value=value))
    assert r["contact"] == [{"name": {"family": "C"}, "gender": "female", "telecom": [
        {"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}]}]


def test_replace_a_whole_list_item_and_insert_at_the_end() -> None:
    r = patched(
        patient(),
        op("replace", "Patient.identifier[1]", value={"valueIdentifier": {"value": "9"}}),
        op("insert", "Patient.identifier", index=2, value={"valueIdentifier": {"value": "10"}}),
    )
    assert r["identifier"] == [{"use": "official", "value": "1"}, {"value": "9"}, {"value": "10"}]


def test_delete_of_nothing_is_not_an_error() -> None:
    assert patched(patient(), op("delete", "Patient.telecom"), op("delete", "Patient.identifier.where(use = 'old')")) == PATIENT


def test_an_empty_patch_changes_nothing() -> None:
    assert apply_fhirpath_patch(patient(), {"resourceType": "Parameters"}) == PATIENT


# ---- operations that cannot apply: 422 -------------------------------------------------------------------


@pytest.mark.parametrize(("operation", "words"), [
    (op("replace", "Patient.gender", value={"valueCode": "male"}), "no content found"),
    (op("replace", "Patient.identifier.value", value={"valueString": "x"}), "selects 2 elements"),
    (op("delete", "Patient.identifier"), "only a single element"),
    (op("add", "Patient.telecom", name="value", value={"valueString": "x"}), "no content found"),
    (op("add", "Patient.name", name="text", value={"valueString": "x"}), "selects 2 elements"),
    (op("add", "Patient", name="nickname", value={"valueString": "x"}), "no element 'nickname'"),
    (op("add", "Patient", name="birthDate", value={"valueDate": "1999"}), "already has a value"),
    (op("add", "Patient", name="maritalStatus", value={"valueString": "x"}), "does not fit"),
    (op("add", "Patient", name="birthDate", value={"part": [{"name": "x", "valueString": "y"}]}), "not parts"),
    (op("replace", "Patient.birthDate", value={"valueCodeableConcept": {"text": "x"}}), "does not fit"),
    (op("insert", "Patient.identifier", index=3, value={"valueIdentifier": {"value": "x"}}), "outside 0..2"),
    (op("insert", "Patient.identifier", index=-1, value={"valueIdentifier": {"value": "x"}}), "outside 0..2"),
    (op("insert", "Patient.birthDate", index=0, value={"valueDate": "1999"}), "is not a list"),
    (op("insert", "Patient.identifier.first()", index=0, value={"valueIdentifier": {"value": "x"}}), "does not name a list"),
    (op("insert", "Patient.name.given", index=0, value={"valueString": "x"}), "selects 2 elements"),
    (op("move", "Patient.identifier", source=0, destination=2), "destination 2 is outside 0..1"),
    (op("move", "Patient.telecom", source=0, destination=0), "source 0 is outside"),
    (op("delete", "Patient"), "resource itself"),
    (op("replace", "Patient", value={"valueString": "x"}), "resource itself"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_operations_that_cannot_apply_are_422(operation: dict[str, Any], words: str) -> None:
    err = failure(patient(), params(operation))
    assert err.status == 422, err.message
    assert err.issues[0].code == "processing" and words in err.message, err.message
    assert err.issues[0].expression == "Parameters.parameter[0]"


# ---- malformed documents: 400 ---------------------------------------------------------------------------


def _raw(*parts: dict[str, Any]) -> dict[str, Any]:
    return params({"name": "operation", "part": list(parts)})


TYPE = {"name": "type", "valueCode": "replace"}
PATH = {"name": "path", "valueString": "Patient.birthDate"}


@pytest.mark.parametrize(("document", "words"), [
    ([{"op": "replace", "path": "/birthDate", "value": "1999"}], "Parameters resource"),
    ({"resourceType": "Patient"}, "Parameters resource"),
    ({"resourceType": "Parameters", "parameter": {"name": "operation"}}, "must be an array"),
    (params({"name": "op", "part": []}), "named 'operation'"),
    (params({"name": "operation"}), "needs its parts"),
    (_raw(PATH, {"name": "value", "valueDate": "1999"}), "needs a type"),
    (_raw({"name": "type", "valueCode": "copy"}, PATH), "unknown operation type 'copy'"),
    (_raw(TYPE, {"name": "value", "valueDate": "1999"}), "needs path"),
    (_raw(TYPE, PATH), "needs value"),
    (_raw({"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
          {"name": "value", "valueDate": "1999"}), "needs name"),
    (_raw({"name": "type", "valueCode": "insert"}, {"name": "path", "valueString": "Patient.identifier"},
          {"name": "index", "valueString": "0"}, {"name": "value", "valueIdentifier": {}}), "index must be an integer"),
    (_raw(TYPE, PATH, {"name": "value", "valueDate": "1999", "valueString": "x"}), "exactly one of"),
    (_raw(TYPE, PATH, {"name": "value"}), "exactly one of"),
    (_raw(TYPE, PATH, {"name": "value", "valueFoo": "x"}), "names no FHIR data type"),
    (_raw(TYPE, PATH, {"name": "value", "valueDate": {"x": 1}}), "does not hold a date"),
    (_raw(TYPE, PATH, PATH, {"name": "value", "valueDate": "1999"}), "repeated"),
    (_raw(TYPE, PATH, {"name": "colour", "valueString": "red"}), "unknown operation part 'colour'"),
    (_raw(TYPE, {"name": "path", "valueString": "Patient.name["}, {"name": "value", "valueDate": "1999"}),
     "not a valid FHIRPath"),
    (_raw(TYPE, {"name": "path", "valueString": "Patient.birthDate birthDate"}, {"name": "value", "valueDate": "1999"}),
     "not a valid FHIRPath"),
    (_raw(TYPE, {"name": "path", "valueString": "  "}, {"name": "value", "valueDate": "1999"}), "non-empty string"),
])
def test_malformed_documents_are_400(document: Any, words: str) -> None:
    err = failure(patient(), document)
    assert err.status == 400, err.message
    assert words in err.message, err.message


@pytest.mark.parametrize("path", [
    "Patient.name.select(family)",
    "Patient.managingOrganization.resolve().name",
    "Patient.name | Patient.telecom",
    "Patient.name[0].family + 'x'",
    "%resource.birthDate",
])
def test_paths_that_cannot_locate_an_element_are_400_not_supported(path: str) -> None:
    err = failure(patient(), params(op("replace", path, value={"valueString": "x"})))
    assert err.status == 400 and err.issues[0].code == "not-supported", err.message


# ---- over HTTP ---------------------------------------------------------------------------------------------


def _create(client: TestClient, resource: dict[str, Any]) -> None:
    r = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", content=orjson.dumps(resource), headers=FHIR)
    assert r.status_code in (200, 201), r.text


def _patch(client: TestClient, path: str, *ops: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return client.patch(path, content=orjson.dumps(params(*ops)), headers={**FHIR, **(headers or {})})


def test_fhirpath_patch_over_http(client: TestClient) -> None:
    _create(client, {"resourceType": "Patient", "id": "fp", "birthDate": "1970-01-01",
                  "identifier": [{"system": "http://example.org", "value": "1"}]})
    r = _patch(client, "/fhir/Patient/fp", op("replace", "Patient.birthDate", value={"valueDate": "1971-02-03"}),
               headers={"If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert r.json()["birthDate"] == "1971-02-03" and r.json()["meta"]["versionId"] == "2"
    assert r.headers["ETag"] == 'W/"2"'
    steps = [
        op("add", "Patient", name="identifier", value={"valueIdentifier": {"system": "http://example.org", "value": "3"}}),
        op("insert", "Patient.identifier", index=1, value={"valueIdentifier": {"system": "http://example.org", "value": "2"}}),
        op("add", "Patient", name="name", value={"valueHumanName": {"family": "Doe", "given": ["Jane"]}}),
        op("move", "Patient.identifier", source=2, destination=0),
        op("delete", "Patient.identifier.where(value = '1')"),
    ]
    for n, step in enumerate(steps, start=3):
        r = _patch(client, "/fhir/Patient/fp", step)
        assert r.status_code == 200, r.text
        assert r.json()["meta"]["versionId"] == str(n)
    body = client.get("/fhir/Patient/fp").json()
    assert [i["value"] for i in body["identifier"]] == ["3", "2"]
    assert body["name"] == [{"family": "Doe", "given": ["Jane"]}] and body["meta"]["versionId"] == "7"
    history = client.get("/fhir/Patient/fp/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["PATCH"] * 6 + ["PUT"]
    # plain application/json is FHIR JSON too
    r = client.patch("/fhir/Patient/fp", content=orjson.dumps(params(op("delete", "Patient.name"))),
                     headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and "name" not in r.json()


def test_fhirpath_patch_errors_over_http(client: TestClient) -> None:
    _create(client, {"resourceType": "Patient", "id": "fe", "gender": "male"})
    # no match: 422, and nothing is written
    r = _patch(client, "/fhir/Patient/fe", op("replace", "Patient.birthDate", value={"valueDate": "1971"}))
    assert r.status_code == 422 and r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["code"] == "processing"
    # malformed: 400
    r = client.patch("/fhir/Patient/fe", content=orjson.dumps(_raw({"name": "type", "valueCode": "copy"}, PATH)),
                     headers=FHIR)
    assert r.status_code == 400 and r.json()["issue"][0]["code"] == "invalid"
    # a JSON Patch array sent as FHIR JSON, a Parameters sent as JSON Patch
    ops = [{"op": "replace", "path": "/gender", "value": "female"}]
    assert client.patch("/fhir/Patient/fe", content=orjson.dumps(ops), headers=FHIR).status_code == 400
    assert client.patch("/fhir/Patient/fe", content=orjson.dumps(params()), headers=JSON_PATCH).status_code == 400
    # other media types
    for ctype in ("text/plain", "application/fhir+xml", "application/x-www-form-urlencoded"):
        r = client.patch("/fhir/Patient/fe", content=orjson.dumps(params()), headers={"Content-Type": ctype})
        assert r.status_code == 415, (ctype, r.text)
    # a stale If-Match
    r = _patch(client, "/fhir/Patient/fe", op("replace", "Patient.gender", value={"valueCode": "female"}),
               headers={"If-Match": 'W/"7"'})
    assert r.status_code == 412
    # the result is validated like any update
    r = _patch(client, "/fhir/Patient/fe", op("replace", "Patient.gender", value={"valueCode": "robot"}))
    assert r.status_code in (400, 422)
    r = _patch(client, "/fhir/Patient/fe", op("add", "Patient", name="birthDate", value={"valueDate": "1971-13-45"}))
    assert r.status_code in (400, 422)
    # the id may not change
    r = _patch(client, "/fhir/Patient/fe", op("replace", "Patient.id", value={"valueId": "other"}))
    assert r.status_code == 422
    assert _patch(client, "/fhir/Patient/missing", op("delete", "Patient.gender")).status_code == 404
    assert client.get("/fhir/Patient/fe").json()["meta"]["versionId"] == "1"
    # JSON Patch is still served on its own media type
    r = client.patch("/fhir/Patient/fe", content=orjson.dumps(ops), headers=JSON_PATCH)
    assert r.status_code == 200 and r.json()["gender"] == "female"


def test_conditional_fhirpath_patch(client: TestClient) -> None:
    _create(client, {"resourceType": "Patient", "id": "cp", "identifier": [{"system": "http://example.org", "value": "cp"}]})
    r = _patch(client, "/fhir/Patient?identifier=http://example.org|cp",
               op("add", "Patient", name="active", value={"valueBoolean": True}))
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "cp" and r.json()["active"] is True


def test_fhirpath_patch_in_transaction_and_batch_bundles(client: TestClient) -> None:
    _create(client, {"resourceType": "Patient", "id": "tb", "active": True})
    _create(client, {"resourceType": "Organization", "id": "org", "name": "Acme"})
    json_patch = base64.b64encode(orjson.dumps([{"op": "add", "path": "/gender", "value": "other"}])).decode()
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": params(op("replace", "Patient.active", value={"valueBoolean": False}),
                            op("add", "Patient", name="managingOrganization",
                               value={"valueReference": {"reference": "urn:uuid:0d1c4b4e-0000-4000-8000-000000000001"}})),
         "request": {"method": "PATCH", "url": "Patient/tb"}},
        {"fullUrl": "urn:uuid:0d1c4b4e-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Organization", "name": "New"}, "request": {"method": "POST", "url": "Organization"}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": json_patch},
         "request": {"method": "PATCH", "url": "Patient/tb"}},
    ]}
    r = client.post("/fhir", content=orjson.dumps(bundle), headers=FHIR)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["200 OK", "201 Created", "200 OK"]
    body = client.get("/fhir/Patient/tb").json()
    org_id = r.json()["entry"][1]["response"]["location"].split("/")[1]
    # the patch's reference to the new Organization was rewritten to its assigned id
    assert body["active"] is False and body["gender"] == "other"
    assert body["managingOrganization"] == {"reference": f"Organization/{org_id}"}
    # a failing FHIRPath Patch rolls the transaction back
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": params(op("replace", "Patient.active", value={"valueBoolean": True})),
         "request": {"method": "PATCH", "url": "Patient/tb"}},
        {"resource": params(op("replace", "Patient.birthDate", value={"valueDate": "1999"})),
         "request": {"method": "PATCH", "url": "Patient/tb"}},
    ]}
    r = client.post("/fhir", content=orjson.dumps(bundle), headers=FHIR)
    assert r.status_code == 422, r.text
    assert client.get("/fhir/Patient/tb").json()["active"] is False
    # in a batch each entry stands alone
    bundle["type"] = "batch"
    r = client.post("/fhir", content=orjson.dumps(bundle), headers=FHIR)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["200", "422"]
    assert client.get("/fhir/Patient/tb").json()["active"] is True


def test_capability_statement_lists_fhirpath_patch(client: TestClient) -> None:
    assert client.get("/fhir/metadata").json()["patchFormat"] == ["application/json-patch+json", "application/fhir+json"]
