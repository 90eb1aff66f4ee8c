"""Choices of deployments."""

from django.db import models


class DeploymentKind(models.TextChoices):
    """What a deployment job does."""

    DEPLOY = "deploy", "Deploy"
    ROLLBACK = "rollback", "Roll back"
    PROMOTE = "promote", "Promote"


class DeploymentStatus(models.TextChoices):
    """Outcome of a deployment (``running`` until the job ends)."""

    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed, previous version restored"
    FAILED_NO_ROLLBACK = "failed_no_rollback", "Failed, nothing to restore"
    DEGRADED = "degraded", "Failed, and the rollback failed too"
    CANCELED = "canceled", "Canceled"
    INTERRUPTED = "interrupted", "Interrupted"


class Trigger(models.TextChoices):
    """Who or what asked for a deployment."""

    BUTTON = "button", "Deploy button"
    API = "api", "API"
    WEBHOOK = "webhook", "Git push"
    PROMOTE = "promote", "Promotion from staging"
    ROLLBACK = "rollback", "Manual rollback"
