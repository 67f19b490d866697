"""Measure ``index_rows`` throughput on Synthea bulk-100 against a fhirpathpy-only baseline.

Run: ``PYTHONPATH=src python tests/search/bench_index_rows.py [corpus dir]`` (not collected by pytest).
The baseline evaluates every non-composite parameter with fhirpathpy and no
top-level-key precheck, then normalises values the same way (composites use
the fast path in both, fhirpathpy cannot evaluate their relative components).
"""

from __future__ import annotations

import gzip
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from salus.fhir.definitions import search_parameters
from salus.fhir.fhirpath import compiled
from salus.search.indexing import _rows, composite, index_rows, plans

CORPUS = Path(__file__).resolve().parents[3] / "shared/corpora/synthea-r4/bulk-100"


def load(folder: Path) -> list[dict[str, Any]]:
    """Every resource of the gzip NDJSON files in ``folder``."""
    out: list[dict[str, Any]] = []
    for f in sorted(folder.glob("*.ndjson.gz")):
        with gzip.open(f, "rb") as fh:
            out += [orjson.loads(line) for line in fh if line.strip()]
    return out


def index_rows_fhirpath(resource: dict[str, Any]) -> dict[str, list[tuple[Any, ...]]]:
    """The baseline: every expression through fhirpathpy."""
    rt = resource["resourceType"]
    out: dict[str, list[tuple[Any, ...]]] = {}

    def add(table: str, row: tuple[Any, ...]) -> None:
        out.setdefault(table, []).append(row)

    params = search_parameters(rt)
    for plan in plans(rt):
        if plan.module is None:
            composite.extract_groups(
                plan.code, plan.values(resource, rt), plan.components, lambda m, v, t: m.extract(v, t), add
            )
            continue
        try:
            values = [(v, None) for v in compiled(params[plan.code]["expression"])(resource)]
        except Exception:  # e.g. 'as' on a collection of several: fhirpathpy raises, indexing must not
            continue
        if values:
            _rows(plan, plan.module, values, lambda m, v, t: m.extract(v, t), add)
    return out


def rate(fn: Any, resources: list[dict[str, Any]]) -> tuple[float, int]:
    """Resources per second and rows produced."""
    for r in resources[:200]:
        fn(r)  # warm the plan caches outside the timing
    t = time.perf_counter()
    rows = 0
    for r in resources:
        rows += sum(len(v) for v in fn(r).values())
    return len(resources) / (time.perf_counter() - t), rows


def main() -> None:
    """Print both rates."""
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS
    resources = load(folder)
    fast, fast_rows = rate(index_rows, resources)
    base, base_rows = rate(index_rows_fhirpath, resources)
    print(f"{len(resources)} resources from {folder}")
    print(f"index_rows (fast path):  {fast:10.0f} resources/s  {fast_rows} rows")
    print(f"fhirpathpy-only baseline: {base:10.0f} resources/s  {base_rows} rows")
    print(f"speed-up: {fast / base:.1f}x")


if __name__ == "__main__":
    main()
