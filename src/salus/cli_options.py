"""What every ``salus`` command shares: the data-dir option, its settings, and how to name the database.

Its own module so that the sub-apps (``salus clients``, ``salus audit``...) use the same option as
``salus.cli``, which imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from salus.config import Settings

DataDir = Annotated[Path | None, typer.Option("--data-dir", "-d", help="Folder holding the SQLite database (default ./salus-data).")]


def settings_for(data_dir: Path | None, **kw: object) -> Settings:
    """The settings of a command: ``SALUS_*`` variables, then its flags."""
    return Settings.from_env(data_dir=data_dir, **kw)


def describe_db(settings: Settings) -> str:
    """The database in words for messages (never the password of a URL)."""
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        return f"SQLite at {url.removeprefix('sqlite:///')}"
    return "PostgreSQL at " + url.split("@")[-1]
