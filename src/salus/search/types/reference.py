"""Reference parameters: ``(target_type, target_id, target_version, url)`` rows in ``idx_reference``.

* ``Type/id`` and ``Type/id/_history/v`` -> target_type, target_id (, target_version).
* absolute ``http(s)://.../Type/id`` -> url, plus target_type/target_id when the
  tail looks like ``Type/id`` (so ``Patient/1`` also finds a full URL to it).
* canonical ``url|version`` -> url and target_version; ``urn:uuid:``/``urn:oid:`` -> url.
* contained ``#x`` references are skipped: they do not name a resource of the store.
* ``Reference.identifier`` is a token: it goes to ``idx_token`` under the parameter
  ``<code>:identifier`` and is searched with the ``:identifier`` modifier.
"""

from __future__ import annotations

from typing import Any

from salus.fhir.definitions import is_resource_type
from salus.search.sql import Expr, and_, eq
from salus.search.tree import ParamDef, ReferenceValue
from salus.search.types import invalid, unescape

TABLE = "idx_reference"
MODIFIERS = frozenset({"identifier"})  # plus any resource type name (``:Patient``)
UNSUPPORTED_MODIFIERS = frozenset({"above", "below"})
MAX_URL = 1000


def parse_reference(ref: str) -> tuple[str | None, str | None, str | None, str | None] | None:
    """``(type, id, version, url)`` of a reference or canonical string, or None when it names nothing."""
    if not ref or ref[0] == "#" or len(ref) > MAX_URL:
        return None
    version = None
    if "|" in ref:
        ref, _, version = ref.partition("|")
        version = version or None
    absolute = ":" in ref
    parts = ref.split("/")
    typ = rid = None
    if len(parts) >= 4 and parts[-2] == "_history":
        typ, rid, version = parts[-4], parts[-3], parts[-1]
    elif len(parts) >= 2:
        typ, rid = parts[-2], parts[-1]
    if typ is not None and not (rid and len(rid) <= 64 and is_resource_type(typ)):
        typ = rid = None
    if not absolute:
        return (typ, rid, version, None) if typ is not None else None
    return typ, rid, version, ref


def extract(value: Any, fhir_type: str | None) -> list[tuple[Any, ...]]:
    """Rows for one Reference (or canonical/uri string)."""
    if type(value) is dict:
        ref = value.get("reference")
        if type(ref) is not str:
            return []
    elif type(value) is str:
        ref = value
    else:
        return []
    row = parse_reference(ref)
    return [row] if row is not None else []


def identifier_of(value: Any) -> dict[str, Any] | None:
    """The ``Reference.identifier`` of a value, indexed as a token for ``:identifier``."""
    if type(value) is dict:
        ident = value.get("identifier")
        if type(ident) is dict:
            return ident
    return None


def parse(raw: str, modifier: str | None, param: ParamDef) -> ReferenceValue:
    """``id``, ``Type/id``, ``Type/id/_history/v``, an absolute URL or ``canonical|version``."""
    text = unescape(raw)
    if not text:
        raise invalid(param.code, f"Empty reference value for parameter '{param.code}'")
    if ":" in text:
        url, _, version = text.partition("|")
        return ReferenceValue(url=url, version=version or None)
    parts = text.split("/")
    if len(parts) == 1:
        typ = modifier or (param.targets[0] if len(param.targets) == 1 else None)
        return ReferenceValue(typ, text)
    if len(parts) == 2 or (len(parts) == 4 and parts[2] == "_history"):
        typ, rid = parts[0], parts[1]
        if not is_resource_type(typ):
            raise invalid(param.code, f"'{typ}' in reference value '{text}' is not a resource type")
        if modifier and modifier != typ:
            raise invalid(param.code, f"Reference value '{text}' contradicts the modifier ':{modifier}'")
        if not rid:
            raise invalid(param.code, f"Reference value '{text}' has no id")
        return ReferenceValue(typ, rid, parts[3] if len(parts) == 4 else None)
    raise invalid(param.code, f"Cannot read reference value '{text}' for parameter '{param.code}'")


def condition(value: ReferenceValue, modifier: str | None, alias: str = "i") -> Expr:
    """Match a local target by type/id (any type when unknown), or an absolute URL/canonical by url."""
    parts: list[Expr] = []
    if value.url is not None:
        parts.append(eq("url", value.url, alias))
    else:
        parts.append(eq("target_id", value.id, alias))
        if value.type is not None:
            parts.append(eq("target_type", value.type, alias))
    if value.version is not None:
        parts.append(eq("target_version", value.version, alias))
    return and_(*parts)
