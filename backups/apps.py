from django.apps import AppConfig


class BackupsConfig(AppConfig):
    """Backup, restore, verify, retention and storage backends (issue: backups)."""

    name = "backups"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the backup, restore, verify and test restore jobs' handlers.
        from backups import predeploy, restore, services, testrestore, verify  # noqa: F401
        from backups.extensions import BackupStorages, EnvironmentBackups, EnvironmentZips
        from panel import extensions

        # The backup storages' API collection, and the environment page's Backups section (panel.extensions).
        extensions.register(BackupStorages())
        extensions.register(EnvironmentBackups())
        extensions.register(EnvironmentZips())
        # Odoo zip imports: the body reaches the view as a stream, never staged (panel.streamed_body).
        from panel import streamed_body

        streamed_body.register(r"/api/v1/environments/[0-9]+/import-zip/")
        streamed_body.register(r"/environments/[0-9]+/import-zip/")
        # A deploy's database dump becomes a pre-deploy backup (deployments.hooks; deployments imports no backups).
        predeploy.register()
