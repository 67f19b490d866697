"""What every benchmark shares: backends to run on, timing, and the report file."""

from __future__ import annotations

import os
import platform
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"
PG_URL = os.environ.get("SALUS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Report:
    """Sections of docs/benchmarks.md, each a table with its baseline columns."""

    sections: list[tuple[str, str, list[str], list[list[str]]]] = field(default_factory=list)

    def add(self, title: str, note: str, header: list[str], rows: list[list[str]]) -> None:
        """Add a table and print it at once, so a long run shows figures as they come."""
        self.sections.append((title, note, header, rows))
        print(f"\n## {title}\n{note}")
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
        for row in [header, *rows]:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)))

    def write(self, path: Path) -> None:
        """Write the Markdown report, keeping the sections of benchmarks not run this time.

        ``python -m bench search`` alone must not drop the import and HTTP
        figures: a section is replaced only by a section of the same title.
        """
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        fresh = {}
        for title, note, header, rows in self.sections:
            body = [f"## {title}", "", f"Measured {when}. {note}", "", "| " + " | ".join(header) + " |",
                    "|" + "---|" * len(header)]
            body += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
            fresh[title] = "\n".join(body)
        kept = _sections(path.read_text()) if path.exists() else {}
        merged = {**kept, **fresh}  # an old title keeps its place; a new one goes last
        lines = [
            "# Benchmarks",
            "",
            f"Written by `make bench` (last run {when}), {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}. "
            "Each figure comes with a baseline measured in the same run on the same machine, "
            "because these machines are shared and noisy: read the ratios, not the absolute numbers.",
            "",
        ]
        lines += [text.rstrip() + "\n" for text in merged.values()]
        path.write_text("\n".join(lines))


def _sections(markdown: str) -> dict[str, str]:
    """The ``## `` sections of a report, by title, in order."""
    out: dict[str, str] = {}
    title = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            out[title] = line
        elif title is not None:
            out[title] += "\n" + line
    return out


def pg_available() -> bool:
    """Whether the benchmark PostgreSQL answers."""
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@contextmanager
def pg_schema() -> Iterator[str]:
    """A PostgreSQL URL on a fresh schema, dropped afterwards."""
    schema = f"salus_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def backends(tmp: Path) -> Iterator[tuple[str, str]]:
    """(name, database URL) of a fresh database per backend; PostgreSQL only when reachable."""
    for name, (url,) in backend_databases(tmp, 1):
        yield name, url


def backend_databases(tmp: Path, count: int) -> Iterator[tuple[str, list[str]]]:
    """(name, URLs of ``count`` fresh databases) per backend; PostgreSQL only when reachable."""
    yield "SQLite", [f"sqlite:///{tmp / f'bench-{uuid.uuid4().hex[:6]}.db'}" for _ in range(count)]
    if not pg_available():
        print(f"PostgreSQL not reachable at {PG_URL}: its figures are skipped")
        return
    with ExitStack() as stack:
        yield "PostgreSQL", [stack.enter_context(pg_schema()) for _ in range(count)]


def rate(n: int, seconds: float) -> str:
    """A rate for the table."""
    return f"{n / seconds:,.0f}" if seconds > 0 else "-"
