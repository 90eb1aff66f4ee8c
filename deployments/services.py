"""Domain actions of deployments: deploy, promote, roll back, compare, and the job that runs them.

One mutating job per environment: every deployment job holds the lock ``environment:<id>`` (a partial unique
index on queued/running jobs), so a second request raises ``TargetBusy`` with the running job.
"""

from __future__ import annotations

import copy
import secrets as random_secrets
import time
from contextlib import AbstractContextManager
from typing import Any, NoReturn

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from deployments import hooks
from deployments.choices import DeploymentKind, DeploymentStatus, Trigger
from deployments.models import Deployment
from deployments.pipeline import Checkout, Pipeline, StepFailed, image_ref, panel_made_tag, render_override
from monitoring.models import Event
from panel.accounts.services import record
from panel.inventory import prepare, proxy
from panel.inventory.choices import EnvironmentKind
from panel.inventory.copier import use_answers, use_project_answers
from panel.inventory.models import Environment, Project, Server
from panel.inventory.services import check_server_allowed, environment_hold, finish_changing, mark_changing
from panel.jobs import services as jobs
from panel.jobs.choices import JobKind
from panel.jobs.models import Job
from panel.jobs.runner import JobCanceled, JobContext, JobFailed, handler
from panel.remote import RemoteError, Target
from panel.remote.session import Hold, hold
from panel.validators import validate_git_ref

GENERATED_SECRETS = ("ADMIN_PASSWORD", "PGPASSWORD")
SERVER_STEP = "Check the server"
CERTIFICATE_STEP = "Read the certificate"
CLEAN_UP_STEP = "Clean up images"


def lock_key(environment: Environment) -> str:
    """The job lock every mutating job of an environment takes."""
    return f"environment:{environment.pk}"


def environment_job(*, environment: Environment, kind: str, actor: Any, trigger: str) -> Job:
    """Queue a mutating job of ``kind`` on the environment (it holds the environment's lock)."""
    return jobs.create_job(
        kind=kind,
        organization=environment.project.organization,
        created_by=actor,
        environment=environment,
        lock_key=lock_key(environment),
        params={"environment_id": environment.pk},
        trigger=trigger,
    )


@transaction.atomic
def _start(
    *,
    environment: Environment,
    actor: Any,
    kind: str,
    ref: str,
    trigger: str,
    source: Deployment | None = None,
) -> Deployment:
    validate_git_ref(ref)
    # The caller's copy may be stale: what is live now is what the worker last recorded.
    environment.refresh_from_db(fields=["current_deployment", "degraded"])
    job = environment_job(
        environment=environment,
        kind=JobKind.ROLLBACK if kind == DeploymentKind.ROLLBACK else JobKind.DEPLOY,
        actor=actor,
        trigger=trigger,
    )
    deployment = _new_deployment(environment, job, kind, ref, actor, trigger, source)
    job.params["deployment_id"] = deployment.pk
    job.save(update_fields=["params"])
    return deployment


def _new_deployment(
    environment: Environment, job: Job, kind: str, ref: str, actor: Any, trigger: str, source: Deployment | None = None
) -> Deployment:
    """The deployment record ``job`` runs, and its audit entry."""
    deployment = Deployment.objects.create(
        environment=environment,
        job=job,
        kind=kind,
        ref=ref,
        previous=environment.current_deployment,
        source=source,
        triggered_by=actor if getattr(actor, "is_authenticated", False) else None,
        trigger=trigger,
    )
    record(
        action=f"environment.{kind}",
        actor=actor,
        obj=environment,
        detail={"job": job.pk, "deployment": deployment.pk, "ref": ref, "trigger": trigger},
    )
    return deployment


def start_deploy(*, environment: Environment, actor: Any, ref: str = "", trigger: str = Trigger.BUTTON) -> Deployment:
    """Deploy ``ref`` (default: the environment's git ref). Raises ``TargetBusy`` if a job runs there."""
    return _start(
        environment=environment, actor=actor, kind=DeploymentKind.DEPLOY, ref=ref or environment.git_ref,
        trigger=trigger,
    )  # fmt: skip


def deploy_within(context: JobContext, environment: Environment, actor: Any) -> Deployment:
    """Deploy the environment's git ref as a part of another job on it (a restore into a new environment deploys it
    first): the deploy job's steps, recovery and records, in ``context``'s job and hold. Raises as a deploy job
    fails."""
    trigger = Trigger.API if context.job.trigger == "api" else Trigger.BUTTON
    deployment = _new_deployment(environment, context.job, DeploymentKind.DEPLOY, environment.git_ref, actor, trigger)
    context.job.params["deployment_id"] = deployment.pk  # what run_deployment reads; in memory only
    try:
        run_deployment(context)
    finally:
        context.job.params.pop("deployment_id", None)
    deployment.refresh_from_db()
    return deployment


def staging_of(environment: Environment) -> Environment | None:
    """The project's staging environment (the first one, by name) other than ``environment``."""
    return (
        Environment.objects.filter(project=environment.project, kind=EnvironmentKind.STAGING)
        .exclude(pk=environment.pk)
        .order_by("name")
        .first()
    )


def start_promote(*, environment: Environment, actor: Any, trigger: str = Trigger.PROMOTE) -> Deployment:
    """Deploy to ``environment`` the commit that runs in the project's staging environment now."""
    staging = staging_of(environment)
    if staging is None or staging.current_deployment is None:
        raise JobFailed("There is no staging environment with a successful deployment to promote.")
    return _start(
        environment=environment, actor=actor, kind=DeploymentKind.PROMOTE,
        ref=staging.current_deployment.commit, trigger=trigger,
    )  # fmt: skip


def start_rollback(*, deployment: Deployment, actor: Any) -> Deployment:
    """Put an earlier successful deployment back in place: same commit, same images, its configuration."""
    if deployment.status != DeploymentStatus.SUCCEEDED or not deployment.commit:
        raise JobFailed("Only a successful deployment can be rolled back to.")
    if deployment.images_pruned_at is not None:
        raise JobFailed(images_pruned_reason(deployment))
    return _start(
        environment=deployment.environment, actor=actor, kind=DeploymentKind.ROLLBACK, ref=deployment.commit,
        trigger=Trigger.ROLLBACK, source=deployment,
    )  # fmt: skip


def compare(older: Deployment, newer: Deployment) -> dict[str, Any]:
    """What changed between two deployments of an environment: commits and configuration (never secret values)."""
    old_config, new_config = older.config or {}, newer.config or {}
    keys = sorted(set(old_config) | set(new_config))
    config_changes = {
        key: {"before": old_config.get(key), "after": new_config.get(key)}
        for key in keys
        if key not in ("override",) and old_config.get(key) != new_config.get(key)
    }
    commits: list[str] = []
    for deployment in Deployment.objects.filter(
        environment=newer.environment, created_at__gt=older.created_at, created_at__lte=newer.created_at
    ).order_by("created_at"):
        commits += deployment.changes.get("commits", [])
    return {
        "from": {"id": older.pk, "commit": older.commit},
        "to": {"id": newer.pk, "commit": newer.commit},
        "commits": list(dict.fromkeys(commits)),
        "config": config_changes,
    }


def _ensure_secrets(environment: Environment) -> dict[str, str]:
    """Secrets for the deploy; the admin and database passwords are generated once when nobody set them."""
    values = environment.get_secrets()
    changed = False
    for name in GENERATED_SECRETS:
        if not values.get(name):
            values[name] = random_secrets.token_urlsafe(24)
            changed = True
    if not values.get("POSTGRES_PASSWORD"):
        values["POSTGRES_PASSWORD"] = values["PGPASSWORD"]
        changed = True
    if changed:
        environment.set_secrets(values)
        environment.save(update_fields=["secrets"])
    return values


def _config_snapshot(environment: Environment, override: dict[str, Any], secrets: dict[str, str]) -> dict[str, Any]:
    return {
        "compose_files": list(environment.compose_files),
        "compose_project": environment.compose_project,
        "workers": environment.workers,
        "cron_threads": environment.cron_threads,
        "cpu_limit": environment.cpu_limit,
        "memory_limit": environment.memory_limit,
        "env_vars": dict(environment.env_vars),
        "secret_names": sorted(secrets),
        "override": override,
    }


def _event(deployment: Deployment, kind: str, severity: str, message: str) -> None:
    Event.objects.create(
        organization=deployment.environment.project.organization,
        environment=deployment.environment,
        deployment=deployment,
        kind=kind,
        severity=severity,
        message=message,
    )


def images_pruned_reason(deployment: Deployment) -> str:
    """Why a deployment whose images were removed cannot be rolled back to, and what to do instead."""
    assert deployment.images_pruned_at is not None
    return (
        f"The images of deployment #{deployment.pk} were removed from the server on "
        f"{deployment.images_pruned_at:%Y-%m-%d %H:%M} UTC to free disk (DEPLOY_KEEP_IMAGES keeps those of the newest "
        f"{settings.DEPLOY_KEEP_IMAGES} successful deployments): deploy its commit {deployment.short_commit} again "
        "instead."
    )


def panel_image_tags(deployment: Deployment) -> set[str]:
    """The tags the panel made that a deployment's images need: its pinned tags and its commit's tags.

    A rollback's images are its source's, so both name the same tags.
    """
    environment = deployment.environment
    tags: set[str] = set()
    for service, image in (deployment.images or {}).items():
        ref = str(image.get("ref", "")) if isinstance(image, dict) else ""
        if ref.startswith(f"{environment.compose_project}-{service}:panel-") and panel_made_tag(environment, ref):
            tags.add(ref)
            if deployment.commit:
                tags.add(image_ref(environment, service, deployment.commit))
    return tags


def image_retention(environment: Environment) -> tuple[list[Deployment], list[Deployment]]:
    """Whose images stay on the server: (kept deployments, every deployment of the environment).

    Kept: the one running now, and those of the newest ``DEPLOY_KEEP_IMAGES`` successful deployments or rollbacks
    counted by the images they put in place (a rollback uses its source's images again, so it makes them recent).
    Deployments whose images are already gone do not count.
    """
    deployments = list(
        Deployment.objects.filter(environment=environment).select_related("environment").order_by("-created_at", "-id")
    )
    current_id = Environment.objects.filter(pk=environment.pk).values_list("current_deployment", flat=True).first()
    kept: list[Deployment] = [deployment for deployment in deployments if deployment.pk == current_id]
    seen = {frozenset(panel_image_tags(deployment)) for deployment in kept} - {frozenset()}
    for deployment in deployments:
        if len(seen) >= settings.DEPLOY_KEEP_IMAGES:
            break
        needs = frozenset(panel_image_tags(deployment))
        usable = deployment.status == DeploymentStatus.SUCCEEDED and deployment.images_pruned_at is None
        if usable and deployment.commit and needs and needs not in seen:
            seen.add(needs)
            kept.append(deployment)
    return kept, deployments


def _clean_up_images(pipeline: Pipeline, context: JobContext) -> None:
    """After a successful deploy: remove the panel's tags of images no kept deployment needs (``image_retention``),
    then dangling images and build cache; record on each deployment whose images are gone that they are.

    The deploy has succeeded by now: a failure here is logged, and the next successful deploy tries again.
    """
    environment = pipeline.environment
    try:
        with context.step(CLEAN_UP_STEP, cancelable=False):
            kept, deployments = image_retention(environment)
            keep = set().union(*(panel_image_tags(deployment) for deployment in kept))
            repositories = sorted({tag.rpartition(":")[0] for d in deployments for tag in panel_image_tags(d)})
            present = pipeline.image_tags(repositories)
            pipeline.remove_image_tags(sorted(t for t in present if panel_made_tag(environment, t) and t not in keep))
            remaining = pipeline.image_tags(repositories)
            gone = [d for d in deployments if d.images_pruned_at is None and not panel_image_tags(d) <= remaining]
            Deployment.objects.filter(pk__in=[d.pk for d in gone]).update(images_pruned_at=timezone.now())
            context.write(
                f"Kept the images of deployments {', '.join(f'#{d.pk}' for d in kept) or 'none'} "
                f"(DEPLOY_KEEP_IMAGES={settings.DEPLOY_KEEP_IMAGES})"
                + (f"; deployments {', '.join(f'#{d.pk}' for d in gone)} can no longer be rolled back to." if gone
                   else ".")
            )  # fmt: skip
            pipeline.prune_dangling()
    except (JobFailed, RemoteError) as exc:
        context.write(f"Cleaning up images failed: {exc} The deployment is not affected; the next one tries again.")


def _put_in_place(
    pipeline: Pipeline,
    context: JobContext,
    source: Deployment,
    prefix: str,
    *,
    cancelable: bool = True,
    snapshot: dict[str, Any] | None = None,
) -> None:
    """Check out an earlier deployment's commit, write its override and start its very images.

    With ``snapshot`` (an automatic rollback after the update ran), the database is restored from it first.
    """
    environment = pipeline.environment
    with context.step(f"{prefix}Check out {source.short_commit}", cancelable=cancelable):
        pipeline.fetch(environment.project, source.commit)
    with context.step(f"{prefix}Write configuration", cancelable=cancelable):
        pipeline.write_secrets(_ensure_secrets(environment))
        pipeline.require_images(source.images)
        pipeline.write_override(_override_with_pinned_images(source))
        pipeline.create_networks()
    if snapshot:
        with context.step(f"{prefix}Restore database", cancelable=cancelable):
            pipeline.restore_database(snapshot)
    with context.step(f"{prefix}Start", cancelable=cancelable):
        pipeline.start(build=False)
    with context.step(f"{prefix}Wait until healthy", cancelable=cancelable):
        pipeline.wait_healthy()


def _override_with_pinned_images(source: Deployment) -> dict[str, Any]:
    """An earlier deployment's override, its built services pointing at the images pinned for it."""
    override = copy.deepcopy(source.config["override"])
    for service, definition in override["services"].items():
        if "image" in definition and service in source.images:
            definition["image"] = source.images[service]["ref"]
    return override


def wants_db_snapshot(environment: Environment) -> bool:
    """Whether a deploy dumps the database before updating addons (``DEPLOY_DB_SNAPSHOT``)."""
    policy = settings.DEPLOY_DB_SNAPSHOT
    return policy == "always" or (policy == "production" and environment.kind == EnvironmentKind.PRODUCTION)


def _last_dump_bytes(environment: Environment) -> int:
    """The size of the environment's newest database dump (the next one is about as large), 0 if none."""
    snapshot = (
        Deployment.objects.filter(environment=environment, db_snapshot__has_key="bytes")
        .order_by("-created_at", "-id")
        .values_list("db_snapshot", flat=True)
        .first()
    )
    return int(snapshot["bytes"]) if isinstance(snapshot, dict) and str(snapshot.get("bytes")).isdigit() else 0


def _check_server(pipeline: Pipeline, context: JobContext, *, dump_bytes: int) -> None:
    """What a deploy needs of the server, before it changes anything: Docker, the compose v2 plugin and git
    (refused with what to run, as *Prepare server* says it), free disk, and for an environment with domains,
    whether they resolve to the server and whether the proxy runs (warnings: the deploy itself does not need them).
    """
    server = pipeline.environment.server
    tools = prepare.probe(pipeline.target, server.username)
    if not tools.ready:
        raise StepFailed(prepare.advice(tools, prepare.plan(tools, server.username), server.username))
    context.write(f"Docker {tools.docker_version}, docker compose {tools.compose_version}, git {tools.git_version}.")
    pipeline.require_free_disk(dump_bytes=dump_bytes)
    domains = pipeline.environment.all_domains()
    if domains:
        proxy.check_domains(context, server, pipeline.target, domains)
        if not proxy.running(pipeline.target):
            context.write(
                "⚠ The server's proxy does not run: the environment's domains are served only once Install proxy "
                "has run on the server page."
            )


def _read_certificate(pipeline: Pipeline, context: JobContext) -> None:
    """After a successful deploy of an environment with a domain: read the certificate the proxy serves for it
    (the environment page shows its issuer and expiry). The deploy has succeeded: nothing here fails it.

    A first certificate is waited for, ``DEPLOY_CERTIFICATE_WAIT`` s in all: Traefik routes a container only once
    Docker's health check calls it healthy (doodba's checks run every 45 s), and asks ACME for its domains then.
    A known certificate is only read again."""
    environment = Environment.objects.select_related("server").get(pk=pipeline.environment.pk)
    if not environment.domain:
        return
    try:
        if not proxy.running(pipeline.target):
            return  # "Check the server" said so; there is no certificate to read
        with context.step(CERTIFICATE_STEP, cancelable=False):
            known = environment.certificate_facts()
            wait = 0.0 if "issuer" in known and environment.domain in known.get("names", []) else None
            deadline = time.monotonic() + (settings.DEPLOY_CERTIFICATE_WAIT if wait is None else 0.0)
            reported = False
            while (state := pipeline.docker_health()) == "starting" and time.monotonic() < deadline:
                if not reported:
                    context.write("Docker's health check of odoo still says starting: the proxy routes the "
                                  "domains once it says healthy. Waiting …")  # fmt: skip
                    reported = True
                time.sleep(2)
            if state in ("starting", "unhealthy"):
                context.write(f"⚠ Docker's health check of odoo says {state}: the proxy does not route the domains "
                              "until it says healthy.")  # fmt: skip
            remaining = max(0.0, deadline - time.monotonic())
            proxy.read_certificates(context, environment.server, [environment], wait=remaining)
    except (JobFailed, RemoteError) as exc:
        context.write(f"Reading the certificate failed: {exc} The deployment is not affected.")


def _deploy_new(pipeline: Pipeline, context: JobContext, deployment: Deployment, first_deploy: bool) -> None:
    environment = pipeline.environment
    snapshot = not first_deploy and wants_db_snapshot(environment)
    with context.step(SERVER_STEP):
        # Before anything is fetched or built: a refusal here leaves the server as it was.
        _check_server(pipeline, context, dump_bytes=_last_dump_bytes(environment) if snapshot else 0)
    with context.step("Fetch code"):
        commit = pipeline.fetch(environment.project, deployment.ref)
        deployment.commit = commit
        previous = deployment.previous.commit if deployment.previous else ""
        deployment.commit_subject, commits = pipeline.describe(commit, previous)
        deployment.changes = {"commits": commits}
        deployment.save(update_fields=["commit", "commit_subject", "changes"])
        if first_deploy:  # what the project's .copier-answers.yml knows fills what the panel was not told
            use_answers(context, pipeline.target, pipeline.src, environment, commit)
    with context.step("Write configuration"):
        secrets = _ensure_secrets(environment)
        pipeline.write_secrets(secrets)
        services, built, images = pipeline.compose_services()
        override = render_override(environment, commit, services, built)
        pipeline.write_override(override)
        pipeline.create_networks()
        deployment.config = _config_snapshot(environment, override, secrets)
        deployment.save(update_fields=["config"])
    with context.step("Build images"):
        pipeline.build()
        deployment.images = pipeline.pin_images(built, override, images)
        deployment.save(update_fields=["images"])
    if snapshot:
        with context.step("Snapshot database"):
            # Checked again: the build may have taken what was free before it.
            pipeline.require_free_disk(dump_bytes=_last_dump_bytes(environment), docker=False)
            deployment.db_snapshot = pipeline.snapshot_database()
            deployment.save(update_fields=["db_snapshot"])
        # What other apps do with the dump (the backups app stores it as a pre-deploy backup); never fails the deploy.
        hooks.snapshot_taken(context, pipeline, deployment)
    with context.step("Update database"):
        pipeline.update_database(first_deploy=first_deploy)
    with context.step("Start"):
        pipeline.start()
    with context.step("Wait until healthy"):
        pipeline.wait_healthy()


@handler(JobKind.DEPLOY, hold=environment_hold)
@handler(JobKind.ROLLBACK, hold=environment_hold)
def run_deployment(context: JobContext) -> dict[str, Any]:
    """Run a deploy, promotion or rollback; on failure put the previous deployment back automatically.

    The environment records the job as changing it before anything runs on the server; only an outcome this
    function reaches clears that (an interrupted job leaves the environment *needs attention*).
    """
    deployment = Deployment.objects.select_related("environment__project", "environment__server", "source").get(
        pk=context.job.params["deployment_id"]
    )
    environment = deployment.environment
    pipeline = Pipeline(context, environment, deployment.pk)
    previous = deployment.previous if deployment.previous and deployment.previous.commit else None
    mark_changing(environment=environment, job=context.job)
    try:
        if deployment.kind == DeploymentKind.ROLLBACK:
            assert deployment.source is not None
            deployment.commit = deployment.source.commit
            deployment.commit_subject = deployment.source.commit_subject
            deployment.images = deployment.source.images
            deployment.config = deployment.source.config
            deployment.save(update_fields=["commit", "commit_subject", "images", "config"])
            _put_in_place(pipeline, context, deployment.source, "")
        else:
            _deploy_new(pipeline, context, deployment, first_deploy=environment.current_deployment is None)
    except (JobFailed, JobCanceled, RemoteError) as exc:
        _recover(context, pipeline, deployment, previous, exc)
    deployment.status = DeploymentStatus.SUCCEEDED
    deployment.finished_at = timezone.now()
    deployment.save(update_fields=["status", "finished_at"])
    Environment.objects.filter(pk=environment.pk).update(
        current_deployment=deployment.source if deployment.kind == DeploymentKind.ROLLBACK else deployment,
        degraded=False,
    )
    finish_changing(environment=environment, job=context.job, proven=True)
    _event(deployment, "deploy.succeeded", Event.Severity.INFO,
           f"{environment}: deployment #{deployment.pk} of {deployment.short_commit} succeeded.")  # fmt: skip
    if deployment.kind != DeploymentKind.ROLLBACK:
        _clean_up_images(pipeline, context)
    _read_certificate(pipeline, context)
    return {"deployment": deployment.pk, "commit": deployment.commit}


def _recover(
    context: JobContext, pipeline: Pipeline, deployment: Deployment, previous: Deployment | None, exc: Exception
) -> NoReturn:
    """After a failed or canceled step: roll back to ``previous`` and raise the job's final outcome."""
    canceled = isinstance(exc, JobCanceled)
    failed_step = next((step["name"] for step in reversed(context.steps) if step["status"] == "failed"), "")
    what = "Canceled." if canceled else (f"Step “{failed_step}” failed: {exc}" if failed_step else str(exc))
    environment = deployment.environment
    deployment.finished_at = timezone.now()
    if not deployment.commit and len([step for step in context.steps if step["name"] != SERVER_STEP]) <= 1:
        # Nothing changed on the server yet (too little free disk, the fetch itself failed, or canceled before it).
        deployment.status = DeploymentStatus.CANCELED if canceled else DeploymentStatus.FAILED_NO_ROLLBACK
        deployment.save(update_fields=["status", "finished_at"])
        finish_changing(environment=environment, job=context.job, proven=False)
        _event(deployment, "deploy.failed", Event.Severity.WARNING, f"{environment}: {what}")
        if canceled:
            raise JobCanceled(f"{what} Nothing was changed on the server.")
        raise JobFailed(f"{what} Nothing was changed on the server; the running version is untouched.")
    if previous is None or deployment.kind == DeploymentKind.ROLLBACK:
        deployment.status = DeploymentStatus.CANCELED if canceled else DeploymentStatus.FAILED_NO_ROLLBACK
        deployment.save(update_fields=["status", "finished_at"])
        if deployment.kind == DeploymentKind.ROLLBACK:
            # Something ran before and the rollback changed it half-way (a failed first deploy leaves nothing).
            Environment.objects.filter(pk=environment.pk).update(
                attention=f"{what} Nothing was put back in place: what runs on the server is not known."
            )
        finish_changing(environment=environment, job=context.job, proven=False)
        _event(deployment, "deploy.failed", Event.Severity.CRITICAL, f"{environment}: {what}")
        tail = (
            "A rollback is not rolled back in turn: check the environment, then deploy or roll back again."
            if deployment.kind == DeploymentKind.ROLLBACK
            else "There was no earlier successful deployment to restore."
        )
        if canceled:
            raise JobCanceled(f"{what} {tail}")
        raise JobFailed(f"{what} {tail}")
    context.write(f"Rolling back to deployment #{previous.pk} ({previous.short_commit}) …")
    # The update may have changed the database: put it back too when a dump was taken before it.
    updated = any(step["name"] == "Update database" for step in context.steps)
    snapshot = deployment.db_snapshot if updated and deployment.db_snapshot.get("path") else None
    if updated and snapshot is None:
        context.write("No database dump was taken before the update: the database stays as the update left it.")
    try:
        _put_in_place(pipeline, context, previous, "Rollback: ", cancelable=False, snapshot=snapshot)
    except (JobFailed, RemoteError) as rollback_error:
        deployment.status = DeploymentStatus.DEGRADED
        deployment.rollback = {"to": previous.pk, "outcome": "failed", "reason": str(rollback_error)}
        deployment.save(update_fields=["status", "finished_at", "rollback"])
        Environment.objects.filter(pk=environment.pk).update(degraded=True)
        finish_changing(environment=environment, job=context.job, proven=False)
        message = (
            f"{what} The automatic rollback to deployment #{previous.pk} ({previous.short_commit}) failed too: "
            f"{rollback_error} The environment is degraded: check the server and deploy again."
        )
        _event(deployment, "deploy.degraded", Event.Severity.CRITICAL, f"{environment}: {message}")
        raise JobFailed(message) from rollback_error
    deployment.status = DeploymentStatus.CANCELED if canceled else DeploymentStatus.FAILED
    deployment.rollback = {"to": previous.pk, "outcome": "succeeded"}
    restored = f"Rolled back to deployment #{previous.pk} ({previous.short_commit}), which is serving again."
    if snapshot:
        deployment.rollback["database"] = "restored"
        restored += " The database was restored from the dump taken before the update."
    deployment.save(update_fields=["status", "finished_at", "rollback"])
    finish_changing(environment=environment, job=context.job, proven=True)
    _event(deployment, "deploy.rolled_back", Event.Severity.WARNING, f"{environment}: {what} {restored}")
    if canceled:
        raise JobCanceled(f"Canceled. {restored}")
    raise StepFailed(f"{what} {restored}")


def start_check(*, environment: Environment, actor: Any, trigger: str = "user") -> Job:
    """Check what runs on the environment now; it proves an environment that needs attention runs again.

    Raises ``TargetBusy`` if a job holds the environment.
    """
    job = environment_job(environment=environment, kind=JobKind.CHECK, actor=actor, trigger=trigger)
    record(action="environment.check", actor=actor, obj=environment, detail={"job": job.pk})
    return job


def _matching_deployment(environment: Environment, running: dict[str, dict[str, str]]) -> Deployment | None:
    """The newest successful deployment whose every recorded image is what its service runs now."""
    candidates = Deployment.objects.filter(
        environment=environment, status=DeploymentStatus.SUCCEEDED, kind__in=[DeploymentKind.DEPLOY,
        DeploymentKind.PROMOTE]
    ).exclude(commit="")  # fmt: skip
    for deployment in candidates.order_by("-created_at", "-id")[:50]:
        recorded = {service: image.get("id") for service, image in (deployment.images or {}).items()}
        if recorded and all(image and running.get(service, {}).get("image") == image
                            for service, image in recorded.items()):  # fmt: skip
            return deployment
    return None


def _database_doubt(environment: Environment, deployment: Deployment) -> str:
    """Why the database may not match ``deployment``'s code: an unclean job updated it and did not restore it."""
    unclean = environment.changing_job
    if unclean is None or not unclean.is_terminal:
        return ""
    steps = {step.get("name"): step.get("status") for step in (unclean.result or {}).get("steps", [])}
    updated_by = Deployment.objects.filter(job=unclean).first()
    if "Update database" not in steps or (updated_by is not None and updated_by.pk == deployment.pk):
        return ""
    if steps.get("Rollback: Restore database") == "succeeded":
        return ""
    return (
        f"{unclean} ran its database update before it ended uncleanly, so the database may be newer than the code "
        f"of deployment #{deployment.pk} that runs now: deploy again to be sure."
    )


@handler(JobKind.CHECK, hold=environment_hold)
def check_environment(context: JobContext) -> dict[str, Any]:
    """Read what runs (containers, their images, Odoo's health); if it is a known deployment that answers, and
    nothing casts doubt on its database, the environment runs that deployment again (attention cleared)."""
    environment = Environment.objects.select_related("project", "server", "changing_job").get(
        pk=context.job.params["environment_id"]
    )
    pipeline = Pipeline(context, environment, 0)
    with context.step("Check what runs", cancelable=False):
        running = pipeline.running()
        if not running:
            raise JobFailed("Nothing of this environment runs on the server: deploy it.")
        for service, container in sorted(running.items()):
            context.write(f"{service}: {container['state']}, image {container['image'][:19]}")
        stopped = sorted(f"{service} ({c['state']})" for service, c in running.items() if c["state"] != "running")
        if stopped:
            raise JobFailed(f"Not running: {', '.join(stopped)}. Deploy again, or start them on the server.")
        if "odoo" not in running:
            raise JobFailed("The environment has no odoo service running.")
        answer = pipeline.odoo_health(running["odoo"]["container"])
        if not answer.ok or '"pass"' not in answer.stdout:
            problem = (answer.stdout or answer.stderr).strip()[-200:] or "no answer"
            raise JobFailed(f"Odoo does not answer /web/health with pass ({problem}).")
        context.write("Odoo answers /web/health: pass.")
        deployment = _matching_deployment(environment, running)
        if deployment is None:
            raise JobFailed(
                "Odoo answers, but it runs images that no successful deployment of the panel recorded: deploy again "
                "to know what runs."
            )
        doubt = _database_doubt(environment, deployment)
        if doubt:
            raise JobFailed(doubt)
    Environment.objects.filter(pk=environment.pk).update(current_deployment=deployment, degraded=False)
    if environment.changing_job is not None and environment.changing_job.is_terminal:
        Environment.objects.filter(pk=environment.pk, changing_job=environment.changing_job).update(changing_job=None)
    finish_changing(environment=environment, job=context.job, proven=True)
    context.write(
        f"Deployment #{deployment.pk} ({deployment.short_commit}) runs and answers: the environment runs it again."
    )
    return {"deployment": deployment.pk, "commit": deployment.commit}


# -- reading a project's .copier-answers.yml ---------------------------------------------------------------------


def answers_directory(project: Project) -> str:
    """Where a server keeps the checkout the project's answers are read from (by id: slugs repeat across orgs)."""
    return f"doodba-panel/.projects/{project.pk}"


def start_read_answers(*, project: Project, server: Server, actor: Any) -> Job:
    """Queue a job that fetches the project's default branch on ``server`` and reads its ``.copier-answers.yml``
    into the project (one at a time per project). Refused (``JobFailed``) on a server the project's environments
    may not use or whose host key nobody confirmed."""
    try:
        check_server_allowed(project=project, server=server)
    except ValidationError as exc:
        raise JobFailed(" ".join(exc.messages)) from exc
    if not server.host_key_pinned:
        raise JobFailed(f"Confirm the host key of {server.name} first (Validate on the server page).")
    job = jobs.create_job(
        kind=JobKind.READ_ANSWERS,
        organization=project.organization,
        created_by=actor,
        server=server,
        lock_key=f"project-answers:{project.pk}",
        params={"project_id": project.pk, "server_id": server.pk},
    )
    record(action="project.read_answers", actor=actor, obj=project, detail={"job": job.pk, "server": server.pk})
    return job


def _answers_hold(context: JobContext) -> AbstractContextManager[Hold]:
    project = Project.objects.get(pk=context.job.params["project_id"])
    server = Server.objects.get(pk=context.job.params["server_id"])
    return hold(Target.for_server(server), job_id=context.job.pk, directory=answers_directory(project),
                compose_project=f"doodba-panel-answers-{project.pk}", wait=settings.JOB_SERVER_LOCK_WAIT,
                on_message=context.write, subject="this project's checkout")  # fmt: skip


@handler(JobKind.READ_ANSWERS, hold=_answers_hold)
def read_project_answers(context: JobContext) -> dict[str, Any]:
    """Fetch the project's default branch on the server and fill the project from its ``.copier-answers.yml``."""
    project = Project.objects.get(pk=context.job.params["project_id"])
    server = Server.objects.get(pk=context.job.params["server_id"])
    checkout = Checkout(context, Target.for_server(server), answers_directory(project))
    with context.step("Fetch code"):
        commit = checkout.fetch(project, project.default_branch)
    with context.step("Read .copier-answers.yml"):
        return {"commit": commit, **use_project_answers(context, checkout.target, checkout.src, project, commit)}
