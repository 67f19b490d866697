"""Structural validation of FHIR R4 JSON resources, driven by the generated StructureDefinition tables.

Every problem found is reported (never only the first), each with a FHIRPath location in ``Issue.expression``:

* ``Patient.name[1].given[0]``: element names from the resource root, array positions as ``[n]``;
* ``Observation.value.ofType(Quantity).unit``: a choice element (JSON key ``valueQuantity``);
* ``Bundle.entry[0].resource.ofType(Patient).gender``: a resource nested in an element of type ``Resource``
  (``contained`` entries too: ``Patient.contained[0].ofType(Organization).name``);
* ``Patient.birthDate.extension[0].url``: inside a primitive's ``_birthDate`` companion object.

Speed is the main design constraint (the bulk importer validates every resource): each type's JSON keys are
compiled once into a dict of slots (choice keys such as ``valueQuantity`` and ``_birthDate`` companions are
expanded up front), regexes are compiled once, and locations are kept as cheap ``(parent, segment)`` tuples that
are only turned into strings when an issue is raised.

Profiles (``meta.profile``) are not checked yet. They fit here as constrained copies of a resource's
``_TypeInfo`` (tighter cardinalities and bindings, extra slots for slices) picked in ``_resource`` from the
profile URL; the walker itself does not need to change.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Callable
from functools import cache
from typing import Any

from salus.fhir.definitions import r4
from salus.fhir.outcome import FhirError, Issue

__all__ = ["DEFAULT_MAX_DEPTH", "validate", "validate_or_raise"]

DEFAULT_MAX_DEPTH = 64

# A location is the root resource type, or (parent location, element segment or array index).
Path = Any

_INT_MIN = -(2**31)
_INT_MAX = 2**31 - 1

# Slot kinds, compared by identity in the hot loop; the common ones first (the walker tests ``kind > _RESOURCE``).
_PRIM = 0
_COMPLEX = 1
_RESOURCE = 2
_PRIM_EXT = 3
_PROHIBITED = 4
_SKIP = 5


class _TypeInfo:
    """The compiled table of one type (datatype, backbone element or resource)."""

    __slots__ = ("name", "slots", "required", "has_choice", "is_reference", "is_coding", "is_codeable")

    def __init__(self, name: str) -> None:
        self.name = name
        self.slots: dict[str, _Slot] = {}
        # (element segment, JSON keys any of which satisfies min >= 1)
        self.required: list[tuple[str, tuple[str, ...]]] = []
        self.has_choice = False
        self.is_reference = name == "Reference"
        self.is_coding = name == "Coding"
        self.is_codeable = name == "CodeableConcept"


def _accept(value: Any) -> str | None:
    """The checker of slots that hold no primitive: never called, it keeps ``_Slot.check`` non-optional."""
    return None


_NO_TYPE = _TypeInfo("(none)")


class _Slot:
    """One JSON key of a type: what it may hold and how to name it in an issue."""

    __slots__ = (
        "key",
        "seg",
        "kind",
        "many",
        "type",
        "ti",
        "check",
        "codes",
        "value_set",
        "systems",
        "group",
        "contained",
        "base_key",
        "fast",
    )

    def __init__(self, key: str, seg: str, kind: int, many: bool, type_code: str) -> None:
        self.key = key
        self.seg = seg
        self.kind = kind
        self.many = many
        self.type = type_code
        self.ti = _NO_TYPE
        self.check: Callable[[Any], str | None] = _accept
        self.codes: frozenset[str] | None = None
        self.value_set = ""
        # Code systems whose codings are checked against ``codes`` (others could be from another system).
        self.systems: frozenset[str] = frozenset()
        self.group: str | None = None
        self.contained = False
        self.base_key = key
        # For string primitives whose whole check is the spec regex: that regex's fullmatch, run inline by the
        # walker so the common valid value costs no checker call.
        self.fast: Callable[[str], Any] | None = None


class _Ctx:
    """Per-call state: the issues found and whether any of them is structural (decides 400 vs 422)."""

    __slots__ = ("issues", "structural", "max_depth", "local_refs", "conditional_ok")

    def __init__(self, max_depth: int, conditional_ok: bool) -> None:
        self.issues: list[Issue] = []
        self.structural = False
        self.max_depth = max_depth
        # Local references ('#id') met in the current resource and its contained ones: (location, id).
        self.local_refs: list[tuple[Path, str]] | None = None
        # Conditional references ('Patient?identifier=...') are only meaningful inside transaction/batch Bundles.
        self.conditional_ok = conditional_ok

    def add(self, structural: bool, code: str, diagnostics: str, path: Path, seg: str | int | None = None) -> None:
        """Record one issue, rendering its location only now that it is needed."""
        if seg is not None:
            path = (path, seg)
        if structural:
            self.structural = True
        self.issues.append(Issue(code, diagnostics, expression=_render(path)))


def _render(path: Path) -> str:
    """The FHIRPath string of a location tuple chain."""
    parts: list[str] = []
    while type(path) is tuple:
        path, seg = path
        parts.append(f"[{seg}]" if type(seg) is int else "." + seg)
    parts.append(path)
    parts.reverse()
    return "".join(parts)


def _show(value: Any) -> str:
    """A short repr for diagnostics, so a bad 5 MB attachment does not end up in a log line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_kind(value: Any) -> str:
    """The JSON name of a value's kind, for diagnostics."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "boolean"
    if type(value) in (int, float):
        return "number"
    if type(value) is str:
        return "string"
    if type(value) is list:
        return "array"
    if type(value) is dict:
        return "object"
    return type(value).__name__


# --- primitive checkers: each returns None when fine, else the diagnostics -------------------------------------


def _regex_checker(type_code: str, pattern: str) -> Callable[[Any], str | None]:
    """A checker for a string-valued primitive whose lexical space is the spec's regex."""
    # ASCII semantics make \s / \S mean what they mean in the (Java/XSD) regexes of the spec: a no-break space
    # is an ordinary character in a string, not whitespace that would make it invalid.
    match = re.compile(pattern, re.ASCII).fullmatch

    def check(v: Any) -> str | None:
        if type(v) is not str:
            return f"Invalid {type_code}: expected a JSON string, got {_json_kind(v)} {_show(v)}"
        if not v:
            return f"Invalid {type_code}: empty strings are not allowed in FHIR JSON"
        if match(v) is None:
            return f"Invalid {type_code} value {_show(v)}"
        return None

    return check


def _calendar_checker(type_code: str, pattern: str) -> Callable[[Any], str | None]:
    """A date/dateTime/instant checker: the regex accepts 2023-02-30, so real month lengths are checked too."""
    match = re.compile(pattern, re.ASCII).fullmatch

    def check(v: Any) -> str | None:
        if type(v) is not str:
            return f"Invalid {type_code}: expected a JSON string, got {_json_kind(v)} {_show(v)}"
        if not v:
            return f"Invalid {type_code}: empty strings are not allowed in FHIR JSON"
        if match(v) is None:
            return f"Invalid {type_code} value {_show(v)}"
        # Only days 29-31 can be wrong once the regex passed; skip the int parsing for every other date.
        if len(v) >= 10 and v[8:10] > "28" and int(v[8:10]) > calendar.monthrange(int(v[:4]), int(v[5:7]))[1]:
            return f"Invalid {type_code} value {_show(v)}: no such day in the calendar"
        return None

    return check


def _base64_checker() -> Callable[[Any], str | None]:
    """base64Binary without the spec regex, which backtracks exponentially on whitespace-rich invalid input."""
    alphabet = re.compile(r"[0-9A-Za-z+/=]+", re.ASCII).fullmatch

    def check(v: Any) -> str | None:
        if type(v) is not str:
            return f"Invalid base64Binary: expected a JSON string, got {_json_kind(v)} {_show(v)}"
        if not v:
            return "Invalid base64Binary: empty strings are not allowed in FHIR JSON"
        # Whitespace is tolerated anywhere (the spec regex only allows it between quads): lenient, never wrong.
        compact = "".join(v.split()) if not alphabet(v) else v
        if len(compact) % 4 or alphabet(compact) is None:
            return f"Invalid base64Binary value {_show(v)}"
        return None

    return check


def _check_boolean(v: Any) -> str | None:
    """JSON true/false only: "true" as a string is a classic client mistake."""
    if type(v) is bool:
        return None
    return f"Invalid boolean: expected JSON true or false, got {_json_kind(v)} {_show(v)}"


def _int_checker(type_code: str, low: int) -> Callable[[Any], str | None]:
    """integer / unsignedInt / positiveInt: a JSON integer (not a bool, not 1.0) in the 32-bit range."""

    def check(v: Any) -> str | None:
        if type(v) is not int:
            return f"Invalid {type_code}: expected a JSON integer, got {_json_kind(v)} {_show(v)}"
        if v < low or v > _INT_MAX:
            return f"Invalid {type_code} value {v}: must be between {low} and {_INT_MAX}"
        return None

    return check


def _check_decimal(v: Any) -> str | None:
    """A JSON number; NaN and infinities (which Python's json module lets through) are not FHIR decimals."""
    t = type(v)
    if t is int:
        return None
    if t is float and math.isfinite(v):
        return None
    return f"Invalid decimal: expected a JSON number, got {_json_kind(v)} {_show(v)}"


def _check_xhtml(v: Any) -> str | None:
    """Narrative XHTML is stored as given; only its outer shape is checked (no XHTML parsing yet)."""
    if type(v) is not str:
        return f"Invalid xhtml: expected a JSON string, got {_json_kind(v)} {_show(v)}"
    if not v.startswith("<div"):
        return f"Invalid xhtml: the narrative must be a <div> element, got {_show(v)}"
    return None


def _primitive_checkers(regexes: dict[str, str]) -> dict[str, Callable[[Any], str | None]]:
    """One checker per primitive type, built from the spec regexes."""
    checkers: dict[str, Callable[[Any], str | None]] = {}
    for type_code, pattern in regexes.items():
        checkers[type_code] = _regex_checker(type_code, pattern)
    for type_code in ("date", "dateTime", "instant"):
        checkers[type_code] = _calendar_checker(type_code, regexes[type_code])
    checkers["base64Binary"] = _base64_checker()
    checkers["boolean"] = _check_boolean
    checkers["integer"] = _int_checker("integer", _INT_MIN)
    checkers["unsignedInt"] = _int_checker("unsignedInt", 0)
    checkers["positiveInt"] = _int_checker("positiveInt", 1)
    checkers["decimal"] = _check_decimal
    checkers["xhtml"] = _check_xhtml
    return checkers


# --- compiling the definitions -----------------------------------------------------------------------------------


class _Schema:
    """All compiled type tables of one FHIR version."""

    def __init__(self, defs: dict[str, Any]) -> None:
        types: dict[str, Any] = defs["types"]
        self.primitives = frozenset(defs["primitiveTypes"])
        self.checkers = _primitive_checkers(defs["primitiveRegex"])
        self.fast = {
            t: re.compile(p, re.ASCII).fullmatch
            for t, p in defs["primitiveRegex"].items()
            if t
            not in (
                "date",
                "dateTime",
                "instant",
                "base64Binary",
                "boolean",
                "integer",
                "unsignedInt",
                "positiveInt",
                "decimal",
            )
        }
        value_sets: dict[str, list[str]] = defs["valueSets"]
        self.value_sets = {url: frozenset(codes) for url, codes in value_sets.items()}
        self.tables: dict[str, _TypeInfo] = {name: _TypeInfo(name) for name in types}
        # Tables for the companion ``_x`` object of each primitive: its Element part, without ``value``.
        self.ext_tables: dict[str, _TypeInfo] = {
            p: _TypeInfo(f"the extension object of a {p}") for p in self.primitives
        }
        self.resource_types = frozenset(defs["resourceTypes"])
        self.resources: dict[str, _TypeInfo] = {}
        for name, spec in types.items():
            self._fill(self.tables[name], spec["elements"], spec.get("kind") == "resource")
        for prim, ti in self.ext_tables.items():
            elements = {k: v for k, v in types[prim]["elements"].items() if k != "value"}
            self._fill(ti, elements, False)
        self.resources = {rt: self.tables[rt] for rt in self.resource_types}

    def _fill(self, ti: _TypeInfo, elements: dict[str, list[Any]], is_resource: bool) -> None:
        """Expand one type's element list into its JSON-key slots."""
        for name, (min_, max_, type_codes, binding) in elements.items():
            many = max_ != 1
            if name.endswith("[x]"):
                base = name[:-3]
                ti.has_choice = True
                keys = []
                for code in type_codes:
                    key = base + code[0].upper() + code[1:]
                    keys.append(key)
                    self._add(ti, key, f"{base}.ofType({code})", many, max_, code, binding, base, is_resource)
                seg = base
            else:
                code = type_codes[0]
                if is_resource and name == "id":
                    # The tables type every ``id`` as string (the FHIRPath System type); a resource id is an ``id``.
                    code = "id"
                keys = [name]
                self._add(ti, name, name, many, max_, code, binding, None, is_resource)
                seg = name
            if min_ > 0:
                # A primitive carried only by its ``_x`` extension object is present (e.g. data-absent-reason).
                all_keys = tuple(keys) + tuple("_" + k for k in keys if "_" + k in ti.slots)
                ti.required.append((seg, all_keys))
        if is_resource:
            ti.slots["resourceType"] = _Slot("resourceType", "resourceType", _SKIP, False, "string")

    def _add(
        self,
        ti: _TypeInfo,
        key: str,
        seg: str,
        many: bool,
        max_: int,
        code: str,
        binding: str | None,
        group: str | None,
        is_resource: bool,
    ) -> None:
        """Create the slot of one JSON key (and of its ``_key`` companion when the type is primitive)."""
        if max_ == 0:
            kind = _PROHIBITED
        elif code in self.primitives:
            kind = _PRIM
        elif code == "Resource":
            kind = _RESOURCE
        else:
            kind = _COMPLEX
        slot = _Slot(key, seg, kind, many, code)
        slot.group = group
        if kind is _PRIM:
            slot.check = self.checkers[code]
            slot.fast = self.fast.get(code)
        elif kind is _COMPLEX:
            slot.ti = self.tables[code]
        elif kind is _RESOURCE:
            slot.contained = is_resource and key == "contained"
        if binding is not None and binding in self.value_sets:
            slot.codes = self.value_sets[binding]
            slot.value_set = binding
            slot.systems = _systems_of(binding)
        ti.slots[key] = slot
        if kind is _PRIM:
            ext = _Slot("_" + key, seg, _PRIM_EXT, many, code)
            ext.ti = self.ext_tables[code]
            ext.group = group
            ext.base_key = key
            ti.slots["_" + key] = ext


def _systems_of(value_set_url: str) -> frozenset[str]:
    """The code systems a required value set's codes are assumed to come from.

    The definitions carry the expanded codes but not their systems. HL7 names a value set after its code system
    in the common case, so a coding is checked when its system is one of these two spellings (or absent); codings
    from any other system are let through rather than risk rejecting valid data.
    """
    name = value_set_url.rstrip("/").rsplit("/", 1)[-1]
    return frozenset({f"http://hl7.org/fhir/{name}", f"http://terminology.hl7.org/CodeSystem/{name}"})


@cache
def _schema() -> _Schema:
    """The R4 tables, compiled on first use and shared by every call."""
    return _Schema(r4())


# --- the walk ----------------------------------------------------------------------------------------------------

_REF_RELATIVE = re.compile(
    r"([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?", re.ASCII
).fullmatch
_REF_ABSOLUTE = re.compile(r"https?://\S+", re.ASCII).fullmatch
_REF_UUID = re.compile(
    r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
).fullmatch
_REF_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+", re.ASCII).fullmatch
_REF_LOCAL = re.compile(r"#([A-Za-z0-9\-.]{1,64})?", re.ASCII).fullmatch
_REF_CONDITIONAL = re.compile(r"([A-Z][A-Za-z]+)\?\S+", re.ASCII).fullmatch
_TRANSACTION_TYPES = frozenset({"transaction", "batch"})


def _walk(obj: dict[str, Any], ti: _TypeInfo, path: Path, depth: int, ctx: _Ctx, schema: _Schema) -> None:
    """Check every key of one JSON object against its type table, recursing into complex children."""
    if depth > ctx.max_depth:
        ctx.add(True, "too-costly", f"Content nested deeper than {ctx.max_depth} levels; not validated", path)
        return
    slots = ti.slots
    seen: dict[str, str] | None = {} if ti.has_choice else None
    for key, value in obj.items():
        slot = slots.get(key)
        if slot is None:
            ctx.add(True, "structure", f"Unknown element '{key}' in {ti.name}", path, key)
            continue
        kind = slot.kind
        if seen is not None and slot.group is not None:
            other = seen.get(slot.group)
            if other is None:
                seen[slot.group] = slot.type
            elif other != slot.type:
                ctx.add(
                    False,
                    "structure",
                    f"Only one type allowed for {slot.group}[x], found {other} and {slot.type}",
                    path,
                    slot.group,
                )
        if kind > _RESOURCE:
            # The rare kinds, kept behind one comparison so the common ones pay nothing for them.
            if kind is _PRIM_EXT:
                _prim_ext(obj, slot, value, path, depth, ctx, schema)
            elif kind is _PROHIBITED:
                ctx.add(False, "structure", f"Element '{key}' is not allowed here (max cardinality 0)", path, key)
            continue
        if slot.many:
            if type(value) is not list:
                ctx.add(
                    True,
                    "structure",
                    f"Element '{key}' repeats: expected a JSON array, got {_json_kind(value)}",
                    path,
                    slot.seg,
                )
                continue
            if not value:
                ctx.add(True, "structure", f"Empty array for '{key}': omit the element instead", path, slot.seg)
                continue
            here = (path, slot.seg)
            if kind is _PRIM:
                check = slot.check
                codes = slot.codes
                fast = slot.fast
                for i, item in enumerate(value):
                    if fast is not None and type(item) is str and item and fast(item) is not None:
                        if codes is not None and item not in codes:
                            ctx.add(False, "code-invalid", _not_in_value_set(item, slot), here, i)
                        continue
                    if item is None:
                        _null_in_array(obj, slot, i, here, ctx)
                        continue
                    msg = check(item)
                    if msg is not None:
                        ctx.add(True, "value", msg, here, i)
                    elif codes is not None and item not in codes:
                        ctx.add(False, "code-invalid", _not_in_value_set(item, slot), here, i)
            elif kind is _COMPLEX:
                child = slot.ti
                for i, item in enumerate(value):
                    if type(item) is dict and item:
                        _walk(item, child, (here, i), depth + 1, ctx, schema)
                        if slot.codes is not None or child.is_reference:
                            _post(item, slot, (here, i), ctx)
                    else:
                        _bad_object(item, key, (here, i), ctx)
            else:
                for i, item in enumerate(value):
                    _resource(item, (here, i), depth + 1, ctx, schema, None, slot.contained)
            continue
        # A single-valued element.
        if kind is _PRIM:
            fast = slot.fast
            if fast is not None and type(value) is str and value and fast(value) is not None:
                if slot.codes is not None and value not in slot.codes:
                    ctx.add(False, "code-invalid", _not_in_value_set(value, slot), path, slot.seg)
                continue
            if type(value) is list:
                ctx.add(
                    True,
                    "structure",
                    f"Element '{key}' does not repeat: expected a single value, got an array",
                    path,
                    slot.seg,
                )
                continue
            if value is None:
                ctx.add(True, "structure", f"Element '{key}' is null: omit it instead", path, slot.seg)
                continue
            msg = slot.check(value)
            if msg is not None:
                ctx.add(True, "value", msg, path, slot.seg)
            elif slot.codes is not None and value not in slot.codes:
                ctx.add(False, "code-invalid", _not_in_value_set(value, slot), path, slot.seg)
        elif kind is _COMPLEX:
            if type(value) is dict and value:
                here = (path, slot.seg)
                _walk(value, slot.ti, here, depth + 1, ctx, schema)
                if slot.codes is not None or slot.ti.is_reference:
                    _post(value, slot, here, ctx)
            elif type(value) is list:
                ctx.add(
                    True,
                    "structure",
                    f"Element '{key}' does not repeat: expected a JSON object, got an array",
                    path,
                    slot.seg,
                )
            else:
                _bad_object(value, key, (path, slot.seg), ctx)
        else:
            if type(value) is list:
                ctx.add(
                    True,
                    "structure",
                    f"Element '{key}' does not repeat: expected a resource, got an array",
                    path,
                    slot.seg,
                )
                continue
            _resource(value, (path, slot.seg), depth + 1, ctx, schema, None, slot.contained)
    for seg, keys in ti.required:
        for k in keys:
            if k in obj:
                break
        else:
            ctx.add(
                False,
                "required",
                f"Missing required element '{seg}' ({ti.name}.{seg} has min cardinality 1)",
                path,
                seg,
            )


def _not_in_value_set(code: Any, slot: _Slot) -> str:
    """Diagnostics for a code outside its required binding, naming the value set so the client can look it up."""
    return f"Code {_show(code)} is not in the required value set {slot.value_set}"


def _bad_object(value: Any, key: str, path: Path, ctx: _Ctx) -> None:
    """Report a value that should have been a non-empty JSON object."""
    if type(value) is dict:
        ctx.add(True, "structure", f"Empty object for '{key}': omit the element instead", path)
    else:
        ctx.add(
            True, "structure", f"Element '{key}' must be a JSON object, got {_json_kind(value)} {_show(value)}", path
        )


def _null_in_array(obj: dict[str, Any], slot: _Slot, i: int, here: Path, ctx: _Ctx) -> None:
    """A null in a primitive array is only a placeholder for a value that exists in the ``_x`` array alone."""
    ext = obj.get("_" + slot.key)
    if type(ext) is list and i < len(ext) and ext[i] is not None:
        return
    ctx.add(True, "structure", f"Null in '{slot.key}' without a matching entry in '_{slot.key}'", here, i)


def _prim_ext(
    obj: dict[str, Any],
    slot: _Slot,
    value: Any,
    path: Path,
    depth: int,
    ctx: _Ctx,
    schema: _Schema,
) -> None:
    """Check a primitive's ``_x`` companion: its id/extension object, or an array aligned with the values."""
    here = (path, slot.seg)
    table = slot.ti
    if not slot.many:
        if type(value) is dict and value:
            _walk(value, table, here, depth + 1, ctx, schema)
        else:
            _bad_object(value, slot.key, here, ctx)
        return
    if type(value) is not list or not value:
        ctx.add(True, "structure", f"'{slot.key}' must be a non-empty JSON array aligned with '{slot.base_key}'", here)
        return
    values = obj.get(slot.base_key)
    if type(values) is list and len(values) != len(value):
        ctx.add(
            True,
            "structure",
            f"'{slot.key}' has {len(value)} entries but '{slot.base_key}' has {len(values)}; they must align",
            here,
        )
    all_null = True
    for i, item in enumerate(value):
        if item is None:
            continue
        all_null = False
        if type(item) is dict and item:
            _walk(item, table, (here, i), depth + 1, ctx, schema)
        else:
            _bad_object(item, slot.key, (here, i), ctx)
    if all_null:
        ctx.add(True, "structure", f"'{slot.key}' holds only nulls: omit it instead", here)


def _post(obj: dict[str, Any], slot: _Slot, here: Path, ctx: _Ctx) -> None:
    """Checks that need a whole datatype: reference syntax and required bindings on codings."""
    ti = slot.ti
    if ti.is_reference:
        ref = obj.get("reference")
        if type(ref) is str and ref:
            _reference(ref, here, ctx)
    if slot.codes is None:
        return
    if ti.is_coding:
        _coding(obj, slot, here, ctx)
    elif ti.is_codeable:
        codings = obj.get("coding")
        if type(codings) is list:
            for i, coding in enumerate(codings):
                if type(coding) is dict:
                    _coding(coding, slot, ((here, "coding"), i), ctx)


def _coding(coding: dict[str, Any], slot: _Slot, here: Path, ctx: _Ctx) -> None:
    """A Coding under a required binding must use one of its codes, when it is from the bound code system."""
    code = coding.get("code")
    system = coding.get("system")
    if type(code) is not str or slot.codes is None or (system is not None and system not in slot.systems):
        return
    if code not in slot.codes:
        ctx.add(False, "code-invalid", _not_in_value_set(code, slot), here, "code")


def _reference(ref: str, here: Path, ctx: _Ctx) -> None:
    """Reference.reference must be a literal reference FHIR can resolve."""
    m = _REF_RELATIVE(ref)
    if m is not None:
        if m.group(1) not in _schema().resource_types:
            ctx.add(
                False,
                "value",
                f"Reference {_show(ref)} names an unknown resource type '{m.group(1)}'",
                here,
                "reference",
            )
        return
    if _REF_ABSOLUTE(ref) is not None or _REF_UUID(ref) is not None or _REF_OID(ref) is not None:
        return
    m = _REF_LOCAL(ref)
    if m is not None:
        if m.group(1) is not None:
            if ctx.local_refs is None:
                ctx.local_refs = []
            ctx.local_refs.append(((here, "reference"), m.group(1)))
        return
    m = _REF_CONDITIONAL(ref)
    if m is not None and ctx.conditional_ok and m.group(1) in _schema().resource_types:
        return
    ctx.add(
        False,
        "value",
        f"Invalid reference {_show(ref)}: expected Type/id, Type/id/_history/vid, an absolute http(s) URL, "
        "urn:uuid:, urn:oid: or #local-id",
        here,
        "reference",
    )


def _resource(
    obj: Any,
    path: Path,
    depth: int,
    ctx: _Ctx,
    schema: _Schema,
    expected: str | None,
    contained: bool,
) -> None:
    """Validate one resource: the root, a Bundle entry, a Parameters resource or a contained resource."""
    where = path if path is not None else (expected or "Resource")
    if type(obj) is not dict:
        ctx.add(True, "structure", f"A resource must be a JSON object, got {_json_kind(obj)}", where)
        return
    rt = obj.get("resourceType")
    if rt is None:
        ctx.add(True, "invalid", "Missing 'resourceType'", where, None if path is not None else "resourceType")
        return
    ti = schema.resources.get(rt) if type(rt) is str else None
    if ti is None:
        ctx.add(
            True,
            "not-supported",
            f"Unknown resource type {_show(rt)}",
            where,
            None if path is not None else "resourceType",
        )
        return
    if expected is not None and rt != expected:
        ctx.add(True, "invalid", f"Expected resourceType {expected}, got {rt}", rt, "resourceType")
        return
    saved_refs = ctx.local_refs
    if not contained:
        ctx.local_refs = None
    saved_conditional = ctx.conditional_ok
    if rt == "Bundle":
        ctx.conditional_ok = saved_conditional or obj.get("type") in _TRANSACTION_TYPES
    here = rt if path is None else (path, f"ofType({rt})")
    _walk(obj, ti, here, depth, ctx, schema)
    ctx.conditional_ok = saved_conditional
    if contained:
        return
    if ctx.local_refs:
        ids = {c.get("id") for c in obj.get("contained", ()) if type(c) is dict} if "contained" in obj else set()
        for ref_path, local_id in ctx.local_refs:
            if local_id not in ids:
                ctx.add(
                    False, "value", f"Local reference '#{local_id}' has no contained resource with that id", ref_path
                )
    ctx.local_refs = saved_refs


def _run(resource: object, expected_type: str | None, max_depth: int, conditional_references: bool) -> _Ctx:
    """Validate and keep the context, whose structural flag decides the HTTP status."""
    ctx = _Ctx(max_depth, conditional_references)
    try:
        _resource(resource, None, 0, ctx, _schema(), expected_type, False)
    except RecursionError:
        # Only reachable when a caller raises max_depth beyond what the interpreter stack holds.
        ctx.add(True, "too-costly", "Content nested too deeply to validate", expected_type or "Resource")
    return ctx


def validate(
    resource: object,
    expected_type: str | None = None,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    conditional_references: bool = False,
) -> list[Issue]:
    """Every structural problem of a FHIR JSON resource, so a client can fix them all in one round trip."""
    # conditional_references: accept ``Type?query`` references, for a resource taken out of a transaction or batch
    # Bundle (inside a whole transaction/batch Bundle they are accepted anyway).
    return _run(resource, expected_type, max_depth, conditional_references).issues


def validate_or_raise(
    resource: object,
    expected_type: str | None = None,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    conditional_references: bool = False,
) -> None:
    """Raise FhirError(400 malformed / 422 well-formed but invalid) so every door refuses bad content alike."""
    ctx = _run(resource, expected_type, max_depth, conditional_references)
    if any(i.severity in ("error", "fatal") for i in ctx.issues):
        raise FhirError(400 if ctx.structural else 422, ctx.issues)
