"""The store on both backends: versions, rollback, history, concurrency."""

from __future__ import annotations

import threading

import pytest

from salus.store import Store


def write(store: Store, rt: str, rid: str, body: str | None, ts: str, index: dict | None = None) -> int:
    with store.transaction() as tx:
        cur = tx.current(rt, rid)
        version = cur.version + 1 if cur else 1
        tx.write_version(rt, rid, version, ts, "PUT", body, index, cur)
        return version


def test_versions_and_current_body(store: Store) -> None:
    assert write(store, "Patient", "p1", '{"v":1}', "2026-01-01T00:00:00.000001") == 1
    assert write(store, "Patient", "p1", '{"v":2}', "2026-01-01T00:00:00.000002") == 2
    cur = store.read("Patient", "p1")
    assert cur is not None and cur.version == 2 and cur.body == '{"v":2}'
    old = store.vread("Patient", "p1", 1)
    assert old is not None and old.body == '{"v":1}'
    assert store.vread("Patient", "p1", 3) is None
    assert store.read("Patient", "nope") is None


def test_delete_is_a_versioned_tombstone_and_drops_index_rows(store: Store) -> None:
    write(store, "Patient", "p1", "{}", "2026-01-01T00:00:00.000001", {"idx_string": [("name", 0, "smith", "Smith")]})
    assert store.query("SELECT COUNT(*) FROM idx_string")[0][0] == 1
    write(store, "Patient", "p1", None, "2026-01-01T00:00:00.000002")
    cur = store.read("Patient", "p1")
    assert cur is not None and cur.deleted and cur.version == 2
    assert store.query("SELECT COUNT(*) FROM idx_string")[0][0] == 0
    assert list(store.iter_current("Patient")) == []


def test_update_replaces_index_rows(store: Store) -> None:
    write(store, "Patient", "p1", "{}", "2026-01-01T00:00:00.000001", {"idx_string": [("name", 0, "smith", "Smith")]})
    write(store, "Patient", "p1", "{}", "2026-01-01T00:00:00.000002", {"idx_string": [("name", 0, "jones", "Jones")]})
    assert store.query("SELECT norm FROM idx_string") == [("jones",)]


def test_failed_transaction_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.write_version("Patient", "p1", 1, "2026-01-01T00:00:00.000001", "POST", "{}",
                         {"idx_token": [("gender", 0, None, "male", None)]}, None)
        raise RuntimeError("boom")
    assert store.read("Patient", "p1") is None
    assert store.query("SELECT COUNT(*) FROM resource_versions")[0][0] == 0
    assert store.query("SELECT COUNT(*) FROM idx_token")[0][0] == 0


def test_history_newest_first_with_cursor_and_since(store: Store) -> None:
    for i in range(5):
        write(store, "Patient", f"p{i % 2}", "{}", f"2026-01-01T00:00:0{i}.000000")
    all_ = store.history(None, None, since=None, at=None, before_seq=None, limit=10)
    assert [v.seq for v in all_] == [5, 4, 3, 2, 1]
    page2 = store.history(None, None, since=None, at=None, before_seq=all_[1].seq, limit=2)
    assert [v.seq for v in page2] == [3, 2]
    inst = store.history("Patient", "p0", since=None, at=None, before_seq=None, limit=10)
    assert [v.version for v in inst] == [3, 2, 1]
    assert store.history_count("Patient", None, since="2026-01-01T00:00:03.000000") == 2
    at = store.history("Patient", None, since=None, at="2026-01-01T00:00:02.500000", before_seq=None, limit=10)
    assert sorted((v.res_id, v.version) for v in at) == [("p0", 2), ("p1", 1)]


def test_concurrent_writers_never_duplicate_or_skip_versions(store: Store) -> None:
    write(store, "Patient", "p1", "{}", "2026-01-01T00:00:00.000000")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                write(store, "Patient", "p1", "{}", f"2026-01-01T00:00:{n:02d}.{i:06d}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    versions = [r[0] for r in store.query("SELECT version FROM resource_versions ORDER BY version")]
    assert versions == list(range(1, 42))
