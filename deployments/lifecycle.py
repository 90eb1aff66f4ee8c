"""An environment's lifecycle: Stop, Start, Restart (the whole environment or one service) and Destroy, as jobs.

Each one is a job of the environment (``environment:<id>`` lock, ``environment_hold`` on the server, so it never
races a deploy or a backup), audited with ``record()`` when it is queued. After acting, the job reads the
containers of the compose project from Docker (by compose labels, ``Pipeline.running``) and records what it found
on the environment (``Environment.lifecycle`` and ``lifecycle_facts``): the state the pages show comes from that,
never from what was asked.

- *Stop*: ``docker compose stop [service]``; every container of it (or of the service) must have stopped.
- *Start*: ``docker compose start [service]``, then wait until every container runs and Odoo answers
  ``/web/health`` with ``pass`` (``finish_changing(proven=True)``: the environment is *running* again).
- *Restart*: ``docker compose restart [service]``, then the same wait.
- *Destroy*: optionally a final backup first (``backups``: the same steps as a backup job, in this job), then
  ``docker compose down --remove-orphans`` (``--volumes`` only when asked), then the environment's disk is freed:
  the images the panel built for it (``<compose project>-<service>:<tag>``, never a shared image) and its checkout
  and dumps (``DEPLOY_ROOT/<compose project>``, except the hold's lock file). The environment is *destroyed*;
  its deployments stay in the history, and a deploy starts it afresh.

Removing an environment from the panel (``panel.inventory.services.remove_environment``) needs a choice: it was destroyed, or it is left
running on the server, and the audit entry says what was left there (containers, volumes).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from deployments.pipeline import SERVICE_NAME_RE, Pipeline, StepFailed, panel_made_tag
from deployments.services import environment_job
from panel.accounts.services import record
from panel.inventory.choices import EnvironmentKind, Lifecycle
from panel.inventory.models import Environment
from panel.inventory.services import environment_directory, environment_hold, finish_changing, mark_changing
from panel.jobs.choices import JobKind
from panel.jobs.models import Job
from panel.jobs.runner import JobContext, JobFailed, handler
from panel.remote import run_capture

ACTIONS = {"stop": JobKind.STOP, "start": JobKind.START, "restart": JobKind.RESTART, "destroy": JobKind.DESTROY}
# Actions that need the environment's name typed: Destroy always, Stop and Restart on production.
DESTRUCTIVE_ON_PRODUCTION = ("stop", "restart")
# The environment's volumes (compose labels), one name a line.
VOLUMES_SCRIPT = 'exec docker volume ls -q --filter "label=com.docker.compose.project=$1"'
# Every image tag, one "repository:tag" line each (the caller keeps the panel's tags of this environment).
IMAGES_SCRIPT = 'exec docker image ls --format "{{.Repository}}:{{.Tag}}"'
# Empty the environment's directory ($1) but keep the hold's lock (the job holds it now); print what it freed (kB).
FREE_DIRECTORY_SCRIPT = (
    'd=$1; [ -d "$d" ] || { echo 0; exit 0; }; '
    'k=$(du -sk -- "$d" | cut -f1); '
    'find "$d" -mindepth 1 -maxdepth 1 ! -name .panel-lock ! -name .panel-lock-holder -exec rm -rf -- {} + '
    '&& echo "$k"'
)


class LifecycleRefused(JobFailed):
    """The request cannot be queued as asked; the message says why (400 in the API, an error on the page)."""


def needs_confirmation(environment: Environment, action: str, *, volumes: bool = False) -> bool:
    """Whether ``action`` needs the environment's name typed: Destroy always (its volumes with it the more so),
    Stop and Restart on production."""
    if action == "destroy" or volumes:
        return True
    return action in DESTRUCTIVE_ON_PRODUCTION and environment.kind == EnvironmentKind.PRODUCTION


def start_lifecycle(
    *,
    environment: Environment,
    actor: Any,
    action: str,
    service: str = "",
    confirm: str = "",
    volumes: bool = False,
    backup: bool = False,
    trigger: str = "user",
) -> Job:
    """Queue a Stop, Start, Restart or Destroy job on the environment and audit it.

    Raises ``LifecycleRefused`` for an unknown action, a malformed service name, a missing typed confirmation, a
    final backup without backup storage, or an environment that was destroyed (only a deploy brings it back);
    ``TargetBusy`` when another job holds the environment.
    """
    if action not in ACTIONS:
        raise LifecycleRefused(f"Unknown action {action[:20]!r}: use stop, start, restart or destroy.")
    service = (service or "").strip()
    if service and (action == "destroy" or not SERVICE_NAME_RE.fullmatch(service)):
        raise LifecycleRefused(
            "Destroy acts on the whole environment." if action == "destroy" else "That is not a service name."
        )
    if volumes and action != "destroy":
        raise LifecycleRefused("Only Destroy removes volumes.")
    if backup and action != "destroy":
        raise LifecycleRefused("Only Destroy takes a final backup.")
    if needs_confirmation(environment, action, volumes=volumes) and confirm.strip() != environment.name:
        raise LifecycleRefused(f"Type the environment's name ({environment.name}) to confirm.")
    environment.refresh_from_db(fields=["lifecycle"])
    if environment.lifecycle == Lifecycle.DESTROYED and action != "destroy":
        raise LifecycleRefused("This environment was destroyed: deploy it to bring it back.")
    if backup:
        from backups.services import backup_settings_of

        backup_settings_of(environment)  # refused (JobFailed) before anything is queued: no backup storage
    with transaction.atomic():
        job = environment_job(environment=environment, kind=ACTIONS[action], actor=actor, trigger=trigger)
        job.params.update({"action": action, "service": service, "volumes": bool(volumes)})
        detail: dict[str, Any] = {"job": job.pk, "service": service or None}
        if action == "destroy":
            detail.update(volumes=bool(volumes), backup=bool(backup))
        if backup:
            job.params["backup_id"] = _final_backup(environment, job).pk
        job.save(update_fields=["params"])
        record(action=f"environment.{action}", actor=actor, obj=environment, detail=detail)
    return job


def _final_backup(environment: Environment, job: Job) -> Any:
    """The backup a Destroy takes first, run in the destroy job (its steps, into the environment's storage)."""
    from backups.models import Backup, BackupKind, BackupStatus
    from backups.services import backup_settings_of

    config = backup_settings_of(environment)
    now = timezone.now()
    prefix = f"backups/{environment.compose_project}/{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
    return Backup.objects.create(
        environment=environment, storage=config.storage, kind=BackupKind.MANUAL, job=job, key_prefix=prefix,
        started_at=now, status=BackupStatus.RUNNING,
    )  # fmt: skip


# -- the job ----------------------------------------------------------------------------------------------------


class LifecycleSteps(Pipeline):
    """The pipeline's remote commands, used for one lifecycle action."""

    def project_argv(self, *args: str) -> list[str]:
        """``docker compose`` of the project: with its compose files when its checkout has them, else by name
        alone (compose finds the containers by their labels; enough to stop, start, restart and take down)."""
        files = [*self.environment.compose_files, "docker-compose.panel.yaml"]
        probe = self.capture(["sh", "-c", 'for f in "$@"; do test -f "$f" && echo "$f"; done; exit 0', "sh",
                              *(f"{self.src}/{name}" for name in files)])  # fmt: skip
        present = probe.stdout.split() if probe.ok else []
        argv = ["docker", "compose", "--ansi", "never", "-p", self.environment.compose_project]
        if all(f"{self.src}/{name}" in present for name in self.environment.compose_files):
            for path in present:
                argv += ["-f", path]
        return [*argv, *args]

    def volumes(self) -> list[str]:
        result = self.capture(["sh", "-c", VOLUMES_SCRIPT, "sh", self.environment.compose_project], timeout=60)
        if not result.ok:
            raise StepFailed(f"Could not list the environment's volumes: {result.stderr.strip()[-300:]}")
        return sorted(line.strip() for line in result.stdout.splitlines() if line.strip())


def _label(job: Job) -> str:
    return f"{job.get_kind_display()} #{job.pk}"


def _found(context: JobContext, running: dict[str, dict[str, str]]) -> dict[str, Any]:
    """What the job found, as recorded on the environment."""
    return {
        "job": context.job.pk,
        "job_label": _label(context.job),
        "at": timezone.now().strftime("%Y-%m-%d %H:%M:%S UTC"),
        "containers": {service: c["state"] for service, c in sorted(running.items())},
        "stopped": sorted(service for service, c in running.items() if c["state"] != "running"),
        "running": sorted(service for service, c in running.items() if c["state"] == "running"),
    }


def _report(context: JobContext, running: dict[str, dict[str, str]]) -> None:
    if not running:
        context.write("No container of this environment is on the server.")
    for service, container in sorted(running.items()):
        context.write(f"{service}: {container['state']} (container {container['container'][:12]})")


def _require_service(service: str, running: dict[str, dict[str, str]]) -> None:
    if service and service not in running:
        known = ", ".join(sorted(running)) or "none"
        raise StepFailed(f"This environment has no service {service!r} on the server (its services: {known}).")


def _wait_healthy(context: JobContext, pipeline: LifecycleSteps, service: str) -> dict[str, dict[str, str]]:
    """Wait until every container (or the service's) runs and Odoo, when it runs, answers ``/web/health`` with
    ``pass`` (asked in its container, addressed by its full id); return the containers."""
    timeout = settings.LIFECYCLE_HEALTH_TIMEOUT
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + 10
    while True:
        running = pipeline.running()
        targets = [service] if service else sorted(running)
        stopped = sorted(f"{s} ({running[s]['state'] if s in running else 'gone'})" for s in targets
                         if running.get(s, {}).get("state") != "running")  # fmt: skip
        problem = f"not running: {', '.join(stopped)}" if stopped else ""
        if not running:
            problem = "no container"
        elif not stopped and running.get("odoo", {}).get("state") != "running":
            context.write(f"{', '.join(targets)} running; Odoo does not run, so /web/health is not asked.")
            return running
        elif not stopped:
            answer = pipeline.odoo_health(running["odoo"]["container"])
            if answer.ok and '"pass"' in answer.stdout:
                context.write(f"Odoo answers /web/health: pass; {len(targets)} containers running.")
                return running
            problem = f"/web/health: {(answer.stdout or answer.stderr).strip()[-200:] or 'no answer'}"
        if time.monotonic() > deadline:
            raise StepFailed(f"The environment did not become healthy within {timeout:g} s ({problem}).")
        if time.monotonic() > next_report:
            context.write(f"Waiting for the environment to become healthy: {problem}")
            next_report = time.monotonic() + 10
        time.sleep(settings.DEPLOY_HEALTH_INTERVAL)


def _save(environment: Environment, lifecycle: str, facts: dict[str, Any], **fields: Any) -> None:
    Environment.objects.filter(pk=environment.pk).update(lifecycle=lifecycle, lifecycle_facts=facts, **fields)


@handler(JobKind.STOP, hold=environment_hold)
@handler(JobKind.START, hold=environment_hold)
@handler(JobKind.RESTART, hold=environment_hold)
@handler(JobKind.DESTROY, hold=environment_hold)
def run_lifecycle(context: JobContext) -> dict[str, Any]:
    """Run one lifecycle action; the environment records what the job found on the server afterwards."""
    environment = Environment.objects.select_related("project", "server").get(pk=context.job.params["environment_id"])
    action = str(context.job.params.get("action", ""))
    service = str(context.job.params.get("service", ""))
    pipeline = LifecycleSteps(context, environment, 0)
    if action == "destroy":
        return _destroy(context, pipeline, environment)
    with context.step("Read the containers"):
        before = pipeline.running()
        _report(context, before)
        _require_service(service, before)
        if not before:
            raise StepFailed("No container of this environment is on the server: deploy it first.")
    mark_changing(environment=environment, job=context.job)
    what = f"service {service}" if service else "every service"
    stop_timeout = str(settings.LIFECYCLE_STOP_TIMEOUT)
    if action == "stop":
        with context.step(f"Stop {what}"):
            pipeline.run(pipeline.project_argv("stop", "-t", stop_timeout, *([service] if service else [])),
                         what="docker compose stop", timeout=600)  # fmt: skip
        with context.step("Check what stopped"):
            after = pipeline.running()
            _report(context, after)
            targets = [service] if service else sorted(after)
            still = sorted(s for s in targets if after.get(s, {}).get("state") == "running")
            if still:
                raise StepFailed(f"Still running after the stop: {', '.join(still)}.")
        finish_changing(environment=environment, job=context.job, proven=False)
        facts = _found(context, after)
        _save(environment, Lifecycle.STOPPED, facts, attention="")
        context.write(f"Stopped {what}: {', '.join(facts['stopped'])} stopped."
                      + (f" Still running: {', '.join(facts['running'])}." if facts["running"] else ""))  # fmt: skip
        return {"action": action, "service": service, **{k: facts[k] for k in ("containers", "stopped")}}
    verb = "start" if action == "start" else "restart"
    with context.step(f"{verb.capitalize()} {what}"):
        argv = [verb] if verb == "start" else [verb, "-t", stop_timeout]
        pipeline.run(pipeline.project_argv(*argv, *([service] if service else [])), what=f"docker compose {verb}",
                     timeout=600)  # fmt: skip
    with context.step("Wait until healthy"):
        after = _wait_healthy(context, pipeline, service)
        _report(context, after)
    facts = _found(context, after)
    if facts["stopped"]:  # one service started while others stay stopped on purpose
        finish_changing(environment=environment, job=context.job, proven=False)
        _save(environment, Lifecycle.STOPPED, facts)
        context.write(f"Still stopped on purpose: {', '.join(facts['stopped'])}.")
    else:
        Environment.objects.filter(pk=environment.pk).update(lifecycle_facts=facts)
        finish_changing(environment=environment, job=context.job, proven=True)
    return {"action": action, "service": service, "containers": facts["containers"]}


def _destroy(context: JobContext, pipeline: LifecycleSteps, environment: Environment) -> dict[str, Any]:
    volumes = bool(context.job.params.get("volumes"))
    if context.job.params.get("backup_id"):
        from backups.services import run_backup

        context.write("Taking a final backup first; nothing is removed unless it is good.")
        run_backup(context)  # the backup job's steps, in this job and its hold; raises as a backup job fails
    with context.step("Read the containers"):
        before = pipeline.running()
        _report(context, before)
        volumes_before = pipeline.volumes()
        context.write(f"Volumes: {', '.join(volumes_before) or 'none'}.")
    mark_changing(environment=environment, job=context.job)
    with context.step("Take down the containers"):
        argv = ["down", "--remove-orphans", "-t", str(settings.LIFECYCLE_STOP_TIMEOUT)] + (
            ["--volumes"] if volumes else []
        )
        pipeline.run(pipeline.project_argv(*argv), what="docker compose down", timeout=900)
        left = pipeline.running()
        if left:
            raise StepFailed(f"Containers are still there after compose down: {', '.join(sorted(left))}.")
        volumes_after = pipeline.volumes()
        if volumes and volumes_after:
            removed = run_capture(pipeline.target, ["docker", "volume", "rm", "--", *volumes_after], timeout=300)
            if not removed.ok:
                raise StepFailed(f"Could not remove the volumes {', '.join(volumes_after)}: {removed.stderr[-300:]}")
            volumes_after = pipeline.volumes()
            if volumes_after:
                raise StepFailed(f"Volumes are still there: {', '.join(volumes_after)}.")
        context.write(
            f"Removed {len(before)} containers; "
            + (f"removed the volumes {', '.join(volumes_before) or '(none)'}." if volumes
               else f"kept the volumes {', '.join(volumes_after) or '(none)'}.")
        )  # fmt: skip
    with context.step("Free the disk"):
        images = _remove_images(context, pipeline, environment)
        freed = pipeline.capture(["sh", "-c", FREE_DIRECTORY_SCRIPT, "sh", environment_directory(environment)])
        if not freed.ok:
            raise StepFailed(f"Could not remove the checkout: {freed.stderr.strip()[-300:]}")
        kilobytes = int(freed.stdout.strip() or 0) if freed.stdout.strip().isdigit() else 0
        context.write(f"Removed the checkout and dumps in ~/{environment_directory(environment)} "
                      f"({kilobytes / 1024:.1f} MB).")  # fmt: skip
    facts = _found(context, {})
    facts.update(
        removed_containers=sorted(c["container"][:12] for c in before.values()),
        services=sorted(before),
        volumes_kept=[] if volumes else volumes_after,
        volumes_removed=volumes_before if volumes else [],
        images_removed=images,
        checkout_freed_kb=kilobytes,
    )
    finish_changing(environment=environment, job=context.job, proven=False)
    _save(environment, Lifecycle.DESTROYED, facts, attention="", current_deployment=None, degraded=False)
    return {"action": "destroy", **{k: facts[k] for k in ("services", "volumes_kept", "volumes_removed",
                                                         "images_removed")}}  # fmt: skip


def _remove_images(context: JobContext, pipeline: LifecycleSteps, environment: Environment) -> list[str]:
    """Remove the tags the panel made on images of this environment (never a shared image: those have other
    repositories); an image another tag or container still uses stays."""
    listing = pipeline.capture(["sh", "-c", IMAGES_SCRIPT, "sh"], timeout=120)
    if not listing.ok:
        raise StepFailed(f"Could not list the images: {listing.stderr.strip()[-300:]}")
    tags = sorted(t for t in set(listing.stdout.split()) if panel_made_tag(environment, t))
    if not tags:
        context.write("The panel built no image for this environment: none to remove.")
        return []
    result = pipeline.capture(["docker", "image", "rm", "--", *tags], timeout=600)
    context.write(f"Removed the images {', '.join(tags)}.")
    for line in result.stderr.strip().splitlines()[-10:]:
        context.write(f"Kept: {line.strip()}")
    return tags
