"""The Synthea population imports completely and every resource reads back equal (apart from meta), on both stores."""

from __future__ import annotations

import gzip
from collections import Counter

import orjson

from salus.loader import import_resources, read_file
from tests.conftest import corpus


def test_bulk_100_imports_completely_and_reads_back_equal(service) -> None:  # type: ignore[no-untyped-def]
    folder = corpus("synthea-r4", "bulk-100")
    files = sorted(folder.glob("*.ndjson.gz"))
    report = None
    for f in files:
        report = import_resources(service, read_file(f), report=report)
    assert report is not None
    assert report.rejected == []
    expected: Counter[str] = Counter()
    for f in files:
        with gzip.open(f) as fh:
            for line in fh:
                if not line.strip():
                    continue
                original = orjson.loads(line)
                expected[original["resourceType"]] += 1
                stored = service.read(original["resourceType"], original["id"])
                got = orjson.loads(stored.body)
                got.pop("meta")
                original.pop("meta", None)
                assert got == original, f"{original['resourceType']}/{original['id']} differs"
    assert report.loaded == expected
    assert sum(expected.values()) == 26160
    # references inside the set all resolve, so nothing references a missing resource
    orphans = service.store.query(
        "SELECT COUNT(*) FROM refs f LEFT JOIN resources r ON r.res_type = f.target_type AND r.res_id = f.target_id "
        "WHERE r.rid IS NULL"
    )[0][0]
    assert orphans == 0
    # and searching works over the imported data
    patient_id = service.store.query("SELECT res_id FROM resources WHERE res_type = 'Patient' ORDER BY rid LIMIT 1")[0][0]
    found = service.search("Observation", [("subject", f"Patient/{patient_id}")], count=1000)
    assert found.entries and all(orjson.loads(b)["subject"]["reference"] == f"Patient/{patient_id}" for _, _, b in found.entries)


def test_bulk_load_handles_repeats_and_existing_resources(service) -> None:  # type: ignore[no-untyped-def]
    service.load([{"resourceType": "Patient", "id": "a", "gender": "male"}])
    service.load([
        {"resourceType": "Patient", "id": "a", "gender": "female"},  # exists: becomes version 2
        {"resourceType": "Patient", "id": "b", "gender": "male"},  # new: bulk path
        {"resourceType": "Patient", "id": "b", "gender": "other"},  # repeat in the batch: version 2
    ])
    assert service.read("Patient", "a").version == 2
    b = service.read("Patient", "b")
    assert b.version == 2 and orjson.loads(b.body)["gender"] == "other"
    assert [rid for _, rid, _ in service.search("Patient", [("gender", "other")]).entries] == ["b"]
    assert service.search("Patient", [("gender", "male")]).entries == []
    versions, total = service.history("Patient", "b")
    assert total == 2 and [v.version for v in versions] == [2, 1]


def test_bulk_export_with_conditional_references_resolves_them(service) -> None:  # type: ignore[no-untyped-def]
    import itertools

    folder = corpus("synthea-bulk-10-partial")
    files = sorted(f for f in folder.glob("*.ndjson.gz") if not f.name.startswith("log."))
    report = import_resources(service, itertools.chain.from_iterable(read_file(f) for f in files))
    assert report.rejected == []
    assert report.loaded["Encounter"] == 1215
    # Encounter.participant.individual came as "Practitioner?identifier=...|npi": now a literal reference
    enc = service.search("Encounter", [("_count", "5")], count=5).entries
    for _, _, body in enc:
        for p in orjson.loads(body).get("participant", []):
            ref = p["individual"]["reference"]
            assert ref.startswith("Practitioner/") and "?" not in ref
            service.read("Practitioner", ref.split("/")[1])
    # and nothing points at a resource that does not exist
    orphans = service.store.query(
        "SELECT COUNT(*) FROM refs f LEFT JOIN resources r ON r.res_type = f.target_type AND r.res_id = f.target_id "
        "WHERE r.rid IS NULL AND f.target_type IN ('Practitioner', 'Location', 'Organization', 'Patient')"
    )[0][0]
    assert orphans == 0
