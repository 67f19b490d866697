"""Search on a large demo population: latency per query kind against hand-written SQL, and throughput.

Each query kind runs in-process through ``run_search`` and, alternately, as one
hand-written SQL statement per dialect that returns the same answer (the page of
bodies in the same order, the total, and the included resources) from the same
tables in the same run. Every pair of answers is compared, so a ratio never
compares different work. Throughput is measured over HTTP with wrk against
``salus serve``, cycling through the same prepared queries.

Loading 10,000 patients (about half a million resources) takes minutes per
backend, so the loaded database is kept: a SQLite file in ``bench-data/`` and
a PostgreSQL schema ``salus_bench_search_<patients>``, both keyed by the patient
count, the seed and the schema (its version and its DDL, so a changed index
reloads).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg

from bench.common import PG_URL, ROOT, Report, pg_available
from bench.http_load import DURATION, serving
from salus import demo
from salus.config import Settings
from salus.loader import import_resources
from salus.search import run_search
from salus.search.engine import SearchResult
from salus.search.types.string import normalise
from salus.service import FhirService
from salus.store import Store, open_store
from salus.store.schema import SCHEMA_VERSION, ddl

SEED = 1
CACHE = ROOT / "bench-data"
PAGE = 10
SAMPLES = 100
ITERATIONS = int(os.environ.get("SALUS_BENCH_SEARCH_ITERATIONS", "200"))
# a broad kind that is slow stops early rather than holding the run for minutes
KIND_BUDGET_S = float(os.environ.get("SALUS_BENCH_SEARCH_BUDGET", "40"))
CLIENTS = (8, 32)
THREAD_SECONDS = float(os.environ.get("SALUS_BENCH_SEARCH_THREAD_SECONDS", "5"))
WORKERS = int(os.environ.get("SALUS_BENCH_WORKERS", "2"))
MRN, LOINC = demo.MRN, demo.LOINC
P95_TARGET_MS = 20.0
RATIO_TARGET = 3.0


# --- the population, loaded once and kept ------------------------------------------------------------------------


def schema_key() -> str:
    """What a cached database must match: the schema version and a digest of every CREATE statement."""
    digest = hashlib.sha256("\n".join(ddl("sqlite") + ddl("postgresql")).encode()).hexdigest()[:10]
    return f"v{SCHEMA_VERSION}-{digest}"


def _marker(patients: int) -> str:
    return json.dumps({"patients": patients, "seed": SEED, "schema": schema_key()}, sort_keys=True)


def _load(url: str, patients: int, data_dir: Path) -> int:
    """Import the demo population through the service, as ``salus demo`` does; returns the resources loaded."""
    service = FhirService(open_store(url, pool_size=2), Settings(data_dir=data_dir))
    started = time.perf_counter()
    total = demo.estimate(patients)

    done = [0]

    def progress(batch: int) -> None:
        done[0] += batch
        if done[0] % 50_000 < batch:
            print(
                f"    {done[0]:,}/{total:,} resources, {done[0] / (time.perf_counter() - started):,.0f}/s", flush=True
            )

    report = import_resources(service, (("demo", r) for r in demo.generate(patients, SEED)), progress=progress)
    print(
        f"    loaded {report.total_loaded:,} in {time.perf_counter() - started:,.0f}s, {len(report.rejected)} rejected"
    )
    service.store.close()
    return report.total_loaded


def _stamp(store: Store, patients: int, loaded: int) -> None:
    """Record a finished load, so a later run can trust the database."""
    with store.transaction() as tx:
        tx.query("DELETE FROM salus_meta WHERE key = 'bench_search'")
        tx.query(
            "INSERT INTO salus_meta (key, value) VALUES ('bench_search', ?)",
            [json.dumps({"marker": _marker(patients), "resources": loaded})],
        )


def _stamped(store: Store, patients: int) -> bool:
    """Whether the store holds a finished load of this population and schema, with every resource still there."""
    rows = store.query("SELECT value FROM salus_meta WHERE key = 'bench_search'")
    if not rows:
        return False
    stamp = json.loads(rows[0][0])
    if stamp["marker"] != _marker(patients):
        return False
    return int(store.query("SELECT COUNT(*) FROM resources")[0][0]) == stamp["resources"]


def sqlite_url(patients: int) -> str:
    """The cached SQLite database, loading it first when missing or stale."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"search-{patients}p-seed{SEED}-{schema_key()}.db"
    if path.exists():
        store = open_store(f"sqlite:///{path}")
        ok = _stamped(store, patients)
        store.close()
        if ok:
            print(f"  SQLite: reusing {path.relative_to(ROOT)}")
            return f"sqlite:///{path}"
    for stale in CACHE.glob(f"search-{patients}p-*"):
        stale.unlink()
    partial = path.with_suffix(".partial")
    print(f"  SQLite: loading {patients:,} demo patients into {path.relative_to(ROOT)}")
    loaded = _load(f"sqlite:///{partial}", patients, CACHE)
    store = open_store(f"sqlite:///{partial}")
    _stamp(store, patients, loaded)
    store.query("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    for suffix in ("-wal", "-shm", ".lock"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    partial.rename(path)
    return f"sqlite:///{path}"


def postgres_url(patients: int) -> str:
    """The cached PostgreSQL schema, loading it first when missing or stale."""
    schema = f"salus_bench_search_{patients}"
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone()
    if exists:
        store = open_store(url, pool_size=1)
        ok = _stamped(store, patients)
        store.close()
        if ok:
            print(f"  PostgreSQL: reusing schema {schema}")
            return url
    print(f"  PostgreSQL: loading {patients:,} demo patients into schema {schema}")
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    with tempfile.TemporaryDirectory() as tmp:
        loaded = _load(url, patients, Path(tmp))
    # what autovacuum reaches some time after a bulk load: statistics and a visibility map
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    store = open_store(url, pool_size=1)
    _stamp(store, patients, loaded)
    store.close()
    return url


# --- query values drawn from the data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One patient and one of their Observations: the values every query kind is filled with."""

    patient_id: str
    mrn: str
    family: str
    obs_code: str
    obs_year: int
    observations: int


def draw_samples(store: Store, n: int) -> list[Sample]:
    """``n`` patients at random (seeded), each with one of their Observations at random."""
    rng = random.Random(f"bench-search-{SEED}")
    rows = store.query("SELECT res_id FROM resources WHERE res_type = 'Patient' AND NOT deleted ORDER BY rid")
    chosen = rng.sample([r[0] for r in rows], min(n, len(rows)))
    out = []
    for pid in chosen:
        patient = json.loads(store.read("Patient", pid).body)  # type: ignore[union-attr, arg-type]
        obs = store.query(
            "SELECT v.body FROM idx_reference p JOIN resources r ON r.rid = p.rid "
            "JOIN resource_versions v ON v.rid = r.rid AND v.version = r.version "
            "WHERE p.res_type = 'Observation' AND p.param = 'patient' AND p.target_type = 'Patient' "
            "AND p.target_id = ? AND NOT r.deleted ORDER BY r.rid",
            [pid],
        )
        if not obs:
            continue
        o = json.loads(rng.choice(obs)[0])
        out.append(
            Sample(
                patient_id=pid,
                mrn=next(i["value"] for i in patient["identifier"] if i["system"] == MRN),
                family=patient["name"][0]["family"],
                obs_code=o["code"]["coding"][0]["code"],
                obs_year=int(o["effectiveDateTime"][:4]),
                observations=len(obs),
            )
        )
    return out


# --- the query kinds: the FHIR query and the hand-written SQL for the same answer ----------------------------------

Pairs = list[tuple[str, str]]


# hand-written SQL columns: (0 for a match or 1 for an included resource, res_id, body, total, rid)
def _hints(d: str) -> tuple[str, Callable[[str], str]]:
    """How to pin a join order on each dialect: SQLite has no statistics, so the hand-written SQL says it.

    ``CROSS JOIN`` makes SQLite keep the tables in the written order, and ``INDEXED BY`` picks the rid
    index where a wider index with more equality columns would look better to it but read far more.
    PostgreSQL plans by cost from its statistics: plain joins.
    """
    if d == "sqlite":
        return "CROSS JOIN", lambda table: f" INDEXED BY {table}_rid"
    return "JOIN", lambda table: ""


def _body(j: str, alias: str = "r", body: str = "v") -> str:
    return f"{j} resource_versions {body} ON {body}.rid = {alias}.rid AND {body}.version = {alias}.version"


def _q_identifier(s: Sample) -> Pairs:
    return [("identifier", f"{MRN}|{s.mrn}"), ("_count", str(PAGE))]


def _h_identifier(d: str, s: Sample) -> tuple[str, list[Any]]:
    j, _ = _hints(d)
    return (
        f"""SELECT 0, r.res_id, v.body, COUNT(*) OVER (), r.rid
        FROM idx_token i {j} resources r ON r.rid = i.rid {_body(j)}
        WHERE i.res_type = 'Patient' AND i.param = 'identifier' AND i.system = ? AND i.code = ? AND NOT r.deleted
        ORDER BY r.rid LIMIT {PAGE}""",
        [MRN, s.mrn],
    )


def _q_name(s: Sample) -> Pairs:
    return [("name", s.family), ("_count", str(PAGE))]


def _h_name(d: str, s: Sample) -> tuple[str, list[Any]]:
    j, _ = _hints(d)
    prefix = normalise(s.family)
    if d == "postgresql":  # norm is COLLATE "C", where a LIKE prefix is an index range
        match, params = "i.norm LIKE ?", [prefix + "%"]
    else:  # SQLite's LIKE ignores case and skips the index: spell the range
        match, params = "i.norm >= ? AND i.norm < ?", [prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)]
    return (
        f"""SELECT 0, r.res_id, v.body, COUNT(*) OVER (), r.rid
        FROM resources r {_body(j)}
        WHERE r.rid IN (SELECT i.rid FROM idx_string i WHERE i.res_type = 'Patient' AND i.param = 'name' AND {match})
          AND NOT r.deleted
        ORDER BY r.rid LIMIT {PAGE}""",
        params,
    )


def _q_obs(s: Sample) -> Pairs:
    return [("patient", f"Patient/{s.patient_id}"), ("code", f"{LOINC}|{s.obs_code}"), ("_count", str(PAGE))]


def _obs_from(d: str) -> str:
    """A patient's Observations with a code: start from the patient's references, check the code by rid."""
    j, by_rid = _hints(d)
    return f"""idx_reference p
        {j} idx_token c{by_rid("idx_token")} ON c.rid = p.rid AND c.res_type = 'Observation' AND c.param = 'code'
          AND c.system = ? AND c.code = ?
        {j} resources r ON r.rid = p.rid"""


OBS_WHERE = "p.res_type = 'Observation' AND p.param = 'patient' AND p.target_type = 'Patient' AND p.target_id = ?"


def _h_obs(d: str, s: Sample) -> tuple[str, list[Any]]:
    j, _ = _hints(d)
    return (
        f"""SELECT 0, r.res_id, v.body, COUNT(*) OVER (), r.rid FROM {_obs_from(d)} {_body(j)}
        WHERE {OBS_WHERE} AND NOT r.deleted ORDER BY r.rid LIMIT {PAGE}""",
        [LOINC, s.obs_code, s.patient_id],
    )


def _q_obs_dates(s: Sample) -> Pairs:
    return [*_q_obs(s), ("date", f"ge{s.obs_year}-01-01"), ("date", f"lt{s.obs_year + 1}-01-01")]


def _h_obs_dates(d: str, s: Sample) -> tuple[str, list[Any]]:
    j, by_rid = _hints(d)
    # R4 prefixes on [low, high]: ge a day = ends after that day or lies within it; lt a day = starts before it
    y = s.obs_year
    day1, day2, end = (f"{y}-01-01T00:00:00.000000", f"{y}-01-02T00:00:00.000000", f"{y + 1}-01-01T00:00:00.000000")
    return (
        f"""SELECT 0, r.res_id, v.body, COUNT(*) OVER (), r.rid FROM {_obs_from(d)}
        {j} idx_date dt{by_rid("idx_date")} ON dt.rid = p.rid AND dt.res_type = 'Observation' AND dt.param = 'date'
          AND (dt.high >= ? OR (dt.low >= ? AND dt.high < ?)) AND dt.low < ?
        {_body(j)}
        WHERE {OBS_WHERE} AND NOT r.deleted ORDER BY r.rid LIMIT {PAGE}""",
        [LOINC, s.obs_code, day2, day1, day2, end, s.patient_id],
    )


def _q_include(s: Sample) -> Pairs:
    return [*_q_obs(s), ("_include", "Observation:patient"), ("_include", "Observation:encounter")]


def _h_include(d: str, s: Sample) -> tuple[str, list[Any]]:
    # the page's rids come from a sub-select rather than a CTE joined in: SQLite cannot tell a CTE holds ten
    # rows and builds a Bloom filter over the whole of idx_reference to join it
    j, by_rid = _hints(d)
    page = f"""SELECT r.rid FROM {_obs_from(d)} WHERE {OBS_WHERE} AND NOT r.deleted ORDER BY r.rid LIMIT {PAGE}"""
    return (
        f"""SELECT * FROM (
          SELECT 0 AS part, r.res_id, v.body, COUNT(*) OVER () AS total, r.rid FROM {_obs_from(d)} {_body(j)}
          WHERE {OBS_WHERE} AND NOT r.deleted ORDER BY r.rid LIMIT {PAGE}) AS page
        UNION ALL
        SELECT DISTINCT 1, t.res_id, tv.body, CAST(NULL AS BIGINT), t.rid
        FROM idx_reference i{by_rid("idx_reference")}
        {j} resources t ON t.res_type = i.target_type AND t.res_id = i.target_id AND NOT t.deleted
        {_body(j, "t", "tv")}
        WHERE i.rid IN ({page}) AND i.res_type = 'Observation' AND i.param IN ('patient', 'encounter')
        ORDER BY 1, 5""",
        [LOINC, s.obs_code, s.patient_id] * 2,
    )


def _q_revinclude(s: Sample) -> Pairs:
    return [*_q_identifier(s), ("_revinclude", "Encounter:patient")]


def _h_revinclude(d: str, s: Sample) -> tuple[str, list[Any]]:
    # as for _include: the page's ids come from a sub-select, not a CTE SQLite would build a Bloom filter to join
    j, _ = _hints(d)
    patient = "i.res_type = 'Patient' AND i.param = 'identifier' AND i.system = ? AND i.code = ? AND NOT r.deleted"
    return (
        f"""SELECT * FROM (
          SELECT 0 AS part, r.res_id, v.body, COUNT(*) OVER () AS total, r.rid
          FROM idx_token i {j} resources r ON r.rid = i.rid {_body(j)}
          WHERE {patient} ORDER BY r.rid LIMIT {PAGE}) AS page
        UNION ALL
        SELECT 1, e.res_id, ev.body, CAST(NULL AS BIGINT), e.rid
        FROM idx_reference x {j} resources e ON e.rid = x.rid AND NOT e.deleted {_body(j, "e", "ev")}
        WHERE x.res_type = 'Encounter' AND x.param = 'patient' AND x.target_type = 'Patient' AND x.target_id IN (
          SELECT r.res_id FROM idx_token i {j} resources r ON r.rid = i.rid
          WHERE {patient} ORDER BY r.rid LIMIT {PAGE})
        ORDER BY 1, 5""",
        [MRN, s.mrn] * 2,
    )


def _q_chain(s: Sample) -> Pairs:
    return [("encounter.patient.identifier", f"{MRN}|{s.mrn}"), ("_count", str(PAGE))]


def _h_chain(d: str, s: Sample) -> tuple[str, list[Any]]:
    j, _ = _hints(d)
    return (
        f"""SELECT 0, r.res_id, v.body, COUNT(*) OVER (), r.rid
        FROM idx_token i
        {j} resources pt ON pt.rid = i.rid AND NOT pt.deleted
        {j} idx_reference ep ON ep.res_type = 'Encounter' AND ep.param = 'patient' AND ep.target_type = 'Patient'
          AND ep.target_id = pt.res_id
        {j} resources e ON e.rid = ep.rid AND NOT e.deleted
        {j} idx_reference oe ON oe.res_type = 'Observation' AND oe.param = 'encounter' AND oe.target_type = 'Encounter'
          AND oe.target_id = e.res_id
        {j} resources r ON r.rid = oe.rid AND NOT r.deleted
        {_body(j)}
        WHERE i.res_type = 'Patient' AND i.param = 'identifier' AND i.system = ? AND i.code = ?
        ORDER BY r.rid LIMIT {PAGE}""",
        [MRN, s.mrn],
    )


def _q_has(s: Sample) -> Pairs:
    return [("_has:Observation:patient:code", f"{LOINC}|{s.obs_code}"), ("_count", str(PAGE))]


def _h_has(d: str, s: Sample) -> tuple[str, list[Any]]:
    j, by_rid = _hints(d)
    return (
        f"""SELECT 0, r.res_id, v.body, COUNT(*) OVER (), r.rid
        FROM resources r {_body(j)}
        WHERE r.res_type = 'Patient' AND NOT r.deleted AND r.res_id IN (
          SELECT p.target_id FROM idx_token c
          {j} resources o ON o.rid = c.rid AND NOT o.deleted
          {j} idx_reference p{by_rid("idx_reference")} ON p.rid = c.rid AND p.res_type = 'Observation'
            AND p.param = 'patient' AND p.target_type = 'Patient'
          WHERE c.res_type = 'Observation' AND c.param = 'code' AND c.system = ? AND c.code = ?)
        ORDER BY r.rid LIMIT {PAGE}""",
        [LOINC, s.obs_code],
    )


SORT_PAGE = 5


def _q_sort(s: Sample) -> Pairs:
    return [("patient", f"Patient/{s.patient_id}"), ("_sort", "-date"), ("_count", str(PAGE))]


def _h_sort(d: str, s: Sample) -> tuple[str, list[Any]]:
    j, _ = _hints(d)
    return (
        f"""SELECT 0, r.res_id, v.body, COUNT(*) OVER (), r.rid
        FROM idx_reference p {j} resources r ON r.rid = p.rid {_body(j)}
        WHERE {OBS_WHERE} AND NOT r.deleted
        ORDER BY (SELECT MAX(dt.high) FROM idx_date dt WHERE dt.rid = r.rid AND dt.param = 'date') DESC NULLS LAST,
          r.rid
        LIMIT {PAGE} OFFSET {PAGE * (SORT_PAGE - 1)}""",
        [s.patient_id],
    )


def _q_count(s: Sample) -> Pairs:
    return [("code", f"{LOINC}|{s.obs_code}"), ("_summary", "count")]


def _h_count(d: str, s: Sample) -> tuple[str, list[Any]]:
    j, _ = _hints(d)
    return (
        f"""SELECT COUNT(*) FROM idx_token c {j} resources r ON r.rid = c.rid
        WHERE c.res_type = 'Observation' AND c.param = 'code' AND c.system = ? AND c.code = ? AND NOT r.deleted""",
        [LOINC, s.obs_code],
    )


@dataclass(frozen=True)
class Kind:
    """A query kind of the workload: its FHIR query, its hand-written SQL, and whether it should be fast."""

    name: str
    rtype: str
    query: Callable[[Sample], Pairs]
    hand: Callable[[str, Sample], tuple[str, list[Any]]]
    selective: bool = True
    pages_before: int = 0  # follow this many next links first (keyset cursors), then measure the page after
    usable: Callable[[Sample], bool] = field(default=lambda s: True)


KINDS = [
    Kind("patient by identifier", "Patient", _q_identifier, _h_identifier),
    Kind("patient by name", "Patient", _q_name, _h_name),
    Kind("observations by patient + code", "Observation", _q_obs, _h_obs),
    Kind("observations by patient + code + date range", "Observation", _q_obs_dates, _h_obs_dates),
    Kind("_include (patient, encounter)", "Observation", _q_include, _h_include),
    Kind("_revinclude Encounter:patient", "Patient", _q_revinclude, _h_revinclude),
    Kind("chain encounter.patient.identifier", "Observation", _q_chain, _h_chain),
    Kind(
        "_sort=-date, page 5",
        "Observation",
        _q_sort,
        _h_sort,
        pages_before=SORT_PAGE - 1,
        usable=lambda s: s.observations > PAGE * (SORT_PAGE - 1),
    ),
    Kind("_has:Observation:patient:code", "Patient", _q_has, _h_has, selective=False),
    Kind("count Observation?code", "Observation", _q_count, _h_count, selective=False),
]


# --- one prepared call of each side, and their answers -------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What a search answers, reduced to what both sides must agree on."""

    ids: tuple[str, ...]
    total: int | None
    included: frozenset[str]


@dataclass
class Call:
    """One query kind filled with one sample: the engine's call, its URL, and the hand-written SQL."""

    rtype: str
    pairs: Pairs
    cursor: str | None
    sql: str
    params: list[Any]

    def engine(self, store: Store) -> SearchResult:
        """Run through the search engine as the REST layer does."""
        return run_search(store, self.rtype, self.pairs, strict=True, cursor=self.cursor)

    def by_hand(self, store: Store) -> list[tuple[Any, ...]]:
        """Run the hand-written SQL."""
        return store.query(self.sql, self.params)

    def url(self) -> str:
        """The same search over HTTP."""
        pairs = [*self.pairs, ("_cursor", self.cursor)] if self.cursor else self.pairs
        return f"/fhir/{self.rtype}?{urlencode(pairs)}"


def engine_answer(res: SearchResult) -> Answer:
    """The engine's answer."""
    return Answer(tuple(e[1] for e in res.entries), res.total, frozenset(e[1] for e in res.included))


def hand_answer(rows: list[tuple[Any, ...]], count_only: bool) -> Answer:
    """The hand-written SQL's answer."""
    if count_only:
        return Answer((), int(rows[0][0]), frozenset())
    matches = [r for r in rows if r[0] == 0]
    return Answer(
        tuple(r[1] for r in matches),
        int(matches[0][3]) if matches else None,
        frozenset(r[1] for r in rows if r[0] == 1),
    )


def prepare(store: Store, kind: Kind, samples: list[Sample]) -> list[Call]:
    """The kind's calls, one per usable sample; cursors for deep pages are fetched by following next links."""
    calls = []
    for s in samples:
        if not kind.usable(s):
            continue
        pairs = kind.query(s)
        cursor = None
        for _ in range(kind.pages_before):
            cursor = run_search(store, kind.rtype, pairs, strict=True, cursor=cursor).next_cursor
        sql, params = kind.hand(store.dialect, s)
        calls.append(Call(kind.rtype, pairs, cursor, sql, params))
    return calls


# --- latency --------------------------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """The nearest-rank percentile of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    """Milliseconds for the table."""
    return f"{seconds * 1000:.2f}"


@dataclass
class Latency:
    """Timings of one kind on one backend, ours and by hand, and whether every answer agreed."""

    ours: list[float] = field(default_factory=list)
    hand: list[float] = field(default_factory=list)
    mismatches: int = 0
    first_mismatch: str = ""


def measure(store: Store, kind: Kind, calls: list[Call]) -> Latency:
    """Alternate engine and hand-written SQL over the calls, so both see the same noise and the same caches."""
    lat = Latency()
    count_only = ("_summary", "count") in calls[0].pairs
    warm_until = time.perf_counter() + KIND_BUDGET_S / 4
    for call in calls:  # one untimed pass: both sides then read pages the cache already holds
        call.engine(store)
        call.by_hand(store)
        if time.perf_counter() > warm_until:
            break
    deadline = time.perf_counter() + KIND_BUDGET_S
    for i in range(ITERATIONS):
        call = calls[i % len(calls)]
        # who goes first alternates, and flips on each pass over the calls
        order = (0, 1) if (i + i // len(calls)) % 2 == 0 else (1, 0)
        for side in order:
            t0 = time.perf_counter()
            if side == 0:
                res = call.engine(store)
                lat.ours.append(time.perf_counter() - t0)
                ours = engine_answer(res)
            else:
                rows = call.by_hand(store)
                lat.hand.append(time.perf_counter() - t0)
                hand = hand_answer(rows, count_only)
        if ours != hand:
            lat.mismatches += 1
            lat.first_mismatch = lat.first_mismatch or f"{call.url()}\n  ours: {ours}\n  hand: {hand}"
        if time.perf_counter() > deadline and i >= 20:
            break
    return lat


# --- throughput -------------------------------------------------------------------------------------------------------


def lua_paths(paths: list[str], folder: Path, name: str) -> Path:
    """A wrk script that cycles GETs through ``paths`` (already URL-encoded)."""
    script = folder / f"{name}.lua"
    listed = ",\n".join(json.dumps(p) for p in paths)
    script.write_text(
        f"paths = {{\n{listed}\n}}\ni = 0\nrequest = function()\n  i = i % #paths + 1\n"
        '  return wrk.format("GET", paths[i])\nend\n'
    )
    return script


def interleave(per_kind: list[list[Call]]) -> list[Call]:
    """One call of each kind in turn, so every stretch of the mix has the same share of each kind."""
    out = []
    for i in range(max(len(c) for c in per_kind)):
        out += [c[i % len(c)] for c in per_kind]
    return out


def threads_rate(
    pool: ThreadPoolExecutor, store: Store, calls: list[Call], clients: int, fn: Callable[[Call, Store], Any]
) -> float:
    """Calls/s with ``clients`` threads in this process, each cycling through the mix from its own offset.

    The threads are the pool's, kept between runs: each holds its own SQLite connection (and page cache),
    which a fresh thread would have to open and fill first. An untimed second comes before the timed run.
    """

    def run_for(seconds: float) -> float:
        done = [0] * clients
        stop_at = time.perf_counter() + seconds

        def worker(k: int) -> None:
            i = k * len(calls) // clients
            while time.perf_counter() < stop_at:
                fn(calls[i % len(calls)], store)
                i += 1
                done[k] += 1

        started = time.perf_counter()
        for f in [pool.submit(worker, k) for k in range(clients)]:
            f.result()
        return sum(done) / (time.perf_counter() - started)

    run_for(1.0)
    return run_for(THREAD_SECONDS)


def wrk(url: str, script: Path, clients: int) -> tuple[float, str, str, int, int]:
    """(req/s, p50, p99, non-2xx, timeouts) of one wrk run; a slow search may take seconds, so wait 30 s."""
    cmd = ["wrk", "-t", str(min(clients, 2)), "-c", str(clients), "-d", DURATION, "--timeout", "30s", "--latency"]
    out = subprocess.run([*cmd, "-s", str(script), url], capture_output=True, text=True, timeout=600).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"\s50%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"\s99%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    timeouts = re.search(r"timeout (\d+)", out)
    return rps, p50, p99, int(bad.group(1)) if bad else 0, int(timeouts.group(1)) if timeouts else 0


# --- the run ----------------------------------------------------------------------------------------------------------


def databases(patients: int) -> Iterator[tuple[str, str]]:
    """(backend, URL) of the cached population on each backend; PostgreSQL only when reachable."""
    yield "SQLite", sqlite_url(patients)
    if pg_available():
        yield "PostgreSQL", postgres_url(patients)
    else:
        print(f"PostgreSQL not reachable at {PG_URL}: its figures are skipped")


def run(report: Report, patients: int = 10_000) -> None:
    """Latency of each query kind against hand-written SQL, then throughput of the mix, on each backend."""
    latency_rows: list[list[str]] = []
    throughput_rows: list[list[str]] = []
    problems: list[str] = []
    have_wrk = shutil.which("wrk") is not None
    if not have_wrk:
        print("wrk is not installed (apt-get install wrk): HTTP throughput skipped")
    for backend, url in databases(patients):
        store = open_store(url, pool_size=max(CLIENTS) + 2)
        resources = int(store.query("SELECT COUNT(*) FROM resources")[0][0])
        samples = draw_samples(store, SAMPLES)
        prepared: dict[str, list[Call]] = {}
        for kind in KINDS:
            calls = prepare(store, kind, samples)
            if not calls:
                print(f"  {kind.name}: no sample fits, skipped")
                continue
            prepared[kind.name] = calls
            lat = measure(store, kind, calls)
            p50, p95, p99 = (pct(lat.ours, p) for p in (50, 95, 99))
            h50, h95 = pct(lat.hand, 50), pct(lat.hand, 95)
            ratio = p50 / h50
            verdicts = []
            if kind.selective and p95 * 1000 > P95_TARGET_MS:
                verdicts.append(f"p95 > {P95_TARGET_MS:.0f} ms")
            if ratio > RATIO_TARGET:
                verdicts.append(f"> {RATIO_TARGET:.0f}x hand SQL")
            if lat.mismatches:
                verdicts.append(f"{lat.mismatches} answers differ")
                problems.append(f"{backend} {kind.name}: {lat.first_mismatch}")
            latency_rows.append(
                [
                    kind.name,
                    backend,
                    "yes" if kind.selective else "no",
                    str(len(lat.ours)),
                    ms(p50),
                    ms(p95),
                    ms(p99),
                    ms(h50),
                    ms(h95),
                    f"{ratio:.2f}",
                    "; ".join(verdicts) or "ok",
                ]
            )
            print("  ", latency_rows[-1], flush=True)
        mixes = {
            "all kinds": interleave(list(prepared.values())),
            "selective kinds": interleave([c for k in KINDS if k.selective and (c := prepared.get(k.name))]),
        }
        with (
            tempfile.TemporaryDirectory() as tmp,
            serving(url, Path(tmp)) if have_wrk else _nothing() as base,
            ThreadPoolExecutor(max(CLIENTS)) as pool,
        ):
            for mix, calls in mixes.items():
                script = lua_paths([c.url() for c in calls], Path(tmp), mix.replace(" ", "-")) if base else None
                for clients in CLIENTS:
                    http = wrk(f"{base}/fhir/metadata", script, clients) if base and script else None
                    ours = threads_rate(pool, store, calls, clients, lambda c, s: c.engine(s))
                    hand = threads_rate(pool, store, calls, clients, lambda c, s: c.by_hand(s))
                    rps = http[0] if http else ours
                    throughput_rows.append(
                        [
                            backend,
                            mix,
                            str(clients),
                            f"{http[0]:,.0f}" if http else "-",
                            http[1] if http else "-",
                            http[2] if http else "-",
                            str(http[3]) if http else "-",
                            str(http[4]) if http else "-",
                            f"{ours:,.0f}",
                            f"{hand:,.0f}",
                            f"{rps / hand:.2f}",
                        ]
                    )
                    print("  ", throughput_rows[-1], flush=True)
        store.close()
        print(f"  {backend}: {resources:,} resources, {len(samples)} sampled patients")
    report.add(
        f"Search latency by query kind ({patients:,} demo patients)",
        f"`salus demo --patients {patients}` (seed {SEED}, about {demo.estimate(patients):,} resources) on each backend; "
        f"each kind runs in-process through `run_search` up to {ITERATIONS} times with values drawn from {SAMPLES} "
        f"random patients (pages of {PAGE}, totals included), alternating with one hand-written SQL statement per "
        "dialect that returns the same answer from the same tables (`bench/search_load.py`); every pair of answers "
        "is compared. Milliseconds. Ratio = our p50 / hand SQL p50. Both databases have planner statistics: "
        "the import runs `ANALYZE` after a large load, and PostgreSQL gets a `VACUUM ANALYZE` as autovacuum would. "
        f"Targets: p95 under {P95_TARGET_MS:.0f} ms for the selective kinds, no kind more than {RATIO_TARGET:.0f}x "
        "its hand-written SQL.",
        [
            "query kind",
            "backend",
            "selective",
            "runs",
            "p50",
            "p95",
            "p99",
            "hand SQL p50",
            "hand SQL p95",
            "ratio",
            "verdict",
        ],
        latency_rows,
    )
    report.add(
        "Search throughput under concurrency",
        f"wrk on 127.0.0.1, {DURATION} per cell, `salus serve --workers {WORKERS}` "
        "over the same database, cycling through the prepared searches of the mix (one of each kind in turn). "
        f"Baselines, {THREAD_SECONDS:.0f}s each: the same calls in-process with as many threads, through `run_search` "
        "(ours in-process) and as the hand-written SQL (hand SQL). Ratio = HTTP req/s / hand SQL calls/s.",
        [
            "backend",
            "mix",
            "clients",
            "HTTP req/s",
            "p50",
            "p99",
            "non-2xx",
            "timeouts (30 s)",
            "ours in-process /s",
            "hand SQL /s",
            "ratio",
        ],
        throughput_rows,
    )
    for p in problems:
        print(f"ANSWERS DIFFER: {p}")


@contextmanager
def _nothing() -> Iterator[None]:
    yield None
