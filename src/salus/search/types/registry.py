"""The parameter-type modules by FHIR search parameter type: one place for extraction and compilation to find them."""

from __future__ import annotations

from types import ModuleType

from salus.search.types import date, number, quantity, reference, string, token, uri

MODULES: dict[str, ModuleType] = {
    "string": string,
    "token": token,
    "reference": reference,
    "date": date,
    "number": number,
    "quantity": quantity,
    "uri": uri,
}
