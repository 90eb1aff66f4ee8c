"""What the panel takes from a project's ``.copier-answers.yml``, and a new environment's default git ref.

The answers come from a repository, so they are untrusted: parsed with the safe loader, size-capped, every value
validated. The lab test (``test_copier_answers_lab.py``) reads them from the sample project on a real first deploy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from panel.inventory.copier import MAX_ANSWERS_BYTES, parse_answers
from panel.inventory.models import Environment

pytestmark = pytest.mark.django_db

SAMPLE_ANSWERS = Path(__file__).parent / "lab" / "sample-project" / ".copier-answers.yml"


def test_it_reads_the_answers_the_template_writes() -> None:
    answers = parse_answers(SAMPLE_ANSWERS.read_text())
    assert answers.refused == []
    assert answers.odoo_version == "16.0"  # a float in the file (copier.yml: type float)
    assert answers.project_name == "panel-demo"
    assert answers.postgres_version == "15"
    assert answers.domains["prod"] == ("panel-demo.example.com", ["www.panel-demo.example.com"])
    assert answers.domains["test"] == ("test.panel-demo.example.com", [])


def test_it_takes_the_main_domain_by_the_templates_rule() -> None:
    # first_main_domain in _macros.jinja: the first host of the first group with no redirect and no path prefix.
    text = """
domains_prod:
- hosts: [old.example.com]
  redirect_to: www.example.com
- hosts: [api.example.com]
  path_prefixes: [/api]
- hosts: [www.example.com, shop.example.com]
- hosts: [example.com]
  redirect_to: www.example.com
odoo_version: '17.0'
"""
    answers = parse_answers(text)
    assert answers.domains["prod"] == ("www.example.com", ["shop.example.com", "old.example.com", "example.com"])
    assert answers.odoo_version == "17.0"


@pytest.mark.parametrize(
    "host",
    ["evil.com`) || Host(`x.com", "a b.example.com", "Example.COM", "*.example.com", "x.com)", "localhost", 7],
)
def test_it_refuses_domains_no_hostname_validator_accepts(host: Any) -> None:
    answers = parse_answers(f"domains_prod:\n- hosts: [{host!r}]\n" if isinstance(host, str) else
                            f"domains_prod:\n- hosts: [{host}]\n")  # fmt: skip
    assert "prod" not in answers.domains
    assert answers.refused and answers.refused[0].startswith("domains_prod:")


@pytest.mark.parametrize(
    "text",
    [
        "!!python/object/apply:os.system ['touch /tmp/pwned']",
        "odoo_version: [16.0",
        "- just\n- a list",
        "odoo_version: 99.0\nproject_name: 'rm -rf /;'",
        "x" * (MAX_ANSWERS_BYTES + 1),
    ],
)
def test_it_uses_nothing_from_answers_it_cannot_trust(text: str) -> None:
    answers = parse_answers(text)
    assert (answers.odoo_version, answers.project_name, answers.domains) == ("", "", {})
    assert answers.refused


def test_it_ignores_a_postgres_version_that_is_not_one() -> None:
    assert parse_answers("postgres_version: '15; drop'").postgres_version == ""
    assert parse_answers("postgres_version: '9.6'").postgres_version == "9.6"


def test_it_defaults_a_new_environments_git_ref_to_the_projects_default_branch(
    users: dict[str, Any], inventory: dict[str, Any]
) -> None:
    project = inventory["project_a"]
    project.default_branch = "16.0-production"
    project.save()
    api = APIClient()
    api.force_authenticate(users["alice"])
    body = {"project": project.pk, "server": inventory["server_a"].pk, "name": "staging", "kind": "staging",
            "compose_files": ["test.yaml"]}  # fmt: skip
    response = api.post("/api/v1/environments/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["git_ref"] == "16.0-production"
    assert Environment.objects.get(pk=response.json()["id"]).git_ref == "16.0-production"
    explicit = api.post("/api/v1/environments/", body | {"name": "test", "git_ref": "main"}, format="json")
    assert explicit.status_code == 201 and explicit.json()["git_ref"] == "main"

    browser = Client()
    browser.force_login(users["alice"])
    page = browser.get(f"/projects/{project.pk}/environments/new/")
    assert page.status_code == 200
    assert 'value="16.0-production"' in page.content.decode()
