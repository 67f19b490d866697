"""Search parameter expressions compiled to typed dict walks: the fast path of indexing.

Most R4 search expressions are plain paths (``Observation.code``), unions of
them, choice-type casts (``(Observation.value as Quantity)``, ``.as(Age)``,
``.ofType(Reference)``), simple filters (``.where(system='email')``,
``.extension('url')``) and ``[0]``. Those are compiled once, against the R4
element definitions, into a ``Program``: a list of steps over ``(value, FHIR type)``
pairs that walks the JSON dict directly, some 20x faster than fhirpathpy and
with the FHIR type of every value known. Anything else returns None from
``compile_expression`` and is left to fhirpathpy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from salus.fhir.definitions import is_resource_type, r4

Typed = tuple[Any, str]  # a value and its FHIR type


@dataclass(frozen=True, slots=True)
class Child:
    """Step to child elements; per parent type, the JSON keys to read and the FHIR type found there."""

    keys: dict[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class TypeFilter:
    """Keep values whose FHIR type is one of ``types`` (``as``/``ofType`` not folded into a Child)."""

    types: frozenset[str]


@dataclass(frozen=True, slots=True)
class WhereEq:
    """Keep dict values whose primitive child ``field`` equals ``literal``."""

    field: str
    literal: str


@dataclass(frozen=True, slots=True)
class Index:
    """Keep the n-th value of the collection."""

    n: int


Step = Child | TypeFilter | WhereEq | Index


@dataclass(frozen=True, slots=True)
class Program:
    """A compiled expression: a union of step lists, and the top-level keys it can read."""

    alternatives: tuple[tuple[Step, ...], ...]
    top_keys: frozenset[str]
    result_types: frozenset[str]

    def run(self, root: Any, root_type: str) -> list[Typed]:
        """The values the expression selects from ``root`` (of FHIR type ``root_type``), typed."""
        if len(self.alternatives) == 1:
            return _run(self.alternatives[0], root, root_type)
        out: list[Typed] = []
        for steps in self.alternatives:
            out += _run(steps, root, root_type)
        return out


def _run(steps: tuple[Step, ...], root: Any, root_type: str) -> list[Typed]:
    if not steps:
        return [(root, root_type)]
    first = steps[0]
    cur: list[Typed]
    if type(first) is Child:
        # the first step reads the root only: no collection to loop over yet
        cur = []
        if type(root) is dict:
            for key, ft in first.keys.get(root_type, ()):
                v = root.get(key)
                if v is None:
                    continue
                if type(v) is list:
                    cur += [(x, ft) for x in v if x is not None]
                else:
                    cur.append((v, ft))
        rest = steps[1:]
    else:
        cur = [(root, root_type)]
        rest = steps
    for step in rest:
        if not cur:
            return cur
        if type(step) is Child:
            nxt: list[Typed] = []
            keys = step.keys
            for obj, t in cur:
                if type(obj) is not dict:
                    continue
                for key, ft in keys.get(t, ()):
                    v = obj.get(key)
                    if v is None:
                        continue
                    if type(v) is list:
                        nxt += [(x, ft) for x in v if x is not None]
                    else:
                        nxt.append((v, ft))
            cur = nxt
        elif type(step) is WhereEq:
            f, lit = step.field, step.literal
            cur = [p for p in cur if type(p[0]) is dict and p[0].get(f) == lit]
        elif type(step) is TypeFilter:
            ts = step.types
            cur = [p for p in cur if p[1] in ts]
        else:
            cur = cur[step.n : step.n + 1]  # type: ignore[union-attr]
    return cur


# ---- type knowledge from the definitions ------------------------------------------


@cache
def _types() -> dict[str, Any]:
    return r4()["types"]


@cache
def _primitives() -> frozenset[str]:
    return frozenset(r4()["primitiveTypes"])


def _ancestors(t: str) -> list[str]:
    out = [t]
    seen = 0
    while seen < 10:
        base = _types().get(out[-1], {}).get("base")
        if not base or base in out:
            break
        out.append(base)
        seen += 1
    return out


def type_matches(actual: str, wanted: str) -> bool:
    """FHIRPath ``is``: the type or a subtype; FHIRPath system names (``DateTime``) match FHIR ones."""
    if actual == wanted or actual.lower() == wanted.lower():
        return True
    return wanted in _ancestors(actual)


def _child_keys(parent: str, name: str) -> tuple[tuple[str, str], ...] | None:
    """JSON keys and types for element ``name`` of ``parent``; None when the element does not exist."""
    info = _types().get(parent)
    if info is None:
        return None
    els = info["elements"]
    el = els.get(name)
    if el is not None:
        return tuple((name, code) for code in el[2][:1])
    el = els.get(name + "[x]")
    if el is not None:
        return tuple((name + code[0].upper() + code[1:], code) for code in el[2])
    return None


# ---- the expression parser -------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:('(?:[^'\\]|\\.)*')|([A-Za-z_][A-Za-z0-9_]*)|(\d+)|(.))")


class _Unsupported(Exception):
    pass


def _tokens(expr: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            if expr[pos:].strip():
                raise _Unsupported(expr)
            break
        tok = m.group(1) or m.group(2) or m.group(3) or m.group(4)
        if tok is None:
            break
        out.append(tok)
        pos = m.end()
    return out


# steps before typing: ("child", name) ("as", T) ("where", field, literal) ("ext", url) ("index", n)
_Raw = tuple[Any, ...]


class _Parser:
    def __init__(self, expr: str) -> None:
        self.toks = _tokens(expr)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise _Unsupported(want)
        self.i += 1
        return tok

    def union(self) -> list[list[_Raw]]:
        alts = [self.alternative()]
        while self.peek() == "|":
            self.take()
            alts.append(self.alternative())
        if self.peek() is not None:
            raise _Unsupported(self.peek())
        return alts

    def alternative(self) -> list[_Raw]:
        if self.peek() == "(":
            self.take()
            steps = self.path()
            if self.peek() == "as":
                self.take()
                steps.append(("as", self.ident()))
            self.take(")")
            steps += self.suffix()
        else:
            steps = self.path()
        if self.peek() == "as":
            self.take()
            steps.append(("as", self.ident()))
        return steps

    def ident(self) -> str:
        tok = self.take()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tok):
            raise _Unsupported(tok)
        return tok

    def path(self) -> list[_Raw]:
        steps: list[_Raw] = [("child", self.ident())]
        return steps + self.suffix()

    def suffix(self) -> list[_Raw]:
        steps: list[_Raw] = []
        while True:
            tok = self.peek()
            if tok == ".":
                self.take()
                name = self.ident()
                if self.peek() == "(":
                    steps.append(self.call(name))
                else:
                    steps.append(("child", name))
            elif tok == "[":
                self.take()
                n = self.take()
                if not (n.isascii() and n.isdigit()):
                    raise _Unsupported(n)
                self.take("]")
                steps.append(("index", int(n)))
            else:
                return steps

    def call(self, name: str) -> _Raw:
        self.take("(")
        if name in ("as", "ofType"):
            t = self.ident()
            self.take(")")
            return ("as", t)
        if name == "extension":
            url = self.literal()
            self.take(")")
            return ("ext", url)
        if name == "where":
            field = self.ident()
            self.take("=")
            lit = self.literal()
            self.take(")")
            return ("where", field, lit)
        raise _Unsupported(name)

    def literal(self) -> str:
        tok = self.take()
        if len(tok) < 2 or tok[0] != "'" or tok[-1] != "'" or "\\" in tok:
            raise _Unsupported(tok)
        return tok[1:-1]


def _type_steps(raw: list[_Raw], root_types: frozenset[str]) -> tuple[list[Step], frozenset[str]] | None:
    """Give each raw step its per-type keys; None when the alternative can never match."""
    steps: list[Step] = []
    cur = set(root_types)
    for k, step in enumerate(raw):
        kind = step[0]
        if kind == "child":
            keys: dict[str, tuple[tuple[str, str], ...]] = {}
            for t in sorted(cur):
                if t in _primitives() or t in ("Resource", "DomainResource") or t not in _types():
                    raise _Unsupported(f"child of {t}")
                found = _child_keys(t, step[1])
                if found:
                    keys[t] = found
            if not keys:
                return None
            steps.append(Child(keys))
            cur = {ft for ks in keys.values() for _, ft in ks}
        elif kind == "as":
            wanted = step[1]
            kept = {t for t in cur if type_matches(t, wanted)}
            if not kept:
                return None
            prev = steps[-1] if steps else None
            if isinstance(prev, Child) and k > 0:
                # fold the cast into the keys read: valueQuantity only, not every value[x]
                folded = {p: tuple(kv for kv in ks if kv[1] in kept) for p, ks in prev.keys.items()}
                folded = {p: ks for p, ks in folded.items() if ks}
                steps[-1] = Child(folded)
            else:
                steps.append(TypeFilter(frozenset(kept)))
            cur = kept
        elif kind == "where":
            steps.append(WhereEq(step[1], step[2]))
        elif kind == "ext":
            keys = {}
            for t in sorted(cur):
                found = _child_keys(t, "extension")
                if found:
                    keys[t] = found
            if not keys:
                return None
            steps += [Child(keys), WhereEq("url", step[1])]
            cur = {"Extension"}
        elif kind == "index":
            steps.append(Index(step[1]))
    return steps, frozenset(cur)


@cache
def compile_expression(expression: str, root_type: str) -> Program | None:
    """A ``Program`` for ``expression`` evaluated on values of ``root_type``, or None if not a plain path."""
    return compile_relative(expression, frozenset({root_type}), root_type)


@cache
def compile_relative(expression: str, root_types: frozenset[str], resource_type: str | None = None) -> Program | None:
    """Like ``compile_expression`` for a start of several possible types (composite components)."""
    try:
        raw_alts = _Parser(expression).union()
        alts: list[tuple[Step, ...]] = []
        result: set[str] = set()
        top: set[str] = set()
        for raw in raw_alts:
            first = raw[0]
            if resource_type is not None and first[0] == "child":
                name = first[1]
                if name in (resource_type, "Resource", "DomainResource"):
                    raw = raw[1:]
                elif is_resource_type(name):
                    continue  # another type's path: selects nothing here
            if not raw:
                return None  # the resource itself (composite roots are handled by the caller)
            typed = _type_steps(raw, root_types)
            if typed is None:
                continue
            steps, types = typed
            alts.append(tuple(steps))
            result |= types
            head = steps[0]
            if isinstance(head, Child):
                top |= {key for ks in head.keys.values() for key, _ in ks}
        return Program(tuple(alts), frozenset(top), frozenset(result))
    except _Unsupported:
        return None


_BOOLEAN = re.compile(r"\b(?:and|or|xor|implies|exists|empty|not|count|all|iif)\b|[=!<>~]")


def top_level_keys(expression: str, resource_type: str) -> frozenset[str] | None:
    """The JSON keys of the resource an arbitrary FHIRPath expression can reach, or None if unknown.

    Used to skip fhirpathpy when none of them is present. Only for expressions
    that select elements: a boolean one (``deceased.exists() and ...``) has a
    value even on an empty resource. Each alternative of a union must start with
    ``<Type>.element``; choice elements expand to every ``element<Type>`` key.
    """
    if _BOOLEAN.search(_strip_arguments(expression)):
        return None
    keys: set[str] = set()
    for part in _split_top_union(expression):
        part = part.strip().lstrip("(").strip()
        if not part.startswith(resource_type + "."):
            return None
        m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", part[len(resource_type) + 1 :])
        if m is None:
            return None
        found = _child_keys(resource_type, m.group(0))
        if found is not None:
            keys |= {k for k, _ in found}
    return frozenset(keys)


def _strip_arguments(expr: str) -> str:
    """The expression with the insides of function calls removed (their filters are not top level)."""
    out, depth, quoted = [], 0, False
    for i, c in enumerate(expr):
        if c == "'":
            quoted = not quoted
            continue
        if quoted:
            continue
        # a call's arguments are skipped; a bare grouping paren is kept
        if c == "(" and (depth or (i and (expr[i - 1].isalnum() or expr[i - 1] == "_"))):
            depth += 1
            continue
        if c == ")" and depth:
            depth -= 1
            continue
        if not depth:
            out.append(c)
    return "".join(out)


def _split_top_union(expr: str) -> list[str]:
    parts, depth, cur, quoted = [], 0, [], False
    for c in expr:
        if c == "'":
            quoted = not quoted
        elif not quoted and c == "(":
            depth += 1
        elif not quoted and c == ")":
            depth -= 1
        elif not quoted and c == "|" and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(c)
    parts.append("".join(cur))
    return parts
