"""Fixtures: the server built against each backend (SQLite and PostgreSQL), and the shared corpora."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from salus.config import Settings
from salus.store import Store, open_store

CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("SALUS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def need(condition: bool, reason: str) -> None:
    """Skip with ``reason`` when a service or corpus is absent; under CI=true that is a failure instead."""
    if condition:
        return
    if CI:
        pytest.fail(f"{reason} (CI=true: a missing service or corpus is a failure, not a skip)")
    pytest.skip(reason)


def corpus(*parts: str) -> Path:
    """A path inside ../shared/corpora, skipping (or failing under CI) when it is absent."""
    p = CORPORA.joinpath(*parts)
    need(p.exists(), f"test corpus {p} is not available")
    return p


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped at the end of the session."""
    need(_pg_available(), f"PostgreSQL is not reachable at {PG_URL}")
    schema = f"salus_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _truncate(store: Store) -> None:
    with store.transaction() as tx:
        tx.query(
            "TRUNCATE resources, resource_versions, idx_string, idx_token, idx_reference, idx_date, "
            "idx_number, idx_quantity, idx_uri, refs, search_param_state, audit_log, auth_users, auth_clients, "
            "auth_keys, auth_codes, auth_tokens, auth_assertions, data_keys RESTART IDENTITY"
        )
        tx.query("DELETE FROM salus_meta WHERE key IN ('search_params_version', 'audit_head')")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL of a fresh, empty store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'salus.db'}"
    url = request.getfixturevalue("pg_schema_url")
    with psycopg.connect(url, autocommit=True) as conn:
        created = conn.execute("SELECT to_regclass('data_keys')").fetchone()[0] is not None  # type: ignore[index]
        if created:  # emptied without opening a store: a test may have left it encrypted
            conn.execute("TRUNCATE data_keys")
    store = open_store(url, pool_size=2)
    _truncate(store)
    store.close()
    return url


@pytest.fixture
def store(backend: str) -> Iterator[Store]:
    """An empty store on each backend."""
    s = open_store(backend, pool_size=10)
    yield s
    s.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Default settings with a small body limit that tests can reach."""
    return Settings(data_dir=tmp_path, max_body_bytes=1024 * 1024)


@pytest.fixture
def service(store: Store, settings: Settings):  # type: ignore[no-untyped-def]
    """The service over an empty store."""
    # imported here so that tests of the lower layers collect without the upper ones
    from salus.service import FhirService

    return FhirService(store, settings)


@pytest.fixture
def client(service, settings: Settings):  # type: ignore[no-untyped-def]
    """An HTTP client on the app, over an empty store of each backend."""
    from starlette.testclient import TestClient

    from salus.api import create_app

    with TestClient(create_app(settings, service), base_url="http://testserver") as c:
        yield c
