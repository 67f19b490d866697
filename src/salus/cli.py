"""The ``salus`` command line: serve, demo, import, export, reindex, db upgrade.

The command-line contract is stable (scripts rely on it): see ``salus --help``
and docs/cli.md.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from salus.cli_options import DataDir, describe_db, settings_for
from salus.config import Settings, auth_mode
from salus.security.audit_cli import audit_app
from salus.security.cli import clients_app, keys_app, users_app

app = typer.Typer(
    help="Salus: a FHIR R4 server and clinical data platform. SQLite by default; "
    "set SALUS_DATABASE_URL=postgresql://... for PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(clients_app, name="clients")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
console = Console(stderr=True)


def _service(settings: Settings):  # type: ignore[no-untyped-def]
    from salus.service import FhirService
    from salus.store import open_configured

    return FhirService(open_configured(settings), settings)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    data_dir: DataDir = None,
    workers: Annotated[int, typer.Option(help="Worker processes (each with its own connections).")] = 1,
    auth: Annotated[str | None, typer.Option(
        help="'off' (default, loopback only: every request has full rights) or 'smart' "
             "(SMART on FHIR access tokens required; also SALUS_AUTH).")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM) to serve HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM) for --tls-cert.")] = None,
    behind_tls_proxy: Annotated[bool, typer.Option(
        "--behind-tls-proxy", help="A TLS-terminating proxy sits in front: allow plain HTTP on a non-loopback address.")] = False,
) -> None:
    """Serve the FHIR R4 API at http://HOST:PORT/fhir."""
    import uvicorn

    try:
        settings = settings_for(data_dir, host=host, port=port, workers=workers,
                                auth=auth_mode(auth, "--auth") if auth is not None else None)
    except ValueError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from err
    if (tls_cert is None) != (tls_key is None):
        console.print("[red]error:[/] --tls-cert and --tls-key go together")
        raise typer.Exit(2)
    if not _loopback(host):
        # health data never crosses a network unauthenticated or in clear text
        if settings.auth == "off":
            console.print(f"[red]error:[/] security is off, so Salus only listens on loopback, not {host}; "
                          "use --auth smart (with TLS) to serve a network")
            raise typer.Exit(2)
        if tls_cert is None and not behind_tls_proxy:
            console.print(f"[red]error:[/] refusing to serve {host} without TLS: pass --tls-cert/--tls-key, "
                          "or --behind-tls-proxy when a TLS proxy sits in front")
            raise typer.Exit(2)
    # workers are separate processes: hand them the settings through the environment
    os.environ["SALUS_DATA_DIR"] = str(settings.data_dir)
    os.environ["SALUS_AUTH"] = settings.auth
    if settings.database_url:
        os.environ["SALUS_DATABASE_URL"] = settings.database_url
    from salus.store import open_configured

    store = open_configured(settings, pool_size=1)  # create/migrate once, before workers start
    encrypted = store.crypto is not None
    store.close()
    scheme = "https" if tls_cert else "http"
    console.print(f"[bold green]Salus[/] FHIR R4 server on [bold]{scheme}://{host}:{port}/fhir[/]")
    console.print(f"  store: {describe_db(settings)}; workers: {workers}; "
                  f"encryption at rest: {'on (AES-256-GCM)' if encrypted else 'off'}")
    if settings.auth == "off":
        console.print("  [yellow]security is OFF[/]: no authentication, every request has full rights; loopback only")
    else:
        console.print(f"  security: SMART on FHIR; discovery at {scheme}://{host}:{port}/fhir/.well-known/smart-configuration")
    console.print(f"  try: curl {scheme}://{host}:{port}/fhir/metadata")
    uvicorn.run(
        "salus.api.asgi:app", host=host, port=port, workers=workers, log_level="warning",
        access_log=False, proxy_headers=behind_tls_proxy,
        ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None,
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )


def _print_report(report, seconds: float) -> None:  # type: ignore[no-untyped-def]
    table = Table(title="Loaded", show_lines=False)
    table.add_column("resource type")
    table.add_column("count", justify="right")
    for t, n in sorted(report.loaded.items()):
        table.add_row(t, str(n))
    console.print(table)
    rate = report.total_loaded / seconds if seconds > 0 else 0.0
    console.print(f"{report.total_loaded} resources loaded in {seconds:.1f} s ({rate:,.0f}/s); {len(report.rejected)} rejected")
    for where, why in report.rejected[:50]:
        console.print(f"  [red]rejected[/] {where}: {why}")
    if len(report.rejected) > 50:
        console.print(f"  ... and {len(report.rejected) - 50} more")


@app.command()
def demo(
    patients: Annotated[int, typer.Option("--patients", "-n", help="How many patients to generate.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same data.")] = 1,
    data_dir: DataDir = None,
) -> None:
    """Generate a realistic, seeded demo population and load it."""
    import time

    from salus import demo as demo_mod
    from salus.loader import import_resources

    settings = settings_for(data_dir)
    service = _service(settings)
    expected = demo_mod.estimate(patients) if hasattr(demo_mod, "estimate") else None
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task(f"demo ({patients} patients)", total=expected)
        report = import_resources(
            service, (("demo", r) for r in demo_mod.generate(patients, seed)),
            progress=lambda n: progress.advance(task, n),
        )
    _print_report(report, time.perf_counter() - start)
    console.print(f"store: {describe_db(settings)}")
    if report.rejected:
        raise typer.Exit(1)


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="NDJSON, .ndjson.gz or Bundle JSON files, or folders of them.")],
    data_dir: DataDir = None,
) -> None:
    """Import FHIR resources; prints what was loaded and what was rejected and why."""
    import time

    from salus.loader import expand_paths, import_resources, read_file

    settings = settings_for(data_dir)
    files = expand_paths(paths)
    missing = [p for p in files if not p.exists()]
    if missing:
        console.print(f"[red]no such file:[/] {missing[0]}")
        raise typer.Exit(2)
    service = _service(settings)
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task(f"import ({len(files)} files)", total=None)
        # one import over all files, so references between files resolve whatever their order
        items = itertools.chain.from_iterable(read_file(f) for f in files)
        report = import_resources(service, items, progress=lambda n: progress.advance(task, n))
    _print_report(report, time.perf_counter() - start)
    if report.rejected:
        raise typer.Exit(1)


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="A folder (one Type.ndjson per type) or a single .ndjson file.")],
    type_: Annotated[list[str] | None, typer.Option("--type", "-t", help="Only these resource types (repeatable).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Export current resources as NDJSON."""
    settings = settings_for(data_dir)
    service = _service(settings)
    types = type_ or [None]
    single = out.suffix == ".ndjson"
    if not single:
        out.mkdir(parents=True, exist_ok=True)
    handles: dict[str, object] = {}
    n = 0
    try:
        for t in types:
            for v in service.store.iter_current(t):
                key = "all" if single else v.res_type
                if key not in handles:
                    handles[key] = (out if single else out / f"{v.res_type}.ndjson").open("w")
                handles[key].write(v.body + "\n")  # type: ignore[attr-defined]
                n += 1
    finally:
        for h in handles.values():
            h.close()  # type: ignore[attr-defined]
    console.print(f"exported {n} resources to {out}")


@app.command()
def reindex(
    type_: Annotated[list[str] | None, typer.Option("--type", "-t", help="Only these resource types (repeatable).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Rebuild the search index, so SearchParameters added or changed on the server cover every resource."""
    import time

    from salus.fhir.outcome import FhirError

    settings = settings_for(data_dir)
    service = _service(settings)
    start = time.perf_counter()
    try:
        with _progress() as progress:
            task = progress.add_task("reindex", total=None)
            report = service.reindex(
                type_, progress=lambda done, total: progress.update(task, completed=done, total=total)
            )
    except FhirError as err:
        console.print(f"[red]{err.message}[/]")
        raise typer.Exit(2) from err
    table = Table(title="Reindexed")
    table.add_column("resource type")
    table.add_column("count", justify="right")
    for t, n in sorted(report.counts.items()):
        table.add_row(t, str(n))
    console.print(table)
    console.print(f"{report.total} resources reindexed in {time.perf_counter() - start:.1f} s")
    for name in report.ready:
        console.print(f"  [green]ready[/] {name}")
    for name in report.pending:
        console.print(f"  [yellow]still pending[/] {name}")


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Create or migrate the database schema to the current version."""
    from salus.store import open_configured
    from salus.store.schema import SCHEMA_VERSION

    settings = settings_for(data_dir)
    open_configured(settings).close()
    console.print(f"{describe_db(settings)}: schema at version {SCHEMA_VERSION}")


def main() -> None:
    """Entry point of ``salus`` and ``python -m salus``: a database it cannot use is a message, not a traceback."""
    from salus.store.crypto import EncryptionError
    from salus.store.schema import SchemaTooNew

    try:
        app()
    except (SchemaTooNew, EncryptionError) as err:
        console.print(f"[red]error:[/] {err}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
