"""The Traefik labels the panel renders into its compose override (deployments/traefik.py)."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.pipeline import compose_file_text, render_override
from deployments.traefik import UnsafeLabel, host_rule, traefik_labels
from panel.inventory.models import Environment, Project


def environment(**fields: Any) -> Environment:
    project = Project(name="Shop", slug="shop", odoo_version=fields.pop("odoo_version", "16.0"))
    values = {
        "pk": 7,
        "name": "prod",
        "kind": "production",
        "compose_project": "shop-16-0-prod",
        "domain": "shop.example.com",
        "aliases": [],
        "ip_allowlist": [],
        "env_vars": {},
    } | fields
    return Environment(project=project, **values)


def routers(labels: dict[str, str]) -> set[str]:
    return {key.split(".")[3] for key in labels if key.startswith("traefik.http.routers.")}


def test_it_renders_no_traefik_labels_without_a_domain() -> None:
    override = render_override(environment(domain=""), "a" * 40, ["odoo", "db"], ["odoo"])
    assert not any(key.startswith("traefik.") for key in override["services"]["odoo"]["labels"])
    assert "networks" not in override and "networks" not in override["services"]["odoo"]


def test_it_routes_a_production_domain_like_doodba() -> None:
    labels = traefik_labels(environment(aliases=["www.shop.example.com", "old.example.com"]))
    k = "shop-16-0-prod"
    assert labels["traefik.enable"] == "true"
    assert labels["traefik.docker.network"] == "inverseproxy_shared"
    assert labels[f"traefik.http.services.{k}-main.loadbalancer.server.port"] == "8069"
    assert labels[f"traefik.http.services.{k}-longpolling.loadbalancer.server.port"] == "8072"
    assert routers(labels) == {
        f"{k}-{name}{suffix}" for name in ("main", "longpolling", "dbmanager", "alias") for suffix in ("", "-secure")
    }
    r = f"traefik.http.routers.{k}"
    assert labels[f"{r}-main.rule"] == "Host(`shop.example.com`)"
    assert labels[f"{r}-main.entrypoints"] == "web"
    assert labels[f"{r}-main.middlewares"] == f"{k}-forceSecure"
    assert labels[f"{r}-main-secure.entrypoints"] == "websecure"
    assert labels[f"{r}-main-secure.tls"] == "true"
    assert labels[f"{r}-main-secure.tls.certresolver"] == "panel"
    assert labels[f"{r}-main-secure.service"] == f"{k}-main"
    assert labels[f"{r}-longpolling-secure.rule"] == "(Host(`shop.example.com`)) && Path(`/websocket`)"
    assert labels[f"{r}-longpolling-secure.service"] == f"{k}-longpolling"
    assert f"{k}-override-ws-headers" in labels[f"{r}-longpolling-secure.middlewares"]
    # The database manager is refused to everyone on production.
    assert labels[f"{r}-dbmanager-secure.rule"] == "(Host(`shop.example.com`)) && PathPrefix(`/web/database`)"
    assert f"{k}-deny" in labels[f"{r}-dbmanager-secure.middlewares"]
    assert labels[f"traefik.http.middlewares.{k}-deny.ipAllowList.sourceRange"] == "255.255.255.255/32"
    assert int(labels[f"{r}-dbmanager-secure.priority"]) > int(labels[f"{r}-main-secure.priority"])
    # Aliases redirect to the same path on the main domain, from port 80 too.
    assert labels[f"{r}-alias-secure.rule"] == "Host(`www.shop.example.com`) || Host(`old.example.com`)"
    assert labels[f"{r}-alias.middlewares"] == f"{k}-alias"
    assert labels[f"traefik.http.middlewares.{k}-alias.redirectRegex.replacement"] == "https://shop.example.com/$${1}"
    assert labels[f"traefik.http.middlewares.{k}-alias.redirectRegex.permanent"] == "true"
    assert not any("allowlist" in key for key in labels)


def test_it_uses_longpolling_before_odoo_16_and_the_allowlist_off_production() -> None:
    env = environment(
        odoo_version="15.0",
        kind="staging",
        compose_project="shop-15-0-staging",
        ip_allowlist=["10.1.0.0/16", "2001:db8::/32"],
    )
    labels = traefik_labels(env)
    k = "shop-15-0-staging"
    r = f"traefik.http.routers.{k}"
    assert labels[f"{r}-longpolling-secure.rule"] == "(Host(`shop.example.com`)) && PathPrefix(`/longpolling/`)"
    assert not any("override-ws-headers" in key or "dbmanager" in key for key in labels)
    assert labels[f"traefik.http.middlewares.{k}-allowlist.ipAllowList.sourceRange"] == "10.1.0.0/16, 2001:db8::/32"
    for router in routers(labels):
        assert labels[f"traefik.http.routers.{router}.middlewares"].startswith(f"{k}-allowlist"), router


def test_it_ignores_an_allowlist_on_production_even_if_one_was_stored() -> None:
    labels = traefik_labels(environment(ip_allowlist=["10.0.0.0/8"]))
    assert not any("allowlist" in key for key in labels)


def test_it_joins_odoo_to_the_proxy_network_and_keeps_the_default_one() -> None:
    override = render_override(environment(), "a" * 40, ["odoo", "db"], ["odoo"])
    assert override["services"]["odoo"]["networks"] == {"default": {}, "inverseproxy_shared": {}}
    assert override["networks"] == {"inverseproxy_shared": {"external": True}}
    assert "networks" not in override["services"]["db"]
    assert override["services"]["odoo"]["labels"]["io.doodba-panel.environment"] == "7"
    assert "traefik.enable" not in override["services"]["db"]["labels"]
    assert "Host(`shop.example.com`)" in compose_file_text(override)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("domain", "a.com`) || Host(`evil.com"),
        ("domain", "a.com) || PathPrefix(`/"),
        ("domain", "A.com"),
        ("domain", "a.com b.com"),
        ("aliases", ["ok.example.com", "x.com`)"]),
        ("aliases", ["x.com||y.com"]),
        ("ip_allowlist", ["10.0.0.0/8`) || Host(`x"]),
        ("compose_project", "a.b"),
    ],
)
def test_it_never_renders_a_value_that_would_break_a_rule(field: str, value: Any) -> None:
    env = environment(kind="staging", **{field: value})
    with pytest.raises(UnsafeLabel):
        traefik_labels(env)


def test_it_builds_host_rules_only_from_hostnames() -> None:
    assert host_rule(["a.example.com", "b.example.com"]) == "Host(`a.example.com`) || Host(`b.example.com`)"
    with pytest.raises(UnsafeLabel):
        host_rule([])
    with pytest.raises(UnsafeLabel):
        host_rule(["a`b.com"])
