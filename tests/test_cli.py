"""The command line as scripts use it: import with a report, export, db upgrade, and a SIGKILL mid-import."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from salus.store import open_store
from tests.conftest import corpus

SALUS = [sys.executable, "-m", "salus"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SALUS, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_help_explains_every_command() -> None:
    out = run("--help").stdout
    for cmd in ("serve", "demo", "import", "export", "db"):
        assert cmd in out
    assert "--workers" in run("serve", "--help").stdout


def test_import_reports_loaded_and_rejected_then_export(tmp_path: Path) -> None:
    good = [{"resourceType": "Patient", "id": f"p{i}", "gender": "female"} for i in range(3)]
    bad = {"resourceType": "Patient", "id": "bad", "gender": "robot"}
    src = tmp_path / "in.ndjson"
    src.write_text("\n".join(orjson.dumps(r).decode() for r in [*good, bad]) + "\n{broken json\n")
    data = tmp_path / "data"
    res = run("import", str(src), "--data-dir", str(data))
    assert res.returncode == 1, res.stderr
    assert "3 resources loaded" in res.stderr
    assert "2 rejected" in res.stderr
    assert "Patient/bad" in res.stderr and "gender" in res.stderr
    out = tmp_path / "out"
    res = run("export", str(out), "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    lines = (out / "Patient.ndjson").read_text().splitlines()
    assert sorted(orjson.loads(line)["id"] for line in lines) == ["p0", "p1", "p2"]
    assert run("db", "upgrade", "--data-dir", str(data)).returncode == 0


def test_sigkill_during_import_leaves_only_whole_transactions(backend: str, tmp_path: Path) -> None:
    src = corpus("synthea-r4", "bulk-100")
    data = tmp_path / "data"
    env = {**os.environ, "SALUS_DATABASE_URL": backend}
    proc = subprocess.Popen([*SALUS, "import", str(src), "--data-dir", str(data)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    store = None
    # wait until a few batches have committed, then kill without warning
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            store = store or open_store(backend, pool_size=1)
            if store.query("SELECT COUNT(*) FROM resources")[0][0] >= 1500:
                break
        except Exception:  # the importer may not have created the schema yet
            continue
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert store is not None
    n = store.query("SELECT COUNT(*) FROM resources")[0][0]
    assert n >= 1500
    # the import commits in batches of 500 over all files: what is there must end on a batch boundary
    total = 0
    for f in sorted(src.glob("*.ndjson.gz")):
        with gzip.open(f) as fh:
            total += sum(1 for line in fh if line.strip())
    boundaries = {*range(0, total, 500), total}
    assert n in boundaries, n
    assert n < total, "the import finished before the kill: nothing was interrupted"
    assert store.query("SELECT COUNT(*) FROM resources r LEFT JOIN resource_versions v "
                       "ON v.rid = r.rid AND v.version = r.version WHERE v.rid IS NULL")[0][0] == 0
    assert store.query("SELECT COUNT(*) FROM resource_versions")[0][0] == n
    for table in ("idx_token", "idx_reference", "idx_date", "refs"):
        assert store.query(f"SELECT COUNT(*) FROM {table} t LEFT JOIN resources r ON r.rid = t.rid "
                           "WHERE r.rid IS NULL")[0][0] == 0
    assert store.query("SELECT COUNT(DISTINCT rid) FROM idx_reference")[0][0] > 0
    if backend.startswith("sqlite"):
        assert store.query("PRAGMA integrity_check")[0][0] == "ok"
    # the store serves what was committed
    with gzip.open(sorted(src.glob("AllergyIntolerance*"))[0]) as fh:
        first_id = orjson.loads(fh.readline())["id"]
    got = store.read("AllergyIntolerance", first_id)
    assert got is not None and orjson.loads(got.body or "{}")["id"] == first_id
    store.close()


def test_a_newer_database_is_refused_with_a_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run("db", "upgrade", "--data-dir", str(data)).returncode == 0
    store = open_store(f"sqlite:///{data / 'salus.db'}")
    with store.transaction() as tx:
        tx.query("UPDATE salus_meta SET value = '999' WHERE key = 'schema_version'")
    store.close()
    res = run("db", "upgrade", "--data-dir", str(data))
    assert res.returncode == 2
    assert "schema version 999" in res.stderr and "Traceback" not in res.stderr
