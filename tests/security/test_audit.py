"""The audit trail: BALP AuditEvents that validate, and a hash chain whose every tampering is caught."""

from __future__ import annotations

import base64
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from salus.fhir.validate import validate
from salus.security import audit, audit_codec
from salus.security.audit import (
    BufferedAuditWriter,
    append,
    append_many,
    audit_event,
    audit_record,
    load_or_create_key,
    verify,
)
from salus.security.audit_cli import audit_app
from salus.security.principal import Principal, RequestContext
from salus.store import Store, open_store

KEY = bytes(range(32))
CLINICIAN = RequestContext(
    Principal("alice", role="clinician", client_id="ehr-app", fhir_user="Practitioner/p1", token_id="jti-1"),
    source="192.0.2.7",
    purpose="TREAT",
)


@pytest.fixture
def chain(store: Store) -> Iterator[Store]:
    """The store with an empty audit chain (the PostgreSQL test schema outlives one test)."""
    with store.transaction() as tx:
        tx.query("DELETE FROM audit_log")
        tx.query("DELETE FROM salus_meta WHERE key = ?", (audit.HEAD_KEY,))
    yield store


def _fill(store: Store, n: int) -> None:
    with store.transaction() as tx:
        for i in range(n):
            append(tx, audit_record(CLINICIAN, None, "read", resource_type="Observation", resource_id=f"o{i}",
                                   patient="p1"), KEY)


def _sql(store: Store, sql: str, params: tuple[Any, ...] = ()) -> None:
    with store.transaction() as tx:
        tx.query(sql, params)


# ---- the AuditEvents ---------------------------------------------------------------------


@pytest.mark.parametrize("interaction", sorted(audit.INTERACTIONS))
def test_every_interaction_builds_a_valid_r4_audit_event(interaction: str) -> None:
    event = audit_event(CLINICIAN, None, interaction, resource_type="Observation", resource_id="o1", version=3,
                        patient="p1", query="Observation?patient=p1&code=1234-5", description="done")
    assert validate(event, "AuditEvent") == []
    assert event["action"] in ("C", "R", "U", "D", "E")


def test_read_records_who_what_patient_and_source_after_balp() -> None:
    event = audit_event(CLINICIAN, None, "vread", resource_type="Observation", resource_id="o1", version=2,
                        patient="p1")
    assert event["type"]["code"] == "rest"
    assert event["subtype"] == [{"system": audit.RESTFUL, "code": "vread"}]
    assert event["action"] == "R" and event["outcome"] == "0"
    user, client, server = event["agent"]
    assert user["requestor"] is True
    assert user["who"]["reference"] == "Practitioner/p1" and user["who"]["identifier"]["value"] == "alice"
    assert user["role"][0]["coding"][0]["code"] == "clinician"
    assert user["policy"] == ["jti-1"] and user["purposeOfUse"][0]["coding"][0]["code"] == "TREAT"
    assert client["who"]["identifier"]["value"] == "ehr-app" and client["network"] == {"address": "192.0.2.7", "type": "2"}
    assert server["type"]["coding"][0]["code"] == "110152" and server["requestor"] is False
    assert event["source"]["observer"]["display"] == "Salus" and event["source"]["type"][0]["code"] == "4"
    refs = {e["role"]["code"]: e["what"]["reference"] for e in event["entity"] if "role" in e}
    assert refs == {"4": "Observation/o1/_history/2", "1": "Patient/p1"}
    assert [e["what"]["identifier"]["value"] for e in event["entity"] if "role" not in e] == [CLINICIAN.request_id]


def test_search_records_the_query_base64() -> None:
    query = "Observation?patient=p1&code=http://loinc.org|1234-5"
    event = audit_event(CLINICIAN, None, "search-type", resource_type="Observation", query=query, patient="p1")
    assert event["action"] == "E"
    (q,) = [e for e in event["entity"] if e.get("role", {}).get("code") == "24"]
    assert base64.b64decode(q["query"]).decode() == query
    assert validate(event) == []


def test_failed_login_and_denied_access() -> None:
    anon = RequestContext(source="host.example")
    login = audit_event(anon, None, "login", outcome=4, description="wrong password", username="mallory")
    assert login["type"]["code"] == "110114" and login["subtype"][0]["code"] == "110122"
    assert login["outcome"] == "4" and login["outcomeDesc"] == "wrong password"
    assert login["agent"][0]["who"]["identifier"]["value"] == "mallory"
    assert login["agent"][0]["network"] == {"address": "host.example", "type": "1"}
    denied = audit_event(CLINICIAN, None, "delete", outcome=4, resource_type="Patient", resource_id="p9",
                         description="scope user/Patient.d not granted")
    assert denied["action"] == "D"
    assert any(e.get("role", {}).get("code") == "1" and e["what"]["reference"] == "Patient/p9" for e in denied["entity"])
    system = RequestContext(Principal("lab", kind="system", client_id="lab-feed", role="integration"))
    created = audit_event(system, None, "create", resource_type="Observation", resource_id="o2")
    assert created["agent"][0]["requestor"] is True and created["agent"][0]["who"]["display"] == "lab-feed"
    for event in (login, denied, created):
        assert validate(event) == []


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        audit_event(CLINICIAN, None, "peek")
    with pytest.raises(ValueError):
        audit_event(CLINICIAN, "X", "read")
    with pytest.raises(ValueError):
        audit_event(CLINICIAN, None, "read", outcome=5)


# ---- the key -----------------------------------------------------------------------------


def test_key_is_created_once_private_and_stable(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    assert len(key) == 32
    assert stat.S_IMODE((tmp_path / "audit.key").stat().st_mode) == 0o600
    assert load_or_create_key(tmp_path) == key
    assert [p.name for p in tmp_path.iterdir()] == ["audit.key"]


# ---- the chain ---------------------------------------------------------------------------


def test_appended_events_verify_in_batches(chain: Store) -> None:
    _fill(chain, 10)
    result = verify(chain, KEY, batch=3)
    assert result.ok and result.checked == 10 and result.head_seq == 10
    assert str(result) == "audit chain intact: 10 entries"
    rows = audit.read_events(chain)
    assert [r[0] for r in rows] == list(range(1, 11))
    assert validate(rows[0][1]) == []
    # stored as its facts, rendered when read: a 2 kB event in a few hundred bytes
    stored = chain.query("SELECT body FROM audit_log WHERE seq = 1")[0][0]
    assert stored.startswith("c1:") and len(stored) < len(orjson.dumps(rows[0][1])) / 3
    assert rows[0][1]["entity"][1]["what"]["reference"] == "Observation/o0"


def test_a_stored_record_renders_the_event_it_was_made_as(chain: Store) -> None:
    made = [
        audit_record(CLINICIAN, None, "search-type", resource_type="Observation", patient="p1",
                     query="Observation?code=http://loinc.org|1234-5&_count=2"),
        audit_record(RequestContext(source="host.example"), None, "login", outcome=4, username="mallory",
                     description="wrong password"),
        audit_record(CLINICIAN, "D", "delete", resource_type="Patient", erased="Patient/p7", description="erased"),
        audit_record(RequestContext(Principal("ops", role="admin", break_glass=True)), None, "read",
                     resource_type="Patient", resource_id="p2", version=4),
    ]
    with chain.transaction() as tx:
        append_many(tx, made, KEY)
    read = [event for _, event in audit.read_events(chain)]
    assert read == [orjson.loads(orjson.dumps(audit.render(r))) for r in made]
    for event in read:
        assert validate(event, "AuditEvent") == []
    assert read[2]["entity"][-1]["what"]["identifier"] == {"system": audit.ERASED_SYSTEM, "value": "Patient/p7"}
    assert read[3]["agent"][0]["purposeOfUse"][0]["coding"][0]["code"] == "BTG"


def test_instants_round_trip_to_the_microsecond() -> None:
    for at in (0, 1_765_000_000_000_001, 1_765_000_000_999_999, audit.now_micros()):
        assert audit.parse_instant(audit.instant(at)) == at
    assert audit.instant(1_765_000_000_000_042) == "2025-12-06T05:46:40.000042Z"


def test_rows_of_earlier_formats_still_read_and_verify(chain: Store) -> None:
    """Before records, rows held the AuditEvent JSON, plain and then deflated: both stay readable and in the chain."""
    old = [audit_event(CLINICIAN, None, "read", resource_type="Patient", resource_id=f"p{i}") for i in range(2)]
    bodies = [orjson.dumps(old[0]).decode(), audit_codec.pack(orjson.dumps(old[1]))]
    prev = audit.GENESIS
    with chain.transaction() as tx:
        for seq, (event, body) in enumerate(zip(old, bodies, strict=True), start=1):
            digest = audit.entry_hash(KEY, seq, event["recorded"], event["id"], body, prev)
            tx.query("INSERT INTO audit_log (seq, event_id, recorded, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)",
                     (seq, event["id"], event["recorded"], body, prev, digest))
            prev = digest
        tx.query("INSERT INTO salus_meta (key, value) VALUES (?, ?)", (audit.HEAD_KEY, f"2:{prev}"))
    _fill(chain, 1)
    assert verify(chain, KEY).checked == 3
    read = [event for _, event in audit.read_events(chain)]
    assert read[:2] == [orjson.loads(orjson.dumps(e)) for e in old]
    assert read[2]["entity"][1]["what"]["reference"] == "Observation/o0"


def test_empty_chain_is_intact(chain: Store) -> None:
    assert verify(chain, KEY).ok and verify(chain, KEY).checked == 0


def test_another_key_cannot_verify(chain: Store) -> None:
    _fill(chain, 3)
    result = verify(chain, bytes(32))
    assert not result.ok and result.broken_seq == 1 and result.reason == audit.CONTENT_CHANGED


def test_edited_body_is_detected(chain: Store) -> None:
    _fill(chain, 10)
    edited = dict(audit.read_event(chain, 5) or {})
    assert "alice" in str(edited)
    edited = orjson.loads(orjson.dumps(edited).replace(b"alice", b"bob"))
    _sql(chain, "UPDATE audit_log SET body = ? WHERE seq = 5", (audit_codec.pack(orjson.dumps(edited)),))
    result = verify(chain, KEY, batch=3)
    assert (result.ok, result.broken_seq, result.reason) == (False, 5, audit.CONTENT_CHANGED)
    assert result.checked == 4


def test_edited_hash_is_detected(chain: Store) -> None:
    _fill(chain, 10)
    _sql(chain, "UPDATE audit_log SET hash = ? WHERE seq = 7", ("f" * 64,))
    result = verify(chain, KEY)
    assert (result.broken_seq, result.reason) == (7, audit.CONTENT_CHANGED)


def test_relinked_entry_is_detected(chain: Store) -> None:
    _fill(chain, 10)
    _sql(chain, "UPDATE audit_log SET prev_hash = ? WHERE seq = 6", (audit.GENESIS,))
    assert verify(chain, KEY).broken_seq == 6


def test_deleted_middle_entry_is_detected(chain: Store) -> None:
    _fill(chain, 10)
    _sql(chain, "DELETE FROM audit_log WHERE seq = 4")
    result = verify(chain, KEY, batch=3)
    assert (result.broken_seq, result.reason) == (4, audit.ENTRY_MISSING)


def test_deleted_last_entry_is_detected_by_the_head(chain: Store) -> None:
    _fill(chain, 10)
    _sql(chain, "DELETE FROM audit_log WHERE seq = 10")
    result = verify(chain, KEY)
    assert (result.broken_seq, result.reason) == (10, audit.ENTRY_MISSING)
    _sql(chain, "DELETE FROM audit_log")
    assert verify(chain, KEY).broken_seq == 1


def test_reordered_entries_are_detected(chain: Store) -> None:
    _fill(chain, 10)
    # swap seq 3 and 5 through a free number (both databases check the key row by row)
    _sql(chain, "UPDATE audit_log SET seq = -1 WHERE seq = 3")
    _sql(chain, "UPDATE audit_log SET seq = 3 WHERE seq = 5")
    _sql(chain, "UPDATE audit_log SET seq = 5 WHERE seq = -1")
    result = verify(chain, KEY)
    assert result.broken_seq == 3 and result.reason is not None and result.reason.startswith(audit.OUT_OF_ORDER)
    assert "entry 5" in result.reason


def test_forged_entries_are_detected(chain: Store) -> None:
    _fill(chain, 5)
    head = chain.query("SELECT hash FROM audit_log WHERE seq = 5")[0][0]
    forged = audit_event(CLINICIAN, None, "read", resource_type="Patient", resource_id="p1")
    body = orjson.dumps(forged).decode()
    _sql(chain, "INSERT INTO audit_log (seq, event_id, recorded, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)",
         (6, forged["id"], forged["recorded"], body, head, "a" * 64))
    # beyond the recorded head
    result = verify(chain, KEY)
    assert result.broken_seq == 6 and result.reason is not None and result.reason.startswith(audit.FORGED)
    # with the head moved too, its hash still gives it away (no key, no valid HMAC)
    _sql(chain, "UPDATE salus_meta SET value = ? WHERE key = ?", ("6:" + "a" * 64, audit.HEAD_KEY))
    assert (verify(chain, KEY).broken_seq, verify(chain, KEY).reason) == (6, audit.CONTENT_CHANGED)
    # an entry slipped in before the first
    _sql(chain, "UPDATE audit_log SET seq = 0 WHERE seq = 6")
    _sql(chain, "UPDATE salus_meta SET value = ? WHERE key = ?", (f"5:{head}", audit.HEAD_KEY))
    assert verify(chain, KEY).broken_seq == 0


def test_rolled_back_append_leaves_no_entry(chain: Store) -> None:
    _fill(chain, 2)
    with pytest.raises(RuntimeError), chain.transaction() as tx:
        append(tx, audit_record(CLINICIAN, None, "create", resource_type="Patient", resource_id="p2"), KEY)
        raise RuntimeError("the write failed")
    assert chain.query("SELECT COUNT(*) FROM audit_log")[0][0] == 2
    result = verify(chain, KEY)
    assert result.ok and result.checked == 2
    _fill(chain, 1)
    assert verify(chain, KEY).checked == 3


def test_append_many_chunks_and_links(chain: Store) -> None:
    with chain.transaction() as tx:
        ids = append_many(tx, [audit_record(CLINICIAN, None, "search-type", resource_type="Observation",
                                           query=f"Observation?code={i}") for i in range(250)], KEY)
    assert len(set(ids)) == 250
    assert verify(chain, KEY, batch=64).checked == 250


def test_buffered_writer_flushes_on_close_and_on_its_own(chain: Store) -> None:
    writer = BufferedAuditWriter(chain, KEY, interval=60, max_batch=500)
    for i in range(120):
        writer.record(audit_record(CLINICIAN, None, "read", resource_type="Observation", resource_id=f"o{i}"))
    assert chain.query("SELECT COUNT(*) FROM audit_log")[0][0] == 0
    writer.close()
    assert chain.query("SELECT COUNT(*) FROM audit_log")[0][0] == 120
    with pytest.raises(RuntimeError):
        writer.record(audit_record(CLINICIAN, None, "read"))
    # a full batch does not wait for the interval
    with BufferedAuditWriter(chain, KEY, interval=60, max_batch=50) as writer:
        for i in range(50):
            writer.record(audit_record(CLINICIAN, None, "read", resource_type="Observation", resource_id=f"x{i}"))
        for _ in range(200):
            if writer.pending == 0 and chain.query("SELECT COUNT(*) FROM audit_log")[0][0] == 170:
                break
            threading.Event().wait(0.02)
        assert chain.query("SELECT COUNT(*) FROM audit_log")[0][0] == 170
    assert verify(chain, KEY).checked == 170


# SQLite has one writer at a time: the race is PostgreSQL's, so the test runs there only (by parameter, not a skip)
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_concurrent_appends_stay_one_gap_free_chain(chain: Store, backend: str) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(50):
                with chain.transaction() as tx:
                    append(tx, audit_record(CLINICIAN, None, "update", resource_type="Patient",
                                           resource_id=f"t{n}-{i}"), KEY)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [r[0] for r in chain.query("SELECT seq FROM audit_log ORDER BY seq")] == list(range(1, 401))
    result = verify(chain, KEY)
    assert result.ok and result.checked == 400


# ---- salus audit verify ---------------------------------------------------------------------


def test_cli_verify_exit_codes(chain: Store, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    key = load_or_create_key(data)
    with chain.transaction() as tx:
        append_many(tx, [audit_record(CLINICIAN, None, "read", resource_type="Patient", resource_id=str(i))
                         for i in range(1234)], key)
    monkeypatch.setenv("SALUS_DATABASE_URL", backend)
    app = typer.Typer()
    app.add_typer(audit_app, name="audit")
    runner = CliRunner()
    res = runner.invoke(app, ["audit", "verify", "--data-dir", str(data)])
    assert res.exit_code == 0, res.output
    assert "audit chain intact: 1,234 entries" in res.output
    _sql(chain, "UPDATE audit_log SET recorded = ? WHERE seq = 57", ("2000-01-01T00:00:00.000000Z",))
    res = runner.invoke(app, ["audit", "verify", "--data-dir", str(data)])
    assert res.exit_code == 1
    assert "audit chain broken at entry 57: content changed" in res.output
    res = runner.invoke(app, ["audit", "verify", "--data-dir", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "no usable audit key" in res.output
    # salus audit show: the events as JSON lines, unpacked, in chain order
    res = runner.invoke(app, ["audit", "show", "--data-dir", str(data), "--after", "1230"])
    assert res.exit_code == 0, res.output
    shown = [orjson.loads(line) for line in res.output.splitlines()]
    assert [d["seq"] for d in shown] == [1231, 1232, 1233, 1234]
    assert shown[0]["event"]["resourceType"] == "AuditEvent"
    assert shown[0]["event"]["entity"][1]["what"]["reference"] == "Patient/1230"


def test_cli_verify_reads_the_sqlite_database_of_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SALUS_DATABASE_URL", raising=False)
    key = load_or_create_key(tmp_path)
    store = open_store(f"sqlite:///{tmp_path / 'salus.db'}")
    with store.transaction() as tx:
        append(tx, audit_record(CLINICIAN, None, "login"), key)
    store.close()
    app = typer.Typer()
    app.add_typer(audit_app, name="audit")
    res = CliRunner().invoke(app, ["audit", "verify", "-d", str(tmp_path)])
    assert res.exit_code == 0 and "intact: 1 entries" in res.output
