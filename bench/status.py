"""Benchmark: the cost of a status page with 200 environments ÷ with 10 (aim: 1.0 in SQL queries).

Two organizations in a fresh PostgreSQL database, one with 10 production environments and one with 200, each
environment with a realistic history: a sample a minute for the last 24 hours, hourly rollups for 30 days, daily
ones for 400 days, health, two incidents with timelines, a deployment and a good backup. For each organization it
counts the SQL queries of, and times (median of 7), the logged-in status page, the public page (cache off: the
cost of a cache miss) and ``GET /api/v1/status-pages/{id}/``, through Django's test client.

    DATABASE_URL=postgres://panel_test:panel_test@127.0.0.1:5432/panel_bench .venv/bin/python bench/status.py

Creates (and drops at the end) ``test_<database name>``. ``BENCH_EXPLAIN=1`` also prints the plans of the uptime and
daily bars queries.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("DATABASE_URL", "postgres://panel_test:panel_test@127.0.0.1:5432/panel_bench_status")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6390/7")
os.environ["MONITOR_STATUS_CACHE_SECONDS"] = "0"

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402

RUNS = 7


def seed(organization: Any, server: Any, count: int, user: Any) -> None:
    """``count`` production environments of one project, with their history in bulk SQL."""
    from backups.models import Backup, BackupStorage
    from deployments.models import Deployment
    from monitoring.models import EnvironmentHealth, Incident, IncidentUpdate
    from panel.accounts.models import Membership
    from panel.inventory.models import Environment, Project
    from panel.jobs.models import Job

    Membership.objects.create(user=user, organization=organization, role="customer")
    project = Project.objects.create(
        organization=organization, name=f"Shop {count}", slug=f"shop-{count}", git_url="/srv/git/x.git"
    )
    envs = Environment.objects.bulk_create(
        Environment(project=project, server=server, name=f"e{i}", compose_files=["prod.yaml"],
                    compose_project=f"shop{count}-e{i}") for i in range(count)
    )  # fmt: skip
    ids = [env.pk for env in envs]
    EnvironmentHealth.objects.bulk_create(EnvironmentHealth(environment=env, state="up") for env in envs)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO monitoring_sample (environment_id, at, state, http_ms) "
            "SELECT e, now() - m * interval '1 minute', CASE WHEN m %% 97 = 0 THEN 'down' ELSE 'up' END, 80 "
            "FROM unnest(%s::bigint[]) AS e, generate_series(0, 1439) AS m",
            [ids],
        )
        cursor.execute(
            "INSERT INTO monitoring_rollup (environment_id, period, start, up, degraded, down, unknown, maintenance) "
            "SELECT e, 'hour', date_trunc('hour', now(), 'UTC') - h * interval '1 hour', 118, 0, 2, 0, 0 "
            "FROM unnest(%s::bigint[]) AS e, generate_series(1, 24 * 30) AS h",
            [ids],
        )
        cursor.execute(
            "INSERT INTO monitoring_rollup (environment_id, period, start, up, degraded, down, unknown, maintenance) "
            "SELECT e, 'day', date_trunc('day', now(), 'UTC') - d * interval '1 day', 2870, 0, 10, 0, 0 "
            "FROM unnest(%s::bigint[]) AS e, generate_series(2, 400) AS d",
            [ids],
        )
    incidents = Incident.objects.bulk_create(
        Incident(organization=organization, environment=env, check_name=check, title="t", message="m")
        for env in envs for check in ("availability", "websocket")
    )  # fmt: skip
    Incident.objects.filter(pk__in=[i.pk for i in incidents[::2]]).update(closed_at=django.utils.timezone.now())
    IncidentUpdate.objects.bulk_create(
        IncidentUpdate(incident=incident, kind=kind, message="m") for incident in incidents for kind in ("opened", "update")
    )  # fmt: skip
    jobs = Job.objects.bulk_create(
        Job(organization=organization, kind="deploy", environment=env, status="succeeded") for env in envs
    )
    Deployment.objects.bulk_create(
        Deployment(environment=job.environment, job=job, ref="main", status="succeeded",
                   finished_at=django.utils.timezone.now()) for job in jobs
    )  # fmt: skip
    storage = BackupStorage.objects.create(organization=organization, name="local", kind="local", path="/srv/b")
    Backup.objects.bulk_create(
        Backup(environment=env, storage=storage, kind="scheduled", status="good", key_prefix=f"b/{env.pk}",
               finished_at=django.utils.timezone.now(), manifest={"x": 1}) for env in envs
    )  # fmt: skip


def measure(client: Any, path: str) -> tuple[int, float]:
    """SQL queries of one request (after a warm-up) and the median wall time of ``RUNS`` requests."""
    assert client.get(path).status_code == 200, path
    with CaptureQueriesContext(connection) as queries:
        assert client.get(path).status_code == 200
    count = len(queries)  # now: the next request clears the connection's query log
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        client.get(path)
        times.append(time.perf_counter() - started)
    return count, statistics.median(times)


def explain(organization: Any) -> None:
    """Print the plans of the uptime and daily bars queries (``BENCH_EXPLAIN=1``)."""
    from monitoring import history, statuspage

    ids = list(statuspage.environments_of(statuspage.page_for(organization)).values_list("pk", flat=True))
    for name, call in (
        ("uptime", lambda: history.uptime(ids, statuspage.UPTIME_WINDOWS)),
        ("daily bars", lambda: history.daily_bars(ids)),
    ):
        with CaptureQueriesContext(connection) as queries:
            call()
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN ANALYZE " + queries.captured_queries[0]["sql"])
            print(f"{name} ({len(ids)} environments):\n" + "\n".join(row[0] for row in cursor.fetchall()))


def scaling_report(results: dict[int, dict[str, dict[str, Any]]], *, ms_ratio: bool = False) -> dict[str, Any]:
    """Per measured thing: queries and wall time with 10 and with 200 environments, and their ratio (also used by
    bench/dashboard.py); a ``messages`` count measured with 200 is kept."""
    report: dict[str, Any] = {}
    for name in results[10]:
        small, large = results[10][name], results[200][name]
        row = {
            "queries_10": small["queries"],
            "queries_200": large["queries"],
            "queries_ratio": round(large["queries"] / small["queries"], 3),
            "ms_10": small["ms"],
            "ms_200": large["ms"],
        }
        if ms_ratio:
            row["ms_ratio"] = round(large["ms"] / small["ms"], 2)
        if "messages" in large:
            row["messages_200"] = large["messages"]
        report[name] = row
    return report


def write_scaling_report(name: str, report: dict[str, Any], first_column: str) -> None:
    """Save ``bench/results/<name>.json`` and print it, then the README's table."""
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(
        f"\n| {first_column} | Queries 10 envs | Queries 200 envs | Ratio | Wall 10 | Wall 200 |\n|---|---|---|---|---|---|"
    )
    for what, row in report.items():
        print(f"| {what} | {row['queries_10']} | {row['queries_200']} | {row['queries_ratio']} | "
              f"{row['ms_10']} ms | {row['ms_200']} ms |")  # fmt: skip


def main() -> None:
    from django.contrib.auth import get_user_model

    from monitoring import statuspage
    from panel.accounts.models import Organization
    from panel.inventory.models import Server

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        provider = Organization.objects.create(name="Provider", slug="provider")
        server = Server.objects.create(organization=provider, name="s1", host="127.0.0.99", username="deploy",
                                       private_key="x", public_key="x")  # fmt: skip
        results: dict[int, dict[str, dict[str, float]]] = {}
        for count in (10, 200):
            organization = Organization.objects.create(name=f"Customer {count}", slug=f"c{count}", managed_by=provider)
            user = get_user_model().objects.create_user(username=f"u{count}", password="x")
            seed(organization, server, count, user)
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")  # what autovacuum does after such inserts
            token = statuspage.create_public_link(page=statuspage.page_for(organization), actor=None)
            client = Client()
            client.force_login(user)
            results[count] = {}
            for name, who, path in (
                ("page", client, f"/status/{organization.pk}/"),
                ("public page", Client(), f"/status/p/{token}/"),
                ("API", client, f"/api/v1/status-pages/{organization.pk}/"),
            ):
                queries, seconds = measure(who, path)
                results[count][name] = {"queries": queries, "ms": round(seconds * 1000, 1)}
            if os.environ.get("BENCH_EXPLAIN"):
                explain(organization)
            body = client.get(f"/api/v1/status-pages/{organization.pk}/").json()
            assert len(body["environments"]) == count and len(body["environments"][0]["bars"]) == 90
            assert re.search(r"data-uptime=\"0\.99", client.get(f"/status/{organization.pk}/").content.decode())
        report = scaling_report(results, ms_ratio=True)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    write_scaling_report("status", report, "Request")


if __name__ == "__main__":
    main()
