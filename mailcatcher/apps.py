from django.apps import AppConfig


class MailcatcherConfig(AppConfig):
    """The mail catcher of staging, test and development environments (MailHog, Mailpit) (issue 10)."""

    name = "mailcatcher"
    default_auto_field = "django.db.models.BigAutoField"
