"""Safe restore of a backup into an environment (job kind ``restore``), and neutralized copies.

A restore never writes into what serves. In order:

1. **Check** (before anything): the backup's Odoo major version is the target's (manifest vs the project and the
   odoo image), and the target's ``pg_restore`` is not older than the ``pg_dump`` that made the dump.
2. **Safety backup** of the target, by the backup job's own code (``backups.services.run_backup``), into the
   target's backup storage (or the backup's storage when the target has none).
3. **Restore aside**: the dump is streamed from the storage over SSH into ``pg_restore --no-owner --exit-on-error``
   in the target's db container, into a new database ``<db>_restore_<job>``; the filestore is streamed (a tar built
   while reading the content-addressed objects, SHA-1 checked, and the tars of the other files) into a new
   directory ``filestore/<db>_restore_<job>`` next to the live one. Then: pg_restore's exit status, ``base``
   installed, and every ``ir_attachment.store_fname`` present in the new directory.
4. **Neutralize** (every target but production), still aside: ``odoo neutralize`` (16+) or the SQL equivalent,
   then the copy fix-ups (new ``database.uuid`` and ``database.secret``, ``web.base.url``).
5. **Swap**: the environment is marked *changing*; Odoo is stopped, the filestore directories and the databases
   are renamed (the live ones kept as ``<db>_before_<job>``), Odoo is started and must answer ``/web/health``.
   Any failure in this phase swaps back and starts Odoo on the original again.

What a killed worker leaves:

- before the swap (download, database restore, checks): nothing live was touched; the half-restored
  ``<db>_restore_<job>`` database and directory stay on the server (the next restore of the environment removes
  them). The environment's state is unchanged.
- during the swap: each rename is atomic (the two database renames are one transaction), so the server holds the
  original under its own name or under ``<db>_before_<job>``, never a half-written one. Odoo may be stopped. The
  environment was marked *changing* by a job that ended without finishing, so ``environment_state`` says
  *needs attention* naming the restore job, until a deploy or a restore proves it runs again; the job's log says
  which renames were done.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shlex
import tarfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backups.models import Backup, BackupKind, BackupSettings, BackupStatus
from backups.services import (
    CONTENT_NAME_RE,
    DATABASE_NAME_RE,
    DB_SCRIPT,
    FILESTORE_ROOT,
    LIST_SCRIPT,
    ODOO_SERVICE,
    PG_VERSION_RE,
    EnvironmentCommands,
    backup_lock_key,
    run_backup,
    settle_backups,
)
from backups.storage import CHUNK, Storage, StorageError, StoredObject, open_storage
from backups.zipimport import restore_source
from deployments.pipeline import Pipeline, StepFailed
from panel.accounts.services import record
from panel.inventory.choices import EnvironmentKind
from panel.inventory.models import Environment
from panel.inventory.services import environment_directory, environment_hold, finish_changing, mark_changing
from panel.jobs import services as jobs
from panel.jobs.choices import JobKind
from panel.jobs.models import Job
from panel.jobs.runner import JobContext, JobFailed, handler
from panel.remote import RemoteError, Target, stream
from panel.remote.session import HoldLost

logger = logging.getLogger(__name__)

BLOCK = 512
# Builds a new directory from a tar on stdin; refuses one that exists (it would not be "new").
EXTRACT_SCRIPT = '[ ! -e "$1" ] || { echo "$1 exists already" >&2; exit 1; }; mkdir -p "$1" && exec tar -x -f - -C "$1"'
# Removes what earlier, unfinished restores left aside (their directories), never the live or a kept one.
CLEAN_DIRS_SCRIPT = (
    'cd "$1" 2>/dev/null || exit 0; for d in "$2"_restore_*; do [ -d "$d" ] && rm -rf -- "$d"; done; exit 0'
)
# In the stopped odoo service: swap the filestore directories. $1 root, $2 live, $3 restored, $4 kept.
# Prints "none" when there was no live directory (a database without attachments yet). Exit code 2: nothing was
# moved (refused, or put back at once), so the undo must not move directories either.
SWAP_DIRS_SCRIPT = r"""cd "$1" || exit 2
[ -d "$3" ] || { echo "the restored filestore $3 is missing" >&2; exit 2; }
[ ! -e "$4" ] || { echo "$4 exists already" >&2; exit 2; }
if [ -e "$2" ]; then mv -T -- "$2" "$4" || exit 2; else echo none; fi
mv -T -- "$3" "$2" || { [ ! -e "$4" ] || mv -T -- "$4" "$2" || exit 1; exit 2; }
"""
# The swap back: the restored directory goes back aside as $3, the kept one is live again.
UNSWAP_DIRS_SCRIPT = r"""cd "$1" || exit 1
if [ -d "$4" ]; then
  if [ -e "$2" ]; then mv -T -- "$2" "$3" || exit 1; fi
  mv -T -- "$4" "$2"
elif [ "$5" = none ] && [ -e "$2" ]; then
  mv -T -- "$2" "$3"
fi
"""
# The swap, run on the server as one script (its variables: RestoreRun.swap_environment). It prints one word per
# step done, and on any failure runs UNDO_SCRIPT and prints "undone". Killed (the hold ends the job's processes
# with TERM when the job ends or its worker died), it starts UNDO_SCRIPT outside the job (without the job's tag,
# in its own session), which waits for the environment's lock (free once the hold is gone) and puts the original
# back: a restore never leaves the swap half done.
SWAP_SCRIPT = r"""set -u
trap '' PIPE
state=start had=moved
fail() { echo "failed: $1"; sh -c "$RS_UNDO" sh "$state" "$had" no >&2; echo undone; exit 3; }
trap 'trap "" TERM HUP INT; env -u DOODBA_PANEL_JOB setsid sh -c "$RS_UNDO" sh "$state" "$had" yes </dev/null >>"$RS_UNDO_LOG" 2>&1 & exit 143' TERM HUP INT
state=stopping
eval "$RS_COMPOSE stop odoo" >&2 || fail "stopping Odoo"
echo stopped
state=files
had=$(eval "$RS_COMPOSE"' run --rm --no-deps -T --entrypoint sh odoo -c "$RS_SWAP_DIRS" sh "$RS_ROOT" "$RS_DB" "$RS_NEW" "$RS_KEPT"')
rc=$?
[ "$rc" -ne 2 ] || { state=stopping; fail "swapping the filestore directories"; }
[ "$rc" -eq 0 ] || fail "swapping the filestore directories"
had=${had:-moved}
echo "files $had"
state=db
printf '%s\n' "$RS_FORWARD" | eval "$RS_PSQL" >&2 || fail "swapping the databases"
echo databases
state=started
eval "$RS_COMPOSE start odoo" >&2 || fail "starting Odoo"
echo started
n=0
until eval "$RS_COMPOSE"' exec -T odoo curl -fsS --max-time 5 http://localhost:8069/web/health' 2>/dev/null | grep -q '"pass"'; do
  n=$((n + 2)); [ "$n" -lt "$RS_HEALTH_TIMEOUT" ] || fail "waiting for /web/health"
  sleep 2
done
trap - TERM HUP INT
echo committed
"""
# Puts the original back as far as the swap went ($1 state, $2 "moved"/"none", $3 "yes": wait for the lock).
# Every step is safe to run again.
UNDO_SCRIPT = r"""state=$1 had=$2
trap '' PIPE HUP
if [ "$3" = yes ]; then exec 9>>"$RS_LOCK"; flock -w 300 9 || echo "could not take the lock; undoing anyway"; fi
echo "Undoing the swap of restore job $RS_JOB (it got to: $state) at $(date -u +%FT%TZ)."
[ "$state" = start ] && exit 0
eval "$RS_COMPOSE stop odoo"
printf '%s\n' "$RS_BACK" | eval "$RS_PSQL"
case $state in files|db|started)
  eval "$RS_COMPOSE"' run --rm --no-deps -T --entrypoint sh odoo -c "$RS_UNSWAP_DIRS" sh "$RS_ROOT" "$RS_DB" "$RS_NEW" "$RS_KEPT" "$had"' ;;
esac
eval "$RS_COMPOSE start odoo"
echo "Undone: the original serves again."
"""
# Odoo before 16 has no ``odoo neutralize``: what it does, in SQL (the autovacuum cron stays on).
NEUTRALIZE_SQL = r"""
UPDATE ir_mail_server SET active = false;
DO $$ BEGIN
  IF to_regclass('ir_model_data') IS NOT NULL THEN
    UPDATE ir_cron SET active = false WHERE id NOT IN (
      SELECT res_id FROM ir_model_data WHERE model = 'ir.cron' AND module = 'base' AND name = 'autovacuum_job');
  ELSE
    UPDATE ir_cron SET active = false WHERE name <> 'Base: Auto-vacuum internal data';
  END IF;
END $$;
UPDATE ir_config_parameter SET value = 'true' WHERE key = 'database.is_neutralized';
INSERT INTO ir_config_parameter (key, value)
  SELECT 'database.is_neutralized', 'true' WHERE NOT EXISTS
  (SELECT 1 FROM ir_config_parameter WHERE key = 'database.is_neutralized');
"""


class RestoreFailed(JobFailed):
    """A step of the restore failed; the message says which and what is serving."""


class RestoreRefused(Exception):
    """The restore cannot start (versions, a backup that is not good, another project); the message says why."""


def _major(version: str) -> str:
    return (version or "").strip().split(".")[0]


def _quote(name: str) -> str:
    """A database name as an SQL identifier (names are checked against ``DATABASE_NAME_RE``: no quotes)."""
    if not DATABASE_NAME_RE.fullmatch(name):
        raise RestoreFailed(f"{name!r} is not a database name the panel handles.")
    return f'"{name}"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def odoo_version_problem(backup: Backup, target: Environment) -> str:
    """Why the backup's Odoo cannot be restored into ``target`` (different major version), or ""."""
    odoo = backup.manifest.get("odoo") or {}
    made_by = odoo.get("image_version") or odoo.get("base_version") or ""
    if not made_by:
        return f"Backup #{backup.pk} does not say which Odoo version made it; it cannot be restored safely."
    if _major(made_by) != _major(target.project.odoo_version):
        return (
            f"Backup #{backup.pk} is of Odoo {made_by}, and {target} runs Odoo {target.project.odoo_version}: "
            "a database is only restored into the Odoo major version that wrote it."
        )
    return ""


def start_restore(
    *, backup: Backup, target: Environment, actor: Any, trigger: str = "user", deploy_first: bool = False
) -> Job:
    """Queue the restore of ``backup`` into ``target`` (the same environment or another of its project).

    Raises ``RestoreRefused`` (a clear message; the API answers 400) when the backup is not good, belongs to
    another project, or is of another Odoo major version, and ``TargetBusy`` while another job holds the target.
    """
    settle_backups(backup.environment)
    backup.refresh_from_db()
    if backup.status != BackupStatus.GOOD:
        raise RestoreRefused(
            f"Backup #{backup.pk} is {backup.get_status_display().lower()}: only good backups restore."
        )
    if backup.environment.project_id != target.project_id:
        raise RestoreRefused("A backup restores only into an environment of its own project.")
    problem = odoo_version_problem(backup, target)
    if problem:
        raise RestoreRefused(problem)
    with transaction.atomic():
        job = jobs.create_job(
            kind=JobKind.RESTORE,
            organization=target.project.organization,
            created_by=actor,
            environment=target,
            lock_key=backup_lock_key(target),
            # ``backup_id``: what retention keeps while the job is active (backups.scheduling.backups_in_use).
            params={
                "environment_id": target.pk,
                "backup_id": backup.pk,
                **({"deploy_first": True} if deploy_first else {}),
            },
            trigger=trigger,
        )
        record(
            action="environment.restore",
            actor=actor,
            obj=target,
            detail={"job": job.pk, "backup": backup.pk, "from": backup.environment_id},
        )
    return job


def restore_into_new_environment(*, backup: Backup, actor: Any, trigger: str = "user", **fields: Any) -> Job:
    """Create an environment of the backup's project (``fields``: name, kind, server, compose files, domain, as
    ``create_environment`` takes them) and queue one restore job into it that deploys it first (the environment's
    git ref, like its first deploy) and then restores the backup (neutralized unless it is production). Nothing is
    created when the restore is refused (``RestoreRefused``) or a field is invalid (``ValidationError``)."""
    from panel.inventory.services import create_environment

    server = fields.pop("server")
    with transaction.atomic():
        target = create_environment(project=backup.environment.project, server=server, actor=actor, **fields)
        return start_restore(backup=backup, target=target, actor=actor, trigger=trigger, deploy_first=True)


def confirmation_problem(target: Environment, confirm: str | None) -> str:
    """Why a restore over ``target`` is not confirmed ("" when it is): over production, the person must have typed
    the environment's name."""
    if target.kind == EnvironmentKind.PRODUCTION and (confirm or "").strip() != target.name:
        return f"Type the environment's name ({target.name}) to restore over production."
    return ""


def newest_good_backup(environment: Environment) -> Backup | None:
    """The environment's newest good backup."""
    return (
        Backup.objects.filter(environment=environment, status=BackupStatus.GOOD).order_by("-finished_at", "-pk").first()
    )


def copy_production_to(environment: Environment, actor: Any) -> Job:
    """*Copy production to staging*: restore the project's production's newest good backup into ``environment``
    (neutralized, as every restore into an environment that is not production). Raises ``RestoreRefused`` when
    ``environment`` is production itself, when the project has no production or it has no good backup."""
    if environment.kind == EnvironmentKind.PRODUCTION:
        raise RestoreRefused("Production is the source of the copy; choose another environment as the target.")
    production = (
        Environment.objects.filter(project=environment.project, kind=EnvironmentKind.PRODUCTION).order_by("pk").first()
    )
    if production is None:
        raise RestoreRefused("This project has no production environment to copy.")
    backup = newest_good_backup(production)
    if backup is None:
        raise RestoreRefused(f"{production} has no good backup yet: back it up first.")
    return start_restore(backup=backup, target=environment, actor=actor)


def _tar_header(name: str, size: int, mode: int = 0o644, mtime: float | None = None) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, int(mtime if mtime is not None else time.time())
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def _expected(entry: dict[str, Any]) -> StoredObject:
    return StoredObject(
        key=entry["key"], size=entry["size"], sha256=entry["sha256"], encrypted=entry.get("encrypted", False),
        plain_size=entry.get("plain_size"), plain_sha256=entry.get("plain_sha256", ""),
    )  # fmt: skip


class RestoreRun(EnvironmentCommands):
    """One restore job's work on the target's server."""

    failure = RestoreFailed
    capture_timeout = 300

    def __init__(self, context: JobContext, backup: Backup, target: Environment, storage: Storage) -> None:
        self.context = context
        self.backup = backup
        self.environment = target
        self.storage = storage
        self.target = Target.for_server(target.server)
        self.pipeline = Pipeline(context, target, deployment_id=0)
        self.job_id = context.job.pk
        self.database = ""
        self.db_user = ""
        self.files = 0
        self.bytes = 0
        self.swapped_back = False
        # An imported Odoo zip: dump.sql and the filestore come from the stored zip (backups.zipimport).
        self.source = restore_source(backup, storage)

    # -- remote commands (``EnvironmentCommands``, as the backup job runs them) --------------------------

    def psql(self, database: str, *commands: str) -> list[str]:
        argv = ["psql", "-U", self.db_user, "-d", database, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"]
        for command in commands:
            argv += ["-c", command]
        return self.db(*argv)

    @property
    def restored(self) -> str:
        return f"{self.database}_restore_{self.job_id}"

    @property
    def encoding_database(self) -> str:
        """The database whose encoding and collation the new one gets (the live one)."""
        return self.database

    @property
    def kept(self) -> str:
        return f"{self.database}_before_{self.job_id}"

    # -- 1. check -------------------------------------------------------------------------------------

    def check(self) -> None:
        """Refuse before anything is touched: Odoo major version and pg_dump vs pg_restore."""
        problem = odoo_version_problem(self.backup, self.environment)
        if problem:
            raise RestoreFailed(problem + " Nothing was changed.")
        self.database, image_version = self.odoo_facts()
        made_by = (self.backup.manifest.get("odoo") or {}).get("image_version", "")
        if image_version.strip() and _major(image_version) != _major(made_by):
            raise RestoreFailed(
                f"Backup #{self.backup.pk} is of Odoo {made_by}, and the target's odoo image is Odoo "
                f"{image_version.strip()}. Nothing was changed."
            )
        self.db_user, _dump, restore_version = self.db_facts()
        match = PG_VERSION_RE.search(restore_version)
        if match is None:
            raise RestoreFailed(f"Cannot read pg_restore's version in the target's db container: {restore_version!r}.")
        restore_major = int(match.group(1))
        postgresql = self.backup.manifest.get("postgresql") or {}
        dump_major = int(postgresql.get("pg_dump_major") or 0)
        if dump_major > restore_major:
            raise RestoreFailed(
                f"The dump was made by {postgresql.get('pg_dump_version') or f'pg_dump {dump_major}'}, newer than the "
                f"target's {restore_version.strip()}: it cannot read the dump. Upgrade the target's PostgreSQL "
                "first. Nothing was changed."
            )
        dump = (
            f"dump.sql of PostgreSQL {postgresql.get('server_version') or '?'} applied by psql (ON_ERROR_STOP)"
            if self.source is not None
            else f"dump of pg_dump {dump_major} read by {restore_version.strip()}"
        )
        self.context.write(
            f"Odoo {made_by} into Odoo {self.environment.project.odoo_version}; {dump}. The target's database is "
            f"{self.database}."
        )

    def clean_leftovers(self) -> None:
        """Remove what earlier unfinished restores left aside (``<db>_restore_*``); never the live or kept ones."""
        pattern = self.database.replace("_", r"\_") + r"\_restore\_%"
        names = self.capture(
            self.psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE {_literal(pattern)}"),  # noqa: S608
            "Listing earlier restores' databases",
        ).split()
        for name in names:
            self.capture(self.psql("postgres", f"DROP DATABASE IF EXISTS {_quote(name)}"), f"Dropping {name}")
            self.context.write(f"Dropped {name}, left by an earlier restore that did not finish.")
        self.capture(
            self.exec(ODOO_SERVICE, "sh", "-c", CLEAN_DIRS_SCRIPT, "sh", FILESTORE_ROOT, self.database),
            "Removing earlier restores' filestore directories",
        )

    # -- 3. restore aside -----------------------------------------------------------------------------

    def restore_database(self) -> None:
        """Create ``<db>_restore_<job>`` like the live one and ``pg_restore`` the dump into it from the storage."""
        entry = next((e for e in self.backup.manifest.get("objects", []) if e.get("role") == "database"), None)
        if entry is None and self.source is None:
            raise RestoreFailed(f"Backup #{self.backup.pk}'s manifest lists no database dump.")
        info = self.capture(
            self.psql(self.encoding_database, "SELECT pg_encoding_to_char(encoding) || ' ' || datcollate || ' ' || "
                                              "datctype FROM pg_database WHERE datname = current_database()"),
            "Reading the live database's encoding",
        ).split()  # fmt: skip
        encoding, collate, ctype = ([*info, "UTF8", "C", "C"])[:3]
        self.capture(
            self.psql("postgres", f"CREATE DATABASE {_quote(self.restored)} TEMPLATE template0 ENCODING "
                                  f"{_literal(encoding)} LC_COLLATE {_literal(collate)} LC_CTYPE {_literal(ctype)}"),
            "Creating the new database",
        )  # fmt: skip
        if self.source is not None:
            self.source.restore_database(self)  # psql ON_ERROR_STOP, one transaction
            return
        assert entry is not None
        size = entry.get("plain_size") or entry["size"]
        self.context.write(
            f"Restoring the dump ({size / 1e6:.1f} MB) into the new database {self.restored}; the live "
            f"{self.database} keeps serving."
        )
        started = time.monotonic()
        with self.storage.reader(entry["key"], expected=_expected(entry)) as source:
            result = self.stream(
                self.db("pg_restore", "--no-owner", "--exit-on-error", "-U", self.db_user, "-d", self.restored),
                "pg_restore", source=self.counted("Restoring the database", iter(lambda: source.read(CHUNK), b""), size),
                sink=lambda _chunk: None,
            )  # fmt: skip
            # pg_restore may exit before the last bytes: reading them is what checks the dump's size and SHA-256.
            while source.read(CHUNK):
                pass
        seconds = time.monotonic() - started
        self.context.write(
            f"pg_restore exited 0: {result.bytes_in / 1e6:.1f} MB in {seconds:.1f} s into {self.restored}."
        )

    def counted(self, label: str, chunks: Iterator[bytes], total: int | None) -> Iterator[bytes]:
        """``chunks`` as they are, reporting the job's progress (bytes of ``total``) on the way."""
        done = 0
        for chunk in chunks:
            done += len(chunk)
            self.context.progress(label, done, max(total, done) if total else None)
            yield chunk
        self.context.progress(label, done, done, force=True)

    def _filestore_stream(self) -> Iterator[bytes]:
        """The backup's filestore as one tar stream, built while the objects are read (SHA-1 and SHA-256 checked)."""
        if self.source is not None:
            yield from self.source.filestore_tar(self)
            return
        objects = self.backup.manifest.get("objects", [])
        for entry in objects:
            if entry.get("role") != "filestore":
                continue
            name = entry["name"]
            match = CONTENT_NAME_RE.fullmatch(name)
            size = entry.get("plain_size") or entry["size"]
            yield _tar_header(name, size)
            digest = hashlib.sha1(usedforsecurity=False)
            sent = 0
            with self.storage.reader(entry["key"], expected=_expected(entry)) as source:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    sent += len(chunk)
                    yield chunk
            if sent != size or (match is not None and digest.hexdigest() != match.group(2)):
                raise RestoreFailed(f"The stored file {name} is not what its name says; the restore stops.")
            yield _padding(size)
            self.files += 1
            self.bytes += size
        for entry in objects:
            if entry.get("role") not in ("filestore-other", "filestore-mismatched"):
                continue
            with (
                self.storage.reader(entry["key"], expected=_expected(entry)) as source,
                tarfile.open(fileobj=source, mode="r|") as archive,
            ):
                for member in archive:
                    if not member.isfile() or member.name.startswith("/") or ".." in member.name.split("/"):
                        continue
                    data = archive.extractfile(member)
                    assert data is not None
                    yield _tar_header(member.name, member.size, mode=member.mode & 0o777, mtime=member.mtime)
                    while chunk := data.read(CHUNK):
                        yield chunk
                    yield _padding(member.size)
                    self.files += 1
                    self.bytes += member.size
        yield b"\0" * (2 * BLOCK)

    def restore_filestore(self) -> None:
        """Stream the filestore into the new directory ``filestore/<db>_restore_<job>``."""
        directory = f"{FILESTORE_ROOT}/{self.restored}"
        started = time.monotonic()
        self.stream(
            self.exec(ODOO_SERVICE, "sh", "-c", EXTRACT_SCRIPT, "sh", directory), "Writing the new filestore",
            source=self.counted("Restoring the filestore", self._filestore_stream(), self.backup.filestore_bytes),
        )  # fmt: skip
        self.context.write(
            f"Wrote {self.files} files ({self.bytes / 1e6:.1f} MB in {time.monotonic() - started:.1f} s) into "
            f"{directory}; the live filestore keeps serving."
        )

    def verify(self) -> None:
        """``base`` installed in the new database, and every attachment it references in the new filestore."""
        base = self.capture(
            self.psql(self.restored, "SELECT count(*) FROM ir_module_module WHERE name = 'base' AND state = 'installed'"),
            "Checking base in the new database",
        ).strip()  # fmt: skip
        if base != "1":
            raise RestoreFailed(f"The restored database {self.restored} has no installed base module.")
        referenced = set(
            self.capture(
                self.psql(
                    self.restored,
                    "SELECT DISTINCT store_fname FROM ir_attachment WHERE coalesce(store_fname, '') <> ''",
                ),
                "Listing the attachments",
            ).split("\n")
        ) - {""}
        output = bytearray()
        self.stream(
            self.exec(ODOO_SERVICE, "sh", "-c", LIST_SCRIPT, "sh", f"{FILESTORE_ROOT}/{self.restored}"),
            "Listing the new filestore", sink=output.extend,
        )  # fmt: skip
        present = {
            item.decode("utf-8", errors="surrogateescape").partition(" ")[2]
            for item in bytes(output).split(b"\0")
            if item
        }
        if len(present) < self.files:
            # Every file that was sent must have arrived (a stream cut short would still pass the references).
            raise RestoreFailed(
                f"The restored filestore has {len(present)} files, but {self.files} were sent. Nothing live was "
                "changed."
            )
        missing = sorted(referenced - present)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise RestoreFailed(
                f"{len(missing)} attachments the restored database references are not in the restored filestore "
                f"({shown}). Nothing live was changed."
            )
        self.context.write(
            f"Checked: base is installed, all {len(present)} files sent are in the new filestore, and all "
            f"{len(referenced)} attachments the database references are there."
        )

    # -- 4. neutralize --------------------------------------------------------------------------------

    def neutralize(self) -> None:
        """Neutralize the new database (still aside), then the copy fix-ups: new uuid and secret, base URL."""
        major = int(_major(self.environment.project.odoo_version) or 0)
        if major >= 16:
            self.capture(
                self.exec(ODOO_SERVICE, "odoo", "neutralize", "-d", self.restored), "odoo neutralize", timeout=600
            )
            self.context.write(f"Neutralized {self.restored} with odoo neutralize (Odoo {major}).")
        else:
            self.capture(self.psql(self.restored, NEUTRALIZE_SQL), "Neutralizing (SQL)")
            self.context.write(
                f"Neutralized {self.restored} in SQL (Odoo {major} has no odoo neutralize): mail servers off, crons off "
                "but autovacuum, database.is_neutralized."
            )
        domain = self.environment.domain
        values = {"database.uuid": str(uuid.uuid4()), "database.secret": secrets.token_hex(32)}
        if domain:
            values["web.base.url"] = f"https://{domain}"
        statements = []
        for key, value in values.items():
            # Quoted by _literal (psql -c has no bind parameters); the values are the panel's own.
            statements.append(f"UPDATE ir_config_parameter SET value = {_literal(value)} WHERE key = {_literal(key)}")  # noqa: S608
            statements.append(
                f"INSERT INTO ir_config_parameter (key, value) SELECT {_literal(key)}, {_literal(value)} "  # noqa: S608
                f"WHERE NOT EXISTS (SELECT 1 FROM ir_config_parameter WHERE key = {_literal(key)})"
            )
        self.capture(self.psql(self.restored, *statements), "The copy's fix-ups")
        self.context.write(
            "The copy has a new database.uuid and database.secret"
            + (f", and web.base.url https://{domain}." if domain else " (no domain: web.base.url is as it was).")
        )

    # -- 5. swap --------------------------------------------------------------------------------------

    def swap_environment(self) -> dict[str, str]:
        """What the server-side swap (``SWAP_SCRIPT``) and its undo (``UNDO_SCRIPT``) need, as variables."""
        db, new, kept = _quote(self.database), _quote(self.restored), _quote(self.kept)
        compose = shlex.join(self.pipeline.compose())
        wait = (
            "DO $$ BEGIN FOR i IN 1..100 LOOP PERFORM pg_stat_clear_snapshot(); EXIT WHEN NOT EXISTS (SELECT 1 FROM "
            "pg_stat_activity WHERE datname = {name} AND pid <> pg_backend_pid()); PERFORM pg_sleep(0.1); END LOOP; "
            "END $$;"
        )
        forward = "\n".join(
            [
                f"ALTER DATABASE {db} ALLOW_CONNECTIONS false;",
                f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = {_literal(self.database)} "  # noqa: S608
                "AND pid <> pg_backend_pid();",
                wait.format(name=_literal(self.database)),
                f"BEGIN; ALTER DATABASE {db} RENAME TO {kept}; ALTER DATABASE {new} RENAME TO {db}; COMMIT;",
                f"ALTER DATABASE {kept} ALLOW_CONNECTIONS true;",
            ]
        )
        exists = "EXISTS (SELECT 1 FROM pg_database WHERE datname = {name})"
        # Only when the forward swap happened (the kept one exists): the restored one goes back aside. Either way
        # the live name accepts connections again. Safe to run twice.
        back = "\n".join(
            [
                f"DO $$ BEGIN IF {exists.format(name=_literal(self.kept))} THEN "
                f"EXECUTE 'ALTER DATABASE {db} ALLOW_CONNECTIONS false'; END IF; END $$;",
                f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = {_literal(self.database)} "  # noqa: S608
                f"AND pid <> pg_backend_pid() AND {exists.format(name=_literal(self.kept))};",
                wait.format(name=_literal(self.database)),
                f"DO $$ BEGIN IF {exists.format(name=_literal(self.kept))} THEN "
                f"EXECUTE 'ALTER DATABASE {db} RENAME TO {new}'; EXECUTE 'ALTER DATABASE {kept} RENAME TO {db}'; "
                "END IF; END $$;",
                f"ALTER DATABASE {db} ALLOW_CONNECTIONS true;",
            ]
        )
        directory = environment_directory(self.environment)
        return {
            "RS_JOB": str(self.job_id),
            "RS_ROOT": FILESTORE_ROOT,
            "RS_DB": self.database,
            "RS_NEW": self.restored,
            "RS_KEPT": self.kept,
            "RS_COMPOSE": compose,
            "RS_PSQL": compose + ' exec -T db sh -c "$RS_DBS" sh psql -U "$RS_USER" -d postgres -X -q -t -A '
            "-v ON_ERROR_STOP=1 -f -",
            "RS_DBS": DB_SCRIPT,
            "RS_USER": self.db_user,
            "RS_FORWARD": forward,
            "RS_BACK": back,
            "RS_SWAP_DIRS": SWAP_DIRS_SCRIPT,
            "RS_UNSWAP_DIRS": UNSWAP_DIRS_SCRIPT,
            "RS_UNDO": UNDO_SCRIPT,
            "RS_LOCK": f"{directory}/.panel-lock",
            "RS_UNDO_LOG": f"{directory}/restore-{self.job_id}-undo.log",
            "RS_HEALTH_TIMEOUT": str(int(settings.DEPLOY_HEALTH_TIMEOUT)),
        }

    def swap(self) -> None:
        """Stop Odoo, swap the filestore and the database, start Odoo and wait for /web/health, in one script on the
        server that swaps back on any failure, and also when the job is killed (see ``SWAP_SCRIPT``)."""
        variables = self.swap_environment()
        argv = ["env", *(f"{name}={value}" for name, value in variables.items()), "sh", "-c", SWAP_SCRIPT, "sh"]
        pending = bytearray()
        said: list[str] = []

        def sink(chunk: bytes) -> None:
            pending.extend(chunk)
            while b"\n" in pending:
                line, _, rest = bytes(pending).partition(b"\n")
                pending[:] = rest
                text = line.decode(errors="replace").strip()
                if text:
                    said.append(text)
                    self.context.write(self.describe(text))
                    self.context.log.flush()

        result = stream(
            self.target,
            argv,
            sink=sink,
            timeout=settings.BACKUP_STEP_TIMEOUT,
            idle_timeout=settings.BACKUP_IDLE_TIMEOUT,
        )
        if result.ok and said[-1:] == ["committed"]:
            self.pipeline.wait_healthy()
            return
        why = next((line.removeprefix("failed: ") for line in said if line.startswith("failed: ")), "")
        detail = f"{why} failed" if why else f"the swap script exited {result.exit_code}"
        tail = result.stderr.strip()[-400:]
        if said[-1:] == ["undone"]:
            self.pipeline.wait_healthy()  # a StepFailed here: not proven, the environment needs attention
            self.swapped_back = True
            raise RestoreFailed(
                f"The swap failed ({detail}: {tail}). It was undone: the original database and filestore serve again."
            )
        raise RestoreFailed(f"The swap failed ({detail}: {tail}) and was not undone; check the server.")

    def describe(self, line: str) -> str:
        """The swap script's progress in words."""
        words = {
            "stopped": "Stopped Odoo.",
            "files moved": f"Swapped the filestore: {self.database} is the restored one, the original is {self.kept}.",
            "files none": f"Swapped the filestore: {self.database} is the restored one (there was none before).",
            "databases": f"Swapped the databases: {self.database} is the restored one, the original is {self.kept}.",
            "started": "Started Odoo; waiting for /web/health.",
            "committed": "Odoo answers /web/health: pass. The restored copy serves.",
            "undone": f"Swapped back: the original {self.database} and its filestore serve again.",
        }
        return words.get(
            line, f"✗ {line.removeprefix('failed: ')} failed; swapping back." if line.startswith("failed: ") else line
        )

    def drop_aside(self) -> None:
        """After a failure before the swap: remove the new database and directory (nothing live was touched)."""
        self.capture(self.psql("postgres", f"DROP DATABASE IF EXISTS {_quote(self.restored)}"), "Dropping the copy")
        self.capture(
            self.exec(ODOO_SERVICE, "rm", "-rf", "--", f"{FILESTORE_ROOT}/{self.restored}"), "Removing the copy's files"
        )


def safety_backup(context: JobContext, target: Environment, source: Backup) -> Backup:
    """Back up the target first (kind ``pre-restore``, its own retention), with the backup job's own code, inside
    this job (and its hold). ``params.safety_backup_id`` keeps it from being pruned while the restore runs."""
    config = BackupSettings.objects.select_related("storage").filter(environment=target).first()
    storage = config.storage if config is not None else source.storage
    now = timezone.now()
    safety = Backup.objects.create(
        environment=target, storage=storage, kind=BackupKind.PRE_RESTORE, job=context.job,
        key_prefix=f"backups/{target.compose_project}/{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}",
        started_at=now, reason=f"Safety backup before restore job #{context.job.pk} of backup #{source.pk}.",
    )  # fmt: skip
    context.job.params["safety_backup_id"] = safety.pk
    Job.objects.filter(pk=context.job.pk).update(params=context.job.params)
    # run_backup reads the backup to take from the job's params (in memory only: the stored params keep naming the
    # backup being restored, which retention must keep).
    context.job.params["backup_id"] = safety.pk
    try:
        run_backup(context)
    finally:
        context.job.params["backup_id"] = source.pk
    safety.refresh_from_db()
    return safety


@handler(JobKind.RESTORE, hold=environment_hold)
def run_restore(context: JobContext) -> dict[str, Any]:
    """The restore job: check, safety backup, restore aside and check, neutralize, swap (and back on failure)."""
    params = context.job.params
    backup = Backup.objects.select_related("environment__project", "storage").get(pk=params["backup_id"])
    target = Environment.objects.select_related("server", "project").get(pk=params["environment_id"])
    try:
        storage = open_storage(backup.storage)
    except StorageError as exc:
        raise RestoreFailed(f"Cannot open the backup's storage: {exc}") from exc
    new_environment = bool(params.get("deploy_first")) and target.current_deployment_id is None
    if new_environment:
        # A new environment: deployed first (its own fresh database), then the backup replaces that database.
        from deployments.services import deploy_within

        deploy_within(context, target, context.job.created_by)
        target = Environment.objects.select_related("server", "project").get(pk=target.pk)
    work = RestoreRun(context, backup, target, storage)
    with context.step("Check the backup against the target"):
        work.check()
    safety: Backup | None = None
    if new_environment:
        context.write(f"{target} is new: no safety backup (its database was created by the deploy above).")
    else:
        with context.step("Safety backup of the target"):
            try:
                safety = safety_backup(context, target, backup)
            except (JobFailed, RemoteError) as exc:
                raise RestoreFailed(f"The safety backup of the target failed, so nothing was restored: {exc}") from exc
            context.write(f"Safety backup #{safety.pk} of {target} is good.")
    swapping = False
    try:
        with context.step("Restore the database aside"):
            work.clean_leftovers()
            work.restore_database()
        with context.step("Restore the filestore aside"):
            work.restore_filestore()
        with context.step("Check the restored copy"):
            work.verify()
        neutralized = target.kind != EnvironmentKind.PRODUCTION
        if neutralized:
            with context.step("Neutralize the copy"):
                work.neutralize()
        with context.step("Swap in the restored copy", cancelable=False):
            mark_changing(environment=target, job=context.job)
            swapping = True
            work.swap()
    except HoldLost:
        raise
    except (JobFailed, RemoteError, StorageError, tarfile.TarError, OSError, StepFailed) as exc:
        if swapping:
            if work.swapped_back:  # the original was proven healthy again
                finish_changing(environment=target, job=context.job, proven=True)
                raise
            what = (
                f"Restore job #{context.job.pk} failed during the swap and could not swap back ({exc}). The original "
                f"database is {work.database} or {work.kept}, its filestore likewise: check the server."
            )
            Environment.objects.filter(pk=target.pk).update(attention=what)
            finish_changing(environment=target, job=context.job, proven=False)
            raise RestoreFailed(what) from exc
        try:
            work.drop_aside()
        except (JobFailed, RemoteError) as cleanup:
            context.write(f"Could not remove the copy aside ({cleanup}); the next restore removes it.")
        if isinstance(exc, JobFailed):
            raise RestoreFailed(f"{exc} Nothing live was changed.") from exc
        raise RestoreFailed(f"The restore failed before the swap ({exc}). Nothing live was changed.") from exc
    finish_changing(environment=target, job=context.job, proven=True)
    context.write(
        f"Restored backup #{backup.pk} into {target}"
        + (" (neutralized)" if neutralized else "")
        + f"; the database before is kept as {work.kept}"
        + (f", safety backup #{safety.pk}." if safety is not None else ".")
    )
    return {
        "backup": backup.pk,
        "safety_backup": safety.pk if safety is not None else None,
        "database": work.database,
        "kept": work.kept,
        "neutralized": neutralized,
        "files": work.files,
    }


__all__ = [
    "RestoreFailed",
    "RestoreRefused",
    "copy_production_to",
    "newest_good_backup",
    "odoo_version_problem",
    "restore_into_new_environment",
    "start_restore",
]
