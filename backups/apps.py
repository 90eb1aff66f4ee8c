from django.apps import AppConfig


class BackupsConfig(AppConfig):
    """Backup, restore, verify, retention and storage backends (issue: backups)."""

    name = "backups"
    default_auto_field = "django.db.models.BigAutoField"
