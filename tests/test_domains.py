"""Domains, aliases and IP allow-lists: only lowercase ASCII hostnames and canonical networks are stored, so nothing
a user types reaches a Traefik rule unchecked; refusals are a 400 naming the field (API) or a form error (pages)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from panel.inventory.models import Environment
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

# Aimed at a Traefik rule (Host(`...`)), at the shell, or simply not a hostname.
HOSTILE_DOMAINS = [
    "a.com`) || Host(`evil.com",
    "a.com`)",
    "a.com) || PathPrefix(`/",
    "a.com || evil.com",
    "a.com||evil.com",
    "a`b.com",
    "two words.com",
    "a.com\nb.com",
    "a.com\x00",
    "a.com;id",
    "$(id).com",
    "-a.com",
    "a-.com",
    "a..com",
    "*.example.com",
    "a_b.example.com",
    "localhost",
    "10.0.0.1",
    "example.com:443",
    "example.com/path",
    "ex\u200bample.com",
    ("a" * 64) + ".com",
    ".".join(["abcdefghi"] * 30),
]


@pytest.fixture
def alice(users: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(users["alice"])
    return client


def env_body(inventory: Any, **override: Any) -> dict[str, Any]:
    return {
        "project": inventory["project_a"].pk,
        "server": inventory["server_a"].pk,
        "name": "staging",
        "kind": "staging",
        "compose_files": ["test.yaml"],
        "domain": "staging.example.com",
    } | override


def assert_refused(response: Any, field: str) -> Any:
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body, body
    return body[field]


@pytest.mark.parametrize("value", HOSTILE_DOMAINS)
def test_it_refuses_a_hostile_domain_with_a_400_on_the_field(alice: APIClient, inventory: Any, value: str) -> None:
    response = alice.post("/api/v1/environments/", env_body(inventory, domain=value), format="json")
    assert_refused(response, "domain")
    assert not Environment.objects.filter(name="staging").exists()


@pytest.mark.parametrize("value", HOSTILE_DOMAINS)
def test_it_refuses_a_hostile_alias_with_a_400_on_the_field(alice: APIClient, inventory: Any, value: str) -> None:
    body = env_body(inventory, aliases=["www.staging.example.com", value])
    assert_refused(alice.post("/api/v1/environments/", body, format="json"), "aliases")
    environment = inventory["env_a"]
    response = alice.patch(f"/api/v1/environments/{environment.pk}/", {"aliases": [value]}, format="json")
    assert_refused(response, "aliases")
    environment.refresh_from_db()
    assert environment.aliases == []


def test_it_stores_domains_lowercase_and_idns_as_punycode(alice: APIClient, inventory: Any) -> None:
    body = env_body(inventory, domain=" Staging.Example.COM. ", aliases=["Bücher.example.com", "www.example.com"])
    response = alice.post("/api/v1/environments/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["domain"] == "staging.example.com"
    assert response.json()["aliases"] == ["xn--bcher-kva.example.com", "www.example.com"]
    environment = Environment.objects.get(pk=response.json()["id"])
    assert environment.all_domains() == ["staging.example.com", "xn--bcher-kva.example.com", "www.example.com"]


def test_it_refuses_aliases_that_repeat_or_lack_a_main_domain(alice: APIClient, inventory: Any) -> None:
    repeated = env_body(inventory, aliases=["www.example.com", "WWW.example.com"])
    assert "twice" in " ".join(assert_refused(alice.post("/api/v1/environments/", repeated, format="json"), "aliases"))
    itself = env_body(inventory, aliases=["staging.example.com"])
    assert_refused(alice.post("/api/v1/environments/", itself, format="json"), "aliases")
    orphan = env_body(inventory, domain="", aliases=["www.example.com"])
    messages = assert_refused(alice.post("/api/v1/environments/", orphan, format="json"), "aliases")
    assert "main domain" in " ".join(messages)
    too_many = env_body(inventory, aliases=[f"a{n}.example.com" for n in range(21)])
    assert_refused(alice.post("/api/v1/environments/", too_many, format="json"), "aliases")


def test_it_refuses_a_domain_another_environment_of_the_server_serves(alice: APIClient, inventory: Any) -> None:
    inventory["env_a"].domain = "shop.example.com"
    inventory["env_a"].aliases = ["www.shop.example.com"]
    inventory["env_a"].save()
    taken = env_body(inventory, domain="www.shop.example.com")
    messages = assert_refused(alice.post("/api/v1/environments/", taken, format="json"), "domain")
    assert "already served" in " ".join(messages)
    as_alias = env_body(inventory, aliases=["shop.example.com"])
    assert_refused(alice.post("/api/v1/environments/", as_alias, format="json"), "aliases")


@pytest.mark.parametrize(
    "value", ["10.0.0.0/33", "10.0.0.1/8", "not-a-net", "10.0.0.0/8`)", "10.0.0.0/8 || 0.0.0.0/0", "", "1" * 70]
)
def test_it_refuses_a_bad_allowlist_network(alice: APIClient, inventory: Any, value: str) -> None:
    body = env_body(inventory, ip_allowlist=[value])
    assert_refused(alice.post("/api/v1/environments/", body, format="json"), "ip_allowlist")


def test_it_keeps_allowlists_off_production(alice: APIClient, inventory: Any) -> None:
    body = env_body(inventory, kind="staging", ip_allowlist=["203.0.113.0/24", "2001:DB8::/32", "198.51.100.7"])
    response = alice.post("/api/v1/environments/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["ip_allowlist"] == ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7/32"]
    production = env_body(
        inventory, name="live", kind="production", domain="live.example.com", ip_allowlist=["10.0.0.0/8"]
    )
    messages = assert_refused(alice.post("/api/v1/environments/", production, format="json"), "ip_allowlist")
    assert "production" in " ".join(messages)
    # Turning an allow-listed environment into production is refused too.
    response = alice.patch(f"/api/v1/environments/{response.json()['id']}/", {"kind": "production"}, format="json")
    assert_refused(response, "ip_allowlist")


def browser(user: Any) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


def form_data(inventory: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    data = {
        "name": "staging",
        "kind": "staging",
        "server": inventory["server_a"].pk,
        "git_ref": "main",
        "domain": "staging.example.com",
        "aliases_text": "",
        "ip_allowlist_text": "",
        "compose_files_text": "prod.yaml",
        "env_vars_text": "",
        "secrets_text": "",
        "workers": 2,
        "cron_threads": 1,
        "cpu_limit": "",
        "memory_limit": "",
        "backup_keep_daily": 7,
    }
    return data | overrides


@pytest.mark.parametrize("field", ["domain", "aliases_text"])
def test_it_shows_a_form_error_for_a_hostile_domain(users: Any, inventory: Any, field: str) -> None:
    client = browser(users["alice"])
    url = reverse("environment_create", args=[inventory["project_a"].pk])
    for value in HOSTILE_DOMAINS:
        if "\x00" in value:
            continue  # NUL is answered 400 by the middleware before any form (tests/test_bad_input.py)
        if field == "aliases_text" and "\n" in value:
            continue  # one alias a line: two valid aliases
        response = client.post(url, form_data(inventory, **{field: value}))
        assert response.status_code == 200, f"{field}={value!r} was accepted"
        assert response.context["form"].errors.get(field), f"{field}={value!r}: no error on the field"
    assert not Environment.objects.filter(name="staging").exists()


def test_it_saves_aliases_and_an_allowlist_from_the_form(users: Any, inventory: Any) -> None:
    client = browser(users["alice"])
    url = reverse("environment_create", args=[inventory["project_a"].pk])
    data = form_data(
        inventory, aliases_text="WWW.staging.example.com\r\nold.example.com", ip_allowlist_text="10.1.0.0/16"
    )
    response = client.post(url, data)
    assert response.status_code == 302, response.context["form"].errors
    environment = Environment.objects.get(name="staging")
    assert environment.aliases == ["www.staging.example.com", "old.example.com"]
    assert environment.ip_allowlist == ["10.1.0.0/16"]
    edit = client.get(reverse("environment_edit", args=[environment.pk]))
    assert "old.example.com" in edit.content.decode()
    response = client.post(
        reverse("environment_edit", args=[environment.pk]),
        form_data(inventory, kind="production", ip_allowlist_text="10.1.0.0/16"),
    )
    assert response.status_code == 200
    assert "not for production" in " ".join(response.context["form"].errors["ip_allowlist_text"])
    response = client.post(url, form_data(inventory, name="other", domain="", aliases_text="x.example.com"))
    assert response.context["form"].errors.get("aliases_text")
