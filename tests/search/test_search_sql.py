"""The SQL tree and its dialects: values are always bound, never inlined."""

from __future__ import annotations

import pytest

from salus.search import compile as c
from salus.search.parse import parse_query
from salus.search.sql import Col, StartsWith, like_escape, render, successor


def test_values_are_parameters() -> None:
    """A hostile value appears only in the parameters, and placeholders match parameters one to one."""
    evil = "x'); DROP TABLE resources; --"
    q = parse_query("Patient", [("name", evil), ("identifier", evil), ("_id", evil), ("name:contains", evil)])
    for dialect in ("sqlite", "postgresql"):
        sql, params = c.to_sql(c.page_select(q, c.where(q), 51, 0), dialect)
        assert "DROP" not in sql and evil in params
        assert sql.count("?") == len(params)


def test_dialects_differ_only_where_needed() -> None:
    """Starts-with is a btree range on both; PostgreSQL adds a LIKE guard against non-C collations."""
    node = StartsWith(Col("norm", "i"), "smi")
    assert render(node, "sqlite") == ("(i.norm >= ? AND i.norm < ?)", ["smi", "smj"])
    assert render(node, "postgresql") == (
        "(i.norm >= ? AND i.norm < ? AND i.norm LIKE ? ESCAPE '\\')",
        ["smi", "smj", "smi%"],
    )
    with pytest.raises(ValueError):
        render(node, "oracle")


def test_helpers() -> None:
    """Prefix successor and LIKE escaping."""
    assert successor("abc") == "abd"
    assert successor("a\U0010ffff") == "b"
    assert like_escape("50%_a\\") == "50\\%\\_a\\\\"
