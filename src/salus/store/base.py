"""The ``Store`` interface the service layer writes and reads through.

The store knows rows, versions and index rows; it does not know FHIR rules
(the service decides versions, validation and references) nor HTTP.
SQL here is written once with ``?`` placeholders; the PostgreSQL backend
translates them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from salus.store.crypto import Crypto
from salus.store.schema import INDEX_TABLES, index_columns


@dataclass(frozen=True)
class Current:
    """The current state of a logical resource: its surrogate key, version and whether it is deleted."""

    rid: int
    version: int
    last_updated: str
    deleted: bool


@dataclass(frozen=True)
class StoredVersion:
    """One stored version: the body is the exact JSON text served to clients (None for a delete)."""

    res_type: str
    res_id: str
    version: int
    last_updated: str
    method: str
    body: str | None
    seq: int = 0

    @property
    def deleted(self) -> bool:
        """Whether this version is a deletion tombstone."""
        return self.body is None


IndexRows = dict[str, list[tuple[Any, ...]]]


@dataclass(frozen=True)
class NewResource:
    """A first version of a resource that does not exist yet, ready to bulk-insert."""

    res_type: str
    res_id: str
    last_updated: str
    method: str
    body: str
    index: IndexRows

VERSION_COLUMNS = "v.res_type, v.res_id, v.version, v.last_updated, v.method, v.body, v.seq"


def version_from_row(row: Sequence[Any], crypto: Crypto | None = None) -> StoredVersion:
    """A ``StoredVersion`` from a row selected with ``VERSION_COLUMNS`` (its body opened when ``crypto`` seals them)."""
    version = int(row[2])
    body = row[5] if crypto is None else crypto.open(row[0], row[1], version, row[5])
    return StoredVersion(row[0], row[1], version, row[3], row[4], body, int(row[6]))


class Queryable(Protocol):
    """Anything search can run compiled SQL on: the store itself or an open transaction.

    ``crypto`` is set when encryption at rest is on: raw queries then see sealed bodies
    (``crypto.open`` them) and keyed hashes in the index.
    """

    dialect: str
    crypto: Crypto | None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query and return all rows."""
        ...


def opened(db: Queryable, res_type: str, res_id: str, version: int, body: str | None) -> str | None:
    """A body read by a raw query, opened if the store seals bodies (select type, id and version with it)."""
    return body if db.crypto is None else db.crypto.open(res_type, res_id, int(version), body)


class Transaction(Queryable, Protocol):
    """An open write transaction; everything done through it commits or rolls back together."""

    def current(self, res_type: str, res_id: str, *, for_update: bool = True) -> Current | None:
        """The current row of a resource, locked against concurrent writers until commit."""
        ...

    def lock(self, key: str) -> None:
        """Serialise writers that share ``key`` until commit (conditional create, unique checks)."""
        ...

    def read(self, res_type: str, res_id: str) -> StoredVersion | None:
        """The current version as this transaction sees it."""
        ...

    def write_version(
        self, res_type: str, res_id: str, version: int, last_updated: str, method: str,
        body: str | None, index: IndexRows | None, current: Current | None,
    ) -> int:
        """Write a new version, make it current and replace the resource's index rows; return its rid."""
        ...

    def existing(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Current]:
        """The current rows of those ``(type, id)`` that exist (deleted or not)."""
        ...

    def insert_new(self, items: list[NewResource]) -> None:
        """Bulk-insert resources known not to exist (version 1 each), with their index rows."""
        ...

    def replace_index(self, items: list[tuple[int, str, IndexRows]]) -> None:
        """Replace the search index rows of current resources ``(rid, res_type, rows)`` (a reindex)."""
        ...

    def insert_rows(self, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        """Insert many rows into one table the fastest way the database has (COPY on PostgreSQL)."""
        ...


class Store(Queryable, Protocol):
    """The clinical data store: one of SQLite or PostgreSQL."""

    def transaction(self) -> AbstractContextManager[Transaction]:
        """A write transaction: commit on normal exit, roll back on exception."""
        ...

    def read(self, res_type: str, res_id: str) -> StoredVersion | None:
        """The current version of a resource (a tombstone if deleted), or None if never existed."""
        ...

    def vread(self, res_type: str, res_id: str, version: int) -> StoredVersion | None:
        """One version of a resource, or None."""
        ...

    def history(
        self, res_type: str | None, res_id: str | None, *, since: str | None, at: str | None,
        before_seq: int | None, limit: int,
    ) -> list[StoredVersion]:
        """Versions newest first (by ``seq``), at instance, type or system level."""
        ...

    def history_count(self, res_type: str | None, res_id: str | None, *, since: str | None) -> int:
        """How many versions a history query covers (for ``Bundle.total``)."""
        ...

    def iter_current(self, res_type: str | None, *, batch: int = 1000) -> Iterator[StoredVersion]:
        """Every current, non-deleted resource (of a type), for export."""
        ...

    def analyze(self) -> None:
        """Refresh the planner's statistics (after a bulk load the plans are otherwise blind)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


# ---- SQL shared by both backends -------------------------------------------------

SQL_CURRENT = "SELECT rid, version, last_updated, deleted FROM resources WHERE res_type = ? AND res_id = ?"
SQL_READ = (
    f"SELECT {VERSION_COLUMNS} FROM resources r JOIN resource_versions v "
    "ON v.rid = r.rid AND v.version = r.version WHERE r.res_type = ? AND r.res_id = ?"
)
SQL_VREAD = (
    f"SELECT {VERSION_COLUMNS} FROM resources r JOIN resource_versions v ON v.rid = r.rid "
    "WHERE r.res_type = ? AND r.res_id = ? AND v.version = ?"
)
SQL_INSERT_RESOURCE = (
    "INSERT INTO resources (res_type, res_id, version, last_updated, deleted) VALUES (?, ?, ?, ?, ?) RETURNING rid"
)
SQL_UPDATE_RESOURCE = "UPDATE resources SET version = ?, last_updated = ?, deleted = ? WHERE rid = ?"
SQL_INSERT_VERSION = (
    "INSERT INTO resource_versions (rid, version, res_type, res_id, last_updated, method, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
SQL_DELETE_INDEX = {table: f"DELETE FROM {table} WHERE rid = ?" for table in INDEX_TABLES}
SQL_INSERT_INDEX = {
    table: f"INSERT INTO {table} ({', '.join(index_columns(table))}) VALUES ({', '.join('?' * len(index_columns(table)))})"
    for table in INDEX_TABLES
}


def history_sql(
    res_type: str | None, res_id: str | None, since: str | None, at: str | None, before_seq: int | None,
    count_only: bool = False,
) -> tuple[str, list[Any]]:
    """The history query at instance, type or system level, newest first.

    ``_at`` asks for the versions current at that instant: for each resource, the
    newest version whose lastUpdated is not after it.
    """
    where: list[str] = []
    params: list[Any] = []
    if res_type is not None:
        where.append("v.res_type = ?")
        params.append(res_type)
    if res_id is not None:
        where.append("v.res_id = ?")
        params.append(res_id)
    if since is not None:
        where.append("v.last_updated >= ?")
        params.append(since)
    if at is not None:
        where.append(
            "v.version = (SELECT MAX(v2.version) FROM resource_versions v2 WHERE v2.rid = v.rid AND v2.last_updated <= ?)"
        )
        params.append(at)
    if before_seq is not None and not count_only:
        where.append("v.seq < ?")
        params.append(before_seq)
    cond = (" WHERE " + " AND ".join(where)) if where else ""
    if count_only:
        return f"SELECT COUNT(*) FROM resource_versions v{cond}", params
    return f"SELECT {VERSION_COLUMNS} FROM resource_versions v{cond} ORDER BY v.seq DESC LIMIT ?", params


def index_params(rid: int, res_type: str, index: IndexRows) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """The insert statements and their parameter rows for one resource's index rows."""
    for table, rows in index.items():
        if rows:
            yield SQL_INSERT_INDEX[table], [(rid, res_type, *row) for row in rows]
