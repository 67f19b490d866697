"""Reading FHIR files for import (NDJSON, .ndjson.gz, Bundle JSON, folders) and loading them in batches.

Used by ``salus import`` and ``salus demo``; it is a door like REST, so every
resource goes through the service (validation, indexing, versioning).
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson

from salus.fhir.definitions import is_resource_type
from salus.fhir.outcome import FhirError
from salus.fhir.refs import rewrite_references
from salus.fhir.validate import validate
from salus.service import FhirService
from salus.service.transaction import process_bundle

SUFFIXES = (".ndjson", ".ndjson.gz", ".json", ".json.gz")
# a load this large changes the tables' shape enough that the query planner needs fresh statistics
ANALYZE_AFTER = 5000


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


_CONDITIONAL = re.compile(rb'"reference":"[A-Z][A-Za-z]+\?')


def has_conditional_reference(resource: Any) -> bool:
    """Whether a resource points at others by search (``Practitioner?identifier=...``), as bulk exports do."""
    # a regex over the compact JSON is several times cheaper than walking every element
    return _CONDITIONAL.search(orjson.dumps(resource)) is not None


def resolve_conditional_references(service: FhirService, resource: dict[str, Any]) -> None:
    """Rewrite each ``Type?query`` reference to the single resource it matches; 422 otherwise."""

    def resolve(ref: str) -> str | None:
        head, sep, query = ref.partition("?")
        if not sep or "/" in head:
            return None
        if not is_resource_type(head):
            raise FhirError.of(422, "processing", f"conditional reference {ref!r} names an unknown resource type")
        matches = service.search(head, parse_qsl(query, keep_blank_values=True), count=2).entries
        if len(matches) != 1:
            raise FhirError.of(422, "processing", f"conditional reference {ref!r} matches {len(matches)} resources")
        return f"{head}/{matches[0][1]}"

    rewrite_references(resource, resolve)


class _Importer:
    """One import: batches, Bundles, and resources whose conditional references wait for their targets."""

    def __init__(self, service: FhirService, batch_size: int, progress: Callable[[int], None] | None,
                 report: ImportReport) -> None:
        self.service = service
        self.batch_size = batch_size
        self.progress = progress
        self.report = report
        self.batch: list[dict[str, Any]] = []
        # bulk files come type by type: Encounter's "Practitioner?identifier=..." can only be
        # resolved once the Practitioner file is in, so such resources are loaded last
        self.deferred: list[tuple[str, dict[str, Any]]] = []

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        if not batch:
            return
        try:
            self.service.load(batch, validate=False)
            self.report.loaded.update(r["resourceType"] for r in batch)
        except FhirError:
            # one bad row must not cost the batch: retry one by one to name it
            for r in batch:
                try:
                    self.service.load([r], validate=False)
                    self.report.loaded[r["resourceType"]] += 1
                except FhirError as err:
                    self.report.rejected.append((f"{r['resourceType']}/{r.get('id')}", err.message))
        if self.progress:
            self.progress(len(batch))

    def reject(self, where: str, obj: Any, why: str) -> None:
        rt = obj.get("resourceType") if isinstance(obj, dict) else None
        self.report.rejected.append((f"{where} ({rt}/{obj.get('id')})" if rt else where, why))

    def feed(self, where: str, obj: Any) -> None:
        if isinstance(obj, Exception):
            self.report.rejected.append((where, f"not valid JSON: {obj}"))
            return
        if isinstance(obj, dict) and obj.get("resourceType") == "Bundle" and obj.get("type") in ("batch", "transaction"):
            self.flush()
            try:
                resp = process_bundle(self.service, obj, "")
                for e in resp.get("entry", []):
                    loc = e.get("response", {}).get("location", "")
                    if loc:
                        self.report.loaded[loc.split("/")[0]] += 1
            except FhirError as err:
                self.report.rejected.append((where, err.message))
            return
        if isinstance(obj, dict) and obj.get("resourceType") == "Bundle" and obj.get("type") in ("collection", "searchset"):
            for i, e in enumerate(obj.get("entry", [])):
                self.feed(f"{where}#entry[{i}]", e.get("resource") if isinstance(e, dict) else e)
            return
        if isinstance(obj, dict) and has_conditional_reference(obj):
            self.deferred.append((where, obj))
            return
        self.add(where, obj)

    def add(self, where: str, obj: Any) -> None:
        issues = validate(obj)
        if any(i.severity in ("error", "fatal") for i in issues):
            self.reject(where, obj, FhirError(400, issues).message)
            return
        self.batch.append(obj)
        if len(self.batch) >= self.batch_size:
            self.flush()

    def finish(self) -> None:
        self.flush()
        for where, obj in self.deferred:
            try:
                resolve_conditional_references(self.service, obj)
            except FhirError as err:
                self.reject(where, obj, err.message)
                continue
            self.add(where, obj)
        self.deferred.clear()
        self.flush()
        if self.report.total_loaded >= ANALYZE_AFTER:
            self.service.store.analyze()


def import_resources(
    service: FhirService, items: Iterable[tuple[str, Any]], *, batch_size: int = 500,
    progress: Callable[[int], None] | None = None, report: ImportReport | None = None,
) -> ImportReport:
    """Validate and load resources in batches; Bundles of type batch/transaction run as such.

    Resources with conditional references are loaded after everything else, once their
    targets can be found; each must match exactly one resource or it is rejected.
    """
    importer = _Importer(service, batch_size, progress, report or ImportReport())
    for where, obj in items:
        importer.feed(where, obj)
    importer.finish()
    return importer.report
