"""Live health on the dashboard and environment pages (stub: the dashboard part of issue 9 writes the body)."""

from __future__ import annotations

from collections.abc import Iterable


def environments_changed(environment_ids: Iterable[int]) -> None:
    """Push the new health of these environments to the pages watching them (called after each poll cycle)."""
