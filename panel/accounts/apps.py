from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Tenancy: organizations, memberships and roles, audit log, API tokens."""

    name = "panel.accounts"
    label = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from panel.accounts import signals  # noqa: F401
