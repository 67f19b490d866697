"""Reading FHIR files for import (NDJSON, .ndjson.gz, Bundle JSON, folders) and loading them in batches.

Used by ``salus import`` and ``salus demo``; it is a door like REST, so every
resource goes through the service (validation, indexing, versioning).
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from salus.fhir.outcome import FhirError
from salus.fhir.validate import validate
from salus.service import FhirService
from salus.service.transaction import process_bundle

SUFFIXES = (".ndjson", ".ndjson.gz", ".json", ".json.gz")


@dataclass
class ImportReport:
    """What an import loaded and what it rejected, and why."""

    loaded: Counter[str] = field(default_factory=Counter)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (where, why)

    @property
    def total_loaded(self) -> int:
        """Resources written."""
        return sum(self.loaded.values())


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files to import: the files given, and the FHIR files inside folders given (sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES)))
        else:
            out.append(p)
    return out


def _open_text(path: Path) -> Any:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def read_file(path: Path) -> Iterator[tuple[str, Any]]:
    """``(location, parsed JSON or an exception)`` for every resource or Bundle in a file."""
    name = path.name.removesuffix(".gz")
    with _open_text(path) as f:
        if name.endswith(".ndjson"):
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield f"{path.name}:{n}", orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        yield f"{path.name}:{n}", exc
        else:
            try:
                yield path.name, orjson.loads(f.read())
            except orjson.JSONDecodeError as exc:
                yield path.name, exc


def import_resources(
    service: FhirService, items: Iterable[tuple[str, Any]], *, batch_size: int = 500,
    progress: Callable[[int], None] | None = None, report: ImportReport | None = None,
) -> ImportReport:
    """Validate and load resources in batches; Bundles of type batch/transaction run as such."""
    report = report or ImportReport()
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if not batch:
            return
        try:
            service.load(batch, validate=False)
            report.loaded.update(r["resourceType"] for r in batch)
        except FhirError:
            # one bad row must not cost the batch: retry one by one to name it
            for r in batch:
                try:
                    service.load([r], validate=False)
                    report.loaded[r["resourceType"]] += 1
                except FhirError as err:
                    report.rejected.append((f"{r['resourceType']}/{r.get('id')}", err.message))
        if progress:
            progress(len(batch))
        batch.clear()

    for where, obj in items:
        if isinstance(obj, Exception):
            report.rejected.append((where, f"not valid JSON: {obj}"))
            continue
        if isinstance(obj, dict) and obj.get("resourceType") == "Bundle" and obj.get("type") in ("batch", "transaction"):
            flush()
            try:
                resp = process_bundle(service, obj, "")
                for e in resp.get("entry", []):
                    loc = e.get("response", {}).get("location", "")
                    if loc:
                        report.loaded[loc.split("/")[0]] += 1
            except FhirError as err:
                report.rejected.append((where, err.message))
            continue
        if isinstance(obj, dict) and obj.get("resourceType") == "Bundle" and obj.get("type") in ("collection", "searchset"):
            inner = [(f"{where}#entry[{i}]", e.get("resource")) for i, e in enumerate(obj.get("entry", []))]
            import_resources(service, inner, batch_size=batch_size, progress=progress, report=report)
            continue
        issues = validate(obj)
        if any(i.severity in ("error", "fatal") for i in issues):
            rt = obj.get("resourceType") if isinstance(obj, dict) else None
            label = f"{where} ({rt}/{obj.get('id')})" if rt else where
            report.rejected.append((label, FhirError(400, issues).message))
            continue
        batch.append(obj)
        if len(batch) >= batch_size:
            flush()
    flush()
    return report
