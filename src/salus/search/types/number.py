"""Number parameters: each value is the range its decimal precision implies, in ``idx_number(low, high)``.

``100`` covers 99.5..100.5 and ``100.0`` covers 99.95..100.05 (R4 search 3.1.1.4.2).
JSON numbers parsed as floats keep only the digits ``repr`` shows (``1.50``
reads as ``1.5``); parse with ``Decimal`` to keep trailing zeros.
A Range covers low.value..high.value (an open end is infinite).
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

from salus.search.sql import Add, Cmp, Col, Expr, Param, and_, or_
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
    """The precision range of a JSON number, or None if it is not a finite number."""
    if type(v) is int:
        return v - 0.5, v + 0.5
    d = to_decimal(v)
    return precision_range(d) if d is not None else None


def range_of(v: dict[str, Any]) -> tuple[float, float] | None:
    """The span of a Range: from its low's lower bound to its high's upper bound."""
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
    """The predicate for one number over stored ranges.

    ``eq`` follows the spec's example (``100`` finds values in [99.5, 100.5)):
    the stored value, the middle of its range, must lie in the search range;
    the overlap test in front keeps the btree on ``low`` useful. The other
    prefixes use the range table in ``ranges``.
    """
    if value.prefix in ("eq", "ne"):
        mid = Add(lo, hi)
        inside = and_(
            Cmp(lo, "<", Param(value.high)),
            Cmp(hi, ">=", Param(value.low)),
            Cmp(mid, ">=", Param(2 * value.low)),
            Cmp(mid, "<", Param(2 * value.high)),
        )
        if value.prefix == "eq":
            return inside
        return or_(Cmp(mid, "<", Param(2 * value.low)), Cmp(mid, ">=", Param(2 * value.high)))
    span = abs(float(value.value)) / 10
    ap = (value.low - span, value.high + span)
    return ranges.condition(value.prefix, lo, hi, value.low, value.high, ap, exclusive=False)


def condition(value: NumberValue, modifier: str | None, alias: str = "i") -> Expr:
    """The predicate for one number over ``idx_number``."""
    return condition_on(value, Col("low", alias), Col("high", alias))


def sort_column() -> str:
    """Numbers sort by their lower bound."""
    return "low"
