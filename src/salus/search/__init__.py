"""FHIR search: index rows at write time, and queries compiled to SQL for the store's dialect.

* ``index_rows(resource)``: the rows the store writes to the ``idx_*`` tables.
* ``run_search(db, type, query, ...)``: one page of matches (``SearchResult``).
* ``match_ids(db, type, query)``: what a conditional interaction matches.
"""

from __future__ import annotations

from salus.search.engine import SearchResult, count_matches, match_ids, run_search
from salus.search.indexing import index_rows
from salus.search.parse import parse_query

__all__ = ["SearchResult", "count_matches", "index_rows", "match_ids", "parse_query", "run_search"]
