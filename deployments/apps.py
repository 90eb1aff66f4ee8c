from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    """Deploy, rollback and promote pipelines; git webhooks (issue: deploy)."""

    name = "deployments"
    default_auto_field = "django.db.models.BigAutoField"
