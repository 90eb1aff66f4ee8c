from django.apps import AppConfig


class BackupsConfig(AppConfig):
    """Backup, restore, verify, retention and storage backends (issue: backups)."""

    name = "backups"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the backup, restore and verify jobs' handlers.
        from backups import restore, services, verify  # noqa: F401
        from backups.extensions import BackupStorages, EnvironmentBackups
        from panel import extensions

        # The backup storages' API collection, and the environment page's Backups section (panel.extensions).
        extensions.register(BackupStorages())
        extensions.register(EnvironmentBackups())
