"""Pre-deploy backups: the dump a deploy takes before its update, stored as a backup of kind ``pre-deploy``.

A deploy that updates an existing database first dumps it to the server (``deployments.pipeline.Pipeline.
snapshot_database``, the ``Snapshot database`` step); its automatic rollback restores that file. When the
environment has backup settings, the hook registered here (``deployments.hooks``, from ``BackupsConfig.ready()``)
makes that very dump a full backup unit, inside the deploy job and its hold, with the backup job's own code
(``backups.services.run_backup`` and ``BackupRun``, steps prefixed ``Pre-deploy backup:``):

- the dump is not taken again: the file on the server is streamed (``cat``) into the storage, and must be the
  size the snapshot step measured and start like a custom-format archive;
- then as every backup: ``pg_restore --list`` in the db container reads it back from the storage, the filestore
  is stored with deduplication, the manifest is written, and the backup is recorded ``good`` only after all that.
  The manifest names the deployment and the snapshot's path, and the pg_dump that really made the dump (the odoo
  image's, read from the dump's header) rather than the db container's.

**When storing it fails** (the storage is down, the filestore cannot be read) the backup is recorded failed with the
reason, the job log and a ``backup.pre_deploy_failed`` monitoring event say so, and **the deploy goes on**: the dump
on the server still protects its rollback exactly as before backups existed, and a storage outage must not block
a deploy (a fix, often). A cancel request or a lost hold ends the deploy as in any step. An environment without
backup settings deploys exactly as before.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from backups.models import Backup, BackupKind, BackupSettings
from backups.services import (
    BACKUP_RUNS,
    BackupFailed,
    BackupRun,
    _object_entry,
    _rate,
    run_backup,
)
from deployments.models import Deployment
from deployments.pipeline import Pipeline
from monitoring.models import Event
from panel.jobs.runner import JobContext, JobFailed
from panel.remote import RemoteError, StreamResult

HOOK_NAME = "backups.pre_deploy"
EVENT_FAILED = "backup.pre_deploy_failed"
DUMPED_BY_RE = re.compile(r"Dumped by pg_dump version: *(\S+)")
COMPRESSION_RE = re.compile(r"Compression: *(\S+)")


@dataclass
class PreDeployRun(BackupRun):
    """``BackupRun`` whose dump is the deploy's snapshot on the server, read from the deploy job's deployment."""

    step_prefix = "Pre-deploy backup: "
    dump_step = "Store the deploy's dump"
    deployment: Deployment = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.deployment = Deployment.objects.get(pk=self.context.job.params["deployment_id"])
        if not (self.deployment.db_snapshot or {}).get("path"):
            raise BackupFailed(f"Deployment #{self.deployment.pk} took no database dump to store.")

    def facts(self) -> dict[str, Any]:
        """The backup's facts, and which deployment's snapshot this is."""
        facts = super().facts()
        facts["snapshot"] = {
            "deployment": self.deployment.pk,
            "commit": self.deployment.commit,
            "path": self.deployment.db_snapshot["path"],
            "bytes": self.deployment.db_snapshot.get("bytes"),
        }
        return facts

    def dump(self, facts: dict[str, Any]) -> dict[str, Any]:
        """Stream the snapshot file into the storage: exactly its measured size, a custom-format archive."""
        path = self.deployment.db_snapshot["path"]
        size = int(self.deployment.db_snapshot.get("bytes") or 0)
        self.context.write(f"Storing the deploy's dump {path} ({size / 1e6:.1f} MB); it is not dumped again.")
        started = time.monotonic()

        def is_the_snapshot(result: StreamResult, written: int, archive: bool) -> None:
            if written != size or not archive:
                raise BackupFailed(
                    f"{path} is not the dump the snapshot step wrote ({written} bytes read, {size} expected, "
                    f"{'a' if archive else 'not a'} custom-format archive)."
                )

        stored, result = self.stream_dump(
            ["cat", "--", path], f"Reading {path}", "Storing the deploy's dump", expected=size, check=is_the_snapshot,
            writer_options={"expected_size": size, "exact": True},
        )  # fmt: skip
        self.context.write(f"Stored the deploy's dump: {_rate(result.bytes_out, time.monotonic() - started)}.")
        entry = _object_entry(stored, "database", compression="pg_dump's default")
        self.objects.append(entry)
        return entry

    def check_dump(self, facts: dict[str, Any], entry: dict[str, Any]) -> int:
        """``pg_restore --list`` accepts it, as for every backup; the manifest then names the pg_dump that made it
        (the odoo image's: the snapshot runs pg_dump there) and its compression, from the dump's own header."""
        count = super().check_dump(facts, entry)
        header = "\n".join(self.dump_header)
        dumped_by = DUMPED_BY_RE.search(header)
        major = re.match(r"(\d+)", dumped_by.group(1)) if dumped_by else None
        if dumped_by and major:
            facts["postgresql"]["pg_dump_version"] = f"pg_dump (PostgreSQL) {dumped_by.group(1)}"
            facts["postgresql"]["pg_dump_major"] = int(major.group(1))
        compression = COMPRESSION_RE.search(header)
        if compression:
            entry["compression"] = compression.group(1)
        return count


def store_pre_deploy_backup(context: JobContext, pipeline: Pipeline, deployment: Deployment) -> None:
    """The ``after_snapshot`` hook: store the deploy's dump as a pre-deploy backup when the environment has backup
    settings (see the module docstring for what a failure does)."""
    environment = pipeline.environment
    config = BackupSettings.objects.select_related("storage").filter(environment=environment).first()
    if config is None:
        return
    now = timezone.now()
    backup = Backup.objects.create(
        environment=environment, storage=config.storage, kind=BackupKind.PRE_DEPLOY, job=context.job,
        key_prefix=f"backups/{environment.compose_project}/{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}",
        started_at=now, reason=f"Before deployment #{deployment.pk} ({deployment.short_commit}).",
    )  # fmt: skip
    context.write(f"Storing the dump as pre-deploy backup #{backup.pk} in {config.storage.name}.")
    # run_backup reads the backup to take from the job's params: in memory only, for the time of the call.
    params = context.job.params
    params["backup_id"] = backup.pk
    try:
        run_backup(context)
    except (JobFailed, RemoteError) as exc:
        status = Backup.objects.filter(pk=backup.pk).values_list("status", flat=True).first()
        message = (
            f"Pre-deploy backup #{backup.pk} of {environment} failed ({exc}); it is recorded {status or 'failed'}, "
            f"never good. The deploy goes on: the dump on the server ({deployment.db_snapshot['path']}) still "
            "protects its rollback."
        )
        context.write(f"⚠ {message}")
        Event.objects.create(
            organization=environment.project.organization, environment=environment, deployment=deployment,
            kind=EVENT_FAILED, severity=Event.Severity.WARNING, message=message,
        )  # fmt: skip
        return
    finally:
        params.pop("backup_id", None)
    context.write(f"Pre-deploy backup #{backup.pk} is good; the deploy's rollback still uses the dump on the server.")


def register() -> None:
    """Called by ``BackupsConfig.ready()``: the hook after each deploy's snapshot, and the pre-deploy job work."""
    from deployments import hooks

    BACKUP_RUNS[BackupKind.PRE_DEPLOY] = PreDeployRun
    hooks.register_after_snapshot(HOOK_NAME, store_pre_deploy_backup)


__all__ = ["EVENT_FAILED", "PreDeployRun", "register", "store_pre_deploy_backup"]
