"""Benchmark: requests to Odoo's ``/web/health`` through the panel-managed Traefik (HTTPS, certificate from Pebble)
÷ the same requests straight to the container's port 8069, in one run, alternated (aim ≤ 1.3).

On lab host lab1: the proxy as the panel writes it (``panel.inventory.proxy.proxy_compose``), the lab's Odoo
stand-in as a container carrying the labels the panel renders (``deployments.traefik.traefik_labels``), Pebble as
the ACME CA (``tests.lab.traefik``). Both clients keep one connection open (as a browser does), so the figures
compare a request through the proxy with one without, not TLS handshakes.

    .venv/bin/python bench/traefik.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from bench.common import percentile  # noqa: E402
from deployments.traefik import traefik_labels  # noqa: E402
from panel.compose import compose_file_text  # noqa: E402
from panel.inventory.models import Environment, Project, Server  # noqa: E402
from panel.inventory.proxy import (  # noqa: E402
    NETWORK,
    PROJECT,
    proxy_compose,
)
from tests.lab import lab  # noqa: E402
from tests.lab.traefik import ensure_traefik_image, pebble  # noqa: E402

DOMAIN = "bench.panel-demo.test"
KEY = "bench-16-0-prod"
CONTAINER = "doodba-panel-bench-odoo"
HTTPS_PORT = 18453
HTTP_PORT = 18090
PATH = os.environ.get("BENCH_INNER_PATH", "/web/health")


def docker(spec: lab.HostSpec, *argv: str, check: bool = True) -> str:
    return lab.host_docker(spec, *argv, check=check, timeout=600).stdout


def timed(connection: http.client.HTTPConnection, host: str, path: str = "/web/health") -> float:
    start = time.perf_counter()
    connection.request("GET", path, headers={"Host": host})
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - start
    assert response.status == 200 and json.loads(body), (response.status, body[:200])
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    lab.ensure_up()
    spec = lab.HOST_SPECS[0]
    with lab.exclusive_use(), pebble(spec) as ca, tempfile.TemporaryDirectory() as work:
        ensure_traefik_image(spec)
        if lab.host_docker(spec, "network", "inspect", NETWORK, check=False).returncode != 0:
            docker(spec, "network", "create", NETWORK)
        socket_path = str(lab.HostPaths(spec).docker_socket)
        server = Server(pk=1, name="lab1", host=spec.address, username="bench", proxy_bind_address=spec.address,
                        proxy_http_port=HTTP_PORT, proxy_https_port=HTTPS_PORT, acme_directory_url=ca.directory_url,
                        acme_ca_certificate=ca.tls_ca_pem)  # fmt: skip
        compose = Path(work) / "docker-compose.yaml"
        compose.write_text(compose_file_text(proxy_compose(server, socket_path)))
        (Path(work) / "acme-ca.pem").write_text(ca.tls_ca_pem)
        environment = Environment(pk=1, project=Project(slug="bench", odoo_version="16.0"), name="prod",
                                  kind="production", compose_project=KEY, domain=DOMAIN)  # fmt: skip
        labels = [arg for key, value in traefik_labels(environment).items() for arg in ("--label", f"{key}={value}")]
        docker(spec, "rm", "-f", CONTAINER, check=False)
        try:
            docker(spec, "compose", "-p", PROJECT, "-f", str(compose), "up", "-d")
            image = lab.DOODBA_IMAGES[0]
            docker(spec, "run", "-d", "--name", CONTAINER, "--network", NETWORK, *labels, "--entrypoint", "python3",
                   image, "-c", "from odoo_standin import cli; cli.serve(8069)")  # fmt: skip
            inspect = docker(
                spec,
                "inspect",
                "--format",
                f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}',
                CONTAINER,
            )
            container_ip = inspect.strip()
            roots = ca.issuing_roots()
            context = ssl.create_default_context(cadata=roots)
            deadline = time.monotonic() + 120
            while True:
                try:
                    raw = socket.create_connection((spec.address, HTTPS_PORT), timeout=5)
                    tls = context.wrap_socket(raw, server_hostname=DOMAIN)
                    break
                except (ssl.SSLError, OSError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            proxied = http.client.HTTPSConnection(spec.address, HTTPS_PORT, context=context, timeout=10)
            proxied.sock = tls
            issuer = dict(x[0] for x in tls.getpeercert()["issuer"])["commonName"]
            direct = http.client.HTTPConnection(container_ip, 8069, timeout=10)
            # The proxy's container address too: the lab publishes ports with Docker's userland proxy (dockerd
            # runs with --iptables=false), which a real server does not have in the path.
            proxy_ip = docker(spec, "inspect", "--format",
                              f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}',
                              f"{PROJECT}-traefik-1").strip()  # fmt: skip
            inner = http.client.HTTPSConnection(proxy_ip, 443, context=context, timeout=10)
            inner.sock = context.wrap_socket(
                socket.create_connection((proxy_ip, 443), timeout=5), server_hostname=DOMAIN
            )
            for _ in range(50):  # warm up every path
                timed(proxied, DOMAIN)
                timed(inner, DOMAIN)
                timed(direct, DOMAIN)
            through, within, straight = [], [], []
            for _ in range(args.requests):
                through.append(timed(proxied, DOMAIN))
                within.append(timed(inner, DOMAIN, PATH))
                straight.append(timed(direct, DOMAIN))
            result = {
                "requests": args.requests,
                "certificate_issuer": issuer,
                "traefik_p50_ms": round(statistics.median(through) * 1000, 3),
                "traefik_p99_ms": round(percentile(through, 99) * 1000, 3),
                "traefik_container_p50_ms": round(statistics.median(within) * 1000, 3),
                "traefik_container_p99_ms": round(percentile(within, 99) * 1000, 3),
                "direct_p50_ms": round(statistics.median(straight) * 1000, 3),
                "direct_p99_ms": round(percentile(straight, 99) * 1000, 3),
            }
            result["ratio_p50"] = round(result["traefik_p50_ms"] / result["direct_p50_ms"], 3)
            result["ratio_p99"] = round(result["traefik_p99_ms"] / result["direct_p99_ms"], 3)
            result["container_ratio_p50"] = round(result["traefik_container_p50_ms"] / result["direct_p50_ms"], 3)
            result["container_ratio_p99"] = round(result["traefik_container_p99_ms"] / result["direct_p99_ms"], 3)
            print(json.dumps(result, indent=2))
        finally:
            docker(spec, "rm", "-f", CONTAINER, check=False)
            docker(spec, "compose", "-p", PROJECT, "-f", str(compose), "down", "-v", check=False)


if __name__ == "__main__":
    main()
