"""One-time tickets that open a terminal, and the recorded sessions they opened."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Profile(models.TextChoices):
    """What a terminal runs; each is resolved on the server side (``terminal.services.PROFILES``)."""

    SHELL = "shell", "Shell in the odoo container"
    PSQL = "psql", "psql in the db container"
    ODOO_SHELL = "odoo-shell", "odoo shell on the environment's database"


class TerminalTicket(models.Model):
    """A ticket a POST (with CSRF) hands out: it opens one terminal websocket for its user, environment and profile,
    once, before it expires. Only the SHA-256 of the token is stored."""

    token_hash = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    environment = models.ForeignKey("inventory.Environment", on_delete=models.CASCADE, related_name="+")
    profile = models.CharField(max_length=16, choices=Profile.choices)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    scope_organization = "environment__project__organization"

    class Meta:
        indexes = [models.Index(fields=["expires_at"])]

    def __str__(self) -> str:
        return f"{self.profile} ticket of {self.user_id} for environment {self.environment_id}"


class TerminalSession(models.Model):
    """One terminal session: who opened which profile of which environment, when, how it ended, and its recording
    (asciicast v2, output only, a file under ``PANEL_DATA_DIR/terminal``)."""

    environment = models.ForeignKey(
        "inventory.Environment", null=True, on_delete=models.SET_NULL, related_name="terminal_sessions"
    )
    environment_name = models.CharField(max_length=200)
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150)
    profile = models.CharField(max_length=16, choices=Profile.choices)
    container = models.CharField(max_length=64, help_text="The full id of the container the session ran in.")
    tag = models.CharField(max_length=40, help_text="Marks the session's processes on the server (to end them).")
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=40, blank=True)
    recording = models.CharField(max_length=200, blank=True, help_text="File name under PANEL_DATA_DIR/terminal.")
    recording_bytes = models.PositiveBigIntegerField(default=0)
    recording_truncated = models.BooleanField(default=False)

    scope_organization = "organization"
    scope_min_action = "admin"

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_profile_display()} on {self.environment_name} by {self.username}"
