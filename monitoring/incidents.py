"""Check results become incidents and notifications (stub: the incidents part of issue 9 writes the body)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from monitoring.models import CheckStatus
from panel.inventory.models import Environment


def observe(
    environment: Environment,
    name: str,
    status: CheckStatus | str,
    message: str,
    *,
    value: float | None = None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Record one result of the check ``name`` of ``environment`` (called by the poller once per check per cycle):
    update its ``CheckState``, open an incident after N consecutive failures and close it after M successes."""
