"""Domain actions of the inventory: onboarding a server (pinned host key), validating it, projects, environments."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from panel.accounts.models import Organization
from panel.accounts.services import record
from panel.inventory import prepare
from panel.inventory.choices import DeleteChoice, EnvironmentState, Lifecycle, ServerStatus
from panel.inventory.copier import stored_domains
from panel.inventory.models import Environment, Project, Server
from panel.jobs import services as jobs
from panel.jobs.choices import ACTIVE_STATES, CHANGING_JOB_KINDS, LIFECYCLE_JOB_KINDS, JobKind
from panel.jobs.models import Job
from panel.jobs.runner import JobContext, JobFailed, handler
from panel.remote import (
    HostKeyMismatch,
    RemoteError,
    Target,
    fetch_host_key,
    generate_key_pair,
    get_connection,
    run,
    run_capture,
)
from panel.remote.docker import docker_client
from panel.remote.session import Hold, hold
from panel.remote.ssh import public_line_of


def create_server(
    *,
    organization: Organization,
    actor: Any,
    name: str,
    host: str,
    port: int,
    username: str,
    private_key: str = "",
    labels: list[str] | None = None,
) -> Server:
    """Register a server: read its host key (not yet trusted) and keep or generate the panel's key pair.

    The host key is only a candidate until a person confirms its fingerprint with ``confirm_host_key``.
    Raises ``RemoteError`` when the host cannot be reached to read its key.
    """
    host_key = fetch_host_key(host, port)
    if private_key:
        public_key = public_line_of(private_key, f"doodba-panel@{name}")
    else:
        private_key, public_key = generate_key_pair(f"doodba-panel@{name}")
    server = Server(
        organization=organization,
        name=name,
        host=host,
        port=port,
        username=username,
        private_key=private_key,
        public_key=public_key,
        host_key_type=host_key.key_type,
        host_key_base64=host_key.base64,
        host_key_fingerprint=host_key.fingerprint,
        status=ServerStatus.UNCONFIRMED,
        labels=labels or [],
    )
    server.full_clean()
    # The host key was read before the transaction: no database transaction stays open during SSH timeouts.
    with transaction.atomic():
        server.save()
        record(action="server.created", actor=actor, obj=server, detail={"fingerprint": host_key.fingerprint})
    return server


def confirm_host_key(*, server: Server, actor: Any, fingerprint: str) -> None:
    """Pin the candidate host key once a person confirmed the fingerprint they were shown."""
    if fingerprint.strip() != server.host_key_fingerprint:
        raise JobFailed("The fingerprint you confirmed is not the one the server presented; nothing was pinned.")
    server.host_key_confirmed_at = timezone.now()
    server.host_key_confirmed_by = actor
    server.status = ServerStatus.UNVALIDATED
    server.status_message = ""
    server.save(update_fields=["host_key_confirmed_at", "host_key_confirmed_by", "status", "status_message"])
    record(action="server.host_key_confirmed", actor=actor, obj=server, detail={"fingerprint": fingerprint})


def refetch_host_key(*, server: Server, actor: Any) -> None:
    """Read the host key again (after a reinstall); it must be confirmed again before any command runs."""
    host_key = fetch_host_key(server.host, server.port)
    previous = server.host_key_fingerprint
    server.host_key_type = host_key.key_type
    server.host_key_base64 = host_key.base64
    server.host_key_fingerprint = host_key.fingerprint
    server.host_key_confirmed_at = None
    server.host_key_confirmed_by = None
    server.status = ServerStatus.UNCONFIRMED
    server.save()
    record(
        action="server.host_key_refetched",
        actor=actor,
        obj=server,
        security=True,
        detail={"previous": previous, "fingerprint": host_key.fingerprint},
    )


def regenerate_server_key(*, server: Server, actor: Any) -> None:
    """Replace the panel's key pair for a server; the new public key must be installed on the server."""
    server.private_key, server.public_key = generate_key_pair(f"doodba-panel@{server.name}")
    server.save(update_fields=["private_key", "public_key"])
    record(action="server.key_regenerated", actor=actor, obj=server)


def server_job(
    *, server: Server, kind: str, actor: Any, action: str, options: dict[str, Any] | None = None, trigger: str = "user"
) -> Job:
    """Queue a job on a server (it holds ``server:<id>``: one server job at a time) and audit it as ``action``."""
    job = jobs.create_job(
        kind=kind,
        organization=server.organization,
        created_by=actor,
        server=server,
        lock_key=f"server:{server.pk}",
        params={"server_id": server.pk, **(options or {})},
        trigger=trigger,
    )
    record(action=action, actor=actor, obj=server, detail={"job": job.pk, **(options or {})})
    return job


def start_validation(*, server: Server, actor: Any, trigger: str = "user") -> Job:
    """Queue a validation job for a server (one at a time per server)."""
    return server_job(server=server, kind=JobKind.VALIDATE_SERVER, actor=actor, action="server.validate",
                      trigger=trigger)  # fmt: skip


def _problem(problems: list[str], context: JobContext, message: str) -> None:
    problems.append(message)
    context.write(f"⚠ {message}")


def _classify_docker_error(output: str, username: str) -> str:
    lowered = output.lower()
    if "permission denied" in lowered:
        return (
            f"User {username} may not use Docker (permission denied on the Docker socket). "
            f"Add it to the docker group on the server: sudo usermod -aG docker {username}, then log in again."
        )
    if "cannot connect to the docker daemon" in lowered or "is the docker daemon running" in lowered:
        return (
            "The Docker daemon is not running (nothing answers on its socket). "
            "Start it on the server: sudo systemctl start docker."
        )
    if "command not found" in lowered or "not found" in lowered:
        return "Docker is not installed on the server: install docker.io or docker-ce."
    return f"Docker did not answer: {output.strip()[:300]}"


@handler(JobKind.VALIDATE_SERVER)
def validate_server(context: JobContext) -> dict[str, Any]:
    """Connect over the pinned key and check what deployments need; every problem is reported in words."""
    server = Server.objects.get(pk=context.job.params["server_id"])
    target = Target.for_server(server)
    problems: list[str] = []
    facts: dict[str, Any] = {}
    try:
        with context.step("Connect over SSH"):
            context.write(
                f"Connecting to {server.username}@{server.host}:{server.port}, expecting {server.host_key_fingerprint}"
            )
            get_connection(target)
            context.write("Host key matches the pinned fingerprint; authenticated with the panel's key.")
        with context.step("System"):
            uname = run_capture(target, ["uname", "-s", "-r", "-m"])
            release = run_capture(target, ["cat", "/etc/os-release"])
            pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', release.stdout, re.MULTILINE)
            parts = uname.stdout.split()
            facts["architecture"] = parts[-1] if parts else ""
            facts["os_name"] = (pretty.group(1) if pretty else uname.stdout.strip())[:200]
            context.write(f"OS: {facts['os_name']} ({uname.stdout.strip()})")
        with context.step("Docker"):
            version = run_capture(target, ["docker", "version", "--format", "{{.Server.Version}}"])
            if version.ok and version.stdout.strip():
                facts["docker_version"] = version.stdout.strip().splitlines()[-1][:64]
                facts["docker_access"] = True
                context.write(f"Docker engine {facts['docker_version']}; user {server.username} may use it.")
                api = docker_client(target).version()
                context.write(f"Docker API {api.get('ApiVersion')} reached through the pinned SSH connection.")
            else:
                message = _classify_docker_error(version.stderr + "\n" + version.stdout, server.username)
                facts["docker_access"] = False if "permission denied" in message else None
                _problem(problems, context, message)
        with context.step("Docker Compose"):
            compose = run_capture(target, ["docker", "compose", "version", "--short"])
            if compose.ok and compose.stdout.strip():
                facts["compose_version"] = compose.stdout.strip().splitlines()[-1][:64]
                context.write(f"Docker Compose {facts['compose_version']}.")
            elif "docker_version" in facts or "not a docker command" in compose.stderr:
                _problem(
                    problems,
                    context,
                    "The docker compose v2 plugin is missing: install docker-compose-plugin "
                    "(or the docker-compose binary in ~/.docker/cli-plugins/).",
                )
        with context.step("Free disk"):
            disk = run_capture(target, ["df", "-Pk", "--", "."])
            rows = disk.stdout.strip().splitlines()
            if disk.ok and len(rows) >= 2:
                facts["disk_free_bytes"] = int(rows[-1].split()[3]) * 1024
                context.write(f"Free disk in the home directory: {facts['disk_free_bytes'] / 2**30:.1f} GiB.")
    except HostKeyMismatch as exc:
        record(
            action="server.host_key_mismatch",
            obj=server,
            security=True,
            detail={"presented": exc.presented, "pinned": exc.pinned, "job": context.job.pk},
        )
        _save_validation(server, ServerStatus.PROBLEM, str(exc), {})
        raise
    except RemoteError as exc:
        _save_validation(server, ServerStatus.PROBLEM, str(exc), facts)
        raise
    if problems:
        message = " ".join(problems)
        _save_validation(server, ServerStatus.PROBLEM, message, facts)
        raise JobFailed(message)
    _save_validation(server, ServerStatus.OK, "", facts)
    return facts


def _save_validation(server: Server, status: str, message: str, facts: dict[str, Any]) -> None:
    fields = ["status", "status_message", "last_validated_at"]
    server.status = status
    server.status_message = message
    server.last_validated_at = timezone.now()
    for name in ("os_name", "architecture", "docker_version", "compose_version", "disk_free_bytes", "docker_access"):
        if name in facts:
            setattr(server, name, facts[name])
            fields.append(name)
    server.save(update_fields=fields)


# Exit 0 when every compose file of an environment ($3...) is in its checkout ($1/src), printing "override" if the
# panel's override of its last deploy ($2) is there too.
CHECKOUT_PROBE = (
    'd=$1; o=$2; shift 2; for f in "$@"; do test -f "$d/src/$f" || exit 1; done; '
    'if test -f "$d/src/$o"; then echo override; fi; exit 0'
)


# The server's own lock (``~/doodba-panel/.server/.panel-lock``), held by the jobs that change the server itself.
SERVER_LOCK_DIRECTORY = ".server"
# The compose project of the server's proxy (``panel.inventory.proxy.PROJECT``; not imported: proxy imports this
# module). Its one-off containers are removed when a server job ends.
SERVER_COMPOSE_PROJECT = "doodba-panel-proxy"


def server_hold(context: JobContext) -> AbstractContextManager[Hold]:
    """Hold the server (``flock`` on ``~/doodba-panel/.server/.panel-lock``) for the whole job.

    *Prepare server* and *Install proxy* register it (``@handler(kind, hold=server_hold)``): two of them never run
    on one server at once, even if the database lock is lost, and whatever they started there (``apt-get``,
    ``docker network create``, ``docker compose up``) ends with the job, however it ends (worker killed, lease
    lost). *Validate server* only reads and holds nothing.

    Environment jobs (deploy, rollback, check) hold their environment's lock, not this one, so they may run while
    a server job does: a server job only adds what is missing (networks, packages, the proxy's project) and never
    stops or changes an environment's containers, and a deploy creates the networks it needs itself.
    """
    server = Server.objects.get(pk=context.job.params["server_id"])
    return hold(
        Target.for_server(server),
        job_id=context.job.pk,
        directory=f"{settings.DEPLOY_ROOT}/{SERVER_LOCK_DIRECTORY}",
        compose_project=SERVER_COMPOSE_PROJECT,
        wait=settings.JOB_SERVER_LOCK_WAIT,
        on_message=context.write,
        subject="this server",
    )


def start_prepare(*, server: Server, actor: Any, install: bool = False, trigger: str = "user") -> Job:
    """Queue a *Prepare server* job (one job at a time per server, like validation).

    ``install``: when something is missing and the login is root or has passwordless sudo, install it with the OS
    packages; without it the job only says what is missing and exactly what to run.
    """
    return server_job(
        server=server, kind=JobKind.PREPARE_SERVER, actor=actor, action="server.prepare",
        options={"install": bool(install)}, trigger=trigger,
    )  # fmt: skip


def _report_tools(context: JobContext, tools: prepare.Tools, username: str) -> None:
    context.write(
        f"Docker engine {tools.docker_version}." if tools.docker_version else f"⚠ Docker: {tools.docker_problem}"
    )
    if tools.docker_installed:
        context.write(
            f"Docker Compose {tools.compose_version}." if tools.compose_version else "⚠ No docker compose v2 plugin."
        )
    context.write(f"git {tools.git_version}." if tools.git_version else "⚠ No git.")
    may = "is root" if tools.uid == 0 else ("has passwordless sudo" if tools.sudo else "is not root and has no "
                                           "passwordless sudo")  # fmt: skip
    context.write(f"{username} {may}; OS: {tools.os_id or '?'} {tools.os_codename}".rstrip() + ".")


@handler(JobKind.PREPARE_SERVER, hold=server_hold)
def prepare_server(context: JobContext) -> dict[str, Any]:
    """Check Docker, the compose v2 plugin and git (installing them when asked and allowed), then create the
    external networks of every environment already checked out on the server.

    An environment never deployed has no checkout, so its compose files are not on the server yet: its first
    deploy creates its networks (every deploy does, before anything needs them).
    """
    server = Server.objects.get(pk=context.job.params["server_id"])
    target = Target.for_server(server)
    with context.step("Connect over SSH"):
        get_connection(target)
        context.write(f"Connected to {server.username}@{server.host}:{server.port} (pinned host key).")
    with context.step("Tools"):
        tools = prepare.probe(target, server.username)
        _report_tools(context, tools, server.username)
        plan = prepare.plan(tools, server.username)
    if not tools.ready and context.job.params.get("install") and plan.packages:
        with context.step("Install packages"):
            if not tools.may_install:
                raise prepare.PrepareFailed(prepare.advice(tools, plan, server.username))
            context.write(f"Installing {' '.join(plan.packages)} with apt-get.")
            for argv in prepare.install_argv(tools, plan.packages):
                code = run(target, argv, on_output=context.log.output, timeout=prepare.install_timeout())
                if code != 0:
                    raise prepare.PrepareFailed(f"{' '.join(argv[-3:])} failed (exit code {code}); see the log.")
            tools = prepare.probe(target, server.username)
            _report_tools(context, tools, server.username)
            plan = prepare.plan(tools, server.username)
    if not tools.ready:
        raise prepare.PrepareFailed(prepare.advice(tools, plan, server.username))
    created: list[str] = []
    present: list[str] = []
    with context.step("Networks"):
        for environment in server.environments.select_related("project").order_by("pk"):
            directory = environment_directory(environment)
            files = list(environment.compose_files)
            found = run_capture(
                target, ["sh", "-c", CHECKOUT_PROBE, "sh", directory, prepare.OVERRIDE_FILE, *files], timeout=60
            )
            if not files or not found.ok:
                context.write(f"{environment}: not checked out on this server yet; its first deploy creates the "
                              "networks its compose files declare.")  # fmt: skip
                continue
            if "override" in found.stdout.split():  # its last deploy's override (odoo on the proxy's network)
                files.append(prepare.OVERRIDE_FILE)
            names = prepare.declared_networks(target, environment.compose_project, directory, files)
            made, there = prepare.create_networks(target, [n for n in names if n not in created + present])
            created += made
            present += there
            context.write(
                f"{environment}: {prepare.describe_networks(made, there) if names else 'declares no external network.'}"
            )
        if created:
            context.write(f"Created {len(created)} network{'s' if len(created) > 1 else ''}: {', '.join(created)}.")
        else:
            existing = f"{', '.join(present)} already exist{'' if len(present) > 1 else 's'}."
            context.write("Created no network: " + (existing if present else "no checked-out environment declares "
                                                     "an external one."))  # fmt: skip
    return {"created": created, "present": present, "docker": tools.docker_version,
            "compose": tools.compose_version, "git": tools.git_version}  # fmt: skip


@transaction.atomic
def create_project(
    *, organization: Organization, actor: Any, generate_deploy_key: bool = True, **fields: Any
) -> Project:
    """Create a project; a deploy key pair is generated unless one is given."""
    project = Project(organization=organization, **fields)
    if generate_deploy_key and not project.deploy_key:
        project.deploy_key, project.deploy_public_key = generate_key_pair(f"doodba-panel-deploy@{project.slug}")
    project.full_clean()
    project.save()
    record(action="project.created", actor=actor, obj=project)
    return project


@transaction.atomic
def create_environment(
    *, project: Project, server: Server, actor: Any, secrets: dict[str, str] | None = None, **fields: Any
) -> Environment:
    """Create an environment of a project on a server of the same organization or of its provider.

    Without a ``git_ref`` it follows the project's default branch. Without a domain or aliases it takes those the
    project's ``.copier-answers.yml`` gives its kind, when the panel has read them and they are free on the server.
    """
    check_server_allowed(project=project, server=server)
    fields.setdefault("git_ref", project.default_branch)  # not "main": the branch the project was told about
    environment = Environment(project=project, server=server, **fields)
    if not environment.compose_project:
        environment.compose_project = Environment.default_compose_project(project, environment.name)
    if not environment.compose_files:
        environment.compose_files = ["prod.yaml"]
    if secrets:
        environment.set_secrets(secrets)
    found = stored_domains(project, environment.kind) if not environment.domain and not environment.aliases else None
    if found:
        environment.domain, environment.aliases = found
        try:
            environment.full_clean()
        except ValidationError as exc:
            if not {"domain", "aliases"} & set(exc.error_dict):
                raise
            environment.domain, environment.aliases = "", []  # taken on this server, or invalid: leave them blank
    environment.full_clean()
    environment.save()
    record(action="environment.created", actor=actor, obj=environment)
    return environment


def check_server_allowed(*, project: Project, server: Server) -> None:
    """A project's environments run on servers of its organization or of the provider managing it."""
    allowed = {project.organization_id, project.organization.managed_by_id}
    if server.organization_id not in allowed:
        raise ValidationError({"server": "Choose a server of this organization or of its provider."})


# -- what runs on an environment: the one place that says so ------------------------------------------------------


def environment_directory(environment: Environment) -> str:
    """The environment's directory on its server, relative to the SSH user's home (``DEPLOY_ROOT/<project>``)."""
    return f"{settings.DEPLOY_ROOT}/{environment.compose_project}"


def environment_hold(context: JobContext) -> AbstractContextManager[Hold]:
    """Hold the job's environment on its server (``flock`` in its directory) for the whole job.

    Every mutating environment job registers it (``@handler(kind, hold=environment_hold)``): two jobs then never
    touch one compose project at once, even if the database lock is lost, and nothing a job started survives it.
    """
    environment = Environment.objects.select_related("server").get(jobs=context.job)
    return hold(
        Target.for_server(environment.server),
        job_id=context.job.pk,
        directory=environment_directory(environment),
        compose_project=environment.compose_project,
        wait=settings.JOB_SERVER_LOCK_WAIT,
        on_message=context.write,
    )


def unclean_end(job: Job) -> str:
    """Why an environment needs attention after ``job`` ended without a clean finish."""
    return (
        f"{job.get_kind_display()} #{job.pk} did not finish cleanly ({job.get_status_display().lower()}: "
        f"{job.reason or 'no reason was recorded'}) while it was changing what runs on the server, so what runs "
        "there now is not known. Deploy again, or check the environment's health."
    )


def mark_changing(*, environment: Environment, job: Job) -> None:
    """Record, before a job changes what runs on the server, that it is doing so.

    If it ends without ``finish_changing``, the environment shows *needs attention* until proven otherwise. An
    earlier unclean end is kept as the environment's ``attention`` text, so a later job that changes nothing
    (a failed fetch) does not hide it.
    """
    with transaction.atomic():
        current = (
            Environment.objects.select_for_update(of=("self",)).select_related("changing_job").get(pk=environment.pk)
        )
        previous = current.changing_job
        if previous is not None and previous.pk != job.pk and previous.is_terminal and not current.attention:
            current.attention = unclean_end(previous)
        current.changing_job = job
        current.save(update_fields=["changing_job", "attention"])


def finish_changing(*, environment: Environment, job: Job, proven: bool) -> None:
    """``job`` finished cleanly; ``proven``: what runs was checked healthy, which ends any *needs attention* and
    any *stopped* or *destroyed* (every container runs and Odoo answers again)."""
    Environment.objects.filter(pk=environment.pk, changing_job=job).update(changing_job=None)
    if proven:
        Environment.objects.filter(pk=environment.pk).update(attention="", lifecycle=Lifecycle.RUNNING)


LIFECYCLE_VERBS: dict[str, str] = {JobKind.STOP: "stopping", JobKind.START: "starting", JobKind.RESTART: "restarting",
                   JobKind.DESTROY: "destroying"}  # fmt: skip


@dataclass(frozen=True)
class State:
    """An environment's state: the same for the page, the API, customers and the status page."""

    code: str  # EnvironmentState
    label: str
    detail: str = ""
    customer_detail: str = ""
    commit: str = ""
    job_id: int | None = None

    @property
    def alarming(self) -> bool:
        """Shown in red: what runs may not serve."""
        return self.code in (EnvironmentState.NEEDS_ATTENTION, EnvironmentState.DEGRADED)


def environment_state(environment: Environment, *, active_job: Job | bool | None = False) -> State:
    """Derive the environment's state from what the panel recorded (never from what it last believed).

    ``active_job``: the queued or running deploy/rollback job if the caller already looked it up (``None`` for
    none); by default it is looked up here.
    """
    if active_job is False:
        active_job = (
            Job.objects.filter(environment=environment, kind__in=CHANGING_JOB_KINDS, status__in=ACTIVE_STATES)
            .order_by("created_at")
            .first()
        )
    current = environment.current_deployment
    commit = current.commit if current is not None else ""
    if isinstance(active_job, Job):
        if active_job.kind in LIFECYCLE_JOB_KINDS:
            verb = LIFECYCLE_VERBS.get(active_job.kind, "changing")
            return State(
                EnvironmentState.CHANGING, verb, f"{active_job} is {active_job.status}.", verb.capitalize() + ".",
                commit, active_job.pk,
            )  # fmt: skip
        if active_job.kind in (JobKind.RESTORE, JobKind.COPY):
            return State(
                EnvironmentState.RESTORING, "restoring", f"{active_job} is {active_job.status}.",
                "Restoring a backup.", commit, active_job.pk,
            )  # fmt: skip
        verb = "rolling back" if active_job.kind == JobKind.ROLLBACK else "deploying"
        return State(
            EnvironmentState.DEPLOYING, verb, f"{active_job} is {active_job.status}.", verb.capitalize() + ".",
            commit, active_job.pk,
        )  # fmt: skip
    changing = environment.changing_job
    attention = environment.attention
    if changing is not None and changing.is_terminal:
        attention = unclean_end(changing)
    if attention:
        return State(
            EnvironmentState.NEEDS_ATTENTION, "needs attention", attention,
            "A change to this instance did not finish cleanly; the hosting team has to check it.", commit,
        )  # fmt: skip
    if environment.degraded:
        return State(
            EnvironmentState.DEGRADED, "degraded", "A deploy failed and so did its rollback: check the server.",
            "The last update failed and could not be undone automatically; the hosting team has to check it.",
            commit,
        )  # fmt: skip
    facts = environment.lifecycle_facts or {}
    if environment.lifecycle == Lifecycle.DESTROYED:
        kept = "its volumes were kept" if facts.get("volumes_kept") else "its volumes were removed"
        return State(
            EnvironmentState.DESTROYED, "destroyed",
            f"Destroyed by {facts.get('job_label', 'a Destroy job')} at {facts.get('at', '?')}: no container is left "
            f"on the server; {kept}.",
            "This instance was taken down.",
        )  # fmt: skip
    if environment.lifecycle == Lifecycle.STOPPED:
        stopped = facts.get("stopped") or []
        running = facts.get("running") or []
        what = "every container" if not running else f"{', '.join(stopped)} (still running: {', '.join(running)})"
        label = "stopped" if not running else f"stopped: {', '.join(stopped)}"
        return State(
            EnvironmentState.STOPPED, label,
            f"Stopped on purpose by {facts.get('job_label', 'a Stop job')} at {facts.get('at', '?')}: {what}.",
            "This instance was stopped by the hosting team.", commit,
        )  # fmt: skip
    if current is None:
        return State(EnvironmentState.NOT_DEPLOYED, "not deployed", "Nothing has been deployed by the panel yet.")
    return State(EnvironmentState.RUNNING, f"running {commit[:12]}", current.commit_subject, "", commit)


# The containers (name state) and volumes of a compose project, for what a removal leaves on the server.
INVENTORY_SCRIPT = (
    'docker ps -a --filter "label=com.docker.compose.project=$1" --format "container {{.Names}} {{.State}}" '
    '|| exit 1; docker volume ls -q --filter "label=com.docker.compose.project=$1" | sed "s/^/volume /"'
)


# -- removing an environment from the panel --------------------------------------------------------------------


def environments_not_destroyed(project: Project) -> list[str]:
    """Names of the project's environments that were not destroyed: removing the project would leave what runs
    of them on their servers unaccounted for."""
    return list(project.environments.exclude(lifecycle=Lifecycle.DESTROYED).values_list("name", flat=True))


class RemovalRefused(JobFailed):
    """An environment cannot be removed from the panel as asked; the message says why."""


def left_on_server(environment: Environment) -> dict[str, Any]:
    """What runs of the environment on its server now (containers and their states, volumes), read from Docker
    by compose labels; when the server cannot be asked, says so (the compose project and server are recorded
    anyway, so nothing is unaccounted for)."""
    base = {
        "server": environment.server.name,
        "server_id": environment.server_id,
        "compose_project": environment.compose_project,
        "directory": f"~/{environment_directory(environment)}",
    }
    if not environment.server.host_key_pinned:
        return {**base, "containers": None, "volumes": None, "error": "The server's host key is not confirmed."}
    try:
        result = run_capture(
            Target.for_server(environment.server),
            ["sh", "-c", INVENTORY_SCRIPT, "sh", environment.compose_project],
            timeout=settings.LIFECYCLE_INVENTORY_TIMEOUT,
        )
    except RemoteError as exc:
        return {**base, "containers": None, "volumes": None, "error": str(exc)[:300]}
    if not result.ok:
        return {**base, "containers": None, "volumes": None, "error": result.stderr.strip()[-300:]}
    containers: list[dict[str, str]] = []
    volumes: list[str] = []
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "container" and re.fullmatch(r"[\w.-]+", parts[1]):
            containers.append({"name": parts[1], "state": parts[2]})
        elif len(parts) == 2 and parts[0] == "volume":
            volumes.append(parts[1])
    return {**base, "containers": containers, "volumes": sorted(volumes)}


def remove_environment(*, environment: Environment, actor: Any, choice: str, request: Any = None) -> dict[str, Any]:
    """Remove an environment from the panel after the operator chose what happens on the server, and record the
    choice with what was left there. Refused (``RemovalRefused``) without a valid choice, while a job is queued
    or running on it, or with ``destroyed`` when it was not destroyed."""
    if choice not in DeleteChoice.values:
        raise RemovalRefused(
            "Choose what happens on the server: destroy the environment first (then choose destroyed), or "
            "choose leave_running to leave its containers running there, unwatched."
        )
    busy = Job.objects.filter(environment=environment, status__in=ACTIVE_STATES).first()
    if busy is not None:
        raise RemovalRefused(f"{busy} is queued or running on this environment; wait for it to end.")
    environment.refresh_from_db()
    if choice == DeleteChoice.DESTROYED:
        if environment.lifecycle != Lifecycle.DESTROYED:
            raise RemovalRefused(
                "This environment was not destroyed: run Destroy first, or choose leave_running to leave it "
                "running on the server."
            )
        detail = {"choice": choice, "destroyed": environment.lifecycle_facts}
    else:
        detail = {"choice": choice, "left": left_on_server(environment)}
    with transaction.atomic():
        record(action="environment.deleted", actor=actor, obj=environment, request=request, detail=detail)
        environment.delete()
    return detail
