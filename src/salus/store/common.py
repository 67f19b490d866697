"""Write logic shared by both backends: the same statements, run through a DB-API cursor."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from salus.store import base
from salus.store.base import Current, IndexRows, NewResource, StoredVersion, version_from_row
from salus.store.crypto import Crypto
from salus.store.schema import INDEX_TABLES, index_columns


class CursorOps:
    """Store operations over a DB-API cursor; subclasses only say how to run SQL.

    With ``crypto`` set (encryption at rest), bodies are sealed on the way in and opened
    on the way out, and identifying index values are replaced by keyed hashes: everything
    above the store sees plain resources.
    """

    dialect: str
    crypto: Crypto | None = None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query and return all rows."""
        cur = self._execute(sql, params)
        return list(cur.fetchall()) if cur.description is not None else []

    def _current(self, res_type: str, res_id: str, suffix: str = "") -> Current | None:
        row = self._execute(base.SQL_CURRENT + suffix, (res_type, res_id)).fetchone()
        return Current(int(row[0]), int(row[1]), row[2], bool(row[3])) if row else None

    def write_version(
        self, res_type: str, res_id: str, version: int, last_updated: str, method: str,
        body: str | None, index: IndexRows | None, current: Current | None,
    ) -> int:
        """Write a new version, make it current and replace the resource's index rows."""
        deleted = body is None
        if self.crypto is not None:
            if body is not None:
                body = self.crypto.seal(res_type, res_id, version, body)
            if index:
                index = self.crypto.blind_index(res_type, index)
        if current is None:
            rid = int(self._execute(base.SQL_INSERT_RESOURCE, (res_type, res_id, version, last_updated, deleted)).fetchone()[0])
        else:
            rid = current.rid
            self._execute(base.SQL_UPDATE_RESOURCE, (version, last_updated, deleted, rid))
            if not current.deleted:
                for sql in base.SQL_DELETE_INDEX.values():
                    self._execute(sql, (rid,))
        self._execute(base.SQL_INSERT_VERSION, (rid, version, res_type, res_id, last_updated, method, body))
        if index and not deleted:
            for sql, rows in base.index_params(rid, res_type, index):
                self._executemany(sql, rows)
        return rid

    def existing(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Current]:
        """The current rows of those ``(type, id)`` that exist, in chunks of 400 keys."""
        out: dict[tuple[str, str], Current] = {}
        for start in range(0, len(keys), 400):
            chunk = keys[start:start + 400]
            values = ", ".join(["(?, ?)"] * len(chunk))
            rows = self._execute(
                f"SELECT res_type, res_id, rid, version, last_updated, deleted FROM resources "
                f"WHERE (res_type, res_id) IN (VALUES {values})",
                [v for key in chunk for v in key],
            ).fetchall()
            for r in rows:
                out[(r[0], r[1])] = Current(int(r[2]), int(r[3]), r[4], bool(r[5]))
        return out

    def _allocate_rids(self, n: int) -> list[int]:
        raise NotImplementedError

    def insert_rows(self, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        """Insert many rows into one table (executemany here; COPY on PostgreSQL)."""
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        self._executemany(sql, rows)

    def insert_new(self, items: list[NewResource]) -> None:
        """Bulk-insert first versions: one statement (or COPY) per table for the whole batch."""
        if not items:
            return
        if self.crypto is not None:
            seal, blind = self.crypto.seal, self.crypto.blind_index
            items = [NewResource(it.res_type, it.res_id, it.last_updated, it.method, seal(it.res_type, it.res_id, 1, it.body),
                                 blind(it.res_type, it.index)) for it in items]
        rids = self._allocate_rids(len(items))
        self.insert_rows("resources", ["rid", "res_type", "res_id", "version", "last_updated", "deleted"],
                   [(rid, it.res_type, it.res_id, 1, it.last_updated, False) for rid, it in zip(rids, items, strict=True)])
        self.insert_rows("resource_versions", ["rid", "version", "res_type", "res_id", "last_updated", "method", "body"],
                   [(rid, 1, it.res_type, it.res_id, it.last_updated, it.method, it.body)
                    for rid, it in zip(rids, items, strict=True)])
        per_table: dict[str, list[tuple[Any, ...]]] = {t: [] for t in INDEX_TABLES}
        for rid, it in zip(rids, items, strict=True):
            for table, rows in it.index.items():
                per_table[table].extend((rid, it.res_type, *row) for row in rows)
        for table, rows in per_table.items():
            if rows:
                self.insert_rows(table, index_columns(table), rows)

    def replace_index(self, items: list[tuple[int, str, IndexRows]]) -> None:
        """Replace the search index rows of current resources (a reindex): a few statements per batch, not per row.

        ``refs`` stays: it holds every reference, whatever the search parameters say.
        """
        if not items:
            return
        tables = [t for t in INDEX_TABLES if t != "refs"]
        if self.crypto is not None:
            items = [(rid, res_type, self.crypto.blind_index(res_type, index)) for rid, res_type, index in items]
        for start in range(0, len(items), 500):
            rids = [rid for rid, _, _ in items[start:start + 500]]
            marks = ", ".join("?" * len(rids))
            for table in tables:
                self._execute(f"DELETE FROM {table} WHERE rid IN ({marks})", rids)
        per_table: dict[str, list[tuple[Any, ...]]] = {t: [] for t in tables}
        for rid, res_type, index in items:
            for table, rows in index.items():
                if table in per_table:
                    per_table[table].extend((rid, res_type, *row) for row in rows)
        for table, rows in per_table.items():
            if rows:
                self.insert_rows(table, index_columns(table), rows)

    def read(self, res_type: str, res_id: str) -> StoredVersion | None:
        """The current version of a resource (tombstone if deleted), or None."""
        row = self._execute(base.SQL_READ, (res_type, res_id)).fetchone()
        return version_from_row(row, self.crypto) if row else None

    def vread(self, res_type: str, res_id: str, version: int) -> StoredVersion | None:
        """One version of a resource, or None."""
        row = self._execute(base.SQL_VREAD, (res_type, res_id, version)).fetchone()
        return version_from_row(row, self.crypto) if row else None

    def history(
        self, res_type: str | None, res_id: str | None, *, since: str | None, at: str | None,
        before_seq: int | None, limit: int,
    ) -> list[StoredVersion]:
        """Versions newest first at instance, type or system level."""
        sql, params = base.history_sql(res_type, res_id, since, at, before_seq)
        return [version_from_row(r, self.crypto) for r in self._execute(sql, [*params, limit]).fetchall()]

    def history_count(self, res_type: str | None, res_id: str | None, *, since: str | None) -> int:
        """How many versions a history query covers."""
        sql, params = base.history_sql(res_type, res_id, since, None, None, count_only=True)
        return int(self._execute(sql, params).fetchone()[0])

    def iter_current(self, res_type: str | None, *, batch: int = 1000) -> Iterator[StoredVersion]:
        """Every current non-deleted resource, in rid order, fetched in batches by keyset."""
        last = 0
        type_cond = " AND r.res_type = ?" if res_type else ""
        while True:
            params: list[Any] = [last] + ([res_type] if res_type else []) + [batch]
            rows = self._execute(
                f"SELECT {base.VERSION_COLUMNS}, r.rid FROM resources r JOIN resource_versions v "
                f"ON v.rid = r.rid AND v.version = r.version WHERE r.rid > ? AND NOT r.deleted{type_cond} "
                "ORDER BY r.rid LIMIT ?",
                params,
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield version_from_row(row, self.crypto)
            last = int(rows[-1][7])
