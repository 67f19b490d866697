"""The typed tree a search query parses into, before any SQL exists.

``SearchQuery`` holds the filter ``Clause``s (repeated parameters are ANDed,
the comma-separated values inside one clause are ORed) and the result
parameters (``_sort``, ``_include``, ``_count``...) kept apart. Chains and
``_has`` fit in as a path of ``Link``s in front of a clause (the next issue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


@dataclass(frozen=True)
class ParamDef:
    """A search parameter as the definitions describe it for one resource type."""

    code: str
    type: str
    expression: str | None = None
    targets: tuple[str, ...] = ()
    resolve_targets: tuple[str, ...] = ()
    components: tuple[tuple[str, str, str], ...] = ()  # (code, type, expression) of a composite

    @classmethod
    def of(cls, code: str, d: dict[str, Any]) -> ParamDef:
        """From one entry of ``search_parameters(type)``."""
        return cls(
            code,
            d["type"],
            d.get("expression"),
            tuple(d.get("target", ())),
            tuple(d.get("resolve_targets", ())),
            tuple((c["code"], c["type"], c["expression"]) for c in d.get("component", ())),
        )


@dataclass(frozen=True)
class StringValue:
    """A string search value (matched on the normalised form unless ``:exact``).

    ``blinded`` holds the keyed hashes of its normalised and exact forms when the
    parameter's index values are hashed (encryption at rest, ``salus.search.blinding``).
    """

    text: str
    blinded: tuple[str, str] | None = None


@dataclass(frozen=True)
class TokenValue:
    """``code``, ``system|code``, ``|code`` (no system) or ``system|``; ``text`` for ``:text``."""

    system: str | None
    code: str | None
    system_given: bool = False
    text: str | None = None
    value_set: str | None = None  # ``:in`` / ``:not-in``: expanded against the store before compiling


@dataclass(frozen=True)
class ReferenceValue:
    """A reference search value: local ``[Type/]id[/_history/v]``, an absolute URL or a canonical."""

    type: str | None = None
    id: str | None = None
    version: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class DateValue:
    """A date search value as the half-open UTC range ``[low, high_excl)`` of its precision."""

    prefix: str
    low: str
    high_excl: str
    raw: str = ""


@dataclass(frozen=True)
class NumberValue:
    """A number search value and its implicit precision range ``[low, high]``."""

    prefix: str
    value: Decimal
    low: float
    high: float


@dataclass(frozen=True)
class QuantityValue:
    """``[prefix]number|system|code``; system and code are optional."""

    number: NumberValue
    system: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class UriValue:
    """A URI search value."""

    uri: str


@dataclass(frozen=True)
class Missing:
    """``:missing=true|false``."""

    missing: bool


@dataclass(frozen=True)
class CompositeValue:
    """``a$b``: one value per component, all matching in the same composite group."""

    parts: tuple[Value, ...]


Value = (
    StringValue
    | TokenValue
    | ReferenceValue
    | DateValue
    | NumberValue
    | QuantityValue
    | UriValue
    | Missing
    | CompositeValue
)


@dataclass(frozen=True)
class Link:
    """One hop of a chain: follow the reference ``param`` from ``source_types`` to ``target_types``.

    ``subject:Patient.name=x`` on Observation parses to a clause on Patient's
    ``name`` with ``chain=(Link(subject, (Observation,), (Patient,)),)``;
    ``_has:Observation:patient:code=x`` on Patient is the same hop taken
    backwards (``reverse=True``: the clause is on Observation, the match is
    the Patient it refers to). Links apply outermost first.
    """

    param: ParamDef
    source_types: tuple[str, ...] | None
    target_types: tuple[str, ...]
    reverse: bool = False


@dataclass(frozen=True)
class Clause:
    """One URL parameter ``code[:modifier]=v1,v2``: true if any value matches (OR)."""

    resource_types: tuple[str, ...] | None  # of the resources the clause tests (the chain's end); None: every type
    param: ParamDef
    modifier: str | None
    values: tuple[Value, ...]
    chain: tuple[Link, ...] = ()


@dataclass(frozen=True)
class SortKey:
    """One ``_sort`` key (``-`` means descending)."""

    param: ParamDef
    descending: bool = False


@dataclass(frozen=True)
class Include:
    """``_include=Source:param[:Target]`` or ``_revinclude`` (``reverse``); ``iterate`` is not compiled yet."""

    source_type: str
    param: str
    target_type: str | None = None
    reverse: bool = False
    iterate: bool = False


@dataclass
class SearchQuery:
    """A parsed search: what to match, how to order and page it, and what to add."""

    resource_types: tuple[str, ...] | None  # None: system search over every type
    clauses: list[Clause] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    count: int | None = None
    summary: str | None = None
    elements: list[str] | None = None
    total: str | None = None
    applied: list[tuple[str, str]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    # defined, but their index is still being built (salus.search.registry): left out like unknown ones
    pending: list[str] = field(default_factory=list)
