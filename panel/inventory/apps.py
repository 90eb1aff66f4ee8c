from django.apps import AppConfig


class InventoryConfig(AppConfig):
    """Servers, projects and environments."""

    name = "panel.inventory"
    label = "inventory"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the job handlers of this app.
        from panel.inventory import (
            proxy,  # noqa: F401
            services,  # noqa: F401
        )
