"""ValueSet expansion for the token modifiers ``:in`` and ``:not-in`` (R4 search.html#token).

The value set is looked up on this server by its canonical URL (``url|version``
allowed), then in the R4 core value sets Salus ships. Expansion takes
``expansion.contains`` when the resource carries one; otherwise it evaluates
``compose``: explicit concepts, whole code systems stored on the server,
``is-a``/``descendent-of`` filters over a stored CodeSystem's hierarchy, nested
value sets and excludes. Anything else is a 400 naming what could not be expanded,
never a silently partial answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import orjson

from salus.fhir.definitions import r4
from salus.fhir.outcome import FhirError
from salus.search.tree import SearchQuery, TokenValue
from salus.store.base import opened

Code = tuple[str | None, str]
MAX_DEPTH = 8


def _fetch(db: Any, res_type: str, canonical: str) -> dict[str, Any] | None:
    """The current resource of ``res_type`` whose ``url`` (and ``version``, if given) match."""
    url, _, version = canonical.partition("|")
    rows = db.query(
        "SELECT r.res_id, r.version, v.body FROM resources r JOIN resource_versions v ON v.rid = r.rid AND v.version = r.version "
        "WHERE r.res_type = ? AND NOT r.deleted AND r.rid IN "
        "(SELECT u.rid FROM idx_uri u WHERE u.res_type = ? AND u.param = 'url' AND u.value = ?) ORDER BY r.rid",
        (res_type, res_type, url),
    )
    for res_id, ver, body in rows:
        res = orjson.loads(opened(db, res_type, res_id, ver, body) or "{}")
        if not version or res.get("version") == version:
            return res
    return None


def _concepts(concepts: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for c in concepts:
        yield c
        yield from _concepts(c.get("concept", []))


def _descendants(concepts: list[dict[str, Any]], code: str, inside: bool = False) -> Iterator[str]:
    for c in concepts:
        here = inside or c.get("code") == code
        if inside:
            yield c["code"]
        yield from _descendants(c.get("concept", []), code, here)


def _contains(items: list[dict[str, Any]]) -> Iterator[Code]:
    for c in items:
        if c.get("code") and not c.get("abstract"):
            yield c.get("system"), c["code"]
        yield from _contains(c.get("contains", []))


def _include(db: Any, inc: dict[str, Any], depth: int) -> set[Code]:
    system = inc.get("system")
    out: set[Code] | None = None
    if inc.get("concept"):
        out = {(system, c["code"]) for c in inc["concept"] if c.get("code")}
    elif system:
        cs = _fetch(db, "CodeSystem", system + (f"|{inc['version']}" if inc.get("version") else ""))
        if cs is None:
            raise FhirError.of(400, "not-supported", f"Cannot expand: code system {system} is not on this server")
        top = cs.get("concept", [])
        codes: set[str] = {c["code"] for c in _concepts(top) if c.get("code")}
        for f in inc.get("filter", []):
            op, value, prop = f.get("op"), f.get("value"), f.get("property")
            if prop == "concept" and op in ("is-a", "descendent-of"):
                below = set(_descendants(top, value))
                codes &= below | ({value} if op == "is-a" else set())
            else:
                raise FhirError.of(400, "not-supported", f"Cannot expand: filter {prop} {op} {value} is not supported")
        out = {(system, c) for c in codes}
    for nested in inc.get("valueSet", []):
        inner = expand(db, nested, depth + 1)
        out = inner if out is None else out & inner
    return out or set()


# a code no resource can carry (FHIR forbids empty strings): what an empty value set matches
NOTHING = ("urn:salus:empty-value-set", "")


def resolve_modifiers(db: Any, q: SearchQuery) -> None:
    """Turn token ``:in``/``:not-in``/``:above``/``:below`` clauses into plain ones over the codes they name, in place.

    ``:not-in`` becomes ``:not`` over the same codes: resources with no code in the set.
    """
    for n, clause in enumerate(q.clauses):
        if clause.param.type != "token" or clause.modifier not in ("in", "not-in", "above", "below"):
            continue
        codes: set[Code] = set()
        for v in clause.values:
            assert isinstance(v, TokenValue) and v.value_set is not None
            if clause.modifier in ("above", "below"):
                assert v.system is not None and v.code is not None
                codes |= subsumption(db, v.system, v.code, below=clause.modifier == "below")
            else:
                codes |= expand(db, v.value_set)
        values = tuple(
            TokenValue(s, c, system_given=s is not None) for s, c in sorted(codes or {NOTHING}, key=str)
        )
        q.clauses[n] = replace(clause, modifier="not" if clause.modifier == "not-in" else None, values=values)


def _ancestors(concepts: list[dict[str, Any]], code: str, path: tuple[str, ...] = ()) -> set[str]:
    for c in concepts:
        here = (*path, c.get("code", ""))
        if c.get("code") == code:
            return set(path)
        found = _ancestors(c.get("concept", []), code, here)
        if found or any(x.get("code") == code for x in _concepts(c.get("concept", []))):
            return found
    return set()


def subsumption(db: Any, system: str, code: str, *, below: bool) -> set[Code]:
    """The code with its descendants (``:below``) or ancestors (``:above``) in a code system stored here."""
    cs = _fetch(db, "CodeSystem", system)
    if cs is None:
        raise FhirError.of(
            400, "not-supported", f"':{'below' if below else 'above'}' needs the code system {system} on this server"
        )
    top = cs.get("concept", [])
    related = set(_descendants(top, code)) if below else _ancestors(top, code)
    return {(system, c) for c in related | {code}}


def expand(db: Any, canonical: str, depth: int = 0) -> set[Code]:
    """Every (system, code) of the value set ``canonical``; 400 if unknown or not expandable."""
    if depth > MAX_DEPTH:
        raise FhirError.of(400, "not-supported", f"Value set {canonical} nests too deeply to expand")
    vs = _fetch(db, "ValueSet", canonical)
    if vs is None:
        builtin = r4()["valueSets"].get(canonical.partition("|")[0])
        if builtin is None:
            raise FhirError.of(400, "not-found", f"Value set {canonical} is not known to this server")
        return {(None, c) for c in builtin}  # the core value sets ship as codes: match them in any system
    if vs.get("expansion", {}).get("contains"):
        return set(_contains(vs["expansion"]["contains"]))
    compose = vs.get("compose") or {}
    codes: set[Code] = set()
    for inc in compose.get("include", []):
        codes |= _include(db, inc, depth)
    for exc in compose.get("exclude", []):
        codes -= _include(db, exc, depth)
    return codes
