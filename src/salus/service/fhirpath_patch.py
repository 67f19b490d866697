"""FHIRPath Patch (R4 fhirpatch.html): a ``Parameters`` resource of ``operation`` parts applied in order.

Finding *where* an element is. fhirpathpy evaluates an expression to values, not to places in the
JSON, and a patch has to write to a place. So a path is parsed with fhirpathpy's own grammar
(strictly: any syntax error or trailing text is a 400, where fhirpathpy itself recovers silently),
and the parsed tree is walked here over *locations*, ``(parent object, JSON key, array index)``,
typed from the R4 definitions. The forms a patch path needs are supported:

* member names from the resource type (``Patient.contact.name``), with a choice element found by its
  FHIRPath name (``Observation.value`` finds ``valueQuantity``) or by its JSON key;
* ``extension`` and ``id`` under a primitive, which live in its ``_name`` companion;
* ``[n]`` indexers, ``first()``, ``last()``, ``tail()``, ``skip(n)``, ``take(n)``, ``single()``,
  ``ofType(T)`` and ``extension(url)``;
* ``where(criteria)``: the criteria are FHIRPath of any kind, evaluated by fhirpathpy on each candidate
  element (typed, so dates compare as dates), keeping the candidates for which they are true.

Anything else (operators, ``resolve()``, other functions) answers 400 ``not-supported`` rather than a
guess: a patch that writes to the wrong place is worse than one that is refused.

Errors: a malformed Parameters document is 400 (``structure``/``invalid``/``required``); an operation
that cannot apply to this resource (no match, several matches, index out of range, wrong type) is 422
``processing``. The patched resource is validated afterwards by the ordinary update path.

Primitive extensions stay aligned: deleting, inserting or moving an item of a primitive list does the
same to its ``_name`` array, and containers left empty by a delete are removed (FHIR JSON has no empty
objects or arrays).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fhirpathpy import apply_parsed_path
from fhirpathpy.engine.nodes import ResourceNode

from salus.fhir.definitions import r4
from salus.fhir.fhirpath import R4_MODEL, parse_strict
from salus.fhir.outcome import FhirError

__all__ = ["apply_fhirpath_patch", "parse_operations"]

OPERATION_TYPES = ("add", "insert", "delete", "replace", "move")
PART_NAMES = {"type", "path", "name", "value", "index", "source", "destination"}
REQUIRED = {
    "add": ("path", "name", "value"),
    "insert": ("path", "index", "value"),
    "delete": ("path",),
    "replace": ("path", "value"),
    "move": ("path", "source", "destination"),
}
# profiles of Quantity carry the same JSON shape: a value of one fits an element of another
QUANTITY_LIKE = {"Quantity", "Age", "Count", "Distance", "Duration", "MoneyQuantity", "SimpleQuantity"}
SUPPORTED = "member names, [n], where(), first(), last(), tail(), skip(), take(), single(), ofType(), extension()"


# ---- definitions ---------------------------------------------------------------------------------


def _types() -> dict[str, Any]:
    return r4()["types"]


@lru_cache(maxsize=1)
def _primitives() -> frozenset[str]:
    return frozenset(r4()["primitiveTypes"])


def _is_primitive(type_name: str) -> bool:
    return type_name in _primitives()


def _elements(type_name: str) -> dict[str, list[Any]]:
    t = _types().get(type_name)
    return t["elements"] if t else {}


def _cap(type_name: str) -> str:
    """The JSON key suffix of a choice type (``dateTime`` -> ``DateTime``)."""
    return type_name[:1].upper() + type_name[1:]


def _type_of_suffix(suffix: str) -> str | None:
    """The FHIR type named by a ``value[x]`` key suffix (``Date`` -> ``date``), None if unknown."""
    lowered = suffix[:1].lower() + suffix[1:]
    if lowered in _primitives():
        return lowered
    if _types().get(suffix, {}).get("kind") == "complex-type":
        return suffix
    return None


@dataclass(frozen=True)
class _Element:
    """One element of a type as the definitions give it, seen from the JSON key used."""

    name: str  # the definition's name: "identifier", "deceased[x]"
    key: str  # the JSON key: "identifier", "deceasedBoolean"
    many: bool
    types: tuple[str, ...]  # the allowed types (every choice type for an element not yet chosen)

    @property
    def choice(self) -> str | None:
        """The choice element's base name (``deceased``), None for an ordinary element."""
        return self.name[:-3] if self.name.endswith("[x]") else None


def _element(type_name: str, name: str) -> _Element | None:
    """The element ``name`` (a FHIRPath name or a choice element's JSON key) of ``type_name``."""
    elems = _elements(type_name)
    if _is_primitive(type_name) and name == "value":
        return None  # a primitive's value is the element itself, not a child of it
    if name in elems:
        d = elems[name]
        return _Element(name, name, d[1] != 1, tuple(d[2]))
    if f"{name}[x]" in elems:
        d = elems[f"{name}[x]"]
        return _Element(f"{name}[x]", name, d[1] != 1, tuple(d[2]))
    for ename, d in elems.items():
        if ename.endswith("[x]") and name.startswith(ename[:-3]):
            t = _type_of_suffix(name[len(ename) - 3:])
            if t in d[2]:
                return _Element(ename, name, d[1] != 1, (t,))
    return None


# ---- the patch document --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Value:
    """An operation's value: its JSON, its primitive ``_x`` companion, and the type its key named."""

    json: Any
    ext: Any = None
    type: str | None = None  # None for an anonymous value built from parts


@dataclass(frozen=True)
class _Parts:
    """A value given as nested parts (an anonymous type such as ``Patient.contact``), built per target."""

    parts: tuple[dict[str, Any], ...]
    where: str


@dataclass(frozen=True)
class Operation:
    """One parsed ``operation`` parameter."""

    n: int
    type: str
    path: str
    name: str | None = None
    value: _Value | _Parts | None = None
    index: int | None = None
    source: int | None = None
    destination: int | None = None

    @property
    def where(self) -> str:
        """Where in the Parameters this operation is, for issues."""
        return f"Parameters.parameter[{self.n}]"


def _bad(code: str, message: str, where: str) -> FhirError:
    return FhirError.of(400, code, f"Malformed FHIRPath Patch: {message}", where)


def _value_keys(part: dict[str, Any]) -> list[str]:
    return [k for k in part if k.startswith("value") and len(k) > 5 and k[5].isupper()]


def _part_value(part: dict[str, Any], where: str) -> _Value | _Parts:
    """The value a part carries: one ``value[x]``, a ``resource`` or nested ``part``s."""
    keys = _value_keys(part)
    present = len(keys) + ("resource" in part) + ("part" in part)
    if present != 1:
        raise _bad("structure", "a value needs exactly one of value[x], resource or part", where)
    if keys:
        key = keys[0]
        t = _type_of_suffix(key[5:])
        if t is None:
            raise _bad("invalid", f"{key} names no FHIR data type", where)
        v, ext = part[key], part.get(f"_{key}")
        if v is None and ext is None:
            raise _bad("structure", f"{key} is null", where)
        if _is_primitive(t) == isinstance(v, dict | list) and v is not None:
            raise _bad("structure", f"{key} does not hold a {t}", where)
        return _Value(v, ext, t)
    if "resource" in part:
        r = part["resource"]
        if not isinstance(r, dict) or not isinstance(r.get("resourceType"), str):
            raise _bad("structure", "resource must be a FHIR resource", where)
        return _Value(r, None, r["resourceType"])
    parts = part["part"]
    if not isinstance(parts, list) or not parts:
        raise _bad("structure", "part must be a non-empty array", where)
    for i, p in enumerate(parts):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not p["name"]:
            raise _bad("structure", "each part needs a name", f"{where}.part[{i}]")
        _part_value(p, f"{where}.part[{i}]")  # structure is checked now; the JSON is built per target type
    return _Parts(tuple(parts), where)


def _integer(part: dict[str, Any], label: str, where: str) -> int:
    keys = _value_keys(part)
    v = part[keys[0]] if len(keys) == 1 else None
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad("invalid", f"{label} must be an integer (valueInteger)", where)
    return v


def _string(part: dict[str, Any], label: str, where: str) -> str:
    keys = _value_keys(part)
    v = part[keys[0]] if len(keys) == 1 else None
    if not isinstance(v, str) or not v.strip():
        raise _bad("invalid", f"{label} must be a non-empty string", where)
    return v


def parse_operations(parameters: Any) -> list[Operation]:
    """The operations of a FHIRPath Patch document; 400 for anything malformed, before any is applied."""
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise _bad("structure", "the body must be a Parameters resource", "Parameters")
    params = parameters.get("parameter", [])
    if not isinstance(params, list):
        raise _bad("structure", "Parameters.parameter must be an array", "Parameters.parameter")
    ops = []
    for n, param in enumerate(params):
        where = f"Parameters.parameter[{n}]"
        if not isinstance(param, dict) or param.get("name") != "operation":
            raise _bad("invalid", "every parameter must be named 'operation'", where)
        parts = param.get("part")
        if not isinstance(parts, list):
            raise _bad("required", "an operation needs its parts", where)
        found: dict[str, dict[str, Any]] = {}
        for i, part in enumerate(parts):
            pname = part.get("name") if isinstance(part, dict) else None
            if pname not in PART_NAMES:
                raise _bad("invalid", f"unknown operation part {pname!r}", f"{where}.part[{i}]")
            if pname in found:
                raise _bad("invalid", f"the part {pname!r} is repeated", f"{where}.part[{i}]")
            found[pname] = part
        if "type" not in found:
            raise _bad("required", "an operation needs a type", where)
        kind = _string(found["type"], "type", where)
        if kind not in OPERATION_TYPES:
            raise _bad("invalid", f"unknown operation type {kind!r} (expected one of {', '.join(OPERATION_TYPES)})", where)
        missing = [p for p in REQUIRED[kind] if p not in found]
        if missing:
            raise _bad("required", f"a {kind} operation needs {', '.join(missing)}", where)
        path = _string(found["path"], "path", where)
        _parse_path(path, where)  # syntax errors are 400s even when an earlier operation would fail
        ops.append(Operation(
            n, kind, path,
            name=_string(found["name"], "name", where) if kind == "add" else None,
            value=_part_value(found["value"], f"{where}.value") if kind in ("add", "insert", "replace") else None,
            index=_integer(found["index"], "index", where) if kind == "insert" else None,
            source=_integer(found["source"], "source", where) if kind == "move" else None,
            destination=_integer(found["destination"], "destination", where) if kind == "move" else None,
        ))
    return ops


# ---- paths ---------------------------------------------------------------------------------------


def _parse_path(path: str, where: str) -> dict[str, Any]:
    """The fhirpathpy syntax tree of ``path``; 400 if it is not FHIRPath."""
    try:
        tree = parse_strict(path, names_after_dot=True)
    except Exception as exc:  # antlr raises its own recognition errors too
        raise _bad("invalid", f"path {path!r} is not a valid FHIRPath expression ({exc})", where) from exc
    if not tree.get("children"):
        raise _bad("invalid", f"path {path!r} is empty", where)
    return tree["children"][0]


@dataclass(frozen=True)
class _Loc:
    """Where an element is: ``parent[key]`` or ``parent[key][index]`` (``parent`` None: the resource)."""

    parent: dict[str, Any] | None
    key: str
    index: int | None
    type: str  # the element's type in the definitions: "Identifier", "Patient.contact", "date", "Patient"
    element: _Element | None  # its definition in the parent's type (None for the resource itself)
    up: _Loc | None  # the location of ``parent``
    path: str  # readable, for messages: Patient.identifier[1].value

    def value(self, root: dict[str, Any]) -> Any:
        """The JSON value at this location (None for a primitive that has only extensions)."""
        if self.parent is None:
            return root
        v = self.parent.get(self.key)
        if self.index is not None:
            v = v[self.index] if isinstance(v, list) and self.index < len(v) else None
        return v

    def companion(self) -> Any:
        """The primitive's ``_key`` object (its id and extensions), None if it has none."""
        if self.parent is None:
            return None
        c = self.parent.get(f"_{self.key}")
        if self.index is not None:
            c = c[self.index] if isinstance(c, list) and self.index < len(c) else None
        return c


def _slot_count(obj: dict[str, Any], key: str) -> int:
    """How many items the list ``key`` has, counting its ``_key`` companion (either may be shorter or absent)."""
    return max(
        (len(obj[k]) for k in (key, f"_{key}") if isinstance(obj.get(k), list)), default=0
    )


def _pad(obj: dict[str, Any], key: str, length: int) -> None:
    for k in (key, f"_{key}"):
        arr = obj.get(k)
        if isinstance(arr, list):
            arr.extend([None] * (length - len(arr)))


def _drop_if_empty(obj: dict[str, Any], key: str) -> None:
    """Remove ``key`` and ``_key`` when they hold nothing, so no empty object or all-null array remains."""
    for k in (key, f"_{key}"):
        if k not in obj:
            continue
        v = obj[k]
        if v is None or v == {} or (isinstance(v, list) and all(x is None or x == {} for x in v)):
            del obj[k]
        elif k.startswith("_") and isinstance(v, list):
            obj[k] = [None if x == {} else x for x in v]
    # values with nulls are only valid beside a companion that fills those places
    vals = obj.get(key)
    if isinstance(vals, list) and f"_{key}" not in obj and any(x is None for x in vals):
        obj[key] = [x for x in vals if x is not None]


def _present(obj: dict[str, Any], type_name: str, el: _Element) -> bool:
    """Whether a single-valued element (any type of a choice) already has a value or extensions in ``obj``."""
    if el.choice is None:
        return el.key in obj or f"_{el.key}" in obj
    return any((e := _element(type_name, k.removeprefix("_"))) is not None and e.name == el.name for k in obj)


class _Patcher:
    """Applies operations to one resource (a private copy), resolving paths to locations."""

    def __init__(self, resource: dict[str, Any]) -> None:
        self.root = resource
        self.rtype = str(resource.get("resourceType", ""))
        self.root_loc = _Loc(None, "", None, self.rtype, None, None, self.rtype)

    # -- resolving ----------------------------------------------------------------------------------

    def resolve(self, node: dict[str, Any], ctx: list[_Loc], op: Operation) -> list[_Loc]:
        """The locations an expression node selects, starting from ``ctx``."""
        kind = node.get("type")
        ch = node.get("children", [])
        if kind == "InvocationExpression":
            return self.invoke(self.resolve(ch[0], ctx, op), ch[1], op, term=False)
        if kind == "IndexerExpression":
            base = self.resolve(ch[0], ctx, op)
            i = self.integer(ch[1], op)
            return [base[i]] if 0 <= i < len(base) else []
        if kind == "TermExpression":
            term = ch[0]
            if term.get("type") == "InvocationTerm":
                return self.invoke(ctx, term["children"][0], op, term=True)
            if term.get("type") == "ParenthesizedTerm":
                return self.resolve(term["children"][0], ctx, op)
        raise self.unsupported(op, node)

    def invoke(self, base: list[_Loc], inv: dict[str, Any], op: Operation, *, term: bool) -> list[_Loc]:
        kind = inv.get("type")
        if kind == "ThisInvocation":
            return base
        if kind == "MemberInvocation":
            name = inv["children"][0]["text"].strip("`")
            if term and name in (self.rtype, "Resource", "DomainResource"):
                return base  # the leading type name selects the resource itself
            return [c for loc in base for c in self.members(loc, name)]
        if kind == "FunctionInvocation":
            functn = inv["children"][0]
            fname = functn["children"][0]["text"]
            params = functn["children"][1]["children"] if len(functn["children"]) > 1 else []
            return self.function(base, fname, params, op)
        raise self.unsupported(op, inv)

    def function(self, base: list[_Loc], fname: str, params: list[dict[str, Any]], op: Operation) -> list[_Loc]:
        arity = {"first": 0, "last": 0, "tail": 0, "single": 0, "skip": 1, "take": 1, "where": 1, "ofType": 1,
                 "extension": 1}
        if fname not in arity:
            raise FhirError.of(
                400, "not-supported",
                f"FHIRPath Patch path {op.path!r}: {fname}() cannot be used to locate an element here (supported: {SUPPORTED})",
                op.where,
            )
        if len(params) != arity[fname]:
            raise _bad("invalid", f"{fname}() takes {arity[fname]} argument(s) in path {op.path!r}", op.where)
        if fname == "first":
            return base[:1]
        if fname == "last":
            return base[-1:]
        if fname == "tail":
            return base[1:]
        if fname == "single":
            if len(base) > 1:
                raise self.cannot(op, f"single() found {len(base)} elements at {op.path!r}")
            return base
        if fname == "skip":
            return base[max(0, self.integer(params[0], op)):]
        if fname == "take":
            return base[:max(0, self.integer(params[0], op))]
        if fname == "ofType":
            wanted = params[0].get("text", "").removeprefix("FHIR.").strip("`")
            return [loc for loc in base if loc.type == wanted]
        if fname == "extension":
            url = self.constant(params[0], op)
            return [e for loc in base for e in self.members(loc, "extension")
                    if isinstance(e.value(self.root), dict) and e.value(self.root).get("url") == url]
        return [loc for loc in base if self.matches(loc, params[0], op)]  # where()

    def members(self, loc: _Loc, name: str) -> list[_Loc]:
        """The child elements ``name`` of the element at ``loc`` (a choice name finds whichever type is present)."""
        obj = loc.companion() if _is_primitive(loc.type) else loc.value(self.root)
        if not isinstance(obj, dict):
            return []
        el = _element(loc.type, name)
        if el is None:
            return []
        keys = [(el.key + _cap(t), t) for t in el.types] if el.choice and el.key == el.choice else [(el.key, el.types[0])]
        out = []
        for key, t in keys:
            if obj.get(key) is None and obj.get(f"_{key}") is None:
                continue
            chosen = _Element(el.name, key, el.many, (t,))
            if isinstance(obj.get(key), list) or isinstance(obj.get(f"_{key}"), list):
                for i in range(_slot_count(obj, key)):
                    child = _Loc(obj, key, i, t, chosen, loc, f"{loc.path}.{name}[{i}]")
                    if child.value(self.root) is None and child.companion() is None:
                        continue
                    out.append(self.concrete(child))
            else:
                out.append(self.concrete(_Loc(obj, key, None, t, chosen, loc, f"{loc.path}.{name}")))
        return out

    def concrete(self, loc: _Loc) -> _Loc:
        """An element of type Resource typed as the resource it holds."""
        if loc.type in ("Resource", "DomainResource"):
            v = loc.value(self.root)
            if isinstance(v, dict) and isinstance(v.get("resourceType"), str):
                return _Loc(loc.parent, loc.key, loc.index, v["resourceType"], loc.element, loc.up, loc.path)
        return loc

    def evaluate(self, node: dict[str, Any], data: Any, op: Operation) -> list[Any]:
        """fhirpathpy on one expression node (criteria and arguments); its failures are the path's fault: 400."""
        try:
            return list(apply_parsed_path(data, {"children": [node]}, model=R4_MODEL))
        except Exception as exc:
            raise _bad("invalid", f"path {op.path!r} could not be evaluated ({exc})", op.where) from exc

    def matches(self, loc: _Loc, criteria: dict[str, Any], op: Operation) -> bool:
        """Whether where()'s criteria are true for the element at ``loc``, evaluated by fhirpathpy on it, typed."""
        node = ResourceNode.create_node(loc.value(self.root), loc.type, _data=loc.companion())
        return self.evaluate(criteria, node, op) == [True]

    def constant(self, node: dict[str, Any], op: Operation) -> Any:
        result = self.evaluate(node, {}, op)
        if len(result) != 1:
            raise _bad("invalid", f"an argument in path {op.path!r} is not a single value", op.where)
        return result[0]

    def integer(self, node: dict[str, Any], op: Operation) -> int:
        v = self.constant(node, op)
        if not isinstance(v, int) or isinstance(v, bool):
            raise _bad("invalid", f"an index in path {op.path!r} is not an integer", op.where)
        return v

    def locate(self, op: Operation, node: dict[str, Any] | None = None) -> list[_Loc]:
        return self.resolve(node if node is not None else _parse_path(op.path, op.where), [self.root_loc], op)

    def one(self, op: Operation, node: dict[str, Any] | None = None, shown: str | None = None) -> _Loc:
        """The single element a path must select for this operation; 422 for none or several."""
        locs = self.locate(op, node)
        where = shown or op.path
        if not locs:
            raise self.cannot(op, f"no content found at {where!r} for the {op.type} operation")
        if len(locs) > 1:
            raise self.cannot(op, f"{where!r} selects {len(locs)} elements; the {op.type} operation needs exactly one")
        return locs[0]

    def collection(self, op: Operation) -> tuple[_Loc, _Element]:
        """For insert and move: the single element holding the list the path names, and that list's element."""
        node = _parse_path(op.path, op.where)
        if node.get("type") == "InvocationExpression" and node["children"][1].get("type") == "MemberInvocation":
            owner_node: dict[str, Any] | None = node["children"][0]
            name = node["children"][1]["children"][0]["text"].strip("`")
        elif node.get("type") == "TermExpression" and node["children"][0].get("type") == "InvocationTerm" \
                and node["children"][0]["children"][0].get("type") == "MemberInvocation":
            owner_node = None  # a bare name: a list of the resource itself
            name = node["children"][0]["children"][0]["children"][0]["text"].strip("`")
        else:
            raise self.cannot(op, f"{op.path!r} does not name a list (it must end with an element name)")
        owner = self.root_loc if owner_node is None else self.one(op, owner_node, owner_node.get("text"))
        el = _element(owner.type, name)
        if el is None:
            raise self.cannot(op, f"{owner.type} has no element {name!r}")
        if not el.many:
            raise self.cannot(op, f"{op.path!r} is not a list ({owner.type}.{el.name} does not repeat)")
        return owner, el

    @staticmethod
    def cannot(op: Operation, message: str) -> FhirError:
        """422: the document is well formed but this operation cannot apply to this resource."""
        return FhirError.of(422, "processing", f"FHIRPath Patch {op.type} cannot apply: {message}", op.where)

    @staticmethod
    def unsupported(op: Operation, node: dict[str, Any]) -> FhirError:
        """400: a valid FHIRPath expression whose result this resolver cannot turn into a place to write."""
        what = node.get("text") or node.get("type", "this expression")
        return FhirError.of(
            400, "not-supported",
            f"FHIRPath Patch path {op.path!r}: {what!r} cannot be used to locate an element (supported: {SUPPORTED})",
            op.where,
        )

    # -- values -------------------------------------------------------------------------------------

    def build(self, value: _Value | _Parts, el: _Element, op: Operation, owner: str) -> tuple[_Value, str]:
        """The JSON to write for element ``el`` and the JSON key to write it under; 422 if the type is wrong."""
        if isinstance(value, _Parts):
            if el.choice is not None and el.key == el.choice:
                raise self.cannot(op, f"{owner}.{el.name} is a choice element: give its value as value[x]")
            target = el.types[0]
            if _is_primitive(target):
                raise self.cannot(op, f"{owner}.{el.name} is a {target}: give its value as value[x], not parts")
            return _Value(self.from_parts(value, target, op), None, None), el.key
        vt = value.type or ""
        if el.choice is not None:
            # a choice element's JSON key says its type, so the value's type must be one of the choices exactly
            chosen = vt if vt in el.types else next((t for t in el.types if t in QUANTITY_LIKE and vt in QUANTITY_LIKE), None)
            if chosen is None:
                raise self.cannot(op, f"a {vt} value does not fit {owner}.{el.name} ({' | '.join(el.types)})")
            return value, el.choice + _cap(chosen)
        if not any(self.fits(vt, t) for t in el.types):
            raise self.cannot(op, f"a {vt} value does not fit {owner}.{el.name} ({' | '.join(el.types)})")
        return value, el.key

    @staticmethod
    def fits(value_type: str, element_type: str) -> bool:
        """Whether a value of ``value_type`` may stand in an element of ``element_type``.

        Any primitive fits any primitive element (the validator then checks its lexical form): the
        conformance cases themselves put a ``valueString`` into ``Narrative.div`` (xhtml).
        """
        if value_type == element_type:
            return True
        if _is_primitive(value_type) and _is_primitive(element_type):
            return True
        if value_type in QUANTITY_LIKE and element_type in QUANTITY_LIKE:
            return True
        return element_type in ("Resource", "DomainResource") and value_type in r4()["resourceTypes"]

    def from_parts(self, parts: _Parts, type_name: str, op: Operation) -> dict[str, Any]:
        """An anonymous (backbone) value built from parts named after its elements."""
        out: dict[str, Any] = {}
        for p in parts.parts:
            el = _element(type_name, p["name"])
            if el is None:
                raise self.cannot(op, f"{type_name} has no element {p['name']!r}")
            v, key = self.build(_part_value(p, parts.where), el, op, type_name)
            if el.many:
                self.put_item(out, key, _slot_count(out, key), v)
            elif key in out or f"_{key}" in out:
                raise self.cannot(op, f"{type_name}.{el.name} does not repeat but is given twice")
            else:
                self.put_single(out, key, v)
        return out

    @staticmethod
    def put_single(obj: dict[str, Any], key: str, v: _Value) -> None:
        """Set a single-valued element, replacing its value and its extensions (the element as a whole)."""
        for k, x in ((key, v.json), (f"_{key}", v.ext)):
            if x is None:
                obj.pop(k, None)
            else:
                obj[k] = copy.deepcopy(x)

    @staticmethod
    def put_item(obj: dict[str, Any], key: str, index: int, v: _Value) -> None:
        """Insert an item at ``index`` of the list ``key``, keeping the ``_key`` array aligned."""
        length = _slot_count(obj, key)
        if v.json is not None or key in obj:
            obj.setdefault(key, [])
        if v.ext is not None or f"_{key}" in obj:
            obj.setdefault(f"_{key}", [])
        _pad(obj, key, length)
        for k, x in ((key, v.json), (f"_{key}", v.ext)):
            if k in obj:
                obj[k].insert(index, copy.deepcopy(x))
        _drop_if_empty(obj, key)

    # -- removal --------------------------------------------------------------------------------------

    def remove(self, loc: _Loc, op: Operation) -> None:
        """Delete the element at ``loc`` with its ``_x`` companion, then any container it leaves empty."""
        parent = loc.parent
        if parent is None:
            raise self.cannot(op, "the resource itself cannot be deleted by a patch")
        if loc.index is None:
            parent.pop(loc.key, None)
            parent.pop(f"_{loc.key}", None)
        else:
            _pad(parent, loc.key, _slot_count(parent, loc.key))
            for k in (loc.key, f"_{loc.key}"):
                if isinstance(parent.get(k), list):
                    del parent[k][loc.index]
            _drop_if_empty(parent, loc.key)
        self.prune(loc.up, parent, op)

    def prune(self, owner: _Loc | None, obj: dict[str, Any], op: Operation) -> None:
        """Remove ``obj`` (the object at ``owner``) if it is now empty: FHIR JSON has no empty objects."""
        if obj or owner is None or owner.parent is None:
            return
        if not _is_primitive(owner.type):
            self.remove(owner, op)
            return
        # the object was a primitive's _x companion: drop it, and the primitive too if it had no value
        if owner.value(self.root) is None:
            self.remove(owner, op)
            return
        if owner.index is None:
            owner.parent.pop(f"_{owner.key}", None)
        else:
            comp = owner.parent.get(f"_{owner.key}")
            if isinstance(comp, list) and owner.index < len(comp):
                comp[owner.index] = None
            _drop_if_empty(owner.parent, owner.key)

    # -- operations -------------------------------------------------------------------------------------

    def apply(self, op: Operation) -> None:
        getattr(self, f"op_{op.type}")(op)

    def op_add(self, op: Operation) -> None:
        """Append a named child to the one element the path selects."""
        assert op.name is not None and op.value is not None
        loc = self.one(op)
        el = _element(loc.type, op.name)
        if el is None:
            raise self.cannot(op, f"{loc.type} has no element {op.name!r}")
        v, key = self.build(op.value, el, op, loc.type)
        # a primitive's children (id, extension) live in its _x companion
        obj = self.companion_for_write(loc) if _is_primitive(loc.type) else loc.value(self.root)
        if not isinstance(obj, dict):
            raise self.cannot(op, f"{loc.path!r} is not an element that can hold {op.name!r}")
        if el.many:
            self.put_item(obj, key, _slot_count(obj, key), v)
            return
        if _present(obj, loc.type, el):
            raise self.cannot(op, f"{loc.path}.{op.name} already has a value (it does not repeat): use replace")
        self.put_single(obj, key, v)

    def companion_for_write(self, loc: _Loc) -> dict[str, Any]:
        """A primitive's ``_x`` object, created (aligned with its list) when it has none yet."""
        assert loc.parent is not None
        ckey = f"_{loc.key}"
        if loc.index is None:
            comp = loc.parent.get(ckey)
            if not isinstance(comp, dict):
                comp = loc.parent[ckey] = {}
            return comp
        arr = loc.parent.setdefault(ckey, [])
        _pad(loc.parent, loc.key, _slot_count(loc.parent, loc.key))
        if not isinstance(arr[loc.index], dict):
            arr[loc.index] = {}
        return arr[loc.index]  # type: ignore[no-any-return]

    def op_insert(self, op: Operation) -> None:
        """Insert into the list the path names, at a 0-based index no greater than its length."""
        assert op.value is not None and op.index is not None
        owner, el = self.collection(op)
        v, key = self.build(op.value, el, op, owner.type)
        obj = self.companion_for_write(owner) if _is_primitive(owner.type) else owner.value(self.root)
        if not isinstance(obj, dict):
            raise self.cannot(op, f"{owner.path!r} cannot hold a list")
        length = _slot_count(obj, key)
        if not 0 <= op.index <= length:
            raise self.cannot(op, f"index {op.index} is outside 0..{length} for {op.path!r}")
        self.put_item(obj, key, op.index, v)

    def op_delete(self, op: Operation) -> None:
        """Delete the one element the path selects; deleting nothing is not an error."""
        locs = self.locate(op)
        if len(locs) > 1:
            raise self.cannot(op, f"{op.path!r} selects {len(locs)} elements; only a single element can be deleted")
        if locs:
            self.remove(locs[0], op)

    def op_replace(self, op: Operation) -> None:
        """Replace the one element the path selects (value and extensions: the element as a whole)."""
        assert op.value is not None
        loc = self.one(op)
        if loc.parent is None or loc.element is None:
            raise self.cannot(op, "the resource itself cannot be replaced by a patch")
        owner = loc.up.type if loc.up is not None else self.rtype
        declared = _element(owner, loc.element.choice or loc.element.name) or loc.element
        v, key = self.build(op.value, declared, op, owner)
        if loc.index is None:
            if key != loc.key:  # a choice element changing type: valueString -> valueQuantity
                loc.parent.pop(loc.key, None)
                loc.parent.pop(f"_{loc.key}", None)
            self.put_single(loc.parent, key, v)
            return
        parent = loc.parent
        _pad(parent, key, _slot_count(parent, key))
        for k, x in ((key, v.json), (f"_{key}", v.ext)):
            if x is not None and k not in parent:
                parent[k] = [None] * _slot_count(parent, key)
            if k in parent:
                parent[k][loc.index] = copy.deepcopy(x)
        _drop_if_empty(parent, key)

    def op_move(self, op: Operation) -> None:
        """Move an item within the list the path names: taken out at source, put back in at destination."""
        assert op.source is not None and op.destination is not None
        owner, el = self.collection(op)
        obj = owner.companion() if _is_primitive(owner.type) else owner.value(self.root)
        length = _slot_count(obj, el.key) if isinstance(obj, dict) else 0
        for label, i in (("source", op.source), ("destination", op.destination)):
            if not 0 <= i < length:
                raise self.cannot(op, f"{label} {i} is outside 0..{length - 1} for {op.path!r}")
        assert isinstance(obj, dict)
        _pad(obj, el.key, length)
        for k in (el.key, f"_{el.key}"):
            if isinstance(obj.get(k), list):
                obj[k].insert(op.destination, obj[k].pop(op.source))


def apply_fhirpath_patch(resource: dict[str, Any], parameters: Any) -> dict[str, Any]:
    """Apply a FHIRPath Patch to a copy of ``resource``: 400 if the document is malformed, 422 if it cannot apply."""
    ops = parse_operations(parameters)
    if not isinstance(resource, dict):
        raise FhirError.of(422, "processing", "FHIRPath Patch applies to a resource (a JSON object)")
    patcher = _Patcher(copy.deepcopy(resource))
    for op in ops:
        patcher.apply(op)
    return patcher.root
