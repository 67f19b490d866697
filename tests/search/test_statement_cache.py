"""The search compiler's statement cache: a search shape is compiled once, and its values are bound every time.

A cached statement must be the statement the compiler would build: the same SQL
text and the same parameters in the same order. These tests compare the two over
every query the differential test generates, show the cache is used for repeated
shapes, and that what is not a bound value (a prefix, a modifier, a token's system,
a blinded hash, a unit that converts or not, the definitions in force) gives another
statement, with the right answers on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from salus.fhir.outcome import FhirError
from salus.search import compile as c
from salus.search import run_search
from salus.search.parse import parse_query
from salus.search.registry import EMPTY, CustomParam, Overlay, _active
from salus.search.sql import render
from salus.search.tree import Include, SearchQuery, StringValue
from salus.search.types import date as date_type
from tests.search.search_db import Db
from tests.search.search_population import loaded_db
from tests.search.test_differential import QUERIES, pairs

DIALECTS = ("sqlite", "postgresql")


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    """Each test starts with nothing learnt."""
    c.clear_statement_cache()
    yield
    c.clear_statement_cache()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[Db]:
    """The hand-built population, once per backend."""
    d = loaded_db(request.param)
    yield d
    d.close()


def cached(q: SearchQuery, dialect: str, **kw: Any) -> tuple[str, list[Any]]:
    """A page statement as the engine gets it (through the cache)."""
    compartment = kw.pop("compartment", None)
    return c.to_sql(c.page_select(q, c.where(q, compartment), kw.pop("limit", 51), kw.pop("offset", 0), **kw), dialect)


def compiled(q: SearchQuery, dialect: str, **kw: Any) -> tuple[str, list[Any]]:
    """The same statement built and rendered without the cache."""
    compartment = kw.pop("compartment", None)
    tree = c._page_tree(q, c._where_tree(q, compartment), kw.pop("limit", 51), kw.pop("offset", 0),
                        kw.pop("after", None), kw.pop("with_total", False))
    return render(tree, dialect)


def ids(db: Db, rtype: str | None, query: str, **kw: Any) -> list[str]:
    """The ids a search matches, in order."""
    return [rid for _, rid, _ in run_search(db, rtype, pairs(query), count=100, **kw).entries]


def stats() -> dict[str, int]:
    """The cache's counters."""
    return c.statement_cache_info()


def test_a_repeated_shape_is_compiled_once() -> None:
    """Searches differing only in their values share one statement: one miss, then hits with their own values."""
    queries = [parse_query("Patient", [("identifier", f"http://hosp/mrn|MRN{n}")]) for n in range(3)]
    out = [cached(q, "sqlite") for q in queries]
    assert stats()["misses"] == 1 and stats()["hits"] == 2 and stats()["shapes"] == 1
    assert len({sql for sql, _ in out}) == 1
    for n, (q, got) in enumerate(zip(queries, out, strict=True)):
        assert got == compiled(q, "sqlite")
        assert f"MRN{n}" in got[1]


def test_the_engine_uses_the_cache(db: Db) -> None:
    """run_search: the page and the _revinclude statements come from the cache the second time, answers unchanged."""
    first = run_search(db, "Patient", [("identifier", "http://hosp/mrn|MRN1"), ("_revinclude", "Observation:subject")])
    misses = stats()["misses"]
    second = run_search(db, "Patient", [("identifier", "http://hosp/mrn|MRN2"), ("_revinclude", "Observation:subject")])
    assert stats()["misses"] == misses and stats()["hits"] >= 2
    assert [e[1] for e in first.entries] == ["p1"] and {e[1] for e in first.included} == {"o1", "o3", "o4"}
    assert [e[1] for e in second.entries] == ["p2"] and {e[1] for e in second.included} == {"o2"}


# pairs of searches of one parameter that differ in something other than a bound value, with their answers
DIFFERENT = [
    ("Patient", "birthdate=ge1985", ["p2", "p4"], "birthdate=lt1985", ["p1", "p3"]),  # date prefix
    ("Patient", "birthdate=1970-05", ["p1", "p3"], "birthdate=sa1970-05", ["p2", "p4"]),
    ("Patient", "identifier=http://hosp/mrn|MRN1", ["p1"], "identifier=MRN1", ["p1", "p3"]),  # system given or not
    ("Patient", "identifier=|MRN1", [], "identifier=http://other/id|", ["p3"]),  # no system; no code
    ("Patient", "name=smith", ["p1", "p3"], "name:exact=Smith", ["p1"]),  # modifiers
    ("Patient", "name:contains=ths", ["p3"], "name=ths", []),
    ("Patient", "gender=male", ["p1", "p2"], "gender:not=male", ["p3", "p4"]),
    ("Patient", "general-practitioner:missing=true", ["p1", "p2", "p4"], "general-practitioner:missing=false", ["p3"]),
    ("Patient", "general-practitioner=Practitioner/dr1", ["p3"], "general-practitioner=dr1", ["p3"]),  # typed or not
    ("Patient", "_id=p1", ["p1"], "_id=p2,p4", ["p2", "p4"]),  # how many values
    ("Observation", "value-quantity=lt200|http://unitsofmeasure.org|cm", ["o1", "o2", "o6"],
     "value-quantity=lt200||cm", ["o1", "o2", "o6"]),  # without a system: never the canonical copies
    ("Observation", "_profile:above=http://example.org/fhir/StructureDefinition/custom-obs/extra", ["o2"],
     "_profile:above=http://example.org/fhir/StructureDefinition/custom-obs", ["o2"]),  # more parents, more values
]


@pytest.mark.parametrize(("rtype", "a", "want_a", "b", "want_b"), DIFFERENT)
def test_what_is_not_a_bound_value_makes_another_statement(
    db: Db, rtype: str, a: str, want_a: list[str], b: str, want_b: list[str]
) -> None:
    """Each of a pair compiles to its own SQL, whichever comes first, and answers right from the cache."""
    qa, qb = parse_query(rtype, pairs(a)), parse_query(rtype, pairs(b))
    assert compiled(qa, db.dialect)[0] != compiled(qb, db.dialect)[0]
    for _ in range(2):  # learnt, then from the cache
        for q in (qa, qb, qb, qa):
            assert cached(q, db.dialect) == compiled(q, db.dialect)
        assert ids(db, rtype, a) == want_a
        assert ids(db, rtype, b) == want_b
    assert stats()["hits"] > stats()["misses"]


def test_derived_parameters_come_from_each_value(db: Db) -> None:
    """A UCUM unit that converts binds canonical values, one that does not its own: same SQL, each value's parameters."""
    queries = {
        "value-quantity=lt200|http://unitsofmeasure.org|cm": ["o1", "o2", "o6"],
        "value-quantity=lt2000|http://unitsofmeasure.org|mm": ["o1", "o2", "o6"],
        "value-quantity=lt200|http://unitsofmeasure.org|nonsense": [],
        "value-quantity=lt176|http://unitsofmeasure.org|cm": ["o2", "o6"],
    }
    for _ in range(2):
        for query, want in queries.items():
            q = parse_query("Observation", pairs(query))
            assert cached(q, db.dialect) == compiled(q, db.dialect)
            assert ids(db, "Observation", query) == want
    assert stats()["shapes"] == stats()["misses"] == 2  # this test's page, and run_search's


def test_a_date_prefix_is_a_variant_of_one_shape() -> None:
    """Prefixes are not in the shape key: each is a variant, found by how its value's condition renders."""
    ge, lt = parse_query("Patient", [("birthdate", "ge1970")]), parse_query("Patient", [("birthdate", "lt2000")])
    for q in (ge, lt, ge, lt):
        assert cached(q, "sqlite") == compiled(q, "sqlite")
    assert stats() == {"hits": 2, "misses": 2, "uncached": 0, "shapes": 1}


def test_a_blinded_value_makes_another_statement() -> None:
    """A value field the key does not list (``StringValue.blinded``, for hashed indexes) still changes the statement."""
    q = parse_query("Patient", [("name", "smi")])
    clause = q.clauses[0]
    blinded = SearchQuery(
        q.resource_types, [replace(clause, values=(StringValue("smi", blinded=("norm-hash", "exact-hash")),))]
    )
    plain_sql, plain_params = cached(q, "sqlite")
    blind_sql, blind_params = cached(blinded, "sqlite")
    assert plain_sql != blind_sql and "norm-hash" in blind_params and "smi" in plain_params
    for query in (q, blinded):
        assert cached(query, "sqlite") == compiled(query, "sqlite")


def test_a_value_that_shapes_the_sql_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a literal that changes the SQL (here a made-up rule in the token module) gives another statement."""
    from salus.search.sql import IsNull, and_
    from salus.search.types import token

    plain = token.condition

    def odd(value: Any, modifier: str | None, alias: str = "i") -> Any:
        expr = plain(value, modifier, alias)
        return and_(expr, IsNull(c.Col("text", alias))) if value.code.startswith("X") else expr

    monkeypatch.setattr(token, "condition", odd)
    queries = [parse_query("Patient", [("gender", code)]) for code in ("male", "Xmale", "female", "Xfemale")]
    for q in queries * 2:
        assert cached(q, "sqlite") == compiled(q, "sqlite")
    assert "text IS NULL" in cached(queries[1], "sqlite")[0] and "text IS NULL" not in cached(queries[2], "sqlite")[0]


def test_literals_of_the_call_are_bound_in_order(db: Db) -> None:
    """Page size, offset, cursor values and the compartment's id are filled in where the statement binds them."""
    q = parse_query("Observation", [("code", "8302-2"), ("_sort", "-date")])
    calls = [
        {"limit": 2, "offset": 0, "with_total": True},
        {"limit": 3, "offset": 1},
        {"limit": None, "offset": 2},
        {"limit": 5, "offset": 0, "after": ("2020-03-15T10:30:00", 7)},
        {"limit": 5, "offset": 0, "after": (None, 9)},
        {"limit": 5, "offset": 0, "compartment": ("Patient", "p1")},
        {"limit": 4, "offset": 0, "compartment": ("Patient", "p2"), "with_total": True},
    ]
    for kw in calls * 2:
        for dialect in DIALECTS:
            assert cached(q, dialect, **dict(kw)) == compiled(q, dialect, **dict(kw))
    assert stats()["hits"] == stats()["misses"] == len(calls) * 2
    assert ids(db, "Observation", "", compartment=("Patient", "p1")) == ["o1", "o3", "o4"]
    assert ids(db, "Observation", "", compartment=("Patient", "p2")) == ["o2"]
    assert ids(db, "Observation", "code=8302-2", compartment=("Patient", "p1")) == ["o1"]
    assert ids(db, "Observation", "code=8302-2", compartment=("Patient", "p2")) == ["o2"]


def test_count_and_conditional_statements() -> None:
    """``count_select`` and ``ids_select`` of a ``where`` are cached the same way."""
    for mrn in ("MRN1", "MRN2", "MRN1"):
        q = parse_query("Patient", [("identifier", f"http://hosp/mrn|{mrn}"), ("_sort", "family")])
        for dialect in DIALECTS:
            assert c.to_sql(c.count_select(c.where(q)), dialect) == render(c._count_tree(c._where_tree(q, None)), dialect)
            assert c.to_sql(c.ids_select(q, c.where(q, ("Patient", mrn)), 2), dialect) == render(
                c._ids_tree(q, c._where_tree(q, ("Patient", mrn)), 2), dialect
            )
    assert stats()["hits"] == 8 and stats()["misses"] == 4


def test_include_statements() -> None:
    """_include and _revinclude statements: shaped by the include and how many rows, bound to the page's rows."""
    inc = Include("Observation", "subject", "Patient")
    rev = Include("Observation", "subject", None, reverse=True)
    for rids in ([1], [2], [3, 4, 5], [6, 7, 8]):
        for dialect in DIALECTS:
            assert c.to_sql(c.include_select(inc, rids), dialect) == render(c._include_tree(inc, rids), dialect)
    for matches in ([("Patient", "p1")], [("Patient", "p2")], [("Patient", "a"), ("Group", "g"), ("Patient", "b")],
                    [("Patient", "c"), ("Group", "h"), ("Patient", "d")]):
        by_type: dict[str, list[str]] = {}
        for t, i in matches:
            by_type.setdefault(t, []).append(i)
        for dialect in DIALECTS:
            assert c.to_sql(c.revinclude_select(rev, matches), dialect) == render(c._revinclude_tree(rev, by_type), dialect)
    assert stats()["hits"] == 8 and stats()["misses"] == 8


def test_the_definitions_in_force_are_part_of_the_key() -> None:
    """Another set of custom SearchParameters never reuses a statement learnt under the previous one."""
    q = parse_query("Patient", [("gender", "male")])
    cached(q, "sqlite")
    custom = Overlay([CustomParam("Patient", "eye-colour", "http://example.org/sp/eye", "sp1", None, "ready", 1)])
    assert custom != EMPTY
    token = _active.set((object(), custom))
    try:
        assert cached(q, "sqlite") == compiled(q, "sqlite")
    finally:
        _active.reset(token)
    assert stats()["shapes"] == 2 and stats()["hits"] == 0


def test_one_clause_twice_is_answered_and_learnt_from_others(db: Db) -> None:
    """A repeated identical parameter parses to one clause object at two places: answered right, learnt elsewhere."""
    twice = parse_query("Patient", [("gender", "male"), ("gender", "male")])
    assert twice.clauses[0] is twice.clauses[1]
    assert cached(twice, db.dialect) == compiled(twice, db.dialect)
    assert stats()["shapes"] == 0  # it could not tell which place each parameter came from
    other = parse_query("Patient", [("gender", "male"), ("gender", "female")])
    assert cached(other, db.dialect) == compiled(other, db.dialect)
    assert cached(twice, db.dialect) == compiled(twice, db.dialect)
    assert stats()["hits"] == 1
    assert ids(db, "Patient", "gender=male&gender=male") == ["p1", "p2"]
    assert ids(db, "Patient", "gender=male&gender=female") == []


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most MAX_SHAPES shapes are kept, the least recently used dropped; past MAX_VARIANTS, compiled as before."""
    monkeypatch.setattr(c, "MAX_SHAPES", 3)
    monkeypatch.setattr(c, "MAX_VARIANTS", 2)
    codes = ["gender", "birthdate", "name", "family", "given"]
    for code in codes:
        cached(parse_query("Patient", [(code, "x" if code != "birthdate" else "2000")]), "sqlite")
    assert stats()["shapes"] == 3
    c.clear_statement_cache()
    for prefix in ("ge", "lt", "sa", "ge", "sa"):
        q = parse_query("Patient", [("birthdate", f"{prefix}2000")])
        assert cached(q, "sqlite") == compiled(q, "sqlite")
    assert stats() == {"hits": 1, "misses": 2, "uncached": 2, "shapes": 1}
    c.clear_statement_cache()
    monkeypatch.setattr(c, "MAX_STATEMENTS", 4)
    for n in range(1, 7):  # shapes of one, two... values, each with two variants
        for prefix in ("ge", "lt"):
            q = parse_query("Patient", [("birthdate", ",".join([f"{prefix}2000"] * n))])
            assert cached(q, "sqlite") == compiled(q, "sqlite")
    assert stats()["shapes"] == 2 and c._HELD[0] == 4


@pytest.fixture
def fixed_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ap`` measures from now: one now for both ways of compiling."""
    monkeypatch.setattr(date_type, "now", lambda: datetime(2026, 1, 1))


@pytest.mark.usefixtures("fixed_now")
@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_generated_query_compiles_to_the_same_statement(dialect: str) -> None:
    """Over the differential test's queries (every type, modifier, prefix, chain, _has, composite, _sort):
    the cached statement is the compiled one, for pages, cursors, counts, conditional matches and compartments."""
    checked = 0
    for _ in range(2):  # the second round is mostly hits, of other values of the same shapes
        for _, rtype, query in QUERIES:
            try:
                q = parse_query(rtype, pairs(query))
                compiled(q, dialect)
            except FhirError:
                continue
            after = (*(["m"] * len(q.sort)), 3)
            for kw in ({"with_total": True}, {"limit": 11, "offset": 20}, {"after": after}, {"after": (None,) * len(after)},
                       {"compartment": ("Patient", "p1")}):
                assert cached(q, dialect, **dict(kw)) == compiled(q, dialect, **dict(kw)), (query, kw)
            assert c.to_sql(c.count_select(c.where(q)), dialect) == render(c._count_tree(c._where_tree(q, None)), dialect)
            assert c.to_sql(c.ids_select(q, c.where(q), 2), dialect) == render(c._ids_tree(q, c._where_tree(q, None), 2), dialect)
            checked += 1
    info = stats()
    assert checked > 400 and info["hits"] > info["misses"], info
