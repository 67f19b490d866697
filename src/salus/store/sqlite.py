"""SQLite backend: the embedded default.

One connection per thread (sqlite3 connections are not shareable), WAL so
readers never wait for the writer, ``synchronous=NORMAL`` (durable at each
checkpoint, and a crash never exposes a partial transaction), and
``BEGIN IMMEDIATE`` for writes so two writers queue instead of failing to
upgrade a read lock.

Writers queue on a thread lock and an ``flock`` on a file beside the database
before they ask SQLite for its write lock: SQLite's own busy handler waits by
sleeping in steps of up to 100 ms, which under a few concurrent writers (threads
of one server, or ``--workers`` processes) turned into p99 latencies of half a
second; a blocking ``flock`` wakes the next writer as soon as the lock is free.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from salus.store.base import Current, StoredVersion
from salus.store.common import CursorOps
from salus.store.crypto import Crypto, attach
from salus.store.schema import META_DDL, SCHEMA_VERSION, migration


class _SqliteOps(CursorOps):
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, crypto: Crypto | None = None) -> None:
        self.conn = conn
        self.crypto = crypto

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql, params)

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.conn.executemany(sql, rows)


class SqliteTransaction(_SqliteOps):
    """A write transaction on one connection (already holding the write lock)."""

    def current(self, res_type: str, res_id: str, *, for_update: bool = True) -> Current | None:
        """The current row; BEGIN IMMEDIATE already excludes other writers."""
        return self._current(res_type, res_id)

    def lock(self, key: str) -> None:
        """Nothing to do: SQLite has one writer at a time."""

    def _allocate_rids(self, n: int) -> list[int]:
        # BEGIN IMMEDIATE makes this connection the only writer, so MAX(rid) cannot move under us
        top = int(self._execute("SELECT COALESCE(MAX(rid), 0) FROM resources").fetchone()[0])
        return list(range(top + 1, top + 1 + n))


class SqliteStore:
    """The SQLite store, safe to share between threads."""

    dialect = "sqlite"

    def __init__(self, path: str, *, master_keys: Sequence[bytes] = ()) -> None:
        self.path = path
        self.crypto: Crypto | None = None
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer = threading.Lock()
        self._lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600) if path != ":memory:" else None
        self.migrate()
        self.crypto = attach(self, master_keys)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA cache_size=-65536")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def migrate(self) -> None:
        """Create or upgrade the schema to ``SCHEMA_VERSION``."""
        conn = self._conn()
        with self._write_turn():
            self._migrate(conn)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(META_DDL)
            row = conn.execute("SELECT value FROM salus_meta WHERE key = 'schema_version'").fetchone()
            for stmt in migration("sqlite", row[0] if row else None):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO salus_meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _ops(self) -> _SqliteOps:
        return _SqliteOps(self._conn(), self.crypto)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query on this thread's connection."""
        return self._ops().query(sql, params)

    @contextmanager
    def _write_turn(self) -> Iterator[None]:
        """Wait, without polling, until no other thread or process of ours is writing."""
        with self._writer:
            if self._lock_fd is None:
                yield
                return
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextmanager
    def transaction(self) -> Iterator[SqliteTransaction]:
        """A write transaction: commit on success, roll back on any exception."""
        conn = self._conn()
        with self._write_turn():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteTransaction(conn, self.crypto)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def read(self, res_type: str, res_id: str) -> StoredVersion | None:
        """The current version of a resource, or None."""
        return self._ops().read(res_type, res_id)

    def vread(self, res_type: str, res_id: str, version: int) -> StoredVersion | None:
        """One version of a resource, or None."""
        return self._ops().vread(res_type, res_id, version)

    def history(self, res_type: str | None, res_id: str | None, **kw: Any) -> list[StoredVersion]:
        """Versions newest first."""
        return self._ops().history(res_type, res_id, **kw)

    def history_count(self, res_type: str | None, res_id: str | None, *, since: str | None) -> int:
        """How many versions a history query covers."""
        return self._ops().history_count(res_type, res_id, since=since)

    def iter_current(self, res_type: str | None, *, batch: int = 1000) -> Iterator[StoredVersion]:
        """Every current non-deleted resource."""
        return self._ops().iter_current(res_type, batch=batch)

    def analyze(self) -> None:
        """Refresh the planner's statistics."""
        with self._write_turn():
            self._conn().execute("ANALYZE")

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
        self._local = threading.local()
