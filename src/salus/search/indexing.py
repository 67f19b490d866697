"""Index rows for one resource: what every search parameter of its type extracts, normalised.

``index_rows(resource)`` maps each ``idx_*`` table to rows ``(param, grp, *values)``;
the store prepends ``rid`` and ``res_type``. For each parameter with an
expression, a plan is compiled once per resource type (and per set of custom
parameters in force, ``salus.search.registry``): the fast path
(``salus.search.paths``, a typed walk over the JSON dict) when the expression
is a plain path, else fhirpathpy behind a cheap check that the resource has
one of the top-level elements the expression can reach. Values go through the
parameter type's module (``salus.search.types``), which normalises them.

Not indexed: ``_id`` and ``_lastUpdated`` (the store's ``resources`` row has
them), special parameters (``_content``, ``near``...). ``Reference.identifier``
goes to ``idx_token`` under ``<code>:identifier``.

Indexing never raises on odd data: a value that cannot be normalised, or an
expression that fails on it, yields no row (a debug log line says which).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any

from salus.fhir.definitions import is_resource_type
from salus.fhir.fhirpath import compiled
from salus.search.paths import Program, Typed, compile_expression, compile_relative, top_level_keys
from salus.search.registry import EMPTY, Overlay, in_force
from salus.search.types import composite, fits, reference, token
from salus.search.types.registry import MODULES

log = logging.getLogger(__name__)

TABLES = tuple(m.TABLE for m in MODULES.values())
NOT_INDEXED = frozenset({"_id", "_lastUpdated"})


@dataclass(frozen=True, slots=True)
class ParamPlan:
    """How one search parameter's values are found in a resource of one type."""

    code: str
    type: str
    module: ModuleType | None
    program: Program | None
    fhirpath: Callable[[Any], list[Any]] | None
    precheck: frozenset[str] | None
    resolve_targets: frozenset[str] | None
    components: tuple[tuple[ModuleType, Program], ...] = ()
    # top-level JSON keys of which at least one must be present for any value (None: always evaluate)
    keys: frozenset[str] | None = None

    def values(self, resource: dict[str, Any], resource_type: str) -> list[Typed]:
        """The values the expression selects, typed when the fast path knows the type."""
        if self.program is not None:
            return self.program.run(resource, resource_type)
        if self.fhirpath is None:
            return []
        if self.precheck is not None and not any(k in resource for k in self.precheck):
            return []
        return [(v, None) for v in self.fhirpath(resource)]  # type: ignore[misc]


def _composite_roots(expression: str, resource_type: str) -> tuple[Program | None, bool, frozenset[str]]:
    """The root program (None: only the resource itself), whether the resource is a root, and root types."""
    alts = [a.strip() for a in expression.split("|")]
    itself = resource_type in alts
    rest = " | ".join(a for a in alts if a != resource_type)
    program = compile_expression(rest, resource_type) if rest else None
    if rest and program is None:
        raise ValueError(f"composite root {expression!r} is not a plain path")
    types = frozenset({resource_type} if itself else set()) | (program.result_types if program else frozenset())
    return program, itself, types


def _plan(resource_type: str, code: str, p: dict[str, Any]) -> ParamPlan | None:
    expression = p.get("expression")
    kind = p["type"]
    if not expression or code in NOT_INDEXED or (kind not in MODULES and kind != "composite"):
        return None
    resolve = frozenset(p["resolve_targets"]) if p.get("resolve_targets") else None
    if kind == "composite":
        try:
            root, itself, root_types = _composite_roots(expression, resource_type)
            comps: list[tuple[ModuleType, Program]] = []
            for c in p.get("component", ()):
                prog = compile_relative(c["expression"], root_types)
                if prog is None or c["type"] not in MODULES:
                    raise ValueError(f"component {c['expression']!r}")
                comps.append((MODULES[c["type"]], prog))
        except ValueError as e:
            log.debug("composite %s.%s not indexed: %s", resource_type, code, e)
            return None
        alts: tuple[tuple[Any, ...], ...] = ((),) if itself else ()
        keys = set(root.top_keys) if root else set()
        if itself:
            # on the resource itself, every component must find a value: the first one's keys are necessary
            keys |= comps[0][1].top_keys
        program = Program(alts + (root.alternatives if root else ()), frozenset(keys), root_types)
        return ParamPlan(code, kind, None, program, None, None, resolve, tuple(comps), frozenset(keys))
    program = compile_expression(expression, resource_type)
    if program is not None:
        return ParamPlan(code, kind, MODULES[kind], program, None, None, resolve, keys=program.top_keys)
    try:
        fp = compiled(expression)
    except Exception as e:  # an expression fhirpathpy cannot compile: the parameter is not indexed
        log.warning("search parameter %s.%s not indexed: %s", resource_type, code, e)
        return None
    pre = top_level_keys(expression, resource_type)
    return ParamPlan(code, kind, MODULES[kind], None, fp, pre, resolve, keys=pre)


# keyed by the custom parameters in force on the type too (an Overlay, hashed by content): a new
# SearchParameter gives new plans, and types it does not touch keep theirs
@lru_cache(maxsize=1024)
def plans(resource_type: str, overlay: Overlay = EMPTY) -> tuple[ParamPlan, ...]:
    """The compiled plans of every indexed search parameter of ``resource_type`` (cached)."""
    out = []
    for code, p in overlay.search_parameters(resource_type).items():
        plan = _plan(resource_type, code, p)
        if plan is not None:
            out.append(plan)
    return tuple(out)


@lru_cache(maxsize=1024)
def _dispatch(resource_type: str, overlay: Overlay = EMPTY) -> tuple[dict[str, tuple[int, ...]], tuple[int, ...]]:
    """For each top-level key, the plans that may find values under it; and plans always evaluated.

    A resource has a dozen keys and its type some fifty parameters: looking plans
    up by the keys present skips most of them without touching the resource.
    """
    by_key: dict[str, list[int]] = {}
    always: list[int] = []
    for i, plan in enumerate(plans(resource_type, overlay)):
        if plan.keys is None:
            always.append(i)
        for k in plan.keys or ():
            by_key.setdefault(k, []).append(i)
    return {k: tuple(v) for k, v in by_key.items()}, tuple(always)


def index_rows(resource: dict[str, Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Rows ``(param, grp, *values)`` per index table for ``resource`` (only tables with rows)."""
    resource_type = resource.get("resourceType")
    if type(resource_type) is not str or not is_resource_type(resource_type):
        return {}
    out: dict[str, list[tuple[Any, ...]]] = {}

    def add(table: str, row: tuple[Any, ...]) -> None:
        rows = out.get(table)
        if rows is None:
            out[table] = [row]
        else:
            rows.append(row)

    # Observation.code alone feeds code, combo-code and four composites: extract each value once.
    # Keyed by id(), valid because the fast path returns objects of the resource, alive for this call.
    memo: dict[tuple[int, str], list[tuple[Any, ...]]] = {}

    def rows_of(module: ModuleType, v: Any, t: str | None) -> list[tuple[Any, ...]]:
        if t is None:
            return module.extract(v, t)  # type: ignore[no-any-return]
        key = (id(v), module.TABLE)
        rows = memo.get(key)
        if rows is None:
            rows = memo[key] = module.extract(v, t) if fits(v, t) else []
        return rows

    overlay = in_force(resource_type)
    all_plans = plans(resource_type, overlay)
    by_key, always = _dispatch(resource_type, overlay)
    selected = set(always)
    for k in resource:
        ids = by_key.get(k)
        if ids is not None:
            selected.update(ids)
    for i in sorted(selected):
        plan = all_plans[i]
        try:
            values = plan.values(resource, resource_type)
            if not values:
                continue
            if plan.module is None:
                composite.extract_groups(plan.code, values, plan.components, rows_of, add)
            else:
                _rows(plan, plan.module, values, rows_of, add)
        except Exception:  # odd data must never stop a valid resource from being stored
            log.debug("search parameter %s.%s skipped a value", resource_type, plan.code, exc_info=True)
    return out


RowsOf = Callable[[ModuleType, Any, "str | None"], list[tuple[Any, ...]]]


def _rows(
    plan: ParamPlan,
    module: ModuleType,
    values: list[Typed],
    rows_of: RowsOf,
    add: Callable[[str, tuple[Any, ...]], None],
) -> None:
    code = plan.code
    table = module.TABLE
    seen: set[tuple[Any, ...]] = set()
    resolve = plan.resolve_targets
    for v, t in values:
        for row in rows_of(module, v, t):
            if resolve is not None and row[0] not in resolve:
                continue
            if row not in seen:
                seen.add(row)
                add(table, (code, 0, *row))
        if module is reference:
            ident = reference.identifier_of(v)
            if ident is not None:
                for row in token.extract(ident, "Identifier"):
                    add(token.TABLE, (code + ":identifier", 0, *row))
        elif module is token and (t == "Identifier" or t is None):
            for row in token.of_type_rows(v):
                add(token.TABLE, (code + ":of-type", 0, *row))
