"""Backups that run by themselves: the schedule fan-out, the overdue flag and retention pruning.

- ``run_schedules(now)`` (the periodic task ``backups.tasks.run_schedules``, every BACKUP_SCHEDULE_INTERVAL
  seconds): starts the scheduled backup of every environment whose schedule is due (``backups.schedule.is_due``
  since its last scheduled backup started), at most BACKUP_MAX_PER_SERVER running at once per server. An
  environment held by another job (a deploy) is left for the next run; a stored schedule that no longer validates
  is logged and skipped. Then it records the overdue flag (``record_overdue``).
- ``record_overdue(now)``: an environment whose newest verified backup is older than its schedule allows
  (``backups.schedule.overdue_since``) gets one ``backup.overdue`` monitoring event when it becomes overdue, and one
  ``backup.on_schedule`` event when a verified backup ends that period. It also starts the test restores that are
  due (``backups.testrestore.start_due_test_restores``).
- ``prune(now)`` (``backups.tasks.prune_backups``, every BACKUP_PRUNE_INTERVAL seconds): applies
  ``backups.retention.plan_retention`` to each environment: deletes the pruned backups' own objects, their rows,
  then the deduplicated filestore files that no remaining backup of the storage lists.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, Q

from backups import retention
from backups.locks import storage_lock
from backups.models import Backup, BackupKind, BackupSettings, BackupStatus, BackupStorage, FilestoreObject
from backups.schedule import is_due, overdue_since
from backups.services import backup_lock_key, settle_backups, start_backup
from backups.storage import StorageError, open_storage
from monitoring.models import Event
from panel.inventory.models import Environment
from panel.jobs.choices import ACTIVE_STATES, JobKind
from panel.jobs.models import Job
from panel.jobs.runner import JobFailed
from panel.jobs.services import QueueUnavailable, TargetBusy

logger = logging.getLogger(__name__)

EVENT_OVERDUE = "backup.overdue"
EVENT_ON_SCHEDULE = "backup.on_schedule"
#: Jobs that read a backup while they run: retention never prunes a backup one of them uses.
READING_KINDS = (JobKind.RESTORE, JobKind.COPY, JobKind.VERIFY, JobKind.TEST_RESTORE)


@dataclass
class ScheduleReport:
    """What one fan-out did, by environment id."""

    started: list[int] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)
    server_full: list[int] = field(default_factory=list)
    invalid: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    overdue: list[int] = field(default_factory=list)
    test_restores: list[int] = field(default_factory=list)


def _running_per_server() -> Counter[int]:
    """How many backup jobs are queued or running on each server."""
    counts: Counter[int] = Counter()
    rows = Job.objects.filter(kind=JobKind.BACKUP, status__in=ACTIVE_STATES).values_list(
        "environment__server_id", flat=True
    )
    for server_id in rows:
        if server_id is not None:
            counts[server_id] += 1
    return counts


def _last_scheduled(environment_ids: Iterable[int]) -> dict[int, datetime]:
    """When each environment's newest scheduled backup started (any outcome: a failed one waits for the next run)."""
    # An aggregate rather than DISTINCT ON: the one-machine launcher runs on SQLite.
    rows = (
        Backup.objects.filter(environment_id__in=list(environment_ids), kind=BackupKind.SCHEDULED)
        .values("environment_id")
        .order_by()
        .annotate(last=Max("started_at"))
        .values_list("environment_id", "last")
    )
    return dict(rows)


def run_schedules(now: datetime, *, actor: Any = None) -> ScheduleReport:
    """Start the backups that are due at ``now`` (see the module docstring), then record the overdue flag."""
    report = ScheduleReport()
    settle_backups()
    configs = list(
        BackupSettings.objects.exclude(schedule="")
        .select_related("environment__server", "environment__project__organization")
        .order_by("environment_id")
    )
    last = _last_scheduled(config.environment_id for config in configs)
    running = _running_per_server()
    limit = settings.BACKUP_MAX_PER_SERVER
    # The longest-waiting environments first, so that a full server serves them in turn.
    epoch = datetime.min.replace(tzinfo=now.tzinfo)
    configs.sort(key=lambda config: (last.get(config.environment_id) or epoch, config.environment_id))
    for config in configs:
        environment = config.environment
        try:
            due = is_due(config.schedule, config.time_zone, last.get(environment.pk), now)
        except ValidationError as exc:
            logger.warning(
                "environment %s (%s): its backup schedule %r in %s no longer validates, skipped: %s",
                environment.pk, environment, config.schedule, config.time_zone, "; ".join(exc.messages),
            )  # fmt: skip
            report.invalid.append(environment.pk)
            continue
        if not due:
            continue
        if running[environment.server_id] >= limit:
            report.server_full.append(environment.pk)
            continue
        try:
            start_backup(environment=environment, actor=actor, kind=BackupKind.SCHEDULED, trigger="schedule")
        except TargetBusy:
            report.busy.append(environment.pk)  # a deploy (or a backup) holds it: the next run tries again
            continue
        except (JobFailed, QueueUnavailable) as exc:
            logger.warning("environment %s: the scheduled backup could not start: %s", environment.pk, exc)
            report.failed.append(environment.pk)
            continue
        running[environment.server_id] += 1
        report.started.append(environment.pk)
    # The test restores that are due (``test_restore_schedule``), of each environment's newest good backup.
    from backups.testrestore import start_due_test_restores

    report.test_restores = start_due_test_restores(now, actor=actor)
    report.overdue = record_overdue(now, configs=configs)
    return report


def _newest_verified(environment_ids: Iterable[int]) -> dict[int, datetime]:
    """When each environment's newest verified good backup was taken."""
    rows = (
        Backup.objects.filter(
            environment_id__in=list(environment_ids), status=BackupStatus.GOOD, verified_at__isnull=False
        )
        .values("environment_id")
        .order_by()
        .annotate(newest=Max("started_at"))
        .values_list("environment_id", "newest")
    )
    return dict(rows)


def record_overdue(now: datetime, *, configs: list[BackupSettings] | None = None) -> list[int]:
    """Record the overdue flag as monitoring events (once per overdue period); returns the overdue environments.

    An environment that has never had a verified backup is not flagged while its first backup is younger than the
    grace (it is being taken); with no backup at all, or an older one, it is overdue.
    """
    if configs is None:
        configs = list(BackupSettings.objects.exclude(schedule="").select_related("environment__project__organization"))
    ids = [config.environment_id for config in configs]
    newest = _newest_verified(ids)
    grace = timedelta(minutes=settings.BACKUP_OVERDUE_GRACE_MINUTES)
    overdue: list[int] = []
    for config in configs:
        environment = config.environment
        verified_at = newest.get(environment.pk)
        try:
            since = overdue_since(config.schedule, config.time_zone, verified_at, now)
        except ValidationError:
            continue  # logged by the fan-out
        if since is not None and verified_at is None:
            first = Backup.objects.filter(environment=environment).order_by("started_at").first()
            if first is not None and now - first.started_at < grace:
                since = None
        last_flag = (
            Event.objects.filter(environment=environment, kind__in=(EVENT_OVERDUE, EVENT_ON_SCHEDULE))
            .order_by("-created_at", "-id")
            .values_list("kind", flat=True)
            .first()
        )
        if since is not None:
            overdue.append(environment.pk)
            if last_flag != EVENT_OVERDUE:
                newest_text = (
                    f"the newest verified backup was taken {verified_at:%Y-%m-%d %H:%M} UTC"
                    if verified_at is not None
                    else "it has no verified backup"
                )
                Event.objects.create(
                    organization=environment.project.organization,
                    environment=environment,
                    kind=EVENT_OVERDUE,
                    severity=Event.Severity.WARNING,
                    message=f"{environment}: backups are overdue since {since:%Y-%m-%d %H:%M} UTC; {newest_text}.",
                    created_at=now,
                )
        elif last_flag == EVENT_OVERDUE and verified_at is not None:
            Event.objects.create(
                organization=environment.project.organization,
                environment=environment,
                kind=EVENT_ON_SCHEDULE,
                severity=Event.Severity.INFO,
                message=(
                    f"{environment}: backups are on schedule again (verified backup of {verified_at:%Y-%m-%d %H:%M} "
                    "UTC)."
                ),
                created_at=now,
            )
    return overdue


# -- retention -----------------------------------------------------------------------------------------------------


@dataclass
class PruneReport:
    """What pruning did: backups and filestore objects deleted, environments skipped (by id) and why."""

    backups: list[int] = field(default_factory=list)
    filestore_objects: int = 0
    objects: int = 0
    skipped: dict[int, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def backups_in_use(environment: Environment) -> set[int]:
    """The environment's backups that an active restore, copy or verify job reads (``params.backup_id``), and the
    safety backup a restore took of its target (``params.safety_backup_id``: kept while the restore runs)."""
    ids = Job.objects.filter(kind__in=READING_KINDS, status__in=ACTIVE_STATES).values_list("params", flat=True)
    found = {
        int(params[name])
        for params in ids
        if isinstance(params, dict)
        for name in ("backup_id", "safety_backup_id")
        if str(params.get(name) or "").isdigit()
    }
    return set(Backup.objects.filter(environment=environment, pk__in=found).values_list("pk", flat=True))


def _environment_busy(environment: Environment) -> str:
    """Why the environment must not be pruned now ('' when it may)."""
    holder = Job.objects.filter(lock_key=backup_lock_key(environment), status__in=ACTIVE_STATES).first()
    if holder is not None:
        return f"{holder.get_kind_display()} #{holder.pk} holds it"
    if Backup.objects.filter(environment=environment, status=BackupStatus.RUNNING).exists():
        return "a backup is running"
    return ""


def _manifest_keys(backup: Backup, *, filestore: bool) -> set[str]:
    """The keys the backup's manifest lists: the shared filestore files, or its own objects."""
    entries = list(backup.manifest.get("objects", []))
    if backup.manifest.get("manifest_object"):
        entries.append(backup.manifest["manifest_object"])
    return {entry["key"] for entry in entries if entry.get("key") and (entry.get("role") == "filestore") == filestore}


def plan_environment(environment: Environment, now: datetime) -> retention.RetentionPlan:
    """The retention plan of one environment's backups at ``now``: the policy of the settings, with the
    environment's own count of daily backups and its schedule's time zone."""
    config = BackupSettings.objects.filter(environment=environment).first()
    overrides: dict[str, object] = {"daily": environment.backup_keep_daily}
    if config is not None:
        overrides["time_zone"] = config.time_zone
    policy = retention.RetentionPolicy.from_settings(**overrides)
    in_use = backups_in_use(environment)
    records = [
        retention.BackupRecord(
            id=backup.pk,
            taken_at=backup.started_at,
            verified=backup.status == BackupStatus.GOOD and backup.verified_at is not None,
            kind=backup.kind,
            in_use=backup.pk in in_use or backup.status == BackupStatus.RUNNING,
        )
        for backup in Backup.objects.filter(environment=environment).only(
            "pk", "started_at", "status", "verified_at", "kind"
        )
    ]
    return retention.plan_retention(records, policy, now=now)


def prune(now: datetime, *, environments: Iterable[Environment] | None = None) -> PruneReport:
    """Apply retention to every environment with backups (or ``environments``); see the module docstring.

    An environment held by a job (a backup, a deploy) or with a backup running is skipped until the next run.
    The filestore files of a storage are deleted only when no backup into that storage is running (a running backup
    may reuse a file without having listed it yet), and only those that no remaining backup of the storage lists.
    """
    report = PruneReport()
    settle_backups()
    everything = environments is None
    if environments is None:
        environments = Environment.objects.filter(backups__isnull=False).distinct().order_by("pk")
    touched_storages: dict[int, BackupStorage] = {}
    seen: list[int] = []
    for environment in environments:
        seen.append(environment.pk)
        busy = _environment_busy(environment)
        if busy:
            report.skipped[environment.pk] = busy
            continue
        plan = plan_environment(environment, now)
        if not plan.prune:
            continue
        for backup in Backup.objects.filter(pk__in=plan.prune).select_related("storage"):
            try:
                report.objects += _delete_own_objects(backup)
            except (StorageError, ValueError) as exc:
                # Kept (and tried again next time): a row without its objects would hide what is left in the store.
                report.errors.append(f"backup {backup.pk}: {exc}")
                logger.warning("pruning backup %s: %s", backup.pk, exc)
                continue
            touched_storages[backup.storage_id] = backup.storage
            pk = backup.pk
            backup.delete()
            report.backups.append(pk)
    # Every storage these environments back up into, touched now or not: files a running backup kept from being
    # deleted in an earlier run (or that an interrupted backup uploaded and never listed) go once it ended.
    scope = BackupStorage.objects.filter(Q(pk__in=touched_storages) | Q(backups__environment__in=seen))
    if everything:
        scope = BackupStorage.objects.filter(Q(pk__in=touched_storages) | Q(filestore_objects__isnull=False))
    for backup_storage in scope.distinct().order_by("pk"):
        report.filestore_objects += _delete_unlisted_files(backup_storage, report)
    return report


def _delete_own_objects(backup: Backup) -> int:
    """Delete the backup's own objects (everything under its key prefix: the dump, tars, manifest, and what an
    interrupted backup left there); the shared filestore files are not its own."""
    storage = open_storage(backup.storage)
    keys = _manifest_keys(backup, filestore=False) | {obj.key for obj in storage.list(backup.key_prefix + "/")}
    for key in sorted(keys):
        if key.startswith(backup.key_prefix + "/"):
            storage.delete(key)
    return len(keys)


def _delete_unlisted_files(backup_storage: BackupStorage, report: PruneReport) -> int:
    """Delete the filestore files of the storage that no remaining backup lists (none while one is running).

    All of it under the storage's lock (``backups.locks``), which a backup also takes while it claims the files it
    reuses: the check that no backup into the storage runs, the rows (committed first), then the objects. A backup
    that starts meanwhile waits for the lock, then no longer finds the rows and uploads those files again. (The rows
    go before the objects: the other order could leave a row, which every later backup trusts, without its object;
    this one at worst leaves an object without a row, which costs only space.)
    """
    storage_id = backup_storage.pk
    backups = Backup.objects.filter(storage_id=storage_id)
    running = Q(status=BackupStatus.RUNNING) | Q(job__status__in=ACTIVE_STATES, job__kind=JobKind.BACKUP)
    with storage_lock(storage_id):
        with transaction.atomic():
            if backups.filter(running).exists():
                report.errors.append(f"storage {storage_id}: a backup into it is running; its files are pruned later")
                return 0
            kept = [_manifest_keys(backup, filestore=True) for backup in backups.only("manifest")]
            listed = [obj.key for obj in FilestoreObject.objects.filter(storage_id=storage_id).only("key")]
            doomed = sorted(retention.files_to_delete(kept, [listed]))
            if not doomed:
                return 0
            FilestoreObject.objects.filter(storage_id=storage_id, key__in=doomed).delete()
        storage = open_storage(backup_storage)
        deleted = 0
        for key in doomed:
            if FilestoreObject.objects.filter(storage_id=storage_id, key=key).exists():
                continue  # stored again by something that does not take the lock: it is that row's object now
            try:
                storage.delete(key)
            except StorageError as exc:
                report.errors.append(f"{key}: {exc}")
                continue
            deleted += 1
    return deleted
