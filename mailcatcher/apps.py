from django.apps import AppConfig


class MailcatcherConfig(AppConfig):
    """The mail catcher of staging, test and development environments (MailHog, Mailpit) (issue 10)."""

    name = "mailcatcher"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from mailcatcher.extensions import contributions
        from panel import extensions

        for contribution in contributions():
            extensions.register(contribution)
