"""Who is asking: the one value every door hands the service (after DESIGN.md's RequestContext).

A door (REST, MLLP, MQTT, CLI) turns its credentials into a ``Principal``
once; everything below decides from it and never looks at tokens or headers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import NamedTuple

# people's roles and the non-person kinds (issue 5: roles for people, devices and integrations)
PERSON_ROLES = ("clinician", "nurse", "receptionist", "patient", "admin", "auditor")
SYSTEM_ROLES = ("device", "integration")


@dataclass(frozen=True)
class Principal:
    """An authenticated actor and what its credentials grant.

    ``scopes`` are the granted SMART scope strings as issued (v1 or v2 syntax);
    ``patient`` is the launch context's Patient id for ``patient/`` scopes;
    ``fhir_user`` is the ``fhirUser`` claim (``Practitioner/x``, ``Patient/y``).
    ``unrestricted`` is true only when security is off (the loopback default).
    """

    subject: str
    kind: str = "user"  # user | system | anonymous
    role: str | None = None
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()
    patient: str | None = None
    fhir_user: str | None = None
    token_id: str | None = None
    break_glass: bool = False
    unrestricted: bool = False


# security off: every request acts with full rights (and is still audited under this name)
ANONYMOUS = Principal(subject="anonymous", kind="anonymous", unrestricted=True)


class _Context(NamedTuple):
    principal: Principal
    source: str | None  # client address
    user_agent: str | None
    purpose: str | None  # purpose of use (e.g. ETREAT, BTG for break-the-glass)
    request_id: str


class RequestContext(_Context):
    """One request: who, from where, and an id tying its audit entries together (random unless given).

    An immutable tuple rather than a frozen dataclass: the door makes one per request, and a frozen
    dataclass's field-by-field ``object.__setattr__`` cost more than the rest of the context's work.
    """

    __slots__ = ()

    def __new__(
        cls, principal: Principal = ANONYMOUS, source: str | None = None, user_agent: str | None = None,
        purpose: str | None = None, request_id: str | None = None,
    ) -> RequestContext:
        """The context; ``request_id`` defaults to 128 random bits in hex (as ``uuid4().hex``, for less)."""
        return tuple.__new__(cls, (principal, source, user_agent, purpose, request_id or os.urandom(16).hex()))


_current: ContextVar[RequestContext | None] = ContextVar("salus_request_context", default=None)
_NO_DOOR = RequestContext(request_id="no-door")


def current() -> RequestContext:
    """The context of the request being served (security off and no door: the anonymous default).

    A context variable, so that every layer reached by one request (the service,
    the transaction bundle's entries, worker threads started with anyio, which
    copy the context) sees the same caller without threading it through every call.
    """
    return _current.get() or _NO_DOOR


def bind(ctx: RequestContext) -> Token[RequestContext | None]:
    """Make ``ctx`` the current context until ``unbind`` (``acting_as`` without a generator, for the door's hot path)."""
    return _current.set(ctx)


def unbind(token: Token[RequestContext | None]) -> None:
    """Restore the context ``bind`` replaced."""
    _current.reset(token)


@contextmanager
def acting_as(ctx: RequestContext) -> Iterator[RequestContext]:
    """Run the block as ``ctx`` (a door sets it once per request; tests use it directly)."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
