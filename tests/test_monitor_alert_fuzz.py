"""Schemathesis against the alert operations only (channels, maintenance windows, incidents), with ids mapped onto
objects that exist: no input answers a server error, every answer conforms to the schema. The whole-API fuzzer
(tests/test_api_fuzz.py) covers them too; this one also acts on existing channels, windows and incidents."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from django.utils import timezone

from monitoring import checks
from monitoring.incidents import observe
from monitoring.models import Incident, MaintenanceWindow, NotificationChannel
from panel.accounts.choices import TokenScope
from panel.accounts.services import create_token
from tests.test_api_fuzz import install_hooks, run_operation

pytestmark = pytest.mark.django_db(transaction=True)

PREFIXES = ("notification-channels", "maintenance-windows", "incidents")


@pytest.fixture
def alert_data(inventory: dict[str, Any], users: dict[str, Any], orgs: dict[str, Any]) -> dict[str, Any]:
    environment = inventory["env_a"]
    channels = [
        NotificationChannel.objects.create(
            organization=orgs["a1"], name="mail", kind="email", target="ops@example.com", environment=environment
        ),
        # Port 9 on loopback: nothing listens, a test message fails at once (no waiting on outside networks).
        NotificationChannel.objects.create(
            organization=orgs["a"], name="hook", kind="webhook", target="http://127.0.0.1:9/x", secret="s" * 20
        ),
    ]
    now = timezone.now()
    window = MaintenanceWindow.objects.create(organization=orgs["a"], starts_at=now, ends_at=now + timedelta(hours=1))
    for step in range(3):
        observe(environment, checks.AVAILABILITY, "failing", "down", at=now + timedelta(seconds=step))
    _, token = create_token(user=users["alice"], name="alert fuzz", scope=TokenScope.WRITE)
    ids = {
        "notification-channels": [channel.pk for channel in channels],
        "maintenance-windows": [window.pk],
        "incidents": [Incident.objects.get().pk],
    }
    fields = {"organization": [orgs["a"].pk, orgs["a1"].pk], "environment": [environment.pk]}
    return {"token": token, "ids": ids, "fields": fields}


def test_it_answers_every_alert_operation_without_a_server_error(
    live_server_url: str, alert_data: dict[str, Any], settings: Any
) -> None:
    schema = schemathesis.openapi.from_url(f"{live_server_url}/api/v1/schema/?format=json")
    install_hooks(schema, alert_data)
    operations = [
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().path.removeprefix("/api/v1/").split("/")[0] in PREFIXES
    ]
    # DELETE last, so that the other operations act on objects that still exist.
    operations.sort(key=lambda operation: operation.method.upper() == "DELETE")
    assert len(operations) >= 10, [operation.label for operation in operations]
    headers = {"Authorization": f"Bearer {alert_data['token']}"}
    failures: dict[str, list[str]] = {}
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            found = run_operation(operation, mode, live_server_url, headers)
            if found:
                failures[f"{operation.label} ({mode.value})"] = found[:3]
    assert not failures, "\n\n".join(f"{label}:\n" + "\n".join(found) for label, found in failures.items())
