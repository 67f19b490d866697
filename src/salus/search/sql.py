"""A tiny typed SQL tree and one generator per dialect (after sqlglot).

The search compiler builds these nodes and never concatenates SQL text itself;
``render`` turns a tree into ``(sql, params)`` for 'sqlite' or 'postgresql'.
Nodes are plain (not frozen) slotted dataclasses: a search builds some forty of them, and
a frozen dataclass costs three times as much to construct. Treat them as immutable all the same.
Every value is a ``Param`` and becomes a ``?`` placeholder (the PostgreSQL
store translates ``?`` itself). Table and column names only ever come from our
own code (the schema), never from a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DIALECTS = ("sqlite", "postgresql")


class Expr:
    """Base of every SQL expression node."""

    __slots__ = ()


class Deferred(Expr):
    """An expression built only when it is rendered.

    The search compiler returns a search's filter this way: most statements are
    answered from the statement cache (``salus.search.compile``) without ever
    building it, and any other use renders what ``build`` gives.
    """

    __slots__ = ()

    def build(self) -> Expr:
        """The expression this stands for."""
        raise NotImplementedError


@dataclass(slots=True)
class Col(Expr):
    """A column, optionally qualified by a table alias."""

    name: str
    table: str | None = None


@dataclass(slots=True)
class Param(Expr):
    """A bound value: always a placeholder, never inlined."""

    value: Any


@dataclass(slots=True)
class Const(Expr):
    """A constant truth value (an empty OR is false, an empty AND true)."""

    value: bool


@dataclass(slots=True)
class Cmp(Expr):
    """A binary comparison."""

    left: Expr
    op: str
    right: Expr

    def __post_init__(self) -> None:
        if self.op not in ("=", "<>", "<", "<=", ">", ">="):
            raise ValueError(f"unsupported operator {self.op!r}")


@dataclass(slots=True)
class Unindexed(Expr):
    """A column the planner should not drive the query with.

    SQLite's planner has no statistics and prefers ``resources(res_type)`` over
    a selective ``rid IN (sub-select)``, scanning every resource of the type;
    ``+col`` (a no-op) makes it drive from the index tables instead.
    PostgreSQL plans by cost, so the column is rendered plainly.
    """

    column: Col


@dataclass(slots=True)
class And(Expr):
    """Conjunction (true when empty)."""

    items: tuple[Expr, ...]


@dataclass(slots=True)
class Or(Expr):
    """Disjunction (false when empty)."""

    items: tuple[Expr, ...]


@dataclass(slots=True)
class Not(Expr):
    """Negation."""

    item: Expr


@dataclass(slots=True)
class IsNull(Expr):
    """``x IS NULL`` (or ``IS NOT NULL`` when negated)."""

    item: Expr
    negated: bool = False


@dataclass(slots=True)
class InList(Expr):
    """``x IN (v1, v2, ...)``; false when the list is empty."""

    left: Expr
    values: tuple[Expr, ...]
    negated: bool = False


@dataclass(slots=True)
class Row(Expr):
    """A row value ``(a, b)``, compared as a whole (``(type, id) IN (SELECT ...)``)."""

    items: tuple[Expr, ...]


@dataclass(slots=True)
class InQuery(Expr):
    """``x IN (SELECT ...)`` (a semi-join both engines plan well)."""

    left: Expr
    query: Select
    negated: bool = False


@dataclass(slots=True)
class Exists(Expr):
    """``EXISTS (SELECT ...)``."""

    query: Select


@dataclass(slots=True)
class Like(Expr):
    """``x LIKE pattern ESCAPE '\\'``; build patterns with ``like_escape``."""

    left: Expr
    pattern: Expr


@dataclass(slots=True)
class StartsWith(Expr):
    """``x`` starts with the text ``prefix``, as a btree-friendly range ``x >= p AND x < succ(p)``.

    SQLite compares text by code point (BINARY), so the range alone is exact; on
    PostgreSQL the database collation decides the order, so a ``LIKE 'p%'`` guard
    is added that keeps the result exact under any collation.
    """

    left: Expr
    prefix: str


@dataclass(slots=True)
class Func(Expr):
    """A function call from a small portable set."""

    name: str
    args: tuple[Expr, ...]

    def __post_init__(self) -> None:
        if self.name not in ("COUNT", "MIN", "MAX", "LOWER"):
            raise ValueError(f"unsupported function {self.name!r}")


@dataclass(slots=True)
class Star(Expr):
    """``*`` inside ``COUNT(*)``."""


@dataclass(slots=True)
class Scalar(Expr):
    """A scalar subquery used as a value (sort keys)."""

    query: Select


@dataclass(slots=True)
class CountOver(Expr):
    """``COUNT(*) OVER ()``: how many rows the WHERE kept, on every row, before ORDER BY and LIMIT."""


@dataclass(slots=True)
class Alias(Expr):
    """``expr AS name``: a column of a derived table that an outer query refers to by name."""

    expr: Expr
    name: str


@dataclass(slots=True)
class Table:
    """A table reference with an alias.

    ``by_rid`` pins SQLite to the table's ``rid`` index (``INDEXED BY``): a
    correlated probe for one resource's rows must seek by rid, and without
    statistics SQLite prefers an index matching more ``=`` terms, such as
    every row of a code. PostgreSQL plans by cost and ignores it.
    """

    name: str
    alias: str
    by_rid: bool = False


@dataclass(slots=True)
class Derived:
    """A sub-select used as a table: ``(SELECT ...) alias``."""

    query: Select
    alias: str


@dataclass(slots=True)
class Join:
    """An inner join."""

    table: Table
    on: Expr


@dataclass(slots=True)
class Order:
    """An ORDER BY key; missing values always sort last, in both dialects."""

    expr: Expr
    descending: bool = False


@dataclass(slots=True)
class Select:
    """A SELECT statement."""

    columns: tuple[Expr, ...]
    table: Table | Derived
    joins: tuple[Join, ...] = ()
    where: Expr | None = None
    order_by: tuple[Order, ...] = ()
    limit: int | None = None
    offset: int | None = None
    distinct: bool = False


def and_(*items: Expr) -> Expr:
    """A conjunction, flattened; a single item is returned as is."""
    flat: list[Expr] = []
    for i in items:
        if isinstance(i, And):
            flat.extend(i.items)
        elif not (isinstance(i, Const) and i.value):
            flat.append(i)
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def or_(*items: Expr) -> Expr:
    """A disjunction, flattened; a single item is returned as is."""
    flat: list[Expr] = []
    for i in items:
        if isinstance(i, Or):
            flat.extend(i.items)
        else:
            flat.append(i)
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


def eq(column: str, value: Any, table: str | None = None) -> Cmp:
    """``table.column = ?``."""
    return Cmp(Col(column, table), "=", Param(value))


def like_escape(text: str) -> str:
    """Escape LIKE wildcards so ``text`` matches literally (with ``ESCAPE '\\'``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def successor(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix`` (code point order)."""
    # drop trailing max code points: nothing can follow them at that position
    p = prefix.rstrip("\U0010ffff")
    if not p:
        return "\U0010ffff" * (len(prefix) + 1)
    return p[:-1] + chr(ord(p[-1]) + 1)


class _Out:
    """The text pieces and parameters rendered so far (a plain slotted class: one is made per render)."""

    __slots__ = ("parts", "params")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list[Any] = []


class Generator:
    """Renders a tree for one dialect; subclasses override what differs."""

    dialect = "sqlite"

    def render(self, node: Select | Expr) -> tuple[str, list[Any]]:
        """The SQL text with ``?`` placeholders and its parameters in order."""
        out = _Out()
        if isinstance(node, Select):
            self._select(node, out)
        else:
            self._expr(node, out)
        return "".join(out.parts), out.params

    def _select(self, s: Select, out: _Out) -> None:
        w = out.parts.append
        w("SELECT DISTINCT " if s.distinct else "SELECT ")
        for i, c in enumerate(s.columns):
            if i:
                w(", ")
            self._expr(c, out)
        w(" FROM ")
        self._table(s.table, out)
        for j in s.joins:
            w(" JOIN ")
            self._table(j.table, out)
            w(" ON ")
            self._expr(j.on, out)
        if s.where is not None:
            w(" WHERE ")
            self._expr(s.where, out)
        if s.order_by:
            w(" ORDER BY ")
            for i, o in enumerate(s.order_by):
                if i:
                    w(", ")
                self._order(o, out)
        if s.limit is not None:
            w(" LIMIT ?")
            out.params.append(s.limit)
        if s.offset:
            if s.limit is None:
                w(" LIMIT -1" if self.dialect == "sqlite" else " LIMIT ALL")
            w(" OFFSET ?")
            out.params.append(s.offset)

    def _table(self, t: Table | Derived, out: _Out) -> None:
        if isinstance(t, Derived):
            self._sub("(", t.query, out)
            out.parts.append(f" {t.alias}")
            return
        out.parts.append(f"{t.name} {t.alias}")
        if t.by_rid and self.dialect == "sqlite":
            out.parts.append(f" INDEXED BY {t.name}_rid")

    def _order(self, o: Order, out: _Out) -> None:
        self._expr(o.expr, out)
        # NULLS LAST is spelled the same in SQLite >= 3.30 and PostgreSQL
        out.parts.append(" DESC NULLS LAST" if o.descending else " ASC NULLS LAST")

    def _expr(self, e: Expr, out: _Out) -> None:
        # one dict lookup per node instead of a chain of isinstance tests: rendering is a
        # visible share of a 60 us search
        try:
            render = self._renderers[type(e)]
        except KeyError:
            if isinstance(e, Deferred):
                self._expr(e.build(), out)
                return
            # a new node without a renderer is a programming error
            raise TypeError(f"cannot render {type(e).__name__}") from None
        render(self, e, out)

    def _col(self, e: Col, out: _Out) -> None:
        out.parts.append(f"{e.table}.{e.name}" if e.table else e.name)

    def _unindexed(self, e: Unindexed, out: _Out) -> None:
        if self.dialect == "sqlite":
            out.parts.append("+")
        self._col(e.column, out)

    def _param(self, e: Param, out: _Out) -> None:
        out.parts.append("?")
        out.params.append(e.value)

    def _const(self, e: Const, out: _Out) -> None:
        out.parts.append("1 = 1" if e.value else "1 = 0")

    def _cmp(self, e: Cmp, out: _Out) -> None:
        # column = value is most of what a search renders: its two leaves are written here, not dispatched
        left, right = e.left, e.right
        if type(left) is Col:
            out.parts.append(f"{left.table}.{left.name} {e.op} " if left.table else f"{left.name} {e.op} ")
        else:
            self._expr(left, out)
            out.parts.append(f" {e.op} ")
        if type(right) is Param:
            out.parts.append("?")
            out.params.append(right.value)
        else:
            self._expr(right, out)

    def _list(self, items: tuple[Expr, ...], sep: str, out: _Out) -> None:
        w = out.parts.append
        w("(")
        for i, item in enumerate(items):
            if i:
                w(sep)
            self._expr(item, out)
        w(")")

    def _and(self, e: And, out: _Out) -> None:
        if e.items:
            self._list(e.items, " AND ", out)
        else:
            out.parts.append("1 = 1")

    def _or(self, e: Or, out: _Out) -> None:
        if e.items:
            self._list(e.items, " OR ", out)
        else:
            out.parts.append("1 = 0")

    def _not(self, e: Not, out: _Out) -> None:
        out.parts.append("NOT (")
        self._expr(e.item, out)
        out.parts.append(")")

    def _is_null(self, e: IsNull, out: _Out) -> None:
        self._expr(e.item, out)
        out.parts.append(" IS NOT NULL" if e.negated else " IS NULL")

    def _in_list(self, e: InList, out: _Out) -> None:
        if not e.values:
            out.parts.append("1 = 1" if e.negated else "1 = 0")
            return
        self._expr(e.left, out)
        out.parts.append(" NOT IN " if e.negated else " IN ")
        self._list(e.values, ", ", out)

    def _row(self, e: Row, out: _Out) -> None:
        self._list(e.items, ", ", out)

    def _sub(self, prefix: str, query: Select, out: _Out) -> None:
        out.parts.append(prefix)
        self._select(query, out)
        out.parts.append(")")

    def _in_query(self, e: InQuery, out: _Out) -> None:
        self._expr(e.left, out)
        self._sub(" NOT IN (" if e.negated else " IN (", e.query, out)

    def _exists(self, e: Exists, out: _Out) -> None:
        self._sub("EXISTS (", e.query, out)

    def _scalar(self, e: Scalar, out: _Out) -> None:
        self._sub("(", e.query, out)

    def _like(self, e: Like, out: _Out) -> None:
        self._expr(e.left, out)
        out.parts.append(" LIKE ")
        self._expr(e.pattern, out)
        out.parts.append(" ESCAPE '\\'")

    def _func(self, e: Func, out: _Out) -> None:
        out.parts.append(e.name)
        self._list(e.args, ", ", out)

    def _star(self, e: Star, out: _Out) -> None:
        out.parts.append("*")

    def _count_over(self, e: CountOver, out: _Out) -> None:
        out.parts.append("COUNT(*) OVER ()")

    def _alias(self, e: Alias, out: _Out) -> None:
        self._expr(e.expr, out)
        out.parts.append(f" AS {e.name}")

    _renderers: dict[type, Any] = {
        Col: _col, Unindexed: _unindexed, Param: _param, Const: _const, Cmp: _cmp, And: _and, Or: _or,
        Not: _not, IsNull: _is_null, InList: _in_list, Row: _row, InQuery: _in_query, Exists: _exists,
        Scalar: _scalar, Like: _like, Func: _func, Star: _star, CountOver: _count_over, Alias: _alias,
        StartsWith: lambda self, e, out: self._starts_with(e, out),
    }

    def _starts_with(self, e: StartsWith, out: _Out) -> None:
        self._expr(and_(Cmp(e.left, ">=", Param(e.prefix)), Cmp(e.left, "<", Param(successor(e.prefix)))), out)


class PostgresGenerator(Generator):
    """PostgreSQL: the same SQL except where the collation matters."""

    dialect = "postgresql"

    def _starts_with(self, e: StartsWith, out: _Out) -> None:
        # the range keeps the btree index usable; LIKE makes it exact under non-C collations
        self._expr(
            and_(
                Cmp(e.left, ">=", Param(e.prefix)),
                Cmp(e.left, "<", Param(successor(e.prefix))),
                Like(e.left, Param(like_escape(e.prefix) + "%")),
            ),
            out,
        )


_GENERATORS: dict[str, Generator] = {"sqlite": Generator(), "postgresql": PostgresGenerator()}


class _TracedOut(_Out):
    """Also: owners of nodes by ``id()``, and the owner each parameter position was bound under."""

    __slots__ = ("owners", "origins")

    def __init__(self, owners: dict[int, int]) -> None:
        super().__init__()
        self.owners = owners
        self.origins: dict[int, int] = {}


class _Tracing(Generator):
    """Renders like its dialect's generator, and notes under which owned node each parameter was bound."""

    def _expr(self, e: Expr, out: _Out) -> None:
        assert isinstance(out, _TracedOut)
        owner = out.owners.get(id(e))
        start = len(out.params)
        super()._expr(e, out)
        if owner is not None:
            # an inner owned node has already claimed its own parameters
            for pos in range(start, len(out.params)):
                out.origins.setdefault(pos, owner)


class _PostgresTracing(_Tracing, PostgresGenerator):
    """PostgreSQL's generator, tracing."""


_TRACERS: dict[str, Generator] = {"sqlite": _Tracing(), "postgresql": _PostgresTracing()}


def render(node: Select | Expr, dialect: str) -> tuple[str, list[Any]]:
    """Render ``node`` for ``dialect`` ('sqlite' or 'postgresql')."""
    try:
        gen = _GENERATORS[dialect]
    except KeyError:
        raise ValueError(f"unknown SQL dialect {dialect!r}; expected one of {DIALECTS}") from None
    return gen.render(node)


def trace(node: Select | Expr, dialect: str, owners: dict[int, int]) -> tuple[str, list[Any], dict[int, int]]:
    """``render``, and for each parameter position the owner of the innermost owned node it was bound under.

    ``owners`` maps ``id()`` of nodes to owners. The statement cache of
    ``salus.search.compile`` learns from it which parameters a search value
    gave, so that a statement of the same shape is rendered once and reused.
    """
    try:
        gen = _TRACERS[dialect]
    except KeyError:
        raise ValueError(f"unknown SQL dialect {dialect!r}; expected one of {DIALECTS}") from None
    out = _TracedOut(owners=owners)
    if isinstance(node, Select):
        gen._select(node, out)
    else:
        gen._expr(node, out)
    return "".join(out.parts), out.params, out.origins
