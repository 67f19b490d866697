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
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from salus.fhir.definitions import r4, resource_types
from salus.fhir.outcome import FhirError
from salus.search.parse import MODULES
from salus.search.sql import (
    Alias,
    Cmp,
    Col,
    Const,
    CountOver,
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
)
from salus.search.tree import Clause, CompositeValue, Include, Missing, SearchQuery, SortKey
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
        ids = tuple(Param(v.code) for v in c.values)  # type: ignore[union-attr]
        return InList(Col("res_id", alias), ids, negated=c.modifier == "not")
    if p.code == "_list":
        if isinstance(first, Missing):
            raise FhirError.of(400, "invalid", "':missing' does not apply to '_list'")
        return _list_expr(c, alias, depth)
    if p.code == "_lastUpdated":
        if isinstance(first, Missing):
            return Const(not first.missing)
        col = Col("last_updated", alias)
        return or_(*(date.condition_on(v, col, col) for v in c.values))  # type: ignore[arg-type]
    i = f"i{depth}"
    if p.type == "composite":
        return _composite_expr(c, alias, depth, correlated)
    module = MODULES[p.type]
    base = [*_types_filter(c.resource_types, i), eq("param", p.code, i)]
    if isinstance(first, Missing):
        sub = Select((Col("rid", i),), Table(module.TABLE, i), where=and_(*base))
        return _semi(alias, sub, negated=first.missing, correlated=correlated)
    mod = None if c.modifier == "not" else c.modifier
    values = or_(*(module.condition(v, mod, i) for v in c.values))
    sub = Select((Col("rid", i),), Table(module.TABLE, i), where=and_(*base, values))
    return _semi(alias, sub, negated=c.modifier == "not", correlated=correlated)


def _list_expr(c: Clause, alias: str, depth: int) -> Expr:
    """Resources named by ``List.entry.item`` of the given (current) Lists."""
    i, lst = f"li{depth}", f"lr{depth}"
    lists = Select(
        (Col("rid", lst),), Table("resources", lst),
        where=and_(eq("res_type", "List", lst), InList(Col("res_id", lst), tuple(Param(v.code) for v in c.values)),  # type: ignore[union-attr]
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
            mine = [eq("param", component_param(p.code, k), a), module.condition(part, None, a)]
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
    """The whole filter on ``r``: not deleted, of the searched types, every clause, the compartment."""
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
) -> Select:
    """One page of matches with their current bodies, then each row's sort key values (for the next cursor).

    ``after`` is the sort key values of the previous page's last row: the page starts
    right after it (keyset paging), so rows written or deleted meanwhile never make a
    page repeat or skip a match, as an offset would.

    ``with_total`` adds a last column, the number of matches, counted in the same
    statement: the page is cut from the matches' keys (``COUNT(*) OVER ()`` is taken
    before the LIMIT) and only the page's rows are joined to their bodies, so a
    full first page costs one evaluation of the filter, not a second one to count.
    It does not combine with ``after`` (the filter then holds only later rows).
    """
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


def count_select(filt: Expr) -> Select:
    """How many resources match."""
    return Select((Func("COUNT", (Star(),)),), RESOURCES, where=filt)


def rids_select(filt: Expr) -> Select:
    """The matches' rids, unordered (what the planner's row estimate is read from)."""
    return Select((Col("rid", R),), RESOURCES, where=filt)


def ids_select(q: SearchQuery, filt: Expr, limit: int) -> Select:
    """``(res_id, version)`` of the first matches (conditional interactions)."""
    return Select((Col("res_id", R), Col("version", R)), RESOURCES, where=filt, order_by=order_by(q), limit=limit)


def include_select(inc: Include, rids: list[int]) -> Select:
    """Resources that the page's resources (``rids``) refer to through ``inc.param``."""
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


def revinclude_select(inc: Include, matches: list[tuple[str, str]]) -> Select:
    """Resources of ``inc.source_type`` that refer to any of ``matches`` (type, id) through ``inc.param``."""
    i = "i"
    by_type: dict[str, list[str]] = {}
    for typ, rid in matches:
        if inc.target_type is None or inc.target_type == typ:
            by_type.setdefault(typ, []).append(rid)
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


def to_sql(node: Select, dialect: str) -> tuple[str, list[Any]]:
    """Render for the store's dialect."""
    return render(node, dialect)
