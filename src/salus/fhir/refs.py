"""References between resources: parsing ``Type/id[/_history/v]`` and finding every Reference in a resource."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from salus.fhir.definitions import is_resource_type

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_RELATIVE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?$")


def is_valid_id(value: str) -> bool:
    """Whether ``value`` is a legal FHIR logical id."""
    return bool(ID_RE.match(value))


def parse_relative(ref: str) -> tuple[str, str, str | None] | None:
    """``(type, id, version)`` of a relative literal reference to a known resource type, else None."""
    m = _RELATIVE.match(ref)
    if m is None or not is_resource_type(m.group(1)):
        return None
    return m.group(1), m.group(2), m.group(3)


def iter_reference_holders(node: Any, *, skip_contained: bool = True) -> Iterator[dict[str, Any]]:
    """Every JSON object carrying a string ``reference`` (a FHIR Reference), depth first.

    Contained resources are skipped by default: their references belong to the container
    only through it, and ``#id`` references point inside the resource.
    """
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            if isinstance(cur.get("reference"), str):
                yield cur
            for key, value in cur.items():
                if key == "contained" and skip_contained:
                    continue
                if isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(cur, list):
            stack.extend(v for v in cur if isinstance(v, dict | list))


# compact JSON as orjson writes it: a literal relative reference is always this exact text
_REF_IN_JSON = re.compile(r'"reference":"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?"')


def targets_in_json(text: str) -> set[tuple[str, str]]:
    """The ``(type, id)`` of every relative reference in a resource's compact JSON text.

    Scanning the serialised text is several times faster than walking the dict, and it
    also sees references inside contained resources, which keep their targets alive too.
    """
    return {(t, i) for t, i in _REF_IN_JSON.findall(text) if is_resource_type(t)}


def rewrite_references(resource: Any, mapping: Callable[[str], str | None]) -> None:
    """Replace, in place, each reference for which ``mapping`` returns a new value."""
    for holder in iter_reference_holders(resource, skip_contained=False):
        new = mapping(holder["reference"])
        if new is not None:
            holder["reference"] = new
