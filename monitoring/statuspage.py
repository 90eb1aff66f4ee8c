"""Customer status pages: one per organization (``StatusPage``), what it shows, who configures it, its public link.

What a page shows is built by ``status_data`` in a fixed number of queries whatever the number of environments
(environments with their health, uptime, daily bars, incidents and their timelines, last deployments, last good
backups: one query each). It is plain data (strings, numbers, dates): the HTML page, the public page and the API
all draw the same dict, and the public page caches it.

Nothing secret is on it: no server, host, IP, domain or container name, and no free text written by the poller or
the incident code (their messages may name servers); states, incident titles and timeline lines are words chosen
here from the state, the check's name and the update's kind.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import models, transaction
from django.db.models import Max, Prefetch
from django.utils import timezone

from monitoring import checks, history
from monitoring.models import HealthState, Incident, IncidentUpdate, StatusPage
from monitoring.services import health_state
from panel.accounts.models import Organization
from panel.accounts.services import record
from panel.inventory.choices import EnvironmentKind
from panel.inventory.models import Environment

UPTIME_WINDOWS = ("24h", "7d", "30d", "90d")
BAR_DAYS = 90
INCIDENT_DAYS = 90
MAX_INCIDENTS = 20

STATE_LABELS = {
    HealthState.UP: "Operational",
    HealthState.DEGRADED: "Degraded",
    HealthState.DOWN: "Down",
    HealthState.UNKNOWN: "No data",
    HealthState.MAINTENANCE: "Maintenance",
}
# What a failing check means to a customer (the incident's own title and messages may name servers).
CHECK_LABELS = {
    checks.AVAILABILITY: "Unavailable",
    checks.WEBSOCKET: "Live updates not working",
    checks.CRON_OVERDUE: "Scheduled tasks delayed",
    checks.CRON_FAILURES: "Scheduled tasks failing",
    checks.QUEUE_JOB: "Background jobs delayed",
    checks.BACKUP_AGE: "Backups overdue",
}
DEFAULT_CHECK_LABEL = "Degraded performance"
UPDATE_LABELS = {"opened": "Problem detected", "update": "Still being worked on", "closed": "Resolved"}
# Worst first: the page's overall state is the worst of its environments'.
_SEVERITY = [HealthState.DOWN, HealthState.DEGRADED, HealthState.MAINTENANCE, HealthState.UP, HealthState.UNKNOWN]


def page_for(organization: Organization) -> StatusPage:
    """The organization's status page (created with the defaults on first use)."""
    page, _ = StatusPage.objects.get_or_create(organization=organization)
    return page


def environments_of(page: StatusPage) -> models.QuerySet[Environment]:
    """The environments the page shows: the organization's production ones, all of them, or the chosen ones (only
    those still in the organization)."""
    queryset = Environment.objects.filter(project__organization_id=page.organization_id)
    if page.include == StatusPage.Include.PRODUCTION:
        queryset = queryset.filter(kind=EnvironmentKind.PRODUCTION)
    elif page.include == StatusPage.Include.SELECTED:
        queryset = queryset.filter(pk__in=page.environments.values("pk"))
    return queryset


def _uptime_label(value: float | None) -> str:
    if value is None:
        return "no data"
    return f"{value * 100:.2f} %"


def _bar_level(value: float | None) -> str:
    if value is None:
        return "none"
    if value >= 0.999:
        return "ok"
    if value >= 0.95:
        return "minor"
    return "major"


def _latest(model: Any, ids: list[int], field: str, **filters: Any) -> dict[int, datetime]:
    rows = (
        model.objects.filter(environment_id__in=ids, **filters)
        .values("environment_id")
        .annotate(latest=Max(field))
        .values_list("environment_id", "latest")
    )
    return {env_id: latest for env_id, latest in rows}


def status_data(page: StatusPage, *, now: datetime | None = None) -> dict[str, Any]:
    """Everything the status page shows, as plain data, in a fixed number of queries.

    ``environments``: name, project, kind, state (and its label, since when), uptime over 24 h / 7 d / 30 d / 90 d,
    90 daily bars, last successful deployment and last good backup; ``incidents``: the newest ``MAX_INCIDENTS``
    of the last 90 days (and any still open), not those opened during maintenance or a deploy, with their
    timelines; ``state``: the worst environment state.
    """
    from backups.models import Backup, BackupStatus
    from deployments.choices import DeploymentStatus
    from deployments.models import Deployment

    now = now or timezone.now()
    organization = page.organization
    environments = list(
        environments_of(page).select_related("project", "health").order_by("project__name", "name", "pk")
    )
    ids = [env.pk for env in environments]
    uptime = history.uptime(ids, UPTIME_WINDOWS, now=now) if ids else {}
    bars = history.daily_bars(ids, BAR_DAYS, now=now) if ids else {}
    deployed = _latest(Deployment, ids, "finished_at", status=DeploymentStatus.SUCCEEDED) if ids else {}
    backed_up = _latest(Backup, ids, "started_at", status=BackupStatus.GOOD) if ids else {}
    labels = {env.pk: f"{env.project.name} · {env.name}" for env in environments}

    rows: list[dict[str, Any]] = []
    states: list[str] = []
    for env in environments:
        health = getattr(env, "health", None)
        state = health_state(health, now)
        states.append(state)
        rows.append(
            {
                "id": env.pk,
                "name": env.name,
                "project": env.project.name,
                "label": labels[env.pk],
                "kind": env.kind,
                "state": state,
                "state_label": STATE_LABELS.get(HealthState(state), state),
                "since": health.since if health is not None else None,
                "uptime": dict(uptime.get(env.pk, {})),
                "uptime_labels": {w: _uptime_label(v) for w, v in uptime.get(env.pk, {}).items()},
                "bars": [
                    {
                        "day": bar["day"],
                        "uptime": bar["uptime"],
                        "down_minutes": bar["down_minutes"],
                        "level": _bar_level(bar["uptime"]),
                        "label": f"{bar['day'].isoformat()}: {_uptime_label(bar['uptime'])}"
                        + (f", {bar['down_minutes']} min down" if bar["down_minutes"] else ""),
                    }
                    for bar in bars.get(env.pk, [])
                ],
                "last_deployed_at": deployed.get(env.pk),
                "last_backup_at": backed_up.get(env.pk),
            }
        )

    incidents: list[dict[str, Any]] = []
    if ids:
        timeline = IncidentUpdate.objects.filter(kind__in=list(UPDATE_LABELS)).order_by("at", "pk")
        found = (
            Incident.objects.filter(environment_id__in=ids, suppressed=False)
            .filter(models.Q(closed_at__isnull=True) | models.Q(opened_at__gte=now - timedelta(days=INCIDENT_DAYS)))
            .order_by("-opened_at", "-pk")
            .prefetch_related(Prefetch("updates", queryset=timeline))[:MAX_INCIDENTS]
        )
        for incident in found:
            what = CHECK_LABELS.get(incident.check_name, DEFAULT_CHECK_LABEL)
            incidents.append(
                {
                    "id": incident.pk,
                    "environment": incident.environment_id,
                    "title": f"{labels[incident.environment_id]}: {what}",
                    "check": incident.check_name,
                    "open": incident.closed_at is None,
                    "opened_at": incident.opened_at,
                    "closed_at": incident.closed_at,
                    "updates": [
                        {"at": update.at, "kind": update.kind, "text": UPDATE_LABELS[update.kind]}
                        for update in incident.updates.all()
                    ],
                }
            )

    overall = next((s for s in _SEVERITY if s in states), HealthState.UNKNOWN)
    return {
        "organization": {"id": organization.pk, "name": organization.name},
        "title": page.title or f"{organization.name} status",
        "state": overall,
        "state_label": STATE_LABELS.get(HealthState(overall), overall),
        "generated_at": now,
        "windows": list(UPTIME_WINDOWS),
        "environments": rows,
        "incidents": incidents,
    }


def _cache_key(page_id: int) -> str:
    return f"monitoring:status-page:{page_id}"


def cached_status_data(page: StatusPage) -> dict[str, Any]:
    """``status_data`` through the Django cache for ``MONITOR_STATUS_CACHE_SECONDS`` (public pages: a burst of
    visitors costs one build)."""
    if settings.MONITOR_STATUS_CACHE_SECONDS <= 0:
        return status_data(page)
    key = _cache_key(page.pk)
    data = cache.get(key)
    if data is None:
        data = status_data(page)
        cache.set(key, data, settings.MONITOR_STATUS_CACHE_SECONDS)
    return data


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def page_for_token(token: str) -> StatusPage | None:
    """The page whose public link ``token`` is (None for an unknown, revoked or malformed one).

    The link is looked up by the SHA-256 of the token: only the hash is stored, and the database compares hashes
    of 256-bit random values, so timing reveals nothing usable.
    """
    if not token or len(token) > 100:
        return None
    return (
        StatusPage.objects.select_related("organization")
        .filter(public_token_hash=_hash_token(token))
        .exclude(public_token_hash="")
        .first()
    )


def configure(
    *, page: StatusPage, actor: Any, title: str, include: str, environments: Iterable[Environment] = ()
) -> StatusPage:
    """Change what a page shows (owners and operators; the caller checks). ``environments`` counts with
    ``include="selected"`` only and must belong to the page's organization (others are dropped)."""
    chosen = [env for env in environments if env.project.organization_id == page.organization_id]
    with transaction.atomic():
        page.title = title.strip()[:200]
        page.include = StatusPage.Include(include)
        page.updated_at = timezone.now()
        page.save(update_fields=["title", "include", "updated_at"])
        page.environments.set(chosen)
    cache.delete(_cache_key(page.pk))
    record(
        action="status_page.configured",
        actor=actor,
        obj=page.organization,
        detail={"include": page.include, "environments": [env.pk for env in chosen]},
    )
    return page


def create_public_link(*, page: StatusPage, actor: Any) -> str:
    """A new public link token for the page, returned once (only its hash is stored); any older link stops
    working."""
    token = secrets.token_urlsafe(32)
    page.public_token_hash = _hash_token(token)
    page.public_since = timezone.now()
    page.save(update_fields=["public_token_hash", "public_since"])
    record(action="status_page.public_link_created", actor=actor, obj=page.organization, security=False)
    return token


def revoke_public_link(*, page: StatusPage, actor: Any) -> bool:
    """Stop the page's public link at once; False if it had none."""
    had = bool(page.public_token_hash)
    page.public_token_hash = ""
    page.public_since = None
    page.save(update_fields=["public_token_hash", "public_since"])
    cache.delete(_cache_key(page.pk))
    if had:
        record(action="status_page.public_link_revoked", actor=actor, obj=page.organization)
    return had
