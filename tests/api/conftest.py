"""Fixtures the API tests share."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from starlette.testclient import TestClient

from salus.api import create_app
from salus.config import Settings
from salus.store import Store


@pytest.fixture
def audited(store: Store, settings: Settings) -> Iterator[tuple[TestClient, Settings]]:
    """The app with the audit trail on (security off, so requests act as the anonymous caller).

    The client is started but not stopped: a test stops it (``__exit__``) to run the app's shutdown.
    """
    from salus.service import FhirService

    on = replace(settings, audit=True)
    client = TestClient(create_app(on, FhirService(store, on)), base_url="http://testserver")
    client.__enter__()
    yield client, on
    if client.portal is not None:  # not stopped by the test
        client.__exit__(None, None, None)
