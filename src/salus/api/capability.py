"""The CapabilityStatement: exactly what this server does, derived from the same tables the code uses."""

from __future__ import annotations

from typing import Any

from salus import __version__
from salus.fhir.definitions import r4
from salus.search.registry import current, search_parameters
from salus.security import audit_query

INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"]
# the parameter types the search compiler implements (special ones, such as near, are not)
SUPPORTED_PARAM_TYPES = {"string", "token", "reference", "date", "number", "quantity", "uri", "composite"}
# Salus's own operation (R4 defines none for reindexing); docs/search.md describes it
REINDEX = {"name": "reindex", "definition": "http://salus.example.org/fhir/OperationDefinition/reindex"}
# GDPR portability (R4's own operation) and erasure (Salus's: R4 defines none); docs/security.md describes them
EVERYTHING = {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}
ERASE = {"name": "erase", "definition": "http://salus.example.org/fhir/OperationDefinition/Patient-erase"}
NOT_INDEXED_YET = "Not indexed yet: searches leave it out (400 with Prefer: handling=strict) until $reindex finishes"


def _security(base_url: str, smart: bool) -> dict[str, Any]:
    """``rest.security``: SMART on FHIR with its OAuth endpoints (the discovery document has the rest)."""
    if not smart:
        return {"documentation": "Security is not enabled on this server: every request has full rights."}
    auth = f"{base_url}/auth"
    return {"security": {
        "cors": True,
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}]}],
        "description": "SMART App Launch 2.0 and Backend Services; see .well-known/smart-configuration",
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": name, "valueUri": f"{auth}/{path}"} for name, path in (
                ("authorize", "authorize"), ("token", "token"), ("revoke", "revoke"), ("introspect", "introspect"))],
        }],
    }}


def answers(res_type: str, code: str, param: dict[str, Any]) -> bool:
    """Whether searches of the type answer the parameter: what the CapabilityStatement and OpenAPI list."""
    if res_type == audit_query.TYPE:  # searched in the audit trail, not through the index tables
        return code in audit_query.SUPPORTED
    return param["type"] in SUPPORTED_PARAM_TYPES and bool(param.get("expression") or code == "_id")


def _audit_event(params: list[dict[str, Any]]) -> dict[str, Any]:
    """AuditEvent: the audit trail (salus.service.audit_events), appended to and read, never changed."""
    return {
        "type": audit_query.TYPE,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{audit_query.TYPE}",
        "documentation": "Served from the tamper-evident audit trail: the server's own events and those other "
                         "systems create. Never updated or deleted (405). Searches are newest first.",
        "interaction": [{"code": c} for c in ("read", "vread", "history-instance", "create", "search-type")],
        "versioning": "versioned",
        "readHistory": True,
        "updateCreate": False,
        "conditionalCreate": False,
        "conditionalRead": "full-support",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchParam": params,
    }


def capability_statement(base_url: str, software_date: str, *, smart: bool = False) -> dict[str, Any]:
    """The server's CapabilityStatement (R4), listing every resource type and the search parameters really indexed.

    Custom parameters (SearchParameter resources stored here) are those in force in the caller's context.
    """
    resources = []
    overlay = current()
    for t in r4()["resourceTypes"]:
        params = [
            {"name": code, "definition": p["url"], "type": p["type"]}
            for code, p in sorted(search_parameters(t).items()) if answers(t, code, p)
        ]
        for param in params:
            if overlay.is_pending((t,), param["name"]):
                param["documentation"] = NOT_INDEXED_YET
        if t == audit_query.TYPE:
            resources.append(_audit_event(params))
            continue
        resources.append({
            "type": t,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{t}",
            "interaction": [{"code": c} for c in INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "local"],
            "searchParam": params,
            "operation": [
                {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}, REINDEX,
                *((EVERYTHING, ERASE) if t == "Patient" else ()),
            ],
        })
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": software_date,
        "publisher": "Salus",
        "kind": "instance",
        "software": {"name": "Salus", "version": __version__},
        "implementation": {"description": "Salus FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        # FHIR XML is not supported: requests for it get 406/415
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            **_security(base_url, smart),
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}, {"code": "search-system"}],
            "searchParam": [
                {"name": "_id", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id", "type": "token"},
                {"name": "_lastUpdated", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated", "type": "date"},
            ],
            "operation": [REINDEX],
        }],
    }
