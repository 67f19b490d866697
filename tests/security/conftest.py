"""Fixtures for the authorization server: a clean store (auth tables included), an app, and the login flow."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from salus.config import Settings
from salus.security.smart import auth_routes
from salus.store import Store

BASE = "http://testserver/fhir"
TOKEN_URL = f"{BASE}/auth/token"
REDIRECT = "https://app.example.org/callback"
@pytest.fixture
def smart_settings(tmp_path: Path) -> Settings:
    """SMART on, tokens for an hour."""
    return Settings(data_dir=tmp_path, auth="smart")


@pytest.fixture
def http(smart_settings: Settings, store: Store) -> Iterator[TestClient]:
    """A client on an app made of the authorization server's routes only."""
    app = Starlette(routes=auth_routes(smart_settings, store))
    with TestClient(app, base_url="http://testserver", follow_redirects=False) as c:
        yield c


class Forms(HTMLParser):
    """The forms of an HTML page: each a dict of its fields (hidden, text, select's options)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.forms: list[dict[str, str]] = []
        self.options: dict[str, list[str]] = {}
        self._select: str | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({})
        elif tag == "input" and self.forms and "name" in a:
            self.forms[-1][a["name"]] = a.get("value", "")
        elif tag == "select" and self.forms:
            self._select = a["name"]
            self.forms[-1][a["name"]] = ""
            self.options[a["name"]] = []
        elif tag == "option" and self._select:
            self.options[self._select].append(a["value"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def pkce() -> tuple[str, str]:
    """A fresh (verifier, S256 challenge) pair."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_params(client_id: str, scope: str, challenge: str, **extra: str) -> dict[str, str]:
    """A standalone launch's authorization request."""
    return {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "scope": scope,
            "state": "st-123", "aud": BASE, "code_challenge": challenge, "code_challenge_method": "S256", **extra}


def login(http: TestClient, params: dict[str, str], username: str, password: str,
          patient: str | None = None) -> dict[str, list[str]]:
    """Go through the HTML pages as a browser would; the query of the final redirect to the app."""
    page = http.get("/fhir/auth/authorize", params=params)
    assert page.status_code == 200, page.text
    form = Forms(page.text).forms[0]
    assert {"username", "password"} <= set(form)
    form.update(username=username, password=password)
    res = http.post("/fhir/auth/authorize", data=form)
    if res.status_code == 200:  # the patient picker
        picker = Forms(res.text)
        form = picker.forms[0]
        assert "patient" in form and "password" not in form
        form["patient"] = patient or picker.options["patient"][0]
        res = http.post("/fhir/auth/authorize", data=form)
    assert res.status_code in (302, 303), res.text
    location = res.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return parse_qs(urlsplit(location).query)
