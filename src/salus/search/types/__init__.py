"""One module per search parameter type, each answering the same two questions.

* ``extract(value, fhir_type)``: the index rows (values only, without ``param``/``grp``)
  that one value found by the parameter's expression produces at write time.
  ``fhir_type`` is the value's FHIR type when the fast path knows it, else None
  (then the module infers it from the value's shape).
* ``parse(raw, modifier, param)`` and ``condition(value, modifier)``: how one
  search value is read from the URL and compiled to a predicate over the
  module's index table (see ``salus.search.sql``).

Modules never raise on odd data at write time: a value they cannot normalise
produces no row.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from salus.fhir.definitions import r4
from salus.fhir.outcome import FhirError


def _choice_suffixes() -> dict[str, str]:
    # valueDateTime -> dateTime: JSON capitalises the type code after the element name
    out = {p[0].upper() + p[1:]: p for p in r4()["primitiveTypes"]}
    for t, info in r4()["types"].items():
        if "." not in t and info.get("kind") in ("complex-type", "resource"):
            out.setdefault(t, t)
    return out


CHOICE_SUFFIXES: dict[str, str] = _choice_suffixes()


def extension_value(ext: dict[str, Any]) -> tuple[Any, str | None]:
    """The ``value[x]`` of an Extension and its FHIR type (search on an extension indexes its value)."""
    for key, value in ext.items():
        if key.startswith("value") and len(key) > 5:
            return value, CHOICE_SUFFIXES.get(key[5:])
    return None, None


def split_unescaped(text: str, sep: str) -> list[str]:
    """Split ``text`` on ``sep`` where not escaped by a backslash (FHIR search escaping), keeping escapes."""
    if "\\" not in text:
        return text.split(sep)
    parts: list[str] = []
    cur: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            cur.append(text[i : i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def unescape(text: str) -> str:
    """Remove FHIR search escapes (``\\,`` ``\\|`` ``\\$`` ``\\\\``)."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "\\,|$":
            out.append(text[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def invalid(param: str, message: str, code: str = "invalid") -> FhirError:
    """The 400 for a malformed search value (or ``not-supported`` with ``code``)."""
    return FhirError.of(400, code, message, expression=param)


_INTEGERS = frozenset({"integer", "positiveInt", "unsignedInt"})
_STRINGS = frozenset(r4()["primitiveTypes"]) - _INTEGERS - {"boolean", "decimal"}


def fits(value: Any, fhir_type: str) -> bool:
    """Whether a JSON value has the shape its FHIR type requires (odd data is skipped, not indexed)."""
    t = type(value)
    if fhir_type in _STRINGS:
        return t is str
    if fhir_type == "boolean":
        return t is bool
    if fhir_type in _INTEGERS:
        return t is int
    if fhir_type == "decimal":
        return t is int or t is float or t is Decimal
    return t is dict
