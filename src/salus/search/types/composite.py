"""Composite parameters: the rows of each component, tied together by ``grp``.

For every value the composite's root expression selects (the Observation
itself, or each ``Observation.component``...), numbered ``grp`` = 1, 2, ... per
resource and parameter, each component's rows go to that component type's
own table under the parameter ``<composite code>#<component index>`` (0-based,
in the order of ``SearchParameter.component``) with that ``grp``. A root value
where some component has no value produces no rows: no composite search
could match it.

Searching (``code-value-quantity=loinc|8480-6$gt100``) is the next issue: a
semi-join of the component tables on ``(rid, grp)``, one condition per part,
each compiled by the component type's own ``condition``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from salus.search.paths import Program, Typed

MODIFIERS: frozenset[str] = frozenset()


def component_param(code: str, index: int) -> str:
    """The index ``param`` of component ``index`` of composite ``code``."""
    return f"{code}#{index}"


def extract_groups(
    code: str,
    roots: list[Typed],
    components: Sequence[tuple[ModuleType, Program]],
    rows_of: Callable[[ModuleType, Any, str | None], list[tuple[Any, ...]]],
    add: Callable[[str, tuple[Any, ...]], None],
) -> None:
    """Call ``add(table, (param, grp, *values))`` for every component row of every complete root value."""
    grp = 0
    for root, root_type in roots:
        found: list[tuple[str, str, list[tuple[Any, ...]]]] = []
        for i, (module, program) in enumerate(components):
            rows: list[tuple[Any, ...]] = []
            for v, t in program.run(root, root_type):
                for r in rows_of(module, v, t):
                    if r not in rows:
                        rows.append(r)
            if not rows:
                break
            found.append((module.TABLE, component_param(code, i), rows))
        else:
            grp += 1
            for table, param, rows in found:
                for r in rows:
                    add(table, (param, grp, *r))
