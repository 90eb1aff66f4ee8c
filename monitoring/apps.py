from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    """Health polling, uptime, incidents and notifications (issue: monitoring)."""

    name = "monitoring"
    default_auto_field = "django.db.models.BigAutoField"
