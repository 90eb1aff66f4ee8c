"""The panel-managed inverse proxy of a server: Traefik v3 in its own compose project, serving every environment's
domains over HTTPS with certificates from ACME.

On the server (relative to the SSH user's home)::

    doodba-panel/.proxy/docker-compose.yaml   the proxy's compose file, written by the job
    doodba-panel/.proxy/acme-ca.pem           a private ACME server's CA, when the server has one

Traefik watches Docker (``exposedByDefault=false``: only containers labelled ``traefik.enable=true`` are routed,
which ``deployments.traefik`` writes into environments), listens on ``web`` (80, redirected to HTTPS) and
``websecure`` (443), and asks the server's ACME directory for certificates with the HTTP-01 challenge, keeping them
in the ``acme`` volume so a restart asks for nothing again. It is on the external network ``inverseproxy_shared``
(doodba-copier-template's name), which the job creates when it is missing.
"""

from __future__ import annotations

import ipaddress
import shlex
import socket
import time
from typing import Any

from django.conf import settings
from django.utils import timezone

from panel.compose import compose_file_text
from panel.inventory.certificates import served_certificate
from panel.inventory.models import Environment, Server
from panel.inventory.services import server_hold, server_job
from panel.jobs.choices import JobKind
from panel.jobs.models import Job
from panel.jobs.runner import JobContext, JobFailed, handler
from panel.remote import Target, get_connection, run, run_capture

# The shared network, certificate resolver and entry points environments' Traefik labels name (deployments.traefik).
NETWORK = "inverseproxy_shared"
CERT_RESOLVER = "panel"
WEB = "web"
WEBSECURE = "websecure"
PROJECT = "doodba-panel-proxy"
DIRECTORY = "doodba-panel/.proxy"
COMPOSE_FILE = f"{DIRECTORY}/docker-compose.yaml"
CA_FILE = "acme-ca.pem"
CA_PATH_IN_CONTAINER = "/etc/traefik/acme-ca.pem"
# Creates the shared network unless it exists; prints which, for the log.
NETWORK_SCRIPT = (
    'if docker network inspect -- "$1" >/dev/null 2>&1; then echo "present"; '
    'else docker network create -- "$1" >/dev/null && echo "created"; fi'
)
WRITE_SCRIPT = 'umask 077; mkdir -p -- "$1" && cat >"$1/$2.partial" && mv -f -- "$1/$2.partial" "$1/$2"'
SOCKET_SCRIPT = (
    'h=${DOCKER_HOST:-unix:///var/run/docker.sock}; case $h in unix://*) echo "${h#unix://}";; *) exit 3;; esac'
)


class ProxyFailed(JobFailed):
    """The proxy could not be installed; the message says why."""


def start_proxy_install(*, server: Server, actor: Any) -> Job:
    """Queue a job installing or updating the server's proxy (it holds ``server:<id>``: one server job at a time)."""
    return server_job(server=server, kind=JobKind.INSTALL_PROXY, actor=actor, action="server.proxy")


def published(address: str | None, port: int, container_port: int) -> str:
    """A compose port mapping, on one address when the server has one (IPv6 in brackets)."""
    if not address:
        return f"{port}:{container_port}"
    ip = ipaddress.ip_address(address)
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{host}:{port}:{container_port}"


def acme_directory(server: Server) -> str:
    """The server's ACME directory, else ``ACME_DIRECTORY_URL``."""
    return server.acme_directory_url or settings.ACME_DIRECTORY_URL


def proxy_compose(server: Server, docker_socket: str) -> dict[str, Any]:
    """The proxy's compose file (as a document; written as JSON, which is YAML)."""
    command = [
        "--providers.docker=true",
        "--providers.docker.exposedByDefault=false",
        f"--providers.docker.network={NETWORK}",
        f"--entryPoints.{WEB}.address=:80",
        f"--entryPoints.{WEBSECURE}.address=:443",
        f"--entryPoints.{WEB}.http.redirections.entryPoint.to={WEBSECURE}",
        f"--entryPoints.{WEB}.http.redirections.entryPoint.scheme=https",
        f"--entryPoints.{WEB}.http.redirections.entryPoint.permanent=true",
        f"--certificatesResolvers.{CERT_RESOLVER}.acme.caServer={acme_directory(server)}",
        f"--certificatesResolvers.{CERT_RESOLVER}.acme.storage=/acme/acme.json",
        f"--certificatesResolvers.{CERT_RESOLVER}.acme.httpChallenge.entryPoint={WEB}",
        "--log.level=INFO",
        "--ping=true",
    ]
    email = server.acme_email or settings.ACME_EMAIL
    if email:
        command.append(f"--certificatesResolvers.{CERT_RESOLVER}.acme.email={email}")
    service: dict[str, Any] = {
        "image": settings.PROXY_TRAEFIK_IMAGE,
        "restart": "unless-stopped",
        "command": command,
        "ports": [
            published(server.proxy_bind_address, server.proxy_http_port, 80),
            published(server.proxy_bind_address, server.proxy_https_port, 443),
        ],
        "volumes": [f"{docker_socket}:/var/run/docker.sock:ro", "acme:/acme"],
        "networks": [NETWORK],
        "labels": {"io.doodba-panel.proxy": str(server.pk)},
    }
    if server.acme_ca_certificate:
        # lego (Traefik's ACME client) trusts these for the ACME server's own TLS.
        service["volumes"].append(f"./{CA_FILE}:{CA_PATH_IN_CONTAINER}:ro")
        service["environment"] = {"LEGO_CA_CERTIFICATES": CA_PATH_IN_CONTAINER}
    return {
        "name": PROJECT,
        "services": {"traefik": service},
        "volumes": {"acme": {}},
        "networks": {NETWORK: {"external": True}},
    }


def resolve(name: str) -> set[str]:
    """The addresses ``name`` resolves to from the panel (empty when it does not)."""
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
    except (OSError, UnicodeError):
        return set()


def server_addresses(server: Server, target: Target) -> set[str]:
    """The addresses a domain of ``server`` should resolve to: its host name's, ``hostname -I`` and the proxy's."""
    expected = resolve(server.host)
    if server.proxy_bind_address:
        expected.add(server.proxy_bind_address)
    here = run_capture(target, ["sh", "-c", "hostname -I 2>/dev/null || true"], timeout=30)
    return expected | set(here.stdout.split())


def check_domains(context: JobContext, server: Server, target: Target, domains: list[str] | None = None) -> list[str]:
    """Warn about every domain (default: of every environment on the server) that does not resolve to the server
    (ACME HTTP-01 would fail for it, and a CA limits failed attempts); return those domains.

    Names are resolved both from the panel and on the server (``getent ahosts``): split-horizon DNS may answer
    differently on each side, and either side pointing here is enough for the proxy to be reachable.
    """
    expected = server_addresses(server, target)
    wrong: list[str] = []
    if domains is None:
        domains = [d for environment in Environment.objects.filter(server=server) for d in environment.all_domains()]
        if not domains:
            context.write("No environment on this server has a domain yet.")
    for domain in domains:
        panel_side = resolve(domain)
        lookup = run_capture(target, ["getent", "ahosts", "--", domain], timeout=30).stdout
        server_side = {line.split()[0] for line in lookup.splitlines() if line.strip()}
        found = panel_side | server_side
        if found & expected:
            context.write(f"{domain} resolves to this server ({', '.join(sorted(found & expected))}).")
            continue
        wrong.append(domain)
        where = ", ".join(sorted(found)) if found else "nothing"
        context.write(
            f"⚠ {domain} resolves to {where}, not to this server ({', '.join(sorted(expected)) or server.host}): "
            "the certificate authority cannot reach the proxy for it, so no certificate will be issued until its "
            "DNS record points here."
        )
    return wrong


def running(target: Target) -> bool:
    """Whether the panel's proxy container runs on the server (Docker's answer, one round trip)."""
    result = run_capture(
        target, ["docker", "ps", "--filter", "label=io.doodba-panel.proxy", "--format", "{{.State}}"], timeout=60
    )
    return result.ok and "running" in result.stdout.split()


@handler(JobKind.INSTALL_PROXY, hold=server_hold)
def install_proxy(context: JobContext) -> dict[str, Any]:
    """Install or update the server's Traefik: shared network, compose file, ``up -d``, and a check it runs."""
    server = Server.objects.get(pk=context.job.params["server_id"])
    target = Target.for_server(server)
    with context.step("Connect over SSH"):
        get_connection(target)
        context.write(f"Connected to {server.username}@{server.host}:{server.port} (pinned host key).")
    with context.step("Shared network"):
        result = run_capture(target, ["sh", "-c", NETWORK_SCRIPT, "sh", NETWORK], timeout=60)
        if not result.ok:
            raise ProxyFailed(f"Could not create the network {NETWORK}: {result.stderr.strip()[:300]}")
        state = result.stdout.strip()
        context.write(f"Network {NETWORK}: {'created' if state == 'created' else 'already present'}.")
    with context.step("Domains"):
        wrong = check_domains(context, server, target)
    with context.step("Write the proxy's compose file"):
        sock = run_capture(target, ["sh", "-c", SOCKET_SCRIPT], timeout=30)
        if not sock.ok or not sock.stdout.strip():
            raise ProxyFailed("The Docker daemon is not reached through a Unix socket; the proxy needs one to watch.")
        document = proxy_compose(server, sock.stdout.strip())
        files = {"docker-compose.yaml": compose_file_text(document)}
        if server.acme_ca_certificate:
            files[CA_FILE] = server.acme_ca_certificate.strip() + "\n"
        errors: list[str] = []

        def output(stream: str, line: str) -> None:
            context.log.output(stream, line)
            if stream == "err" and line.strip():
                errors.append(line.strip())

        for name, content in files.items():
            code = run(target, ["sh", "-c", WRITE_SCRIPT, "sh", DIRECTORY, name], on_output=output,
                       stdin=content.encode(), timeout=60)  # fmt: skip
            if code != 0:
                why = errors[-1][:300] if errors else f"exit code {code}"
                if "no space left on device" in why.lower():
                    why = f"the server's disk is full ({why}). Free space there, then run the job again"
                raise ProxyFailed(f"Could not write {DIRECTORY}/{name} on the server: {why}.")
        context.write(f"Wrote {COMPOSE_FILE}: Traefik {settings.PROXY_TRAEFIK_IMAGE}, ACME {acme_directory(server)}.")
    compose = ["docker", "compose", "--ansi", "never", "-p", PROJECT, "-f", COMPOSE_FILE]
    with context.step("Start the proxy"):
        code = run(target, [*compose, "up", "-d", "--remove-orphans"], on_output=context.log.output, timeout=900)
        if code != 0:
            raise ProxyFailed(f"docker compose up failed (exit code {code}); see the log above.")
    with context.step("Check"):
        ps = run_capture(target, [*compose, "ps", "--format", "{{.Service}} {{.State}}"], timeout=60)
        if "traefik running" not in ps.stdout:
            raise ProxyFailed(f"The proxy is not running: {shlex.quote(ps.stdout.strip()[:200] or ps.stderr[:200])}")
        ports = f"{server.proxy_bind_address or '*'}:{server.proxy_http_port}/{server.proxy_https_port}"
        context.write(f"Traefik runs and listens on {ports}.")
    with context.step("Certificates"):
        certificates = read_certificates(context, server)
    return {"network": state, "domains_not_resolving": wrong, "certificates": certificates}


def read_certificates(
    context: JobContext, server: Server, environments: list[Environment] | None = None, wait: float | None = None
) -> dict[str, Any]:
    """Read the certificate the proxy serves for each environment's main domain (default: every environment on
    the server) and keep it on the environment (the page shows its issuer and expiry). Traefik asks ACME in the
    background: wait up to ``wait`` seconds in all (default ``PROXY_CERTIFICATE_WAIT``) for placeholders to be
    replaced."""
    found: dict[str, Any] = {}
    deadline = time.monotonic() + (settings.PROXY_CERTIFICATE_WAIT if wait is None else wait)
    if environments is None:
        environments = list(Environment.objects.filter(server=server))
    for environment in [environment for environment in environments if environment.domain]:
        domain = environment.domain
        certificate = None
        error = ""
        while True:
            try:
                certificate = served_certificate(server, domain)
                error = ""
            except (OSError, ValueError) as exc:
                certificate, error = None, str(exc) or exc.__class__.__name__
            if (certificate and not certificate.is_traefik_default) or time.monotonic() > deadline:
                break
            time.sleep(2)
        checked = timezone.now().isoformat()
        if certificate is None:
            context.write(f"⚠ Could not read the certificate served for {domain}: {error}")
            value: dict[str, Any] = {"error": error[:300], "checked_at": checked}
        elif certificate.is_traefik_default:
            context.write(f"⚠ {domain}: no certificate issued yet (Traefik serves its placeholder); see its log.")
            value = {"error": "No certificate issued yet.", "checked_at": checked}
        else:
            value = {**certificate.as_json(), "checked_at": checked}
            context.write(
                f"{domain}: certificate from {certificate.issuer}, valid until {certificate.not_after:%Y-%m-%d %H:%M} UTC."
            )
        Environment.objects.filter(pk=environment.pk).update(tls_certificate=value)
        found[domain] = value
    return found
