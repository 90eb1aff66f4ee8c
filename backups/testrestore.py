"""Test restores (job kind ``test_restore``): restore a good backup as a throwaway compose project, start Odoo on
it, require ``/web/health`` to pass and ``base`` to be at the version the backup's manifest records, record the
result on the backup, and remove the copy whatever happened.

Where: ``BackupSettings.test_restore_server``, else the environment's own server (the API may name another server
of the organization). The copy is the compose project ``panel-test-restore-<job>`` in
``~/<DEPLOY_ROOT>/.test-restores/<project>/`` on that server. It never touches the environment's containers,
database or filestore:

- its compose file is written by the panel from the environment's resolved configuration (``docker compose
  config``): only the ``db`` and ``odoo`` services, with their image, environment, command and health check; no
  ports, no labels (no Traefik route), no container names; every named volume is a new one of the throwaway
  project, bind mounts are read-only, and both services sit on the project's own *internal* network (no way out:
  no mail, no webhooks), where the db service keeps its aliases so that ``PGHOST`` names the copy's database;
- the images are the ones already on the chosen server: the backup's deployment's pinned images
  (``deployments.pipeline.pinned_image_ref``), or the current deployment's when those were pruned. A test restore
  never builds or pulls: on a server that lacks them it is refused with a message that says which are missing;
- the restore itself is the restore job's code (``backups.restore.RestoreRun``): the dump streamed into
  ``pg_restore --exit-on-error``, the filestore tar built from the objects (SHA-256 and SHA-1 checked while they
  stream: an altered object fails the test restore), the same checks, and the copy neutralized before Odoo starts
  (crons and mail off).

Holding: the job holds the throwaway project's lock on the server (``panel.remote.session.hold``), so every
command is tagged and ends with the job. An untagged *janitor* waits for that lock: once the job ends, however it
ended (a killed worker included), it takes the lock and removes the project's containers, volumes, network and
directory. Each test restore also removes, before it starts, what earlier ones left whose lock is free.
"""

from __future__ import annotations

import json
import logging
import re
import time
from contextlib import AbstractContextManager
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from backups.models import Backup, BackupSettings, BackupStatus, CheckStatus
from backups.restore import RestoreFailed, RestoreRun
from backups.services import DB_SERVICE, ODOO_SERVICE, settle_backups
from backups.storage import StorageError, open_storage
from deployments.models import Deployment, DeploymentStatus
from deployments.pipeline import Pipeline, StepFailed
from panel.accounts.services import record
from panel.inventory.models import Environment, Server
from panel.jobs import services as jobs
from panel.jobs.choices import JobKind
from panel.jobs.models import Job
from panel.jobs.runner import JobContext, JobFailed, handler
from panel.remote import RemoteError, Target, run_capture
from panel.remote.session import Hold, HoldLost, hold

logger = logging.getLogger(__name__)

PROJECT_PREFIX = "panel-test-restore-"
PROJECT_RE = re.compile(r"panel-test-restore-[0-9]{1,18}")
COMPOSE_FILE = "compose.json"
LABEL = "io.doodba-panel.test-restore"
# What a throwaway service keeps of the environment's resolved service (everything else, ports, labels, networks,
# container names, restart policies and limits included, is left out).
KEPT_KEYS = ("image", "environment", "command", "entrypoint", "healthcheck", "user", "working_dir", "shm_size",
             "tmpfs", "tty", "stop_signal", "stop_grace_period")  # fmt: skip
HEALTH_URL = "http://localhost:8069/web/health?db_server_status=1"
# $1 project, $2 its directory: remove its containers (with their anonymous volumes), volumes, networks and
# directory. Safe to run again; prints what it removed.
CLEAN_SCRIPT = r"""p=$1; d=$2
ids=$(docker ps -aq --filter "label=com.docker.compose.project=$p") || exit 1
[ -z "$ids" ] || docker rm -f -v $ids >/dev/null || exit 1
vols=$(docker volume ls -q --filter "label=com.docker.compose.project=$p") || exit 1
[ -z "$vols" ] || docker volume rm -f $vols >/dev/null || exit 1
nets=$(docker network ls -q --filter "label=com.docker.compose.project=$p") || exit 1
[ -z "$nets" ] || docker network rm $nets >/dev/null || exit 1
rm -rf -- "$d" || exit 1
echo "removed $(echo $ids | wc -w) $(echo $vols | wc -w) $(echo $nets | wc -w)"
"""
# $1 project, $2 directory, $3 CLEAN_SCRIPT: started outside the job (untagged, in its own session), it waits for
# the project's lock, which the job's hold keeps until the job ends, then cleans up.
JANITOR_SCRIPT = (
    'mkdir -p -- "$2" && env -u DOODBA_PANEL_JOB setsid sh -c \'exec flock "$2/.panel-lock" sh -c "$3" sh "$1" "$2"\' '
    'sh "$1" "$2" "$3" </dev/null >/dev/null 2>&1 &'
)
# $1 root of the test restores: the throwaway projects on this server (containers, volumes, networks, directories).
LEFTOVERS_SCRIPT = r"""{ docker ps -a --format '{{.Label "com.docker.compose.project"}}'
docker volume ls --format '{{.Label "com.docker.compose.project"}}'
docker network ls --format '{{.Label "com.docker.compose.project"}}'
ls -1 -- "$1" 2>/dev/null; } | grep -x 'panel-test-restore-[0-9]*' | sort -u; exit 0"""
# $1 project, $2 directory, $3 CLEAN_SCRIPT: clean up a leftover unless a job holds its lock (exit 75).
CLEAN_IF_FREE_SCRIPT = 'mkdir -p -- "$2" && exec flock -n -E 75 "$2/.panel-lock" sh -c "$3" sh "$1" "$2"'
IMAGES_SCRIPT = (
    'for r in "$@"; do printf "%s " "$r"; docker image inspect --format "{{.Id}}" -- "$r" 2>/dev/null || echo; done'
)


class TestRestoreRefused(Exception):
    """The test restore cannot start (a backup that is not good, a server of another organization)."""

    __test__ = False  # not a pytest test class


class TestRestoreFailed(RestoreFailed):
    """A step of the test restore failed; the message says which and why."""

    __test__ = False


def throwaway_project(job_id: int) -> str:
    """The throwaway compose project of a test restore job (no environment's compose project looks like it)."""
    return f"{PROJECT_PREFIX}{job_id}"


def throwaway_root() -> str:
    """Where the test restores' directories are on a server, relative to the SSH user's home."""
    return f"{settings.DEPLOY_ROOT}/.test-restores"


def throwaway_directory(project: str) -> str:
    return f"{throwaway_root()}/{project}"


def lock_key_for_test_restore(environment: Environment) -> str:
    """One test restore per environment at a time (it never holds the environment itself)."""
    return f"test-restore:{environment.pk}"


def server_for_test_restore(environment: Environment, server: Server | None = None) -> Server:
    """The server a test restore of ``environment`` runs on: ``server`` if given, else the environment's
    ``BackupSettings.test_restore_server``, else its own. Raises ``TestRestoreRefused`` for a server of another
    organization."""
    if server is None:
        config = BackupSettings.objects.select_related("test_restore_server").filter(environment=environment).first()
        server = (config.test_restore_server if config is not None else None) or environment.server
    allowed = {environment.server.organization_id, environment.project.organization_id}
    if server.organization_id not in allowed:
        raise TestRestoreRefused("Choose a server of the environment's organization for its test restores.")
    return server


def start_test_restore(backup: Backup, actor: Any, *, server: Server | None = None, trigger: str = "user") -> Job:
    """Queue a test restore of a good backup and return the job (see the module docstring).

    Raises ``TestRestoreRefused`` for a backup that is not good or a server of another organization, and
    ``TargetBusy`` while a test restore of the environment is queued or running.
    """
    environment = Environment.objects.select_related("server", "project").get(pk=backup.environment_id)
    settle_backups(environment)
    backup.refresh_from_db()
    if backup.status != BackupStatus.GOOD:
        raise TestRestoreRefused(
            f"Backup #{backup.pk} is {backup.get_status_display().lower()}: only good backups are test-restored."
        )
    chosen = server_for_test_restore(environment, server)
    with transaction.atomic():
        job = jobs.create_job(
            kind=JobKind.TEST_RESTORE,
            organization=environment.project.organization,
            created_by=actor,
            environment=environment,
            lock_key=lock_key_for_test_restore(environment),
            # ``backup_id``: what retention keeps while the job is active (backups.scheduling.backups_in_use).
            params={"backup_id": backup.pk, "server_id": chosen.pk},
            trigger=trigger,
        )
        Backup.objects.filter(pk=backup.pk).update(
            test_restore_status=CheckStatus.RUNNING, test_restore_reason="", test_restore_job=job
        )
        record(
            action="backup.test_restore",
            actor=actor,
            obj=environment,
            detail={"job": job.pk, "backup": backup.pk, "server": chosen.pk},
        )
    return job


def hold_for_test_restore(context: JobContext) -> AbstractContextManager[Hold]:
    """The job's hold: the throwaway project's lock on the chosen server (every command of the job is tagged)."""
    server = Server.objects.get(pk=context.job.params["server_id"])
    project = throwaway_project(context.job.pk)
    return hold(
        Target.for_server(server),
        job_id=context.job.pk,
        directory=throwaway_directory(project),
        compose_project=project,
        wait=settings.JOB_SERVER_LOCK_WAIT,
        on_message=context.write,
        subject="this test restore",
    )


def _aliases(service: dict[str, Any]) -> list[str]:
    """Every network alias the service has in the environment (the db's name ``PGHOST`` uses, e.g.)."""
    found: list[str] = []
    for definition in (service.get("networks") or {}).values():
        for alias in (definition or {}).get("aliases") or []:
            if isinstance(alias, str) and alias not in found:
                found.append(alias)
    return found


def throwaway_compose(config: dict[str, Any], *, project: str, database: str, images: dict[str, str]) -> dict[str, Any]:
    """The throwaway project's compose file, from the environment's resolved configuration (``docker compose
    config --format json``): see the module docstring. ``images`` overrides services' images (the pinned ones).
    Raises ``TestRestoreFailed`` when the configuration cannot be isolated (no db or odoo service, or an odoo
    whose ``PGHOST`` is not the project's db)."""
    services = config.get("services") or {}
    missing = [name for name in (DB_SERVICE, ODOO_SERVICE) if not isinstance(services.get(name), dict)]
    if missing:
        raise TestRestoreFailed(
            f"The environment's compose files have no {' and no '.join(missing)} service: a test restore needs both."
        )
    volumes: dict[str, Any] = {}
    rendered: dict[str, Any] = {}
    for name in (DB_SERVICE, ODOO_SERVICE):
        source = services[name]
        service = {key: source[key] for key in KEPT_KEYS if key in source}
        if name in images:
            service["image"] = images[name]
        if not service.get("image"):
            raise TestRestoreFailed(f"The {name} service names no image.")
        service["labels"] = {LABEL: project}
        mounts = []
        for index, mount in enumerate(source.get("volumes") or []):
            if not isinstance(mount, dict) or not mount.get("target"):
                continue
            kind = mount.get("type")
            if kind == "bind":
                # Configuration the image reads: seen, never written.
                mounts.append({"type": "bind", "source": mount["source"], "target": mount["target"], "read_only": True})
            elif kind in ("volume", None):
                # A new volume of the throwaway project, never the environment's (external ones included).
                volume = f"{name}-{index}"
                volumes[volume] = {"labels": {LABEL: project}}
                mounts.append({"type": "volume", "source": volume, "target": mount["target"]})
            elif kind == "tmpfs":
                mounts.append({"type": "tmpfs", "target": mount["target"]})
        if mounts:
            service["volumes"] = mounts
        service["networks"] = {"default": {"aliases": _aliases(source)} if _aliases(source) else None}
        rendered[name] = service
    odoo_env = dict(rendered[ODOO_SERVICE].get("environment") or {})
    pghost = str(odoo_env.get("PGHOST") or DB_SERVICE)
    if pghost not in (DB_SERVICE, *_aliases(services[DB_SERVICE])):
        raise TestRestoreFailed(
            f"The odoo service's PGHOST is {pghost!r}, which is not the project's db service: a test restore "
            "would not have a database of its own."
        )
    # The copy's own database; no cron threads (the copy is neutralized too), the threaded server.
    odoo_env.update({"PGDATABASE": database, "MAX_CRON_THREADS": "0", "WORKERS": "0"})
    rendered[ODOO_SERVICE]["environment"] = odoo_env
    rendered[ODOO_SERVICE]["depends_on"] = {DB_SERVICE: {"condition": "service_started"}}
    return {
        "name": project,
        "services": rendered,
        "networks": {"default": {"internal": True, "labels": {LABEL: project}}},
        "volumes": volumes,
    }


def _deployment_images(environment: Environment, backup: Backup) -> tuple[Deployment | None, str]:
    """The deployment whose images the copy runs: the backup's own while its images are on the server, else the
    environment's current one; and what the log says about it."""
    made_by = (backup.manifest.get("deployment") or {}).get("id")
    own = Deployment.objects.filter(pk=made_by, environment=environment).first() if made_by else None
    if own is not None and own.status == DeploymentStatus.SUCCEEDED and own.images_pruned_at is None and own.images:
        return own, f"the images of deployment #{own.pk}, which made the backup"
    current = environment.current_deployment
    if current is not None and current.images:
        why = "were removed" if own is not None else "are not known"
        return current, f"the images of the current deployment #{current.pk} (those of the backup's deployment {why})"
    return None, "the images the environment's compose files name"


class TestRestoreRun(RestoreRun):
    """A test restore's work: ``RestoreRun``'s restore, checks and neutralization, into the throwaway project."""

    __test__ = False
    failure = TestRestoreFailed

    def __init__(self, context: JobContext, backup: Backup, environment: Environment, server: Server, storage: Any):
        super().__init__(context, backup, environment, storage)
        self.server = server
        self.target = Target.for_server(server)
        self.project = throwaway_project(context.job.pk)
        self.directory = throwaway_directory(self.project)
        self.database = str(backup.manifest.get("database") or "")
        self.odoo_started = False
        self.expected_ids: dict[str, str] = {}

    # -- the throwaway project's commands ------------------------------------------------------------

    def compose(self, *args: str) -> list[str]:
        return ["docker", "compose", "--ansi", "never", "-p", self.project, "-f", f"{self.directory}/{COMPOSE_FILE}",
                *args]  # fmt: skip

    def exec(self, service: str, *argv: str) -> list[str]:
        """In the copy's db container; for odoo, in a one-off container until the copy's Odoo runs (it starts only
        once the restored database and filestore are in place). A shell runs without the image's entrypoint (its
        output is parsed)."""
        if service == DB_SERVICE or self.odoo_started:
            return self.compose("exec", "-T", service, *argv)
        if argv and argv[0] == "sh":
            return self.compose("run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", service, *argv[1:])
        return self.compose("run", "--rm", "--no-deps", "-T", service, *argv)

    @property
    def restored(self) -> str:
        return self.database  # the copy's database is restored under its own name, in its own server

    @property
    def encoding_database(self) -> str:
        return "postgres"

    # -- steps ---------------------------------------------------------------------------------------

    def start_janitor(self) -> None:
        """The clean-up that runs once the job's hold ends, however the job ended (see the module docstring)."""
        self.capture(["sh", "-c", JANITOR_SCRIPT, "sh", self.project, self.directory, CLEAN_SCRIPT],
                     "Starting the clean-up watcher")  # fmt: skip

    def clean_leftovers(self) -> None:
        """Remove what earlier test restores on this server left, unless one still holds its lock."""
        names = self.capture(["sh", "-c", LEFTOVERS_SCRIPT, "sh", throwaway_root()], "Listing earlier test restores")
        for name in names.split():
            if not PROJECT_RE.fullmatch(name) or name == self.project:
                continue
            directory = throwaway_directory(name)
            result = run_capture(
                self.target, ["sh", "-c", CLEAN_IF_FREE_SCRIPT, "sh", name, directory, CLEAN_SCRIPT], timeout=300
            )
            if result.exit_code == 75:
                self.context.write(f"{name} is another test restore, still running: left alone.")
            elif result.ok:
                self.context.write(f"Removed {name}, left by an earlier test restore.")
            else:
                self.context.write(f"Could not remove {name}, left by an earlier test restore: {result.stderr[-300:]}")

    def write_compose(self) -> list[str]:
        """Read the environment's resolved configuration, choose the images and write the throwaway compose file;
        returns the images it needs."""
        if not PROJECT_RE.fullmatch(self.project) or not self.database:
            raise TestRestoreFailed(f"Backup #{self.backup.pk}'s manifest names no database.")
        pipeline = Pipeline(self.context, self.environment, deployment_id=0)
        result = run_capture(pipeline.target, pipeline.compose("config", "--format", "json"), timeout=120)
        if not result.ok:
            raise TestRestoreFailed(
                f"Could not read the environment's compose configuration on {self.environment.server}: "
                f"{result.stderr.strip()[-300:]}"
            )
        try:
            config = json.loads(result.stdout)
        except ValueError as exc:
            raise TestRestoreFailed("docker compose config did not answer JSON.") from exc
        deployment, which = _deployment_images(self.environment, self.backup)
        images = {name: image["ref"] for name, image in (deployment.images if deployment else {}).items()}
        document = throwaway_compose(config, project=self.project, database=self.database, images=images)
        self.expected_ids = {
            name: image.get("id", "") for name, image in (deployment.images if deployment else {}).items()
        }
        needed = [document["services"][name]["image"] for name in (DB_SERVICE, ODOO_SERVICE)]
        self.context.write(f"The copy runs {which}: {', '.join(needed)}.")
        self.require_images(document)
        body = json.dumps(document, indent=1, sort_keys=True).encode()
        self.stream(["sh", "-c", 'umask 077; mkdir -p -- "$1" && cat >"$1/$2"', "sh", self.directory, COMPOSE_FILE],
                    "Writing the throwaway compose file", source=iter([body]))  # fmt: skip
        self.context.write(
            f"Wrote {self.directory}/{COMPOSE_FILE}: project {self.project}, services db and odoo on its own internal "
            "network, new volumes; nothing of the environment's."
        )
        return needed

    def require_images(self, document: dict[str, Any]) -> None:
        """Every image the copy runs is on the chosen server (a test restore never builds nor pulls)."""
        wanted = {name: document["services"][name]["image"] for name in (DB_SERVICE, ODOO_SERVICE)}
        out = self.capture(["sh", "-c", IMAGES_SCRIPT, "sh", *wanted.values()], "Looking for the images")
        found = dict([*line.split(" ", 1), ""][:2] for line in out.splitlines() if line.strip())
        absent = []
        for service, ref in wanted.items():
            image_id = found.get(ref, "").strip()
            expected = self.expected_ids.get(service, "")
            if not image_id or (expected and image_id != expected):
                absent.append(f"{ref} ({service})")
        if absent:
            raise TestRestoreFailed(
                f"{self.server} does not have the images the copy needs: {', '.join(absent)}. A test restore runs the "
                "environment's images as they are on the server and never builds or pulls them: run it on the "
                f"environment's own server ({self.environment.server}), or load those images on {self.server} first "
                "(docker save | docker load)."
            )

    def start_database(self) -> None:
        """Start the copy's db service and wait until it accepts connections; drop the empty database its image
        may have created under the backup's database name (only the copy's own, new server has it)."""
        self.capture(self.compose("up", "-d", "--no-build", "--pull", "never", DB_SERVICE), "Starting the copy's db",
                     timeout=300)  # fmt: skip
        self.db_user, _dump, restore_version = self.db_facts()
        deadline = time.monotonic() + settings.DEPLOY_DB_WAIT_TIMEOUT
        # Over TCP: the images' first start runs initdb under a temporary server that listens on the socket only,
        # then stops it; only the real server listens on TCP.
        ready = ["pg_isready", "-q", "-h", "127.0.0.1"]
        while True:
            result = run_capture(self.target, self.db(*ready), timeout=60)
            if result.ok:
                result = run_capture(self.target, self.psql("postgres", "SELECT 1"), timeout=60)
            if result.ok:
                break
            if time.monotonic() > deadline:
                raise TestRestoreFailed(f"The copy's database server did not start: {result.stderr.strip()[-300:]}")
            time.sleep(1)
        dump_major = int((self.backup.manifest.get("postgresql") or {}).get("pg_dump_major") or 0)
        match = re.search(r"\(PostgreSQL\) (\d+)", restore_version)
        if match is None or int(match.group(1)) < dump_major:
            raise TestRestoreFailed(
                f"The copy's pg_restore ({restore_version.strip()}) cannot read a dump of pg_dump {dump_major}."
            )
        from backups.restore import _quote

        self.capture(self.psql("postgres", f"DROP DATABASE IF EXISTS {_quote(self.database)}"), "Emptying the copy")
        self.context.write(f"The copy's database server answers ({restore_version.strip()}).")

    def base_version(self) -> str:
        """``base``'s installed version in the copy's database."""
        return self.capture(
            self.psql(self.database, "SELECT coalesce(latest_version, '') FROM ir_module_module "
                                     "WHERE name = 'base' AND state = 'installed'"),
            "Reading base's version",
        ).strip()  # fmt: skip

    def start_odoo(self) -> None:
        """Start the copy's Odoo and wait until ``/web/health`` passes (``DEPLOY_HEALTH_TIMEOUT``)."""
        self.capture(self.compose("up", "-d", "--no-build", "--pull", "never", ODOO_SERVICE),
                     "Starting the copy's Odoo", timeout=300)  # fmt: skip
        self.odoo_started = True
        timeout = settings.DEPLOY_HEALTH_TIMEOUT
        deadline = time.monotonic() + timeout
        answer = ""
        while time.monotonic() < deadline:
            self.context.check_lease()
            result = run_capture(
                self.target, self.exec(ODOO_SERVICE, "curl", "-fsS", "--max-time", "5", HEALTH_URL), timeout=30
            )
            answer = (result.stdout or result.stderr).strip()[-200:]
            if result.ok and '"pass"' in result.stdout:
                self.context.write(f"The copy's Odoo answers /web/health: {result.stdout.strip()[:200]}")
                return
            time.sleep(settings.DEPLOY_HEALTH_INTERVAL)
        raise TestRestoreFailed(
            f"The copy's Odoo did not pass /web/health within {timeout:g} s ({answer or 'no answer'})."
        )

    def remove(self) -> str:
        """Remove the copy: containers, volumes, network, directory."""
        out = self.capture(["sh", "-c", CLEAN_SCRIPT, "sh", self.project, self.directory], "Removing the copy",
                           timeout=300)  # fmt: skip
        parts = out.split()
        if len(parts) == 4 and parts[0] == "removed":
            return f"{parts[1]} containers, {parts[2]} volumes, {parts[3]} networks and {self.directory}"
        return self.directory


def _record(backup: Backup, job: Job, status: str, reason: str) -> None:
    Backup.objects.filter(pk=backup.pk).update(
        test_restore_status=status,
        test_restored_at=timezone.now(),
        test_restore_reason=reason[:2000],
        test_restore_job=job,
    )


@handler(JobKind.TEST_RESTORE, hold=hold_for_test_restore)
def run_test_restore(context: JobContext) -> dict[str, Any]:
    """The test restore job: the throwaway copy restored, checked, started and removed; the result on the backup."""
    backup = Backup.objects.select_related("storage").filter(pk=context.job.params.get("backup_id")).first()
    if backup is None:
        raise TestRestoreFailed("The backup is gone (pruned or deleted); there is nothing to test-restore.")
    environment = Environment.objects.select_related("server", "project", "current_deployment").get(
        pk=backup.environment_id
    )
    server = Server.objects.get(pk=context.job.params["server_id"])
    Backup.objects.filter(pk=backup.pk).update(test_restore_status=CheckStatus.RUNNING, test_restore_job=context.job)
    try:
        result = _test_restore(context, backup, environment, server)
    except (JobFailed, RemoteError, StorageError, StepFailed, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        _record(backup, context.job, CheckStatus.FAILED, reason)
        if isinstance(exc, TestRestoreFailed):
            raise
        raise TestRestoreFailed(f"The test restore failed: {reason}") from exc
    except BaseException as exc:
        # A lost hold, a cancel: failed, never passed (a killed worker: settle_checks says so later).
        try:
            _record(backup, context.job, CheckStatus.FAILED, str(exc) or type(exc).__name__)
        except Exception:
            logger.warning("test restore %s: could not record how it ended", context.job.pk, exc_info=True)
        raise
    _record(backup, context.job, CheckStatus.PASSED, "")
    return result


def _test_restore(context: JobContext, backup: Backup, environment: Environment, server: Server) -> dict[str, Any]:
    if backup.status != BackupStatus.GOOD:
        raise TestRestoreFailed(f"Backup #{backup.pk} is {backup.status}: only good backups are test-restored.")
    expected_base = str((backup.manifest.get("odoo") or {}).get("base_version") or "")
    if not expected_base:
        raise TestRestoreFailed(f"Backup #{backup.pk}'s manifest does not say which version of base it holds.")
    try:
        storage = open_storage(backup.storage)
    except StorageError as exc:
        raise TestRestoreFailed(f"Cannot open the backup's storage: {exc}") from exc
    work = TestRestoreRun(context, backup, environment, server, storage)
    work.start_janitor()
    try:
        with context.step("Prepare the throwaway project"):
            work.clean_leftovers()
            work.write_compose()
        with context.step("Start the copy's database"):
            work.start_database()
        with context.step("Restore the database"):
            work.restore_database()
        with context.step("Restore the filestore"):
            work.restore_filestore()
        with context.step("Check the restored copy"):
            work.verify()
            work.neutralize()
        with context.step("Start Odoo on the copy"):
            work.start_odoo()
            found = work.base_version()
            if found != expected_base:
                raise TestRestoreFailed(
                    f"base is at version {found or '(not installed)'} in the copy, and the backup's manifest says "
                    f"{expected_base}."
                )
            context.write(f"base is at {found}, as the backup's manifest says.")
    finally:
        try:
            with context.step("Remove the copy", cancelable=False):
                context.write(f"Removed the copy: {work.remove()}.")
        except (JobFailed, RemoteError, HoldLost) as exc:
            context.write(f"Could not remove the copy now ({exc}); it is removed once this job's hold ends.")
    context.write(f"Backup #{backup.pk} passed its test restore on {server}.")
    return {"backup": backup.pk, "server": server.pk, "project": work.project, "base_version": found,
            "files": work.files}  # fmt: skip


def _last_scheduled_test_restores(environment_ids: list[int]) -> dict[int, Any]:
    """When each environment's newest scheduled test restore was queued (any outcome)."""
    rows = (
        Job.objects.filter(kind=JobKind.TEST_RESTORE, trigger="schedule", environment_id__in=environment_ids)
        .values("environment_id")
        .order_by()
        .annotate(last=Max("created_at"))
        .values_list("environment_id", "last")
    )
    return dict(rows)


def start_due_test_restores(now: Any, *, actor: Any = None) -> list[int]:
    """The schedule fan-out's part for test restores (``backups.scheduling.run_schedules``): for each environment
    whose ``test_restore_schedule`` had a run since its last scheduled test restore (never test-restored: since its
    first good backup), test-restore its newest good backup. A busy environment (one running already) waits for the
    next run; a schedule that no longer validates is logged and skipped. Returns the environments started."""
    from backups.restore import newest_good_backup
    from backups.schedule import is_due
    from panel.jobs.services import QueueUnavailable, TargetBusy

    configs = list(
        BackupSettings.objects.exclude(test_restore_schedule="")
        .select_related("environment__server", "environment__project__organization", "test_restore_server")
        .order_by("environment_id")
    )
    last = _last_scheduled_test_restores([config.environment_id for config in configs])
    started: list[int] = []
    for config in configs:
        environment = config.environment
        backup = newest_good_backup(environment)
        if backup is None:
            continue
        since = last.get(environment.pk)
        if since is None:
            first = Backup.objects.filter(environment=environment, status=BackupStatus.GOOD).order_by("started_at")
            since = first.values_list("started_at", flat=True).first()
        try:
            due = is_due(config.test_restore_schedule, config.time_zone, since, now)
        except ValidationError as exc:
            logger.warning(
                "environment %s: its test restore schedule %r in %s no longer validates, skipped: %s",
                environment.pk, config.test_restore_schedule, config.time_zone, "; ".join(exc.messages),
            )  # fmt: skip
            continue
        if not due:
            continue
        try:
            start_test_restore(backup, actor, trigger="schedule")
        except TargetBusy:
            continue
        except (TestRestoreRefused, JobFailed, QueueUnavailable) as exc:
            logger.warning("environment %s: the scheduled test restore could not start: %s", environment.pk, exc)
            continue
        started.append(environment.pk)
    return started


__all__ = [
    "TestRestoreFailed",
    "TestRestoreRefused",
    "run_test_restore",
    "server_for_test_restore",
    "start_due_test_restores",
    "start_test_restore",
    "throwaway_compose",
]
