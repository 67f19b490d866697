"""Search on identifying values the index keeps only as keyed hashes (encryption at rest).

With encryption on, the store replaces the names, addresses, telecoms and
identifiers of people (``salus.store.crypto.PERSON_TYPES``) in the index by
HMACs under its index key. A parsed query is rewritten the same way before it
is compiled: string values carry the hashes of their normalised and exact forms
(the index has one hash per prefix, so starts-with becomes equality), token
codes become their hashes. What a hash cannot answer is refused with a 400
naming the reason, never answered wrongly: ``:contains``, ``_sort`` on these
parameters, and one clause over a mix of hashed and plain types.
"""

from __future__ import annotations

from dataclasses import replace

from salus.fhir.outcome import FhirError
from salus.search.tree import Clause, SearchQuery, StringValue, TokenValue, Value
from salus.search.types.string import MAX_NORM, normalise
from salus.store.crypto import Crypto, protected

_WHY = "the server encrypts identifying data at rest and indexes it only as keyed hashes"


def _refuse(code: str, what: str) -> FhirError:
    return FhirError.of(400, "not-supported", f"{what} is not available on '{code}': {_WHY}", expression=code)


def _blind_value(crypto: Crypto, code: str, value: Value) -> Value:
    if isinstance(value, StringValue):
        norm = normalise(value.text)[:MAX_NORM]
        return replace(value, blinded=(crypto.blind(code, norm), crypto.blind(code + ":exact", value.text)))
    if isinstance(value, TokenValue) and value.code is not None:
        return replace(value, code=crypto.blind(code, value.code))
    return value


def _blind_clause(crypto: Crypto, clause: Clause) -> Clause:
    code = clause.param.code
    types = clause.resource_types
    # no types: every type, where a code that is hashed on Patient is plain on some others
    hashed = protected(types, code) if types else (None if protected(("Patient",), code) else False)
    if hashed is False:
        return clause
    if hashed is None:
        raise _refuse(code, "Searching several resource types at once")
    if clause.modifier == "contains":
        raise _refuse(code, "The ':contains' modifier")
    return replace(clause, values=tuple(_blind_value(crypto, code, v) for v in clause.values))


def blind_query(q: SearchQuery, crypto: Crypto) -> None:
    """Rewrite ``q`` in place to match the hashed index; 400 for what hashes cannot answer."""
    q.clauses = [_blind_clause(crypto, c) for c in q.clauses]
    for key in q.sort:
        if q.resource_types and protected(q.resource_types, key.param.code) is not False:
            raise _refuse(key.param.code, "Sorting")
