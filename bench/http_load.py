"""create, read and search-by-id under 1, 8 and 32 concurrent clients, driven by wrk over 127.0.0.1."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.common import ROOT, Report, backends
from salus import demo
from salus.config import Settings
from salus.loader import import_resources
from salus.service import FhirService
from salus.store import open_store

CLIENTS = (1, 8, 32)
DURATION = os.environ.get("SALUS_BENCH_DURATION", "8s")
WORKERS = int(os.environ.get("SALUS_BENCH_WORKERS", "2"))
CREATE_BODY = '{"resourceType":"Patient","name":[{"family":"Bench","given":["Wrk"]}],"gender":"female","birthDate":"1970-01-01"}'


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    """Block until the server answers (or fail if it died)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def lua_cycle(path_prefix: str, values: list[str], folder: Path, name: str) -> Path:
    """A wrk script that cycles GETs through ``values``."""
    script = folder / f"{name}.lua"
    ids = ",".join(f'"{v}"' for v in values)
    script.write_text(
        f"ids = {{{ids}}}\ni = 0\nrequest = function()\n  i = i % #ids + 1\n"
        f'  return wrk.format("GET", "{path_prefix}" .. ids[i])\nend\n'
    )
    return script


def lua_create(folder: Path) -> Path:
    """A wrk script that POSTs a Patient."""
    script = folder / "create.lua"
    script.write_text(
        f"wrk.method = \"POST\"\nwrk.body = '{CREATE_BODY}'\n"
        'wrk.headers["Content-Type"] = "application/fhir+json"\n'
    )
    return script


def wrk(url: str, script: Path | None, clients: int, duration: str = DURATION) -> tuple[float, str, str, int]:
    """(req/s, p50, p99, non-2xx count) of one wrk run."""
    cmd = ["wrk", "-t", str(min(clients, 2)), "-c", str(clients), "-d", duration, "--latency"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=300).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"\s50%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"\s99%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, p50, p99, int(bad.group(1)) if bad else 0


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a server process quietly."""
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server process."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextmanager
def serving(url: str, data_dir: Path, env: dict[str, str] | None = None, port: int | None = None) -> Iterator[str]:
    """``salus serve --workers WORKERS`` over a database, until the block ends; yields its root URL."""
    port = port or free_port()
    proc = start([sys.executable, "-m", "salus", "serve", "--port", str(port), "--workers", str(WORKERS),
                  "--data-dir", str(data_dir)],
                 {"SALUS_DATA_DIR": str(data_dir), "SALUS_DATABASE_URL": url, **(env or {})})
    try:
        root = f"http://127.0.0.1:{port}"
        wait_up(f"{root}/fhir/metadata", proc)
        yield root
    finally:
        stop(proc)


def run(report: Report, patients: int = 100) -> None:
    """Load a demo population per backend, then measure each interaction against the framework ceiling."""
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk): HTTP figures skipped")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        base = start([sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--port", str(port),
                      "--workers", str(WORKERS), "--log-level", "warning", "--no-access-log"], {})
        wait_up(f"http://127.0.0.1:{port}/", base)
        ceiling = {c: wrk(f"http://127.0.0.1:{port}/fhir/Patient/x", None, c) for c in CLIENTS}
        stop(base)
        for backend, url in backends(folder):
            data_dir = folder / f"data-{backend}"
            service = FhirService(open_store(url), Settings(data_dir=data_dir))
            import_resources(service, (("demo", r) for r in demo.generate(patients, 1)))
            ids = [r[0] for r in service.store.query("SELECT res_id FROM resources WHERE res_type = 'Patient' ORDER BY rid")]
            service.store.close()
            with serving(url, data_dir) as root:
                fhir = f"{root}/fhir"
                scripts = {
                    "read": lua_cycle("/fhir/Patient/", ids, folder, "read"),
                    "search _id": lua_cycle("/fhir/Patient?_id=", ids, folder, "search"),
                    "create": lua_create(folder),
                }
                for kind, script in scripts.items():
                    for c in CLIENTS:
                        rps, p50, p99, bad = wrk(f"{fhir}/Patient", script, c)
                        ceil = ceiling[c][0]
                        rows.append([backend, kind, str(c), f"{rps:,.0f}", p50, p99, str(bad), f"{ceil:,.0f}",
                                     f"{rps / ceil:.2f}"])
                        print("  ", rows[-1])
    report.add(
        "HTTP interactions under concurrency",
        f"wrk on 127.0.0.1, {DURATION} per cell, server `salus serve --workers {WORKERS}` over {patients} demo patients "
        "(reads cycle through every Patient id). Baseline: the same uvicorn/Starlette stack answering a constant "
        "Patient with no store behind it (`bench/baseline_app.py`), same client count. "
        "Targets at 8 clients: reads >= 5,000 req/s, creates >= 1,500 req/s.",
        ["backend", "interaction", "clients", "req/s", "p50", "p99", "non-2xx", "baseline req/s", "ratio"],
        rows,
    )
