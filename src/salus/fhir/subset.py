"""``_summary`` and ``_elements`` (R4 search.html#summary, #elements): subsets of a resource, marked SUBSETTED."""

from __future__ import annotations

from functools import cache
from typing import Any

from salus.fhir.definitions import r4
from salus.fhir.outcome import FhirError

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
SUMMARY_MODES = ("true", "false", "text", "data", "count")


@cache
def _names(res_type: str) -> tuple[frozenset[str], tuple[str, ...], frozenset[str], tuple[str, ...]]:
    """Summary names and choice prefixes, mandatory names and choice prefixes, of a resource type."""
    summary = r4()["summaryElements"].get(res_type, [])
    elements = r4()["types"].get(res_type, {}).get("elements", {})
    mandatory = [n for n, el in elements.items() if el[0] >= 1]

    def split(names: list[str]) -> tuple[frozenset[str], tuple[str, ...]]:
        return frozenset(n for n in names if not n.endswith("[x]")), tuple(n[:-3] for n in names if n.endswith("[x]"))

    return (*split(summary), *split(mandatory))


def _matches(key: str, plain: frozenset[str], choices: tuple[str, ...]) -> bool:
    name = key[1:] if key.startswith("_") else key  # a primitive's extensions follow it
    return name in plain or any(name.startswith(c) and name[len(c):][:1].isupper() for c in choices)


def check_summary(value: str | None) -> str | None:
    """A ``_summary`` value, or 400 if it is not one of the spec's."""
    if value is not None and value not in SUMMARY_MODES:
        raise FhirError.of(400, "invalid", f"_summary must be one of {', '.join(SUMMARY_MODES)}, not {value!r}")
    return value


def wants_subset(summary: str | None, elements: list[str] | None) -> bool:
    """Whether a resource must be cut down (and re-serialised) for this request."""
    return summary in ("true", "text", "data") or bool(elements)


def subset(resource: dict[str, Any], summary: str | None, elements: list[str] | None) -> dict[str, Any]:
    """The resource reduced as ``_summary``/``_elements`` ask, with the SUBSETTED tag."""
    rt = resource.get("resourceType", "")
    summ_plain, summ_choice, mand_plain, mand_choice = _names(rt)
    always = {"resourceType", "id", "meta"}
    if summary == "true":
        out = {k: v for k, v in resource.items() if k in always or _matches(k, summ_plain, summ_choice)}
    elif summary == "text":
        out = {k: v for k, v in resource.items()
               if k in always or k == "text" or _matches(k, mand_plain, mand_choice)}
    elif summary == "data":
        out = {k: v for k, v in resource.items() if k != "text"}
    elif elements:
        wanted = frozenset(e.strip() for e in elements if e.strip())
        out = {k: v for k, v in resource.items()
               if k in always or _matches(k, wanted, ()) or _matches(k, mand_plain, mand_choice)
               or any(k.startswith(w) and k[len(w):][:1].isupper() for w in wanted)}
    else:
        return resource
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    out["meta"] = meta
    return out
