"""What backups add to the panel through ``panel.extensions``, registered in ``BackupsConfig.ready()``.

- API: the ``/backup-storages/`` collection (``backups.api``).
- Environment page and API: the *Backups* section (*Backup now*, the newest backups), ``POST
  /environments/{id}/backup/``, the ``/backups/`` collection (``backups.backup_api``) and ``backups.urls``.
"""

from __future__ import annotations

from typing import Any

from backups.api import BackupStorageViewSet
from backups.backup_api import BackupViewSet, EnvironmentBackupActions
from backups.views import environment_backups_context
from backups.zip_api import BackupPolicyViewSet, EnvironmentZipActions
from backups.zip_views import environment_zips_context
from panel.extensions import Contribution, Page


class BackupStorages(Contribution):
    """The backup storages' API collection. Storages belong to an organization, like servers; the contribution
    hangs off the server model and adds nothing to the server page itself."""

    name = "backups.storages"
    model = "server"
    order = 200
    api_routes = (("backup-storages", BackupStorageViewSet, "backup-storage"),)


class EnvironmentBackups(Contribution):
    """The *Backups* section, *Backup now* and the backups' API."""

    name = "backups.environment"
    model = "environment"
    order = 200
    templates = {"sections": "backups/_environment_section.html"}
    viewset_mixins = (EnvironmentBackupActions, EnvironmentZipActions)
    api_routes = (("backups", BackupViewSet, "backup"), ("backup-policies", BackupPolicyViewSet, "backup-policy"))
    html_urls = "backups.urls"

    def context(self, page: Page) -> dict[str, Any]:
        return environment_backups_context(
            page.request, page.obj, show_details=page.show_details, may_change=page.may_change
        )


class EnvironmentZips(Contribution):
    """Odoo dump zips on the environment page: the import form and the customers' download switch (the *Download
    zip* links are in the backup list; the API routes are in ``backups.zip_api``)."""

    name = "backups.zips"
    model = "environment"
    order = 210
    templates = {"sections": "backups/_zip_section.html"}

    def context(self, page: Page) -> dict[str, Any]:
        return environment_zips_context(
            page.request, page.obj, show_details=page.show_details, may_change=page.may_change
        )
