"""The prefix semantics of dates (and ``_lastUpdated``): comparisons of ranges.

Numbers and quantities keep the search value's precision for ``eq``, ``ne`` and
``ap`` only (R4 3.1.1.4.6), so ``number.condition_on`` has its own table; the
prefix split below is shared. From the R4 search page (3.1.1.4.5), with the
search range [sl, sh] and the resource's range [rl, rh]:

=====  ==========================================  ===========================
eq     search range fully contains resource range  rl >= sl and rh <= sh
ne     not eq                                      rl < sl or rh > sh
gt     range above the search value overlaps       rh > sh
lt     range below the search value overlaps       rl < sl
ge     gt or eq                                    rh > sh or (eq)
le     lt or eq                                    rl < sl or (eq)
sa     resource starts after the search range      rl > sh
eb     resource ends before the search range       rh < sl
ap     ranges overlap, search range widened        rl <= ah and rh >= al
=====  ==========================================  ===========================

Dates pass ``sh`` as an exclusive bound (``high_excl``, one microsecond after the
last instant) so that every comparison is a plain ``>=`` or ``<`` on fixed-width
text, which stays right even if the stored text carries a suffix such as ``Z``.
"""

from __future__ import annotations

from typing import Any

from salus.search.sql import Cmp, Expr, Param, and_, or_


def condition(prefix: str, lo: Expr, hi: Expr, s_lo: Any, s_hi: Any, ap: tuple[Any, Any], *, exclusive: bool) -> Expr:
    """The predicate for ``prefix`` over the stored range ``[lo, hi]``."""

    def lt_lo(x: Expr) -> Expr:
        return Cmp(x, "<", Param(s_lo))

    def ge_lo(x: Expr) -> Expr:
        return Cmp(x, ">=", Param(s_lo))

    def le_hi(x: Expr) -> Expr:
        return Cmp(x, "<" if exclusive else "<=", Param(s_hi))

    def gt_hi(x: Expr) -> Expr:
        return Cmp(x, ">=" if exclusive else ">", Param(s_hi))

    if prefix == "eq":
        return and_(ge_lo(lo), le_hi(hi))
    if prefix == "ne":
        return or_(lt_lo(lo), gt_hi(hi))
    if prefix == "gt":
        return gt_hi(hi)
    if prefix == "lt":
        return lt_lo(lo)
    if prefix == "ge":
        return or_(gt_hi(hi), and_(ge_lo(lo), le_hi(hi)))
    if prefix == "le":
        return or_(lt_lo(lo), and_(ge_lo(lo), le_hi(hi)))
    if prefix == "sa":
        return gt_hi(lo)
    if prefix == "eb":
        return lt_lo(hi)
    if prefix == "ap":
        return and_(Cmp(lo, "<" if exclusive else "<=", Param(ap[1])), Cmp(hi, ">=", Param(ap[0])))
    raise ValueError(f"unknown prefix {prefix!r}")


def split_prefix(raw: str) -> tuple[str, str]:
    """``('ge', '1970')`` from ``ge1970``; ``eq`` when there is no prefix."""
    if len(raw) > 2 and raw[:2] in _PREFIXES and not raw[:2].isdigit():
        return raw[:2], raw[2:]
    return "eq", raw


_PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})
