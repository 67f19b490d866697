"""Quantity parameters: ``(system, code, low, high)`` rows in ``idx_quantity``.

A value is stored exactly (low = high; see ``number``: only ``eq``, ``ne`` and
``ap`` use the search value's precision); a comparator (``<``, ``>=``...) opens the
range on that side. ``code`` is the UCUM (or other) code, or the unit text when
there is no code; a unit text that differs from the code gets a row of its own
with no system, since ``n||unit`` matches it. A Range gives low..high; Money gives
the ISO 4217 currency as code. SampledData is not indexed.

UCUM canonical forms (``mg`` and ``g`` comparable): each function in
``CANONICAL`` may add a row in canonical units for a stored quantity
(``types.ucum``), and a search in a UCUM unit is converted the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from salus.search.sql import Cmp, Col, Expr, IsNull, Param, and_, eq, or_
from salus.search.tree import NumberValue, ParamDef, QuantityValue
from salus.search.types import invalid, split_unescaped, ucum, unescape
from salus.search.types.number import INF, parse_number, range_of, value_range
from salus.search.types.number import condition_on as number_condition

TABLE = "idx_quantity"
MODIFIERS: frozenset[str] = frozenset()
CURRENCY_SYSTEM = "urn:iso:std:iso:4217"
# hook for canonical units: (system, code, low, high) -> a canonical (system, code, low, high) or None
CANONICAL: list[Callable[[str | None, str | None, float, float], tuple[str, str, float, float] | None]] = [
    ucum.canonical_row,
]


def _s(v: Any) -> str | None:
    return v if type(v) is str and v else None


def _quantity(v: dict[str, Any]) -> tuple[Any, ...] | None:
    r = value_range(v.get("value"))
    if r is None:
        return None
    lo, hi = r
    comparator = v.get("comparator")
    if comparator in ("<", "<="):
        lo = -INF
    elif comparator in (">", ">="):
        hi = INF
    code = _s(v.get("code")) or _s(v.get("unit"))
    return _s(v.get("system")), code, lo, hi


def extract(value: Any, fhir_type: str | None) -> list[tuple[Any, ...]]:
    """Rows for a Quantity (or Age, Duration...), a Range or Money."""
    if type(value) is not dict:
        return []
    if fhir_type == "SampledData" or "origin" in value:
        return []
    rows: list[tuple[Any, ...]] = []
    if fhir_type == "Range" or "low" in value or "high" in value:
        r = range_of(value)
        unit = next((x for x in (value.get("low"), value.get("high")) if type(x) is dict), {})
        if r is not None:
            rows.append((_s(unit.get("system")), _s(unit.get("code")) or _s(unit.get("unit")), r[0], r[1]))
    elif fhir_type == "Money" or "currency" in value:
        r = value_range(value.get("value"))
        if r is not None:
            rows.append((CURRENCY_SYSTEM, _s(value.get("currency")), r[0], r[1]))
    else:
        row = _quantity(value)
        if row is not None:
            rows.append(row)
            unit = _s(value.get("unit"))
            if unit is not None and unit != row[1]:
                # n||code matches "either the code or the stated human unit" (R4 search.html#quantity)
                rows.append((None, unit, row[2], row[3]))
    for canon in CANONICAL:
        for row in list(rows):
            extra = canon(*row)
            if extra is not None:
                rows.append(extra)
    return rows


def parse(raw: str, modifier: str | None, param: ParamDef) -> QuantityValue:
    """``[prefix]number[|system|code]``; ``number||code`` matches the code in any system."""
    parts = split_unescaped(raw, "|")
    if len(parts) not in (1, 3):
        raise invalid(
            param.code, f"Invalid quantity '{raw}' for parameter '{param.code}' (expected number|system|code)"
        )
    number = parse_number(parts[0], param)
    if len(parts) == 1:
        return QuantityValue(number)
    return QuantityValue(number, unescape(parts[1]) or None, unescape(parts[2]) or None)


def condition(value: QuantityValue, modifier: str | None, alias: str = "i") -> Expr:
    """Number semantics on low/high, plus system and code when given; UCUM units compare in canonical units."""
    unit = ucum.canonical_unit(value.system, value.code)
    if unit is not None and value.code is not None:
        n = value.number
        canon = NumberValue(
            n.prefix, ucum.convert_decimal(n.value, value.code),
            ucum.convert(n.low, value.code), ucum.convert(n.high, value.code),
        )
        return and_(
            number_condition(canon, Col("low", alias), Col("high", alias)),
            eq("code", unit, alias),
            eq("system", ucum.CANONICAL_SYSTEM, alias),
        )
    parts: list[Expr] = [number_condition(value.number, Col("low", alias), Col("high", alias))]
    if value.code is not None:
        parts.append(eq("code", value.code, alias))
    if value.system is not None:
        parts.append(eq("system", value.system, alias))
    else:
        # without a system the search compares with the values as written, never with their
        # canonical copies (0.0054 g is not "lt1", and 70 kg is not "gt100||g")
        system = Col("system", alias)
        parts.append(or_(IsNull(system), Cmp(system, "<>", Param(ucum.CANONICAL_SYSTEM))))
    return and_(*parts)


def sort_column() -> str:
    """Quantities sort by their lower bound."""
    return "low"
