"""``salus audit``: prove the audit chain intact, or name the first broken entry; show entries.

Registered by ``salus.cli`` as ``app.add_typer(audit_app, name="audit")``. Exit codes are the
contract scripts and monitoring rely on: 0 intact, 1 broken, 2 cannot verify (no key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from salus.cli_options import DataDir, settings_for

audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
console = Console(stderr=True)


@audit_app.command("verify")
def verify_command(
    data_dir: DataDir = None,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="The audit key (default DATA_DIR/audit.key).")
    ] = None,
) -> None:
    """Recompute every audit entry's hash and link: exit 0 if the chain is intact, 1 at the first broken entry."""
    from salus.security.audit import read_key, verify
    from salus.store import open_configured

    settings = settings_for(data_dir)
    try:
        key = read_key(key_file or settings.data_dir / "audit.key")
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]cannot verify: no usable audit key[/] ({err})")
        raise typer.Exit(2) from err
    store = open_configured(settings, pool_size=1)
    try:
        result = verify(store, key)
    finally:
        store.close()
    if result.ok:
        console.print(f"[green]{result}[/]")
        if result.head_seq:
            # print the head so an operator can keep it elsewhere: a later run that ends before it shows a cut tail
            console.print(f"  head: entry {result.head_seq} {result.head_hash}")
        return
    console.print(f"[red]{result}[/]")
    raise typer.Exit(1)


@audit_app.command("show")
def show_command(
    data_dir: DataDir = None,
    after: Annotated[int, typer.Option("--after", help="Start after this entry number (seq).")] = 0,
    limit: Annotated[int, typer.Option("--limit", help="At most this many entries.")] = 100,
) -> None:
    """Print AuditEvents in chain order, one JSON document per line (stored compressed, and sealed when encrypted)."""
    import orjson

    from salus.security.audit import read_events
    from salus.store import open_configured

    store = open_configured(settings_for(data_dir), pool_size=1)
    try:
        for seq, event in read_events(store, after=after, limit=limit):
            typer.echo(orjson.dumps({"seq": seq, "event": event}).decode())
    finally:
        store.close()
