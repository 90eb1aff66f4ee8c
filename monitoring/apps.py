from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    """Health polling, uptime, incidents and notifications, live logs, status pages, Prometheus (issue 9)."""

    name = "monitoring"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from monitoring.extensions import contributions
        from panel import extensions

        for contribution in contributions():
            extensions.register(contribution)
