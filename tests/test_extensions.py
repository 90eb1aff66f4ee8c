"""The extension point (``panel.extensions``): inventory depends on no feature app, and what a feature app registers
shows on the environment page and in the API, in the defined order, with the page's scoping.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.template import Template
from django.test import Client
from django.urls import clear_url_caches
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient

from panel import extensions

ROOT = Path(__file__).resolve().parent.parent
FEATURE_APPS = ("deployments", "backups", "monitoring")
# Modules of panel/ still allowed to import a feature app, each with the reason; empty since the lead moved the
# proxy's Traefik names out of deployments (42ff23d). Remove an entry as soon as its import is gone.
KNOWN_EXCEPTIONS: dict[str, str] = {}
DYNAMIC_IMPORTS = {"import_module", "import_string", "__import__"}


def feature_imports(path: Path) -> list[str]:
    """``line: module`` of every import of a feature app in ``path`` (static, in functions, or by dotted string)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in DYNAMIC_IMPORTS and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [(node.lineno, name) for name in names if name.split(".")[0] in FEATURE_APPS]
    return [f"{line}: {name}" for line, name in sorted(found)]


def test_it_keeps_every_panel_module_free_of_feature_app_imports() -> None:
    offenders = {}
    for path in sorted((ROOT / "panel").rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        if "/migrations/" in relative or relative in KNOWN_EXCEPTIONS:
            continue
        imports = feature_imports(path)
        if imports:
            offenders[relative] = imports
    assert offenders == {}, "panel/ must reach feature apps through panel.extensions only"
    assert len(list((ROOT / "panel").rglob("*.py"))) > 30  # the walk really saw the package


def test_it_catches_a_feature_import_in_any_form(tmp_path: Path) -> None:
    module = tmp_path / "sample.py"
    module.write_text(
        "import os\nfrom panel import extensions\n"
        "def f():\n    from backups.models import Backup\n"
        "import monitoring.models as m\n"
        "x = importlib.import_module('deployments.views')\n"
    )
    assert feature_imports(module) == ["4: backups.models", "5: monitoring.models", "6: deployments.views"]


def test_it_keeps_inventory_templates_free_of_feature_app_templates() -> None:
    for path in sorted((ROOT / "templates" / "inventory").glob("*.html")):
        text = path.read_text()
        assert not re.search(r"""["'](deployments|backups|monitoring)/""", text), path.name


# A test-only second contribution --------------------------------------------------------------------------------


class NoteActions(viewsets.GenericViewSet):  # type: ignore[type-arg]
    """A test-only action on environments."""

    @action(detail=True, methods=["post"])
    def note(self, request: Request, pk: str | None = None) -> Response:
        """Answer which environment was reached (scoped like every environment action)."""
        environment = self.get_object()
        return Response({"noted": environment.name}, status=status.HTTP_202_ACCEPTED)


class NotesField(serializers.Field):  # type: ignore[type-arg]
    """Read-only: a text derived from the environment."""

    def __init__(self) -> None:
        super().__init__(read_only=True, source="*", help_text="A test note.")

    def to_representation(self, value: Any) -> str:
        return f"note for {value.name}"


class Notes(extensions.Contribution):
    """Contributes to every slot of the environment page, an action, and a customer-visible field."""

    name = "test-notes"
    model = "environment"
    order = 150  # after deployments (100)
    templates = {
        "facts": Template('<dt>Notes</dt><dd data-testid="notes-fact">{{ notes_text }}</dd>'),
        "actions": Template(
            '{% if may_change %}<a href="#notes" role="button" data-testid="notes-button">Take a note</a>{% endif %}'
        ),
        "sections": Template(
            '<h2>Notes</h2><article data-testid="notes-section">{{ notes_text }}'
            "{% if show_details %} (staff view){% endif %}</article>"
        ),
    }
    viewset_mixins = (NoteActions,)
    customer_fields = ("notes",)

    def context(self, page: extensions.Page) -> dict[str, Any]:
        # The page's own variables are visible to the contribution.
        return {"notes_text": f"Notes of {page.obj.name} ({page.context['environment_state'].code})"}

    def serializer_fields(self) -> dict[str, Any]:
        return {"notes": NotesField()}


def reload_urls() -> None:
    """Rebuild the URL configuration (contributions' routes are read when the URLs load)."""
    importlib.reload(importlib.import_module("panel.api_urls"))
    importlib.reload(importlib.import_module("panel.urls"))
    clear_url_caches()


@contextmanager
def contributed(*contributions: extensions.Contribution) -> Iterator[None]:
    for contribution in contributions:
        extensions.register(contribution)
    try:
        reload_urls()
        yield
    finally:
        for contribution in contributions:
            extensions.unregister(contribution.name)
        reload_urls()


def page_for(user: Any, environment: Any) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(f"/environments/{environment.pk}/")
    assert response.status_code == 200
    return response.content.decode()


def api_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.django_db
def test_it_shows_a_second_contribution_on_the_environment_page_in_order(users: Any, inventory: Any) -> None:
    env = inventory["env_a"]
    before = page_for(users["alice"], env)
    assert 'data-testid="notes-section"' not in before
    with contributed(Notes()):
        page = page_for(users["alice"], env)
        customer = page_for(users["carol"], env)
    assert re.search(r'data-testid="notes-fact">Notes of prod \(not deployed\)</dd>\s*</dl>', page)
    assert 'data-testid="notes-button"' in page
    assert page.index('data-testid="notes-button"') < page.index(">Edit</a>")
    # Sections follow the defined order: deployments (100), then notes (150), then inventory's own blocks.
    assert page.index("Deployment history") < page.index('data-testid="notes-section"')
    assert page.index('data-testid="notes-section"') < page.index("Environment variables")
    assert "Notes of prod (not deployed) (staff view)</article>" in page
    # Customers see what the contribution shows them, no buttons.
    assert "Notes of prod (not deployed)</article>" in customer
    assert 'data-testid="notes-button"' not in customer
    assert 'data-testid="notes-section"' not in page_for(users["alice"], env)


@pytest.mark.django_db
def test_it_serves_a_second_contribution_in_the_api_with_the_environment_scoping(users: Any, inventory: Any) -> None:
    env, other = inventory["env_a"], inventory["env_b"]
    url = f"/api/v1/environments/{env.pk}/"
    with contributed(Notes()):
        staff = api_for(users["alice"]).get(url).json()
        customer = api_for(users["carol"]).get(url).json()
        noted = api_for(users["olga"]).post(f"{url}note/")
        viewer = api_for(users["victor"]).post(f"{url}note/")
        foreign = api_for(users["bob"]).post(f"{url}note/")
        own = api_for(users["bob"]).post(f"/api/v1/environments/{other.pk}/note/")
        deploy_schema = api_for(users["alice"]).get("/api/v1/schema/?format=json").json()
    assert staff["notes"] == "note for prod"
    # Contributed fields in order (deployments 100, notes 150, monitoring 300 and on), before created_at.
    assert [name for name in staff if name in ("webhook_url", "notes", "health_state", "created_at")] == [
        "webhook_url", "notes", "health_state", "created_at",
    ]  # fmt: skip
    assert list(staff)[-1] == "created_at"
    assert customer["notes"] == "note for prod" and "webhook_url" not in customer
    assert (noted.status_code, noted.json()) == (202, {"noted": "prod"})
    assert viewer.status_code == 404 and foreign.status_code == 404  # get_object keeps the change scope
    assert own.status_code == 202
    paths = deploy_schema["paths"]
    assert "/api/v1/environments/{id}/note/" in paths and "/api/v1/environments/{id}/deploy/" in paths
    assert deploy_schema["components"]["schemas"]["Environment"]["properties"]["notes"]["type"] == "string"
    # Unregistered: the route and the field are gone again, deployments' stay.
    assert api_for(users["olga"]).post(f"{url}note/").status_code == 404
    after = api_for(users["alice"]).get(url).json()
    assert "notes" not in after and "webhook_url" in after


def test_it_refuses_contributions_that_would_collide() -> None:
    with pytest.raises(ImproperlyConfigured, match="already registered"):
        extensions.register(extensions.contributions("environment")[0])

    class Odd(extensions.Contribution):
        name, model, templates = "test-odd", "environment", {"sidebar": "x.html"}

    with pytest.raises(ImproperlyConfigured, match="unknown slots"):
        extensions.register(Odd())


@pytest.mark.django_db
def test_it_refuses_a_contribution_that_reuses_a_page_variable(users: Any, inventory: Any) -> None:
    class Shadow(extensions.Contribution):
        name, model = "test-shadow", "environment"

        def context(self, page: extensions.Page) -> dict[str, Any]:
            return {"environment": None}

    extensions.register(Shadow())
    try:
        client = Client(raise_request_exception=True)
        client.force_login(users["alice"])
        with pytest.raises(ImproperlyConfigured, match="reuses page variables"):
            client.get(f"/environments/{inventory['env_a'].pk}/")
    finally:
        extensions.unregister("test-shadow")


def test_it_lists_deployments_as_the_environment_contribution() -> None:
    names = [contribution.name for contribution in extensions.contributions("environment")]
    # Deployments (order 100) first, then backups (200) and its Odoo zips (210), then monitoring's (300 and on), the
    # mail catcher (330) and the terminal (400).
    assert names[:3] == ["deployments", "backups.environment", "backups.zips"]
    assert all(name.startswith("monitoring.") for name in names[3:-2])
    assert names[-2:] == ["mailcatcher.mails", "terminal.environment"]
    assert [c.name for c in extensions.contributions("project")] == ["deployments.webhooks", "deployments.answers"]
    # Then monitoring's modules (order 300 and on).
    assert extensions.html_urls()[:2] == ["deployments.urls", "backups.urls"]
    assert all(module.startswith("monitoring.") for module in extensions.html_urls()[2:-2])
    assert extensions.html_urls()[-2:] == ["mailcatcher.urls", "terminal.urls"]
