from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    """Deploy, rollback and promote pipelines; git webhooks (issue: deploy)."""

    name = "deployments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the deploy and rollback job handlers.
        from deployments import services  # noqa: F401
        from deployments.extensions import EnvironmentDeployments, ProjectAnswers, ProjectWebhooks
        from panel import extensions

        # The environment and project pages and API get their deployment parts from here (panel.extensions).
        extensions.register(EnvironmentDeployments())
        extensions.register(ProjectWebhooks())
        extensions.register(ProjectAnswers())
