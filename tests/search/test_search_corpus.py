"""Indexing real data: every Synthea bulk-100 resource indexes, and the fast path agrees with fhirpathpy."""

from __future__ import annotations

import gzip
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from salus.fhir.definitions import search_parameters
from salus.fhir.fhirpath import compiled
from salus.search.indexing import index_rows, plans

CORPORA = Path(__file__).resolve().parents[3] / "shared/corpora"
BULK = CORPORA / "synthea-r4/bulk-100"
EXAMPLES = CORPORA / "fhir-r4-examples/examples"


def _bulk() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in sorted(BULK.glob("*.ndjson.gz")):
        with gzip.open(f, "rb") as fh:
            out += [orjson.loads(line) for line in fh if line.strip()]
    return out


@pytest.fixture(scope="module")
def bulk() -> list[dict[str, Any]]:
    """Every resource of bulk-100 (26,160)."""
    if not BULK.is_dir():
        pytest.skip(f"corpus not found at {BULK}")
    return _bulk()


def test_every_resource_indexes(bulk: list[dict[str, Any]]) -> None:
    """No resource fails, and the rows searches rely on are there."""
    per_param: Counter[tuple[str, str]] = Counter()
    for r in bulk:
        for rows in index_rows(r).values():
            per_param.update({(r["resourceType"], row[0]) for row in rows})
    types = Counter(r["resourceType"] for r in bulk)
    assert per_param["Observation", "code"] == types["Observation"]
    assert per_param["Observation", "patient"] == types["Observation"]  # subject is a Patient in Synthea
    assert per_param["Observation", "date"] == types["Observation"]
    assert per_param["Patient", "name"] == per_param["Patient", "birthdate"] == types["Patient"] == 100
    assert per_param["Encounter", "date"] == types["Encounter"]
    assert per_param["Observation", "component-code-value-quantity#0"] > 0


def _canon(v: Any) -> Any:
    # fhirpathpy turns JSON floats into Decimal; compare on that footing
    if isinstance(v, float):
        return Decimal(repr(v))
    if isinstance(v, dict):
        return {k: _canon(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_canon(x) for x in v]
    return v


def _key(v: Any) -> bytes:
    return orjson.dumps(_canon(v), default=str, option=orjson.OPT_SORT_KEYS)


def _compare(resources: list[dict[str, Any]]) -> tuple[int, Counter[tuple[str, str]], int]:
    compared, differ, fp_errors = 0, Counter[tuple[str, str]](), 0
    for r in resources:
        rt = r["resourceType"]
        params = search_parameters(rt)
        for plan in plans(rt):
            if plan.program is None or plan.module is None:
                continue
            fast = {_key(v) for v, _ in plan.program.run(r, rt)}
            try:
                slow = {_key(v) for v in compiled(params[plan.code]["expression"])(r)}
            except Exception:
                # fhirpathpy rejects 'as' on a collection of several (component.value as Quantity);
                # the fast path casts each, which is what the parameter means
                fp_errors += 1
                continue
            compared += 1
            if fast != slow:
                differ[rt, plan.code] += 1
    return compared, differ, fp_errors


def test_fast_path_equals_fhirpathpy_on_synthea(bulk: list[dict[str, Any]]) -> None:
    """The typed dict walk selects exactly what fhirpathpy selects (a sample of every type, for time)."""
    seen: Counter[str] = Counter()
    sample = []
    for r in bulk:
        seen[r["resourceType"]] += 1
        if seen[r["resourceType"]] <= 400:
            sample.append(r)
    compared, differ, _ = _compare(sample)
    assert compared > 20000
    assert not differ


def test_fast_path_equals_fhirpathpy_on_spec_examples() -> None:
    """The same on the official R4 examples (130 resource types)."""
    if not EXAMPLES.is_dir():
        pytest.skip(f"corpus not found at {EXAMPLES}")
    resources = [orjson.loads(f.read_bytes()) for f in sorted(EXAMPLES.glob("*.json"))]
    resources = [r for r in resources if isinstance(r, dict) and "resourceType" in r]
    for r in resources:
        index_rows(r)  # every official example indexes
    compared, differ, _ = _compare(resources)
    assert compared > 10000
    assert not differ
