"""AuditEvent read and search over the audit trail: what an auditor asks of it through the FHIR API.

The trail (``salus.security.audit``) is where AuditEvents live: the server's own
events, and those other systems send (``POST AuditEvent``, kept as their JSON),
all in the one hash chain. It is not a resource table, so searching it is done
here: SQL narrows the rows by chain order (``seq``), by ``recorded`` (indexed)
for ``date`` and by ``event_id`` for ``_id``; every other parameter is tested
on the rendered event, the same AuditEvent a read returns. Newest first
(``_sort=-date``, the default) or oldest first (``_sort=date``); pages continue
from a cursor, the ``seq`` of the last entry of the page.

Supported (R4 AuditEvent search parameters): ``_id``, ``date``, ``patient``,
``agent``, ``entity``, ``action``, ``type``, ``subtype``, ``outcome``,
``agent-role``, ``entity-type``, ``entity-role``, ``policy``, ``address``,
``altid``, and ``:identifier`` on ``agent``, ``entity`` and ``patient`` (BALP names
users and clients by identifier); ``_count``, ``_sort``, ``_summary=count``.
Values separated by commas are alternatives, repeated parameters must all hold.
Other modifiers are refused (400);
other parameters are ignored with a warning, or refused under ``Prefer:
handling=strict``, as elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from salus.fhir.outcome import FhirError
from salus.search.engine import SearchResult
from salus.search.tree import ParamDef
from salus.search.types import date as date_type
from salus.search.types import invalid, split_unescaped, unescape
from salus.security.audit import ENTRY_COLUMNS, entry_events
from salus.store.base import Queryable

TYPE = "AuditEvent"
BATCH = 500  # rows read per statement while a page fills

Event = dict[str, Any]
Test = Callable[[Event, str], bool]


# ---- how each parameter reads an event --------------------------------------------------------


def _codings(value: Any) -> Iterator[dict[str, Any]]:
    """The Codings of a Coding, a CodeableConcept, or a list of either."""
    for v in value if isinstance(value, list) else [value]:
        if not isinstance(v, dict):
            continue
        if "coding" in v:
            yield from (c for c in v["coding"] if isinstance(c, dict))
        else:
            yield v


def _token(values: Callable[[Event], Iterator[Any]]) -> Test:
    """A token test: ``[system|]code`` against the Codings (or plain codes) ``values`` finds."""
    def test(event: Event, raw: str) -> bool:
        system, bar, code = raw.rpartition("|") if "|" in raw else ("", "", raw)
        for found in values(event):
            if isinstance(found, str):
                if not bar and found == code:
                    return True
                continue
            for c in _codings(found):
                if (not code or c.get("code") == code) and (not bar or (c.get("system") or "") == system):
                    return True
        return False
    return test


def _relative(reference: str) -> str:
    """``Type/id`` of a reference, without base URL or version."""
    ref = reference.split("/_history/")[0]
    parts = ref.rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else ref


def _reference(refs: Callable[[Event], Iterator[str]], default_type: str | None = None) -> Test:
    """A reference test: ``Type/id``, an absolute URL, or a bare id (of ``default_type``, or of any type)."""
    def test(event: Event, raw: str) -> bool:
        wanted = _relative(raw) if "/" in raw else raw
        for ref in refs(event):
            have = _relative(ref)
            if "/" in wanted:
                if have == wanted:
                    return True
            elif have.split("/")[-1] == wanted and (default_type is None or have.startswith(default_type + "/")):
                return True
        return False
    return test


def _agents(event: Event) -> list[dict[str, Any]]:
    return [a for a in event.get("agent") or [] if isinstance(a, dict)]


def _entities(event: Event) -> list[dict[str, Any]]:
    return [e for e in event.get("entity") or [] if isinstance(e, dict)]


def _ref_of(holder: Any) -> str | None:
    ref = holder.get("reference") if isinstance(holder, dict) else None
    return ref if isinstance(ref, str) else None


def _agent_refs(event: Event) -> Iterator[str]:
    return (r for a in _agents(event) if (r := _ref_of(a.get("who"))))


def _entity_refs(event: Event) -> Iterator[str]:
    return (r for e in _entities(event) if (r := _ref_of(e.get("what"))))


def _patient_refs(event: Event) -> Iterator[str]:
    # R4: agent.who or entity.what, where it is a Patient
    yield from (r for r in _agent_refs(event) if _relative(r).startswith("Patient/"))
    yield from (r for r in _entity_refs(event) if _relative(r).startswith("Patient/"))


def _address(event: Event, raw: str) -> bool:
    wanted = raw.lower()
    return any(
        isinstance(a.get("network"), dict) and str(a["network"].get("address", "")).lower().startswith(wanted)
        for a in _agents(event)
    )


def _policy(event: Event, raw: str) -> bool:
    return any(raw in (a.get("policy") or []) for a in _agents(event))


def _altid(event: Event, raw: str) -> bool:
    return any(a.get("altId") == raw for a in _agents(event))


def _identifiers(holders: Callable[[Event], Iterator[Any]]) -> Test:
    """``:identifier`` on a reference parameter: ``[system|]value`` against the Reference's identifier."""
    def test(event: Event, raw: str) -> bool:
        system, bar, value = raw.rpartition("|") if "|" in raw else ("", "", raw)
        for holder in holders(event):
            ident = holder.get("identifier") if isinstance(holder, dict) else None
            if isinstance(ident, dict) and ident.get("value") == value and (not bar or ident.get("system") == system):
                return True
        return False
    return test


def _has_id(event: Event, raw: str) -> bool:
    return event.get("id") == raw


TESTS: dict[str, Test] = {
    "patient": _reference(_patient_refs, "Patient"),
    "agent": _reference(_agent_refs),
    "entity": _reference(_entity_refs),
    "action": _token(lambda e: iter([e.get("action")])),
    "type": _token(lambda e: iter([e.get("type")])),
    "subtype": _token(lambda e: iter(e.get("subtype") or [])),
    "outcome": _token(lambda e: iter([e.get("outcome")])),
    "agent-role": _token(lambda e: (r for a in _agents(e) for r in a.get("role") or [])),
    "entity-type": _token(lambda e: (x.get("type") for x in _entities(e))),
    "entity-role": _token(lambda e: (x.get("role") for x in _entities(e))),
    "policy": _policy,
    "address": _address,
    "altid": _altid,
}
# reference parameters also searched by the identifier of the Reference (R4 ":identifier"): BALP names users
# and clients by identifier (urn:salus:user|alice), not by a reference
BY_IDENTIFIER: dict[str, Test] = {
    "agent": _identifiers(lambda e: (a.get("who") for a in _agents(e))),
    "entity": _identifiers(lambda e: (x.get("what") for x in _entities(e))),
    "patient": _identifiers(lambda e: (x.get("what") for x in _entities(e)
                                       if (x.get("type") or {}).get("code") == "1")),
}
RESULT_PARAMS = frozenset({"_count", "_sort", "_summary", "_total"})
SUPPORTED = frozenset({"_id", "date", *TESTS, *RESULT_PARAMS})
_DATE = ParamDef("date", "date")


# ---- the query -------------------------------------------------------------------------------


@dataclass
class TrailQuery:
    """A parsed search of the trail: SQL bounds, the tests each event must pass, and how to page."""

    ids: list[list[str]]  # each inner list: alternatives
    dates: list[list[date_type.DateValue]]
    tests: list[tuple[Test, list[str]]]
    newest_first: bool
    count_only: bool
    applied: list[tuple[str, str]]
    unknown: list[str]


def parse(query: list[tuple[str, str]], strict: bool) -> TrailQuery:
    """Parse an AuditEvent search; 400 for what the trail cannot answer (modifiers, unknown sorts)."""
    ids: list[list[str]] = []
    dates: list[list[date_type.DateValue]] = []
    tests: list[tuple[Test, list[str]]] = []
    newest_first, count_only = True, False
    applied: list[tuple[str, str]] = []
    unknown: list[str] = []
    for key, raw in query:
        name, _, modifier = key.partition(":")
        if name not in SUPPORTED:
            if strict:
                raise invalid(key, f"Unknown search parameter '{key}' for {TYPE} (the audit trail answers "
                                   f"{', '.join(sorted(SUPPORTED))})")
            unknown.append(key)
            continue
        if modifier and not (modifier == "identifier" and name in BY_IDENTIFIER):
            raise invalid(key, f"The modifier ':{modifier}' is not supported on {TYPE} searches", "not-supported")
        pieces = [v for v in split_unescaped(raw, ",") if v != ""]
        values = [unescape(v) for v in pieces]
        if not values:
            continue
        applied.append((key, raw))
        if name == "_id":  # narrowed in SQL to the entries, then the events of an entry by their own id
            ids.append([entry for v in values for entry in _entry_ids(v)])
            tests.append((_has_id, values))
        elif name == "date":
            dates.append([date_type.parse(v, None, _DATE) for v in pieces])
        elif name == "_sort":
            if values not in (["date"], ["-date"], ["_lastUpdated"], ["-_lastUpdated"]):
                raise invalid(key, f"{TYPE} searches sort by date only (_sort=date or _sort=-date), not {raw!r}")
            newest_first = values[0].startswith("-")
        elif name == "_summary":
            if values != ["count"]:
                raise invalid(key, f"{TYPE} searches support _summary=count only", "not-supported")
            count_only = True
        elif name in ("_count", "_total"):
            continue
        else:
            tests.append((BY_IDENTIFIER[name] if modifier else TESTS[name], values))
    return TrailQuery(ids, dates, tests, newest_first, count_only, applied, unknown)


def _date_sql(value: date_type.DateValue) -> tuple[str, list[str]]:
    """SQL on ``recorded`` (an instant, ``...Z``: text order is time order) for one date value."""
    lo, hi = value.low, value.high_excl
    p = value.prefix
    if p == "eq":
        return "(recorded >= ? AND recorded < ?)", [lo, hi]
    if p == "ne":
        return "(recorded < ? OR recorded >= ?)", [lo, hi]
    if p in ("gt", "sa"):
        return "recorded >= ?", [hi]
    if p == "ge":
        return "recorded >= ?", [lo]
    if p in ("lt", "eb"):
        return "recorded < ?", [lo]
    if p == "le":
        return "recorded < ?", [hi]
    a_lo, a_hi = date_type.approx(value)  # ap
    return "(recorded >= ? AND recorded < ?)", [a_lo, a_hi]


def _where(q: TrailQuery) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for alternatives in q.ids:
        clauses.append(f"event_id IN ({', '.join('?' * len(alternatives))})")
        params.extend(alternatives)
    for alternatives in q.dates:
        parts = [_date_sql(v) for v in alternatives]
        clauses.append("(" + " OR ".join(sql for sql, _ in parts) + ")")
        params.extend(p for _, ps in parts for p in ps)
    return clauses, params


def _rows(store: Queryable, q: TrailQuery, after: int | None) -> Iterator[tuple[int, Event]]:
    """``(seq, event)`` of the rows the SQL bounds let through, in the query's order, from ``after`` on."""
    clauses, params = _where(q)
    op, order = ("<", "DESC") if q.newest_first else (">", "ASC")
    while True:
        where = list(clauses)
        bind = list(params)
        if after is not None:
            where.append(f"seq {op} ?")
            bind.append(after)
        sql = f"SELECT {ENTRY_COLUMNS} FROM audit_log"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = store.query(f"{sql} ORDER BY seq {order} LIMIT ?", [*bind, BATCH])
        for row in rows:
            for event in entry_events(store, row):
                yield int(row[0]), served(event, row[2])
        if len(rows) < BATCH:
            return
        after = int(rows[-1][0])


def _matches(q: TrailQuery, event: Event) -> bool:
    return all(any(test(event, v) for v in values) for test, values in q.tests)


def search(store: Queryable, query: list[tuple[str, str]], *, count: int, cursor: str | None,
           strict: bool = False, count_limit: int = 100_000) -> SearchResult:
    """One page of AuditEvents matching ``query`` (or, for ``_summary=count``, how many match)."""
    q = parse(query, strict)
    after: int | None = None
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
            raise FhirError.of(400, "invalid", f"Invalid _cursor {cursor[:40]!r} for {TYPE}")
        after = int(cursor)
    if q.count_only or count == 0:
        seen = 0
        for _, event in _rows(store, q, None):
            if _matches(q, event):
                seen += 1
                if seen >= count_limit:
                    break
        return SearchResult(entries=[], total=seen if seen < count_limit else None, applied=q.applied,
                            unknown=q.unknown, summary="count" if q.count_only else None)
    entries: list[tuple[str, str, str]] = []
    last = None
    has_next = False
    for seq, event in _rows(store, q, after):
        if not _matches(q, event):
            continue
        if len(entries) == count:
            has_next = True
            break
        entries.append((TYPE, str(event.get("id")), orjson.dumps(event).decode()))
        last = seq
    total = len(entries) if not has_next and cursor is None else None
    return SearchResult(entries=entries, total=total, has_next=has_next, applied=q.applied, unknown=q.unknown,
                        next_cursor=str(last) if has_next and last is not None else None)


def _entry_ids(event_id: str) -> list[str]:
    """The ``event_id`` an AuditEvent's id may be stored under: itself, or its entry's (``<entry>.<k>``)."""
    base, dot, k = event_id.rpartition(".")
    return [event_id, base] if dot and base and k.isdigit() else [event_id]


def read(store: Queryable, event_id: str) -> tuple[int, str, Event] | None:
    """``(seq, recorded, event)`` of the AuditEvent with this id, or None."""
    entries = _entry_ids(event_id)
    rows = store.query(f"SELECT {ENTRY_COLUMNS} FROM audit_log WHERE event_id IN ({', '.join('?' * len(entries))}) "
                       "ORDER BY seq", entries)
    for row in rows:
        for event in entry_events(store, row):
            if event.get("id") == event_id:
                return int(row[0]), row[2], served(event, row[2])
    return None


def served(event: Event, recorded: str) -> Event:
    """The event as the API serves it: version 1 (an AuditEvent never changes), updated when it was recorded."""
    if "meta" not in event:
        event = {"resourceType": event.get("resourceType", TYPE), "id": event.get("id"),
                 "meta": {"versionId": "1", "lastUpdated": recorded}, **event}
    return event
