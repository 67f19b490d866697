"""The cost of security: read and search throughput with SMART tokens and the audit trail on, against off.

Both servers run in the same run over the same demo population, one after the
other, so the ratio compares like with like on a noisy machine. "On" means
``SALUS_AUTH=smart`` (every request carries a bearer token that is verified:
signature, claims, and the token's id against revocations in the database),
the policy (scopes and role) checked on every interaction, and the audit
trail written (one AuditEvent per read or search, appended in batches to the
hash chain). Encryption at rest is not built yet, so it is not in the figure.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bench.common import Report, backends
from bench.http_load import WORKERS, free_port, lua_cycle, serving, wrk
from salus import demo
from salus.config import Settings
from salus.loader import import_resources
from salus.security.tokens import Grant, issue_access_token
from salus.service import FhirService
from salus.store import open_store

CLIENTS = 8
TARGET = 0.7


def _with_token(script: Path, token: str) -> Path:
    """The same wrk script, each request with the bearer token."""
    script.write_text(f'wrk.headers["Authorization"] = "Bearer {token}"\n' + script.read_text())
    return script


def run(report: Report, patients: int = 100) -> None:
    """Per backend: serve the population with security off, then on, and compare req/s."""
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk): security cost skipped")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for backend, url in backends(folder):
            data_dir = folder / f"data-{backend}"
            store = open_store(url)
            service = FhirService(store, Settings(data_dir=data_dir))
            import_resources(service, (("demo", r) for r in demo.generate(patients, 1)))
            ids = [r[0] for r in store.query("SELECT res_id FROM resources WHERE res_type = 'Patient' ORDER BY rid")]
            port = free_port()
            base = f"http://127.0.0.1:{port}/fhir"
            # a clinician's app token: the policy and the scopes are both evaluated on every request
            grant = Grant(grant_id="bench", client_id="bench", subject="bench-clinician", scope="user/*.rs",
                          role="clinician", fhir_user="Practitioner/bench")
            token = issue_access_token(store, Settings(auth="smart", access_token_ttl=86_400), base, grant).token
            store.close()
            figures: dict[tuple[str, str], float] = {}
            for mode, env in (
                ("off", {"SALUS_AUTH": "off", "SALUS_AUDIT": "off"}),
                ("tokens only", {"SALUS_AUTH": "smart", "SALUS_AUDIT": "off", "SALUS_ACCESS_TOKEN_TTL": "86400"}),
                ("on", {"SALUS_AUTH": "smart", "SALUS_AUDIT": "on", "SALUS_ACCESS_TOKEN_TTL": "86400"}),
            ):
                with serving(url, data_dir, env, port):
                    for kind, prefix in (("read", "/fhir/Patient/"), ("search _id", "/fhir/Patient?_id=")):
                        script = lua_cycle(prefix, ids, folder, f"{mode}-{kind.replace(' ', '')}")
                        if mode != "off":
                            script = _with_token(script, token)
                        rps, p50, p99, bad = wrk(f"{base}/Patient", script, CLIENTS)
                        figures[(kind, mode)] = rps
                        print(f"   {backend} {kind} security {mode}: {rps:,.0f} req/s p50 {p50} p99 {p99} non-2xx {bad}")
                        if bad:
                            raise RuntimeError(f"{bad} failed requests with security {mode}: the figure would lie")
            for kind in ("read", "search _id"):
                off, on, tokens_only = figures[(kind, "off")], figures[(kind, "on")], figures[(kind, "tokens only")]
                ratio = on / off
                rows.append([backend, kind, str(CLIENTS), f"{on:,.0f}", f"{tokens_only:,.0f}", f"{off:,.0f}",
                             f"{tokens_only / off:.2f}", f"{ratio:.2f}", "ok" if ratio >= TARGET else f"< {TARGET}"])
    report.add(
        "Cost of security (SMART tokens, policy, audit trail)",
        f"wrk on 127.0.0.1, `salus serve --workers {WORKERS}`, {patients} demo patients, {CLIENTS} clients. "
        "On: `SALUS_AUTH=smart` with a clinician's `user/*.rs` token verified on every request, the policy "
        "checked, and an AuditEvent per request appended to the hash chain in batches. Baseline: the same server "
        "with security and audit off, in the same run; 'tokens only' is security on with the audit trail off. Encryption at rest is not built yet. Target: ratio >= 0.7.",
        ["backend", "interaction", "clients", "on req/s", "tokens only req/s", "off req/s", "tokens only ratio",
         "ratio", "verdict"],
        rows,
    )
