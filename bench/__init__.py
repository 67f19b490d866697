"""Benchmarks: ``make bench`` runs them, prints figures and rewrites docs/benchmarks.md."""
