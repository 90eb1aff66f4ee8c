"""The environment page's Odoo zip import (a form posting the zip) and the organization's download policy switch.

The form's file goes straight from the request into the backup storage through ``ZipStorageUploadHandler``: Django's
default upload handlers (memory, then a temporary file) are never used for it. Permission and the environment's
state are checked before the body is read; the CSRF token after it has been parsed (it is a field of the same
form: Django's documented pattern for custom upload handlers), and a refused upload is removed from the storage.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.files.uploadhandler import FileUploadHandler, SkipFile
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from backups.models import BackupPolicy
from backups.storage import StorageError
from backups.zipimport import ZipImport, ZipImportRefused, check_import_allowed
from panel.accounts.choices import Action
from panel.accounts.scoping import can, get_for_user
from panel.accounts.services import record
from panel.inventory.models import Environment
from panel.jobs.services import TargetBusy
from panel.jobs.views import busy_message

FIELD = "zip"


class ZipStorageUploadHandler(FileUploadHandler):
    """Streams the form's ``zip`` file into a ``ZipImport`` as it is parsed (nothing kept in memory or on disk)."""

    chunk_size = 1024 * 1024

    def __init__(self, upload: ZipImport, request: HttpRequest | None = None) -> None:
        super().__init__(request)
        self.upload = upload
        self.active = False
        self.received = False

    def new_file(self, field_name: str, file_name: str, *args: Any, **kwargs: Any) -> None:
        super().new_file(field_name, file_name, *args, **kwargs)
        if field_name != FIELD or self.received:
            raise SkipFile
        self.active = True
        self.upload.filename = file_name or ""

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        if self.active:
            self.upload.write(raw_data)
            return None
        return raw_data

    def file_complete(self, file_size: int) -> None:
        if self.active:
            self.active = False
            self.received = True
        return None


def _back(environment: Environment) -> HttpResponse:
    return redirect("environment_detail", environment_id=environment.pk)


@csrf_exempt
@require_POST
@login_required
def environment_import_zip(request: HttpRequest, environment_id: int) -> HttpResponse:
    """Import an Odoo dump zip from the form and follow its restore job (owners and operators)."""
    environment = get_for_user(
        Environment.objects.select_related("project"), request.user, Action.CHANGE, pk=environment_id
    )
    try:
        check_import_allowed(environment, None, require_confirm=False)
        upload = ZipImport(environment=environment, actor=request.user, trigger="button")
    except TargetBusy as exc:
        messages.warning(request, busy_message(exc))
        return _back(environment)
    except ZipImportRefused as exc:
        messages.error(request, str(exc))
        return _back(environment)
    handler = ZipStorageUploadHandler(upload, request)
    request.upload_handlers = [handler]
    try:
        return _import(request, environment, upload, handler)
    finally:
        if upload.backup is None:
            upload.abort()  # refused, failed or not even CSRF-valid: nothing of it stays in the storage


@csrf_protect
def _import(
    request: HttpRequest, environment: Environment, upload: ZipImport, handler: ZipStorageUploadHandler
) -> HttpResponse:
    try:
        confirm = request.POST.get("confirm", "")  # parses the form: the zip streams into the storage here
    except (ZipImportRefused, StorageError, OSError) as exc:
        messages.error(request, f"The upload failed: {exc}")
        return _back(environment)
    if not handler.received:
        messages.error(request, "Choose an Odoo dump zip to import.")
        return _back(environment)
    try:
        upload.finish(confirm=confirm, check_production=True)
    except ZipImportRefused as exc:
        messages.error(request, str(exc))
        return _back(environment)
    except StorageError as exc:
        messages.error(request, f"The backup storage failed: {exc}")
        return _back(environment)
    except TargetBusy as exc:
        messages.warning(
            request, f"{busy_message(exc)} The zip is kept as backup #{upload.backup.pk if upload.backup else '?'}."
        )
        return _back(environment)
    assert upload.job is not None
    return redirect("job_detail", job_id=upload.job.pk)


@require_POST
@login_required
def organization_backup_policy(request: HttpRequest, environment_id: int) -> HttpResponse:
    """Switch whether customers of the environment's organization may download its production backups (owners)."""
    environment = get_for_user(
        Environment.objects.select_related("project__organization"), request.user, Action.VIEW_DETAILS,
        pk=environment_id,
    )  # fmt: skip
    organization = environment.project.organization
    if not can(request.user, Action.ADMIN, organization):
        raise Http404("Not found.")
    allowed = request.POST.get("customers_may_download") == "on"
    BackupPolicy.objects.update_or_create(organization=organization, defaults={"customers_may_download": allowed})
    record(
        action="organization.backup_policy",
        actor=request.user,
        obj=organization,
        detail={"customers_may_download": allowed},
    )
    messages.success(
        request,
        f"Customers of {organization} may {'now' if allowed else 'no longer'} download production backups.",
    )
    return _back(environment)


def environment_zips_context(
    request: HttpRequest, environment: Environment, *, show_details: bool, may_change: bool
) -> dict[str, Any]:
    """The environment page's Odoo zip controls: the import form (owners and operators), the *Download zip* links
    of the backup list (staff; customers of a production environment when their organization allows it) and the
    organization's switch for customer downloads (owners)."""
    organization_id = environment.project.organization_id
    allowed = BackupPolicy.objects.filter(organization_id=organization_id, customers_may_download=True).exists()
    may_set = show_details and can(request.user, Action.ADMIN, environment.project.organization)
    return {
        "may_import_zip": may_change and show_details,
        "may_download_zip": show_details or (environment.kind == "production" and allowed),
        "zip_policy_may_set": may_set and environment.kind == "production",
        "zip_customers_may_download": allowed,
    }
