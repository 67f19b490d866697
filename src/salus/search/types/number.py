"""Number parameters: each value is stored as itself, ``idx_number(low, high)`` with ``low = high``.

A Range is stored as low.value..high.value (an open end is infinite). The precision
lives in the *search* value: ``100`` searches [99.5, 100.5) and ``100.0`` searches
[99.95, 100.05) (R4 search 3.1.1.4.6). For ``gt lt ge le sa eb`` "the implicit
precision of the number is ignored", so ``gt100`` is "greater than exactly 100".
A stored value is exact for every prefix, which makes ``eq`` "the value lies in the
search range" (the spec's examples) and sorts by the value itself.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

from salus.search.sql import Cmp, Col, Expr, Param, and_, or_
from salus.search.tree import NumberValue, ParamDef
from salus.search.types import invalid, ranges, unescape

TABLE = "idx_number"
MODIFIERS: frozenset[str] = frozenset()
INF = math.inf


def to_decimal(v: Any) -> Decimal | None:
    """A JSON number (int, float or Decimal) or numeric text as a finite Decimal, else None."""
    t = type(v)
    try:
        if t is int:
            d = Decimal(v)
        elif t is float:
            d = Decimal(repr(v))
        elif t is Decimal:
            d = v
        elif t is str:
            d = Decimal(v)
        else:
            return None
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def precision_range(d: Decimal) -> tuple[float, float]:
    """``(low, high)``: the value plus or minus half a unit of its last digit."""
    half = Decimal(5).scaleb(d.as_tuple().exponent - 1)  # type: ignore[operator]
    return float(d - half), float(d + half)


def value_range(v: Any) -> tuple[float, float] | None:
    """``(value, value)`` for a JSON number, or None if it is not a finite number."""
    if type(v) is int:
        return float(v), float(v)
    d = to_decimal(v)
    return (float(d), float(d)) if d is not None else None


def range_of(v: dict[str, Any]) -> tuple[float, float] | None:
    """The span of a Range: from its low to its high (R4: a Range is explicitly a range)."""
    lo, hi = v.get("low"), v.get("high")
    lo_r = value_range(lo.get("value")) if type(lo) is dict else None
    hi_r = value_range(hi.get("value")) if type(hi) is dict else None
    if lo_r is None and hi_r is None:
        return None
    return (lo_r[0] if lo_r else -INF), (hi_r[1] if hi_r else INF)


def extract(value: Any, fhir_type: str | None) -> list[tuple[Any, ...]]:
    """Rows ``(low, high)`` for a number, a Quantity's value or a Range."""
    if type(value) is dict:
        r = range_of(value) if ("low" in value or "high" in value) else value_range(value.get("value"))
    elif type(value) is bool:
        return []
    else:
        r = value_range(value)
    return [r] if r is not None else []


def parse_number(raw: str, param: ParamDef) -> NumberValue:
    """``[prefix]number``."""
    prefix, text = ranges.split_prefix(unescape(raw))
    d = to_decimal(text) if text and text.strip() == text else None
    if d is None:
        raise invalid(param.code, f"Invalid number '{raw}' for parameter '{param.code}'")
    lo, hi = precision_range(d)
    return NumberValue(prefix, d, lo, hi)


def parse(raw: str, modifier: str | None, param: ParamDef) -> NumberValue:
    """One number search value."""
    return parse_number(raw, param)


def condition_on(value: NumberValue, lo: Expr, hi: Expr) -> Expr:
    """The predicate for one number over stored exact values or Ranges ``[lo, hi]``.

    ``eq``: the search range [low, high) contains the stored range (for a plain
    value: the value lies in it, as the spec's ``100`` -> [99.5, 100.5) example
    says); ``ne`` is its complement. ``gt``... compare with the exact search value
    (R4 3.1.1.4.6): the stored range reaches above it (``gt``, ``ge``), below it
    (``lt``, ``le``), or lies wholly above (``sa``) or below (``eb``) it. ``ap``:
    the stored range meets the search range widened by 10% of the value.
    """
    v = float(value.value)
    if value.prefix == "eq":
        return and_(Cmp(lo, ">=", Param(value.low)), Cmp(hi, "<", Param(value.high)))
    if value.prefix == "ne":
        return or_(Cmp(lo, "<", Param(value.low)), Cmp(hi, ">=", Param(value.high)))
    if value.prefix == "ap":
        span = abs(v) / 10
        return and_(Cmp(lo, "<=", Param(value.high + span)), Cmp(hi, ">=", Param(value.low - span)))
    column, op = _ORDERED[value.prefix]
    return Cmp(lo if column == "lo" else hi, op, Param(v))


# the prefixes that ignore the search value's precision: which stored bound, compared how, with the value
_ORDERED = {
    "gt": ("hi", ">"),
    "ge": ("hi", ">="),
    "lt": ("lo", "<"),
    "le": ("lo", "<="),
    "sa": ("lo", ">"),
    "eb": ("hi", "<"),
}


def condition(value: NumberValue, modifier: str | None, alias: str = "i") -> Expr:
    """The predicate for one number over ``idx_number``."""
    return condition_on(value, Col("low", alias), Col("high", alias))


def sort_column() -> str:
    """Numbers sort by their value (a Range by its low; ``_sort`` descending uses the high)."""
    return "low"
