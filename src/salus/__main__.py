"""``python -m salus`` runs the CLI."""

from salus.cli import main

main()
