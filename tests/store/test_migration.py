"""Schema versions: an older database is brought up to date on open; a newer one is refused, untouched."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from salus.store import open_store
from salus.store.schema import SCHEMA_VERSION, SchemaTooNew
from tests.conftest import PG_URL, _pg_available, need


def _version(url: str) -> str:
    store = open_store(url, pool_size=1) if url.startswith("postgresql") else open_store(url)
    try:
        return store.query("SELECT value FROM salus_meta WHERE key = 'schema_version'")[0][0]
    finally:
        store.close()


def test_newer_schema_is_refused_and_left_alone(backend: str) -> None:
    assert _version(backend) == str(SCHEMA_VERSION)
    store = open_store(backend, pool_size=1) if backend.startswith("postgresql") else open_store(backend)
    with store.transaction() as tx:
        tx.query("UPDATE salus_meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    store.close()
    try:
        with pytest.raises(SchemaTooNew, match="newer than this Salus"):
            open_store(backend)
        # the refused open wrote nothing: the version is still the newer one
        with pytest.raises(SchemaTooNew):
            open_store(backend)
    finally:
        if backend.startswith("postgresql"):  # the session's schema is shared with the other tests
            with psycopg.connect(backend, autocommit=True) as conn:
                conn.execute("UPDATE salus_meta SET value = %s WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])


@pytest.fixture
def v1_postgres() -> Iterator[str]:
    """A PostgreSQL schema laid out as version 1 left it: resources in the database's default collation."""
    need(_pg_available(), f"PostgreSQL is not reachable at {PG_URL}")
    schema = f"salus_v1_{uuid.uuid4().hex[:10]}"
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    open_store(url, pool_size=1).close()
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("resources", "resource_versions"):
            for col in ("res_type", "res_id", "last_updated"):
                conn.execute(f'ALTER TABLE {table} ALTER COLUMN {col} TYPE TEXT COLLATE "default"')
        conn.execute("UPDATE salus_meta SET value = '1' WHERE key = 'schema_version'")
    yield url
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _collations(url: str) -> dict[tuple[str, str], str | None]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND data_type = 'text' AND table_name <> 'search_param_state' "
            "AND column_name IN ('res_type', 'res_id', 'last_updated', 'param', 'code', 'target_id')"
        ).fetchall()
    return {(t, c): coll for t, c, coll in rows}


def test_postgres_v1_gets_one_collation_and_keeps_its_data(v1_postgres: str) -> None:
    before = _collations(v1_postgres)
    assert before[("resources", "res_id")] is None  # the default collation, as version 1 had it
    assert before[("idx_token", "code")] == "C"

    # data written under version 1 survives the upgrade
    with psycopg.connect(v1_postgres, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO resources (res_type, res_id, version, last_updated, deleted) "
            "VALUES ('Patient', 'old-1', 1, '2020-01-01T00:00:00.000Z', false)"
        )
        conn.execute(
            "INSERT INTO resource_versions (rid, version, res_type, res_id, last_updated, method, body) "
            "SELECT rid, 1, res_type, res_id, last_updated, 'POST', '{\"resourceType\":\"Patient\",\"id\":\"old-1\"}' "
            "FROM resources WHERE res_id = 'old-1'"
        )

    assert _version(v1_postgres) == str(SCHEMA_VERSION)
    after = _collations(v1_postgres)
    assert set(after.values()) == {"C"}, after
    store = open_store(v1_postgres, pool_size=1)
    try:
        assert store.read("Patient", "old-1") is not None
    finally:
        store.close()


def test_sqlite_from_empty_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert _version(url) == str(SCHEMA_VERSION)
