"""Import rate (resources/s) with validation and indexing, against a raw bulk insert of the same JSON."""

from __future__ import annotations

import gzip
import tempfile
import time
from pathlib import Path

from bench.common import CORPORA, Report, backends, rate
from salus import demo
from salus.config import Settings
from salus.loader import import_resources
from salus.service import FhirService
from salus.store import open_store


def load_lines(folder: Path) -> list[bytes]:
    """Every NDJSON line of a bulk folder, in import order."""
    lines: list[bytes] = []
    for f in sorted(folder.glob("*.ndjson.gz")):
        with gzip.open(f) as fh:
            lines += [line.rstrip(b"\n") for line in fh if line.strip()]
    return lines


def raw_insert(url: str, lines: list[bytes]) -> float:
    """Seconds to bulk-insert the same JSON text into one table of the same database (the ceiling)."""
    import orjson

    store = open_store(url)
    store.query("DROP TABLE IF EXISTS raw_json")
    store.query("CREATE TABLE raw_json (res_type TEXT, res_id TEXT, body TEXT)")
    start = time.perf_counter()
    if store.dialect == "postgresql":
        with store.pool.connection() as conn, conn.cursor() as cur, \
                cur.copy("COPY raw_json (res_type, res_id, body) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for line in lines:
                r = orjson.loads(line)
                copy.write_row((r["resourceType"], r["id"], line.decode()))
    else:
        with store.transaction() as tx:
            rows = []
            for line in lines:
                r = orjson.loads(line)
                rows.append((r["resourceType"], r["id"], line.decode()))
            tx._executemany("INSERT INTO raw_json VALUES (?, ?, ?)", rows)  # type: ignore[attr-defined]
    seconds = time.perf_counter() - start
    store.query("DROP TABLE raw_json")
    store.close()
    return seconds


def ours(url: str, items: list[tuple[str, object]]) -> tuple[int, float, int]:
    """(loaded, seconds, rejected) for Salus's import path: validate, index, version, write."""
    service = FhirService(open_store(url), Settings())
    start = time.perf_counter()
    report = import_resources(service, items)
    seconds = time.perf_counter() - start
    service.store.close()
    return report.total_loaded, seconds, len(report.rejected)


def run(report: Report, patients: int = 1000) -> None:
    """Import bulk-615 and a demo population on each backend."""
    import orjson

    datasets: list[tuple[str, list[bytes]]] = []
    bulk = CORPORA / "synthea-r4" / "bulk-615"
    if bulk.exists():
        datasets.append(("synthea bulk-615", load_lines(bulk)))
    datasets.append((f"salus demo --patients {patients}", [orjson.dumps(r) for r in demo.generate(patients, 1)]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, lines in datasets:
            for backend, url in backends(Path(tmp)):
                raw_s = raw_insert(url, lines)
                items = [("bench", orjson.loads(line)) for line in lines]
                n, s, rejected = ours(url, items)
                rows.append([name, backend, f"{n:,}", rate(n, s), rate(len(lines), raw_s),
                             f"{(n / s) / (len(lines) / raw_s):.2f}", str(rejected)])
                print("  ", rows[-1])
    report.add(
        "Import rate",
        "Resources/s through `salus import`'s path (parse, validate, index, version, write in batches of 500), "
        "against a raw bulk insert of the same JSON lines into one table of the same database "
        "(SQLite `executemany`, PostgreSQL `COPY`). Target: >= 3,000/s on SQLite.",
        ["data", "backend", "resources", "ours /s", "raw insert /s", "ratio ours/raw", "rejected"],
        rows,
    )
