"""The HTTP door: the FHIR REST API as an ASGI app (Starlette)."""

from salus.api.app import create_app

__all__ = ["create_app"]
