"""Token parameters: ``(system, code, text)`` rows in ``idx_token``.

Coding -> (system, code, display); CodeableConcept -> one row per coding plus
a row (NULL, NULL, text) for ``.text``; Identifier -> (system, value,
type.text); ContactPoint -> (NULL, value, NULL) since token search on a
ContactPoint matches its value; primitives -> (NULL, value) with booleans as
'true'/'false'. ``text`` is always normalised like a string (for ``:text``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from salus.search.sql import Col, Expr, IsNull, StartsWith, and_, eq
from salus.search.tree import ParamDef, TokenValue
from salus.search.types import extension_value, invalid, split_unescaped, unescape
from salus.search.types.string import MAX_NORM, normalise

TABLE = "idx_token"
MODIFIERS = frozenset({"not", "text", "in", "not-in", "above", "below"})
# codes and systems are indexed; longer values are not codes and would not fit a btree entry
MAX_CODE = 1000

_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


def _text(v: Any) -> str | None:
    if type(v) is str:
        n = normalise(v)
        return n[:MAX_NORM] if n else None
    return None


def _s(v: Any) -> str | None:
    return v if type(v) is str and len(v) <= MAX_CODE else None


def _coding(rows: list[tuple[Any, ...]], c: Any) -> None:
    if type(c) is dict:
        system, code, text = _s(c.get("system")), _s(c.get("code")), _text(c.get("display"))
        if code is not None or system is not None or text is not None:
            rows.append((system, code, text))


def _shape(v: dict[str, Any]) -> str | None:
    if "coding" in v:
        return "CodeableConcept"
    if "value" in v:
        if v.get("system") in _CONTACT_SYSTEMS or "rank" in v:
            return "ContactPoint"
        if "url" in v:
            return "Extension"
        return "Identifier"
    if "code" in v or "system" in v or "display" in v:
        return "Coding"
    if "text" in v:
        return "CodeableConcept"
    if "url" in v:
        return "Extension"
    return None


def extract(value: Any, fhir_type: str | None) -> list[tuple[Any, ...]]:
    """Rows ``(system, code, text)`` for one value."""
    t = type(value)
    if t is str:
        return [(None, value, None)] if len(value) <= MAX_CODE else []
    if t is bool:
        return [(None, "true" if value else "false", None)]
    if t is int or t is Decimal:
        return [(None, str(value), None)]
    if t is not dict:
        return []
    if fhir_type is None or fhir_type == "Element":
        fhir_type = _shape(value)
    rows: list[tuple[Any, ...]] = []
    if fhir_type == "CodeableConcept":
        codings = value.get("coding")
        if type(codings) is list:
            for c in codings:
                _coding(rows, c)
        text = _text(value.get("text"))
        # the text row is only needed when no coding already carries the same display
        if text is not None and not any(r[2] == text for r in rows):
            rows.append((None, None, text))
    elif fhir_type == "Coding":
        _coding(rows, value)
    elif fhir_type == "Identifier":
        system, code = _s(value.get("system")), _s(value.get("value"))
        typ = value.get("type")
        text = _text(typ.get("text")) if type(typ) is dict else None
        if code is not None or system is not None:
            rows.append((system, code, text))
    elif fhir_type == "ContactPoint":
        code = _s(value.get("value"))
        if code is not None:
            rows.append((None, code, None))  # :text covers CodeableConcept/Coding/Identifier.type only
    elif fhir_type == "Extension":
        inner, inner_type = extension_value(value)
        if inner is not None:
            return extract(inner, inner_type)
    return rows


def of_type_rows(value: Any) -> list[tuple[Any, ...]]:
    """Rows for ``identifier:of-type``: (type system|type code, identifier value), one per type coding."""
    if type(value) is not dict or type(value.get("type")) is not dict:
        return []
    ident = _s(value.get("value"))
    codings = value["type"].get("coding")
    if ident is None or type(codings) is not list:
        return []
    return [
        (f"{c.get('system') or ''}|{c['code']}", ident, None)
        for c in codings if type(c) is dict and _s(c.get("code"))
    ]


def parse_of_type(raw: str, param: ParamDef) -> TokenValue:
    """``identifier:of-type=[type system]|[type code]|[value]`` (R4 search.html#token)."""
    parts = split_unescaped(raw, "|")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise invalid(param.code, f"':of-type' takes system|code|value, not '{raw}'")
    return TokenValue(f"{unescape(parts[0])}|{unescape(parts[1])}", unescape(parts[2]), system_given=True)


def parse(raw: str, modifier: str | None, param: ParamDef) -> TokenValue:
    """``code``, ``system|code``, ``|code``, ``system|``; any text for ``:text``."""
    if modifier in ("above", "below"):
        parts = split_unescaped(raw, "|")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise invalid(param.code, f"':{modifier}' takes system|code (the code system must be known), not '{raw}'")
        return TokenValue(unescape(parts[0]), unescape(parts[1]), system_given=True, value_set=modifier)
    if modifier in ("in", "not-in"):
        url = unescape(raw)
        if not url:
            raise invalid(param.code, f"':{modifier}' needs a value set URL")
        return TokenValue(None, None, value_set=url)
    if modifier == "text":
        text = unescape(raw)
        if not text:
            raise invalid(param.code, f"Empty :text value for parameter '{param.code}'")
        return TokenValue(None, None, text=text)
    parts = split_unescaped(raw, "|")
    if len(parts) == 1:
        code = unescape(parts[0])
        if not code:
            raise invalid(param.code, f"Empty token value for parameter '{param.code}'")
        return TokenValue(None, code)
    if len(parts) == 2:
        system, code = unescape(parts[0]) or None, unescape(parts[1]) or None
        if system is None and code is None:
            raise invalid(param.code, f"Token value '|' for parameter '{param.code}' has neither system nor code")
        return TokenValue(system, code, system_given=True)
    raise invalid(param.code, f"Token value '{raw}' for parameter '{param.code}' has more than one '|'")


def condition(value: TokenValue, modifier: str | None, alias: str = "i") -> Expr:
    """The row predicate for one token value (``:not`` is applied by the caller around it)."""
    if value.text is not None:
        return StartsWith(Col("text", alias), normalise(value.text)[:MAX_NORM])
    parts: list[Expr] = []
    if value.code is not None:
        parts.append(eq("code", value.code, alias))
    if value.system_given:
        parts.append(eq("system", value.system, alias) if value.system is not None else IsNull(Col("system", alias)))
    return and_(*parts)


def sort_column() -> str:
    """Tokens sort by code."""
    return "code"
