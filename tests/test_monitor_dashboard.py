"""The fleet dashboard, the environment page's Health section and the health API, on seeded health rows.

The rows are what the poller (``monitoring.poller``) and the rollup (``monitoring.history``) write; uptime comes from
the real ``monitoring.history.uptime`` over the seeded samples.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from deployments.models import Deployment
from monitoring.models import (
    CheckState,
    EnvironmentHealth,
    Incident,
    Rollup,
    Sample,
    ServerHealth,
)
from panel.inventory.models import Environment, Server
from panel.jobs.models import Job

pytestmark = pytest.mark.django_db

GIB = 1024**3


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def health(environment: Environment, state: str, message: str = "", **fields: Any) -> EnvironmentHealth:
    return EnvironmentHealth.objects.update_or_create(
        environment=environment,
        defaults={"state": state, "message": message, "polled_at": timezone.now(), **fields},
    )[0]


def samples(environment: Environment, states: list[str], *, every: timedelta = timedelta(minutes=5)) -> None:
    """Samples ending now, oldest first, one per ``every``."""
    now = timezone.now()
    Sample.objects.bulk_create(
        Sample(
            environment=environment, at=now - every * (len(states) - i), state=state, http_ms=100.0 + i,
            cpu_percent=float(i), memory_bytes=1024 * 1024 * (i + 1),
        )
        for i, state in enumerate(states)
    )  # fmt: skip


@pytest.fixture
def fleet(inventory: dict[str, Any], orgs: dict[str, Any]) -> dict[str, Any]:
    """Org A1's shop project with four environments in every state, and two servers of A (one unreachable)."""
    shop, server = inventory["project_a"], inventory["server_a"]
    prod = inventory["env_a"]
    staging = Environment.objects.create(
        project=shop, server=server, name="staging", kind="staging", compose_files=["prod.yaml"],
        compose_project="shop-16-0-staging",
    )  # fmt: skip
    test = Environment.objects.create(
        project=shop, server=server, name="test", kind="test", compose_files=["prod.yaml"],
        compose_project="shop-16-0-test",
    )  # fmt: skip
    demo = Environment.objects.create(
        project=shop, server=server, name="demo", kind="test", compose_files=["prod.yaml"],
        compose_project="shop-16-0-demo",
    )  # fmt: skip
    health(prod, "up", http_ms=120.0)
    health(staging, "down", "Odoo's /web/health does not answer: connection refused.")
    health(test, "degraded", "Port 8072 (websocket) refuses connections.")
    # demo: never polled (no health row): unknown
    samples(prod, ["up"] * 9 + ["down"])  # 90 % over 24 h
    samples(staging, ["up", "down"])
    broken = Server.objects.create(
        organization=orgs["a"], name="alpha-2", host="127.0.0.98", port=22, username="deploy",
        private_key=server.private_key, public_key=server.public_key, host_key_type="ssh-ed25519",
        host_key_base64="AAAAC3NzaC1lZDI1NTE5AAAAIBXy", host_key_fingerprint="SHA256:test2",
    )  # fmt: skip
    ServerHealth.objects.create(
        server=server, reachable=True, polled_at=timezone.now(), load1=0.42, cpus=4,
        disk_used_bytes=30 * GIB, disk_total_bytes=100 * GIB,
    )  # fmt: skip
    ServerHealth.objects.create(server=broken, reachable=False, error="ssh: connection timed out")
    job = Job.objects.create(
        organization=orgs["a1"], kind="deploy", status="succeeded", environment=prod,
        started_at=timezone.now() - timedelta(hours=2), finished_at=timezone.now() - timedelta(hours=2),
    )  # fmt: skip
    deployment = Deployment.objects.create(
        environment=prod, job=job, status="succeeded", ref="main", commit="0123456789abcdef0123",
        finished_at=timezone.now() - timedelta(hours=2),
    )  # fmt: skip
    Environment.objects.filter(pk=prod.pk).update(current_deployment=deployment)
    return {"prod": prod, "staging": staging, "test": test, "demo": demo, "server": server, "broken": broken}


def row_order(html: str, prefix: str) -> list[int]:
    return [int(pk) for pk in re.findall(rf'data-testid="{prefix}-(\d+)"', html)]


def test_it_shows_the_fleet_problems_first_with_uptime_and_last_deploy(users: Any, fleet: dict[str, Any]) -> None:
    answer = client_for(users["olga"]).get(reverse("dashboard"))
    assert answer.status_code == 200
    html = answer.content.decode()
    order = row_order(html, "dashboard-env")
    assert order == [fleet["staging"].pk, fleet["test"].pk, fleet["demo"].pk, fleet["prod"].pk]
    assert "2 environments with problems." in html
    prod_row = html[html.index(f'data-testid="dashboard-env-{fleet["prod"].pk}"') :].split("</tr>", 1)[0]
    assert "Up" in prod_row
    assert "90.0 %" in prod_row, "24 h uptime from the samples"
    assert "0123456789ab" in prod_row, "the last deploy's commit"
    assert "120 ms" in prod_row
    staging_row = html[html.index(f'data-testid="dashboard-env-{fleet["staging"].pk}"') :].split("</tr>", 1)[0]
    assert "Down" in staging_row and "connection refused" in staging_row
    assert "50.0 %" in staging_row
    demo_row = html[html.index(f'data-testid="dashboard-env-{fleet["demo"].pk}"') :].split("</tr>", 1)[0]
    assert "Unknown" in demo_row and "never" in demo_row
    # Servers: the unreachable one first, then load and disk.
    assert row_order(html, "dashboard-server") == [fleet["broken"].pk, fleet["server"].pk]
    server_row = html[html.index(f'data-testid="dashboard-server-{fleet["server"].pk}"') :].split("</tr>", 1)[0]
    assert "0.42" in server_row and "4 CPUs" in server_row and "30.0 % used" in server_row
    assert "unreachable" in html
    assert 'data-ws-path="/ws/health/"' in html
    # The dashboard is the staff's home and in their navigation.
    assert client_for(users["victor"]).get("/").url == reverse("dashboard")
    assert 'href="/dashboard/"' in html


def test_it_keeps_the_dashboard_to_staff_and_their_organizations(
    users: Any, fleet: dict[str, Any], inventory: dict[str, Any]
) -> None:
    assert client_for(users["carol"]).get(reverse("dashboard")).status_code == 404
    assert client_for(users["carol"]).get("/").url == reverse("project_list")
    html = client_for(users["bob"]).get(reverse("dashboard")).content.decode()
    assert row_order(html, "dashboard-env") == [inventory["env_b"].pk]
    assert row_order(html, "dashboard-server") == [inventory["server_b"].pk]
    assert "shop" not in html.lower().split("<main", 1)[1]
    assert "alpha-2" not in html


def test_it_draws_the_dashboard_in_the_same_queries_for_many_environments(
    users: Any, fleet: dict[str, Any], inventory: dict[str, Any]
) -> None:
    client = client_for(users["olga"])
    client.get(reverse("dashboard"))  # session, content types
    with CaptureQueriesContext(connection) as few:
        client.get(reverse("dashboard"))
    for i in range(12):
        env = Environment.objects.create(
            project=inventory["project_a"], server=fleet["server"], name=f"extra{i}", kind="test",
            compose_files=["prod.yaml"], compose_project=f"shop-16-0-extra{i}",
        )  # fmt: skip
        health(env, "up")
    with CaptureQueriesContext(connection) as many:
        html = client.get(reverse("dashboard")).content.decode()
    assert len(row_order(html, "dashboard-env")) == 16
    assert len(many) == len(few), [q["sql"][:120] for q in many.captured_queries]


def test_it_shows_the_health_section_by_role(users: Any, fleet: dict[str, Any]) -> None:
    prod = fleet["staging"]
    CheckState.objects.create(
        environment=prod, name="availability", status="failing", message="connection refused on 8069"
    )
    CheckState.objects.create(environment=prod, name="websocket", status="ok", message="")
    Incident.objects.create(
        organization=prod.project.organization, environment=prod, check_name="availability", title="shop prod is down"
    )
    url = reverse("environment_detail", args=[prod.pk])
    staff = client_for(users["olga"]).get(url).content.decode()
    assert 'data-testid="health-section"' in staff
    assert f'data-ws-path="/ws/health/?environment={prod.pk}"' in staff
    assert "connection refused on 8069" in staff, "the checks with their messages"
    assert "shop prod is down" in staff, "open incidents"
    assert "Uptime 24h" in staff and "50.0 %" in staff
    assert 'data-chart="resources"' in staff and 'data-chart="http_ms"' in staff
    assert f"/api/v1/environments/{prod.pk}/health-history/" in staff
    assert "uPlot-1.6.32.iife.min.js" in staff and "<script>" not in staff
    customer = client_for(users["carol"]).get(url).content.decode()
    assert 'data-testid="health-section"' in customer and "Down" in customer
    assert "Uptime 24h" in customer and 'data-chart="uptime"' in customer
    assert "connection refused on 8069" not in customer, "customers get no check details"
    assert "Odoo's /web/health does not answer" not in customer
    assert 'data-chart="resources"' not in customer


def test_it_answers_the_current_health_by_role(users: Any, fleet: dict[str, Any], inventory: dict[str, Any]) -> None:
    staging = fleet["staging"]
    CheckState.objects.create(environment=staging, name="availability", status="failing", message="refused")
    url = f"/api/v1/environments/{staging.pk}/health/"
    staff = api_for(users["olga"]).get(url)
    assert staff.status_code == 200, staff.content
    body = staff.json()
    assert body["state"] == "down" and body["state_label"] == "Down"
    assert body["uptime"]["24h"] == pytest.approx(0.5)
    assert set(body["uptime"]) == {"24h", "7d", "30d", "365d"}
    assert body["message"].startswith("Odoo's /web/health")
    assert [(c["name"], c["status"], c["message"]) for c in body["checks"]] == [("availability", "failing", "refused")]
    customer = api_for(users["carol"]).get(url).json()
    assert set(customer) == {"state", "state_label", "since", "uptime"}
    assert api_for(users["bob"]).get(url).status_code == 404
    # Never polled: unknown, not an error.
    demo = api_for(users["olga"]).get(f"/api/v1/environments/{fleet['demo'].pk}/health/").json()
    assert demo["state"] == "unknown" and demo["checks"] == []


def test_it_adds_health_to_the_environment_representation_in_a_few_queries(users: Any, fleet: dict[str, Any]) -> None:
    client = api_for(users["olga"])
    listing = client.get("/api/v1/environments/").json()
    rows = (
        {row["id"]: row for row in listing["results"]} if isinstance(listing, dict) else {r["id"]: r for r in listing}
    )
    assert rows[fleet["staging"].pk]["health_state"] == "down"
    assert rows[fleet["demo"].pk]["health_state"] == "unknown"
    assert rows[fleet["prod"].pk]["uptime"]["24h"] == pytest.approx(0.9)
    assert "connection refused" in rows[fleet["staging"].pk]["health_message"]
    customer = api_for(users["carol"]).get(f"/api/v1/environments/{fleet['staging'].pk}/").json()
    assert customer["health_state"] == "down" and "uptime" in customer and "health_message" not in customer
    with CaptureQueriesContext(connection) as four:
        client.get("/api/v1/environments/")
    for i in range(10):
        Environment.objects.create(
            project=fleet["prod"].project, server=fleet["server"], name=f"more{i}", kind="test",
            compose_files=["prod.yaml"], compose_project=f"shop-16-0-more{i}",
        )  # fmt: skip
    with CaptureQueriesContext(connection) as fourteen:
        client.get("/api/v1/environments/")
    health_queries = [q for q in fourteen.captured_queries if "monitoring_" in q["sql"]]
    assert len(health_queries) == len([q for q in four.captured_queries if "monitoring_" in q["sql"]])


def test_it_serves_the_chart_series_from_samples_and_rollups(
    users: Any, fleet: dict[str, Any], orgs: dict[str, Any]
) -> None:
    env = fleet["test"]
    now = timezone.now()
    hour = now.replace(minute=0, second=0, microsecond=0)
    day = hour.replace(hour=0)
    Rollup.objects.bulk_create(
        [
            Rollup(environment=env, period="hour", start=hour - timedelta(hours=30), up=100, down=20,
                   http_ms_avg=150.0, cpu_percent_avg=12.5, memory_bytes_avg=2.0 * 1024**3),
            Rollup(environment=env, period="hour", start=hour - timedelta(days=10), up=120),
            Rollup(environment=env, period="hour", start=hour - timedelta(days=40), up=1),  # past 30 d
            Rollup(environment=env, period="day", start=day - timedelta(days=100), up=2000, degraded=500,
                   unknown=9999),
        ]
    )  # fmt: skip
    # The newest hour, not rolled up yet: raw samples only.
    Sample.objects.bulk_create(
        Sample(environment=env, at=hour + timedelta(seconds=i), state=state, http_ms=90.0, cpu_percent=5.0)
        for i, state in enumerate(["up", "up", "down"])
    )
    Job.objects.create(
        organization=orgs["a1"], kind="backup", status="failed", environment=env,
        started_at=now - timedelta(days=3),
    )  # fmt: skip
    Job.objects.create(organization=orgs["a1"], kind="deploy", status="succeeded", environment=env, started_at=now)
    Job.objects.create(organization=orgs["a1"], kind="check", status="succeeded", environment=env, started_at=now)
    url = f"/api/v1/environments/{env.pk}/health-history/"
    client = api_for(users["olga"])

    day_series = client.get(url).json()
    assert day_series["range"] == "24h" and day_series["resolution"] == "sample"
    assert day_series["uptime"] == [1.0, 1.0, 0.0] and day_series["http_ms"] == [90.0] * 3
    assert [e["kind"] for e in day_series["events"]] == ["deploy"], "a check is not an event"

    week = client.get(url, {"range": "7d"}).json()
    assert week["resolution"] == "hour"
    assert week["t"] == [int((hour - timedelta(hours=30)).timestamp()), int(hour.timestamp())]
    assert week["uptime"] == [pytest.approx(100 / 120), pytest.approx(2 / 3)]
    assert week["cpu_percent"] == [12.5, 5.0] and week["http_ms"] == [150.0, 90.0]
    assert week["memory_bytes"] == [2.0 * 1024**3, None]
    assert [(e["kind"], e["status"]) for e in week["events"]] == [("backup", "failed"), ("deploy", "succeeded")]
    assert week["events"][0]["title"] == "Back up: failed"

    month = client.get(url, {"range": "30d"}).json()
    assert month["uptime"] == [1.0, pytest.approx(100 / 120), pytest.approx(2 / 3)]

    year = client.get(url, {"range": "365d"}).json()
    assert year["resolution"] == "day"
    # The daily rollup (unknown left out), then the days it has not reached from hourly rollups, then today.
    assert year["uptime"] == [pytest.approx(0.8), 1.0, 1.0, pytest.approx(100 / 120), pytest.approx(2 / 3)]
    assert year["t"][0] == int((day - timedelta(days=100)).timestamp()) and year["t"][-1] == int(day.timestamp())

    customer = api_for(users["carol"]).get(url, {"range": "7d"}).json()
    assert set(customer) == {"range", "start", "end", "resolution", "t", "uptime", "events"}
    assert customer["uptime"] == week["uptime"]


@pytest.mark.parametrize("bad", ["1y", "24H", "7d ", "../", "-1", "x" * 500])
def test_it_refuses_an_unknown_range(users: Any, fleet: dict[str, Any], bad: str) -> None:
    answer = api_for(users["olga"]).get(f"/api/v1/environments/{fleet['prod'].pk}/health-history/", {"range": bad})
    assert answer.status_code == 400, answer.content
    assert "range" in answer.json()
