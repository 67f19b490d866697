"""Parse a search query (the URL's ``(name, value)`` pairs) into a typed ``SearchQuery``.

Nothing here knows SQL: each value is read by its parameter type's module
(``salus.search.types``) into a value node; ``compile`` turns the tree into SQL.
Malformed values raise ``FhirError(400)``; parameters that are unknown or not
supported yet are collected in ``SearchQuery.unknown`` for the caller to
report (lenient) or reject (strict), as R4 search 3.1.1.3 asks. Chains
(``subject:Patient.name``) and ``_has`` become ``Link``s in front of the clause.
"""

from __future__ import annotations

from functools import lru_cache

from salus.fhir.definitions import is_resource_type
from salus.search.registry import Overlay, current, in_force, search_parameters
from salus.search.tree import Clause, CompositeValue, Include, Link, Missing, ParamDef, SearchQuery, SortKey, Value
from salus.search.types import invalid, split_unescaped, token
from salus.search.types.composite import component_param
from salus.search.types.registry import MODULES

ID = ParamDef("_id", "token")
LAST_UPDATED = ParamDef("_lastUpdated", "date")
# _list=id: the resources a List on this server names in List.entry.item (R4 search.html#list)
LIST = ParamDef("_list", "token")
# handled by the doors (format negotiation), never by search
IGNORED = frozenset({"_format", "_pretty"})
SUMMARY = frozenset({"true", "false", "text", "data", "count"})
TOTAL = frozenset({"none", "estimate", "accurate"})
SORTABLE = frozenset({"string", "token", "date", "number", "quantity", "uri"})


def known_parameters(resource_types: tuple[str, ...] | None) -> dict[str, ParamDef]:
    """The parameters a search over ``resource_types`` understands (those common to all of them)."""
    return _known_parameters(resource_types, in_force(resource_types))


@lru_cache(maxsize=4096)
def _known_parameters(resource_types: tuple[str, ...] | None, overlay: Overlay) -> dict[str, ParamDef]:
    if resource_types is None:
        defs = {code: ParamDef.of(code, d) for code, d in overlay.search_parameters("Resource").items()}
    else:
        per_type = [overlay.search_parameters(t) for t in resource_types]
        first = per_type[0]
        defs = {
            code: ParamDef.of(code, d)
            for code, d in first.items()
            if all(code in other and other[code]["type"] == d["type"] for other in per_type[1:])
        }
    defs["_id"] = ID
    defs["_lastUpdated"] = LAST_UPDATED
    defs["_list"] = LIST
    return defs


def parse_query(resource_type: str | None, query: list[tuple[str, str]]) -> SearchQuery:
    """The typed tree of ``query`` for a search on ``resource_type`` (None: every type)."""
    if resource_type is not None and not is_resource_type(resource_type):
        raise invalid("type", f"'{resource_type}' is not a resource type", code="not-supported")
    types: tuple[str, ...] | None = (resource_type,) if resource_type else None
    if resource_type is None:
        wanted: list[str] = []
        for name, value in query:
            if name == "_type" and value:
                for t in value.split(","):
                    if not is_resource_type(t):
                        raise invalid("_type", f"'{t}' in _type is not a resource type")
                    if t not in wanted:
                        wanted.append(t)
        types = tuple(wanted) or None
    q = SearchQuery(types)
    for name, value in query:
        if "\x00" in name or "\x00" in value:
            # no stored value holds U+0000 (writes refuse it), and PostgreSQL cannot even compare it
            raise invalid(name.replace("\x00", ""), "Search parameters must not contain the NUL character (U+0000)")
        if name in IGNORED or value == "":
            # an empty value means the parameter is absent (R4 search 3.1.1.3)
            continue
        if name == "_type" and resource_type is None:
            q.applied.append((name, value))
        elif name.split(":", 1)[0] in _RESULT:
            _result_parameter(q, name, value, types)
        else:
            clause = _clause(types, name, value)
            if clause is None:
                q.unknown.append(name)
            elif _not_indexed(clause):
                q.pending.append(name)
            else:
                q.clauses.append(clause)
                q.applied.append((name, value))
    return q


_RESULT = frozenset({"_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total"})


def _not_indexed(clause: Clause) -> bool:
    """Whether the clause, or a link of its chain, uses a parameter whose index is still being built."""
    overlay = current()
    return overlay.is_pending(clause.resource_types, clause.param.code.removesuffix(":identifier")) or any(
        overlay.is_pending(link.source_types, link.param.code) for link in clause.chain
    )


def _resolve_name(
    types: tuple[str, ...] | None, name: str
) -> tuple[list[Link], tuple[str, ...] | None, str, str] | None:
    """Split a parameter name into its chain links and the final ``(types, code, modifier)``.

    ``subject:Patient.organization.name:exact`` -> two forward links, then
    ``name`` with ``:exact`` on Organization; ``_has:Observation:patient:code``
    -> a reverse link, then ``code`` on Observation. None when some link is
    unknown (the whole parameter is then reported as unknown).
    """
    links: list[Link] = []
    rest = name
    while True:
        if rest.startswith("_has:"):
            parts = rest.split(":", 3)
            if len(parts) < 4 or not parts[3]:
                raise invalid(name, f"_has takes _has:Type:reference:parameter, not '{name}'")
            source, pcode, rest = parts[1], parts[2], parts[3]
            if not is_resource_type(source):
                raise invalid(name, f"'{source}' in {name} is not a resource type")
            p = search_parameters(source).get(pcode)
            if p is None or p["type"] != "reference":
                return None
            ref = ParamDef.of(pcode, p)
            if types is not None and ref.targets and not set(types) & set(ref.targets):
                raise invalid(name, f"{source}.{pcode} cannot refer to {', '.join(types)}")
            links.append(Link(ref, (source,), types or ref.targets, reverse=True))
            types = (source,)
            continue
        head, dot, tail = rest.partition(".")
        if not dot:
            break
        pcode, _, type_mod = head.partition(":")
        ref = known_parameters(types).get(pcode)
        if ref is None or ref.type != "reference" or not tail:
            return None
        if type_mod:
            if not is_resource_type(type_mod) or (ref.targets and type_mod not in ref.targets):
                raise invalid(name, f"'{pcode}' cannot refer to a {type_mod}")
            targets: tuple[str, ...] = (type_mod,)
        else:
            # the targets on which the rest of the chain means something
            nxt = tail.partition(".")[0].partition(":")[0]
            targets = tuple(t for t in ref.targets if nxt == "_has" or nxt in known_parameters((t,)))
        if not targets:
            return None
        links.append(Link(ref, types, targets))
        types = targets
        rest = tail
    code, _, modifier = rest.partition(":")
    return links, types, code, modifier


# longer values are rare and would make the memo of parsed clauses large
MEMO_VALUE_LENGTH = 256


def _clause(types: tuple[str, ...] | None, name: str, value: str) -> Clause | None:
    """One filter clause, or None when the parameter is unknown or not supported yet.

    Memoised: the same parameter and value recur from search to search (a patient's
    searches, paging), and a clause is immutable. Only the definitions in force change
    what a clause is, and they are part of the memo's key; errors are never memoised.
    """
    if len(value) > MEMO_VALUE_LENGTH:
        return _parse_clause(types, name, value)
    return _memo_clause(types, name, value, current())


@lru_cache(maxsize=4096)
def _memo_clause(types: tuple[str, ...] | None, name: str, value: str, overlay: Overlay) -> Clause | None:
    return _parse_clause(types, name, value)


def _parse_clause(types: tuple[str, ...] | None, name: str, value: str) -> Clause | None:
    resolved = _resolve_name(types, name)
    if resolved is None:
        return None
    links, types, code, modifier = resolved
    param = known_parameters(types).get(code)
    if param is None or (param.type not in MODULES and param.type != "composite"):
        return None  # unknown or special
    if param.expression is None and param not in (ID, LAST_UPDATED, LIST):
        return None  # not indexed (Patient.age)
    mod: str | None = modifier or None
    chain = tuple(links)
    if mod == "missing":
        if value not in ("true", "false"):
            raise invalid(name, f"':missing' takes true or false, not '{value}'")
        return Clause(types, param, mod, (Missing(value == "true"),), chain)
    if param.type == "composite":
        return _composite_clause(types, param, mod, name, value, chain)
    module = MODULES[param.type]
    if param is LIST and mod is not None:
        raise invalid(name, f"Unknown modifier ':{mod}' for '_list'")
    if mod is not None:
        if param.type == "reference" and mod == "identifier":
            param = ParamDef(param.code + ":identifier", "token")
            module = token
        elif param.type == "token" and mod == "of-type":
            # rows of identifier types live under their own parameter name; see token.of_type_rows
            of_type = ParamDef(param.code + ":of-type", "token")
            values = [token.parse_of_type(raw, of_type) for raw in split_unescaped(value, ",") if raw]
            if not values:
                raise invalid(name, f"No value for parameter '{name}'")
            return Clause(types, of_type, None, tuple(values), chain)
        elif param.type == "reference" and is_resource_type(mod):
            if param.targets and mod not in param.targets:
                raise invalid(name, f"'{code}' cannot refer to a {mod} (targets: {', '.join(param.targets)})")
        elif param.code == "_id" and mod == "not":
            pass
        elif mod in getattr(module, "UNSUPPORTED_MODIFIERS", ()):
            raise invalid(name, f"The modifier ':{mod}' is not supported yet", code="not-supported")
        elif mod not in module.MODIFIERS or param.code == "_id":
            raise invalid(name, f"Unknown modifier ':{mod}' for the {param.type} parameter '{code}'")
    values: list[Value] = []
    for raw in split_unescaped(value, ","):
        if raw == "":
            continue
        values.append(module.parse(raw, mod, param))
    if not values:
        raise invalid(name, f"No value for parameter '{name}'")
    return Clause(types, param, mod, tuple(values), chain)


def _composite_clause(
    types: tuple[str, ...] | None, param: ParamDef, mod: str | None, name: str, value: str, chain: tuple[Link, ...]
) -> Clause:
    """``a$b[$c],...``: each part read by its component's type."""
    if mod is not None:
        raise invalid(name, f"Unknown modifier ':{mod}' for the composite parameter '{param.code}'")
    if not param.components or any(t not in MODULES for _, t, _ in param.components):
        raise invalid(name, f"The composite parameter '{param.code}' is not supported", code="not-supported")
    values: list[Value] = []
    for raw in split_unescaped(value, ","):
        if raw == "":
            continue
        parts = split_unescaped(raw, "$")
        if len(parts) != len(param.components):
            raise invalid(name, f"'{param.code}' takes {len(param.components)} parts separated by '$', not '{raw}'")
        values.append(
            CompositeValue(
                tuple(
                    MODULES[ctype].parse(part, None, ParamDef(component_param(param.code, i), ctype))
                    for i, (part, (_, ctype, _)) in enumerate(zip(parts, param.components, strict=True))
                )
            )
        )
    if not values:
        raise invalid(name, f"No value for parameter '{name}'")
    return Clause(types, param, None, tuple(values), chain)


def _result_parameter(q: SearchQuery, name: str, value: str, types: tuple[str, ...] | None) -> None:
    """``_count``, ``_sort``, ``_include``, ``_revinclude``, ``_summary``, ``_elements``, ``_total``."""
    code, _, modifier = name.partition(":")
    if code == "_count":
        if not (value.isascii() and value.isdigit()):
            raise invalid(name, f"_count must be a non-negative integer, not '{value}'")
        q.count = int(value)
    elif code == "_sort":
        for key in value.split(","):
            desc = key.startswith("-")
            pcode = key[1:] if desc else key
            param = known_parameters(types).get(pcode)
            if param is None:
                raise invalid(name, f"Cannot sort on unknown parameter '{pcode}'")
            if param.type not in SORTABLE:
                raise invalid(
                    name, f"Sorting on the {param.type} parameter '{pcode}' is not supported", "not-supported"
                )
            if current().is_pending(types, pcode):
                q.pending.append(pcode)  # an order over some of the resources only would be a wrong order
                continue
            q.sort.append(SortKey(param, desc))
    elif code in ("_include", "_revinclude"):
        if modifier not in ("", "iterate"):
            raise invalid(name, f"Unknown modifier ':{modifier}' on {code}")
        include = _include(name, value, reverse=code == "_revinclude", iterate=modifier == "iterate")
        if current().is_pending((include.source_type,), include.param):
            q.pending.append(name)
            return
        q.includes.append(include)
    elif code == "_summary":
        if value not in SUMMARY:
            raise invalid(name, f"_summary must be one of {', '.join(sorted(SUMMARY))}, not '{value}'")
        q.summary = value
    elif code == "_elements":
        q.elements = [e for e in value.split(",") if e]
    elif code == "_total":
        if value not in TOTAL:
            raise invalid(name, f"_total must be one of none, estimate, accurate, not '{value}'")
        q.total = value
    q.applied.append((name, value))


def _include(name: str, value: str, *, reverse: bool, iterate: bool) -> Include:
    """``Source:param[:Target]`` (``*`` for every reference parameter of Source)."""
    parts = value.split(":")
    if value == "*":
        raise invalid(name, f"{name}=* is not supported yet; name the parameter", code="not-supported")
    if len(parts) not in (2, 3):
        raise invalid(name, f"{name} takes Source:parameter[:Target], not '{value}'")
    source, pcode = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if not is_resource_type(source) or (target is not None and not is_resource_type(target)):
        raise invalid(name, f"Unknown resource type in {name}={value}")
    if pcode != "*":
        p = search_parameters(source).get(pcode)
        if p is None or p["type"] != "reference":
            raise invalid(name, f"'{pcode}' is not a reference parameter of {source}")
    return Include(source, pcode, target, reverse, iterate)
