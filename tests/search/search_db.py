"""Search test databases: SQLite in memory and PostgreSQL in a throw-away schema, and a loader."""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from salus.search.indexing import index_rows
from salus.store.schema import ddl, index_columns

PG_URL = os.environ.get("SALUS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


class SqliteDb:
    """The ``Queryable`` search needs, over one SQLite connection."""

    dialect = "sqlite"
    crypto = None

    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        for stmt in ddl("sqlite"):
            self.conn.execute(stmt)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query."""
        return self.conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run a write statement and return the cursor."""
        return self.conn.execute(sql, params)

    def close(self) -> None:
        """Drop everything."""
        self.conn.close()


class PostgresDb:
    """The same over psycopg 3, in a throw-away schema; translates ``?`` to ``%s`` like the store."""

    dialect = "postgresql"
    crypto = None

    def __init__(self) -> None:
        import psycopg

        self.conn = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
        self.schema = f"search_test_{uuid.uuid4().hex[:12]}"
        self.conn.execute(f"CREATE SCHEMA {self.schema}")
        self.conn.execute(f"SET search_path TO {self.schema}")
        for stmt in ddl("postgresql"):
            self.conn.execute(stmt)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query."""
        return self.conn.execute(sql.replace("?", "%s"), list(params)).fetchall()  # type: ignore[arg-type]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run a write statement and return the cursor."""
        return self.conn.execute(sql.replace("?", "%s"), list(params))  # type: ignore[arg-type]

    def close(self) -> None:
        """Drop the schema."""
        self.conn.execute(f"DROP SCHEMA {self.schema} CASCADE")
        self.conn.close()


Db = SqliteDb | PostgresDb


def insert(
    db: Db, resource: dict[str, Any], *, last_updated: str = "2024-01-01T00:00:00.000000Z", deleted: bool = False
) -> int:
    """Store ``resource`` as version 1 with its index rows, the way the store does; return its rid."""
    rt, rid_ = resource["resourceType"], resource["id"]
    rid = db.execute(
        "INSERT INTO resources (res_type, res_id, version, last_updated, deleted) VALUES (?, ?, 1, ?, ?) RETURNING rid",
        (rt, rid_, last_updated, deleted),
    ).fetchone()[0]
    db.execute(
        "INSERT INTO resource_versions (rid, version, res_type, res_id, last_updated, method, body) "
        "VALUES (?, 1, ?, ?, ?, ?, ?)",
        (rid, rt, rid_, last_updated, "delete" if deleted else "create", None if deleted else json.dumps(resource)),
    )
    if not deleted:
        for table, rows in index_rows(resource).items():
            cols = index_columns(table)
            sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            for row in rows:
                db.execute(sql, (rid, rt, *row))
    return int(rid)


def open_db(kind: str) -> Db:
    """A fresh database of ``kind``; PostgreSQL skips when unreachable (fails under CI=true)."""
    if kind == "sqlite":
        return SqliteDb()
    try:
        return PostgresDb()
    except Exception as e:  # psycopg.OperationalError, or psycopg missing
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} ({type(e).__name__}: {e}); set CI=true to fail instead")
