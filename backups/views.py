"""HTML routes of backups (included through ``panel.extensions``) and the environment page's *Backups* section."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from backups.backup_api import visible_backups
from backups.models import BackupSettings
from backups.services import settle_backups, start_backup
from panel.accounts.choices import Action
from panel.accounts.scoping import get_for_user
from panel.inventory.choices import EnvironmentKind
from panel.inventory.models import Environment
from panel.jobs.runner import JobFailed
from panel.jobs.services import TargetBusy
from panel.jobs.views import busy_message

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
    return {
        "backups": backups,
        "backups_shown": shown,
        "backup_storage": config.storage if config is not None and show_details else None,
        "may_back_up": may_change and show_details and config is not None,
    }


@require_POST
@login_required
def environment_backup(request: HttpRequest, environment_id: int) -> HttpResponse:
    """*Backup now*: queue a backup of the environment and show its job."""
    environment = get_for_user(
        Environment.objects.select_related("project"), request.user, Action.CHANGE, pk=environment_id
    )
    try:
        backup = start_backup(environment=environment, actor=request.user, trigger="button")
    except TargetBusy as exc:
        messages.warning(request, busy_message(exc))
        return redirect("environment_detail", environment_id=environment.pk)
    except JobFailed as exc:
        messages.error(request, str(exc))
        return redirect("environment_detail", environment_id=environment.pk)
    assert backup.job is not None
    return redirect("job_detail", job_id=backup.job.pk)
