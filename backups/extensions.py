"""What backups add to the panel through ``panel.extensions``, registered in ``BackupsConfig.ready()``.

- API: the ``/backup-storages/`` collection (``backups.api``).
"""

from __future__ import annotations

from backups.api import BackupStorageViewSet
from panel.extensions import Contribution


class BackupStorages(Contribution):
    """The backup storages' API collection. Storages belong to an organization, like servers; the contribution
    hangs off the server model and adds nothing to the server page itself."""

    name = "backups.storages"
    model = "server"
    order = 200
    api_routes = (("backup-storages", BackupStorageViewSet, "backup-storage"),)
