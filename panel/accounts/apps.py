from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Tenancy: organizations, memberships and roles, audit log, API tokens."""

    name = "panel.accounts"
    label = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from panel.accounts import signals  # noqa: F401
        from panel.accounts.services import trusted_proxies

        # Fail at start-up on a malformed PANEL_TRUSTED_PROXIES, not on the first request.
        trusted_proxies()
