"""Choices of the inventory."""

from django.db import models


class ServerStatus(models.TextChoices):
    """Where a server stands in onboarding and validation."""

    UNCONFIRMED = "unconfirmed", "Host key not confirmed"
    UNVALIDATED = "unvalidated", "Not validated yet"
    OK = "ok", "Ready"
    PROBLEM = "problem", "Needs attention"


class EnvironmentKind(models.TextChoices):
    """What an environment is for."""

    PRODUCTION = "production", "Production"
    STAGING = "staging", "Staging"
    TEST = "test", "Test"
    DEVELOPMENT = "development", "Development"


class EnvironmentState(models.TextChoices):
    """What runs on an environment, as the panel knows it (``panel.inventory.services.environment_state``)."""

    NOT_DEPLOYED = "not deployed", "Not deployed"
    DEPLOYING = "deploying", "Deploying"
    RESTORING = "restoring", "Restoring"
    RUNNING = "running", "Running"
    NEEDS_ATTENTION = "needs attention", "Needs attention"
    DEGRADED = "degraded", "Degraded"
    CHANGING = "changing", "Stopping, starting or destroying"
    STOPPED = "stopped", "Stopped"
    DESTROYED = "destroyed", "Destroyed"


class Lifecycle(models.TextChoices):
    """What an operator last made of an environment's containers, as the lifecycle job found them afterwards
    (``deployments.lifecycle``). Blank: running as deployed."""

    RUNNING = "", "Running"
    STOPPED = "stopped", "Stopped on purpose"
    DESTROYED = "destroyed", "Destroyed"


class DeleteChoice(models.TextChoices):
    """What removing an environment from the panel does with what runs on its server."""

    DESTROYED = "destroyed", "It was destroyed (its Destroy job succeeded)"
    LEAVE_RUNNING = "leave_running", "Leave it running on the server, unwatched"


ODOO_VERSIONS = ["11.0", "12.0", "13.0", "14.0", "15.0", "16.0", "17.0", "18.0", "19.0"]
