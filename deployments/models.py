"""Deployments: what each deploy, rollback or promotion of an environment put in place."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from deployments.choices import DeploymentKind, DeploymentStatus, Trigger


class Deployment(models.Model):
    """One run of the deploy pipeline on an environment, and what it produced.

    ``images`` maps each compose service to ``{"ref": "name:tag", "id": "sha256:..."}``; ``config`` is the rendered
    panel override and the names (never the values) of env vars and secrets; ``changes`` lists the commits since
    the deployment that was live before.
    """

    environment = models.ForeignKey("inventory.Environment", on_delete=models.CASCADE, related_name="deployments")
    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="deployment")
    kind = models.CharField(max_length=16, choices=DeploymentKind.choices, default=DeploymentKind.DEPLOY)
    status = models.CharField(max_length=24, choices=DeploymentStatus.choices, default=DeploymentStatus.RUNNING)
    ref = models.CharField(max_length=200)
    commit = models.CharField(max_length=40, blank=True)
    commit_subject = models.CharField(max_length=200, blank=True)
    previous = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", help_text="Live before this one."
    )
    source = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="For a rollback: the deployment put back in place.",
    )
    images = models.JSONField(default=dict, blank=True)
    config = models.JSONField(default=dict, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    rollback = models.JSONField(default=dict, blank=True, help_text="Outcome of the automatic rollback, if any.")
    db_snapshot = models.JSONField(
        default=dict, blank=True, help_text="The database dump taken on the server before the update (path, bytes)."
    )
    images_pruned_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When a later deploy removed this deployment's image tags from the server (DEPLOY_KEEP_IMAGES): it "
        "can no longer be rolled back to.",
    )
    triggered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.BUTTON)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    scope_organization = "environment__project__organization"

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Deployment #{self.pk} of {self.environment}"

    @property
    def effective_status(self) -> str:
        """The outcome, or the job's end state when the worker died before recording one."""
        if self.status == DeploymentStatus.RUNNING and self.job.status in ("interrupted", "canceled", "failed"):
            return self.job.status
        return self.status

    @property
    def short_commit(self) -> str:
        """The first 12 characters of the commit."""
        return self.commit[:12]
