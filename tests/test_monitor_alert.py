"""Incidents from check results (real PostgreSQL): thresholds, unknown results, suppression, reminders, the one
winner of concurrent observers, and the timeline."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from monitoring import checks
from monitoring.incidents import observe, send_reminders, timeline
from monitoring.models import (
    CheckState,
    CheckStatus,
    Incident,
    MaintenanceWindow,
    Notification,
    NotificationChannel,
)
from panel.jobs.models import Job

pytestmark = pytest.mark.django_db

OK, FAILING, UNKNOWN, WARNING = CheckStatus.OK, CheckStatus.FAILING, CheckStatus.UNKNOWN, CheckStatus.WARNING


@pytest.fixture
def env(inventory: dict[str, Any]) -> Any:
    return inventory["env_a"]


@pytest.fixture
def channel(orgs: dict[str, Any]) -> NotificationChannel:
    """An e-mail channel of the provider (A manages A1, the environment's organization)."""
    return NotificationChannel.objects.create(
        organization=orgs["a"], name="ops", kind="email", target="ops@example.com"
    )


def cycles(env: Any, status: str, count: int, start: Any = None, message: str = "") -> Any:
    at = start or timezone.now()
    for _ in range(count):
        observe(env, checks.AVAILABILITY, status, message or f"{status} result", at=at)
        at += timedelta(seconds=30)
    return at


def test_it_opens_after_three_failures_and_closes_after_two_successes(env: Any, channel: Any) -> None:
    at = cycles(env, FAILING, 2, message="Odoo's /web/health answered 502")
    assert not Incident.objects.exists()
    at = cycles(env, FAILING, 1, at, message="Odoo's /web/health answered 502")
    incident = Incident.objects.get()
    assert incident.closed_at is None and not incident.suppressed
    assert incident.title == f"{env} is down" and incident.message == "Odoo's /web/health answered 502"
    assert [n.kind for n in Notification.objects.filter(channel=channel)] == ["opened"]
    at = cycles(env, FAILING, 5, at, message="Odoo's /web/health answered 502")  # still one incident, one message
    assert Incident.objects.count() == 1 and Notification.objects.count() == 1
    at = cycles(env, OK, 1, at)
    assert Incident.objects.get().closed_at is None
    cycles(env, OK, 3, at)
    incident.refresh_from_db()
    assert incident.closed_at is not None
    assert sorted(Notification.objects.values_list("kind", flat=True)) == ["closed", "opened"]
    assert [u.kind for u in incident.updates.all()] == ["opened", "closed"]
    state = CheckState.objects.get(environment=env, name=checks.AVAILABILITY)
    assert (state.status, state.consecutive_successes, state.consecutive_failures) == (OK, 4, 0)


def test_it_lets_unknown_results_touch_no_counter_and_open_nothing(env: Any, channel: Any) -> None:
    at = cycles(env, FAILING, 2)
    at = cycles(env, UNKNOWN, 10, at)  # an unreachable server: neither down nor recovered
    state = CheckState.objects.get(environment=env, name=checks.AVAILABILITY)
    assert (state.status, state.consecutive_failures) == (UNKNOWN, 2)
    assert not Incident.objects.exists()
    cycles(env, FAILING, 1, at)
    assert Incident.objects.filter(closed_at__isnull=True).count() == 1
    at = cycles(env, UNKNOWN, 10, at + timedelta(minutes=1))
    assert Incident.objects.get().closed_at is None  # unknown never closes it either


def test_it_counts_a_warning_towards_recovery_not_failure(env: Any) -> None:
    at = cycles(env, FAILING, 3)
    cycles(env, WARNING, 2, at)
    assert Incident.objects.get().closed_at is not None


def test_it_records_but_does_not_alert_during_a_maintenance_window(env: Any, channel: Any, users: Any) -> None:
    now = timezone.now()
    window = MaintenanceWindow.objects.create(
        organization=env.project.organization, starts_at=now - timedelta(minutes=5), ends_at=now + timedelta(hours=1),
        reason="database upgrade",
    )  # fmt: skip
    at = cycles(env, FAILING, 3, now)
    incident = Incident.objects.get()
    assert incident.suppressed
    assert "database upgrade" in incident.updates.get(kind="note").message
    assert not Notification.objects.exists()
    # Still down once the window is over: the alert goes out then, once.
    MaintenanceWindow.objects.filter(pk=window.pk).update(ends_at=at)
    at = cycles(env, FAILING, 2, at + timedelta(seconds=1))
    incident.refresh_from_db()
    assert not incident.suppressed
    assert list(Notification.objects.values_list("kind", flat=True)) == ["opened"]
    cycles(env, OK, 2, at)
    assert sorted(Notification.objects.values_list("kind", flat=True)) == ["closed", "opened"]


def test_it_sends_nothing_for_an_incident_that_ends_within_the_window(env: Any, channel: Any) -> None:
    now = timezone.now()
    MaintenanceWindow.objects.create(
        organization=env.project.organization, environment=env, starts_at=now, ends_at=now + timedelta(hours=1)
    )
    at = cycles(env, FAILING, 4, now + timedelta(seconds=1))
    cycles(env, OK, 2, at)
    assert Incident.objects.get().closed_at is not None
    assert not Notification.objects.exists()


def test_it_suppresses_alerts_while_a_deploy_runs(env: Any, channel: Any) -> None:
    job = Job.objects.create(
        organization=env.project.organization, kind="deploy", status="running", environment=env, lock_key="x-1"
    )
    cycles(env, FAILING, 3)
    incident = Incident.objects.get()
    assert incident.suppressed and "deploying" in incident.updates.get(kind="note").message.lower()
    assert not Notification.objects.exists()
    Job.objects.filter(pk=job.pk).update(status="succeeded", finished_at=timezone.now())
    cycles(env, FAILING, 1, timezone.now() + timedelta(seconds=5))
    assert Notification.objects.get().kind == "opened"


def test_it_does_not_suppress_another_organizations_window(env: Any, channel: Any, orgs: Any) -> None:
    now = timezone.now()
    MaintenanceWindow.objects.create(organization=orgs["b"], starts_at=now, ends_at=now + timedelta(hours=1))
    cycles(env, FAILING, 3, now + timedelta(seconds=1))
    assert not Incident.objects.get().suppressed


def test_it_reminds_no_more_often_than_the_minimum(env: Any, channel: Any, settings: Any) -> None:
    settings.MONITOR_REMINDER_MINUTES = 1  # asked for every minute, but the floor is 30
    settings.MONITOR_REMINDER_MIN_MINUTES = 30
    opened = timezone.now() - timedelta(hours=2)
    cycles(env, FAILING, 3, opened)
    incident = Incident.objects.get()
    assert send_reminders(now=incident.opened_at + timedelta(minutes=10)) == 0
    assert send_reminders(now=incident.opened_at + timedelta(minutes=31)) == 1
    assert send_reminders(now=incident.opened_at + timedelta(minutes=40)) == 0
    assert send_reminders(now=incident.opened_at + timedelta(minutes=62)) == 1
    reminders = Notification.objects.filter(kind="reminder").order_by("sequence")
    assert [n.sequence for n in reminders] == [1, 2]
    settings.MONITOR_REMINDER_MINUTES = 0
    assert send_reminders(now=incident.opened_at + timedelta(minutes=200)) == 0


def test_it_never_reminds_about_a_suppressed_or_closed_incident(env: Any, channel: Any, settings: Any) -> None:
    settings.MONITOR_REMINDER_MINUTES = 30
    start = timezone.now() - timedelta(hours=3)
    MaintenanceWindow.objects.create(
        organization=env.project.organization, starts_at=start - timedelta(minutes=1), ends_at=timezone.now() + timedelta(hours=1)
    )  # fmt: skip
    cycles(env, FAILING, 3, start)
    assert send_reminders() == 0
    Incident.objects.update(suppressed=False, closed_at=timezone.now())
    assert send_reminders() == 0


@pytest.mark.django_db(transaction=True)
def test_it_opens_one_incident_and_one_message_when_workers_observe_at_once(inventory: Any, orgs: Any) -> None:
    env = inventory["env_a"]
    NotificationChannel.objects.create(organization=orgs["a"], name="ops", kind="email", target="ops@example.com")
    cycles(env, FAILING, 2)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(status: str) -> None:
        try:
            barrier.wait(timeout=10)
            observe(env, checks.AVAILABILITY, status, "concurrent")
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    def race(status: str) -> None:
        threads = [threading.Thread(target=worker, args=(status,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors

    race(FAILING)
    assert Incident.objects.count() == 1
    assert CheckState.objects.get(environment=env).consecutive_failures == 10  # every increment counted
    assert list(Notification.objects.values_list("kind", flat=True)) == ["opened"]
    race(OK)
    assert Incident.objects.get().closed_at is not None
    assert sorted(Notification.objects.values_list("kind", flat=True)) == ["closed", "opened"]
    assert Incident.objects.get().updates.filter(kind="closed").count() == 1


def test_it_puts_incidents_and_job_outcomes_on_one_timeline(env: Any, inventory: Any) -> None:
    start = timezone.now() - timedelta(hours=1)
    at = cycles(env, FAILING, 3, start)
    cycles(env, OK, 2, at)
    org = env.project.organization
    failed = Job.objects.create(
        organization=org, kind="deploy", status="failed", environment=env, reason="build failed",
        finished_at=start + timedelta(minutes=10),
    )  # fmt: skip
    Job.objects.create(
        organization=org, kind="backup", status="succeeded", environment=env, finished_at=start + timedelta(minutes=20)
    )
    Job.objects.create(organization=org, kind="check", status="failed", environment=env, finished_at=start)
    Job.objects.create(
        organization=org, kind="restore", status="failed", environment=inventory["env_b"], finished_at=start
    )
    events = timeline([env.pk], since=start - timedelta(minutes=1))
    assert [(e["kind"], e["outcome"], e["ok"]) for e in events] == [
        ("incident", "opened", False),
        ("incident", "closed", True),
        ("deploy", "failed", False),
        ("backup", "succeeded", True),
    ]
    assert events[2]["job_id"] == failed.pk and events[2]["detail"] == "build failed"
    assert timeline([env.pk], since=timezone.now()) == []


def test_it_costs_one_statement_per_healthy_result(env: Any, django_assert_num_queries: Any) -> None:
    cycles(env, OK, 3)
    with django_assert_num_queries(1):
        observe(env, checks.AVAILABILITY, OK, "fine")
    with django_assert_num_queries(1):
        observe(env, checks.AVAILABILITY, UNKNOWN, "server unreachable")
