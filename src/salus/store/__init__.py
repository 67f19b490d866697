"""The versioned clinical data store: SQLite (embedded default) and PostgreSQL behind one interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from salus.store.base import Current, Store, StoredVersion, Transaction

if TYPE_CHECKING:
    from salus.config import Settings


def open_store(database_url: str, *, pool_size: int = 10, master_keys: Sequence[bytes] = ()) -> Store:
    """Open (and migrate) the store a database URL names: ``sqlite:///path`` or ``postgresql://...``.

    ``master_keys`` (the current one first) turn on encryption at rest (``salus.store.crypto``).
    """
    if database_url.startswith("sqlite:"):
        from salus.store.sqlite import SqliteStore

        return SqliteStore(database_url.removeprefix("sqlite:///").removeprefix("sqlite://"), master_keys=master_keys)
    if database_url.startswith(("postgresql:", "postgres:")):
        from salus.store.postgres import PostgresStore

        return PostgresStore(database_url, pool_size=pool_size, master_keys=master_keys)
    raise ValueError(f"unsupported database URL {database_url!r}: use sqlite:///path or postgresql://...")


def open_configured(settings: Settings, *, pool_size: int | None = None) -> Store:
    """The store the settings describe: its database, pool size and master keys."""
    from salus.store.crypto import read_master_keys

    return open_store(
        settings.effective_database_url,
        pool_size=settings.pool_size if pool_size is None else pool_size,
        master_keys=read_master_keys(settings.master_key, settings.master_key_file),
    )


__all__ = ["Current", "Store", "StoredVersion", "Transaction", "open_configured", "open_store"]
