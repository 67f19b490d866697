"""SMART App Launch 2.0.0 scopes, parsed into what they grant on FHIR data.

https://hl7.org/fhir/smart-app-launch/STU2/scopes-and-launch-context.html

A resource scope is ``<level>/<type>.<permissions>[?<query>]``: the level is
``patient`` (the launch context's Patient compartment), ``user`` (what the
user may see) or ``system`` (a backend client); the type is a resource type or
``*``; the permissions are v2 letters ``c r u d s`` (in that order) or the v1
words ``read`` (= ``rs``), ``write`` (= ``cud``) and ``*`` (= ``cruds``). A v2
scope may narrow itself with a query of search parameters (granular scopes,
e.g. ``patient/Observation.rs?category=...|laboratory``).

Every string that is not such a scope is dropped: the non-resource ones
(``openid``, ``launch/patient``...) say nothing about data, and a malformed or
unknown one must never be read generously, since a scope can only widen access.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from salus.fhir.definitions import resource_types

log = logging.getLogger(__name__)

LEVELS = ("patient", "user", "system")
# SMART v2 order of the permission letters; a scope must list them in this order
INTERACTIONS = "cruds"
_V1 = {"read": frozenset("rs"), "write": frozenset("cud"), "*": frozenset("cruds")}
_V2 = re.compile(r"c?r?u?d?s?")
# OpenID Connect, launch context and refresh scopes (SMART 2.0.0 "Scopes for requesting context data"...):
# valid, but not about data access
NON_RESOURCE = frozenset({"openid", "profile", "fhirUser", "launch", "offline_access", "online_access"})

Query = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Scope:
    """One resource scope: at which level it grants which interactions on which type, narrowed by ``query``."""

    level: str
    resource_type: str
    permissions: frozenset[str]
    query: Query = ()

    def applies(self, interaction: str, res_type: str) -> bool:
        """Whether this scope allows the interaction letter on ``res_type``."""
        return interaction in self.permissions and self.resource_type in ("*", res_type)


def _query(text: str) -> Query | None:
    """The ``name=value`` pairs of a granular scope (None: malformed, so the scope is dropped)."""
    pairs: list[tuple[str, str]] = []
    for part in text.split("&"):
        name, sep, value = part.partition("=")
        # '+' is kept literal: a scope is one token of a space-separated list, and
        # codes carry '+' far more often than anyone writes a space as '+' here
        name, value = unquote(name), unquote(value)
        if not sep or not name or not value:
            return None
        pairs.append((name, value))
    return tuple(pairs)


def parse_scope(text: str) -> Scope | None:
    """The resource scope ``text`` stands for; None for non-resource scopes and for anything malformed."""
    if text in NON_RESOURCE or text.startswith("launch/"):
        return None
    level, slash, rest = text.partition("/")
    if not slash or level not in LEVELS:
        return _invalid(text)
    body, question, raw_query = rest.partition("?")
    res_type, dot, perms = body.rpartition(".")
    if not dot or not (res_type == "*" or res_type in resource_types()):
        return _invalid(text)
    query: Query = ()
    if question:
        parsed = _query(raw_query)
        if parsed is None:
            return _invalid(text)
        query = parsed
    if perms in _V1:
        # v1 has no granular form: 'patient/Observation.read?category=x' is neither v1 nor v2
        return _invalid(text) if question else Scope(level, res_type, _V1[perms])
    if perms and _V2.fullmatch(perms):
        return Scope(level, res_type, frozenset(perms), query)
    return _invalid(text)


def _invalid(text: str) -> None:
    log.debug("scope %r ignored: not a SMART resource scope", text)
    return None


def check_interaction(interaction: str) -> None:
    """Raise ``ValueError`` for anything but one of the letters c r u d s (a caller's mistake, not a denial)."""
    if len(interaction) != 1 or interaction not in INTERACTIONS:
        raise ValueError(f"unknown interaction letter {interaction!r}: one of c r u d s")


class Grants:
    """The resource scopes of one token, asked per interaction letter and resource type.

    Interaction letters (SMART 2.0.0): ``c`` create; ``r`` read, vread and an
    instance's history; ``u`` update and patch; ``d`` delete; ``s`` search and
    the type's or system's history.
    """

    __slots__ = ("scopes",)

    def __init__(self, scopes: tuple[Scope, ...]) -> None:
        self.scopes = scopes

    @classmethod
    def of(cls, scopes: Iterable[str]) -> Grants:
        """The grants of the scope strings (the non-resource and invalid ones are dropped)."""
        parsed = (parse_scope(s) for s in scopes)
        return cls(tuple(dict.fromkeys(s for s in parsed if s is not None)))

    def __repr__(self) -> str:
        return f"Grants({list(self.scopes)!r})"

    def levels(self, interaction: str, res_type: str) -> set[str]:
        """The levels (``patient``, ``user``, ``system``) at which some scope allows the interaction on the type."""
        check_interaction(interaction)
        return {s.level for s in self.scopes if s.applies(interaction, res_type)}

    def filters(self, interaction: str, res_type: str, level: str) -> list[Query] | None:
        """The granular queries that confine the interaction at ``level`` (alternatives: any one suffices).

        None when some matching scope has no query (the level is unrestricted
        for the type); an empty list when no scope matches (nothing is allowed).
        """
        check_interaction(interaction)
        out: list[Query] = []
        for s in self.scopes:
            if s.level == level and s.applies(interaction, res_type):
                if not s.query:
                    return None
                if s.query not in out:
                    out.append(s.query)
        return out
