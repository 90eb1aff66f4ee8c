"""Check results become incidents, incidents become notifications, and the timeline of an environment.

The poller calls ``observe()`` once per check per cycle. Every state change is a single conditional SQL statement
whose one winner goes on (the healthchecks way), so several monitoring workers observing at once never open two
incidents nor send a message twice, and since the state lives in the database a restarted worker re-sends nothing:

- the counters of ``CheckState`` move by ``UPDATE ... SET consecutive_failures = consecutive_failures + 1`` (one
  statement, the row lock orders concurrent observers);
- ``MONITOR_FAIL_THRESHOLD`` consecutive failures open an ``Incident``: the partial unique constraint (one open
  incident per environment and check) lets exactly one ``INSERT`` succeed, and only that one notifies;
- ``MONITOR_RECOVER_THRESHOLD`` consecutive successes close it with ``UPDATE ... WHERE closed_at IS NULL``: the one
  update that changed a row notifies;
- ``unknown`` results (the server could not be polled) touch no counter: an unreachable server never opens a
  "down" incident and never closes one either.

A ``warning`` is not a failure (it shows on the check and counts towards recovery). While a maintenance window
covers the environment, or a deploy or restore changes it, an incident is still recorded but marked
``suppressed`` and nothing is sent; if it is still failing once that ends, it stops being suppressed and the
"opened" message goes out then (a deploy that broke the site is reported).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from monitoring import checks
from monitoring.models import CheckState, CheckStatus, Event, Incident, IncidentUpdate, MaintenanceWindow
from panel.inventory.models import Environment

logger = logging.getLogger(__name__)

# What an incident of each check is called (``{env}`` is the environment); other checks use the generic title.
TITLES = {
    checks.AVAILABILITY: "{env} is down",
    checks.WEBSOCKET: "{env}: the websocket port (8072) fails",
    checks.CRON_OVERDUE: "{env}: crons are overdue",
    checks.CRON_FAILURES: "{env}: crons fail",
    checks.QUEUE_JOB: "{env}: queue_job backlog",
    checks.SERVER_DISK: "{env}: the server's disk is nearly full",
    checks.BACKUP_AGE: "{env}: no recent verified backup",
}


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
    at = at or timezone.now()
    status = CheckStatus(status)
    counters = _record_result(environment, name, status, message, value, details, at)
    if counters is None:
        return  # unknown: neither down nor recovered
    failures, successes = counters
    if status == CheckStatus.FAILING:
        if failures >= settings.MONITOR_FAIL_THRESHOLD:
            _failing(environment, name, message, at)
    # Healthy checks look for an incident to close when they reach the threshold (the one observer that counted
    # it), and again now and then as a safety net, not every cycle: steady state costs one statement per check.
    elif successes == settings.MONITOR_RECOVER_THRESHOLD or (
        successes > settings.MONITOR_RECOVER_THRESHOLD and successes % RECOVER_RECHECK_EVERY == 0
    ):
        close_incident(environment, name, message, at)


# An OK check past its recovery threshold re-checks for an open incident this often (in cycles).
RECOVER_RECHECK_EVERY = 20

_UPDATE_SQL = """
UPDATE monitoring_checkstate SET
    status = %(status)s, message = %(message)s, value = %(value)s, checked_at = %(at)s,
    details = COALESCE(%(details)s{jsonb}, details),
    changed_at = CASE WHEN status <> %(status)s THEN %(at)s ELSE changed_at END,
    consecutive_failures = CASE WHEN %(counted)s AND %(failing)s THEN consecutive_failures + 1
                                WHEN %(counted)s THEN 0 ELSE consecutive_failures END,
    consecutive_successes = CASE WHEN %(counted)s AND NOT %(failing)s THEN consecutive_successes + 1
                                 WHEN %(counted)s THEN 0 ELSE consecutive_successes END
WHERE environment_id = %(environment)s AND name = %(name)s
RETURNING consecutive_failures, consecutive_successes
"""


def _record_result(
    environment: Environment,
    name: str,
    status: CheckStatus,
    message: str,
    value: float | None,
    details: dict[str, Any] | None,
    at: datetime,
) -> tuple[int, int] | None:
    """Store the result and move the counters in one ``UPDATE ... RETURNING`` (the row lock orders concurrent
    observers; each reads its own increment). Returns (failures, successes) in a row, or None for unknown."""
    params = {
        "status": str(status), "message": message, "value": value, "at": at,
        "details": json.dumps(details) if details is not None else None,
        "counted": status != CheckStatus.UNKNOWN, "failing": status == CheckStatus.FAILING,
        "environment": environment.pk, "name": name,
    }  # fmt: skip
    # SQLite (3.35+) has RETURNING too; its JSON column is text, PostgreSQL's jsonb wants the cast.
    sql = _UPDATE_SQL.replace("{jsonb}", "::jsonb" if connection.vendor == "postgresql" else "")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
        if row is None:  # the check's first result: create its row (a concurrent first one may win), then count
            CheckState.objects.get_or_create(environment=environment, name=name, defaults={"changed_at": at})
            cursor.execute(sql, params)
            row = cursor.fetchone()
    if status == CheckStatus.UNKNOWN:
        return None
    return int(row[0]), int(row[1])


def _failing(environment: Environment, name: str, message: str, at: datetime) -> None:
    """A check past its failure threshold: open its incident, or keep the open one current."""
    incident = Incident.objects.filter(environment=environment, check_name=name, closed_at__isnull=True).first()
    if incident is None:
        open_incident(environment, name, message, at)
        return
    if incident.message != message:
        # A new reason is a line on the timeline (the same reason every cycle is not).
        if (
            Incident.objects.filter(pk=incident.pk, closed_at__isnull=True)
            .exclude(message=message)
            .update(message=message)
        ):
            IncidentUpdate.objects.create(incident=incident, at=at, kind="update", message=message)
    if incident.suppressed and suppression(environment, at) is None:
        lift_suppression(incident, at)


def suppression(environment: Environment, at: datetime | None = None) -> str | None:
    """Why alerts of ``environment`` are held back at ``at`` (a maintenance window, a deploy, restore, stop, start,
    restart or destroy in progress, or an environment an operator stopped or destroyed), or None."""
    from panel.inventory.choices import EnvironmentState
    from panel.inventory.services import environment_state

    at = at or timezone.now()
    window = (
        MaintenanceWindow.objects.filter(organization_id=environment.project.organization_id)
        .filter(Q(environment__isnull=True) | Q(environment=environment), starts_at__lte=at, ends_at__gt=at)
        .order_by("ends_at")
        .first()
    )
    if window is not None:
        return f"Maintenance window until {window.ends_at:%Y-%m-%d %H:%M} UTC" + (
            f": {window.reason}" if window.reason else "."
        )
    state = environment_state(environment)
    if state.code in (EnvironmentState.DEPLOYING, EnvironmentState.RESTORING, EnvironmentState.CHANGING):
        return f"{state.label.capitalize()}: {state.detail}"
    if state.code in (EnvironmentState.STOPPED, EnvironmentState.DESTROYED):
        return f"{state.label.capitalize()} on purpose: {state.detail}"
    return None


def title_for(environment: Environment, name: str) -> str:
    """The incident's title for the check ``name``."""
    return TITLES.get(name, "{env}: check " + name + " fails").format(env=environment)[:300]


def open_incident(environment: Environment, name: str, message: str, at: datetime) -> Incident | None:
    """Open the incident of check ``name`` unless one is open: the partial unique constraint lets exactly one
    concurrent caller in, and only that caller records the timeline and queues the "opened" notifications.
    Returns the new incident, or None when another caller (or an earlier cycle) had opened it."""
    reason = suppression(environment, at)
    try:
        with transaction.atomic():
            incident = Incident.objects.create(
                organization_id=environment.project.organization_id,
                environment=environment,
                check_name=name,
                title=title_for(environment, name),
                message=message,
                severity=Event.Severity.CRITICAL if name == checks.AVAILABILITY else Event.Severity.WARNING,
                opened_at=at,
                suppressed=reason is not None,
            )
            IncidentUpdate.objects.create(incident=incident, at=at, kind="opened", message=message)
            if reason is not None:
                IncidentUpdate.objects.create(incident=incident, at=at, kind="note", message=f"No alerts: {reason}")
            else:
                _notify(incident, "opened")
    except IntegrityError:
        return None  # another worker opened it first; it notifies
    logger.info("incident %s opened: %s", incident.pk, incident.title)
    return incident


def lift_suppression(incident: Incident, at: datetime) -> bool:
    """A suppressed incident still failing after its maintenance or deploy ended: alert now (one winner)."""
    with transaction.atomic():
        won = Incident.objects.filter(pk=incident.pk, closed_at__isnull=True, suppressed=True).update(suppressed=False)
        if won:
            IncidentUpdate.objects.create(
                incident=incident, at=at, kind="note", message="Still failing after the maintenance or change ended."
            )
            incident.suppressed = False
            _notify(incident, "opened")
    return bool(won)


def close_incident(environment: Environment, name: str, message: str, at: datetime) -> Incident | None:
    """Close the open incident of check ``name``: ``UPDATE ... WHERE closed_at IS NULL``; the caller whose
    update changed the row records the recovery and queues the "closed" notifications (none if suppressed)."""
    incident = Incident.objects.filter(environment=environment, check_name=name, closed_at__isnull=True).first()
    if incident is None:
        return None
    with transaction.atomic():
        if not Incident.objects.filter(pk=incident.pk, closed_at__isnull=True).update(closed_at=at):
            return None
        incident.closed_at = at
        IncidentUpdate.objects.create(incident=incident, at=at, kind="closed", message=message or "Recovered.")
        if not incident.suppressed:
            _notify(incident, "closed")
    logger.info("incident %s closed", incident.pk)
    return incident


def reminder_interval() -> timedelta | None:
    """How long an open incident waits between reminders (None: reminders are off). Never shorter than
    ``MONITOR_REMINDER_MIN_MINUTES``, whatever ``MONITOR_REMINDER_MINUTES`` says."""
    minutes = settings.MONITOR_REMINDER_MINUTES
    if minutes <= 0:
        return None
    return timedelta(minutes=max(minutes, settings.MONITOR_REMINDER_MIN_MINUTES))


def send_reminders(now: datetime | None = None) -> int:
    """Remind about every open, unsuppressed incident whose last message (opening or reminder) is older than the
    reminder interval. Each reminder is claimed by one conditional update (so two beat runs send it once) and is
    numbered (``Notification.sequence``). Returns how many reminders were queued."""
    interval = reminder_interval()
    if interval is None:
        return 0
    now = now or timezone.now()
    due = now - interval
    queued = 0
    candidates = Incident.objects.filter(closed_at__isnull=True, suppressed=False).filter(
        Q(last_reminded_at__isnull=True, opened_at__lte=due) | Q(last_reminded_at__lte=due)
    )
    for incident in candidates.select_related("environment__project"):
        with transaction.atomic():
            won = (
                Incident.objects.filter(pk=incident.pk, closed_at__isnull=True, suppressed=False)
                .filter(Q(last_reminded_at__isnull=True, opened_at__lte=due) | Q(last_reminded_at__lte=due))
                .update(last_reminded_at=now, reminders_sent=F("reminders_sent") + 1)
            )
            if not won:
                continue
            incident.refresh_from_db(fields=["reminders_sent", "last_reminded_at", "message"])
            IncidentUpdate.objects.create(
                incident=incident, at=now, kind="reminder", message=f"Reminder {incident.reminders_sent}: still open."
            )
            _notify(incident, "reminder", sequence=incident.reminders_sent)
            queued += 1
    return queued


def _notify(incident: Incident, kind: str, sequence: int = 0) -> None:
    from monitoring.notify import queue_notifications

    queue_notifications(incident, kind, sequence=sequence)


# The timeline ----------------------------------------------------------------------------------------------------


class TimelineEvent(TypedDict):
    """One thing that happened to an environment, for chart markers and status pages.

    ``kind``: ``incident``, or a job kind (``deploy``, ``rollback``, ``backup``, ``restore``, ``copy``,
    ``test_restore``). ``outcome``: ``opened`` / ``closed`` for incidents, the job's terminal status otherwise
    (``succeeded``, ``failed``, ``canceled``, ``interrupted``). ``ok``: the event is good news. ``detail`` is for
    staff (the incident's message, the job's reason); a customer-facing page shows ``title`` only.
    """

    at: datetime
    environment_id: int
    kind: str
    outcome: str
    ok: bool
    title: str
    detail: str
    incident_id: int | None
    job_id: int | None


TIMELINE_JOB_KINDS = ("deploy", "rollback", "backup", "restore", "copy", "test_restore")


def timeline(
    environment_ids: Iterable[int], since: datetime, *, until: datetime | None = None, limit: int = 1000
) -> list[TimelineEvent]:
    """Incidents (opened, closed) and the ended deploy, rollback, backup and restore jobs of these environments
    between ``since`` and ``until`` (default now), oldest first, at most ``limit`` (the newest are kept). Two
    queries whatever the number of environments. Failed jobs are events like the others (``ok`` False)."""
    from panel.jobs.choices import JobStatus
    from panel.jobs.models import Job

    ids = list(environment_ids)
    until = until or timezone.now()
    events: list[TimelineEvent] = []
    incidents = (
        Incident.objects.filter(environment_id__in=ids)
        .filter(Q(opened_at__range=(since, until)) | Q(closed_at__range=(since, until)))
        .only("id", "environment_id", "title", "message", "opened_at", "closed_at", "check_name")
        .order_by("-opened_at")[:limit]
    )
    for incident in incidents:
        if since <= incident.opened_at <= until:
            events.append(_incident_event(incident, "opened", incident.opened_at))
        if incident.closed_at is not None and since <= incident.closed_at <= until:
            events.append(_incident_event(incident, "closed", incident.closed_at))
    jobs = (
        Job.objects.filter(
            environment_id__in=ids,
            kind__in=TIMELINE_JOB_KINDS,
            finished_at__range=(since, until),
            status__in=[JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.INTERRUPTED],
        )
        .only("id", "environment_id", "kind", "status", "reason", "finished_at")
        .order_by("-finished_at")[:limit]
    )
    for job in jobs:
        assert job.finished_at is not None and job.environment_id is not None
        ok = job.status == JobStatus.SUCCEEDED
        events.append(
            TimelineEvent(
                at=job.finished_at,
                environment_id=job.environment_id,
                kind=job.kind,
                outcome=job.status,
                ok=ok,
                title=f"{job.get_kind_display()} {job.get_status_display().lower()}",
                detail="" if ok else job.reason,
                incident_id=None,
                job_id=job.pk,
            )
        )
    events.sort(key=lambda event: (event["at"], event["kind"]))
    return events[-limit:]


def _incident_event(incident: Incident, outcome: str, at: datetime) -> TimelineEvent:
    return TimelineEvent(
        at=at,
        environment_id=incident.environment_id,
        kind="incident",
        outcome=outcome,
        ok=outcome == "closed",
        title=incident.title if outcome == "opened" else f"Resolved: {incident.title}",
        detail=incident.message,
        incident_id=incident.pk,
        job_id=None,
    )
