"""The cost of security: read and search throughput with tokens, audit and encryption on, against off.

The five servers (one per mode) run side by side over the same demo population,
and the measurements are interleaved: each round runs every mode once, one
after the other, for each kind of request. A mode's ratio in a round is against
"off" measured a few seconds before it, and the table gives the median over
ROUNDS rounds: run one mode after the other instead, and the machine's drift
between the first and the last decided the verdict (ratios moved by 0.2). Tokens:
``SALUS_AUTH=smart``, every request carries a bearer token that is verified
(signature, claims, the token's id against revocations) and the policy (scopes
and role) is checked on every interaction. Audit: one AuditEvent per read or
search, appended in batches to the hash chain. Encryption: a second database
loaded with the same population under a master key, so bodies are sealed
(AES-256-GCM) and names are searched through keyed hashes.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from contextlib import ExitStack
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
ROUNDS = int(os.environ.get("SALUS_BENCH_SECURITY_ROUNDS", "3"))
DURATION = os.environ.get("SALUS_BENCH_SECURITY_DURATION", "5s")


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


def _load(
    url: str, data_dir: Path, patients: int, master: str | None, bases: list[str],
) -> tuple[list[str], list[str], dict[str, str]]:
    """Load the population; its Patient ids, family names, and a clinician's access token per FHIR base URL."""
    store = open_store(url, master_keys=parse_master_keys(master) if master else ())
    service = FhirService(store, Settings(data_dir=data_dir))
    import_resources(service, (("demo", r) for r in demo.generate(patients, 1)))
    ids = [r[0] for r in store.query("SELECT res_id FROM resources WHERE res_type = 'Patient' ORDER BY rid")]
    families = sorted({quote(orjson.loads(p.body)["name"][0]["family"])  # type: ignore[arg-type]
                       for p in store.iter_current("Patient") if '"family":' in (p.body or "")})
    # a clinician's app token: the policy and the scopes are both evaluated on every request
    grant = Grant(grant_id="bench", client_id="bench", subject="bench-clinician", scope="user/*.rs",
                  role="clinician", fhir_user="Practitioner/bench")
    settings = Settings(auth="smart", access_token_ttl=86_400)
    tokens = {base: issue_access_token(store, settings, base, grant).token for base in bases}
    store.close()
    return ids, families, tokens


def run(report: Report, patients: int = 100) -> None:
    """Per backend: a server per mode, every mode measured in each round; median req/s and per-round ratios."""
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk): security cost skipped")
        return
    rows = []
    master = new_master_key()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for backend, (plain_url, sealed_url) in backend_databases(folder, 2):
            loaded = {False: (plain_url, folder / f"plain-{backend}"), True: (sealed_url, folder / f"sealed-{backend}")}
            ports = {mode: free_port() for mode, _, _ in MODES}
            # a token's audience is the base URL it is presented to: one token per server
            bases = {mode: f"http://127.0.0.1:{port}/fhir" for mode, port in ports.items()}
            values = {enc: _load(url, d, patients, master if enc else None, list(bases.values()))
                      for enc, (url, d) in loaded.items()}
            scripts: dict[tuple[str, str], Path] = {}
            for mode, env, enc in MODES:
                ids, families, tokens = values[enc]
                for kind, prefix in KINDS:
                    script = lua_cycle(prefix, families if "family" in kind else ids, folder,
                                       f"{backend}-{mode}-{kind}".replace(" ", "").replace("+", ""))
                    if env["SALUS_AUTH"] == "smart":
                        script = _with_token(script, tokens[bases[mode]])
                    scripts[(mode, kind)] = script
            rps: dict[tuple[str, str], list[float]] = {key: [] for key in scripts}
            with ExitStack() as servers:
                for mode, env, enc in MODES:
                    url, data_dir = loaded[enc]
                    servers.enter_context(serving(url, data_dir, {
                        **env, **({"SALUS_MASTER_KEY": master} if enc else {})}, ports[mode]))
                for round_no in range(1, ROUNDS + 1):
                    for kind, _ in KINDS:
                        for mode, _, _ in MODES:
                            r, p50, p99, bad = wrk(f"http://127.0.0.1:{ports[mode]}/fhir/Patient", scripts[(mode, kind)],
                                                   CLIENTS, DURATION)
                            if bad:
                                raise RuntimeError(f"{bad} failed requests with {mode}: the figure would lie")
                            rps[(mode, kind)].append(r)
                            print(f"   round {round_no} {backend} {kind} {mode}: {r:,.0f} req/s p50 {p50} p99 {p99}")
            for kind, _ in KINDS:
                off = rps[("off", kind)]
                ratios = {m: statistics.median(a / b for a, b in zip(rps[(m, kind)], off, strict=True))
                          for m, _, _ in MODES[1:]}
                rows.append([backend, kind, *(f"{statistics.median(rps[(m, kind)]):,.0f}" for m, _, _ in MODES),
                             *(f"{ratios[m]:.2f}" for m, _, _ in MODES[1:]),
                             "ok" if ratios["all on"] >= TARGET else f"< {TARGET}"])
    report.add(
        "Cost of security (SMART tokens, policy, audit trail, encryption at rest)",
        f"wrk on 127.0.0.1, one `salus serve --workers {WORKERS}` per mode, {patients} demo patients, {CLIENTS} clients, "
        f"{DURATION} per cell, {ROUNDS} rounds, each round measuring every mode one after the other. "
        "tokens: `SALUS_AUTH=smart` with a clinician's `user/*.rs` token verified on every request and the policy "
        "checked; audit: an AuditEvent per request (one per patient returned by a search) appended to the hash "
        "chain in batches; encryption: the same population in a database under a master key (bodies sealed with "
        "AES-256-GCM, names searched by keyed hash). Baseline: the same server with all of it off, in the same "
        "round. req/s are medians over the rounds; ratios are the median of each round's req/s against off's. "
        "Target: 'all on' >= 0.7.",
        ["backend", "interaction", *(f"{m} req/s" for m, _, _ in MODES), *(f"{m} ratio" for m, _, _ in MODES[1:]),
         "verdict"],
        rows,
    )
