"""The deploy pipeline: what runs on the server, step by step, for a deploy, a promotion or a rollback.

Layout on the server, relative to the SSH user's home (``DEPLOY_ROOT``)::

    doodba-panel/<compose project>/src/                          the project's git checkout (detached at the commit)
    doodba-panel/<compose project>/src/.docker/*.env             secrets, mode 0600, written at each deploy
    doodba-panel/<compose project>/src/docker-compose.panel.yaml the panel-managed compose override
    doodba-panel/<compose project>/.panel/                       deploy key and known_hosts while fetching

Every command is an argv list run through ``panel.remote`` (``shlex.join`` on the way to the remote shell); the
only shell scripts are constant strings that take their variable parts as positional arguments.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from deployments.traefik import add_traefik
from panel.compose import compose_file_text
from panel.inventory.models import Environment, Project
from panel.inventory.prepare import PrepareFailed, create_networks, declared_networks, describe_networks
from panel.inventory.services import environment_directory
from panel.jobs.runner import JobContext, JobFailed
from panel.remote import CommandResult, RemoteError, Target, run, run_capture
from panel.validators import check_git_url_policy

OVERRIDE_FILE = "docker-compose.panel.yaml"
ENV_FILES = ("odoo.env", "db-access.env", "db-creation.env", "smtp.env", "backup.env")
SECRET_FILE_BY_NAME = {
    "ADMIN_PASSWORD": "odoo.env",
    "PGPASSWORD": "db-access.env",
    "POSTGRES_PASSWORD": "db-creation.env",
}
SECRET_FILE_BY_PREFIX = (("SMTP_", "smtp.env"), ("AWS_", "backup.env"), ("PASSPHRASE", "backup.env"))
SERVICE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
PREPARE_SCRIPT = 'mkdir -p -- "$1" && { test -d "$2/.git" || git init -q -- "$2"; }'
RESOLVE_SCRIPT = (
    'd=$1; shift; for r in "$@"; do git -C "$d" rev-parse --verify --quiet "$r^{commit}" && exit 0; done; exit 1'
)
CHECKOUT_SCRIPT = 'git -C "$1" checkout --quiet --force --detach "$2" && git -C "$1" clean -ffdxq'
PIN_SCRIPT = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do docker tag "$1" "$2" || exit 1; shift 2; n=$((n - 1)); done; '
    'exec docker image inspect --format "{{.Id}}" -- "$@"'
)
HEALTH_MARKER = "@@panel-health@@"
# The container listing and Odoo's answer are asked for at the same time; the answer (with curl's error, if any)
# is printed after the marker, and the script exits with curl's code.
HEALTH_SCRIPT = (
    "t=$(mktemp) || exit 1; "
    '"$@" exec -T odoo curl -fsS --max-time 5 http://localhost:8069/web/health >"$t" 2>&1 </dev/null & '
    f'"$@" ps --all --format json </dev/null; wait $!; rc=$?; echo "{HEALTH_MARKER}"; cat "$t"; rm -f "$t"; exit $rc'
)
DESCRIBE_SCRIPT = (
    'git -C "$1" log -1 --format=%s "$2"; echo ---; '
    'if [ -n "$3" ]; then git -C "$1" log --format="%H %s" -n 100 "$3..$2" || true; fi'
)
# Before an update: dump the database (pg_dump custom format, run in the odoo service with its own PG* settings)
# to a file on the server, mode 0600, check it is a custom-format archive, and keep the newest $3 dumps.
SNAPSHOT_SCRIPT = (
    'umask 077; d=$1; f=$2; keep=$3; shift 3; mkdir -p -- "$d" || exit 1; '
    '"$@" >"$d/$f.partial" </dev/null && [ "$(head -c 5 "$d/$f.partial")" = PGDMP ] '
    '|| { echo "the dump is not a pg_dump archive" >&2; rm -f -- "$d/$f.partial"; exit 1; }; '
    'mv -f -- "$d/$f.partial" "$d/$f"; '
    'ls -1t -- "$d" | grep "[.]dump$" | tail -n "+$((keep + 1))" | while read -r old; do rm -f -- "$d/$old"; done; '
    'wc -c <"$d/$f"'
)
# Feed a file to a command's stdin (the restore below reads the dump on stdin).
FEED_SCRIPT = 'f=$1; shift; exec "$@" <"$f"'
# Both run inside the odoo service (PG* from its environment). The first restores the dump (on stdin) into a new
# database with the old one's encoding and collation, while everything keeps running; the second, once Odoo is
# stopped, refuses and closes connections to the old database and swaps the two names in one transaction. The
# replaced database is kept as panel_failed_<name> (what was written during the failed deploy).
RESTORE_SCRIPT = r"""set -e
db=${PGDATABASE:?PGDATABASE is not set in the odoo service}; new="panel_restore_$db"
set -- $(psql -X -q -tA -F ' ' -d "$db" -c "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = current_database()")
dropdb --if-exists -- "$new"
createdb -T template0 -E "$1" --lc-collate="$2" --lc-ctype="$3" -- "$new"
pg_restore --no-owner --exit-on-error -d "$new"
echo "Restored the dump into the new database $new."
"""
SWAP_SCRIPT = r"""db=${PGDATABASE:?PGDATABASE is not set in the odoo service}; new="panel_restore_$db"; failed="panel_failed_$db"
psql -X -q -v ON_ERROR_STOP=1 -d postgres -v db="$db" -v new="$new" -v failed="$failed" <<'SQL' && exit 0
DROP DATABASE IF EXISTS :"failed";
ALTER DATABASE :"db" ALLOW_CONNECTIONS false;
SELECT count(pg_terminate_backend(pid)) AS closed FROM pg_stat_activity WHERE datname = :'db' AND pid <> pg_backend_pid() \gset
\echo Refused new connections to :db and closed :closed open ones.
BEGIN;
ALTER DATABASE :"db" RENAME TO :"failed";
ALTER DATABASE :"new" RENAME TO :"db";
ALTER DATABASE :"failed" ALLOW_CONNECTIONS true;
COMMIT;
\echo Swapped the databases: :db is the restored one, :failed the one the failed deploy left.
SQL
echo "ALTER DATABASE :\"db\" ALLOW_CONNECTIONS true;" | psql -X -q -d postgres -v db="$db"
exit 1
"""
# What runs of a compose project, read from Docker alone (the compose files on the server may be half-written):
# one "service image-id state container-id" line per container.
RUNNING_SCRIPT = (
    'ids=$(docker ps -aq --filter "label=com.docker.compose.project=$1" '
    '--filter "label=com.docker.compose.oneoff=False") || exit 1; [ -n "$ids" ] || exit 0; '
    "exec docker inspect --format "
    "'{{index .Config.Labels \"com.docker.compose.service\"}} {{.Image}} {{.State.Status}} {{.Id}}' $ids"
)
DB_STATE_SQL = "SELECT count(*) FROM pg_tables WHERE tablename = 'ir_module_module'"
DB_NOT_READY = (
    "could not connect",
    "connection refused",
    "starting up",
    "no such file or directory",
    "timeout expired",
)
# Free space of each path (its nearest existing directory: a first deploy's directory does not exist yet) as
# "available-blocks block-size path" lines, in the order given; Docker's data root, asked of Docker, comes last (left
# out when Docker does not answer: the steps that need Docker say why).
DISK_SCRIPT = (
    'r=$(docker info --format "{{.DockerRootDir}}" 2>/dev/null) || r=; '
    'for p in "$@" ${r:+"$r"}; do q=$p; while [ ! -e "$q" ]; do q=$(dirname -- "$q"); done; '
    'echo "$(stat -f -c "%a %S" -- "$q") $p"; done'
)
# Every tag of the given repositories, one "repository:tag" line each.
TAGS_SCRIPT = 'for r in "$@"; do docker image ls --format "{{.Repository}}:{{.Tag}}" -- "$r" || exit 1; done'
# The tags the panel makes on its images: per deployment (pinned_image_ref) and per commit (image_ref).
PANEL_TAG_RE = re.compile(r"panel-[0-9]+|[0-9a-f]{12}")


class StepFailed(JobFailed):
    """A pipeline step failed; the message says which and why."""


@dataclass(frozen=True)
class DiskSpace:
    """Free space of one path on the server, as an unprivileged user may use it."""

    path: str
    what: str
    free_mb: int


def secret_file_for(name: str) -> str:
    """Which Doodba ``.docker/*.env`` file a secret goes to (unknown names go to ``odoo.env``)."""
    if name in SECRET_FILE_BY_NAME:
        return SECRET_FILE_BY_NAME[name]
    for prefix, filename in SECRET_FILE_BY_PREFIX:
        if name.startswith(prefix):
            return filename
    return "odoo.env"


def env_file_value(value: str) -> str:
    r"""One value as compose-go's dotenv parser (``dotenv/parser.go``) reads it back exactly: in double quotes.

    Single quotes cannot carry every value: inside them the parser keeps a backslash except before a quote, where
    it drops it, so ``a\\b`` arrives with both backslashes and a backslash before a ``'`` has no spelling at all.
    In double quotes it keeps escape pairs while looking for the closing quote (``\"`` is not the end), then
    expands ``\\ \" \$ \n \t \0NNN ...`` and interpolates ``$``. So a backslash is written ``\\``, a double quote
    ``\"`` and a dollar sign ``$$``; everything else (tabs, ``#``, ``'``, ``=``, spaces at either end, any Unicode)
    as it is. Line breaks, NUL and the other control characters never get here (``validate_env_value``).
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$") + '"'


def env_file_text(values: dict[str, str]) -> str:
    """A compose ``env_file`` whose values reach the container byte for byte (``env_file_value``)."""
    return "".join(f"{name}={env_file_value(values[name])}\n" for name in sorted(values))


def compose_escape(value: str) -> str:
    """Compose interpolates ``$`` in compose files: double it so values stay literal."""
    return value.replace("$", "$$")


def image_ref(environment: Environment, service: str, commit: str) -> str:
    """The tag compose builds a service's image under: per commit, so redeploying a commit changes nothing."""
    return f"{environment.compose_project}-{service}:{commit[:12]}"


def pinned_image_ref(environment: Environment, service: str, deployment_id: int) -> str:
    """A second tag per deployment, never moved, so a rollback starts exactly the image that deployment ran."""
    return f"{environment.compose_project}-{service}:panel-{deployment_id}"


def panel_made_tag(environment: Environment, ref: str) -> bool:
    """Whether ``ref`` is a tag the panel made on an image of this environment (``image_ref``, ``pinned_image_ref``)."""
    repository, _, tag = ref.rpartition(":")
    return repository.startswith(f"{environment.compose_project}-") and bool(PANEL_TAG_RE.fullmatch(tag))


def render_override(
    environment: Environment, commit: str, services: Sequence[str], built: Sequence[str]
) -> dict[str, Any]:
    """The panel-managed compose override: image tags, Odoo workers and cron threads, limits, labels.

    Nothing in it changes between two deploys of the same commit and settings, so such a redeploy recreates no
    container.
    """
    labels = {"io.doodba-panel.environment": str(environment.pk)}
    rendered: dict[str, Any] = {name: {"labels": dict(labels)} for name in services}
    for name in built:
        rendered[name]["image"] = image_ref(environment, name, commit)
    if "odoo" in rendered:
        odoo_env = {
            "WORKERS": str(environment.workers),
            "MAX_CRON_THREADS": str(environment.cron_threads),
            "PROXY_MODE": "true",
            "LIST_DB": "false",
            **environment.env_vars,
        }
        rendered["odoo"]["environment"] = {key: compose_escape(value) for key, value in odoo_env.items()}
        if environment.cpu_limit:
            rendered["odoo"]["cpus"] = float(environment.cpu_limit)
        if environment.memory_limit:
            rendered["odoo"]["mem_limit"] = environment.memory_limit.lower()
        if environment.domain:
            rendered["odoo"]["labels"]["doodba.domain.main"] = environment.domain
    document: dict[str, Any] = {"services": rendered}
    add_traefik(document, environment)
    return document


class RemoteSteps:
    """Running a job's commands on its server: streamed into the log, or captured."""

    context: JobContext
    target: Target
    root: str

    def run(self, argv: Sequence[str], *, what: str, timeout: float | None = None, stdin: bytes | None = None) -> None:
        """Run a command, streaming its output into the job log; a non-zero exit fails the step."""
        code = run(self.target, argv, on_output=self.context.log.output, timeout=timeout, stdin=stdin)
        if code != 0:
            raise StepFailed(f"{what} failed (exit code {code}); its output is in the log above.")

    def capture(self, argv: Sequence[str], *, timeout: float | None = 120) -> CommandResult:
        """Run a command quietly and return its output."""
        return run_capture(self.target, argv, timeout=timeout)

    def upload(self, files: dict[str, str]) -> None:
        """Write files (paths relative to ``root``) with mode 0600, in one round trip (a tar stream)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for name, content in files.items():
                data = content.encode()
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
                archive.addfile(info, io.BytesIO(data))
        code = run(
            self.target, ["tar", "-x", "-p", "-f", "-", "-C", self.root], on_output=self.context.log.output,
            stdin=buffer.getvalue(), timeout=120,
        )  # fmt: skip
        if code != 0:
            raise StepFailed(f"Could not write {', '.join(sorted(files))} on the server.")


@dataclass
class Checkout(RemoteSteps):
    """A git checkout on a server (``<root>/src``), fetched with the project's deploy key and pinned host keys."""

    context: JobContext
    target: Target
    root: str

    @property
    def src(self) -> str:
        """The working tree."""
        return f"{self.root}/src"

    def fetch(self, project: Project, ref: str) -> str:
        """Fetch the repository on the server and check out ``ref`` (branch, tag or commit); return the commit."""
        try:
            # Checked again at each deploy: a name may resolve elsewhere today than when the project was saved.
            check_git_url_policy(project.git_url)
        except ValidationError as exc:
            raise StepFailed(" ".join(exc.messages)) from exc
        self.run(["sh", "-c", PREPARE_SCRIPT, "sh", self.root, self.src], what="Preparing the git checkout")
        fetch = ["git", "-C", self.src, "fetch", "--force", "--prune", "--no-tags", "--", project.git_url,
                 "+refs/heads/*:refs/remotes/panel/*", "+refs/tags/*:refs/tags/*"]  # fmt: skip
        if self._needs_ssh(project.git_url):
            fetch = self._with_deploy_key(project, fetch)
        try:
            self.run(fetch, what="git fetch", timeout=900)
        finally:
            if self._needs_ssh(project.git_url):
                self.run(["rm", "-rf", "--", f"{self.root}/.panel"], what="Removing the deploy key")
        candidates = [f"refs/remotes/panel/{ref}", f"refs/tags/{ref}", ref]
        found = self.capture(["sh", "-c", RESOLVE_SCRIPT, "sh", self.src, *candidates])
        commit = found.stdout.strip().splitlines()[0] if found.ok and found.stdout.strip() else ""
        if not re.fullmatch(r"[0-9a-f]{40}", commit):
            raise StepFailed(f"{ref!r} is not a branch, tag or commit of {project.git_url}.")
        self.run(["sh", "-c", CHECKOUT_SCRIPT, "sh", self.src, commit], what="git checkout")
        self.context.write(f"Checked out {commit[:12]} ({ref}).")
        return commit

    def _needs_ssh(self, url: str) -> bool:
        return url.startswith("ssh://") or (not url.startswith(("https://", "/")) and "@" in url)

    def _with_deploy_key(self, project: Project, argv: list[str]) -> list[str]:
        if not project.git_known_hosts.strip():
            raise StepFailed(
                "The project has no git server host key: add its known_hosts lines (e.g. from ssh-keyscan, verified "
                "out of band) to the project, so the server can check whom it fetches from."
            )
        if not project.deploy_key:
            raise StepFailed("The project has no deploy key: generate one and add it to the git repository.")
        self.upload(
            {
                ".panel/deploy_key": project.deploy_key.rstrip("\n") + "\n",
                ".panel/known_hosts": project.git_known_hosts.rstrip("\n") + "\n",
            }
        )
        base = f'"$HOME/{self.root}/.panel'
        ssh = (
            f'ssh -F /dev/null -i {base}/deploy_key" -o IdentitiesOnly=yes -o BatchMode=yes '
            f'-o StrictHostKeyChecking=yes -o UserKnownHostsFile={base}/known_hosts"'
        )
        return ["env", f"GIT_SSH_COMMAND={ssh}", *argv]


@dataclass
class Pipeline(RemoteSteps):
    """Runs the steps of one deployment on the environment's server, logging into the job."""

    context: JobContext
    environment: Environment
    deployment_id: int
    target: Target = field(init=False)

    def __post_init__(self) -> None:
        self.target = Target.for_server(self.environment.server)
        self.root = environment_directory(self.environment)
        self.src = f"{self.root}/src"

    # -- remote commands ---------------------------------------------------------------------------

    def compose(self, *args: str, override: bool = True) -> list[str]:
        """``docker compose -p KEY -f src/prod.yaml [-f src/docker-compose.panel.yaml] ARGS``."""
        files = [f"{self.src}/{name}" for name in self.environment.compose_files]
        if override:
            files.append(f"{self.src}/{OVERRIDE_FILE}")
        argv = ["docker", "compose", "--ansi", "never", "-p", self.environment.compose_project]
        for path in files:
            argv += ["-f", path]
        return [*argv, *args]

    # -- steps -------------------------------------------------------------------------------------

    def fetch(self, project: Project, ref: str) -> str:
        """Fetch the repository on the server and check out ``ref`` (branch, tag or commit); return the commit."""
        return Checkout(self.context, self.target, self.root).fetch(project, ref)

    def describe(self, commit: str, previous: str) -> tuple[str, list[str]]:
        """A commit's subject, and the ``sha subject`` lines of the commits since ``previous`` (at most 100)."""
        result = self.capture(
            ["sh", "-c", DESCRIBE_SCRIPT, "sh", self.src, commit, previous if previous != commit else ""]
        )
        lines = result.stdout.split("\n")
        marker = lines.index("---") if "---" in lines else len(lines)
        subject = " ".join(lines[:marker]).strip()[:200]
        return subject, [line for line in lines[marker + 1 :] if line.strip()]

    def write_secrets(self, secrets: dict[str, str]) -> None:
        """Write every ``.docker/*.env`` file Doodba's compose files name (mode 0600)."""
        by_file: dict[str, dict[str, str]] = {name: {} for name in ENV_FILES}
        for name, value in secrets.items():
            by_file[secret_file_for(name)][name] = value
        self.upload({f"src/.docker/{filename}": env_file_text(values) for filename, values in by_file.items()})
        self.context.write(
            f"Wrote {len(ENV_FILES)} secret files in .docker/ (mode 0600): {', '.join(sorted(secrets))}."
        )

    def compose_services(self) -> tuple[list[str], list[str], dict[str, str]]:
        """Services of the project's compose files: (all, built here, image of each)."""
        result = self.capture(self.compose("config", "--format", "json", override=False))
        if not result.ok:
            raise StepFailed(f"The compose files are not valid: {result.stderr.strip()[-500:]}")
        try:
            services: dict[str, Any] = json.loads(result.stdout)["services"]
        except (ValueError, KeyError) as exc:
            raise StepFailed("docker compose config did not return the services.") from exc
        names = sorted(services)
        for name in names:
            if not SERVICE_NAME_RE.fullmatch(name):
                raise StepFailed(f"Service name {name[:40]!r} is not one the panel handles.")
        built = [name for name in names if services[name].get("build")]
        images = {name: str(services[name].get("image") or "") for name in names}
        return names, built, images

    def write_override(self, override: dict[str, Any]) -> None:
        """Write the panel override (JSON is YAML) and check the combined configuration."""
        self.upload({f"src/{OVERRIDE_FILE}": compose_file_text(override)})
        check = self.capture(self.compose("config", "--quiet"))
        if not check.ok:
            raise StepFailed(f"The compose configuration with the panel's override is not valid: {check.stderr[-500:]}")

    def create_networks(self) -> None:
        """Create the external networks the compose files declare and say which (a new server has none).

        Before anything needs them: ``compose run`` (the database steps) and ``up`` both refuse a missing one.
        """
        files = [*self.environment.compose_files, OVERRIDE_FILE]  # the override joins odoo to the proxy's network
        try:
            names = declared_networks(self.target, self.environment.compose_project, self.root, files)
            created, present = create_networks(self.target, names)
        except PrepareFailed as exc:
            raise StepFailed(str(exc)) from exc
        self.context.write(describe_networks(created, present))

    def build(self) -> None:
        """Build the images of services with a ``build`` section."""
        args = ["build", "--pull"] if settings.DEPLOY_BUILD_PULL else ["build"]
        self.run(self.compose(*args), what="Building the images", timeout=settings.DEPLOY_BUILD_TIMEOUT)

    def pin_images(
        self, built: Sequence[str], override: dict[str, Any], images: dict[str, str]
    ) -> dict[str, dict[str, str]]:
        """Tag each built image with the deployment's own tag and resolve every service's image to its id.

        One round trip: the tags and the ``docker image inspect`` run in a single constant script.
        """
        refs = {service: ref for service, ref in sorted(images.items()) if ref}
        pairs: list[str] = []
        for service in built:
            pinned = pinned_image_ref(self.environment, service, self.deployment_id)
            pairs += [override["services"][service]["image"], pinned]
            refs[service] = pinned
        found = self.capture(["sh", "-c", PIN_SCRIPT, "sh", str(len(built)), *pairs, *refs.values()])
        if not found.ok:
            raise StepFailed(f"Could not tag or inspect the images: {found.stderr.strip()[-300:]}")
        ids = found.stdout.split()
        if len(ids) != len(refs):
            ids = [""] * len(refs)
        return {
            service: {"ref": ref, "id": image_id} for (service, ref), image_id in zip(refs.items(), ids, strict=True)
        }

    def require_images(self, images: dict[str, dict[str, str]]) -> None:
        """Fail if an image of an earlier deployment is gone (pruned)."""
        for service, image in images.items():
            found = self.capture(["docker", "image", "inspect", "--format", "{{.Id}}", "--", image["ref"]])
            if not found.ok or (image.get("id") and found.stdout.strip() != image["id"]):
                raise StepFailed(
                    f"The image of service {service} ({image['ref']}) is no longer on the server; "
                    "deploy that commit again instead of rolling back to it."
                )

    def database_state(self) -> str:
        """``initialized``, ``empty`` or ``missing``: asks PostgreSQL through the odoo service's own settings."""
        deadline = time.monotonic() + settings.DEPLOY_DB_WAIT_TIMEOUT
        while True:
            result = self.capture(self.compose("run", "--rm", "odoo", "psql", "-tAc", DB_STATE_SQL), timeout=300)
            output = (result.stdout + "\n" + result.stderr).lower()
            if result.ok:
                return "initialized" if result.stdout.strip().splitlines()[-1:] == ["1"] else "empty"
            if "does not exist" in output:
                return "missing"
            if not any(marker in output for marker in DB_NOT_READY) or time.monotonic() > deadline:
                raise StepFailed(
                    f"Could not ask the database whether it is initialised: {result.stderr.strip()[-300:]}"
                )
            time.sleep(2)

    def update_database(self, *, first_deploy: bool) -> None:
        """Initialise a new database, adopt one the panel never saw, or update the addons whose code changed."""
        timeout = settings.DEPLOY_UPDATE_TIMEOUT
        if first_deploy:
            state = self.database_state()
            if state != "initialized":
                self.context.write(f"The database is {state}: initialising it (odoo --stop-after-init -i base).")
                self.run(self.compose("run", "--rm", "odoo", "odoo", "--stop-after-init", "-i", "base"),
                         what="Initialising the database", timeout=timeout)  # fmt: skip
            else:
                self.context.write("The database exists but the panel never deployed it: recording addon hashes.")
            self.run(self.compose("run", "--rm", "odoo", "click-odoo-update", "--only-compute-hashes"),
                     what="Recording addon hashes", timeout=timeout)  # fmt: skip
            return
        self.run(self.compose("run", "--rm", "odoo", "click-odoo-update"), what="Updating addons", timeout=timeout)

    def snapshot_database(self) -> dict[str, Any]:
        """Dump the database to ``<deploy dir>/snapshots/deployment-<id>.dump`` on the server; keep the newest few."""
        directory = f"{self.root}/snapshots"
        name = f"deployment-{self.deployment_id}.dump"
        # Without the image's entrypoint: nothing but pg_dump may write to stdout.
        dump = self.compose("run", "--rm", "-T", "--entrypoint", "pg_dump", "odoo", "--format=custom")
        keep = str(settings.DEPLOY_DB_SNAPSHOT_KEEP)
        started = time.monotonic()
        result = self.capture(
            ["sh", "-c", SNAPSHOT_SCRIPT, "sh", directory, name, keep, *dump], timeout=settings.DEPLOY_UPDATE_TIMEOUT
        )
        size = result.stdout.strip().rpartition("\n")[2] if result.ok else ""
        if not size.isdigit():
            raise StepFailed(f"Could not dump the database before the update: {result.stderr.strip()[-300:]}")
        snapshot = {"path": f"{directory}/{name}", "bytes": int(size)}
        self.context.write(
            f"Dumped the database to {snapshot['path']} ({int(size) / 1e6:.1f} MB in "
            f"{time.monotonic() - started:.1f} s); the newest {keep} dumps are kept."
        )
        return snapshot

    def restore_database(self, snapshot: dict[str, Any]) -> None:
        """Put the database back as it was before the update, from the dump on the server.

        The dump goes into a new database first, so a failed restore leaves the current one untouched; Odoo is
        stopped only for the swap.
        """
        restore = self.compose("run", "--rm", "-T", "--entrypoint", "sh", "odoo", "-c", RESTORE_SCRIPT)
        self.run(["sh", "-c", FEED_SCRIPT, "sh", snapshot["path"], *restore], what="Restoring the dump",
                 timeout=settings.DEPLOY_UPDATE_TIMEOUT)  # fmt: skip
        self.run(self.compose("stop", "odoo"), what="Stopping Odoo", timeout=300)
        swap = self.compose("run", "--rm", "-T", "--entrypoint", "sh", "odoo", "-c", SWAP_SCRIPT)
        self.run(swap, what="Swapping in the restored database", timeout=300)
        self.context.write(f"The database is back as it was before the update ({snapshot['path']}).")

    def start(self, *, build: bool = True) -> None:
        """``up -d --remove-orphans`` (without building when putting back an earlier deployment's images)."""
        args = ["up", "-d", "--remove-orphans"] + ([] if build else ["--no-build"])
        self.run(self.compose(*args), what="Starting the containers", timeout=900)

    def health(self) -> tuple[list[str], list[str], CommandResult]:
        """Containers of the project, those not running, and Odoo's ``/web/health`` answer: one round trip, asked at once."""
        result = self.capture(["sh", "-c", HEALTH_SCRIPT, "sh", *self.compose()], timeout=60)
        listing, _, answer = result.stdout.partition(HEALTH_MARKER)
        containers: list[dict[str, Any]] = []
        for line in listing.splitlines():
            line = line.strip()
            if line.startswith(("{", "[")):
                try:
                    parsed = json.loads(line)
                except ValueError:
                    continue
                containers += parsed if isinstance(parsed, list) else [parsed]
        names = [str(c.get("Name", "?")) for c in containers]
        stopped = sorted(
            f"{c.get('Name', '?')} ({c.get('State', '?')})" for c in containers if c.get("State") != "running"
        )
        return names, stopped, CommandResult(result.exit_code, answer.strip(), result.stderr)

    def running(self) -> dict[str, dict[str, str]]:
        """Each service's container as Docker reports it: ``{"image": id, "state": ..., "container": id}``."""
        result = self.capture(["sh", "-c", RUNNING_SCRIPT, "sh", self.environment.compose_project], timeout=60)
        if not result.ok:
            raise StepFailed(f"Could not list the environment's containers: {result.stderr.strip()[-300:]}")
        found: dict[str, dict[str, str]] = {}
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) == 4 and SERVICE_NAME_RE.fullmatch(parts[0]):
                found[parts[0]] = {"image": parts[1], "state": parts[2], "container": parts[3]}
        return found

    def odoo_health(self, container: str) -> CommandResult:
        """Odoo's ``/web/health`` answer, asked inside the container itself (by its full id)."""
        url = "http://localhost:8069/web/health"
        return self.capture(["docker", "exec", container, "curl", "-fsS", "--max-time", "5", url], timeout=30)

    def docker_health(self, service: str = "odoo") -> str:
        """Docker's health status of the service's container: ``starting``, ``healthy``, ``unhealthy``, or "" when
        it has no health check (or no container)."""
        result = self.capture(self.compose("ps", "--format", "{{.Health}}", service), timeout=60)
        lines = result.stdout.strip().splitlines() if result.ok else []
        return lines[-1].strip() if lines else ""

    def wait_healthy(self) -> None:
        """Wait until every container runs and Odoo answers ``/web/health`` with ``pass``."""
        timeout = settings.DEPLOY_HEALTH_TIMEOUT
        deadline = time.monotonic() + timeout
        next_report = time.monotonic() + 10
        while True:
            containers, stopped, health = self.health()
            if health.ok and '"pass"' in health.stdout and containers and not stopped:
                self.context.write(f"Odoo answers /web/health: pass; {len(containers)} containers running.")
                return
            problem = (
                f"not running: {', '.join(stopped)}"
                if stopped
                else f"/web/health: {(health.stdout or health.stderr).strip()[-200:] or 'no answer'}"
            )
            if time.monotonic() > deadline:
                raise StepFailed(f"Odoo did not become healthy within {timeout:g} s ({problem}).")
            if time.monotonic() > next_report:
                self.context.write(f"Waiting for Odoo to become healthy: {problem}")
                next_report = time.monotonic() + 10
            time.sleep(settings.DEPLOY_HEALTH_INTERVAL)

    # -- disk space and image clean-up ---------------------------------------------------------------

    def free_disk(self) -> list[DiskSpace]:
        """Free space (for an unprivileged user) of the deploy directory and of Docker's data root, in one round trip.

        Docker's data root is missing from the answer when Docker does not answer.
        """
        result = self.capture(["sh", "-c", DISK_SCRIPT, "sh", self.root], timeout=60)
        found: list[DiskSpace] = []
        for line in result.stdout.splitlines():
            blocks, size, path = [*line.split(" ", 2), "", ""][:3]
            if blocks.isdigit() and size.isdigit() and path:
                what = "the deploy directory" if path == self.root else "Docker's data root"
                shown = f"~/{path}" if path == self.root else path
                found.append(DiskSpace(shown, what, int(blocks) * int(size) // 2**20))
        if not found or found[0].what != "the deploy directory":
            raise StepFailed(f"Could not measure the free disk on the server: {result.stderr.strip()[-300:]}")
        return found

    def require_free_disk(self, *, dump_bytes: int = 0, docker: bool = True) -> None:
        """Refuse when a path the next steps write to has less free space than ``DEPLOY_MIN_FREE_DISK_MB``.

        ``dump_bytes``: a database dump about to be written in the deploy directory (as large as the last one), on
        top of the threshold. ``docker``: Docker's data root counts too (images are built there). A threshold of 0
        turns the check off.
        """
        minimum = settings.DEPLOY_MIN_FREE_DISK_MB
        if minimum <= 0:
            return
        dump_mb = -(-dump_bytes // 2**20)
        spaces = [space for space in self.free_disk() if docker or space.what == "the deploy directory"]
        short: list[str] = []
        for space in spaces:
            needed, why = minimum, "DEPLOY_MIN_FREE_DISK_MB"
            if dump_mb and space.what == "the deploy directory":
                needed += dump_mb
                why = f"DEPLOY_MIN_FREE_DISK_MB {minimum} MB + {dump_mb} MB for the database dump, as large as the last one"
            if space.free_mb < needed:
                short.append(f"{space.path} ({space.what}) has {space.free_mb} MB free, {needed} MB needed ({why})")
        if short:
            raise StepFailed(
                f"Not enough free disk on the server: {'; '.join(short)}. Free some space there (docker system df "
                "shows what Docker keeps) or lower DEPLOY_MIN_FREE_DISK_MB."
            )
        if docker and len(spaces) == 1:
            self.context.write("Docker did not say where it keeps its data: its free disk is not checked.")
        listing = ", ".join(f"{space.path} ({space.what}) {space.free_mb} MB" for space in spaces)
        self.context.write(f"Free disk: {listing}; at least {minimum + dump_mb} MB needed.")

    def image_tags(self, repositories: Sequence[str]) -> set[str]:
        """Every tag (``repository:tag``) of these image repositories on the server."""
        if not repositories:
            return set()
        result = self.capture(["sh", "-c", TAGS_SCRIPT, "sh", *repositories], timeout=120)
        if not result.ok:
            raise StepFailed(f"Could not list the images: {result.stderr.strip()[-300:]}")
        return {line.strip() for line in result.stdout.splitlines() if line.strip() and "<none>" not in line}

    def remove_image_tags(self, tags: Sequence[str]) -> None:
        """``docker image rm`` each tag, never forced: an image that another tag still names is only untagged, and
        one a container still uses stays (the log says which)."""
        if not tags:
            self.context.write("No older image tags to remove.")
            return
        result = self.capture(["docker", "image", "rm", "--", *tags], timeout=600)
        lines = result.stdout.splitlines()
        untagged = sum(line.startswith("Untagged:") for line in lines)
        deleted = sum(line.startswith("Deleted:") for line in lines)
        self.context.write(f"Removed {untagged} older image tags; {deleted} image layers were deleted with them.")
        for line in result.stderr.strip().splitlines()[-20:]:
            self.context.write(f"Kept: {line.strip()}")

    def prune_dangling(self) -> None:
        """Remove dangling images and dangling build cache, host-wide.

        Only ones older than the longest build (``DEPLOY_BUILD_TIMEOUT``): a build running now for another
        environment keeps its untagged intermediate images. Build cache unused for less than
        ``DEPLOY_BUILD_CACHE_KEEP_HOURS`` stays, so rebuilding a recent commit is quick.
        """
        until = f"until={int(settings.DEPLOY_BUILD_TIMEOUT)}s"
        cache = f"until={settings.DEPLOY_BUILD_CACHE_KEEP_HOURS}h"
        for argv, what in (
            (["docker", "image", "prune", "-f", "--filter", until], "dangling images"),
            (["docker", "builder", "prune", "-f", "--filter", cache], "dangling build cache"),
        ):
            result = self.capture(argv, timeout=600)
            if result.ok:
                total = result.stdout.strip().splitlines()[-1:] or ["nothing reclaimed"]
                self.context.write(f"Pruned {what}: {total[0]}")
            else:
                self.context.write(f"Could not prune {what}: {result.stderr.strip()[-300:]}")


__all__ = ["OVERRIDE_FILE", "Pipeline", "RemoteError", "StepFailed", "render_override", "secret_file_for"]
