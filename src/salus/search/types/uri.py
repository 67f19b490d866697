"""URI parameters: the string as is in ``idx_uri(value)``.

``:below`` is a prefix match (``http://acme.org/fhir/`` finds everything under
it); ``:above`` matches stored URIs that are the search value or one of its
path-parent URIs.
"""

from __future__ import annotations

from typing import Any

from salus.search.sql import Col, Expr, InList, Param, StartsWith, eq
from salus.search.tree import ParamDef, UriValue
from salus.search.types import invalid, unescape

TABLE = "idx_uri"
MODIFIERS = frozenset({"below", "above"})
MAX_URI = 1000


def extract(value: Any, fhir_type: str | None) -> list[tuple[Any, ...]]:
    """One row for a uri/url/canonical/oid/uuid string."""
    if type(value) is str and value and len(value) <= MAX_URI:
        return [(value,)]
    return []


def parse(raw: str, modifier: str | None, param: ParamDef) -> UriValue:
    """One URI search value."""
    text = unescape(raw)
    if not text:
        raise invalid(param.code, f"Empty uri value for parameter '{param.code}'")
    return UriValue(text)


def parents(uri: str) -> list[str]:
    """The URI and each path-parent of it, with and without the trailing slash."""
    out = [uri]
    scheme_end = uri.find("://")
    floor = scheme_end + 3 if scheme_end >= 0 else 0
    cut = uri.rstrip("/")
    while True:
        i = cut.rfind("/")
        if i < floor:
            break
        cut = cut[:i]
        out += [cut + "/", cut]
    return list(dict.fromkeys(out))


def condition(value: UriValue, modifier: str | None, alias: str = "i") -> Expr:
    """Equality by default; ``:below`` prefix; ``:above`` any of the parents."""
    if modifier == "below":
        return StartsWith(Col("value", alias), value.uri)
    if modifier == "above":
        return InList(Col("value", alias), tuple(Param(p) for p in parents(value.uri)))
    return eq("value", value.uri, alias)


def sort_column() -> str:
    """URIs sort by their text."""
    return "value"
