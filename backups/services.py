"""Services of the backups app: checking that a storage really stores, and the backup job.

A backup (``run_backup``, job kind ``backup``) is one unit in one storage, under ``backups/<compose project>/
<UTC time>-<id>/``:

- ``database.dump``: ``pg_dump --format=custom`` run in the environment's own ``db`` container (its pg_dump
  version; zstd/lz4 where it is 16+, else gzip), streamed over SSH straight into the storage writer;
- the filestore: every file named by its content (``<xx>/<sha1>``) is stored once per storage as
  ``filestore/<xx>/<sha1>`` and reused by every later backup that lists it; its SHA-1 is checked while it streams.
  Files with other names go into ``filestore-other.tar``; a file whose content does not match its name is not
  stored under that name but in ``filestore-mismatched.tar``, and the manifest reports it;
- ``manifest.json``: what was backed up (versions, commit, modules) and every object with its size and SHA-256.

It is recorded ``good`` only at the very end, after the storage confirmed every object and ``pg_restore --list``
(in the db container, reading the dump back from the storage over its stdin) accepted the dump.
"""

from __future__ import annotations

import contextvars
import hashlib
import io
import json
import logging
import queue
import re
import secrets
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from backups.locks import claim_filestore_objects
from backups.models import (
    Backup,
    BackupKind,
    BackupSettings,
    BackupStatus,
    BackupStorage,
    FilestoreObject,
)
from backups.storage import CHUNK, IntegrityError, Storage, StorageError, StoredObject, open_storage
from deployments.pipeline import Pipeline
from deployments.services import lock_key as deploy_lock_key
from panel.accounts.services import record
from panel.inventory.models import Environment
from panel.inventory.services import environment_hold
from panel.jobs import services as jobs
from panel.jobs.choices import TERMINAL_STATES, JobKind
from panel.jobs.runner import JobContext, JobFailed, handler
from panel.remote import RemoteError, StreamResult, Target, run_capture, stream
from panel.remote.session import HoldLost

logger = logging.getLogger(__name__)

CHECK_PREFIX = "panel-check"


def check_storage(backup_storage: BackupStorage) -> str:
    """Write a small object, read it back and verify it, delete it and make sure it is gone.

    Listing a bucket proves little (coolify#7779: the connection check passed while every upload failed), so this
    does what a backup does, on a few bytes. Returns what was done; raises ``StorageError`` naming the step that
    failed.
    """
    storage = open_storage(backup_storage, max_attempts=2)
    key = f"{CHECK_PREFIX}/{secrets.token_hex(8)}"
    payload = secrets.token_bytes(4096)
    stored = storage.put_bytes(key, payload)
    try:
        with storage.reader(key, expected=stored) as stream:
            if stream.read() != payload:
                raise IntegrityError("The object read back is not the one written.")
    finally:
        storage.delete(key)
    if storage.stat(key) is not None:
        raise StorageError(f"{key} is still listed after it was deleted.")
    sealed = ", encrypted" if stored.encrypted else ""
    return f"Wrote {stored.size} bytes{sealed}, read them back with the same SHA-256 and deleted them."


# -- the backup job ---------------------------------------------------------------------------------------------

DB_SERVICE = "db"
ODOO_SERVICE = "odoo"
FILESTORE_ROOT = "/var/lib/odoo/filestore"
DUMP_NAME = "database.dump"
MANIFEST_NAME = "manifest.json"
OTHER_TAR = "filestore-other.tar"
MISMATCHED_TAR = "filestore-mismatched.tar"
MANIFEST_FORMAT = 1
CONTENT_NAME_RE = re.compile(r"([0-9a-f]{2})/([0-9a-f]{40})")
DATABASE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")
DB_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")
PG_VERSION_RE = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")
CUSTOM_DUMP_MAGIC = b"PGDMP"
# pg_dump runs in the background of a shell that also watches its stdin: when the SSH connection (and with it the
# `docker compose exec` client) goes away, docker closes that stdin, and the watcher ends pg_dump, which would
# otherwise keep running in the container (docker does not end an exec whose client left). The shell's exit
# status is pg_dump's: no pipe hides it.
WATCHED_SCRIPT = (
    'exec 3<&0; "$@" <&- & p=$!; { cat <&3 >/dev/null; kill "$p"; } >/dev/null 2>&1 & exec 3<&-; wait "$p"; exit $?'
)
# In the db container: connect as the image's superuser over the local socket (with its password if it has one).
DB_SCRIPT = 'PGPASSWORD="${POSTGRES_PASSWORD:-}"; export PGPASSWORD; exec "$@"'
DB_FACTS_SCRIPT = 'printf "%s\\n" "${POSTGRES_USER:-postgres}"; pg_dump --version; pg_restore --version'
ODOO_FACTS_SCRIPT = 'printf "%s\\n%s\\n" "${PGDATABASE:-}" "${ODOO_VERSION:-}"'
# Every regular file under the filestore directory, "<size> <relative name>\0"; nothing when there is none yet.
LIST_SCRIPT = 'd=$1; [ -d "$d" ] || exit 0; cd "$d" && exec find . -type f -printf "%s %P\\0"'
MODULES_SQL = "SELECT name, coalesce(latest_version, '') FROM ir_module_module WHERE state = 'installed' ORDER BY name"


class BackupFailed(JobFailed):
    """A step of the backup failed; the message says which and why."""


def backup_lock_key(environment: Environment) -> str:
    """The job lock of every job that changes or reads an environment as a whole: the deploy's own key, so a backup
    never overlaps a deploy."""
    return deploy_lock_key(environment)


def settle_backups(environment: Environment | None = None) -> int:
    """Backups still ``running`` whose job has ended (the worker was killed, the job was reaped) become
    ``interrupted``; they never turn ``good``. Returns how many were settled."""
    ended = Q(job__isnull=True) | Q(job__status__in=TERMINAL_STATES)
    stale = Backup.objects.filter(status=BackupStatus.RUNNING).filter(ended)
    if environment is not None:
        stale = stale.filter(environment=environment)
    count = 0
    for backup in stale.select_related("job"):
        job = backup.job
        why = f"{job.get_kind_display()} #{job.pk} ended {job.status}" if job is not None else "Its job is gone"
        reason = f"{why} before the backup was complete: {job.reason if job is not None else ''}".strip(": ")
        count += Backup.objects.filter(pk=backup.pk, status=BackupStatus.RUNNING).update(
            status=BackupStatus.INTERRUPTED, reason=reason, finished_at=timezone.now()
        )
    # Verifies and test restores whose job died are recorded failed the same way (never passed).
    from backups.verify import settle_checks

    settle_checks(environment)
    return count


def backup_settings_of(environment: Environment) -> BackupSettings:
    """The environment's backup settings, or ``JobFailed`` saying what to set up."""
    found = BackupSettings.objects.select_related("storage").filter(environment=environment).first()
    if found is None:
        raise JobFailed("This environment has no backup storage yet: choose one in its backup settings first.")
    return found


def start_backup(
    *, environment: Environment, actor: Any, kind: str = BackupKind.MANUAL, trigger: str = "user"
) -> Backup:
    """Queue a backup of the environment into its storage. Raises ``TargetBusy`` while another job (a deploy, a
    backup) holds the environment, ``JobFailed`` when it has no backup storage."""
    config = backup_settings_of(environment)
    settle_backups(environment)
    with transaction.atomic():
        job = jobs.create_job(
            kind=JobKind.BACKUP,
            organization=environment.project.organization,
            created_by=actor,
            environment=environment,
            lock_key=backup_lock_key(environment),
            params={"environment_id": environment.pk},
            trigger=trigger,
        )
        now = timezone.now()
        prefix = f"backups/{environment.compose_project}/{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
        backup = Backup.objects.create(
            environment=environment, storage=config.storage, kind=kind, job=job, key_prefix=prefix, started_at=now
        )
        job.params["backup_id"] = backup.pk
        job.save(update_fields=["params"])
        record(
            action="environment.backup",
            actor=actor,
            obj=environment,
            detail={"job": job.pk, "backup": backup.pk, "kind": kind, "storage": config.storage.pk},
        )
    return backup


def _rate(size: int, seconds: float) -> str:
    """``12.3 MB in 4.5 s (2.7 MB/s)``."""
    speed = size / 1e6 / seconds if seconds > 0 else 0.0
    return f"{size / 1e6:.1f} MB in {seconds:.1f} s ({speed:.1f} MB/s)"


def _object_entry(stored: StoredObject, role: str, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"key": stored.key, "role": role, "size": stored.size, "sha256": stored.sha256}
    if stored.encrypted:
        entry.update(encrypted=True, plain_size=stored.plain_size, plain_sha256=stored.plain_sha256)
    return {**entry, **extra}


class _QueueReader(io.RawIOBase):
    """The read end of a bounded queue of chunks (``None`` ends it): what ``tarfile`` in stream mode reads."""

    def __init__(self, chunks: queue.Queue[bytes | None], failed: Callable[[], BaseException | None]) -> None:
        self._chunks = chunks
        self._failed = failed
        self._buffer = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buffer and not self._done:
            try:
                chunk = self._chunks.get(timeout=1)
            except queue.Empty:
                if self._failed() is not None:
                    self._done = True
                continue
            if chunk is None:
                self._done = True
            else:
                self._buffer = chunk
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


class _WriterFile(io.RawIOBase):
    """An ``ObjectWriter`` as a file that ``tarfile`` (mode ``w|``) writes into."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._write(chunk)
        return len(chunk)


class EnvironmentCommands:
    """Commands of a backup or restore job in an environment's containers, over the server's connection: any
    non-zero exit raises ``failure`` with what failed and the end of its stderr."""

    failure: ClassVar[type[JobFailed]] = JobFailed
    capture_timeout: ClassVar[float] = 120
    target: Target
    pipeline: Pipeline

    def exec(self, service: str, *argv: str) -> list[str]:
        """``docker compose ... exec -T <service> argv`` in the environment's running container."""
        return self.pipeline.compose("exec", "-T", service, *argv)

    def db(self, *argv: str) -> list[str]:
        """A command in the db container, connected as its superuser."""
        return self.exec(DB_SERVICE, "sh", "-c", DB_SCRIPT, "sh", *argv)

    def capture(self, argv: Sequence[str], what: str, timeout: float | None = None) -> str:
        """A short command's stdout (``capture_timeout`` unless told)."""
        result = run_capture(self.target, argv, timeout=self.capture_timeout if timeout is None else timeout)
        if not result.ok:
            raise self.failure(f"{what} failed (exit code {result.exit_code}): {result.stderr.strip()[-400:]}")
        return result.stdout

    def stream(self, argv: Sequence[str], what: str, **kwargs: Any) -> StreamResult:
        """A streamed command (``BACKUP_STEP_TIMEOUT`` / ``BACKUP_IDLE_TIMEOUT`` unless told)."""
        kwargs.setdefault("timeout", settings.BACKUP_STEP_TIMEOUT)
        kwargs.setdefault("idle_timeout", settings.BACKUP_IDLE_TIMEOUT)
        kwargs.setdefault("name", what)
        result = stream(self.target, argv, **kwargs)
        if not result.ok:
            raise self.failure(f"{what} failed (exit code {result.exit_code}): {result.stderr.strip()[-400:]}")
        return result

    def odoo_facts(self) -> tuple[str, str]:
        """The database the odoo container uses (``PGDATABASE``, checked) and its image's ``ODOO_VERSION``."""
        out = self.capture(self.exec(ODOO_SERVICE, "sh", "-c", ODOO_FACTS_SCRIPT), "Reading Odoo's settings")
        database, image_version = [line.strip() for line in [*out.splitlines(), "", ""][:2]]
        if not DATABASE_NAME_RE.fullmatch(database):
            raise self.failure(f"The odoo container names no usable database (PGDATABASE={database!r}).")
        return database, image_version

    def db_facts(self) -> tuple[str, str, str]:
        """The db container's superuser (checked) and its ``pg_dump --version`` and ``pg_restore --version``."""
        out = self.capture(self.exec(DB_SERVICE, "sh", "-c", DB_FACTS_SCRIPT), "Reading the db container")
        user, dump_version, restore_version = ([*out.splitlines(), "", "", ""])[:3]
        if not DB_USER_RE.fullmatch(user.strip()):
            raise self.failure(f"The db container names no usable database user ({user!r}).")
        return user.strip(), dump_version, restore_version


@dataclass
class BackupRun(EnvironmentCommands):
    """One backup job's work on the environment's server and in its storage."""

    failure = BackupFailed
    context: JobContext
    backup: Backup
    storage: Storage
    environment: Environment = field(init=False)
    target: Target = field(init=False)
    objects: list[dict[str, Any]] = field(default_factory=list)
    uploaded: int = 0
    _uploader: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _closing: list[tuple[str, str, Future[StoredObject]]] = field(default_factory=list, init=False, repr=False)
    dump_header: list[str] = field(default_factory=list)
    #: How the job names its steps: a pre-deploy backup runs inside the deploy job (``backups.predeploy``).
    step_prefix: ClassVar[str] = ""
    dump_step: ClassVar[str] = "Dump the database"

    def __post_init__(self) -> None:
        self.environment = self.backup.environment
        self.target = Target.for_server(self.environment.server)
        # How the deploy pipeline names the environment's compose files (the panel's override included).
        self.pipeline = Pipeline(self.context, self.environment, deployment_id=0)

    def key(self, name: str) -> str:
        return f"{self.backup.key_prefix}/{name}"

    # -- steps -------------------------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        """What the manifest says about the environment: database, versions, commit, installed modules."""
        if self.environment.current_deployment is None:
            # The compose files (and the panel's override) are there only once the panel deployed it.
            raise BackupFailed("Nothing has been deployed here by the panel yet: deploy the environment first.")
        database, image_version = self.odoo_facts()
        user, dump_version, restore_version = self.db_facts()
        match = PG_VERSION_RE.search(dump_version)
        if match is None:
            raise BackupFailed(f"Cannot read pg_dump's version in the db container: {dump_version!r}.")
        sql = self.capture(
            self.db("psql", "-U", user, "-d", database, "-X", "-q", "-t", "-A", "-F", "\t",
                    "-v", "ON_ERROR_STOP=1", "-c", "SHOW server_version", "-c", MODULES_SQL),
            "Reading the database's versions",
        )  # fmt: skip
        rows = sql.splitlines()
        server_version = rows[0].strip() if rows else ""
        modules = {}
        for row in rows[1:]:
            name, _, version = row.partition("\t")
            if name:
                modules[name] = version
        current = self.environment.current_deployment
        return {
            "database": database,
            "db_user": user,
            "odoo": {"image_version": image_version, "base_version": modules.get("base", "")},
            "postgresql": {
                "server_version": server_version,
                "pg_dump_version": dump_version.strip(),
                "pg_restore_version": restore_version.strip(),
                "pg_dump_major": int(match.group(1)),
            },
            "deployment": (
                {"id": current.pk, "commit": current.commit, "ref": current.ref} if current is not None else None
            ),
            "modules": modules,
        }

    def compression(self, major: int) -> list[str]:
        """pg_dump's compression option: the configured method where this pg_dump has it (16+), else gzip."""
        wanted = settings.BACKUP_DUMP_COMPRESSION
        if wanted in ("zstd", "lz4") and major >= 16:
            return [f"--compress={wanted}"]
        return ["--compress=6"]

    def dump(self, facts: dict[str, Any]) -> dict[str, Any]:
        """Stream ``pg_dump --format=custom`` into the storage; returns the dump's manifest entry."""
        option = self.compression(facts["postgresql"]["pg_dump_major"])
        argv = self.exec(
            DB_SERVICE, "sh", "-c", WATCHED_SCRIPT, "sh", "sh", "-c", DB_SCRIPT, "sh",
            "pg_dump", "--format=custom", *option, "-U", facts["db_user"], "-d", facts["database"],
        )  # fmt: skip
        self.context.write(f"Dumping database {facts['database']} ({option[0]}) into the storage.")
        started = time.monotonic()

        def is_a_dump(result: StreamResult, written: int, archive: bool) -> None:
            if not archive:
                raise BackupFailed(
                    f"pg_dump exited 0 but wrote {result.bytes_out} bytes that are not a custom-format dump."
                )

        # The last good dump's size is the best guess of this one's (pg_dump cannot say in advance).
        stored, result = self.stream_dump(
            argv, "pg_dump", "Dumping the database", expected=self.expected_dump_size(), check=is_a_dump,
            close_stdin=False,
        )  # fmt: skip
        self.context.write(f"Dumped and stored the database: {_rate(result.bytes_out, time.monotonic() - started)}.")
        entry = _object_entry(stored, "database", compression=option[0])
        self.objects.append(entry)
        return entry

    def stream_dump(
        self,
        argv: Sequence[str],
        what: str,
        label: str,
        *,
        expected: int,
        check: Callable[[StreamResult, int, bool], None],
        writer_options: dict[str, Any] | None = None,
        **stream_options: Any,
    ) -> tuple[StoredObject, StreamResult]:
        """Stream the custom-format dump that ``argv`` writes to its stdout into the storage (``database.dump``),
        reporting progress under ``label`` against ``expected`` bytes (0: unknown). ``check(result, bytes written,
        whether it starts like a custom-format archive)`` raises before the object is kept."""
        head = bytearray()
        written = 0
        with self.storage.writer(self.key(DUMP_NAME), **(writer_options or {})) as writer:

            def sink(chunk: bytes) -> None:
                nonlocal written
                if len(head) < len(CUSTOM_DUMP_MAGIC):
                    head.extend(chunk[: len(CUSTOM_DUMP_MAGIC)])
                writer.write(chunk)
                written += len(chunk)
                self.context.progress(label, written, max(expected, written) if expected else None)

            result = self.stream(argv, what, sink=sink, **stream_options)
            self.context.progress(label, written, written, force=True)
            check(result, written, bytes(head).startswith(CUSTOM_DUMP_MAGIC))
            stored = writer.close()
        self.uploaded += stored.size
        return stored, result

    def expected_dump_size(self) -> int:
        """The size of the environment's newest good dump (0 when there is none)."""
        previous = (
            Backup.objects.filter(environment=self.environment, status=BackupStatus.GOOD)
            .exclude(pk=self.backup.pk)
            .values_list("database_bytes", flat=True)
            .first()
        )
        return int(previous or 0)

    def check_dump(self, facts: dict[str, Any], entry: dict[str, Any]) -> int:
        """``pg_restore --list`` in the db container accepts the dump read back from the storage; returns the number
        of entries of its table of contents."""
        expected = StoredObject(
            key=entry["key"], size=entry["size"], sha256=entry["sha256"], encrypted=entry.get("encrypted", False),
            plain_size=entry.get("plain_size"), plain_sha256=entry.get("plain_sha256", ""),
        )  # fmt: skip
        listing = bytearray()

        def keep(chunk: bytes) -> None:
            if len(listing) < 4 * 1024 * 1024:  # the table of contents; counting its lines needs no more
                listing.extend(chunk)

        started = time.monotonic()
        with self.storage.reader(entry["key"], expected=expected) as source:
            result = self.stream(
                self.db("pg_restore", "--list"), "pg_restore --list", sink=keep,
                source=iter(lambda: source.read(CHUNK), b""),
            )  # fmt: skip
        lines = listing.decode(errors="replace").splitlines()
        self.dump_header = [line for line in lines[:60] if line.startswith(";")]  # "Dumped by pg_dump version: …"
        entries = [line for line in lines if line.strip() and not line.startswith(";")]
        if not entries:
            raise BackupFailed("pg_restore --list found no entries in the dump.")
        self.context.write(
            f"pg_restore --list accepts the dump ({len(entries)} entries; read back "
            f"{_rate(result.bytes_in, time.monotonic() - started)})."
        )
        return len(entries)

    def list_filestore(self, directory: str) -> dict[str, int]:
        """Every file of the filestore directory with its size, in one command."""
        output = bytearray()
        self.stream(
            self.exec(ODOO_SERVICE, "sh", "-c", LIST_SCRIPT, "sh", directory), "Listing the filestore",
            sink=output.extend,
        )  # fmt: skip
        files: dict[str, int] = {}
        for record_bytes in bytes(output).split(b"\0"):
            if not record_bytes:
                continue
            size, _, name = record_bytes.decode("utf-8", errors="surrogateescape").partition(" ")
            files[name] = int(size)
        return files

    def _tar_members(self, directory: str, names: Sequence[str]) -> Iterator[tuple[tarfile.TarInfo, Any]]:
        """The files ``names`` of ``directory`` as one tar stream from the server, parsed as it arrives."""
        chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=32)
        failure: list[BaseException] = []
        stop = threading.Event()
        payload = b"".join(name.encode("utf-8", errors="surrogateescape") + b"\0" for name in names)

        def put(chunk: bytes) -> None:
            while True:
                if stop.is_set():
                    raise BackupFailed("The filestore stream was abandoned.")
                try:
                    chunks.put(chunk, timeout=1)
                    return
                except queue.Full:
                    continue

        def produce() -> None:
            try:
                self.stream(
                    self.exec(ODOO_SERVICE, "tar", "-c", "-f", "-", "-C", directory, "--null",
                              "--verbatim-files-from", "--ignore-failed-read", "--no-recursion", "-T", "-"),
                    "tar of the filestore", sink=put,
                    source=(payload[i : i + CHUNK] for i in range(0, len(payload), CHUNK)),
                )  # fmt: skip
            except BaseException as exc:  # noqa: BLE001 - handed to the reading side, which raises it
                failure.append(exc)
            finally:
                try:
                    chunks.put(None, timeout=5)
                except queue.Full:
                    pass

        # The hold (a context variable) must cover the stream's commands in the thread too.
        thread = threading.Thread(target=contextvars.copy_context().run, args=(produce,), daemon=True)
        thread.start()
        try:
            reader = io.BufferedReader(_QueueReader(chunks, lambda: failure[0] if failure else None), CHUNK)
            try:
                with tarfile.open(fileobj=reader, mode="r|") as archive:
                    for member in archive:
                        if member.isfile():
                            yield member, archive.extractfile(member)
            except tarfile.TarError as exc:
                if not failure:
                    raise BackupFailed(f"The filestore's tar stream is broken: {exc}.") from exc
        finally:
            stop.set()
            thread.join(timeout=30)
        if failure:
            raise failure[0]

    def _store_file(self, name: str, sha1: str, data: Any, size: int) -> bool:
        """Store one content-named file under ``filestore/<xx>/<sha1>``; False (nothing stored) when its content
        is not what its name says."""
        key = f"filestore/{sha1[:2]}/{sha1}"
        digest = hashlib.sha1(usedforsecurity=False)
        writer = self.storage.writer(key, expected_size=size, exact=True)
        try:
            while chunk := data.read(CHUNK):
                digest.update(chunk)
                writer.write(chunk)
            if digest.hexdigest() != sha1:
                writer.abort()
                return False
        except BaseException:
            writer.abort()
            raise
        # Its upload (one PUT for most files, then the store's confirmation) runs in a thread while the next file
        # streams in over SSH: the two overlap instead of taking turns. One at a time, so memory stays bounded.
        self.settle_uploads(keep=0)
        if self._uploader is None:
            self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup-upload")
        self._closing.append((sha1, key, self._uploader.submit(writer.close)))
        return True

    def settle_uploads(self, keep: int, *, quiet: bool = False) -> None:
        """Wait for the files' uploads until at most ``keep`` are in flight; a file is recorded (its
        ``FilestoreObject``) only once the store confirmed it. A failed upload raises, after the others ended;
        with ``quiet`` (the backup already failed) it is only waited for."""
        while len(self._closing) > keep:
            sha1, key, future = self._closing.pop(0)
            try:
                stored = future.result()
                self.uploaded += stored.size
                FilestoreObject.objects.get_or_create(
                    storage=self.backup.storage, sha1=sha1,
                    defaults={"key": key, "size": stored.size, "sha256": stored.sha256, "encrypted": stored.encrypted,
                              "plain_size": stored.plain_size, "plain_sha256": stored.plain_sha256},
                )  # fmt: skip
            except BaseException:
                if quiet:
                    continue  # the backup already failed, and that failure is what the job reports
                self.settle_uploads(keep=0, quiet=True)
                raise
        if not self._closing and self._uploader is not None:
            self._uploader.shutdown(wait=True)
            self._uploader = None

    def filestore(self, database: str) -> dict[str, Any]:
        """Back up the filestore: new content-named files once per storage, the rest in tars."""
        directory = f"{FILESTORE_ROOT}/{database}"
        started = time.monotonic()
        listed = self.list_filestore(directory)
        named: dict[str, str] = {}
        others: list[str] = []
        for name in sorted(listed):
            match = CONTENT_NAME_RE.fullmatch(name)
            if match and match.group(2).startswith(match.group(1)):
                named[name] = match.group(2)
            else:
                others.append(name)
        # Under the storage lock: retention deletes none of these while this backup runs (backups.locks).
        known = claim_filestore_objects(self.backup.storage_id, named.values())
        missing = [name for name, sha1 in named.items() if sha1 not in known]
        self.context.write(
            f"The filestore has {len(listed)} files ({sum(listed.values()) / 1e6:.1f} MB): {len(named) - len(missing)} "
            f"already in the storage, {len(missing)} to upload, {len(others)} not named by their content."
        )
        received: set[str] = set()
        mismatched: list[dict[str, Any]] = []
        other_files: list[dict[str, Any]] = []
        moved = 0
        to_move = sum(listed[name] for name in missing + others)
        if missing or others:
            other_writer = self.storage.writer(self.key(OTHER_TAR)) if others else None
            other_tar = tarfile.open(fileobj=_WriterFile(other_writer.write), mode="w|") if other_writer else None
            try:
                for member, data in self._tar_members(directory, missing + others):
                    self.context.check_lease()
                    name = member.name
                    received.add(name)
                    moved += member.size
                    self.context.progress("Backing up the filestore", moved, max(to_move, moved))
                    if name in named:
                        if self._store_file(name, named[name], data, member.size):
                            continue
                        mismatched.append({"name": name, "size": member.size})
                        self.context.write(f"⚠ {name}: its content does not match its name; not stored as {name}.")
                    elif other_tar is not None:
                        other_tar.addfile(member, data)
                        other_files.append({"name": name, "size": member.size})
                self.settle_uploads(keep=0)
                if other_tar is not None and other_writer is not None:
                    other_tar.close()
                    stored = other_writer.close()
                    self.uploaded += stored.size
                    self.objects.append(_object_entry(stored, "filestore-other", files=other_files))
            except BaseException:
                self.settle_uploads(keep=0, quiet=True)
                if other_writer is not None:
                    other_writer.abort()
                raise
        if mismatched:
            # Kept, as they are, in their own tar (streamed once more), so that the backup has every byte.
            with self.storage.writer(self.key(MISMATCHED_TAR)) as writer:
                self.stream(
                    self.exec(ODOO_SERVICE, "tar", "-c", "-f", "-", "-C", directory, "--", *[m["name"] for m in mismatched]),
                    "tar of the mismatched files", sink=writer.write,
                )  # fmt: skip
                stored = writer.close()
            self.uploaded += stored.size
            self.objects.append(_object_entry(stored, "filestore-mismatched", files=mismatched))
        vanished = sorted(name for name in missing + others if name not in received)
        files = 0
        total = 0
        for name, sha1 in named.items():
            if name in vanished or any(m["name"] == name for m in mismatched):
                continue
            obj = known.get(sha1) or FilestoreObject.objects.get(storage=self.backup.storage, sha1=sha1)
            size = obj.plain_size if obj.plain_size is not None else obj.size
            entry: dict[str, Any] = {"key": obj.key, "role": "filestore", "name": name, "size": obj.size,
                                     "sha256": obj.sha256}  # fmt: skip
            if obj.encrypted:
                entry.update(encrypted=True, plain_size=obj.plain_size, plain_sha256=obj.plain_sha256)
            self.objects.append(entry)
            files += 1
            total += size
        total += sum(f["size"] for f in other_files) + sum(m["size"] for m in mismatched)
        if vanished:
            self.context.write(f"{len(vanished)} files were removed from the filestore while it was backed up.")
        self.context.write(
            f"Backed up the filestore: {files} content-named files, {len(other_files)} others, "
            f"{len(mismatched)} mismatched; moved {_rate(moved, time.monotonic() - started)}."
        )
        return {
            "directory": directory,
            "files": files + len(other_files) + len(mismatched),
            "bytes": total,
            "reused": len(named) - len(missing),
            "uploaded": len(missing) - len(mismatched) - len([n for n in vanished if n in named]),
            "mismatched": mismatched,
            "vanished": vanished,
        }


#: Backup kinds whose job work differs (``backups.predeploy`` registers the pre-deploy one); others: ``BackupRun``.
BACKUP_RUNS: dict[str, type[BackupRun]] = {}


def _fail_backup(backup: Backup, status: str, reason: str) -> None:
    Backup.objects.filter(pk=backup.pk, status=BackupStatus.RUNNING).update(
        status=status, reason=reason[:2000], finished_at=timezone.now()
    )


@handler(JobKind.BACKUP, hold=environment_hold)
def run_backup(context: JobContext) -> dict[str, Any]:
    """The backup job: facts, dump, check of the dump, filestore, manifest; ``good`` only at the very end."""
    backup = Backup.objects.select_related("environment__server", "environment__current_deployment", "storage").get(
        pk=context.job.params["backup_id"]
    )
    run = BACKUP_RUNS.get(backup.kind, BackupRun)
    try:
        with context.step(f"{run.step_prefix}Open the storage"):
            try:
                storage = open_storage(backup.storage)
            except StorageError as exc:
                raise BackupFailed(str(exc)) from exc
        work = run(context, backup, storage)
        try:
            with context.step(f"{run.step_prefix}Read the environment"):
                facts = work.facts()
            with context.step(f"{run.step_prefix}{run.dump_step}"):
                dump = work.dump(facts)
            with context.step(f"{run.step_prefix}Check the dump"):
                toc_entries = work.check_dump(facts, dump)
            with context.step(f"{run.step_prefix}Back up the filestore"):
                filestore = work.filestore(facts["database"])
            with context.step(f"{run.step_prefix}Write the manifest"):
                finished = timezone.now()
                manifest = {
                    "format": MANIFEST_FORMAT,
                    "backup": backup.pk,
                    "kind": backup.kind,
                    "environment": {
                        "id": backup.environment.pk,
                        "name": backup.environment.name,
                        "kind": backup.environment.kind,
                        "compose_project": backup.environment.compose_project,
                        "project": backup.environment.project.slug,
                    },
                    **{k: v for k, v in facts.items() if k != "db_user"},
                    "dump": {
                        "key": dump["key"],
                        "format": "custom",
                        "compression": dump["compression"],
                        "toc_entries": toc_entries,
                        "checked_with": "pg_restore --list",
                    },
                    "filestore": filestore,
                    "objects": work.objects,
                    "started_at": backup.started_at.isoformat(),
                    "finished_at": finished.isoformat(),
                }
                body = json.dumps(manifest, indent=1, sort_keys=True).encode()
                stored = storage.put_bytes(work.key(MANIFEST_NAME), body)
                work.uploaded += stored.size
                manifest["manifest_object"] = _object_entry(stored, "manifest")
                context.write(f"Stored the manifest ({len(body)} bytes, {len(work.objects)} objects).")
        except (StorageError, tarfile.TarError, OSError) as exc:
            raise BackupFailed(f"The storage or the stream failed: {exc}") from exc
    except (JobFailed, RemoteError) as exc:
        _fail_backup(backup, BackupStatus.FAILED, str(exc))
        raise
    except BaseException as exc:
        status = BackupStatus.INTERRUPTED if isinstance(exc, HoldLost) else BackupStatus.FAILED
        try:
            _fail_backup(backup, status, str(exc) or type(exc).__name__)
        except Exception:  # the database itself may be what failed: settle_backups() records it later
            logger.warning("backup %s: could not record how it ended", backup.pk, exc_info=True)
        raise
    # The one place a backup becomes good: after every object was confirmed and the dump was accepted.
    database_bytes = dump.get("plain_size") or dump["size"]
    good = Backup.objects.filter(pk=backup.pk, status=BackupStatus.RUNNING).update(
        status=BackupStatus.GOOD, manifest=manifest, database_bytes=database_bytes,
        filestore_bytes=filestore["bytes"], uploaded_bytes=work.uploaded, finished_at=finished, verified_at=finished,
    )  # fmt: skip
    if not good:
        raise JobFailed("The backup was marked as ended while it ran; it is not recorded as good.")
    context.write(f"Backup #{backup.pk} is good: {work.uploaded / 1e6:.1f} MB written to {backup.storage.name}.")
    return {"backup": backup.pk, "uploaded_bytes": work.uploaded, "objects": len(work.objects)}
