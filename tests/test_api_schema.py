"""The OpenAPI schema validates and the docs page is served offline without inline scripts (CSP-clean)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command
from rest_framework.test import APIClient

from panel.middleware import CONTENT_SECURITY_POLICY

pytestmark = pytest.mark.django_db


class Page(HTMLParser):
    """Collects script tags (src and body), inline styles and external references."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, Any]] = []
        self.styles = 0
        self.style_attributes = 0
        self.links: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if "style" in attributes or any(name.startswith("on") for name in attributes):
            self.style_attributes += 1
        if tag == "script":
            self.scripts.append({"src": attributes.get("src"), "body": ""})
            self.in_script = True
        elif tag == "style":
            self.styles += 1
        elif tag == "link" and attributes.get("href"):
            self.links.append(str(attributes["href"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_script = False

    def handle_data(self, data: str) -> None:
        if self.in_script:
            self.scripts[-1]["body"] += data


def test_it_generates_a_valid_schema_without_warnings() -> None:
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")


def test_it_serves_the_schema(db: Any) -> None:
    response = APIClient().get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "Doodba Panel API"
    paths = set(schema["paths"])
    for expected in (
        "/api/v1/servers/",
        "/api/v1/servers/{id}/validate/",
        "/api/v1/servers/{id}/confirm-host-key/",
        "/api/v1/projects/{id}/",
        "/api/v1/environments/{id}/",
        "/api/v1/jobs/{id}/lines/",
        "/api/v1/jobs/{id}/cancel/",
        "/api/v1/tokens/",
    ):
        assert expected in paths
    assert "apiToken" in schema["components"]["securitySchemes"]
    assert "/api/v1/docs/" not in paths


def test_it_serves_the_docs_page_offline_without_inline_script(db: Any) -> None:
    client = APIClient()
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert response["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in response["Content-Security-Policy"]
    page = Page()
    page.feed(response.content.decode())
    assert len(page.scripts) == 3
    for script in page.scripts:
        assert script["src"], "every script is a file"
        assert script["body"].strip() == "", "no inline script body"
    assert page.styles == 0 and page.style_attributes == 0
    # Every asset is served by this panel (no CDN): static files of the sidecar, and the init script.
    for url in [script["src"] for script in page.scripts] + page.links:
        assert not re.match(r"^(https?:)?//", url), url
    init = next(script["src"] for script in page.scripts if "script" in script["src"] and "docs" in script["src"])
    init_response = client.get(init)
    assert init_response.status_code == 200
    assert init_response["Content-Type"].startswith("application/javascript")
    assert "/api/v1/schema/" in init_response.content.decode()
    for url in [script["src"] for script in page.scripts if script["src"] != init] + page.links:
        assert url.startswith("/static/"), url
        assert finders.find(url.removeprefix("/static/")), url
