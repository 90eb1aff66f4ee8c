"""A poll too old to be true: every reader says *unknown* (with why), not the state the last poll stored.

A stopped monitoring worker must not leave the dashboard, the environment API, the status page and /metrics saying
*up* for hours.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from monitoring.models import EnvironmentHealth

pytestmark = pytest.mark.django_db


@pytest.fixture
def polling(settings: Any) -> None:
    settings.MONITOR_INTERVAL = 30
    settings.MONITOR_SERVER_TIMEOUT = 25.0
    settings.MONITOR_STALE_SECONDS = 0  # 3 cycles + the cycle limit: 115 s
    settings.MONITOR_METRICS_TOKEN = "metrics-token"


def _seed(environment: Any, polled_ago: timedelta) -> None:
    EnvironmentHealth.objects.update_or_create(
        environment=environment,
        defaults={"state": "up", "message": "", "polled_at": timezone.now() - polled_ago},
    )


def _views(users: dict[str, Any], inventory: dict[str, Any]) -> dict[str, str]:
    env = inventory["env_a"]
    api = APIClient()
    api.force_authenticate(users["alice"])
    health = api.get(f"/api/v1/environments/{env.pk}/health/").json()
    listed = api.get(f"/api/v1/environments/{env.pk}/").json()
    carol = Client()
    carol.force_login(users["carol"])
    page = carol.get(f"/status/{env.project.organization_id}/").content.decode()
    metrics = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token").content.decode()
    line = next(line for line in metrics.splitlines() if line.startswith("panel_environment_state{") and " 1.0" in line)
    return {
        "health": health["state"],
        "message": health["message"],
        "field": listed["health_state"],
        "status_page": "up" if 'data-state="up"' in page else "unknown" if 'data-state="unknown"' in page else "?",
        "metrics": line.split('state="')[1].split('"')[0],
    }


def test_a_fresh_poll_is_believed_and_a_stale_one_is_unknown_everywhere(
    polling: None, users: dict[str, Any], inventory: dict[str, Any]
) -> None:
    _seed(inventory["env_a"], timedelta(seconds=20))
    fresh = _views(users, inventory)
    assert (fresh["health"], fresh["field"], fresh["status_page"], fresh["metrics"]) == ("up",) * 4

    _seed(inventory["env_a"], timedelta(minutes=10))
    stale = _views(users, inventory)
    assert (stale["health"], stale["field"], stale["status_page"], stale["metrics"]) == ("unknown",) * 4
    assert stale["message"].startswith("Not polled since") and "monitoring worker" in stale["message"]


def test_with_polling_off_the_stored_state_stands(settings: Any, users: dict[str, Any], inventory: dict[str, Any]):
    settings.MONITOR_INTERVAL = 0
    settings.MONITOR_METRICS_TOKEN = "metrics-token"
    _seed(inventory["env_a"], timedelta(days=3))
    assert _views(users, inventory)["health"] == "up"
