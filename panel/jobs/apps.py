from django.apps import AppConfig


class JobsConfig(AppConfig):
    """The job framework: long operations with live, persisted logs."""

    name = "panel.jobs"
    label = "jobs"
    default_auto_field = "django.db.models.BigAutoField"
