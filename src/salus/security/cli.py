"""``salus clients``, ``salus users`` and ``salus keys``: the operator's side of the authorization server.

Registration is deliberately a command-line act (no dynamic registration endpoint): whoever
can run these commands can already read the database. Secrets are shown once, never listed.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from salus.cli_options import DataDir, describe_db, settings_for
from salus.store.base import Store

clients_app = typer.Typer(help="Client applications of the SMART authorization server.", no_args_is_help=True)
users_app = typer.Typer(help="Users who log in to the SMART authorization server.", no_args_is_help=True)
keys_app = typer.Typer(help="The server's keys: token signing keys, and the data keys of encryption at rest.",
                       no_args_is_help=True)

err = Console(stderr=True)
out = Console()



@contextmanager
def _store(data_dir: Path | None) -> Iterator[tuple[Store, str]]:
    """The store the settings name and its description; a ``ValueError`` becomes exit status 2."""
    from salus.store import open_configured

    settings = settings_for(data_dir)
    store = open_configured(settings, pool_size=1)
    try:
        yield store, describe_db(settings)
    except ValueError as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    finally:
        store.close()


# ---- clients ---------------------------------------------------------------------


@clients_app.command("add")
def clients_add(
    client_id: Annotated[str, typer.Option("--client-id", help="The client_id the application will send.")],
    scope: Annotated[str, typer.Option("--scope", help='Scopes it may be granted, e.g. "launch/patient openid fhirUser patient/*.rs".')],
    jwks_file: Annotated[Path | None, typer.Option("--jwks-file", help="Public JWKS of a backend service (private_key_jwt).")] = None,
    redirect_uri: Annotated[list[str] | None, typer.Option("--redirect-uri", help="A redirect URI of an app (repeatable).")] = None,
    public: Annotated[bool, typer.Option("--public", help="A public app (no secret: PKCE only).")] = False,
    secret: Annotated[str | None, typer.Option("--secret", help="A confidential app's secret (default: generated and shown once).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Register a backend service (--jwks-file) or an app (--redirect-uri, confidential unless --public)."""
    from salus.security.accounts import add_client

    redirect_uris = redirect_uri or []
    jwks = None
    if jwks_file is not None:
        if public or secret:
            err.print("[red]error:[/] a backend service (--jwks-file) has neither --public nor --secret")
            raise typer.Exit(2)
        try:
            jwks = json.loads(jwks_file.read_text())
        except (OSError, ValueError) as e:
            err.print(f"[red]error:[/] cannot read the JWKS file {jwks_file}: {e}")
            raise typer.Exit(2) from None
        kind = "backend"
    elif not redirect_uris:
        err.print("[red]error:[/] give --jwks-file (backend service) or --redirect-uri (app)")
        raise typer.Exit(2)
    elif public:
        if secret:
            err.print("[red]error:[/] a --public app has no --secret")
            raise typer.Exit(2)
        kind = "public"
    else:
        kind = "confidential"
    generated = kind == "confidential" and secret is None
    if generated:
        secret = secrets.token_urlsafe(32)
    with _store(data_dir) as (store, where):
        add_client(store, client_id, kind, scope, redirect_uris=redirect_uris, secret=secret, jwks=jwks)
        err.print(f"added {kind} client {client_id!r} ({where})")
    if generated:
        typer.echo(f"client secret (shown only now): {secret}")  # plain: scripts capture it, rich would wrap


@clients_app.command("list")
def clients_list(data_dir: DataDir = None) -> None:
    """List the registered clients (never their secrets)."""
    from salus.security.accounts import list_clients

    with _store(data_dir) as (store, _):
        clients = list_clients(store)
    table = Table(title=f"{len(clients)} clients")
    for col in ("client_id", "kind", "scope", "redirect URIs"):
        table.add_column(col)
    for c in clients:
        table.add_row(c.client_id, c.kind, c.scope, " ".join(c.redirect_uris))
    out.print(table)


@clients_app.command("remove")
def clients_remove(client_id: Annotated[str, typer.Argument(help="The client to remove.")], data_dir: DataDir = None) -> None:
    """Remove a client and revoke every token issued to it."""
    from salus.security.accounts import remove_client

    with _store(data_dir) as (store, _):
        remove_client(store, client_id)
    err.print(f"removed client {client_id!r}; its tokens are revoked")


# ---- users -----------------------------------------------------------------------


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Option("--username", help="The login name.")],
    role: Annotated[str, typer.Option("--role", help="clinician, nurse, receptionist, patient, admin or auditor.")],
    password: Annotated[str, typer.Option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
                                          help="At least 8 characters (prompted for when omitted).")],
    fhir_user: Annotated[str | None, typer.Option("--fhir-user", help="Their FHIR resource: Practitioner/x or Patient/y.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Add a user who can log in to authorize apps."""
    from salus.security.accounts import add_user

    with _store(data_dir) as (store, where):
        add_user(store, username, password, role, fhir_user)
    err.print(f"added user {username!r} with role {role}" + (f" as {fhir_user}" if fhir_user else "") + f" ({where})")


@users_app.command("list")
def users_list(data_dir: DataDir = None) -> None:
    """List the users and their roles (never their password hashes)."""
    from salus.security.accounts import list_users

    with _store(data_dir) as (store, _):
        users = list_users(store)
    table = Table(title=f"{len(users)} users")
    for col in ("username", "role", "fhirUser"):
        table.add_column(col)
    for u in users:
        table.add_row(u.username, u.role, u.fhir_user or "")
    out.print(table)


@users_app.command("remove")
def users_remove(username: Annotated[str, typer.Argument(help="The user to remove.")], data_dir: DataDir = None) -> None:
    """Remove a user and revoke the tokens issued to them."""
    from salus.security.accounts import remove_user

    with _store(data_dir) as (store, _):
        remove_user(store, username)
    err.print(f"removed user {username!r}; their tokens are revoked")


# ---- keys ------------------------------------------------------------------------


@keys_app.command("rotate")
def keys_rotate(
    alg: Annotated[str, typer.Option("--alg", help="RS256 (what every SMART client verifies) or ES384.")] = "RS256",
    data_dir: DataDir = None,
) -> None:
    """Rotate keys while servers keep running.

    A new token signing key becomes active (the previous ones stay published until their
    tokens expire). With encryption at rest on, a new data key seals new writes, and every
    data key is wrapped under the current master key: the first of SALUS_MASTER_KEY (or the
    key file). To change the master key, give servers the new key after the old one and
    restart them one by one, then put the new key first and run this; afterwards the old
    key can be removed. Nothing is re-encrypted.
    """
    from salus.security import keys
    from salus.store.crypto import read_master_keys, rotate

    settings = settings_for(data_dir)
    with _store(data_dir) as (store, _):
        key = keys.rotate(store, alg)
        err.print(f"new active {key.alg} signing key {key.kid}")
        if store.crypto is not None:
            done = rotate(store, read_master_keys(settings.master_key, settings.master_key_file))
            err.print(f"new data key {done.new_kid} for new writes; {done.rewrapped} data keys re-wrapped; "
                      f"every data key is now wrapped by master key {done.master}")


@keys_app.command("new-master")
def keys_new_master() -> None:
    """Print a new random master key (base64) for SALUS_MASTER_KEY or a key file; nothing is stored."""
    from salus.store.crypto import new_master_key

    out.print(new_master_key(), highlight=False)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """List the signing keys, newest (active) first."""
    import datetime as dt

    from salus.security import keys

    with _store(data_dir) as (store, _):
        found = keys.list_keys(store)

    def when(t: int | None) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds") if t else ""

    table = Table(title=f"{len(found)} signing keys")
    for col in ("kid", "alg", "created", "retired"):
        table.add_column(col)
    for k in found:
        table.add_row(k.kid, k.alg, when(k.created), when(k.retired) or "active")
    out.print(table)
