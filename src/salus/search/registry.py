"""The search parameters in force: R4's own, plus those that SearchParameter resources stored here define.

A ``SearchParameter`` with ``status = active`` adds its ``code`` to every
resource type of its ``base`` (``Resource`` and ``DomainResource`` stand for
each type they cover). It is read into the shape of the generated R4
definitions (``salus.fhir.definitions.search_parameters``): the expression
split per base and ``where(resolve() is X)`` rewritten as
``scripts/gen_definitions.py`` does, so indexing and parsing treat both alike.

- A custom parameter with the code of an R4 one on the same base replaces it
  there (HAPI FHIR does the same); deleting or retiring it brings the R4 one
  back, pending a reindex, since the index holds the custom one's rows.
- One that says exactly what R4 already says (US Core's ``family``, say) changes nothing.
- Two active SearchParameters may not claim one code on one base (422).
- Codes starting with ``_`` belong to the specification and cannot be defined.

**Index state.** ``search_param_state`` has a row per (base, code) whose
definition differs from R4's. It is ``pending`` from the moment the definition
changes (existing resources have rows of the old one, or none) until a reindex
of that base has rewritten every resource's rows; then ``ready``. Resources
written meanwhile are indexed for it at once. Search never uses a pending
parameter: it leaves it out and says so (400 when strict).

**Caching.** Every change bumps ``salus_meta.search_params_version`` in the
same transaction. A process keeps the parameters as an immutable ``Overlay``,
equal and hashed by content, on which the compiled index plans and parameter
tables are keyed. A write transaction re-reads the version first, so rows are
never extracted for stale definitions; searches re-read it at most every
``ttl`` seconds (at once after a change made by this process).

The overlay in force is ambient (a ``ContextVar``) rather than passed down, so
``index_rows`` and ``parse_query`` keep their signatures; with none set, R4's
parameters alone are in force.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import orjson

from salus.fhir.definitions import is_resource_type, r4, resource_types
from salus.fhir.definitions import search_parameters as r4_search_parameters
from salus.fhir.fhirpath import compiled, syntax_error
from salus.fhir.outcome import FhirError, Issue

PENDING = "pending"
READY = "ready"
VERSION_KEY = "search_params_version"
# the parameter types search can index and compile (special ones, such as near, it cannot)
SUPPORTED_TYPES = frozenset({"string", "token", "reference", "date", "number", "quantity", "uri", "composite"})
# Bundle, Binary and Parameters specialise Resource directly; every other type is a DomainResource
NOT_DOMAIN_RESOURCES = frozenset({"Bundle", "Binary", "Parameters"})
# what a URL query can carry as a parameter name without ':' '.' '$' being read as modifiers, chains or composites
CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
RESOLVE_IS = re.compile(r"\.where\(resolve\(\) is (\w+)\)")
TOP_LEVEL_BAR = re.compile(r"\s\|\s")
# the definition keys that decide which rows a parameter has (url and description do not)
MEANING = ("type", "expression", "resolve_targets", "target", "component")


class Database(Protocol):
    """The store or an open transaction: a dialect and a query."""

    dialect: str

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a statement and return its rows."""
        ...


class WriteTransaction(Database, Protocol):
    """An open write transaction."""

    def lock(self, key: str) -> None:
        """Serialise writers sharing ``key`` until commit."""
        ...


@dataclass(frozen=True)
class CustomParam:
    """One row of ``search_param_state``: a parameter of one type that differs from R4's, and its index state."""

    base: str
    code: str
    url: str
    sp_id: str | None  # the SearchParameter defining it; None: R4's own, back after an override went away
    definition: str | None  # canonical JSON in the shape of the R4 definitions; None: R4's own
    state: str
    generation: int  # the version that made it pending: a reindex marks ready only what it saw pending

    @property
    def name(self) -> str:
        """``Type.code``, as reports and messages name it."""
        return f"{self.base}.{self.code}"

    def entry(self) -> dict[str, Any] | None:
        """The definition as ``search_parameters`` gives it (None: R4's own)."""
        return orjson.loads(self.definition) if self.definition is not None else None


class Overlay:
    """The custom parameters in force at one moment: immutable, equal and hashed by content, so caches key on it."""

    __slots__ = ("params", "_key", "_hash", "_pending", "_narrowed", "_merged")

    def __init__(self, params: Iterable[CustomParam] = ()) -> None:
        self.params = tuple(sorted(params, key=lambda p: (p.base, p.code)))
        self._key = tuple((p.base, p.code, p.definition, p.state) for p in self.params)
        self._hash = hash(self._key)
        self._pending = frozenset((p.base, p.code) for p in self.params if p.state == PENDING)
        # derived lazily; two threads may both fill an entry, with equal values
        self._narrowed: dict[tuple[str, ...], Overlay] = {}
        self._merged: dict[str, dict[str, dict[str, Any]]] = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Overlay) and (self is other or self._key == other._key)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Overlay({', '.join(f'{p.name}:{p.state}' for p in self.params)})"

    def narrow(self, resource_types: tuple[str, ...]) -> Overlay:
        """Only the parameters of ``resource_types``: all that their plans and parameter tables depend on."""
        if not self.params:
            return self
        got = self._narrowed.get(resource_types)
        if got is None:
            wanted = set(resource_types)
            kept = [p for p in self.params if p.base in wanted]
            got = self if len(kept) == len(self.params) else Overlay(kept) if kept else EMPTY
            self._narrowed[resource_types] = got
        return got

    def search_parameters(self, resource_type: str) -> dict[str, dict[str, Any]]:
        """R4's parameters of ``resource_type``, with this overlay's custom ones in place."""
        merged = self._merged.get(resource_type)
        if merged is None:
            merged = r4_search_parameters(resource_type)
            mine = {p.code: p.entry() for p in self.params if p.base == resource_type and p.definition is not None}
            if mine:
                merged = {**merged, **mine}  # type: ignore[dict-item]
            self._merged[resource_type] = merged
        return merged

    def is_pending(self, resource_types: Iterable[str] | None, code: str) -> bool:
        """Whether ``code`` is still being indexed on one of ``resource_types`` (None, a system search: never)."""
        if not self._pending or resource_types is None:
            return False
        return any((t, code) in self._pending for t in resource_types)


EMPTY = Overlay()
_active: ContextVar[tuple[object, Overlay] | None] = ContextVar("salus_search_parameters", default=None)


def current() -> Overlay:
    """The custom parameters in force in this context (EMPTY: R4's alone)."""
    active = _active.get()
    return EMPTY if active is None else active[1]


def in_force(resource_types: str | tuple[str, ...] | None) -> Overlay:
    """The custom parameters in force on ``resource_types``: the cache key of whatever is derived from them."""
    active = _active.get()
    if active is None or resource_types is None or not active[1].params:
        return EMPTY
    return active[1].narrow((resource_types,) if isinstance(resource_types, str) else resource_types)


def search_parameters(resource_type: str) -> dict[str, dict[str, Any]]:
    """The parameters of ``resource_type`` in force here: R4's with the custom ones in place."""
    return current().search_parameters(resource_type)


def pending_issue(name: str, *, strict: bool) -> Issue:
    """What a search says about a parameter it cannot use yet, because its index is still being built."""
    if strict:
        return Issue(
            "not-supported",
            f"Search parameter '{name}' is not indexed yet: a reindex ($reindex, or salus reindex) must finish "
            "before it can be searched",
            expression=name,
        )
    return Issue(
        "incomplete",
        f"Search parameter '{name}' is not indexed yet, so it was ignored: these results are not filtered by it "
        "(a reindex must finish first)",
        severity="warning",
    )


# ---- the table ------------------------------------------------------------------------

_COLUMNS = "base, code, url, sp_id, definition, state, generation"


def read_version(db: Database) -> int:
    """The version of the parameters in force, as ``db`` sees it (0: never changed)."""
    rows = db.query("SELECT value FROM salus_meta WHERE key = ?", (VERSION_KEY,))
    return int(rows[0][0]) if rows else 0


def _bump_version(tx: Database) -> int:
    rows = tx.query(
        "INSERT INTO salus_meta (key, value) VALUES (?, '1') ON CONFLICT (key) "
        "DO UPDATE SET value = CAST(CAST(salus_meta.value AS BIGINT) + 1 AS TEXT) RETURNING value",
        (VERSION_KEY,),
    )
    return int(rows[0][0])


def load_rows(db: Database) -> list[CustomParam]:
    """Every row of ``search_param_state``."""
    rows = db.query(f"SELECT {_COLUMNS} FROM search_param_state")
    return [CustomParam(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6])) for r in rows]


class SearchParameterRegistry:
    """The search parameters in force on one store, cached in this process and kept in step with the database."""

    def __init__(self, db: Database, *, ttl: float = 1.0) -> None:
        self.db = db
        self.ttl = ttl
        self._lock = threading.Lock()
        self._version = -1
        self._overlay = EMPTY
        self._checked = -math.inf

    def overlay(self) -> Overlay:
        """The parameters in force, re-checked against the database at most every ``ttl`` seconds."""
        if time.monotonic() - self._checked < self.ttl:
            return self._overlay
        return self.sync(self.db)

    def invalidate(self) -> None:
        """Re-check the database at the next use (this process changed a SearchParameter or finished a reindex)."""
        self._checked = -math.inf

    def sync(self, db: Database) -> Overlay:
        """The parameters in force as ``db`` (the store, or an open transaction) sees them now."""
        version = read_version(db)
        with self._lock:
            if version == self._version:
                self._checked = time.monotonic()
                return self._overlay
        overlay = Overlay(load_rows(db))
        with self._lock:
            # an older snapshot (a transaction that began before a change) is used but not kept
            if version >= self._version:
                self._version, self._overlay, self._checked = version, overlay, time.monotonic()
        return overlay

    @contextmanager
    def active(self, overlay: Overlay | None = None) -> Iterator[Overlay]:
        """Put ``overlay`` in force for the block; by default the one already in force for this registry, else its own."""
        here = _active.get()
        if overlay is None:
            if here is not None and here[0] is self:
                # inside a write transaction: keep the parameters it read, not the cached ones
                yield here[1]
                return
            overlay = self.overlay()
        token = _active.set((self, overlay))
        try:
            yield overlay
        finally:
            _active.reset(token)

    # ---- changes, inside the caller's write transaction ---------------------------------

    def apply(self, tx: WriteTransaction, sp_id: str, resource: dict[str, Any] | None, stamp: str) -> Overlay:
        """Record what writing SearchParameter ``sp_id`` (``None``: deleting it) changes; 422 if it cannot be used.

        Changed definitions become pending. The rest of the transaction indexes with
        them, so resources written after the SearchParameter have their rows at once.
        """
        tx.lock("salus:search_param_state")  # two SearchParameter writes must not both claim one code
        rows = load_rows(tx)
        wanted = {} if resource is None else definitions_of(resource, rows)
        held = {(p.base, p.code): p for p in rows}
        upserts: list[tuple[str, str, str, str | None, str | None]] = []
        deletes: list[tuple[str, str]] = []
        for (base, code), (url, definition) in wanted.items():
            old = held.get((base, code))
            if old is not None and old.sp_id not in (None, sp_id):
                raise FhirError.of(
                    422, "duplicate",
                    f"SearchParameter/{old.sp_id} already defines '{code}' on {base}: retire or delete it first",
                    "SearchParameter.code",
                )
            if old is None or old.sp_id != sp_id or old.definition != definition:
                upserts.append((base, code, url, sp_id, definition))
        for p in rows:
            if p.sp_id == sp_id and (p.base, p.code) not in wanted:
                builtin = r4_search_parameters(p.base).get(p.code)
                if builtin is None:
                    deletes.append((p.base, p.code))
                else:
                    upserts.append((p.base, p.code, builtin["url"], None, None))
        if not upserts and not deletes:
            return Overlay(rows)
        generation = _bump_version(tx)
        for base, code, url, sid, definition in upserts:
            tx.query(
                f"INSERT INTO search_param_state ({_COLUMNS}, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (base, code) DO UPDATE SET url = excluded.url, sp_id = excluded.sp_id, "
                "definition = excluded.definition, state = excluded.state, generation = excluded.generation, "
                "updated = excluded.updated",
                (base, code, url, sid, definition, PENDING, generation, stamp),
            )
        for base, code in deletes:
            tx.query("DELETE FROM search_param_state WHERE base = ? AND code = ?", (base, code))
        overlay = Overlay(load_rows(tx))
        # no reset token: the enclosing active() of the transaction restores what was there before it
        _active.set((self, overlay))
        return overlay

    def pending(self, db: Database, resource_types: Iterable[str] | None = None) -> list[CustomParam]:
        """The parameters still being indexed on ``resource_types`` (None: on any type)."""
        wanted = None if resource_types is None else set(resource_types)
        return [p for p in load_rows(db) if p.state == PENDING and (wanted is None or p.base in wanted)]

    def mark_ready(self, tx: Database, params: Iterable[CustomParam], stamp: str) -> list[CustomParam]:
        """Mark ready those of ``params`` (pending when a reindex began) whose definition has not changed since."""
        done = []
        for p in params:
            if p.definition is None:
                # R4's own again, fully reindexed: nothing left to say about it
                sql = "DELETE FROM search_param_state WHERE base = ? AND code = ? AND generation = ? AND state = ? RETURNING code"
                args: tuple[Any, ...] = (p.base, p.code, p.generation, PENDING)
            else:
                sql = ("UPDATE search_param_state SET state = ?, updated = ? "
                       "WHERE base = ? AND code = ? AND generation = ? AND state = ? RETURNING code")
                args = (READY, stamp, p.base, p.code, p.generation, PENDING)
            if tx.query(sql, args):
                done.append(p)
        if done:
            _bump_version(tx)
        return done


# ---- reading a SearchParameter resource ------------------------------------------------


def split_expression(expression: str, base: str) -> str:
    """The part of a multi-resource expression that applies to ``base`` (as ``scripts/gen_definitions.py`` does)."""
    parts = [p.strip() for p in TOP_LEVEL_BAR.split(expression)]
    mine = [p for p in parts if re.match(rf"^\(?{re.escape(base)}\b", p)]
    return " | ".join(mine) if mine else expression


def rewrite_resolve(expression: str) -> tuple[str, list[str]]:
    """Replace ``where(resolve() is X)``, which fhirpathpy lacks, by a restriction of the rows to targets X."""
    return RESOLVE_IS.sub("", expression), RESOLVE_IS.findall(expression)


@cache
def _r4_by_url() -> dict[str, tuple[str, str]]:
    """``(code, type)`` of every R4 search parameter by canonical URL, for composite components."""
    out: dict[str, tuple[str, str]] = {}
    for params in r4()["searchParameters"].values():
        for code, p in params.items():
            out.setdefault(p["url"], (code, p["type"]))
    return out


def _unusable(message: str, where: str, code: str = "processing") -> FhirError:
    return FhirError.of(422, code, message, f"SearchParameter.{where}")


def _types_of(bases: list[Any]) -> list[tuple[str, str]]:
    """``(base as written, concrete type)`` for every type the bases cover."""
    out: list[tuple[str, str]] = []
    for b in bases:
        if b == "Resource":
            out += [(b, t) for t in sorted(resource_types())]
        elif b == "DomainResource":
            out += [(b, t) for t in sorted(resource_types() - NOT_DOMAIN_RESOURCES)]
        elif isinstance(b, str) and is_resource_type(b):
            out.append((b, b))
        else:
            raise _unusable(f"base {b!r} is not a resource type", "base", "not-supported")
    return out


def _components(resource: dict[str, Any], known: Iterable[CustomParam]) -> list[dict[str, str]]:
    """A composite's components as ``(code, type, expression)``, each definition found among R4's or ours."""
    ours = {}
    for p in known:
        entry = p.entry()
        if entry is not None:
            ours.setdefault(entry["url"], (p.code, entry["type"]))
    out = []
    for c in resource.get("component") or []:
        url, expression = c.get("definition"), c.get("expression")
        found = _r4_by_url().get(url) or ours.get(url)
        if found is None:
            raise _unusable(f"component definition {url!r} is not a search parameter this server knows", "component")
        if not expression:
            raise _unusable(f"component {url!r} has no expression", "component")
        out.append({"code": found[0], "type": found[1], "expression": expression})
    if not out:
        raise _unusable("a composite parameter needs components", "component")
    return out


def _check(resource_type: str, code: str, entry: dict[str, Any]) -> None:
    """422 unless ``entry`` is FHIRPath the index can extract on ``resource_type``."""
    from salus.search.indexing import _plan  # indexing imports this module: import late

    expressions = [entry["expression"], *(c["expression"] for c in entry.get("component", ()))]
    for expression in expressions:
        error = syntax_error(expression)
        if error is None:
            try:
                compiled(expression)({"resourceType": resource_type})
            except Exception as e:  # unknown functions and wrong arities show only when evaluated
                error = str(e) or type(e).__name__
        if error is not None:
            error = error.split(" expecting ")[0]  # antlr lists every token it could take: noise here
            raise _unusable(f"expression {expression!r} is not valid FHIRPath: {error}", "expression", "invalid")
    expression = entry["expression"]
    if _plan(resource_type, code, entry) is None:
        raise _unusable(f"expression {expression!r} cannot be indexed on {resource_type}", "expression", "not-supported")


def _same_as_r4(resource_type: str, code: str, entry: dict[str, Any]) -> bool:
    builtin = r4_search_parameters(resource_type).get(code)
    return builtin is not None and all(builtin.get(k) == entry.get(k) for k in MEANING)


def definitions_of(resource: dict[str, Any], known: Iterable[CustomParam] = ()) -> dict[tuple[str, str], tuple[str, str]]:
    """What an active SearchParameter defines: ``(type, code) -> (url, definition JSON)``; 422 if unusable.

    Draft, retired or unknown-status ones define nothing (they are stored, not in force);
    neither does one that says what R4 already says.
    """
    if resource.get("status") != "active":
        return {}
    code, kind, url = resource.get("code"), resource.get("type"), resource.get("url")
    expression, bases = resource.get("expression"), resource.get("base") or []
    if not isinstance(code, str) or not isinstance(url, str) or not isinstance(bases, list):
        raise _unusable("an active SearchParameter needs a url, a code and a base", "code", "required")
    if kind not in SUPPORTED_TYPES:
        raise _unusable(f"parameters of type {kind!r} cannot be indexed by this server", "type", "not-supported")
    if not isinstance(expression, str) or not expression.strip():
        raise _unusable("an active SearchParameter needs an expression to be indexed", "expression", "required")
    target = resource.get("target") or []
    for t in target:
        if not is_resource_type(t):
            raise _unusable(f"target {t!r} is not a resource type", "target", "not-supported")
    components = _components(resource, known) if kind == "composite" else None
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for base, t in _types_of(bases):
        if base != t and expression.startswith(f"{base}."):
            expr = t + expression[len(base):]  # Resource.meta.tag evaluated on an Observation starts at Observation
        else:
            expr = split_expression(expression, base)
        expr, resolve = rewrite_resolve(expr)
        entry: dict[str, Any] = {"type": kind, "url": url, "expression": expr}
        if resolve:
            entry["resolve_targets"] = resolve
        if target:
            entry["target"] = target
        if components:
            entry["component"] = components
        if _same_as_r4(t, code, entry):
            continue
        if not CODE.match(code):
            raise _unusable(
                f"code {code!r} cannot be searched: use letters, digits, '-' and '_', not starting with '_' "
                "(codes starting with '_' are the specification's)", "code", "invalid",
            )
        _check(t, code, entry)
        out[(t, code)] = (url, orjson.dumps(entry, option=orjson.OPT_SORT_KEYS).decode())
    return out
