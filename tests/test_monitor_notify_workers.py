"""Deliveries by two real monitoring workers (Celery processes with beat) to a real SMTP server and HTTP receiver:
each message arrives exactly once, also when the worker sending it is killed mid-conversation, and when Redis was
down as the incident opened."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitoring import checks
from monitoring.incidents import observe
from monitoring.models import Incident, Notification, NotificationChannel
from monitoring.notify import verify_signature
from tests.alert_receivers import AlertWorkers, alert_workers
from tests.services import start_redis, stop_redis

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "workers-signing-secret-0123"


@pytest.fixture(scope="module")
def module_workers(monitoring_worker: Any, process_logs: Path) -> Iterator[AlertWorkers]:
    with alert_workers(monitoring_worker, process_logs) as running:
        yield running


@pytest.fixture
def workers(module_workers: AlertWorkers) -> AlertWorkers:
    module_workers.reset()
    return module_workers


@pytest.fixture
def env(inventory: dict[str, Any], orgs: dict[str, Any], workers: AlertWorkers) -> Any:
    NotificationChannel.objects.create(organization=orgs["a"], name="ops", kind="email", target="ops@example.com")
    NotificationChannel.objects.create(
        organization=orgs["a1"], name="hook", kind="webhook", target=workers.webhooks.url, secret=SECRET
    )
    return inventory["env_a"]


def cycles(env: Any, status: str, count: int) -> None:
    for _ in range(count):
        observe(env, checks.AVAILABILITY, status, f"/web/health: {status}")


def settle(workers: AlertWorkers, seconds: float = 3.0) -> None:
    """Give duplicate senders (both workers' sweeps run every second) time to show themselves."""
    time.sleep(seconds)


def test_it_sends_each_message_once_with_two_workers(env: Any, workers: AlertWorkers) -> None:
    smtp, hooks = workers.smtp, workers.webhooks
    cycles(env, "failing", 3)
    smtp.wait_for(lambda: len(smtp.messages) >= 1)
    hooks.wait_for(lambda: len(hooks.requests) >= 1)
    cycles(env, "failing", 3)  # still down: nothing new
    cycles(env, "ok", 2)
    smtp.wait_for(lambda: len(smtp.messages) >= 2)
    hooks.wait_for(lambda: len(hooks.requests) >= 2)
    settle(workers)
    assert smtp.subjects() == [f"[Doodba Panel] DOWN: {env} is down", f"[Doodba Panel] RESOLVED: {env} is down"]
    assert [body["event"] for body in hooks.bodies()] == ["incident.opened", "incident.closed"]
    for request in hooks.requests:
        assert verify_signature(SECRET, request.body, request.headers["X-Panel-Signature"])
    assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}
    assert all(proc.process.poll() is None for proc in workers.workers)  # both consumed the queue throughout


def test_it_delivers_once_when_the_sending_worker_is_killed_mid_send(env: Any, workers: AlertWorkers) -> None:
    smtp = workers.smtp
    smtp.rcpt_hold = 30.0  # the SMTP conversation stalls after MAIL FROM: the message is not accepted yet
    offsets = [len(proc.log_text()) for proc in workers.workers]
    cycles(env, "failing", 3)
    row = Notification.objects.get(channel__kind="email")
    deadline = time.monotonic() + 30
    sender = None
    while sender is None:
        assert time.monotonic() < deadline, "no worker took the delivery"
        for proc, offset in zip(workers.workers, offsets, strict=True):
            if smtp.rcpt_calls and f"notification {row.pk}: attempt 1 " in proc.log_text()[offset:]:
                sender = proc
        time.sleep(0.1)
    assert Notification.objects.get(pk=row.pk).status == "sending"
    sender.kill()  # SIGKILL to its process group: mid-conversation, the lease still held
    smtp.rcpt_hold = 0.0
    # The other worker's sweep takes the row once the lease (4 s) has passed, and sends it.
    smtp.wait_for(lambda: len(smtp.messages) >= 1, timeout=60)
    settle(workers)
    assert smtp.subjects() == [f"[Doodba Panel] DOWN: {env} is down"]
    row.refresh_from_db()
    assert row.status == "sent" and row.attempts == 2
    assert Incident.objects.get().closed_at is None


@pytest.mark.exclusive
def test_it_delivers_once_what_was_queued_while_redis_was_down(env: Any, workers: AlertWorkers) -> None:
    smtp, hooks = workers.smtp, workers.webhooks
    stop_redis()
    try:
        cycles(env, "failing", 3)  # the task messages cannot be queued: the rows wait in PostgreSQL
    finally:
        start_redis()
    assert set(Notification.objects.values_list("status", flat=True)) == {"pending"}
    # The workers reconnect and beat's sweep delivers each row once (Redis came back empty).
    smtp.wait_for(lambda: len(smtp.messages) >= 1, timeout=90)
    hooks.wait_for(lambda: len(hooks.requests) >= 1, timeout=90)
    settle(workers)
    assert smtp.subjects() == [f"[Doodba Panel] DOWN: {env} is down"]
    assert [body["event"] for body in hooks.bodies()] == ["incident.opened"]
    assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}
