"""Compile a ``SearchQuery`` to the SQL tree of ``salus.search.sql``, then to text per dialect.

Shape of every search (``r`` = ``resources``, ``v`` = ``resource_versions``)::

    SELECT r.rid, r.res_type, r.res_id, r.version, v.body
    FROM resources r JOIN resource_versions v ON v.rid = r.rid AND v.version = r.version
    WHERE NOT r.deleted AND r.res_type = ?
      AND r.rid IN (SELECT i.rid FROM idx_token i WHERE i.res_type = ? AND i.param = ? AND (<value> OR <value>))
      AND ...                                  -- one semi-join per clause: repeated parameters AND
    ORDER BY <_sort keys>, r.rid LIMIT ? OFFSET ?

Each clause is a semi-join on the index table of its type, where the type's
module compiles each value; ``:not`` and ``:missing=true`` are the same
sub-select with ``NOT IN``. A composite joins its component tables on
``(rid, grp)``; a chain or ``_has`` wraps the clause in a semi-join through
``idx_reference`` and ``resources``, one level per link. ``_id`` and ``_lastUpdated`` use the ``resources``
columns. The default order is ``rid`` ascending: insertion order, stable
across pages and free (it is the primary key).

``where``, ``page_select`` and the other statement functions return deferred
``Statement``s that ``to_sql`` renders through a cache keyed by the query's
shape: searches differing only in bound values build the SQL once (see the
statement cache at the end of this module).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from salus.fhir.definitions import r4, resource_types
from salus.fhir.outcome import FhirError
from salus.search.parse import MODULES
from salus.search.registry import current
from salus.search.sql import (
    Alias,
    Cmp,
    Col,
    Const,
    CountOver,
    Deferred,
    Derived,
    Exists,
    Expr,
    Func,
    InList,
    InQuery,
    IsNull,
    Join,
    Not,
    Order,
    Param,
    Row,
    Scalar,
    Select,
    Star,
    Table,
    Unindexed,
    and_,
    eq,
    or_,
    render,
    trace,
)
from salus.search.tree import Clause, CompositeValue, Include, Missing, SearchQuery, SortKey, TokenValue
from salus.search.types import date, ucum
from salus.search.types.composite import component_param

R = "r"
PAGE = "p"  # the derived table of a page's keys (page_select with_total)
RESOURCES = Table("resources", R)


def _current_body(alias: str) -> Join:
    """The join from a row of resources (or of a page's keys) ``alias`` to its current version's body ``v``."""
    return Join(
        Table("resource_versions", "v"),
        and_(Cmp(Col("rid", "v"), "=", Col("rid", alias)), Cmp(Col("version", "v"), "=", Col("version", alias))),
    )


CURRENT_BODY = _current_body(R)
PAGE_BODY = _current_body(PAGE)
ENTRY_COLUMNS = (Col("rid", R), Col("res_type", R), Col("res_id", R), Col("version", R), Col("body", "v"))


def _types_filter(types: tuple[str, ...] | None, alias: str, *, unindexed: bool = False) -> list[Expr]:
    if types is None:
        return []
    col: Expr = Unindexed(Col("res_type", alias)) if unindexed else Col("res_type", alias)
    if len(types) == 1:
        return [Cmp(col, "=", Param(types[0]))]
    return [InList(col, tuple(Param(t) for t in types))]


def _selective(c: Clause) -> bool:
    """Whether the clause is a positive semi-join on index rows, the best place for a plan to start."""
    if c.chain:
        return True
    if c.param.code in ("_id", "_lastUpdated") or c.modifier == "not":
        return False
    first = c.values[0]
    return not (isinstance(first, Missing) and first.missing)


def _resources_filter(
    types: tuple[str, ...] | None, clauses: list[Clause], alias: str, *, selective: bool = False
) -> list[Expr]:
    """The type filter on a resources row: left out of the plan's choice when a clause is more selective.

    An ``_id`` clause keeps it: ``(res_type, res_id)`` is then the best index.
    Searching ``_id`` across every type lists every type so that index still serves.
    """
    has_id = any(c.param.code == "_id" and not c.chain for c in clauses)
    if types is None and has_id:
        types = tuple(sorted(resource_types()))
    selective = selective or any(_selective(c) for c in clauses)
    return _types_filter(types, alias, unindexed=not has_id and selective)


def _rank(c: Clause) -> int:
    """How few rows a clause is likely to match, for choosing the one that drives the plan (lower: fewer).

    SQLite has no statistics on a database filled through the API, so the
    compiler chooses: a reference to one resource or an exact code is a handful
    of rows; a range of dates or a missing element may be most of a type.
    """
    if not _selective(c):
        return 9
    if c.chain:
        return 4
    kind = c.param.type
    if kind == "reference" and c.modifier is None:
        return 0
    if kind == "token" and c.modifier in (None, "of-type"):
        return 1
    if kind in ("string", "uri", "token", "reference", "composite"):
        return 2
    if kind in ("number", "quantity"):
        return 3
    return 5


def _semi(alias: str, sub: Select, *, negated: bool, correlated: bool) -> Expr:
    """``alias.rid [NOT] IN (sub)``, or as a correlated probe of ``sub``'s table for that one rid.

    Only one clause of a search should be an ``IN``: it drives the plan. SQLite
    builds every other ``IN`` list in full (every Observation with a common
    code, to keep one patient's), where a probe by rid reads a row or two.
    """
    if not correlated:
        return InQuery(Col("rid", alias), sub, negated=negated)
    head = sub.columns[0]
    assert isinstance(head, Col)
    probe = replace(
        sub,
        table=replace(sub.table, by_rid=True),
        where=and_(Cmp(head, "=", Col("rid", alias)), *([sub.where] if sub.where is not None else [])),
    )
    return Not(Exists(probe)) if negated else Exists(probe)


def clause_expr(c: Clause, alias: str = R, depth: int = 0, *, correlated: bool = False) -> Expr:
    """The predicate on the resources row ``alias`` for one clause (its values ORed).

    ``depth`` numbers the aliases of nested sub-selects (chains, ``_has``) so
    that each level names its own tables. ``correlated`` asks for a probe of the
    row's own index rows rather than a set to start from (see ``_semi``).
    """
    if c.chain:
        return _link_expr(c, alias, depth, correlated)
    p = c.param
    first = c.values[0]
    if p.code == "_id":
        if isinstance(first, Missing):
            return Const(not first.missing)  # every resource has an id
        ids = tuple(_unit(_code_param, v) for v in c.values)
        return InList(Col("res_id", alias), ids, negated=c.modifier == "not")
    if p.code == "_list":
        if isinstance(first, Missing):
            raise FhirError.of(400, "invalid", "':missing' does not apply to '_list'")
        return _list_expr(c, alias, depth)
    if p.code == "_lastUpdated":
        if isinstance(first, Missing):
            return Const(not first.missing)
        col = Col("last_updated", alias)
        return or_(*(_unit(date.condition_on, v, col, col) for v in c.values))
    i = f"i{depth}"
    if p.type == "composite":
        return _composite_expr(c, alias, depth, correlated)
    module = MODULES[p.type]
    base = [*_types_filter(c.resource_types, i), eq("param", p.code, i)]
    if isinstance(first, Missing):
        sub = Select((Col("rid", i),), Table(module.TABLE, i), where=and_(*base))
        return _semi(alias, sub, negated=first.missing, correlated=correlated)
    mod = None if c.modifier == "not" else c.modifier
    values = or_(*(_unit(module.condition, v, mod, i) for v in c.values))
    sub = Select((Col("rid", i),), Table(module.TABLE, i), where=and_(*base, values))
    return _semi(alias, sub, negated=c.modifier == "not", correlated=correlated)


def _list_expr(c: Clause, alias: str, depth: int) -> Expr:
    """Resources named by ``List.entry.item`` of the given (current) Lists."""
    i, lst = f"li{depth}", f"lr{depth}"
    lists = Select(
        (Col("rid", lst),), Table("resources", lst),
        where=and_(eq("res_type", "List", lst), InList(Col("res_id", lst), tuple(_unit(_code_param, v) for v in c.values)),
                   Not(Col("deleted", lst))),
    )
    items = Select(
        (Col("target_id", i),), Table("idx_reference", i),
        where=and_(eq("res_type", "List", i), eq("param", "item", i),
                   Cmp(Col("target_type", i), "=", Col("res_type", alias)), InQuery(Col("rid", i), lists)),
    )
    return InQuery(Col("res_id", alias), items)


def _composite_expr(c: Clause, alias: str, depth: int, correlated: bool) -> Expr:
    """Each value: one row per component in the same ``(rid, grp)``, each meeting its own condition."""
    p = c.param
    first = c.values[0]
    if isinstance(first, Missing):
        table = MODULES[p.components[0][1]].TABLE
        i = f"i{depth}"
        base = and_(*_types_filter(c.resource_types, i), eq("param", component_param(p.code, 0), i))
        sub = Select((Col("rid", i),), Table(table, i), where=base)
        return _semi(alias, sub, negated=first.missing, correlated=correlated)
    alternatives: list[Expr] = []
    for value in c.values:
        assert isinstance(value, CompositeValue)
        joins: list[Join] = []
        conds: list[Expr] = []
        head = f"c{depth}_0"
        for k, (part, (_, ctype, _)) in enumerate(zip(value.parts, p.components, strict=True)):
            a = f"c{depth}_{k}"
            module = MODULES[ctype]
            mine = [eq("param", component_param(p.code, k), a), _unit(module.condition, part, None, a)]
            if k == 0:
                conds += [*_types_filter(c.resource_types, a), *mine]
            else:
                same_group = and_(Cmp(Col("rid", a), "=", Col("rid", head)), Cmp(Col("grp", a), "=", Col("grp", head)))
                joins.append(Join(Table(module.TABLE, a), and_(same_group, *mine)))
        table = MODULES[p.components[0][1]].TABLE
        sub = Select((Col("rid", head),), Table(table, head), tuple(joins), and_(*conds))
        alternatives.append(_semi(alias, sub, negated=False, correlated=correlated))
    return or_(*alternatives)


def _link_expr(c: Clause, alias: str, depth: int, correlated: bool = False) -> Expr:
    """Follow the clause's first chain link from the resources row ``alias``.

    Forward (``subject:Patient.name``): ``alias`` has an ``idx_reference`` row
    for the link's parameter whose target (per target type) is the id of a
    live resource meeting the rest. Reverse (``_has:Observation:patient:code``):
    ``alias`` is the target of such a row of a live source resource meeting the
    rest. Both start from the inner clause's index rows and reach ``alias``
    through ``idx_reference``'s btrees.
    """
    link, rest = c.chain[0], replace(c, chain=c.chain[1:])
    lk, inner_alias = f"l{depth}", f"t{depth}"
    ref = [*_types_filter(link.source_types, lk), eq("param", link.param.code, lk)]
    if not link.reverse:
        # one sub-select over every target type, matched as a (type, id) pair: an OR of one sub-select per
        # type cannot be driven from the inner index by either engine and reads every row of the parameter
        live = Select(
            (Col("res_type", inner_alias), Col("res_id", inner_alias)),
            Table("resources", inner_alias),
            where=and_(
                Not(Col("deleted", inner_alias)),
                *_resources_filter(link.target_types, [rest], inner_alias),
                clause_expr(rest, inner_alias, depth + 1),
            ),
        )
        pair = Row((Col("target_type", lk), Col("target_id", lk)))
        sub = Select((Col("rid", lk),), Table("idx_reference", lk), where=and_(*ref, InQuery(pair, live)))
        return _semi(alias, sub, negated=False, correlated=correlated)
    sources = Select(
        (Col("rid", inner_alias),),
        Table("resources", inner_alias),
        where=and_(
            Not(Col("deleted", inner_alias)),
            *_resources_filter(link.source_types, [rest], inner_alias),
            clause_expr(rest, inner_alias, depth + 1),
        ),
    )
    # start from the sources' rids (idx_reference_rid), not from every reference to the target type
    by_rid = [
        *_types_filter(link.source_types, lk, unindexed=True),
        Cmp(Unindexed(Col("param", lk)), "=", Param(link.param.code)),
    ]
    alternatives = []
    for target in link.target_types:
        targets = Select(
            (Col("target_id", lk),),
            Table("idx_reference", lk),
            where=and_(
                *by_rid, Cmp(Unindexed(Col("target_type", lk)), "=", Param(target)), InQuery(Col("rid", lk), sources)
            ),
        )
        alternatives.append(and_(eq("res_type", target, alias), InQuery(Col("res_id", alias), targets)))
    return or_(*alternatives)


def compartment_expr(types: tuple[str, ...] | None, compartment: tuple[str, str]) -> Expr:
    """Resources in ``compartment`` = (type, id): the owner itself and what refers to it by the listed params.

    The parameters come from the R4 CompartmentDefinition (``Observation``:
    subject, performer; ``Patient``: link...). A type outside the compartment matches nothing.
    """
    ctype, cid = compartment
    members: dict[str, list[str]] | None = r4()["compartments"].get(ctype)
    if members is None:
        raise FhirError.of(400, "not-supported", f"There is no {ctype} compartment")
    wanted = types if types is not None else (*members, ctype)
    parts: list[Expr] = []
    if ctype in wanted:
        parts.append(and_(eq("res_type", ctype, R), eq("res_id", cid, R)))
    # group types listing the same parameters to keep the predicate short
    groups: dict[tuple[str, ...], list[str]] = {}
    for t in wanted:
        params = members.get(t)
        if params:
            groups.setdefault(tuple(params), []).append(t)
    if groups:
        by_type = or_(
            *(
                and_(
                    InList(Col("res_type", "i"), tuple(Param(t) for t in ts)),
                    InList(Col("param", "i"), tuple(Param(p) for p in ps)),
                )
                for ps, ts in groups.items()
            )
        )
        sub = Select(
            (Col("rid", "i"),),
            Table("idx_reference", "i"),
            where=and_(eq("target_type", ctype, "i"), eq("target_id", cid, "i"), by_type),
        )
        parts.append(InQuery(Col("rid", R), sub))
    return or_(*parts)


def where(q: SearchQuery, compartment: tuple[str, str] | None = None) -> Expr:
    """The whole filter on ``r``: not deleted, of the searched types, every clause, the compartment.

    Deferred: the statements made of it (``page_select``, ``count_select``,
    ``ids_select``) are usually rendered from the statement cache without it.
    """
    return Where(q, compartment)


def _where_tree(q: SearchQuery, compartment: tuple[str, str] | None) -> Expr:
    """``where``, built."""
    # a compartment is a few resources among many: let it drive the plan like a clause
    types = _resources_filter(q.resource_types, q.clauses, R, selective=compartment is not None)
    parts: list[Expr] = [Not(Col("deleted", R)), *types]
    # one clause drives (the likely fewest rows); the others probe each candidate's own rows. An _id or a
    # compartment drives better still (the resources key, one target's references).
    driver = None
    if compartment is None and not any(c.param.code == "_id" and not c.chain for c in q.clauses):
        candidates = [k for k, c in enumerate(q.clauses) if _selective(c)]
        driver = min(candidates, key=lambda k: _rank(q.clauses[k]), default=None)
    parts += [clause_expr(c, correlated=k != driver) for k, c in enumerate(q.clauses)]
    if compartment is not None:
        parts.append(compartment_expr(q.resource_types, compartment))
    return and_(*parts)


def _sort_key(key: SortKey) -> Order:
    p = key.param
    if p.code == "_id":
        return Order(Col("res_id", R), key.descending)
    if p.code == "_lastUpdated":
        return Order(Col("last_updated", R), key.descending)
    module = MODULES[p.type]
    col = module.sort_column()
    if key.descending and p.type in ("date", "number", "quantity"):
        col = "high"  # a range sorts by its start going up and by its end going down
    agg = "MAX" if key.descending else "MIN"
    rows: list[Expr] = [Cmp(Col("rid", "s"), "=", Col("rid", R)), eq("param", p.code, "s")]
    if p.type == "quantity":
        # by the values as written: a minimum over them and their canonical copies would mix units
        system = Col("system", "s")
        rows.append(or_(IsNull(system), Cmp(system, "<>", Param(ucum.CANONICAL_SYSTEM))))
    sub = Select((Func(agg, (Col(col, "s"),)),), Table(module.TABLE, "s"), where=and_(*rows))
    return Order(Scalar(sub), key.descending)


def order_by(q: SearchQuery) -> tuple[Order, ...]:
    """The ``_sort`` keys, then ``rid`` so that pages never overlap."""
    return (*(_sort_key(k) for k in q.sort), Order(Col("rid", R)))


def page_select(
    q: SearchQuery,
    filt: Expr,
    limit: int | None,
    offset: int,
    after: tuple[Any, ...] | None = None,
    *,
    with_total: bool = False,
) -> Select | Statement:
    """One page of matches with their current bodies, then each row's sort key values (for the next cursor).

    ``after`` is the sort key values of the previous page's last row: the page starts
    right after it (keyset paging), so rows written or deleted meanwhile never make a
    page repeat or skip a match, as an offset would.

    ``with_total`` adds a last column, the number of matches, counted in the same
    statement: the page is cut from the matches' keys (``COUNT(*) OVER ()`` is taken
    before the LIMIT) and only the page's rows are joined to their bodies, so a
    full first page costs one evaluation of the filter, not a second one to count.
    It does not combine with ``after`` (the filter then holds only later rows).

    Given ``where(q, ...)`` of this same ``q``, the statement is rendered from the cache when it can be.
    """
    if isinstance(filt, Where) and filt.query is q:
        return PageStatement(filt, limit, offset, after, with_total)
    return _page_tree(q, _built(filt), limit, offset, after, with_total)


def _page_tree(q: SearchQuery, filt: Expr, limit: Any, offset: Any, after: Any, with_total: bool) -> Select:
    """``page_select``, built (``limit``, ``offset`` and ``after`` may be marked literals)."""
    orders = order_by(q)
    if after is not None:
        filt = and_(filt, keyset_after(orders, after))
    if not with_total:
        columns = (*ENTRY_COLUMNS, *(o.expr for o in orders[:-1]))
        return Select(columns, RESOURCES, (CURRENT_BODY,), filt, orders, limit, offset)
    keys = [Alias(o.expr, f"sk{k}") for k, o in enumerate(orders[:-1])]
    inner = Select(
        (Col("rid", R), Col("res_type", R), Col("res_id", R), Col("version", R), *keys, Alias(CountOver(), "total")),
        RESOURCES, where=filt, order_by=orders, limit=limit, offset=offset,
    )
    p = PAGE
    sort_cols = [Col(k.name, p) for k in keys]
    columns = (Col("rid", p), Col("res_type", p), Col("res_id", p), Col("version", p), Col("body", "v"),
               *sort_cols, Col("total", p))
    outer_order = (*(Order(col, o.descending) for col, o in zip(sort_cols, orders, strict=False)), Order(Col("rid", p)))
    return Select(columns, Derived(inner, p), (PAGE_BODY,), order_by=outer_order)


def keyset_after(orders: tuple[Order, ...], values: tuple[Any, ...]) -> Expr:
    """Rows strictly after ``values`` in the order ``orders`` (missing values sort last)."""
    if len(values) != len(orders):
        raise ValueError("cursor does not fit the sort")
    options: list[Expr] = []
    for i, (order, value) in enumerate(zip(orders, values, strict=True)):
        same = [IsNull(o.expr) if v is None else Cmp(o.expr, "=", Param(v)) for o, v in zip(orders[:i], values[:i], strict=True)]
        if value is None:
            continue  # nothing sorts after a missing value but other missing values
        later = Cmp(order.expr, "<" if order.descending else ">", Param(value))
        options.append(and_(*same, or_(later, IsNull(order.expr))))
    return or_(*options) if options else Const(False)


def count_select(filt: Expr) -> Select | Statement:
    """How many resources match."""
    if isinstance(filt, Where):
        return CountStatement(filt)
    return _count_tree(filt)


def _count_tree(filt: Expr) -> Select:
    return Select((Func("COUNT", (Star(),)),), RESOURCES, where=filt)


def rids_select(filt: Expr) -> Select:
    """The matches' rids, unordered (what the planner's row estimate is read from)."""
    return Select((Col("rid", R),), RESOURCES, where=_built(filt))


def ids_select(q: SearchQuery, filt: Expr, limit: int) -> Select | Statement:
    """``(res_id, version)`` of the first matches (conditional interactions)."""
    if isinstance(filt, Where) and filt.query is q:
        return IdsStatement(filt, limit)
    return _ids_tree(q, _built(filt), limit)


def _ids_tree(q: SearchQuery, filt: Expr, limit: int) -> Select:
    return Select((Col("res_id", R), Col("version", R)), RESOURCES, where=filt, order_by=order_by(q), limit=limit)


def include_select(inc: Include, rids: list[int]) -> Select | Statement:
    """Resources that the page's resources (``rids``) refer to through ``inc.param``."""
    return IncludeStatement(inc, rids)


def _include_tree(inc: Include, rids: list[Any]) -> Select:
    i, t = "i", "t"
    conds: list[Expr] = [InList(Col("rid", i), tuple(Param(x) for x in rids)), eq("res_type", inc.source_type, i)]
    # the page's rids are the few rows to start from: pinned, or SQLite without statistics prefers the
    # (res_type, param) prefix of another index and reads every reference of the parameter
    if inc.param != "*":
        conds.append(eq("param", inc.param, i))
    if inc.target_type is not None:
        conds.append(eq("target_type", inc.target_type, i))
    targets = Select(
        (Col("rid", t),),
        Table("resources", t),
        (
            Join(
                Table("idx_reference", i, by_rid=True),
                and_(
                    Cmp(Col("target_type", i), "=", Col("res_type", t)),
                    Cmp(Col("target_id", i), "=", Col("res_id", t)),
                ),
            ),
        ),
        and_(*conds),
    )
    filt = and_(Not(Col("deleted", R)), InQuery(Col("rid", R), targets))
    return Select(ENTRY_COLUMNS, RESOURCES, (CURRENT_BODY,), filt, (Order(Col("rid", R)),))


def revinclude_select(inc: Include, matches: list[tuple[str, str]]) -> Select | Statement:
    """Resources of ``inc.source_type`` that refer to any of ``matches`` (type, id) through ``inc.param``."""
    by_type: dict[str, list[str]] = {}
    for typ, rid in matches:
        if inc.target_type is None or inc.target_type == typ:
            by_type.setdefault(typ, []).append(rid)
    return RevIncludeStatement(inc, by_type)


def _revinclude_tree(inc: Include, by_type: dict[str, list[Any]]) -> Select:
    i = "i"
    refs = or_(
        *(
            and_(eq("target_type", typ, i), InList(Col("target_id", i), tuple(Param(x) for x in ids)))
            for typ, ids in by_type.items()
        )
    )
    conds: list[Expr] = [eq("res_type", inc.source_type, i)]
    if inc.param != "*":
        conds.append(eq("param", inc.param, i))
    sub = Select((Col("rid", i),), Table("idx_reference", i), where=and_(*conds, refs))
    # the type filter on resources is left out of the plan's choice (Unindexed): the sub-select on
    # idx_reference is the selective side, and SQLite would otherwise walk every resource of the type
    filt = and_(
        Not(Col("deleted", R)),
        Cmp(Unindexed(Col("res_type", R)), "=", Param(inc.source_type)),
        InQuery(Col("rid", R), sub),
    )
    return Select(ENTRY_COLUMNS, RESOURCES, (CURRENT_BODY,), filt, (Order(Col("rid", R)),))


def to_sql(node: Select | Statement, dialect: str) -> tuple[str, list[Any]]:
    """Render for the store's dialect (a ``Statement`` from the cache when its shape has been seen)."""
    if isinstance(node, Statement):
        return node.to_sql(dialect)
    return render(node, dialect)


# ---- the statement cache ----------------------------------------------------------------------------------------
#
# Searches of one shape (the same types, parameters, modifiers, chains, sort, paging and compartment type) differ
# only in their values, which are all bound as parameters: the SQL text is the same. The first search of a shape
# builds and renders its statement while tracing which parameters come from where (``sql.trace``); later ones
# render only each search value's own condition (a node or two, to get its parameters) and fill them into the
# remembered parameter list. Building the tree and rendering it was most of a cheap search's Python time.
#
# What may change the text is either in the shape key or checked on every use:
# - the key holds every part of the query that the compiler reads itself, whole (frozen dataclasses: parameter
#   definitions, chain links, sort keys, includes), the dialect and the custom SearchParameters in force;
# - the compiler reads a search value only through ``_unit``, which calls a type module's condition on it; a cached
#   statement is used only when each value's condition renders to the same node type and text as when the statement
#   was learnt. So a value field that changes the SQL (a date prefix, a token's system, a blinded hash, or a field
#   added later) gives another variant of the shape rather than a wrong statement, without being listed here;
# - the literals of the call (page size, offset, cursor values, the compartment's id, included rids) are marked
#   while tracing (``_lit``) and filled in from the call; their presence (``None``, an offset of 0) is in the key.
# A statement is learnt only when filling its parameter list back in reproduces the traced one exactly; otherwise
# its shape or variant is remembered as not cacheable and compiled every time, as before.

# bounds (least recently used shapes dropped first): a learnt statement holds its SQL text, a few kB at most
MAX_SHAPES = 2048  # statement shapes
MAX_VARIANTS = 32  # value condition variants of one shape (prefixes, with or without a system...)
MAX_STATEMENTS = 4096  # learnt statements, all shapes together
_LIMIT, _OFFSET, _COMPARTMENT, _AFTER = 0, 1, 2, 3  # literal slots of a search's statements


class _Marked:
    """A literal of the call, marked while tracing with its slot among the statement's literals.

    It may only be bound as a parameter: formatting or comparing it raises, and the statement is then compiled
    untraced, so a literal that would shape the SQL text can never be cached as if it did not.
    """

    __slots__ = ("value", "slot")

    def __init__(self, value: Any, slot: int) -> None:
        self.value = value
        self.slot = slot

    def __bool__(self) -> bool:
        # an offset of 0 renders no OFFSET: the key holds whether it is 0
        return bool(self.value)

    def __eq__(self, other: object) -> bool:
        raise TypeError("a marked literal cannot be compared")

    __hash__ = None  # type: ignore[assignment]

    def __format__(self, spec: str) -> str:
        raise TypeError("a marked literal cannot be formatted into SQL text")

    def __str__(self) -> str:
        raise TypeError("a marked literal cannot be formatted into SQL text")

    def __repr__(self) -> str:
        return f"_Marked({self.value!r}, slot={self.slot})"


ValuePath = tuple[int, ...]  # (clause, value) or (clause, value, composite part)
UnitCall = tuple[ValuePath, Callable[..., Expr], tuple[Any, ...]]


class _Trace:
    """What building one statement did with the search's values: which condition of which value, owning which nodes."""

    __slots__ = ("paths", "calls", "exprs", "owners", "ok", "ambiguous")

    def __init__(self, q: SearchQuery | None) -> None:
        self.paths = _value_paths(q)
        self.calls: list[UnitCall] = []
        self.exprs: list[Expr] = []  # kept alive: ``owners`` is keyed by id()
        self.owners: dict[int, int] = {}
        self.ok = True  # False: this shape cannot be cached
        self.ambiguous = False  # True: this query cannot teach its shape (one value object at two places)

    def unit(self, fn: Callable[..., Expr], value: Any, args: tuple[Any, ...], expr: Expr) -> None:
        """Note that ``expr`` is ``fn(value, *args)``, owning the parameters bound under its nodes."""
        path = self.paths.get(id(value))
        if path is None:
            if id(value) in self.paths:
                self.ambiguous = True  # the same parsed clause twice (parse memoises): another query can teach it
            else:
                self.ok = False  # not a value of the query: the compiler reads something the cache cannot replay
            return
        u = len(self.calls)
        self.calls.append((path, fn, args))
        self.exprs.append(expr)
        for node in _nodes(expr):
            if self.owners.setdefault(id(node), u) != u:
                self.ok = False  # a node shared by two values' conditions


_TRACE: ContextVar[_Trace | None] = ContextVar("salus_search_trace", default=None)
_SILENT = (Col, Unindexed, Const, Star, CountOver)  # nodes that never bind a parameter (may be shared)


def _nodes(root: Any) -> list[Any]:
    """Every SQL node of the tree ``root`` that can bind a parameter."""
    out: list[Any] = []
    stack = [root]
    while stack:
        n = stack.pop()
        if type(n) is tuple:
            stack.extend(n)
            continue
        names = getattr(type(n), "__dataclass_fields__", None)
        if names is None or isinstance(n, _SILENT):
            continue
        out.append(n)
        stack.extend(getattr(n, name) for name in names)
    return out


def _value_paths(q: SearchQuery | None) -> dict[int, ValuePath | None]:
    """Where each value object of ``q`` sits (None: at more than one place)."""
    paths: dict[int, ValuePath | None] = {}
    if q is None:
        return paths

    def claim(v: Any, path: ValuePath) -> None:
        paths[id(v)] = None if id(v) in paths else path

    for k, c in enumerate(q.clauses):
        for j, v in enumerate(c.values):
            claim(v, (k, j))
            if isinstance(v, CompositeValue):
                for n, part in enumerate(v.parts):
                    claim(part, (k, j, n))
    return paths


def _value_at(q: SearchQuery | None, path: ValuePath) -> Any:
    assert q is not None
    v = q.clauses[path[0]].values[path[1]]
    if len(path) == 3:
        assert isinstance(v, CompositeValue)
        return v.parts[path[2]]
    return v


def _unit(fn: Callable[..., Expr], value: Any, *args: Any) -> Expr:
    """``fn(value, *args)``: the only way the compiler may turn a search value into SQL (see the statement cache)."""
    expr = fn(value, *args)
    t = _TRACE.get()
    if t is not None:
        t.unit(fn, value, args, expr)
    return expr


def _code_param(value: TokenValue) -> Expr:
    """The bound id of an ``_id`` or ``_list`` value."""
    return Param(value.code)


def _lit(value: Any, slot: int) -> Any:
    """A literal of the call, marked while tracing so that its parameter is filled from the call later."""
    return value if _TRACE.get() is None else _Marked(value, slot)


class Where(Deferred):
    """``where(q, compartment)``, built only if a statement made of it is not in the cache (then once)."""

    __slots__ = ("query", "compartment", "_tree")

    def __init__(self, query: SearchQuery, compartment: tuple[str, str] | None) -> None:
        self.query = query
        self.compartment = compartment
        self._tree: Expr | None = None

    def build(self) -> Expr:
        """The filter's tree."""
        if self._tree is None:
            self._tree = _where_tree(self.query, self.compartment)
        return self._tree


def _filter(where: Where) -> Expr:
    """The filter's tree for a statement: built afresh while tracing (the compartment's id marked), else shared."""
    if _TRACE.get() is None:
        return where.build()
    return _where_tree(where.query, _marked_compartment(where.compartment))


def _built(e: Expr) -> Expr:
    return e.build() if isinstance(e, Deferred) else e


def _value_shape(v: Any) -> Any:
    """What of a value the compiler reads itself (the rest goes through ``_unit`` and is checked there)."""
    t = type(v)
    if t is Missing:
        return v
    if t is CompositeValue:
        return t, tuple(type(p) for p in v.parts)
    return t


def _query_shape(q: SearchQuery) -> Hashable:
    return q.resource_types, tuple(
        [(c.resource_types, c.param, c.modifier, c.chain, tuple([_value_shape(v) for v in c.values])) for c in q.clauses]
    )


def _marked_compartment(compartment: tuple[str, str] | None) -> tuple[str, str] | None:
    return None if compartment is None else (compartment[0], _lit(compartment[1], _COMPARTMENT))


class Statement:
    """A statement whose SQL text is cached by shape: ``build`` only runs for a shape (or variant) not seen yet."""

    __slots__ = ()

    def search(self) -> SearchQuery | None:
        """The query whose values the statement binds (through ``_unit``), if any."""
        return None

    def shape(self) -> Hashable:
        """Everything but the literals that the SQL text depends on (the value conditions are checked apart)."""
        raise NotImplementedError

    def literals(self) -> list[Any]:
        """The call's literals, by slot."""
        raise NotImplementedError

    def build(self) -> Select:
        """The statement's tree, the call's literals marked with ``_lit``."""
        raise NotImplementedError

    def to_sql(self, dialect: str) -> tuple[str, list[Any]]:
        """The SQL text and its parameters."""
        return _statement_sql(self, dialect)


class PageStatement(Statement):
    """``page_select`` of a ``where``."""

    __slots__ = ("where", "q", "compartment", "limit", "offset", "after", "with_total")

    def __init__(
        self, where: Where, limit: int | None, offset: int, after: tuple[Any, ...] | None, with_total: bool
    ) -> None:
        self.where, self.q, self.compartment = where, where.query, where.compartment
        self.limit, self.offset, self.after, self.with_total = limit, offset, after, with_total

    def search(self) -> SearchQuery:
        """The query."""
        return self.q

    def shape(self) -> Hashable:
        """Query, sort, compartment type, total, and which literals are present."""
        after = None if self.after is None else tuple([v is None for v in self.after])
        ctype = None if self.compartment is None else self.compartment[0]
        return ("page", _query_shape(self.q), tuple(self.q.sort), ctype, self.with_total,
                self.limit is None, bool(self.offset), after)

    def literals(self) -> list[Any]:
        """Page size, offset, compartment id, cursor values."""
        return [self.limit, self.offset, self.compartment and self.compartment[1], *(self.after or ())]

    def build(self) -> Select:
        """The page's tree."""
        q = self.q
        after = None if self.after is None else tuple(
            None if v is None else _lit(v, _AFTER + k) for k, v in enumerate(self.after)
        )
        limit = None if self.limit is None else _lit(self.limit, _LIMIT)
        return _page_tree(q, _filter(self.where), limit, _lit(self.offset, _OFFSET), after, self.with_total)


class CountStatement(Statement):
    """``count_select`` of a ``where``."""

    __slots__ = ("where", "q", "compartment")

    def __init__(self, where: Where) -> None:
        self.where, self.q, self.compartment = where, where.query, where.compartment

    def search(self) -> SearchQuery:
        """The query."""
        return self.q

    def shape(self) -> Hashable:
        """Query and compartment type."""
        return "count", _query_shape(self.q), None if self.compartment is None else self.compartment[0]

    def literals(self) -> list[Any]:
        """The compartment id."""
        return [None, None, self.compartment and self.compartment[1]]

    def build(self) -> Select:
        """The count's tree."""
        return _count_tree(_filter(self.where))


class IdsStatement(Statement):
    """``ids_select`` of a ``where``."""

    __slots__ = ("where", "q", "compartment", "limit")

    def __init__(self, where: Where, limit: int) -> None:
        self.where, self.q, self.compartment, self.limit = where, where.query, where.compartment, limit

    def search(self) -> SearchQuery:
        """The query."""
        return self.q

    def shape(self) -> Hashable:
        """Query, sort and compartment type."""
        ctype = None if self.compartment is None else self.compartment[0]
        return "ids", _query_shape(self.q), tuple(self.q.sort), ctype, self.limit is None

    def literals(self) -> list[Any]:
        """The limit and compartment id."""
        return [self.limit, None, self.compartment and self.compartment[1]]

    def build(self) -> Select:
        """The tree."""
        limit = None if self.limit is None else _lit(self.limit, _LIMIT)
        return _ids_tree(self.q, _filter(self.where), limit)


class IncludeStatement(Statement):
    """``include_select``: the include and the number of rids shape it."""

    __slots__ = ("inc", "rids")

    def __init__(self, inc: Include, rids: list[int]) -> None:
        self.inc, self.rids = inc, rids

    def shape(self) -> Hashable:
        """The include and how many rids."""
        return "include", self.inc, len(self.rids)

    def literals(self) -> list[Any]:
        """The rids."""
        return list(self.rids)

    def build(self) -> Select:
        """The tree."""
        return _include_tree(self.inc, [_lit(x, k) for k, x in enumerate(self.rids)])


class RevIncludeStatement(Statement):
    """``revinclude_select``: the include and how many ids of each target type shape it."""

    __slots__ = ("inc", "by_type")

    def __init__(self, inc: Include, by_type: dict[str, list[str]]) -> None:
        self.inc, self.by_type = inc, by_type

    def shape(self) -> Hashable:
        """The include and how many ids of which types."""
        return "revinclude", self.inc, tuple([(t, len(ids)) for t, ids in self.by_type.items()])

    def literals(self) -> list[Any]:
        """The ids, type after type."""
        return [x for ids in self.by_type.values() for x in ids]

    def build(self) -> Select:
        """The tree."""
        marked: dict[str, list[Any]] = {}
        k = 0
        for t, ids in self.by_type.items():
            marked[t] = [_lit(x, k + n) for n, x in enumerate(ids)]
            k += len(ids)
        return _revinclude_tree(self.inc, marked)


class _Template:
    """A learnt statement: its text, and its parameters as constants and slots filled from the inputs."""

    __slots__ = ("sql", "consts", "slots")

    def __init__(self, sql: str, consts: list[Any], slots: tuple[tuple[int, int], ...]) -> None:
        self.sql, self.consts, self.slots = sql, consts, slots

    def params(self, inputs: list[Any]) -> list[Any]:
        """The parameter list for ``inputs`` (the literals, then each value condition's parameters)."""
        out = self.consts.copy()
        for pos, k in self.slots:
            out[pos] = inputs[k]
        return out


Signature = tuple[tuple[type, str], ...]  # node type and text of each value condition


class _Shape:
    """One statement shape: the value conditions its build calls (None: not cacheable), and its learnt variants."""

    __slots__ = ("calls", "variants")

    def __init__(self, calls: tuple[UnitCall, ...] | None) -> None:
        self.calls = calls
        self.variants: dict[Signature, _Template | None] = {}  # None: that variant is not cacheable


_SHAPES: OrderedDict[Hashable, _Shape] = OrderedDict()
_LOCK = threading.Lock()
_STATS = {"hits": 0, "misses": 0, "uncached": 0}
_HELD = [0]  # learnt statements in _SHAPES


def statement_cache_info() -> dict[str, int]:
    """Hits, misses (statements learnt or found not cacheable), uncached renders, and shapes held."""
    return {**_STATS, "shapes": len(_SHAPES)}


def clear_statement_cache() -> None:
    """Forget every learnt statement (tests)."""
    with _LOCK:
        _SHAPES.clear()
        _HELD[0] = 0
        for k in _STATS:
            _STATS[k] = 0


def _evict() -> None:
    """Drop least recently used shapes past the bounds, but never the last one (under ``_LOCK``)."""
    while len(_SHAPES) > 1 and (len(_SHAPES) > MAX_SHAPES or _HELD[0] > MAX_STATEMENTS):
        _, gone = _SHAPES.popitem(last=False)
        _HELD[0] -= len(gone.variants)


def _conditions(st: Statement, calls: tuple[UnitCall, ...], dialect: str, inputs: list[Any]) -> tuple[Signature, list[int]]:
    """Render each value condition of ``calls`` for this statement's values, appending their parameters to ``inputs``.

    Returns the signature and, per condition, the index in ``inputs`` of its first parameter.
    """
    q = st.search()
    sig: list[tuple[type, str]] = []
    starts: list[int] = []
    for path, fn, args in calls:
        expr = fn(_value_at(q, path), *args)
        text, ps = render(expr, dialect)
        sig.append((type(expr), text))
        starts.append(len(inputs))
        inputs += ps
    return tuple(sig), starts


def _statement_sql(st: Statement, dialect: str) -> tuple[str, list[Any]]:
    """The statement's SQL from the cache, or learnt (and cached when it can be) for the next time."""
    key = (dialect, current(), st.shape())
    with _LOCK:
        shape = _SHAPES.get(key)
        if shape is not None:
            _SHAPES.move_to_end(key)
    if shape is not None:
        calls = shape.calls
        if calls is None:
            _STATS["uncached"] += 1
            return render(st.build(), dialect)
        inputs = st.literals()
        sig, _ = _conditions(st, calls, dialect, inputs)
        if sig in shape.variants:
            template = shape.variants[sig]
            if template is None:
                _STATS["uncached"] += 1
                return render(st.build(), dialect)
            _STATS["hits"] += 1
            return template.sql, template.params(inputs)
        if len(shape.variants) >= MAX_VARIANTS:
            _STATS["uncached"] += 1  # a shape of many variants: learning each would cost more than it saves
            return render(st.build(), dialect)
    _STATS["misses"] += 1
    return _learn(st, dialect, key)


def _learn(st: Statement, dialect: str, key: Hashable) -> tuple[str, list[Any]]:
    """Build and render ``st`` while tracing; remember the result for its shape when it checks out."""
    t = _Trace(st.search())
    token = _TRACE.set(t)
    node: Select | None
    try:
        node = st.build()
    except Exception:
        node = None
    finally:
        _TRACE.reset(token)
    traced: list[Any] = []
    origins: dict[int, int] = {}
    if node is not None:
        try:
            sql, traced, origins = trace(node, dialect, t.owners)
        except Exception:
            node = None
    calls: tuple[UnitCall, ...] | None = None
    learnt = None
    if node is None:
        # a marked literal refused to be formatted or compared (or the query is invalid: raised here again)
        sql, params = render(st.build(), dialect)
    else:
        params = [p.value if type(p) is _Marked else p for p in traced]
        if t.ambiguous:
            return sql, params
        if t.ok:
            calls = tuple(t.calls)
            learnt = _template(st, dialect, calls, sql, traced, origins, params)
    with _LOCK:
        shape = _SHAPES.get(key)
        if shape is None:
            shape = _SHAPES[key] = _Shape(calls)
        else:
            _SHAPES.move_to_end(key)
            if shape.calls != calls:
                shape.calls = None  # the shape does not decide which conditions are built: never cache it
                _HELD[0] -= len(shape.variants)
                shape.variants.clear()
        if shape.calls is not None and learnt is not None and len(shape.variants) < MAX_VARIANTS:
            _HELD[0] += learnt[0] not in shape.variants
            shape.variants[learnt[0]] = learnt[1]
        _evict()
    return sql, params


def _template(
    st: Statement, dialect: str, calls: tuple[UnitCall, ...], sql: str, traced: list[Any], origins: dict[int, int],
    params: list[Any],
) -> tuple[Signature, _Template | None] | None:
    """The signature and template of a traced statement; a None template if filling it in does not give ``params``."""
    inputs = st.literals()
    try:
        sig, starts = _conditions(st, calls, dialect, inputs)
    except Exception:
        return None
    ends = [*starts[1:], len(inputs)] if starts else []
    seen = list(starts)
    consts: list[Any] = []
    slots: list[tuple[int, int]] = []
    for pos, p in enumerate(traced):
        u = origins.get(pos)
        if type(p) is _Marked:
            slots.append((pos, p.slot))
            consts.append(None)
        elif u is not None:
            if seen[u] >= ends[u]:
                return sig, None  # bound more often than its condition binds alone
            slots.append((pos, seen[u]))
            seen[u] += 1
            consts.append(None)
        else:
            consts.append(p)
    if seen != ends:
        return sig, None
    template = _Template(sql, consts, tuple(slots))
    try:
        same = template.params(inputs) == params
    except Exception:
        same = False
    return sig, template if same else None
