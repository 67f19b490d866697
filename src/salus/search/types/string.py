"""String parameters: case- and accent-insensitive prefix match on ``idx_string.norm``.

``norm`` is case-folded (``ß`` is ``ss``), accents removed (NFKD, combining marks dropped) and
whitespace collapsed; ``exact`` keeps the original text for ``:exact``.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Any

from salus.search.sql import Col, Expr, Like, Param, StartsWith, and_, eq, like_escape
from salus.search.tree import ParamDef, StringValue
from salus.search.types import extension_value, invalid, unescape

TABLE = "idx_string"
MODIFIERS = frozenset({"exact", "contains"})
# a btree entry must stay well under PostgreSQL's ~2.7 kB limit; prefixes longer than this are rare
MAX_NORM = 500

_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")
# parts of other complex types that are identifiers or links, not searchable text
_SKIP_KEYS = frozenset({"id", "extension", "modifierExtension", "system", "url", "reference", "language"})


@lru_cache(maxsize=65536)
def normalise(text: str) -> str:
    """The form string search compares: case-folded, no accents, single spaces (cached: displays repeat)."""
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    # casefold, not lower: R4 string search is case-insensitive, and "Straße" must match "strasse"
    return " ".join(text.casefold().split())


def _add(rows: list[tuple[Any, ...]], text: Any) -> None:
    if type(text) is str:
        norm = normalise(text)
        if norm:
            rows.append((norm[:MAX_NORM], text))


def _list(v: Any) -> list[Any]:
    return v if type(v) is list else []


def _parts(rows: list[tuple[Any, ...]], d: dict[str, Any], keys: tuple[str, ...]) -> None:
    for k in keys:
        v = d.get(k)
        if type(v) is list:
            for x in v:
                _add(rows, x)
        else:
            _add(rows, v)


def _leaves(rows: list[tuple[Any, ...]], v: Any, depth: int = 0) -> None:
    if type(v) is str:
        _add(rows, v)
    elif type(v) is list:
        for x in v:
            _leaves(rows, x, depth)
    elif type(v) is dict and depth < 4:
        for k, x in v.items():
            if k not in _SKIP_KEYS:
                _leaves(rows, x, depth + 1)


def extract(value: Any, fhir_type: str | None) -> list[tuple[Any, ...]]:
    """Rows ``(norm, exact)`` for one value: a string, a HumanName, an Address or another complex type."""
    rows: list[tuple[Any, ...]] = []
    if type(value) is str:
        _add(rows, value)
        return rows
    if type(value) is not dict:
        return rows
    if fhir_type is None:
        if "family" in value or "given" in value:
            fhir_type = "HumanName"
        elif "line" in value or "city" in value or "postalCode" in value:
            fhir_type = "Address"
        elif "url" in value and any(k.startswith("value") for k in value):
            fhir_type = "Extension"
    if fhir_type == "HumanName":
        _parts(rows, value, _NAME_PARTS)
        if "text" not in value:
            # the whole name lets "john sm" match John Smith as one prefix
            words = [*_list(value.get("prefix")), *_list(value.get("given")), value.get("family")]
            words += _list(value.get("suffix"))
            _add(rows, " ".join(w for w in words if type(w) is str))
    elif fhir_type == "Address":
        _parts(rows, value, _ADDRESS_PARTS)
    elif fhir_type == "Extension":
        inner, inner_type = extension_value(value)
        if inner is not None:
            return extract(inner, inner_type)
    else:
        _leaves(rows, value)
    return rows


def parse(raw: str, modifier: str | None, param: ParamDef) -> StringValue:
    """One string search value."""
    text = unescape(raw)
    if not text:
        raise invalid(param.code, f"Empty value for string parameter '{param.code}'")
    return StringValue(text)


def condition(value: StringValue, modifier: str | None, alias: str = "i") -> Expr:
    """Default: starts-with on the normalised text; ``:exact``: equality; ``:contains``: substring.

    A blinded value compares keyed hashes: the index holds one per prefix, so starts-with is
    equality on ``norm``, and ``:exact`` also needs the hash of the exact text.
    """
    if value.blinded is not None:
        norm_hash, exact_hash = value.blinded
        if modifier == "exact":
            return and_(eq("norm", norm_hash, alias), eq("exact", exact_hash, alias))
        return eq("norm", norm_hash, alias)
    if modifier == "exact":
        return eq("exact", value.text, alias)
    norm = normalise(value.text)[:MAX_NORM]
    if modifier == "contains":
        return Like(Col("norm", alias), Param("%" + like_escape(norm) + "%"))
    return StartsWith(Col("norm", alias), norm)


def sort_column() -> str:
    """The column sorting on this type orders by."""
    return "norm"
