"""HTML routes of backups (included through ``panel.extensions``) and the environment page's *Backups* section."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from backups.backup_api import visible_backups
from backups.models import BackupSettings, BackupStatus
from backups.restore import (
    RestoreRefused,
    confirmation_problem,
    copy_production_to,
    newest_good_backup,
    odoo_version_problem,
    restore_into_new_environment,
    start_restore,
)
from backups.services import settle_backups, start_backup
from panel.accounts.choices import Action
from panel.accounts.scoping import can, for_user, get_for_user
from panel.inventory.choices import EnvironmentKind
from panel.inventory.models import Environment
from panel.jobs.runner import JobFailed
from panel.jobs.views import follow_started_job
from panel.validators import parse_id

LIST_SIZE = 20


def environment_backups_context(
    request: HttpRequest, environment: Environment, *, show_details: bool, may_change: bool
) -> dict[str, Any]:
    """The *Backups* section: the newest backups, and whether *Backup now* is offered. Customers see production
    environments' backups only, with their date and state."""
    settle_backups(environment)
    shown = show_details or environment.kind == EnvironmentKind.PRODUCTION
    backups = (
        list(visible_backups(request.user).filter(environment=environment).select_related("storage")[:LIST_SIZE])
        if shown
        else []
    )
    config = BackupSettings.objects.select_related("storage").filter(environment=environment).first()
    copy_source = None
    if may_change and show_details and environment.kind != EnvironmentKind.PRODUCTION:
        production = (
            Environment.objects.filter(project=environment.project_id, kind=EnvironmentKind.PRODUCTION)
            .order_by("pk")
            .first()
        )
        copy_source = newest_good_backup(production) if production is not None else None
    return {
        "backups": backups,
        "backups_shown": shown,
        "backup_storage": config.storage if config is not None and show_details else None,
        "may_back_up": may_change and show_details and config is not None,
        "may_restore": may_change and show_details,
        "copy_source": copy_source,
    }


def _job_or_back(
    request: HttpRequest, environment: Environment, start: Any, refused: tuple[type[Exception], ...] = ()
) -> HttpResponse:
    """Follow the job ``start`` queues, or go back to the environment with why it did not start (busy,
    ``JobFailed``, ``RestoreRefused`` or one of ``refused``)."""
    back = reverse("environment_detail", args=[environment.pk])
    return follow_started_job(request, start, back, refused=(RestoreRefused, JobFailed, *refused))


@require_POST
@login_required
def environment_copy_production(request: HttpRequest, environment_id: int) -> HttpResponse:
    """*Copy production to staging*: restore production's newest good backup here, neutralized."""
    environment = get_for_user(
        Environment.objects.select_related("project"), request.user, Action.CHANGE, pk=environment_id
    )
    return _job_or_back(request, environment, lambda: copy_production_to(environment, request.user))


@require_http_methods(["GET", "POST"])
@login_required
def backup_restore(request: HttpRequest, backup_id: int) -> HttpResponse:
    """Restore a backup: a page that names the backup and the target (choose one of the project's environments
    you may change), asks for the target's name when it is production, and queues the restore job on POST."""
    backup = get_for_user(
        visible_backups(request.user).select_related("environment__project", "storage"), request.user, Action.VIEW,
        pk=backup_id,
    )  # fmt: skip
    if not can(request.user, Action.CHANGE, backup.environment):
        raise Http404("Not found.")
    targets = list(
        for_user(Environment.objects.select_related("project", "server"), request.user, Action.CHANGE)
        .filter(project=backup.environment.project_id)
        .order_by("kind", "name")
    )
    raw = request.POST.get("target") if request.method == "POST" else request.GET.get("target")
    if raw == "new":
        return _restore_into_new(request, backup)
    target_id = parse_id(raw) if raw else None
    target = next((t for t in targets if t.pk == target_id), None)
    if raw and target is None:
        raise Http404("No such environment of this project.")
    problem = ""
    if target is not None:
        problem = odoo_version_problem(backup, target) or (
            "" if backup.status == BackupStatus.GOOD else "Only good backups restore."
        )
    if request.method == "POST" and target is not None and not problem:
        unconfirmed = confirmation_problem(target, request.POST.get("confirm"))
        if not unconfirmed:
            return _job_or_back(
                request,
                target,
                lambda: start_restore(backup=backup, target=target, actor=request.user, trigger="button"),
            )
        messages.error(request, unconfirmed)
    return render(
        request,
        "backups/backup_restore.html",
        {"backup": backup, "targets": targets, "target": target, "problem": problem},
    )


@require_POST
@login_required
def environment_backup(request: HttpRequest, environment_id: int) -> HttpResponse:
    """*Backup now*: queue a backup of the environment and show its job."""
    environment = get_for_user(
        Environment.objects.select_related("project"), request.user, Action.CHANGE, pk=environment_id
    )
    return _job_or_back(
        request, environment, lambda: start_backup(environment=environment, actor=request.user, trigger="button").job
    )


@require_POST
@login_required
def backup_test_restore(request: HttpRequest, backup_id: int) -> HttpResponse:
    """*Test restore*: queue a test restore of the backup (``backups.testrestore``) and show its job."""
    from backups.testrestore import TestRestoreRefused, start_test_restore

    backup = get_for_user(
        visible_backups(request.user).select_related("environment"), request.user, Action.VIEW, pk=backup_id
    )
    if not can(request.user, Action.CHANGE, backup.environment):
        raise Http404("Not found.")
    return _job_or_back(
        request, backup.environment, lambda: start_test_restore(backup, request.user, trigger="button"),
        refused=(TestRestoreRefused,),
    )  # fmt: skip


def _restore_into_new(request: HttpRequest, backup: Any) -> HttpResponse:
    """*Restore into a new environment*: the environment form (kind ``test`` by default); on POST the environment
    is created and one restore job deploys it, then restores the backup into it."""
    from django.core.exceptions import ValidationError

    from panel.inventory.forms import EnvironmentForm, apply_validation_error
    from panel.inventory.views import servers_for

    project = backup.environment.project
    source = backup.environment
    form = EnvironmentForm(
        request.POST if request.method == "POST" else None,
        servers=servers_for(request, project),
        initial={"git_ref": source.git_ref, "kind": EnvironmentKind.TEST, "server": source.server_id,
                 "compose_files_text": ", ".join(source.compose_files), "name": f"restore-{backup.pk}"},
    )  # fmt: skip
    if request.method == "POST" and form.is_valid():
        fields = form.model_fields()
        try:
            job = restore_into_new_environment(
                backup=backup, actor=request.user, trigger="button", secrets=form.cleaned_data["secrets_text"], **fields
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        except (RestoreRefused, JobFailed) as exc:
            messages.error(request, str(exc))
        else:
            return redirect("job_detail", job_id=job.pk)
    return render(request, "backups/backup_restore_new.html", {"backup": backup, "form": form})
