"""The cost of security: read and search throughput with tokens, audit and encryption on, against off.

Every server runs in the same run over the same demo population, one after
the other, so the ratios compare like with like on a noisy machine. Tokens:
``SALUS_AUTH=smart``, every request carries a bearer token that is verified
(signature, claims, the token's id against revocations) and the policy (scopes
and role) is checked on every interaction. Audit: one AuditEvent per read or
search, appended in batches to the hash chain. Encryption: a second database
loaded with the same population under a master key, so bodies are sealed
(AES-256-GCM) and names are searched through keyed hashes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote

import orjson

from bench.common import Report, backend_databases
from bench.http_load import WORKERS, free_port, lua_cycle, serving, wrk
from salus import demo
from salus.config import Settings
from salus.loader import import_resources
from salus.security.tokens import Grant, issue_access_token
from salus.service import FhirService
from salus.store import open_store
from salus.store.crypto import new_master_key, parse_master_keys

CLIENTS = 8
TARGET = 0.7


def _with_token(script: Path, token: str) -> Path:
    """The same wrk script, each request with the bearer token."""
    script.write_text(f'wrk.headers["Authorization"] = "Bearer {token}"\n' + script.read_text())
    return script


TOKENS = {"SALUS_AUTH": "smart", "SALUS_ACCESS_TOKEN_TTL": "86400"}
# (label, server environment, on the encrypted database?)
MODES = (
    ("off", {"SALUS_AUTH": "off", "SALUS_AUDIT": "off"}, False),
    ("tokens", {**TOKENS, "SALUS_AUDIT": "off"}, False),
    ("tokens+audit", {**TOKENS, "SALUS_AUDIT": "on"}, False),
    ("encryption", {"SALUS_AUTH": "off", "SALUS_AUDIT": "off"}, True),
    ("all on", {**TOKENS, "SALUS_AUDIT": "on"}, True),
)
KINDS = (("read", "/fhir/Patient/"), ("search _id", "/fhir/Patient?_id="), ("search family", "/fhir/Patient?family="))


def _load(url: str, data_dir: Path, patients: int, master: str | None, base: str) -> tuple[list[str], list[str], str]:
    """Load the population; its Patient ids, family names, and a clinician's access token for it."""
    store = open_store(url, master_keys=parse_master_keys(master) if master else ())
    service = FhirService(store, Settings(data_dir=data_dir))
    import_resources(service, (("demo", r) for r in demo.generate(patients, 1)))
    ids = [r[0] for r in store.query("SELECT res_id FROM resources WHERE res_type = 'Patient' ORDER BY rid")]
    families = sorted({quote(orjson.loads(p.body)["name"][0]["family"])  # type: ignore[arg-type]
                       for p in store.iter_current("Patient") if '"family":' in (p.body or "")})
    # a clinician's app token: the policy and the scopes are both evaluated on every request
    grant = Grant(grant_id="bench", client_id="bench", subject="bench-clinician", scope="user/*.rs",
                  role="clinician", fhir_user="Practitioner/bench")
    token = issue_access_token(store, Settings(auth="smart", access_token_ttl=86_400), base, grant).token
    store.close()
    return ids, families, token


def run(report: Report, patients: int = 100) -> None:
    """Per backend: serve the population in each mode, one after the other, and compare req/s with off."""
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk): security cost skipped")
        return
    rows = []
    master = new_master_key()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for backend, (plain_url, sealed_url) in backend_databases(folder, 2):
            loaded = {False: (plain_url, folder / f"plain-{backend}"), True: (sealed_url, folder / f"sealed-{backend}")}
            port = free_port()
            values = {enc: _load(url, d, patients, master if enc else None, f"http://127.0.0.1:{port}/fhir")
                      for enc, (url, d) in loaded.items()}
            figures: dict[tuple[str, str], float] = {}
            for mode, env, enc in MODES:
                url, data_dir = loaded[enc]
                ids, families, token = values[enc]
                with serving(url, data_dir, {**env, **({"SALUS_MASTER_KEY": master} if enc else {})}, port):
                    for kind, prefix in KINDS:
                        script = lua_cycle(prefix, families if "family" in kind else ids, folder,
                                           f"{mode}-{kind}".replace(" ", "").replace("+", ""))
                        if "SALUS_AUTH" in env and env["SALUS_AUTH"] == "smart":
                            script = _with_token(script, token)
                        rps, p50, p99, bad = wrk(f"http://127.0.0.1:{port}/fhir/Patient", script, CLIENTS)
                        figures[(kind, mode)] = rps
                        print(f"   {backend} {kind} {mode}: {rps:,.0f} req/s p50 {p50} p99 {p99} non-2xx {bad}")
                        if bad:
                            raise RuntimeError(f"{bad} failed requests with {mode}: the figure would lie")
            for kind, _ in KINDS:
                off = figures[(kind, "off")]
                ratio = figures[(kind, "all on")] / off
                rows.append([backend, kind, *(f"{figures[(kind, m)]:,.0f}" for m, _, _ in MODES),
                             *(f"{figures[(kind, m)] / off:.2f}" for m, _, _ in MODES[1:]),
                             "ok" if ratio >= TARGET else f"< {TARGET}"])
    report.add(
        "Cost of security (SMART tokens, policy, audit trail, encryption at rest)",
        f"wrk on 127.0.0.1, `salus serve --workers {WORKERS}`, {patients} demo patients, {CLIENTS} clients. "
        "tokens: `SALUS_AUTH=smart` with a clinician's `user/*.rs` token verified on every request and the policy "
        "checked; audit: an AuditEvent per request appended to the hash chain in batches; encryption: the same "
        "population in a database under a master key (bodies sealed with AES-256-GCM, names searched by keyed "
        "hash). Baseline: the same server with all of it off, in the same run. Ratios are req/s against off. "
        "Target: 'all on' >= 0.7.",
        ["backend", "interaction", *(f"{m} req/s" for m, _, _ in MODES), *(f"{m} ratio" for m, _, _ in MODES[1:]),
         "verdict"],
        rows,
    )
