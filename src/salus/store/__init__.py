"""The versioned clinical data store: SQLite (embedded default) and PostgreSQL behind one interface."""

from __future__ import annotations

from salus.store.base import Current, Store, StoredVersion, Transaction


def open_store(database_url: str, *, pool_size: int = 10) -> Store:
    """Open (and migrate) the store a database URL names: ``sqlite:///path`` or ``postgresql://...``."""
    if database_url.startswith("sqlite:"):
        from salus.store.sqlite import SqliteStore

        return SqliteStore(database_url.removeprefix("sqlite:///").removeprefix("sqlite://"))
    if database_url.startswith(("postgresql:", "postgres:")):
        from salus.store.postgres import PostgresStore

        return PostgresStore(database_url, pool_size=pool_size)
    raise ValueError(f"unsupported database URL {database_url!r}: use sqlite:///path or postgresql://...")


__all__ = ["Current", "Store", "StoredVersion", "Transaction", "open_store"]
