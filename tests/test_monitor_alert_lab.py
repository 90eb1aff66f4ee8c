"""Must show (lab): down and up. The running environment's Odoo container is stopped on lab1: the poller (two real
monitoring workers, each with beat) turns it *down* within 3 cycles and opens one incident, which delivers one
e-mail to a real SMTP server (aiosmtpd) and one signed webhook to a local HTTP receiver; Odoo started again closes
the incident with one recovery message each. Each message arrives exactly once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from monitoring import checks
from monitoring.models import EnvironmentHealth, Incident, Notification, NotificationChannel, Sample
from monitoring.notify import verify_signature
from tests.alert_receivers import AlertWorkers, alert_workers

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "lab-signing-secret-0123456789"


@pytest.fixture
def workers(monitoring_worker: Any, process_logs: Path) -> Iterator[AlertWorkers]:
    # A cycle every 2 s, the Odoo (psql) checks almost never: this test is about availability.
    with alert_workers(
        monitoring_worker, process_logs, MONITOR_INTERVAL="2", MONITOR_ODOO_CHECK_EVERY="100000",
        MONITOR_PROBE_TIMEOUT="3",
    ) as running:  # fmt: skip
        yield running


def wait(predicate: Any, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:g} s"
        time.sleep(0.2)


def state(environment: Any) -> str | None:
    return EnvironmentHealth.objects.filter(environment=environment).values_list("state", flat=True).first()


def test_it_alerts_once_when_odoo_goes_down_and_once_when_it_is_back(
    transactional_db: Any, running_env: Any, workers: AlertWorkers, orgs: dict[str, Any]
) -> None:
    environment = running_env.environment
    smtp, hooks = workers.smtp, workers.webhooks
    NotificationChannel.objects.create(organization=orgs["a"], name="ops", kind="email", target="ops@example.com")
    NotificationChannel.objects.create(
        organization=orgs["a1"], name="hook", kind="webhook", target=hooks.url, secret=SECRET
    )
    wait(lambda: state(environment) == "up", "the environment polled up")

    stopped_at = timezone.now()
    running_env.stop_odoo()
    wait(lambda: Incident.objects.filter(environment=environment).exists(), "an incident")
    incident = Incident.objects.get(environment=environment)
    assert incident.check_name == checks.AVAILABILITY and incident.closed_at is None
    assert state(environment) == "down"
    # Three failing cycles open it (a cycle already under way when the container stopped may still have seen it up).
    cycles = Sample.objects.filter(environment=environment, at__gt=stopped_at, at__lte=incident.opened_at).count()
    assert cycles <= 4, cycles
    smtp.wait_for(lambda: len(smtp.messages) >= 1)
    hooks.wait_for(lambda: len(hooks.requests) >= 1)
    assert "odoo container is exited" in hooks.bodies()[0]["incident"]["message"].lower()

    running_env.start_odoo()
    wait(lambda: Incident.objects.get(pk=incident.pk).closed_at is not None, "the incident closed")
    smtp.wait_for(lambda: len(smtp.messages) >= 2)
    hooks.wait_for(lambda: len(hooks.requests) >= 2)
    time.sleep(4)  # several more cycles and delivery sweeps of both workers: no duplicate shows up

    assert smtp.subjects() == [
        f"[Doodba Panel] DOWN: {environment} is down",
        f"[Doodba Panel] RESOLVED: {environment} is down",
    ]
    assert [body["event"] for body in hooks.bodies()] == ["incident.opened", "incident.closed"]
    assert {body["incident"]["id"] for body in hooks.bodies()} == {incident.pk}
    for request in hooks.requests:
        assert verify_signature(SECRET, request.body, request.headers["X-Panel-Signature"])
    assert Incident.objects.filter(environment=environment).count() == 1
    assert list(Notification.objects.order_by("id").values_list("kind", "status")) == [
        ("opened", "sent"), ("opened", "sent"), ("closed", "sent"), ("closed", "sent"),
    ]  # fmt: skip
    assert state(environment) == "up"
