"""Date parameters: each value is the UTC range its precision implies, in ``idx_date(low, high)``.

Both bounds are fixed-width text ``YYYY-MM-DDTHH:MM:SS.ffffff`` in UTC, so text
order is time order on both engines. ``2020`` covers 2020-01-01T00:00:00.000000
to 2020-12-31T23:59:59.999999; a date, or a dateTime without a zone, is taken
as UTC. A Period spans start..end (an open end is 0001-01-01 / 9999-12-31); a
Timing gives one row for the span of its events and one for ``repeat.boundsPeriod``.
"""

from __future__ import annotations

import re
from calendar import monthrange
from datetime import UTC, datetime, timedelta
from typing import Any

from salus.search.sql import Col, Expr
from salus.search.tree import DateValue, ParamDef
from salus.search.types import invalid, ranges, unescape

TABLE = "idx_date"
MODIFIERS: frozenset[str] = frozenset()
MIN = "0001-01-01T00:00:00.000000"
MAX = "9999-12-31T23:59:59.999999"
# greater than any stored high: the exclusive bound after MAX
AFTER_MAX = MAX + "9"

_RE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?")
_UTC_ZONES = frozenset({None, "Z", "+00:00", "-00:00"})


def _fmt(dt: datetime) -> str:
    # strftime('%Y') does not zero-pad years before 1000 on every platform
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}.{dt.microsecond:06d}"
    )


def _parse_fixed(text: str) -> datetime:
    """A naive datetime from the fixed-width ``YYYY-MM-DDTHH:MM:SS.ffffff`` form the index stores."""
    return datetime(
        int(text[0:4]), int(text[5:7]), int(text[8:10]),
        int(text[11:13]), int(text[14:16]), int(text[17:19]), int(text[20:26]),
    )


def _shift(text: str, tz: str) -> str:
    sign = 1 if tz[0] == "+" else -1
    offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    dt = _parse_fixed(text)
    try:
        return _fmt(dt - sign * offset)
    except OverflowError:
        return MIN if sign > 0 else MAX


def bounds(text: str) -> tuple[str, str] | None:
    """The inclusive UTC range ``(low, high)`` a FHIR date/dateTime/instant covers, or None if unreadable."""
    m = _RE.fullmatch(text)
    if m is None:
        return None
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    if mo is None:
        return f"{y}-01-01T00:00:00.000000", f"{y}-12-31T23:59:59.999999"
    month = int(mo)
    if not 1 <= month <= 12 or y == "0000":
        return None
    if d is None:
        return f"{y}-{mo}-01T00:00:00.000000", f"{y}-{mo}-{monthrange(int(y), month)[1]:02d}T23:59:59.999999"
    if not 1 <= int(d) <= monthrange(int(y), month)[1]:
        return None
    day = f"{y}-{mo}-{d}T"
    if hh is None:
        return day + "00:00:00.000000", day + "23:59:59.999999"
    if int(hh) > 23 or int(mi) > 59 or (ss is not None and int(ss) > 59):
        return None
    hm = f"{day}{hh}:{mi}:"
    if ss is None:
        low, high = hm + "00.000000", hm + "59.999999"
    elif frac is None:
        low, high = f"{hm}{ss}.000000", f"{hm}{ss}.999999"
    else:
        digits = frac[:6]
        low, high = f"{hm}{ss}.{digits.ljust(6, '0')}", f"{hm}{ss}.{digits.ljust(6, '9')}"
    if tz not in _UTC_ZONES:
        return _shift(low, tz), _shift(high, tz)
    return low, high


def _add(rows: list[tuple[Any, ...]], v: Any) -> None:
    if type(v) is str:
        b = bounds(v)
        if b is not None:
            rows.append(b)


def _period(v: dict[str, Any]) -> tuple[str, str] | None:
    start, end = v.get("start"), v.get("end")
    lo = bounds(start) if type(start) is str else None
    hi = bounds(end) if type(end) is str else None
    if lo is None and hi is None:
        return None
    return (lo[0] if lo else MIN), (hi[1] if hi else MAX)


def extract(value: Any, fhir_type: str | None) -> list[tuple[Any, ...]]:
    """Rows ``(low, high)`` for a date, dateTime, instant, Period or Timing."""
    rows: list[tuple[Any, ...]] = []
    if type(value) is str:
        _add(rows, value)
        return rows
    if type(value) is not dict:
        return rows
    if fhir_type is None:
        fhir_type = "Timing" if ("event" in value or "repeat" in value) else "Period"
    if fhir_type == "Period":
        p = _period(value)
        if p is not None:
            rows.append(p)
    elif fhir_type == "Timing":
        events: list[tuple[str, str]] = []
        for e in value.get("event", ()) if type(value.get("event")) is list else ():
            _add(events, e)
        if events:
            rows.append((min(e[0] for e in events), max(e[1] for e in events)))
        repeat = value.get("repeat")
        bp = repeat.get("boundsPeriod") if type(repeat) is dict else None
        if type(bp) is dict:
            p = _period(bp)
            if p is not None:
                rows.append(p)
    return rows


def _next(text: str) -> str:
    """The instant one microsecond after ``text`` (the exclusive end of an inclusive range)."""
    if text >= MAX:
        return AFTER_MAX
    dt = _parse_fixed(text)
    return _fmt(dt + timedelta(microseconds=1))


def parse(raw: str, modifier: str | None, param: ParamDef) -> DateValue:
    """``[prefix]date`` with any precision from year to fractions of a second."""
    prefix, text = ranges.split_prefix(unescape(raw))
    # an unencoded '+' in a zone arrives as a space
    text = text.replace(" ", "+")
    b = bounds(text)
    if b is None:
        raise invalid(
            param.code,
            f"Invalid date value '{raw}' for parameter '{param.code}' (expected [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.f]][zone]]]])",
        )
    return DateValue(prefix, b[0], _next(b[1]), raw)


def now() -> datetime:
    """The current UTC time, naive (``ap`` measures its tolerance from it; tests replace it)."""
    return datetime.now(UTC).replace(tzinfo=None)


def approx(value: DateValue) -> tuple[str, str]:
    """The range ``ap`` (approximately) covers: the spec's recommendation, 10% of the gap between now and the date, on each side."""
    now_ = now()
    lo = datetime.fromisoformat(value.low)
    hi = datetime.fromisoformat(value.high_excl) if value.high_excl < "9999" else datetime.max
    gap = max(abs(now_ - lo), abs(now_ - hi)) / 10
    try:
        a_lo = _fmt(lo - gap)
    except OverflowError:
        a_lo = MIN
    try:
        a_hi = _fmt(hi + gap)
    except OverflowError:
        a_hi = AFTER_MAX
    return a_lo, a_hi


def condition_on(value: DateValue, lo: Expr, hi: Expr) -> Expr:
    """The predicate for one date value over any pair of low/high expressions (``_lastUpdated`` too)."""
    ap = approx(value) if value.prefix == "ap" else ("", "")
    return ranges.condition(value.prefix, lo, hi, value.low, value.high_excl, ap, exclusive=True)


def condition(value: DateValue, modifier: str | None, alias: str = "i") -> Expr:
    """The predicate for one date value over ``idx_date``."""
    return condition_on(value, Col("low", alias), Col("high", alias))


def sort_column() -> str:
    """Dates sort by their start."""
    return "low"
