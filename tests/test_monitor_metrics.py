"""Prometheus ``/metrics`` (real PostgreSQL and Redis, Django's test client, a second real process): refused without
the token or with a wrong one, 404 while no token is configured; the documented series with sane values, counters
aggregated over processes; every query of the Grafana dashboard names an exported series."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from monitoring import metrics
from monitoring.models import CheckState, EnvironmentHealth, Incident, Sample, ServerHealth
from tests.conftest import ROOT, process_env

pytestmark = pytest.mark.django_db

TOKEN = "s3cret-metrics-token-0123456789"

# A second panel process: its channel layer points at a closed port (every push is dropped) and its SSH pool holds
# two connections (stand-ins: the pool's bookkeeping is what is counted, not the sockets).
OTHER_PROCESS = """
import django, time
django.setup()
from django.conf import settings
settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                       "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}}}
from panel.jobs.publisher import publish
from panel.remote import ssh
class Target:
    def __init__(self, key): self.pool_key = key
class Stand:
    def __init__(self, key): self.target = Target(key)
    def close(self): pass
for key in "abc":
    ssh.POOL.connections[key] = Stand(key)
ssh.POOL.discard(ssh.POOL.connections["c"])
for n in range(3):
    publish("metrics-test", {"type": "noop"})
from monitoring.metrics import process_totals
deadline = time.monotonic() + 15
while (process_totals() or {}).get("channel_drops", 0) < 3 and time.monotonic() < deadline:
    time.sleep(0.05)
print("done")
"""


@pytest.fixture
def clean_counters() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match=f"{metrics.PREFIX}*"):
        client.delete(key)


def _scrape(token: str | None = TOKEN, scheme: str = "Bearer") -> Any:
    headers = {"HTTP_AUTHORIZATION": f"{scheme} {token}"} if token is not None else {}
    return Client(raise_request_exception=False).get("/metrics", **headers)


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _value(found: dict[str, Any], series: str, /, **labels: str) -> float:
    matches = [value for got, value in found.get(series, []) if all(got.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (series, labels, found.get(series))
    return matches[0]


@override_settings(MONITOR_METRICS_TOKEN="")
def test_it_answers_404_while_no_token_is_configured() -> None:
    assert _scrape().status_code == 404
    assert _scrape(None).status_code == 404


@override_settings(MONITOR_METRICS_TOKEN=TOKEN)
def test_it_refuses_requests_without_the_token_or_with_a_wrong_one() -> None:
    for response in (
        _scrape(None),
        _scrape("wrong"),
        _scrape(TOKEN[:-1]),
        _scrape(TOKEN + "x"),
        _scrape(TOKEN, scheme="Basic"),
        _scrape(""),
    ):
        assert response.status_code == 401
        assert b"panel_" not in response.content
        assert response["WWW-Authenticate"].startswith("Bearer")
    assert Client().post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405
    ok = _scrape()
    assert ok.status_code == 200 and ok["Content-Type"].startswith("text/plain")


@override_settings(MONITOR_METRICS_TOKEN=TOKEN)
def test_it_exposes_the_documented_series(inventory: dict[str, Any], clean_counters: None) -> None:
    from panel.jobs.models import Job
    from panel.jobs.publisher import publish
    from panel.remote import ssh

    env, server = inventory["env_a"], inventory["server_a"]
    organization = env.project.organization
    now = timezone.now()
    for seconds, status in ((10, "succeeded"), (100, "succeeded"), (4000, "failed")):
        Job.objects.create(organization=organization, kind="deploy", environment=env, status=status,
                           started_at=now - timedelta(seconds=seconds), finished_at=now)  # fmt: skip
    Job.objects.create(organization=organization, kind="backup", environment=env, status="queued")
    ServerHealth.objects.create(server=server, reachable=True, cycle_seconds=0.75, polled_at=now)
    EnvironmentHealth.objects.create(environment=env, state="degraded", http_ms=120.0, websocket_ms=30.0,
                                     message="websocket on alpha-1 refused")  # fmt: skip
    Sample.objects.bulk_create(
        Sample(environment=env, at=now - timedelta(minutes=m), state="up" if m % 4 else "down") for m in range(40)
    )
    CheckState.objects.create(environment=env, name="websocket", status="failing", message="8072 on alpha-1 closed")
    CheckState.objects.create(environment=env, name="database_size", status="ok", value=123456789.0)
    CheckState.objects.create(environment=env, name="made_up_check", status="failing")  # not a check name: not shown
    Incident.objects.create(organization=organization, environment=env, check_name="websocket", title="t")

    # Live pushes of this process reach the channel layer (counted as sends); another process's are all dropped.
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_PROCESS], env=process_env(), cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    for _ in range(4):
        publish("metrics-test", {"type": "noop"})
    # This process's pool: one stand-in connection, reported when the pool changes.
    stand = type("Stand", (), {"target": type("T", (), {"pool_key": "z"})(), "close": lambda self: None})()
    ssh.POOL.connections.update({"z": stand, "y": stand})
    ssh.POOL.discard(stand)
    here = len(ssh.POOL.connections)  # the stand-in left, and whatever earlier tests of this process keep open
    try:
        deadline = time.monotonic() + 20
        while True:
            found = _samples(_scrape().content.decode())
            if (
                _value(found, "panel_channel_layer_sends_total") >= 4
                and _value(found, "panel_channel_layer_drops_total") >= 3
                and _value(found, "panel_ssh_reporting_processes") >= 2
            ) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        assert other.wait(30) == 0
        ssh.POOL.connections.pop("y", None)

    # At least this test's pushes (a push an earlier test queued in this process may still land meanwhile).
    assert _value(found, "panel_channel_layer_sends_total") >= 4
    assert _value(found, "panel_channel_layer_drops_total") == 3
    assert _value(found, "panel_ssh_connections_open") == here + 2  # this process + 2 in the other one
    assert _value(found, "panel_ssh_reporting_processes") == 2
    assert _value(found, "panel_metrics_redis_up") == 1

    assert _value(found, "panel_jobs", kind="deploy", state="succeeded") == 2
    assert _value(found, "panel_jobs", kind="deploy", state="failed") == 1
    assert _value(found, "panel_jobs", kind="backup", state="queued") == 1
    assert _value(found, "panel_job_duration_seconds_count", kind="deploy") == 3
    assert _value(found, "panel_job_duration_seconds_sum", kind="deploy") == pytest.approx(4110, abs=1)
    assert _value(found, "panel_job_duration_seconds_bucket", kind="deploy", le="15.0") == 1
    assert _value(found, "panel_job_duration_seconds_bucket", kind="deploy", le="300.0") == 2
    assert _value(found, "panel_job_duration_seconds_bucket", kind="deploy", le="+Inf") == 3

    assert _value(found, "panel_poll_cycle_seconds", server=str(server.pk)) == 0.75
    assert _value(found, "panel_server_reachable", server=str(server.pk)) == 1
    e = str(env.pk)
    assert _value(found, "panel_environment_info", environment=e, project="shop", name="prod") == 1
    assert _value(found, "panel_environment_state", environment=e, state="degraded") == 1
    assert _value(found, "panel_environment_state", environment=e, state="up") == 0
    assert _value(found, "panel_environment_response_seconds", environment=e, endpoint="http") == 0.12
    assert _value(found, "panel_environment_uptime_ratio", environment=e, window="24h") == pytest.approx(30 / 40)
    assert _value(found, "panel_check_failing", environment=e, check="websocket") == 1
    assert _value(found, "panel_check_failing", environment=e, check="database_size") == 0
    assert _value(found, "panel_check_value", environment=e, check="database_size") == 123456789.0
    assert all(labels.get("check") != "made_up_check" for labels, _ in found["panel_check_failing"])
    assert _value(found, "panel_incidents_open", environment=e) == 1

    # Bounded labels: no message or host ever appears, whatever the rows say.
    text = _scrape().content.decode()
    assert "alpha-1" not in text and "127.0.0.99" not in text and "8072 on" not in text
    allowed = {"kind", "state", "le", "server", "environment", "organization", "project", "name", "window",
               "endpoint", "check"}  # fmt: skip
    assert {label for rows in found.values() for labels, _ in rows for label in labels} <= allowed


@override_settings(MONITOR_METRICS_TOKEN=TOKEN)
def test_it_names_only_exported_series_in_the_grafana_dashboard(inventory: dict[str, Any]) -> None:
    from panel.jobs.models import Job

    env = inventory["env_a"]
    Job.objects.create(organization=env.project.organization, kind="deploy", environment=env, status="succeeded",
                       started_at=timezone.now(), finished_at=timezone.now())  # fmt: skip
    EnvironmentHealth.objects.create(environment=env, state="up", http_ms=1.0)
    exported: set[str] = set()
    for family in text_string_to_metric_families(_scrape().content.decode()):
        exported |= {sample.name for sample in family.samples} | {family.name}
    dashboard = json.loads((Path(ROOT) / "monitoring" / "grafana-dashboard.json").read_text())
    assert dashboard["panels"]
    named: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bpanel_[a-z0-9_]+", target["expr"]))
            assert names, target["expr"]
            named |= names
    assert named - exported == set()
    # The dashboard covers each group of the issue: jobs, poll cycles, SSH, channel layer, health, uptime, checks.
    for name in ("panel_jobs", "panel_job_duration_seconds_bucket", "panel_poll_cycle_seconds",
                 "panel_ssh_connections_open", "panel_channel_layer_drops_total", "panel_environment_state",
                 "panel_environment_uptime_ratio", "panel_check_failing"):  # fmt: skip
        assert name in named, name
