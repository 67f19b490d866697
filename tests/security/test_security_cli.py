"""``salus clients|users|keys`` as an operator runs them: one-line confirmations, exit 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from joserfc.jwk import RSAKey

SALUS = [sys.executable, "-m", "salus"]


def run(backend: str, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SALUS_DATABASE_URL": backend}
    return subprocess.run([*SALUS, *args, "--data-dir", str(data)], capture_output=True, text=True, timeout=120,
                          env=env)


def test_users(backend: str, tmp_path: Path) -> None:
    res = run(backend, tmp_path, "users", "add", "--username", "doc", "--password", "correct horse",
              "--role", "clinician", "--fhir-user", "Practitioner/pr1")
    assert res.returncode == 0, res.stderr
    assert "added user 'doc' with role clinician as Practitioner/pr1" in res.stderr
    listed = run(backend, tmp_path, "users", "list")
    assert listed.returncode == 0 and "doc" in listed.stdout and "clinician" in listed.stdout
    assert "scrypt" not in listed.stdout + listed.stderr and "correct horse" not in listed.stdout
    bad = run(backend, tmp_path, "users", "add", "--username", "x", "--password", "correct horse", "--role", "surgeon")
    assert bad.returncode == 2 and "unknown role" in bad.stderr and "Traceback" not in bad.stderr
    dup = run(backend, tmp_path, "users", "add", "--username", "doc", "--password", "correct horse", "--role", "nurse")
    assert dup.returncode == 2 and "already exists" in dup.stderr
    assert run(backend, tmp_path, "users", "remove", "doc").returncode == 0
    gone = run(backend, tmp_path, "users", "remove", "doc")
    assert gone.returncode == 2 and "no user 'doc'" in gone.stderr and "Traceback" not in gone.stderr


def test_clients(backend: str, tmp_path: Path) -> None:
    key = RSAKey.generate_key(2048, private=True)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    res = run(backend, tmp_path, "clients", "add", "--client-id", "bulk", "--scope", "system/*.rs", "--jwks-file", str(jwks))
    assert res.returncode == 0 and "added backend client 'bulk'" in res.stderr
    res = run(backend, tmp_path, "clients", "add", "--client-id", "app", "--scope", "patient/*.rs",
              "--redirect-uri", "https://app.example.org/cb", "--public")
    assert res.returncode == 0 and "added public client 'app'" in res.stderr
    res = run(backend, tmp_path, "clients", "add", "--client-id", "conf", "--scope", "user/*.rs",
              "--redirect-uri", "https://app.example.org/cb")
    assert res.returncode == 0 and "added confidential client 'conf'" in res.stderr
    secret = res.stdout.strip().rsplit(" ", 1)[-1]
    assert len(secret) >= 32
    listed = run(backend, tmp_path, "clients", "list")
    assert all(c in listed.stdout for c in ("bulk", "app", "conf", "backend", "public", "confidential"))
    assert secret not in listed.stdout and "scrypt" not in listed.stdout
    bad = run(backend, tmp_path, "clients", "add", "--client-id", "x", "--scope", "user/*.rs")
    assert bad.returncode == 2 and "--jwks-file" in bad.stderr and "Traceback" not in bad.stderr
    private = tmp_path / "private.json"
    private.write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    bad = run(backend, tmp_path, "clients", "add", "--client-id", "y", "--scope", "system/*.rs", "--jwks-file", str(private))
    assert bad.returncode == 2 and "private key" in bad.stderr
    missing = run(backend, tmp_path, "clients", "add", "--client-id", "z", "--scope", "s", "--jwks-file", "nope.json")
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert run(backend, tmp_path, "clients", "remove", "app").returncode == 0
    assert run(backend, tmp_path, "clients", "remove", "app").returncode == 2


def test_keys(backend: str, tmp_path: Path) -> None:
    first = run(backend, tmp_path, "keys", "rotate")
    assert first.returncode == 0 and "new active RS256 signing key" in first.stderr
    second = run(backend, tmp_path, "keys", "rotate", "--alg", "ES384")
    assert second.returncode == 0 and "ES384" in second.stderr
    listed = run(backend, tmp_path, "keys", "list")
    kid1, kid2 = first.stderr.split()[-1], second.stderr.split()[-1]
    assert kid1 in listed.stdout and kid2 in listed.stdout and "active" in listed.stdout
    bad = run(backend, tmp_path, "keys", "rotate", "--alg", "HS256")
    assert bad.returncode == 2 and "unsupported signing algorithm" in bad.stderr


def test_encryption_keys(backend: str, tmp_path: Path) -> None:
    made = subprocess.run([*SALUS, "keys", "new-master"], capture_output=True, text=True, timeout=60)
    old = made.stdout.strip()
    new = subprocess.run([*SALUS, "keys", "new-master"], capture_output=True, text=True, timeout=60).stdout.strip()
    assert made.returncode == 0 and len(old) == 44 and old != new
    key_file = tmp_path / "master.keys"
    key_file.write_text(old + "\n")

    def salus(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        full = {**os.environ, "SALUS_DATABASE_URL": backend, **env}
        return subprocess.run([*SALUS, *args, "--data-dir", str(tmp_path)], capture_output=True, text=True,
                              timeout=120, env=full)

    assert salus("db", "upgrade", SALUS_MASTER_KEY_FILE=str(key_file)).returncode == 0
    # without the key, or with another one, the database is refused with a message
    for env in ({}, {"SALUS_MASTER_KEY": new}):
        res = salus("keys", "list", **env)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        said = " ".join(res.stderr.split())  # rich wraps long lines
        assert "this database is encrypted" in said or "which is not configured" in said
    # the master key changes: new first, old second; afterwards the new one alone opens the database
    res = salus("keys", "rotate", SALUS_MASTER_KEY=f"{new},{old}")
    assert res.returncode == 0, res.stderr
    said = " ".join(res.stderr.split())
    assert "new data key 3" in said and "2 data keys re-wrapped" in said
    assert salus("keys", "list", SALUS_MASTER_KEY=new).returncode == 0
    assert salus("keys", "list", SALUS_MASTER_KEY_FILE=str(key_file)).returncode == 2
