"""Run a search against the store: parse, compile for its dialect, page, include.

``db`` is anything with ``dialect`` and ``query(sql, params)`` (the store, or
an open write transaction for conditional interactions). Paging is by offset
over a deterministic order (``_sort`` keys, then ``rid``); one extra row is
fetched to know whether a next page exists, and the total is counted only
when it cannot be known from the page itself.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from salus.fhir.outcome import FhirError, Issue
from salus.search import compile as c
from salus.search.blinding import blind_query
from salus.search.parse import parse_query
from salus.search.registry import pending_issue
from salus.search.tree import SearchQuery
from salus.search.valuesets import resolve_modifiers
from salus.store.base import opened
from salus.store.crypto import Crypto

DEFAULT_COUNT = 50
MAX_COUNT = 1000
# an _include over a page of MAX_COUNT can reach many resources; more than this is refused rather than slow
MAX_INCLUDED = 5000
# rounds of _include:iterate after the first; references rarely nest deeper (Observation -> Patient -> Organization)
MAX_ITERATE = 4

Entry = tuple[str, str, "bytes | str"]


class Queryable(Protocol):
    """What search needs of the store: its SQL dialect and a read query."""

    dialect: str
    crypto: Crypto | None  # encryption at rest: bodies sealed, identifying index values hashed

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query and return all rows."""
        ...


@dataclass
class SearchResult:
    """One page of a search: matches in order, included resources, and what the Bundle needs to say."""

    entries: list[Entry]
    included: list[Entry] = field(default_factory=list)
    total: int | None = None
    has_next: bool = False
    applied: list[tuple[str, str]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # left out: not indexed yet
    summary: str | None = None
    elements: list[str] | None = None
    next_cursor: str | None = None


def _sort_signature(q: SearchQuery) -> str:
    return ",".join(("-" if k.descending else "") + k.param.code for k in q.sort)


def encode_cursor(q: SearchQuery, row: tuple[Any, ...]) -> str:
    """An opaque token naming the last row of a page: its sort key values and rid, and the sort they belong to."""
    doc = {"s": _sort_signature(q), "k": [*row[5:], row[0]]}
    return base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")


def decode_cursor(q: SearchQuery, token: str) -> tuple[Any, ...]:
    """The sort key values a cursor names; 400 if it is damaged or belongs to another sort."""
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        keys = doc["k"]
        ok = doc["s"] == _sort_signature(q) and isinstance(keys, list) and len(keys) == len(q.sort) + 1
    except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        ok = False
    if not ok:
        raise FhirError.of(400, "invalid", "The paging cursor is not valid for this search (start again from the first page)")
    return tuple(keys)


def _run(db: Queryable, node: Any) -> list[tuple[Any, ...]]:
    sql, params = c.to_sql(node, db.dialect)
    return db.query(sql, params)


# below this many estimated matches an exact count is cheap enough to give instead
ESTIMATE_FLOOR = 10_000


def estimate_total(db: Queryable, filt: Any) -> int:
    """``_total=estimate``: PostgreSQL's planner estimate when it is large, else the exact count.

    Counting a broad search reads every match (hundreds of milliseconds at a
    few million resources) where the planner's estimate is free. SQLite keeps
    no estimate, so it counts.
    """
    if db.dialect == "postgresql":
        sql, params = c.to_sql(c.rids_select(filt), db.dialect)
        plan = db.query("EXPLAIN (FORMAT JSON) " + sql, params)[0][0]
        if isinstance(plan, str):
            plan = orjson.loads(plan)
        rows = int(plan[0]["Plan"]["Plan Rows"])
        if rows >= ESTIMATE_FLOOR:
            return rows
    return int(_run(db, c.count_select(filt))[0][0])


def _parsed(db: Queryable, resource_type: str | None, query: list[tuple[str, str]]) -> SearchQuery:
    """The query as the store's index can answer it: value sets expanded, identifying values hashed."""
    q = parse_query(resource_type, query)
    resolve_modifiers(db, q)
    if db.crypto is not None:
        blind_query(q, db.crypto)
    return q


def _entries(db: Queryable, rows: list[tuple[Any, ...]]) -> list[Entry]:
    """``(type, id, body)`` of result rows ``(rid, type, id, version, body, ...)``, bodies opened if sealed."""
    if db.crypto is None:
        return [(r[1], r[2], r[4]) for r in rows]
    return [(r[1], r[2], opened(db, r[1], r[2], r[3], r[4]) or "") for r in rows]


def _reject_unknown(q: SearchQuery) -> None:
    if q.unknown or q.pending:
        raise FhirError(
            400,
            [
                Issue("not-supported", f"Unknown or unsupported search parameter '{name}'", expression=name)
                for name in q.unknown
            ]
            + [pending_issue(name, strict=True) for name in q.pending],
        )


def run_search(
    db: Queryable,
    resource_type: str | None,
    query: list[tuple[str, str]],
    *,
    count: int | None = None,
    offset: int = 0,
    strict: bool = False,
    compartment: tuple[str, str] | None = None,
    count_only: bool = False,
    cursor: str | None = None,
) -> SearchResult:
    """Search ``resource_type`` (None: all types, ``_type`` narrows) with the URL's ``query`` pairs.

    ``count`` (else ``_count``, else 50, at most 1000) is the page size and
    ``offset`` where the page starts. ``strict`` rejects unknown parameters
    with 400 (``Prefer: handling=strict``); otherwise they are listed in
    ``unknown``. ``compartment=('Patient', id)`` restricts to that compartment.
    ``count_only`` (or ``_summary=count``, or a page size of 0) only counts.
    ``cursor`` (from a previous page's ``next_cursor``) starts the page right after that
    page's last row, which stays correct while resources are written meanwhile.
    """
    q = _parsed(db, resource_type, query)
    if strict:
        _reject_unknown(q)
    size = count if count is not None else q.count if q.count is not None else DEFAULT_COUNT
    size = max(0, min(size, MAX_COUNT))
    offset = max(0, min(offset, 10**12))  # past 64 bits SQLite cannot bind it; nothing is that far
    filt = c.where(q, compartment)
    result = SearchResult(
        [], applied=q.applied, unknown=q.unknown, pending=q.pending, summary=q.summary, elements=q.elements
    )
    if count_only or q.summary == "count" or size == 0:
        result.total = int(_run(db, c.count_select(filt))[0][0])
        return result
    after = decode_cursor(q, cursor) if cursor else None
    # an accurate total of a first page is counted by the page's own statement
    with_total = q.total in (None, "accurate") and after is None
    rows = _run(db, c.page_select(q, filt, size + 1, 0 if after else offset, after, with_total=with_total))
    counted = int(rows[0][-1]) if with_total and rows else None
    if with_total:
        rows = [r[:-1] for r in rows]
    result.has_next = len(rows) > size
    rows = rows[:size]
    if result.has_next:
        result.next_cursor = encode_cursor(q, rows[-1])
    result.entries = _entries(db, rows)
    if q.total != "none":
        if counted is not None:
            result.total = counted
        elif not result.has_next and not after and (rows or offset == 0):
            result.total = offset + len(rows)
        elif q.total == "estimate":
            result.total = estimate_total(db, filt)
        else:
            result.total = int(_run(db, c.count_select(filt))[0][0])
    if q.includes and rows:
        result.included = _included(db, q, rows)
    return result


def _included(db: Queryable, q: SearchQuery, rows: list[tuple[Any, ...]]) -> list[Entry]:
    """The resources ``_include``/``_revinclude`` add, once each, never repeating a match.

    The first round applies every include to the page's matches; each further
    round applies the ``:iterate`` ones to what the round before added, until
    nothing new comes (at most ``MAX_ITERATE`` rounds).
    """
    seen = {r[0] for r in rows}
    out: list[Entry] = []
    frontier = rows
    iterating = any(inc.iterate for inc in q.includes)
    for round_ in range(MAX_ITERATE + 1):
        new: list[tuple[Any, ...]] = []
        for inc in q.includes:
            if round_ and not inc.iterate:
                continue
            if inc.reverse:
                node = c.revinclude_select(inc, [(r[1], r[2]) for r in frontier])
            else:
                rids = [r[0] for r in frontier if r[1] == inc.source_type]
                if not rids:
                    continue
                node = c.include_select(inc, rids)
            for r in _run(db, node):
                if r[0] not in seen:
                    seen.add(r[0])
                    new.append(r)
        out += _entries(db, new)
        if len(out) > MAX_INCLUDED:
            raise FhirError.of(
                400,
                "too-costly",
                f"_include/_revinclude would add more than {MAX_INCLUDED} resources; use a smaller _count",
            )
        if not new or not iterating:
            break
        frontier = new
    return out


def match_ids(
    db: Queryable, resource_type: str, query: list[tuple[str, str]], limit: int = 2,
    compartment: tuple[str, str] | None = None,
) -> list[tuple[str, int]]:
    """``(res_id, version)`` of up to ``limit`` matches, for conditional create/update/delete.

    Always strict: ignoring an unknown parameter would widen the match and
    update or delete the wrong resources. ``compartment`` confines the matches
    (a caller confined to one patient's compartment matches only there).
    """
    q = _parsed(db, resource_type, query)
    _reject_unknown(q)
    rows = _run(db, c.ids_select(q, c.where(q, compartment), limit))
    return [(str(r[0]), int(r[1])) for r in rows]


def count_matches(
    db: Queryable, resource_type: str | None, query: list[tuple[str, str]], *, strict: bool = False
) -> int:
    """How many resources match (``_summary=count``)."""
    return run_search(db, resource_type, query, strict=strict, count_only=True).total or 0
