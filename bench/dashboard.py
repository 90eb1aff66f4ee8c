"""Benchmark: the cost of the fleet dashboard and of one live push with 200 environments ÷ with 10 (aim: 1.0 in SQL
queries, one channel-layer message per organization whatever the number of environments or viewers).

Two provider organizations in a fresh PostgreSQL database, each managing one customer organization with 10 or 200
production environments and the history ``bench/status.py`` seeds (a sample a minute for 24 h, hourly rollups for
30 days, daily ones for 400 days, health, a deployment). For each it counts the SQL queries of, and times (median
of 7), the dashboard of a staff member of the provider, ``monitoring.live.environments_changed`` of every
environment (the poller's call after a cycle; channel-layer sends counted, not made) and one environment's
``health-history?range=365d``.

    DATABASE_URL=postgres://panel_test:panel_test@127.0.0.1:5432/panel_bench_dash .venv/bin/python bench/dashboard.py

Creates (and drops at the end) ``test_<database name>``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("DATABASE_URL", "postgres://panel_test:panel_test@127.0.0.1:5432/panel_bench_dash")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6390/7")

from bench.status import scaling_report, seed, write_scaling_report  # noqa: E402, I001 - sets Django up first
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402

RUNS = 7


def measure(call: Callable[[], Any]) -> tuple[int, float]:
    """SQL queries of one call (after a warm-up) and the median wall time of ``RUNS`` calls."""
    call()
    with CaptureQueriesContext(connection) as queries:
        call()
    count = len(queries)
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return count, statistics.median(times)


def main() -> None:
    from django.contrib.auth import get_user_model

    from monitoring import live
    from panel.accounts.models import Membership, Organization
    from panel.inventory.models import Environment, Server

    sent: list[str] = []
    live.publish = lambda group, message: sent.append(group)  # count the sends, do not make them
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        results: dict[int, dict[str, dict[str, float]]] = {}
        for count in (10, 200):
            provider = Organization.objects.create(name=f"Provider {count}", slug=f"p{count}")
            server = Server.objects.create(organization=provider, name=f"s{count}", host="127.0.0.99",
                                           username="deploy", private_key="x", public_key="x")  # fmt: skip
            customer = Organization.objects.create(name=f"Customer {count}", slug=f"c{count}", managed_by=provider)
            staff = get_user_model().objects.create_user(username=f"staff{count}", password="x")
            Membership.objects.create(user=staff, organization=provider, role="operator")
            seed(customer, server, count, get_user_model().objects.create_user(username=f"u{count}", password="x"))
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
            ids = list(Environment.objects.filter(project__organization=customer).values_list("pk", flat=True))
            client = Client()
            client.force_login(staff)
            page = client.get("/dashboard/")
            assert page.status_code == 200 and page.content.decode().count("data-health-env=") == count
            sent.clear()
            live.environments_changed(ids)
            assert sent == [live.health_group(customer.pk)], sent
            results[count] = {}
            history_url = f"/api/v1/environments/{ids[0]}/health-history/?range=365d"
            calls: list[tuple[str, Callable[[], Any]]] = [
                ("dashboard", partial(client.get, "/dashboard/")),
                ("live push of every environment", partial(live.environments_changed, ids)),
                ("health-history 365d", partial(client.get, history_url)),
            ]
            for name, call in calls:
                queries, seconds = measure(call)
                results[count][name] = {"queries": queries, "ms": round(seconds * 1000, 1)}
            sent.clear()
            live.environments_changed(ids)
            results[count]["live push of every environment"]["messages"] = len(sent)
        report = scaling_report(results)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    write_scaling_report("dashboard", report, "What")


if __name__ == "__main__":
    main()
