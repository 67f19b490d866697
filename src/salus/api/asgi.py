"""The ASGI entry point uvicorn imports in each worker: settings come from ``SALUS_*`` variables."""

from salus.api.app import create_app

app = create_app()
