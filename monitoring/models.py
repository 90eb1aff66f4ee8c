"""Events the monitoring issue sends out as notifications (deploy ends now; health incidents later)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class Event(models.Model):
    """Something people may want to be told about. ``delivered_at`` is set once notifications went out."""

    class Severity(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        CRITICAL = "critical", "Critical"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="events")
    environment = models.ForeignKey(
        "inventory.Environment", null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    deployment = models.ForeignKey(
        "deployments.Deployment", null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    kind = models.CharField(max_length=48)
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.INFO)
    message = models.TextField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    scope_organization = "organization"

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message[:60]}"
