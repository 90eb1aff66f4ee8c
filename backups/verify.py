"""The *Verify* job (job kind ``verify``): read every object of a backup back from its storage and check it.

- every object the manifest lists (the dump, the tars, each filestore file, the manifest itself): its stored size
  and SHA-256, and for an encrypted object the decrypted size and SHA-256 (every segment authenticated);
- each content-named filestore file: the SHA-1 of its content is the name it is stored under, computed while
  it streams;
- the dump: ``pg_restore --list`` on the panel host reads it as it streams (no database server is needed for
  that). It is skipped, and the job log says so, when the panel host has no ``pg_restore`` or an older one than
  the pg_dump that made the dump; the backup job already ran ``pg_restore --list`` in the environment's db
  container when it took the backup.

Verify needs no SSH and never touches the environment: it holds only the backup (``backup:<id>``), so it runs
next to deploys and backups. ``Backup.verify_status`` says how the last one went (``running``, ``passed``,
``failed``; "" never verified) and ``Backup.verify_reason`` why it failed. Success sets ``Backup.verified_at``. Any
problem clears it (the backup is no longer trusted: retention does not count it as verified, and the overdue flag
sees it) and records the problems in ``verify_reason`` and ``Backup.reason``; the job fails with them. A verify whose
job ended without saying (the worker was killed) is recorded failed by ``settle_checks``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from typing import IO, Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from backups.models import Backup, BackupStatus, CheckStatus
from backups.storage import CHUNK, Storage, StorageError, StoredObject, open_storage
from panel.accounts.services import record
from panel.jobs import services as jobs
from panel.jobs.choices import ACTIVE_STATES, TERMINAL_STATES, JobKind
from panel.jobs.models import Job
from panel.jobs.runner import JobContext, JobFailed, handler

logger = logging.getLogger(__name__)

PG_RESTORE_VERSION_RE = re.compile(r"\(PostgreSQL\) (\d+)")
FILESTORE_KEY_RE = re.compile(r"filestore/([0-9a-f]{2})/([0-9a-f]{40})")
#: How much of pg_restore's table of contents is kept to count its entries.
TOC_LIMIT = 4 * 1024 * 1024
#: How many problems the backup's reason and the job's reason name (the job log has them all).
PROBLEMS_SHOWN = 5


def verify_lock_key(backup: Backup) -> str:
    """One verify per backup at a time (it never holds the environment: it reads the storage only)."""
    return f"backup:{backup.pk}"


def start_verify(backup: Backup, actor: Any, *, trigger: str = "user") -> Any:
    """Queue a *Verify* job for a good backup and return the job.

    Raises ``JobFailed`` for a backup that is not good (a running, failed or interrupted backup has nothing to
    verify), ``TargetBusy`` while this backup is already being verified.
    """
    if backup.status != BackupStatus.GOOD:
        raise JobFailed(
            f"Backup #{backup.pk} is {backup.get_status_display().lower()}: only good backups are verified."
        )
    environment = backup.environment
    job = jobs.create_job(
        kind=JobKind.VERIFY,
        organization=environment.project.organization,
        created_by=actor,
        environment=environment,
        lock_key=verify_lock_key(backup),
        params={"backup_id": backup.pk},
        trigger=trigger,
    )
    Backup.objects.filter(pk=backup.pk).update(verify_status=CheckStatus.RUNNING, verify_reason="")
    record(action="backup.verify", actor=actor, obj=environment, detail={"job": job.pk, "backup": backup.pk})
    return job


def settle_checks(environment: Any = None) -> int:
    """Verifies and test restores recorded ``running`` whose job has ended without recording an outcome (the
    worker was killed, the job was reaped or never ran) become ``failed``, saying so; never ``passed``. Returns
    how many were settled."""
    backups = Backup.objects.all() if environment is None else Backup.objects.filter(environment=environment)
    count = 0
    for backup in backups.filter(verify_status=CheckStatus.RUNNING).only("pk"):
        active = Job.objects.filter(lock_key=verify_lock_key(backup), kind=JobKind.VERIFY, status__in=ACTIVE_STATES)
        if active.exists():
            continue
        last = Job.objects.filter(lock_key=verify_lock_key(backup), kind=JobKind.VERIFY).order_by("-pk").first()
        why = f"Verify #{last.pk} ended {last.status}" if last is not None else "Its verify job is gone"
        count += Backup.objects.filter(pk=backup.pk, verify_status=CheckStatus.RUNNING).update(
            verify_status=CheckStatus.FAILED,
            verify_reason=f"{why} before it finished: {last.reason if last is not None else ''}".strip(": ")[:2000],
        )
    ended = Q(test_restore_job__isnull=True) | Q(test_restore_job__status__in=TERMINAL_STATES)
    for backup in (
        backups.filter(test_restore_status=CheckStatus.RUNNING).filter(ended).select_related("test_restore_job")
    ):
        job = backup.test_restore_job
        why = f"Test restore #{job.pk} ended {job.status}" if job is not None else "Its test restore job is gone"
        count += Backup.objects.filter(pk=backup.pk, test_restore_status=CheckStatus.RUNNING).update(
            test_restore_status=CheckStatus.FAILED,
            test_restored_at=job.finished_at if job is not None and job.finished_at else timezone.now(),
            test_restore_reason=f"{why} before it finished: {job.reason if job is not None else ''}".strip(": ")[:2000],
        )
    return count


@functools.cache
def _local_pg_restore(command: str) -> tuple[str, int] | None:
    """The panel host's pg_restore and its major version, or None when there is none."""
    path = shutil.which(command) if command else None
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = PG_RESTORE_VERSION_RE.search(out)
    return (path, int(match.group(1))) if match else None


def _expected(entry: dict[str, Any]) -> StoredObject:
    return StoredObject(
        key=entry["key"],
        size=int(entry["size"]),
        sha256=entry["sha256"],
        encrypted=bool(entry.get("encrypted", False)),
        plain_size=entry.get("plain_size"),
        plain_sha256=entry.get("plain_sha256", ""),
    )


class _PgRestoreList:
    """``pg_restore --list`` on the panel host, fed the dump as it streams (it stops reading after the table of
    contents; the rest of the stream is still read, for its checksum)."""

    def __init__(self, path: str) -> None:
        self.process = subprocess.Popen(
            [path, "--list"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.toc = bytearray()
        self.stderr = bytearray()
        self._open = True
        self._threads = [
            threading.Thread(target=self._drain, args=(self.process.stdout, self.toc), daemon=True),
            threading.Thread(target=self._drain, args=(self.process.stderr, self.stderr), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _drain(stream: IO[bytes] | None, into: bytearray) -> None:
        assert stream is not None
        while chunk := stream.read(65536):
            if len(into) < TOC_LIMIT:
                into.extend(chunk)

    def feed(self, chunk: bytes) -> None:
        if not self._open:
            return
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(chunk)
        except (BrokenPipeError, OSError):
            self._open = False  # it read what it needed and exited

    def finish(self) -> tuple[int, int, str]:
        """(exit code, entries of the table of contents, stderr tail)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.close()
        except OSError:
            pass
        code = self.process.wait(timeout=600)
        for thread in self._threads:
            thread.join(timeout=30)
        lines = self.toc.decode(errors="replace").splitlines()
        entries = sum(1 for line in lines if line.strip() and not line.startswith(";"))
        return code, entries, self.stderr.decode(errors="replace").strip()[-400:]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@dataclass
class VerifyReport:
    """What a verification found."""

    objects: int = 0
    bytes: int = 0
    files: int = 0
    problems: list[str] = field(default_factory=list)
    pg_restore: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_objects(storage: Storage, manifest: dict[str, Any], context: JobContext | None = None) -> VerifyReport:
    """Read back and check every object ``manifest`` lists (see the module docstring); never raises for what the
    storage holds, it lists each problem in the report."""
    report = VerifyReport()
    entries: list[dict[str, Any]] = list(manifest.get("objects", []))
    if manifest.get("manifest_object"):
        entries.append(manifest["manifest_object"])
    if not entries:
        report.problems.append("The backup's manifest lists no objects.")
        return report
    seen: set[str] = set()
    dump_key = (manifest.get("dump") or {}).get("key", "")
    dump_major = int((manifest.get("postgresql") or {}).get("pg_dump_major") or 0)
    for index, entry in enumerate(entries, start=1):
        key = entry.get("key", "")
        if key in seen:
            continue
        seen.add(key)
        if context is not None and index % 200 == 0:
            context.check_cancel()
        elif context is not None:
            context.check_lease()
        try:
            expected = _expected(entry)
            if entry.get("role") == "filestore":
                _check_filestore(storage, expected)
                report.files += 1
            elif entry.get("role") == "database" or key == dump_key:
                report.pg_restore = _check_dump(storage, expected, dump_major, report)
            else:
                storage.verify(key, expected)
        except (StorageError, ValueError, KeyError, OSError) as exc:
            report.problems.append(f"{key or '(an object without a key)'}: {exc}")
            if context is not None:
                context.write(f"✖ {key}: {exc}")
            continue
        report.objects += 1
        report.bytes += int(entry.get("size", 0))
        if context is not None and report.objects % 500 == 0:
            context.write(f"Checked {report.objects} of {len(entries)} objects ({report.bytes / 1e6:.1f} MB).")
    return report


def _check_filestore(storage: Storage, expected: StoredObject) -> None:
    """Size and SHA-256 of the stored bytes, and the SHA-1 of the file the key names, in one read."""
    match = FILESTORE_KEY_RE.fullmatch(expected.key)
    if match is None or not match.group(2).startswith(match.group(1)):
        raise ValueError("a filestore object is not stored under its content's name")
    digest = hashlib.sha1(usedforsecurity=False)
    with storage.reader(expected.key, expected=expected) as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != match.group(2):
        raise StorageError(f"the file's SHA-1 is {digest.hexdigest()}, not the name it is stored under")


def _check_dump(storage: Storage, expected: StoredObject, dump_major: int, report: VerifyReport) -> str:
    """Read the dump back (size and SHA-256) through ``pg_restore --list`` when the panel host can; returns what
    was done about pg_restore. A refused dump is a problem in ``report``."""
    local = _local_pg_restore(settings.BACKUP_VERIFY_PG_RESTORE)
    if local is None:
        note = "skipped: the panel host has no pg_restore (the backup job ran it at backup time)"
        storage.verify(expected.key, expected)
        return note
    path, major = local
    if dump_major and major < dump_major:
        storage.verify(expected.key, expected)
        return (
            f"skipped: the panel host's pg_restore {major} cannot read a dump of pg_dump {dump_major} "
            "(the backup job ran it at backup time)"
        )
    lister = _PgRestoreList(path)
    try:
        with storage.reader(expected.key, expected=expected) as stream:
            while chunk := stream.read(CHUNK):
                lister.feed(chunk)
    except BaseException:
        lister.kill()
        raise
    code, entries, stderr = lister.finish()
    if code != 0:
        report.problems.append(f"{expected.key}: pg_restore --list refused the dump (exit code {code}): {stderr}")
        return f"refused (exit code {code})"
    if entries == 0:
        report.problems.append(f"{expected.key}: pg_restore --list found no entries in the dump")
        return "refused (no entries)"
    return f"accepted ({entries} entries)"


def _summary(problems: list[str]) -> str:
    shown = "; ".join(problems[:PROBLEMS_SHOWN])
    more = f" (and {len(problems) - PROBLEMS_SHOWN} more)" if len(problems) > PROBLEMS_SHOWN else ""
    return f"{len(problems)} problem{'s' if len(problems) != 1 else ''}: {shown}{more}"


@handler(JobKind.VERIFY)
def run_verify(context: JobContext) -> dict[str, Any]:
    """The verify job: every object read back and checked; ``verified_at`` set on success, cleared on a problem."""
    backup = Backup.objects.select_related("storage").filter(pk=context.job.params.get("backup_id")).first()
    if backup is None:
        raise JobFailed("The backup is gone (pruned or deleted); there is nothing to verify.")
    Backup.objects.filter(pk=backup.pk).update(verify_status=CheckStatus.RUNNING, verify_reason="")
    try:
        return _verify(context, backup)
    except JobFailed as exc:
        # Whatever stopped it, the backup says so (a killed worker: settle_checks).
        Backup.objects.filter(pk=backup.pk).update(verify_status=CheckStatus.FAILED, verify_reason=str(exc)[:2000])
        raise


def _verify(context: JobContext, backup: Backup) -> dict[str, Any]:
    if backup.status != BackupStatus.GOOD:
        raise JobFailed(f"Backup #{backup.pk} is {backup.status}: only good backups are verified.")
    with context.step("Open the storage"):
        try:
            storage = open_storage(backup.storage)
        except StorageError as exc:
            raise JobFailed(str(exc)) from exc
    with context.step("Read back every object"):
        report = verify_objects(storage, backup.manifest, context)
        if report.pg_restore:
            context.write(f"pg_restore --list: {report.pg_restore}.")
        context.write(
            f"Read back {report.objects} objects ({report.files} filestore files, {report.bytes / 1e6:.1f} MB)."
        )
    now = timezone.now()
    if not report.ok:
        summary = _summary(report.problems)
        Backup.objects.filter(pk=backup.pk).update(
            verified_at=None, reason=f"Verify #{context.job.pk} on {now:%Y-%m-%d %H:%M} UTC found {summary}"[:2000]
        )
        raise JobFailed(f"Backup #{backup.pk} failed verification: {summary}"[:2000])
    Backup.objects.filter(pk=backup.pk, status=BackupStatus.GOOD).update(
        verified_at=now, verify_status=CheckStatus.PASSED, verify_reason=""
    )
    # A problem an earlier verify recorded is over (the object was put back).
    Backup.objects.filter(pk=backup.pk, reason__startswith="Verify #").update(reason="")
    context.write(f"Backup #{backup.pk} is verified.")
    return {
        "backup": backup.pk,
        "verified": True,
        "objects": report.objects,
        "bytes": report.bytes,
        "filestore_files": report.files,
        "pg_restore": report.pg_restore,
    }
