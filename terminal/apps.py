from django.apps import AppConfig


class TerminalConfig(AppConfig):
    """A terminal in the browser (shell, psql, odoo shell) with one-time tickets and recordings (issue 10)."""

    name = "terminal"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from panel import extensions
        from terminal.extensions import contributions

        for contribution in contributions():
            extensions.register(contribution)
