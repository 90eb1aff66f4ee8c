"""HTML views of deployments: deploy, promote, roll back, compare, one deployment with its live steps and log.

The environment page (``panel.inventory.views.environment_detail``) gets its deployment section from
``environment_context``, through ``deployments.extensions``. Everything is reached through ``panel.accounts.scoping``: deployment pages, logs, images
and configuration need ``Action.VIEW_DETAILS`` (customers only see a reduced history on the environment page), and
every state change needs ``Action.CHANGE`` and a POST. The ``start_*`` services record the audit events.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from deployments import lifecycle, services
from deployments.choices import DeploymentKind, DeploymentStatus
from deployments.forms import DeployForm, LifecycleForm
from deployments.models import Deployment
from panel.accounts.choices import Action
from panel.accounts.scoping import can, for_user, get_for_user
from panel.inventory.choices import EnvironmentKind
from panel.inventory.display import Badge
from panel.inventory.models import Environment, Project
from panel.inventory.views import servers_for
from panel.jobs.choices import ACTIVE_STATES
from panel.jobs.models import Job
from panel.jobs.runner import JobFailed
from panel.jobs.services import TargetBusy
from panel.jobs.views import active_job, busy_message, follow_started_job, job_steps
from panel.validators import parse_id

HISTORY_SIZE = 30
# Statuses shown in red: nothing was restored, or the environment may not serve at all.
ALARMING = {DeploymentStatus.FAILED_NO_ROLLBACK, DeploymentStatus.DEGRADED, "interrupted"}
CONFIG_LABELS = {
    "compose_files": "Compose files",
    "compose_project": "Compose project",
    "workers": "Odoo workers",
    "cron_threads": "Cron threads",
    "cpu_limit": "CPU limit",
    "memory_limit": "Memory limit",
    "env_vars": "Environment variables",
    "secret_names": "Secret variables (names only)",
}


def status_badge(deployment: Deployment) -> Badge:
    """The badge of a deployment's (effective) status."""
    status = deployment.effective_status
    try:
        title = str(DeploymentStatus(status).label)
    except ValueError:
        title = status
    css = "alarm" if status in ALARMING else status
    return Badge(label=status.replace("_", " "), css=css, title=title)


def running_deployment(environment: Environment) -> Deployment | None:
    """The deployment whose job is queued or running on the environment, if any."""
    return (
        Deployment.objects.filter(environment=environment, job__status__in=ACTIVE_STATES).select_related("job").first()
    )


def promotion_source(environment: Environment) -> Deployment | None:
    """What a promotion would deploy: the current deployment of the project's staging environment."""
    if environment.kind == EnvironmentKind.STAGING:
        return None
    staging = services.staging_of(environment)
    if staging is None or staging.current_deployment_id is None:
        return None
    return Deployment.objects.select_related("environment").filter(pk=staging.current_deployment_id).first()


def is_rollback_target(deployment: Deployment, current: Deployment | None) -> bool:
    """A successful deployment other than the one serving now, whose images are still on the server, can be put
    back in place."""
    if deployment.status != DeploymentStatus.SUCCEEDED or not deployment.commit:
        return False
    if deployment.images_pruned_at is not None:
        return False
    if current is None:
        return True
    return deployment.pk != current.pk and not (
        deployment.kind == DeploymentKind.ROLLBACK and deployment.source_id == current.pk
    )


def environment_context(
    request: HttpRequest, environment: Environment, *, show_details: bool, may_change: bool
) -> dict[str, Any]:
    """The deployment part of the environment page: current deployment, actions and history (the page itself
    shows the environment's state)."""
    running = running_deployment(environment)
    current = environment.current_deployment
    deployments = list(
        for_user(Deployment, request.user, Action.VIEW)
        .filter(environment=environment)
        .select_related("job", "triggered_by", "source")[:HISTORY_SIZE]
    )
    history = [
        {
            "deployment": deployment,
            "status": status_badge(deployment),
            "may_roll_back": may_change and running is None and is_rollback_target(deployment, current),
            # A successful deployment that is no rollback target because its images were removed says so.
            "images_pruned": deployment.status == DeploymentStatus.SUCCEEDED and bool(deployment.images_pruned_at),
            "is_current": current is not None and deployment.pk == current.pk,
        }
        for deployment in deployments
    ]
    context: dict[str, Any] = {
        "current_deployment": current,
        "history": history,
        "running_deployment": running if show_details else None,
        "running_job": active_job(for_user(Job, request.user, Action.VIEW_DETAILS).filter(environment=environment))
        if show_details
        else None,
    }
    if may_change:
        context["deploy_form"] = DeployForm(environment=environment)
        context["promotion"] = promotion_source(environment)
    return context


def _environment_for_change(request: HttpRequest, environment_id: int) -> Environment:
    return get_for_user(
        Environment.objects.select_related("project", "current_deployment"),
        request.user,
        Action.CHANGE,
        pk=environment_id,
    )


def _started(request: HttpRequest, environment: Environment, start: Any) -> HttpResponse:
    """Run a ``start_*`` service; on success follow the new deployment, otherwise explain on the environment."""
    try:
        deployment: Deployment = start()
    except TargetBusy as exc:
        messages.warning(request, busy_message(exc))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    except JobFailed as exc:
        messages.error(request, str(exc))
    else:
        return redirect("deployment_detail", deployment_id=deployment.pk)
    return redirect("environment_detail", environment_id=environment.pk)


@require_POST
@login_required
def environment_deploy(request: HttpRequest, environment_id: int) -> HttpResponse:
    """Deploy the environment at the given ref (default: its git ref) and follow the deployment live."""
    environment = _environment_for_change(request, environment_id)
    form = DeployForm(request.POST, environment=environment)
    if not form.is_valid():
        messages.error(request, " ".join(str(error) for errors in form.errors.values() for error in errors))
        return redirect("environment_detail", environment_id=environment.pk)
    ref = form.cleaned_data["ref"]
    return _started(
        request, environment, lambda: services.start_deploy(environment=environment, actor=request.user, ref=ref)
    )


@require_POST
@login_required
def environment_promote(request: HttpRequest, environment_id: int) -> HttpResponse:
    """Deploy the commit that runs in the project's staging environment."""
    environment = _environment_for_change(request, environment_id)
    return _started(request, environment, lambda: services.start_promote(environment=environment, actor=request.user))


@require_POST
@login_required
def environment_check(request: HttpRequest, environment_id: int) -> HttpResponse:
    """Check what runs on the environment (proves an environment that needs attention runs again)."""
    environment = _environment_for_change(request, environment_id)
    return follow_started_job(
        request,
        lambda: services.start_check(environment=environment, actor=request.user),
        reverse("environment_detail", args=[environment.pk]),
    )


@require_POST
@login_required
def project_read_answers(request: HttpRequest, project_id: int) -> HttpResponse:
    """Read the repository's ``.copier-answers.yml`` into the project, fetched on the server the form names."""
    project = get_for_user(Project, request.user, Action.CHANGE, pk=project_id)
    server_id = parse_id(request.POST.get("server"))
    server = servers_for(request, project).filter(pk=server_id).first() if server_id is not None else None
    if server is None:
        messages.error(request, "Choose a server to fetch the repository on.")
        return redirect("project_detail", project_id=project.pk)
    return follow_started_job(
        request,
        lambda: services.start_read_answers(project=project, server=server, actor=request.user),
        reverse("project_detail", args=[project.pk]),
    )


@require_http_methods(["GET", "POST"])
@login_required
def deployment_rollback(request: HttpRequest, deployment_id: int) -> HttpResponse:
    """Confirm, then put an earlier successful deployment back in place (its commit, images and configuration)."""
    target = get_for_user(
        Deployment.objects.select_related("environment__project", "environment__current_deployment", "job"),
        request.user,
        Action.CHANGE,
        pk=deployment_id,
    )
    environment = target.environment
    if request.method == "POST":
        return _started(request, environment, lambda: services.start_rollback(deployment=target, actor=request.user))
    current = environment.current_deployment
    if target.status == DeploymentStatus.SUCCEEDED and target.images_pruned_at is not None:
        messages.error(request, services.images_pruned_reason(target))
        return redirect("environment_detail", environment_id=environment.pk)
    if not is_rollback_target(target, current):
        messages.error(request, f"Deployment #{target.pk} cannot be rolled back to: pick an earlier successful one.")
        return redirect("environment_detail", environment_id=environment.pk)
    return render(
        request,
        "deployments/rollback_confirm.html",
        {"target": target, "current": current, "environment": environment},
    )


def split_commits(lines: list[str]) -> list[dict[str, str]]:
    """``sha subject`` lines as commit / short / subject."""
    commits = []
    for line in lines:
        sha, _, subject = str(line).partition(" ")
        commits.append({"commit": sha, "short": sha[:12], "subject": subject})
    return commits


def display(value: Any) -> str:
    """A configuration value as text (lists comma-separated, mappings as JSON)."""
    if value is None or value == "":
        return "—"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "—"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def config_rows(config: dict[str, Any]) -> list[dict[str, str]]:
    """A deployment's configuration snapshot for display; the rendered override is left out."""
    return [
        {"key": key, "label": CONFIG_LABELS.get(key, key), "value": display(config[key])}
        for key in CONFIG_LABELS
        if key in config and key != "env_vars"
    ]


def config_changes(changes: dict[str, Any]) -> list[dict[str, str]]:
    """``compare()``'s configuration changes, one row per setting, per variable and per secret name."""
    rows: list[dict[str, str]] = []
    for key, change in changes.items():
        before, after = change.get("before"), change.get("after")
        label = CONFIG_LABELS.get(key, key)
        if key == "env_vars":
            old, new = before or {}, after or {}
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    rows.append({"label": f"{label}: {name}", "before": display(old.get(name)),
                                 "after": display(new.get(name))})  # fmt: skip
        elif key == "secret_names":
            old_names, new_names = set(before or []), set(after or [])
            added, removed = sorted(new_names - old_names), sorted(old_names - new_names)
            rows.append({"label": label, "before": ", ".join(removed) or "—", "after": ", ".join(added) or "—",
                         "note": "removed → added (values are never shown)"})  # fmt: skip
        else:
            rows.append({"label": label, "before": display(before), "after": display(after)})
    return rows


@require_GET
@login_required
def deployment_detail(request: HttpRequest, deployment_id: int) -> HttpResponse:
    """A deployment: commit, ref, images, configuration (secret names only), changes, steps and the live log."""
    deployment = get_for_user(
        Deployment.objects.select_related(
            "environment__project", "environment__current_deployment", "job", "triggered_by", "previous", "source"
        ),
        request.user,
        Action.VIEW_DETAILS,
        pk=deployment_id,
    )
    environment = deployment.environment
    may_change = can(request.user, Action.CHANGE, environment)
    config = deployment.config if isinstance(deployment.config, dict) else {}
    return render(
        request,
        "deployments/deployment_detail.html",
        {
            "deployment": deployment,
            "environment": environment,
            "job": deployment.job,
            "steps": job_steps(deployment.job),
            "status": status_badge(deployment),
            "images": sorted((deployment.images or {}).items()),
            "config": config_rows(config),
            "env_vars": sorted((config.get("env_vars") or {}).items()),
            "commits": split_commits((deployment.changes or {}).get("commits", [])),
            "rollback": deployment.rollback or {},
            "may_change": may_change,
            "may_roll_back": may_change
            and deployment.job.status not in ACTIVE_STATES
            and is_rollback_target(deployment, environment.current_deployment),
            "may_cancel": may_change and deployment.job.status in ACTIVE_STATES,
        },
    )


@require_GET
@login_required
def environment_compare(request: HttpRequest, environment_id: int) -> HttpResponse:
    """What changed between two deployments of an environment (``?from=<id>&to=<id>``): commits and settings."""
    environment = get_for_user(
        Environment.objects.select_related("project"), request.user, Action.VIEW_DETAILS, pk=environment_id
    )
    deployments = Deployment.objects.filter(environment=environment)
    older_id, newer_id = parse_id(request.GET.get("from")), parse_id(request.GET.get("to"))
    if older_id is None or newer_id is None:
        raise Http404("Not found.")
    found = {deployment.pk: deployment for deployment in deployments.filter(pk__in=[older_id, newer_id])}
    try:
        older, newer = found[older_id], found[newer_id]
    except KeyError as exc:
        raise Http404("Not found.") from exc
    if (older.created_at, older.pk) > (newer.created_at, newer.pk):
        older, newer = newer, older
    result = services.compare(older, newer)
    return render(
        request,
        "deployments/compare.html",
        {
            "environment": environment,
            "older": older,
            "newer": newer,
            "commits": split_commits(result["commits"]),
            "config": config_changes(result["config"]),
            "choices": deployments.select_related("job")[:HISTORY_SIZE],
        },
    )


@require_POST
@login_required
def environment_lifecycle(request: HttpRequest, environment_id: int, action: str) -> HttpResponse:
    """Stop, start, restart (the environment or one service) or destroy it, and follow the job live."""
    environment = _environment_for_change(request, environment_id)
    back = reverse("environment_detail", args=[environment.pk])
    form = LifecycleForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(str(error) for errors in form.errors.values() for error in errors))
        return redirect(back)
    values = form.cleaned_data
    if action != "destroy":
        values = {"service": values["service"], "confirm": values["confirm"]}
    else:
        values = {"confirm": values["confirm"], "volumes": values["volumes"], "backup": values["backup"]}
    return follow_started_job(
        request,
        lambda: lifecycle.start_lifecycle(environment=environment, actor=request.user, action=action, **values),
        back,
    )


def lifecycle_context(environment: Environment, *, may_change: bool) -> dict[str, Any]:
    """The lifecycle part of the environment page: which services the buttons offer, and what needs the typed
    name."""
    if not may_change:
        return {"lifecycle_may_change": False}
    services: set[str] = set((environment.lifecycle_facts or {}).get("containers") or {})
    current = environment.current_deployment
    if current is not None:
        services |= set(((current.config or {}).get("override") or {}).get("services") or {})
    from backups.models import BackupSettings

    return {
        "lifecycle_may_change": True,
        "lifecycle_services": sorted(services or {"odoo", "db"}),
        "lifecycle_confirm_stop": lifecycle.needs_confirmation(environment, "stop"),
        "lifecycle_can_backup": BackupSettings.objects.filter(environment=environment).exists(),
    }
