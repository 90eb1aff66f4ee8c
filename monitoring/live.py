"""Live health on the dashboard and environment pages.

After each server's poll cycle the poller calls ``environments_changed`` with the environments whose
``EnvironmentHealth`` changed. Their new health goes out as ONE channel-layer message per organization (the group
``health_group(organization_id)``), whatever the number of viewers: each socket (``monitoring.consumers``) filters
that message down to what its user may see (customers: state and uptime; staff: the response times, resources and
the servers' load and disk too). The push is best effort, like the job log's: a page that missed a message gets the
current health again when its socket reconnects or re-checks its access.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from typing import Any

from monitoring import history
from monitoring.models import EnvironmentHealth, HealthState, ServerHealth
from monitoring.services import health_message, health_state
from panel.inventory.models import Environment
from panel.jobs.publisher import publish

logger = logging.getLogger(__name__)

# The badge each health state wears (classes of static/css/panel.css and static/monitoring/monitoring.css).
STATE_CSS: dict[str, str] = {
    HealthState.UP: "ok",
    HealthState.DEGRADED: "unconfirmed",
    HealthState.DOWN: "problem",
    HealthState.UNKNOWN: "none",
    HealthState.MAINTENANCE: "queued",
}
# Problems first: the order of the dashboard's rows (lower first).
STATE_RANK: dict[str, int] = {
    HealthState.DOWN: 0,
    HealthState.DEGRADED: 1,
    HealthState.UNKNOWN: 2,
    HealthState.MAINTENANCE: 3,
    HealthState.UP: 4,
}
# What customers see of an environment's health; everything else of ``environment_payload`` is for staff.
CUSTOMER_KEYS = ("id", "state", "state_label", "css", "since", "uptime")
UPTIME_WINDOWS = history.WINDOWS


def health_group(organization_id: int) -> str:
    """The channel group of an organization's live health."""
    return f"monitoring.health.{organization_id}"


def state_label(state: str) -> str:
    """The words for a health state (``unknown`` for anything unexpected)."""
    try:
        return str(HealthState(state).label)
    except ValueError:
        return str(HealthState.UNKNOWN.label)


def environment_payload(
    environment_id: int, health: EnvironmentHealth | None, uptime: dict[str, float | None] | None
) -> dict[str, Any]:
    """An environment's health as the pages and sockets show it (JSON-ready). No health row yet: *unknown*."""
    state = health_state(health)
    return {
        "id": environment_id,
        "state": state,
        "state_label": state_label(state),
        "css": STATE_CSS.get(state, "none"),
        "since": health.since.isoformat() if health is not None else None,
        "uptime": {window: (uptime or {}).get(window) for window in UPTIME_WINDOWS},
        "message": health_message(health) if health is not None else "",
        "polled_at": health.polled_at.isoformat() if health is not None and health.polled_at else None,
        "http_ms": health.http_ms if health is not None else None,
        "websocket_ms": health.websocket_ms if health is not None else None,
        "cpu_percent": health.cpu_percent if health is not None else None,
        "memory_bytes": health.memory_bytes if health is not None else None,
        "restarts": health.restarts if health is not None else None,
    }


def server_payload(server_id: int, health: ServerHealth | None, organization_id: int | None = None) -> dict[str, Any]:
    """A server's newest poll as the dashboard shows it (staff only; customers never see servers).
    ``organization``: the server's own organization (a provider's), which decides who may be sent it."""
    if health is None:
        return {
            "id": server_id, "organization": organization_id, "reachable": None, "load1": None, "cpus": None,
            "disk_percent": None, "error": "",
        }  # fmt: skip
    disk = None
    if health.disk_used_bytes is not None and health.disk_total_bytes:
        disk = round(100 * health.disk_used_bytes / health.disk_total_bytes, 1)
    return {
        "id": server_id,
        "organization": organization_id,
        "reachable": health.reachable,
        "load1": health.load1,
        "cpus": health.cpus,
        "disk_percent": disk,
        "error": health.error[:300],
        "polled_at": health.polled_at.isoformat() if health.polled_at else None,
    }


def snapshot(environment_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Per organization: the health of these environments and of their servers, in a fixed number of queries
    (environments, their health, their servers' health, and ``history.uptime``'s own)."""
    ids = sorted(set(environment_ids))
    if not ids:
        return {}
    environments = list(
        Environment.objects.filter(pk__in=ids).values_list(
            "pk", "project__organization_id", "server_id", "server__organization_id"
        )
    )
    healths = {row.environment_id: row for row in EnvironmentHealth.objects.filter(environment_id__in=ids)}
    servers = {row[2] for row in environments}
    server_healths = {row.server_id: row for row in ServerHealth.objects.filter(server_id__in=servers)}
    uptimes = history.uptime([row[0] for row in environments], UPTIME_WINDOWS)
    by_org: dict[int, dict[str, Any]] = {}
    for pk, organization_id, server_id, server_org in environments:
        entry = by_org.setdefault(organization_id, {"environments": [], "servers": {}})
        entry["environments"].append(environment_payload(pk, healths.get(pk), uptimes.get(pk)))
        entry["servers"].setdefault(server_id, server_payload(server_id, server_healths.get(server_id), server_org))
    for entry in by_org.values():
        entry["servers"] = list(entry["servers"].values())
    return by_org


def environments_changed(environment_ids: Iterable[int]) -> None:
    """Push the new health of these environments to the pages watching them (called after each poll cycle).

    One message per organization concerned, never one per viewer; returns at once (the publisher's thread sends).
    A failure here must never break the poll cycle that called it: it is logged and dropped.
    """
    try:
        for organization_id, entry in snapshot(environment_ids).items():
            publish(health_group(organization_id), {"type": "health.update", "organization": organization_id, **entry})
    except Exception:  # best effort: pages catch up when their socket reconnects
        logger.warning("could not push live health", exc_info=True)


def for_viewer(
    entry: dict[str, Any], *, details: bool, server_orgs: Collection[int] = (), environment_id: int | None = None
) -> dict[str, Any]:
    """What one socket's user may see of an organization's message: customers get ``CUSTOMER_KEYS`` of each
    environment; servers only go to staff of the server's own organization (``server_orgs``: where the user sees
    details), and only on the dashboard; ``environment_id`` narrows it to one environment (its page)."""
    environments = entry.get("environments", [])
    if environment_id is not None:
        environments = [env for env in environments if env["id"] == environment_id]
    if not details:
        environments = [{key: env[key] for key in CUSTOMER_KEYS} for env in environments]
    servers = []
    if environment_id is None:
        servers = [server for server in entry.get("servers", []) if server.get("organization") in server_orgs]
    return {"type": "health", "environments": environments, "servers": servers}
