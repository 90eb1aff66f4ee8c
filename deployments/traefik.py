"""Traefik v3 labels for an environment's Odoo service, the way doodba-copier-template writes them.

doodba-copier-template (``_traefik3_labels.yml.jinja``, used by ``prod.yaml.jinja``) routes a Doodba project's
domains through a Traefik on the external network ``inverseproxy_shared``; the panel renders the same routers
into its compose override (``deployments.pipeline.render_override``) from the environment's validated domains:

* ``<key>-main``: the main domain to Odoo's HTTP port 8069;
* ``<key>-longpolling``: ``/websocket`` (Odoo 16+) or ``/longpolling/`` (older) to port 8072;
* ``<key>-alias``: the aliases, redirected (permanently) to the same path on the main domain;
* ``<key>-dbmanager`` on production: ``/web/database/...`` refused with 403 (doodba relies on ``LIST_DB=false``
  alone, which still leaves the database manager's pages reachable);
* each router twice: on the ``web`` entry point (port 80) redirecting to HTTPS, and as ``<name>-secure`` on
  ``websecure`` (443) with TLS from the proxy's certificate resolver (ACME HTTP-01, ``panel.inventory.proxy``);
* staging, test and development: an optional IP allow-list on every router.

The rules are built from hostnames that passed ``panel.validators.validate_domain`` when they were saved, and each
is checked again here: a value that is not a plain hostname raises instead of reaching a rule.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from panel.inventory.choices import EnvironmentKind
from panel.inventory.models import Environment
from panel.inventory.proxy import CERT_RESOLVER, NETWORK, WEB, WEBSECURE
from panel.validators import normalize_network, validate_domain

ODOO_PORT = 8069
LONGPOLLING_PORT = 8072
# A source range no client has: the middleware answers 403 to everyone (Traefik has no plain "deny").
NOBODY = "255.255.255.255/32"


class UnsafeLabel(ValueError):
    """A value that would change a Traefik rule's meaning reached the renderer (it is refused when saved)."""


def safe_host(value: str) -> str:
    """The hostname itself, or ``UnsafeLabel`` when it is not a plain lowercase ASCII hostname."""
    try:
        validate_domain(value)
    except ValidationError as exc:
        raise UnsafeLabel(f"{value!r} is not a domain name the proxy can route.") from exc
    return value


def safe_network(value: str) -> str:
    """The network in canonical form, or ``UnsafeLabel`` when it is anything else."""
    try:
        canonical = normalize_network(value)
    except ValidationError as exc:
        raise UnsafeLabel(f"{value!r} is not a network the proxy can allow.") from exc
    if canonical != value:
        raise UnsafeLabel(f"{value!r} is not in canonical form.")
    return canonical


def host_rule(hosts: list[str]) -> str:
    """``Host(`a`) || Host(`b`)`` (Traefik v3 takes one host per matcher)."""
    if not hosts:
        raise UnsafeLabel("A router needs at least one host.")
    return " || ".join(f"Host(`{safe_host(host)}`)" for host in hosts)


def odoo_major(version: str) -> int:
    """16 for ``"16.0"``."""
    return int(version.split(".", 1)[0])


def router_key(environment: Environment) -> str:
    """The prefix of every router, service and middleware name: the compose project (a validated slug)."""
    key = environment.compose_project
    if not key or not all(char.isalnum() or char in "-_" for char in key) or not key.isascii():
        raise UnsafeLabel(f"{key!r} cannot name Traefik routers.")
    return key


def escape(value: str) -> str:
    """Compose interpolates ``$`` in the override: double it so the label reaches Traefik unchanged."""
    return value.replace("$", "$$")


def traefik_labels(environment: Environment) -> dict[str, str]:
    """The Traefik labels of the environment's odoo service; empty without a domain."""
    if not environment.domain:
        return {}
    key = router_key(environment)
    domain = safe_host(environment.domain)
    aliases = [safe_host(alias) for alias in environment.aliases or []]
    major = odoo_major(environment.project.odoo_version)
    production = environment.kind == EnvironmentKind.PRODUCTION
    allowlist = [] if production else [safe_network(cidr) for cidr in environment.ip_allowlist or []]

    labels: dict[str, str] = {
        "traefik.enable": "true",
        "traefik.docker.network": NETWORK,
        f"traefik.http.services.{key}-main.loadbalancer.server.port": str(ODOO_PORT),
        f"traefik.http.services.{key}-longpolling.loadbalancer.server.port": str(LONGPOLLING_PORT),
        f"traefik.http.middlewares.{key}-forceSecure.redirectScheme.scheme": "https",
        f"traefik.http.middlewares.{key}-forceSecure.redirectScheme.permanent": "true",
        f"traefik.http.middlewares.{key}-addSTS.headers.forceSTSHeader": "true",
        f"traefik.http.middlewares.{key}-addSTS.headers.stsSeconds": "31536000",
        f"traefik.http.middlewares.{key}-compress.compress": "true",
    }
    base: list[str] = []
    if allowlist:
        labels[f"traefik.http.middlewares.{key}-allowlist.ipAllowList.sourceRange"] = ", ".join(allowlist)
        base.append("allowlist")
    websocket = []
    if major >= 16:
        # Odoo 16+ checks the websocket's origin against the scheme it is told: TLS ends at the proxy.
        labels[f"traefik.http.middlewares.{key}-override-ws-headers.headers.customRequestHeaders.X-Forwarded-Proto"] = (
            "https"
        )
        websocket = ["override-ws-headers"]
    main_hosts = host_rule([domain])
    longpolling_path = "Path(`/websocket`)" if major >= 16 else "PathPrefix(`/longpolling/`)"

    # Priorities above any rule's length (Traefik's default priority): a project's own labels (its prod.yaml from
    # doodba-copier-template may route the same domains) never win over what the panel manages.
    routers: list[tuple[str, str, str, list[str], int]] = [
        ("main", main_hosts, "main", ["compress"], 1000),
        ("longpolling", f"({main_hosts}) && {longpolling_path}", "longpolling", websocket, 1020),
    ]
    if production:
        labels[f"traefik.http.middlewares.{key}-deny.ipAllowList.sourceRange"] = NOBODY
        routers.append(("dbmanager", f"({main_hosts}) && PathPrefix(`/web/database`)", "main", ["deny"], 1030))
    if aliases:
        labels[f"traefik.http.middlewares.{key}-alias.redirectRegex.regex"] = escape(r"^https?://[^/]+/(.*)$")
        labels[f"traefik.http.middlewares.{key}-alias.redirectRegex.replacement"] = escape(f"https://{domain}/${{1}}")
        labels[f"traefik.http.middlewares.{key}-alias.redirectRegex.permanent"] = "true"
        routers.append(("alias", host_rule(aliases), "main", ["alias"], 1010))

    for name, rule, service, middlewares, priority in routers:
        for secure in (False, True):
            router = f"traefik.http.routers.{key}-{name}{'-secure' if secure else ''}"
            # On port 80 everything is redirected to HTTPS, an alias straight to the main domain.
            if secure:
                chain = [*base, "addSTS", *middlewares]
            else:
                chain = [*base, "alias" if name == "alias" else "forceSecure"]
                if name == "dbmanager":
                    chain = [*base, "deny"]
            labels[f"{router}.rule"] = rule
            labels[f"{router}.service"] = f"{key}-{service}"
            labels[f"{router}.entrypoints"] = WEBSECURE if secure else WEB
            labels[f"{router}.priority"] = str(priority)
            labels[f"{router}.middlewares"] = ", ".join(f"{key}-{middleware}" for middleware in chain)
            if secure:
                labels[f"{router}.tls"] = "true"
                labels[f"{router}.tls.certresolver"] = CERT_RESOLVER
    return labels


def add_traefik(document: dict[str, Any], environment: Environment) -> None:
    """Route the environment's domains: Traefik labels on the odoo service, which joins ``inverseproxy_shared``
    (declared external, as doodba-copier-template's prod.yaml does; the proxy job creates it)."""
    odoo = document.get("services", {}).get("odoo")
    labels = traefik_labels(environment)
    if odoo is None or not labels:
        return
    odoo.setdefault("labels", {}).update(labels)
    # Listing networks replaces the implicit default one: keep it, or Odoo loses its database.
    odoo["networks"] = {"default": {}, NETWORK: {}}
    document.setdefault("networks", {})[NETWORK] = {"external": True}
