"""A plain in-memory FHIR R4 search evaluator, the oracle of ``test_differential.py``.

Written from the R4 search page (http://hl7.org/fhir/R4/search.html), not from
the engine: it reads each resource's parameter values with FHIRPath (the
``SearchParameter`` expressions of ``salus.fhir.definitions``) and tests every
resource one by one, in Python, with ``datetime`` and ``Decimal``. It is slow
and simple on purpose; nothing here knows SQL or the index tables.

Where R4 leaves a choice, this is the one taken (the engine documents the same
choices in ``docs/search.md``; the differential test holds both to them):

* **Prefixes** (3.1.1.4.5): the search value and each resource value are ranges.
  ``eq``: the search range contains the resource range; ``ne``: not ``eq``;
  ``sa``/``eb``: the resource range lies wholly after/before the search range;
  ``ap``: the ranges overlap once the search range is widened.
* **Dates**: a date's range is the one its precision implies (``2020-05`` is the
  whole month, a dateTime with seconds covers that second). ``gt``: the resource
  range reaches past the end of the search range; ``lt``: it starts before its
  start; ``ge``/``le``: ``gt``/``lt`` or ``eq``. A date or dateTime without a zone
  is taken as UTC (R4 suggests the server's zone; UTC is the documented choice).
  A Period's missing start/end is open. ``ap`` widens the search range on each
  side by 10% of the distance from now to its farther end (R4: "10% of the gap
  between now and the date").
* **Numbers and quantities** (3.1.1.4.6): the search value's implicit range comes
  from its significant digits (``100`` is [99.5, 100.5), ``1e2`` is [50, 150)).
  For ``gt lt ge le sa eb`` "the implicit precision of the number is ignored", so
  ``gt100`` means greater than exactly 100. A value in a resource is taken as
  exact (a Range as its two bounds, a comparator ``<5`` as open below 5).
  ``ap``: within 10% of the search value beyond its implicit range.
* **Quantity units**: ``n|system|code`` needs that system and code; ``n||code``
  matches the code or the unit text (R4: "either the code or the stated human
  unit"). A search in a UCUM unit the oracle can convert (mass, length, volume,
  time, pressure, temperature...) matches UCUM values of the same dimension in any
  unit (R4 allows "a search based on canonical units"); ``ap``'s 10% is then of the
  stated value.
* **Strings** (3.1.1.4.8): the value equals or starts with the search text once
  both are case-folded, stripped of combining marks and of repeated whitespace.
  Punctuation is kept (R4 says it *should* be ignored; not done). Each string
  element is one value: a HumanName gives family, given, prefix, suffix and text,
  and, when it has no text, its parts joined as a whole name (R4 allows "flexible
  match" on whole names); an Address gives line, city, district, state,
  postalCode, country and text.
* **Tokens** (3.1.1.4.10): codes and systems match case-sensitively; a ``code``
  element has no system; ``:text`` is a string search on CodeableConcept.text,
  Coding.display and Identifier.type.text; ``:not`` is true when no value matches
  (also when there is none).
* **References** (3.1.1.4.12): ``id``, ``Type/id`` and ``:Type`` match local
  references; an absolute URL whose tail is ``Type/id`` is taken as that local
  resource (the search layer does not know the server's base URL, so it cannot
  tell its own URLs from another server's); an absolute search value matches the
  same URL only. Chains and ``_has`` follow references to live resources only.
* **Several values in one resource**: the resource matches when any value does
  (``ne`` too: a value that is not equal); ``:not`` and ``:missing`` look at the set.
* **``_sort``** (3.1.1.5.1): a resource sorts by its value that comes first in the
  requested order (strings case-folded, tokens by code, dates by start ascending
  and by end descending, numbers by value); resources without a value come last
  either way; ties keep insertion order.
* **``_include``/``_revinclude``**: resources already among the matches are not
  repeated; ``:iterate`` runs until nothing new comes.
"""

from __future__ import annotations

import re
import unicodedata
from calendar import monthrange
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any

from salus.fhir.definitions import is_resource_type, search_parameters
from salus.fhir.fhirpath import evaluate

INF = Decimal("Infinity")
DMIN, DMAX = datetime.min, datetime.max
MICRO = timedelta(microseconds=1)
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
RESULT_PARAMETERS = frozenset({"_sort", "_include", "_revinclude", "_count", "_total", "_summary", "_elements"})
CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


@dataclass
class Res:
    """One stored resource as the oracle sees it: its place in insertion order and its current body."""

    pos: int
    type: str
    id: str
    deleted: bool
    body: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        """``(type, id)``."""
        return self.type, self.id


@dataclass(frozen=True)
class Tok:
    """A token value: system and code, and the texts ``:text`` searches."""

    system: str | None
    code: str | None
    texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ref:
    """A reference value: the local resource it names (if any) and its absolute URL (if any)."""

    type: str | None
    id: str | None
    url: str | None
    raw: Any = None


@dataclass(frozen=True)
class Qty:
    """A quantity value: exact bounds (equal for a plain value), system, code and unit text."""

    lo: Decimal
    hi: Decimal
    system: str | None
    code: str | None
    unit: str | None


# ---------------------------------------------------------------------------------------------------------------
# Normalisation and parsing, from the R4 search page
# ---------------------------------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Case-folded, combining marks removed, whitespace collapsed (R4 3.1.1.4.8)."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())


def split_escaped(text: str, sep: str) -> list[str]:
    """Split on ``sep`` unless escaped with ``\\`` (R4 3.1.1.4.19); escapes are kept for ``unescape``."""
    parts, cur, i = [], "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            cur += text[i : i + 2]
            i += 2
            continue
        if text[i] == sep:
            parts.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    parts.append(cur)
    return parts


def unescape(text: str) -> str:
    """``\\,`` ``\\|`` ``\\$`` ``\\\\`` to the character itself."""
    return re.sub(r"\\([\\,|$])", r"\1", text)


def split_prefix(raw: str) -> tuple[str, str]:
    """``("ge", "2020")`` from ``ge2020``; ``eq`` when absent."""
    if raw[:2] in PREFIXES:
        return raw[:2], raw[2:]
    return "eq", raw


_DATE_RE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def date_range(text: str) -> tuple[datetime, datetime] | None:
    """The inclusive UTC range (to the microsecond) a date/dateTime/instant covers; no zone means UTC."""
    m = _DATE_RE.fullmatch(text)
    if m is None:
        return None
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    year = int(y)
    if mo is None:
        lo, hi = datetime(year, 1, 1), datetime(year, 12, 31, 23, 59, 59, 999999)
    elif d is None:
        last = monthrange(year, int(mo))[1]
        lo, hi = datetime(year, int(mo), 1), datetime(year, int(mo), last, 23, 59, 59, 999999)
    elif hh is None:
        lo = datetime(year, int(mo), int(d))
        hi = lo + timedelta(days=1) - MICRO
    elif ss is None:
        lo = datetime(year, int(mo), int(d), int(hh), int(mi))
        hi = lo + timedelta(minutes=1) - MICRO
    else:
        lo = datetime(year, int(mo), int(d), int(hh), int(mi), int(ss))
        if frac is None:
            hi = lo + timedelta(seconds=1) - MICRO
        else:
            digits = frac[:6]
            lo += timedelta(microseconds=int(digits.ljust(6, "0")))
            hi = lo + timedelta(microseconds=10 ** (6 - len(digits))) - MICRO
    if tz not in (None, "Z"):
        sign = 1 if tz[0] == "+" else -1
        shift = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
        lo, hi = lo - sign * shift, hi - sign * shift
    return lo, hi


def number_range(text: str) -> tuple[Decimal, Decimal, Decimal]:
    """``(value, low, high)``: the value and its implicit range from its significant digits (R4 3.1.1.4.6)."""
    v = Decimal(text)
    exponent = v.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return v, v - half, v + half


# ---------------------------------------------------------------------------------------------------------------
# Parameter values of a resource, by FHIRPath
# ---------------------------------------------------------------------------------------------------------------


def _per_item(expression: str) -> str:
    # fhirpathpy refuses 'as' on a collection of several items; the parameter means each item cast
    expression = re.sub(r"\(([^()]+?) as (\w+)\)", r"\1.ofType(\2)", expression)
    return re.sub(r"\.as\((\w+)\)", r".ofType(\1)", expression)


@cache
def param_def(resource_type: str, code: str) -> dict[str, Any] | None:
    """The R4 SearchParameter of ``code`` on ``resource_type``, or None."""
    if code == "_id":
        return {"type": "token", "expression": f"{resource_type}.id"}
    if code == "_lastUpdated":
        return {"type": "date", "expression": f"{resource_type}.meta.lastUpdated"}
    return search_parameters(resource_type).get(code)


def _fhirpath(body: dict[str, Any], expression: str) -> list[Any]:
    return list(evaluate(body, _per_item(expression)))


def _string_values(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if not isinstance(v, dict):
        return []
    out: list[str] = []
    if "family" in v or "given" in v or "prefix" in v or "suffix" in v or "text" in v and "line" not in v:
        for part in ("family", "text"):
            if isinstance(v.get(part), str):
                out.append(v[part])
        for part in ("given", "prefix", "suffix"):
            out += [x for x in v.get(part, []) if isinstance(x, str)]
        if "text" not in v:
            words = [*v.get("prefix", []), *v.get("given", []), v.get("family"), *v.get("suffix", [])]
            out.append(" ".join(w for w in words if isinstance(w, str)))
        return out
    if any(k in v for k in ("line", "city", "district", "state", "postalCode", "country")):
        out += [x for x in v.get("line", []) if isinstance(x, str)]
        for part in ("city", "district", "state", "postalCode", "country", "text"):
            if isinstance(v.get(part), str):
                out.append(v[part])
        return out
    return [x for k, x in v.items() if isinstance(x, str) and k not in ("id", "system", "url", "reference")]


def _token_values(v: Any) -> list[Tok]:
    if isinstance(v, bool):
        return [Tok(None, "true" if v else "false")]
    if isinstance(v, str):
        return [Tok(None, v)]
    if not isinstance(v, dict):
        return []
    if "coding" in v or set(v) <= {"text", "id", "extension"}:  # CodeableConcept
        out = [
            Tok(c.get("system"), c.get("code"), tuple(filter(None, [c.get("display")]))) for c in v.get("coding", [])
        ]
        if isinstance(v.get("text"), str):
            out.append(Tok(None, None, (v["text"],)))
        return out
    if "value" in v:
        if v.get("system") in CONTACT_SYSTEMS or "rank" in v:  # ContactPoint: only the value is a token
            return [Tok(None, v["value"])]
        typ = v.get("type")
        texts = (typ["text"],) if isinstance(typ, dict) and isinstance(typ.get("text"), str) else ()
        return [Tok(v.get("system"), v.get("value"), texts)]  # Identifier
    if "code" in v or "system" in v or "display" in v:  # Coding
        return [Tok(v.get("system"), v.get("code"), tuple(filter(None, [v.get("display")])))]
    return []


_REF_TAIL = re.compile(r"(?:^|/)([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def _reference_values(v: Any, restrict: list[str] | None) -> list[Ref]:
    ref = v.get("reference") if isinstance(v, dict) else v if isinstance(v, str) else None
    if not isinstance(ref, str) or not ref or ref.startswith("#"):
        return []
    url = ref.split("|")[0] if ":" in ref else None
    m = _REF_TAIL.search(ref.split("|")[0])
    typ, rid = (m.group(1), m.group(2)) if m and is_resource_type(m.group(1)) else (None, None)
    if url is None and typ is None:
        return []
    if restrict is not None and typ not in restrict:
        return []
    return [Ref(typ, rid, url, v)]


def _date_values(v: Any) -> list[tuple[datetime, datetime]]:
    if isinstance(v, str):
        r = date_range(v)
        return [r] if r else []
    if isinstance(v, dict) and ("start" in v or "end" in v):
        start = date_range(v["start"]) if "start" in v else None
        end = date_range(v["end"]) if "end" in v else None
        return [(start[0] if start else DMIN, end[1] if end else DMAX)]
    return []


def _decimal(v: Any) -> Decimal | None:
    if isinstance(v, bool) or not isinstance(v, int | float | Decimal):
        return None
    return Decimal(repr(v)) if isinstance(v, float) else Decimal(v)


def _range_bounds(v: dict[str, Any]) -> tuple[Decimal, Decimal] | None:
    lo = _decimal(v["low"].get("value")) if isinstance(v.get("low"), dict) else None
    hi = _decimal(v["high"].get("value")) if isinstance(v.get("high"), dict) else None
    if lo is None and hi is None:
        return None
    return (lo if lo is not None else -INF), (hi if hi is not None else INF)


def _number_values(v: Any) -> list[tuple[Decimal, Decimal]]:
    d = _decimal(v)
    if d is not None:
        return [(d, d)]
    if isinstance(v, dict) and ("low" in v or "high" in v):
        r = _range_bounds(v)
        return [r] if r else []
    return []


def _quantity_values(v: Any) -> list[Qty]:
    if not isinstance(v, dict):
        return []
    if "low" in v or "high" in v:
        r = _range_bounds(v)
        unit = v.get("low") or v.get("high") or {}
        return [Qty(r[0], r[1], unit.get("system"), unit.get("code"), unit.get("unit"))] if r else []
    d = _decimal(v.get("value"))
    if d is None:
        return []
    lo = -INF if v.get("comparator") in ("<", "<=") else d
    hi = INF if v.get("comparator") in (">", ">=") else d
    return [Qty(lo, hi, v.get("system"), v.get("code"), v.get("unit"))]


def typed_values(kind: str, raw: Iterable[Any], restrict: list[str] | None = None) -> list[Any]:
    """The searchable values of one parameter type in what its expression selected."""
    out: list[Any] = []
    for v in raw:
        if kind == "string":
            out += [s for s in _string_values(v) if normalise(s)]
        elif kind == "token":
            out += _token_values(v)
        elif kind == "reference":
            out += _reference_values(v, restrict)
        elif kind == "date":
            out += _date_values(v)
        elif kind == "number":
            out += _number_values(v)
        elif kind == "quantity":
            out += _quantity_values(v)
        elif kind == "uri":
            out += [v] if isinstance(v, str) and v else []
    return out


# ---------------------------------------------------------------------------------------------------------------
# Matching one value, per parameter type
# ---------------------------------------------------------------------------------------------------------------


def match_string(values: list[str], q: str, modifier: str) -> bool:
    """Default: starts with; ``:exact``: equal; ``:contains``: anywhere."""
    if modifier == "exact":
        return q in values
    nq = normalise(q)
    if modifier == "contains":
        return any(nq in normalise(v) for v in values)
    return any(normalise(v).startswith(nq) for v in values)


def match_token(values: list[Tok], raw: str, modifier: str) -> bool:
    """``code``, ``system|code``, ``|code``, ``system|``; ``:text`` on the texts."""
    if modifier == "text":
        nq = normalise(unescape(raw))
        return any(normalise(t).startswith(nq) for v in values for t in v.texts)
    parts = split_escaped(raw, "|")
    if len(parts) == 1:
        code = unescape(parts[0])
        return any(v.code == code for v in values)
    system, code = unescape(parts[0]), unescape(parts[1])
    if not system:
        return any(v.code == code and v.system is None for v in values)
    if not code:
        return any(v.system == system for v in values)
    return any(v.system == system and v.code == code for v in values)


def match_reference(values: list[Ref], raw: str, modifier: str) -> bool:
    """``id``, ``Type/id``, ``:Type`` with an id, or an absolute URL."""
    q = unescape(raw)
    if ":" in q:
        url = q.split("|")[0]
        return any(v.url == url for v in values)
    if modifier:
        return any(v.type == modifier and v.id == q for v in values)
    if "/" in q:
        typ, _, rid = q.partition("/")
        return any(v.type == typ and v.id == rid for v in values)
    return any(v.id == q for v in values)


def _ranges(prefix: str, lo: Any, hi: Any, s_lo: Any, s_hi: Any, ap: tuple[Any, Any]) -> bool:
    """The prefix table of R4 3.1.1.4.5 over closed ranges ``[lo, hi]`` (resource) and ``[s_lo, s_hi]`` (search)."""
    eq = s_lo <= lo and hi <= s_hi
    return {
        "eq": eq,
        "ne": not eq,
        "gt": hi > s_hi,
        "lt": lo < s_lo,
        "ge": hi > s_hi or eq,
        "le": lo < s_lo or eq,
        "sa": lo > s_hi,
        "eb": hi < s_lo,
        "ap": lo <= ap[1] and hi >= ap[0],
    }[prefix]


def match_date(values: list[tuple[datetime, datetime]], raw: str, now: datetime) -> bool:
    """Any value meets the prefix against the search date's range."""
    prefix, text = split_prefix(unescape(raw))
    r = date_range(text)
    assert r is not None, raw
    s_lo, s_hi = r
    gap = max(abs(now - s_lo), abs(now - s_hi)) / 10
    ap = (max(DMIN + gap, s_lo) - gap, min(DMAX - gap, s_hi) + gap)
    return any(_ranges(prefix, lo, hi, s_lo, s_hi, ap) for lo, hi in values)


def _number_test(prefix: str, lo: Decimal, hi: Decimal, v: Decimal, s_lo: Decimal, s_hi: Decimal) -> bool:
    """Whether a stored range ``[lo, hi]`` meets ``prefix`` with the search value ``v`` of implicit range [s_lo, s_hi)."""
    if prefix in ("gt", "lt", "ge", "le", "sa", "eb"):
        # "the implicit precision of the number is ignored" for these prefixes
        return {
            "gt": hi > v,
            "lt": lo < v,
            "ge": hi >= v,
            "le": lo <= v,
            "sa": lo > v,
            "eb": hi < v,
        }[prefix]
    eq = s_lo <= lo and hi < s_hi
    if prefix == "eq":
        return eq
    if prefix == "ne":
        return not eq
    span = abs(v) / 10
    return lo <= s_hi + span and hi >= s_lo - span


def match_number(values: list[tuple[Decimal, Decimal]], raw: str) -> bool:
    """Any value meets the prefix."""
    prefix, text = split_prefix(unescape(raw))
    v, s_lo, s_hi = number_range(text)
    return any(_number_test(prefix, lo, hi, v, s_lo, s_hi) for lo, hi in values)


UCUM = "http://unitsofmeasure.org"
# UCUM units this oracle converts, written from the UCUM tables: code -> (dimension, factor, offset), so that
# value * factor + offset is in the dimension's base unit (R4 allows searching "based on canonical units")
_METRIC = {
    "k": Decimal("1e3"),
    "": Decimal(1),
    "d": Decimal("1e-1"),
    "c": Decimal("1e-2"),
    "m": Decimal("1e-3"),
    "u": Decimal("1e-6"),
    "n": Decimal("1e-9"),
}
_UNITS: dict[str, tuple[str, Decimal, Decimal]] = {
    **{p + "g": ("mass", f, Decimal(0)) for p, f in _METRIC.items()},
    **{p + "m": ("length", f, Decimal(0)) for p, f in _METRIC.items()},
    **{p + "L": ("volume", f, Decimal(0)) for p, f in _METRIC.items()},
    **{p + "g/dL": ("mass/volume", f * 10, Decimal(0)) for p, f in _METRIC.items()},
    **{p + "g/L": ("mass/volume", f, Decimal(0)) for p, f in _METRIC.items()},
    **{p + "mol/L": ("amount/volume", f, Decimal(0)) for p, f in _METRIC.items()},
    "s": ("time", Decimal(1), Decimal(0)),
    "min": ("time", Decimal(60), Decimal(0)),
    "h": ("time", Decimal(3600), Decimal(0)),
    "d": ("time", Decimal(86400), Decimal(0)),
    "/min": ("frequency", Decimal(1) / Decimal(60), Decimal(0)),
    "mm[Hg]": ("pressure", Decimal("133.322387415"), Decimal(0)),
    "Pa": ("pressure", Decimal(1), Decimal(0)),
    "kPa": ("pressure", Decimal(1000), Decimal(0)),
    "Cel": ("temperature", Decimal(1), Decimal("273.15")),
    "K": ("temperature", Decimal(1), Decimal(0)),
    "10*3/uL": ("count/volume", Decimal("1e9"), Decimal(0)),
    "10*6/uL": ("count/volume", Decimal("1e12"), Decimal(0)),
}


def _canonical(x: Decimal, code: str) -> Decimal:
    _, factor, offset = _UNITS[code]
    return x * factor + offset if x.is_finite() else x


def match_quantity(values: list[Qty], raw: str) -> bool:
    """``[prefix]number[|system|code]``: number semantics on values in the unit asked for.

    A UCUM unit this oracle knows compares with every UCUM value of the same dimension, both in the
    dimension's base unit; ``ap``'s 10% is of the stated value.
    """
    parts = [unescape(p) for p in split_escaped(raw, "|")]
    prefix, text = split_prefix(parts[0])
    system = parts[1] if len(parts) == 3 and parts[1] else None
    code = parts[2] if len(parts) == 3 and parts[2] else None
    v, s_lo, s_hi = number_range(text)
    if system == UCUM and code in _UNITS:
        dimension, factor, _ = _UNITS[code]
        cv, c_lo, c_hi = _canonical(v, code), _canonical(s_lo, code), _canonical(s_hi, code)
        if prefix == "ap":  # widen here by 10% of the stated value, then test overlap
            span = abs(v) / 10 * factor
            c_lo, c_hi, prefix = c_lo - span, c_hi + span, "ap0"
        for q in values:
            if q.system != UCUM or q.code not in _UNITS or _UNITS[q.code][0] != dimension:
                continue
            lo, hi = _canonical(q.lo, q.code), _canonical(q.hi, q.code)
            if prefix == "ap0" and lo <= c_hi and hi >= c_lo:
                return True
            if prefix != "ap0" and _number_test(prefix, lo, hi, cv, c_lo, c_hi):
                return True
        return False
    for q in values:
        if system is not None and (q.system != system or q.code != code):
            continue
        if system is None and code is not None and code not in (q.code, q.unit):
            continue
        if _number_test(prefix, q.lo, q.hi, v, s_lo, s_hi):
            return True
    return False


def _uri_parents(uri: str) -> set[str]:
    out = {uri}
    floor = uri.find("://") + 3 if "://" in uri else 0
    cut = uri.rstrip("/")
    while (i := cut.rfind("/")) >= floor:
        cut = cut[:i]
        out |= {cut, cut + "/"}
    return out


def match_uri(values: list[str], raw: str, modifier: str) -> bool:
    """Equality; ``:below`` starts with; ``:above`` the value or a path parent of it."""
    q = unescape(raw)
    if modifier == "below":
        return any(v.startswith(q) for v in values)
    if modifier == "above":
        return bool(set(values) & _uri_parents(q))
    return q in values


# ---------------------------------------------------------------------------------------------------------------
# The evaluator
# ---------------------------------------------------------------------------------------------------------------


class Reference:
    """Evaluates searches over a fixed population, resource by resource."""

    def __init__(self, resources: list[Res], now: datetime) -> None:
        self.resources = resources
        self.now = now
        self._by_key = {r.key: r for r in resources}
        self._values: dict[tuple[int, str], list[Any]] = {}
        self._referrers: dict[tuple[str, str], dict[tuple[str, str], list[Res]]] = {}

    # ---- lookups ------------------------------------------------------------

    def live(self, resource_type: str | None) -> list[Res]:
        """Live resources of a type (every type when None), in insertion order."""
        return [r for r in self.resources if not r.deleted and (resource_type is None or r.type == resource_type)]

    def resolve(self, ref: Ref) -> Res | None:
        """The live local resource a reference names, or None (absent, deleted, or elsewhere)."""
        if ref.type is None:
            return None
        r = self._by_key.get((ref.type, ref.id or ""))
        return r if r is not None and not r.deleted else None

    def values(self, res: Res, code: str) -> list[Any]:
        """The searchable values of parameter ``code`` in ``res`` (cached)."""
        key = (res.pos, code)
        if key not in self._values:
            self._values[key] = self._compute(res, code)
        return self._values[key]

    def _compute(self, res: Res, code: str) -> list[Any]:
        p = param_def(res.type, code)
        if p is None:
            raise KeyError(f"{res.type} has no search parameter {code}")
        if code == "_id":
            return [Tok(None, res.id)]
        if code == "_lastUpdated":
            return typed_values("date", [res.body["meta"]["lastUpdated"]])
        if p["type"] == "composite":
            return self._composite_roots(res, p)
        raw = _fhirpath(res.body, p["expression"])
        restrict = p.get("resolve_targets") or None
        return typed_values(p["type"], raw, restrict)

    def _composite_roots(self, res: Res, p: dict[str, Any]) -> list[list[list[Any]]]:
        """For each root the composite expression selects: each component's values."""
        roots: list[str] = []
        for alt in (a.strip() for a in p["expression"].split("|")):
            if alt == res.type:
                roots.append(alt)
            else:
                roots += [f"{alt}[{i}]" for i in range(len(_fhirpath(res.body, alt)))]
        out = []
        for root in roots:
            comps = [typed_values(c["type"], _fhirpath(res.body, f"{root}.{c['expression']}")) for c in p["component"]]
            if all(comps):
                out.append(comps)
        return out

    def referrers(self, source_type: str, code: str, target: Res) -> list[Res]:
        """Live resources of ``source_type`` whose parameter ``code`` names ``target``."""
        index_key = (source_type, code)
        if index_key not in self._referrers:
            index: dict[tuple[str, str], list[Res]] = {}
            for src in self.live(source_type):
                for ref in self.values(src, code):
                    if ref.type is not None:
                        index.setdefault((ref.type, ref.id), []).append(src)
            self._referrers[index_key] = index
        seen: list[Res] = []
        for src in self._referrers[index_key].get(target.key, []):
            if src not in seen:
                seen.append(src)
        return seen

    # ---- filters --------------------------------------------------------------

    def matches(self, res: Res, name: str, value: str) -> bool:
        """Whether ``res`` meets one URL parameter (its comma-separated values ORed)."""
        if name.startswith("_has:"):
            _, source_type, code, rest = name.split(":", 3)
            return any(self.matches(src, rest, value) for src in self.referrers(source_type, code, res))
        head, dot, tail = name.partition(".")
        if dot:
            code, _, type_modifier = head.partition(":")
            for ref in self.values(res, code):
                target = self.resolve(ref)
                if target is None or (type_modifier and target.type != type_modifier):
                    continue
                if param_def(target.type, tail.split(".")[0].split(":")[0]) is None and not tail.startswith("_has:"):
                    continue
                if self.matches(target, tail, value):
                    return True
            return False
        code, _, modifier = name.partition(":")
        p = param_def(res.type, code)
        assert p is not None, f"{res.type}.{code}"
        if modifier == "missing":
            present = bool(self.values(res, code))
            return present if value == "false" else not present
        if modifier == "identifier":
            idents = [r.raw["identifier"] for r in self._identifier_refs(res, code)]
            values = typed_values("token", idents)
            return any(match_token(values, v, "") for v in split_escaped(value, ","))
        alternatives = [v for v in split_escaped(value, ",") if v]
        if modifier == "not":
            values = self.values(res, code)
            return not any(match_token(values, v, "") for v in alternatives)
        return any(self._match_one(res, code, p, modifier, v) for v in alternatives)

    def _identifier_refs(self, res: Res, code: str) -> list[Ref]:
        p = param_def(res.type, code)
        assert p is not None
        out = []
        for v in _fhirpath(res.body, p["expression"]):
            if isinstance(v, dict) and isinstance(v.get("identifier"), dict):
                out.append(Ref(None, None, None, v))
        return out

    def _match_one(self, res: Res, code: str, p: dict[str, Any], modifier: str, raw: str) -> bool:
        kind = p["type"]
        if kind == "composite":
            parts = split_escaped(raw, "$")
            for comps in self.values(res, code):
                if all(
                    self._match_typed(c["type"], vals, "", part)
                    for c, vals, part in zip(p["component"], comps, parts, strict=True)
                ):
                    return True
            return False
        return self._match_typed(kind, self.values(res, code), modifier, raw)

    def _match_typed(self, kind: str, values: list[Any], modifier: str, raw: str) -> bool:
        if kind == "string":
            return match_string(values, unescape(raw), modifier)
        if kind == "token":
            return match_token(values, raw, modifier)
        if kind == "reference":
            return match_reference(values, raw, modifier)
        if kind == "date":
            return match_date(values, raw, self.now)
        if kind == "number":
            return match_number(values, raw)
        if kind == "quantity":
            return match_quantity(values, raw)
        if kind == "uri":
            return match_uri(values, raw, modifier)
        raise AssertionError(f"unsupported parameter type {kind}")

    # ---- sort -----------------------------------------------------------------

    def _sort_value(self, res: Res, code: str, descending: bool) -> Any:
        """The value ``res`` sorts by for ``code`` (None when it has none)."""
        p = param_def(res.type, code)
        assert p is not None
        vals = self.values(res, code)
        if code == "_id":
            keys: list[Any] = [res.id]
        elif p["type"] == "string":
            keys = [normalise(v) for v in vals]
        elif p["type"] == "token":
            keys = [v.code for v in vals if v.code is not None]
        elif p["type"] in ("date", "number"):
            keys = [hi if descending else lo for lo, hi in vals]
        elif p["type"] == "quantity":
            keys = [v.hi if descending else v.lo for v in vals]
        else:
            keys = list(vals)
        if not keys:
            return None
        return max(keys) if descending else min(keys)

    def _sorted(self, found: list[Res], sort: str) -> list[Res]:
        out = sorted(found, key=lambda r: r.pos)
        for key in reversed(sort.split(",")):
            descending = key.startswith("-")
            code = key.lstrip("-")
            with_value = [(self._sort_value(r, code, descending), r) for r in out]
            present = [x for x in with_value if x[0] is not None]
            present.sort(key=lambda x: x[0], reverse=descending)  # stable: earlier keys and insertion break ties
            out = [r for _, r in present] + [r for v, r in with_value if v is None]
        return out

    # ---- includes -------------------------------------------------------------

    def _reference_codes(self, source_type: str, code: str) -> list[str]:
        if code != "*":
            return [code]
        return [c for c, p in search_parameters(source_type).items() if p["type"] == "reference" and "expression" in p]

    def _include_round(self, frontier: list[Res], spec: str, reverse: bool) -> list[Res]:
        parts = spec.split(":")
        source_type, code = parts[0], parts[1]
        target_type = parts[2] if len(parts) == 3 else None
        out: list[Res] = []
        for c in self._reference_codes(source_type, code):
            if not reverse:
                for res in frontier:
                    if res.type != source_type:
                        continue
                    for ref in self.values(res, c):
                        target = self.resolve(ref)
                        if target is not None and (target_type is None or target.type == target_type):
                            out.append(target)
            else:
                for res in frontier:
                    if target_type is not None and res.type != target_type:
                        continue
                    out += self.referrers(source_type, c, res)
        return out

    def _included(self, page: list[Res], includes: list[tuple[str, str]]) -> set[tuple[str, str]]:
        seen = {r.key for r in page}
        added: set[tuple[str, str]] = set()
        frontier = page
        first = True
        while frontier:
            new: list[Res] = []
            for name, spec in includes:
                iterate = name.endswith(":iterate")
                if not first and not iterate:
                    continue
                for r in self._include_round(frontier, spec, reverse=name.startswith("_revinclude")):
                    if r.key not in seen:
                        seen.add(r.key)
                        added.add(r.key)
                        new.append(r)
            first = False
            frontier = new if any(n.endswith(":iterate") for n, _ in includes) else []
        return added

    # ---- the search -------------------------------------------------------------

    def search(
        self, resource_type: str | None, query: list[tuple[str, str]], count: int = 1000
    ) -> tuple[list[tuple[str, str]], set[tuple[str, str]]]:
        """The matches in order (the first ``count``) and the keys ``_include``/``_revinclude`` add."""
        types: list[str] | None = [resource_type] if resource_type else None
        filters: list[tuple[str, str]] = []
        sort = ""
        includes: list[tuple[str, str]] = []
        for name, value in query:
            if value == "":
                continue
            base = name.split(":")[0]
            if name == "_type":
                types = value.split(",")
            elif base == "_sort":
                sort = value
            elif base in ("_include", "_revinclude"):
                includes.append((name, value))
            elif base not in RESULT_PARAMETERS:
                filters.append((name, value))
        candidates = [r for r in self.live(None) if types is None or r.type in types]
        found = [r for r in candidates if all(self.matches(r, n, v) for n, v in filters)]
        page = self._sorted(found, sort)[:count] if sort else found[:count]
        return [r.key for r in page], (self._included(page, includes) if includes else set())
