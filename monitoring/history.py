"""Uptime and history from samples and rollups (stub: the history part of issue 9 writes the bodies)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

WINDOWS = ("24h", "7d", "30d", "365d")


def uptime(environment_ids: Iterable[int], windows: Sequence[str] = WINDOWS) -> dict[int, dict[str, float | None]]:
    """Uptime (0..1, None when nothing was measured) per environment and window, in O(1) queries."""
    return {env_id: dict.fromkeys(windows) for env_id in environment_ids}


def daily_bars(environment_ids: Iterable[int], days: int = 90) -> dict[int, list[dict[str, Any]]]:
    """One bar per day (oldest first) per environment: ``{"day", "uptime", "down_minutes"}``, in O(1) queries."""
    return {env_id: [] for env_id in environment_ids}
