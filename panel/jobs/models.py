"""Jobs and their log lines."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from panel.accounts.models import Organization
from panel.jobs.choices import ACTIVE_STATES, TERMINAL_STATES, JobKind, JobStatus, LogStream


class Job(models.Model):
    """One long operation. Only ``panel.jobs.services`` changes its status.

    ``lock_key`` names the target a mutating job holds (``environment:12``, ``server:3``); a partial unique index
    lets only one queued or running job hold a key, so two mutating jobs never run on one target even if Redis is
    flushed.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=32, choices=JobKind.choices)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    server = models.ForeignKey("inventory.Server", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs")
    environment = models.ForeignKey(
        "inventory.Environment", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    lock_key = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001 - NULL: holds no lock
    params = models.JSONField(default=dict, blank=True, help_text="Ids and options only, never secrets.")
    result = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True, help_text="Why the job did not succeed, in words a person can act on.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    trigger = models.CharField(max_length=32, default="user")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    cancel_requested = models.BooleanField(default=False)
    published_at = models.DateTimeField(null=True, blank=True, help_text="When its task was last handed to the broker.")
    publish_count = models.PositiveSmallIntegerField(default=0)
    last_seq = models.PositiveIntegerField(default=0)
    progress = models.JSONField(
        default=dict,
        blank=True,
        help_text='What a data-moving step has done so far: {"label", "done", "total"} in bytes.',
    )

    scope_organization = "organization"

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["lock_key"],
                condition=Q(status__in=[s.value for s in ACTIVE_STATES]) & Q(lock_key__isnull=False),
                name="one_active_job_per_target",
            )
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk}"

    @property
    def is_terminal(self) -> bool:
        """The job has ended and will not change again."""
        return self.status in TERMINAL_STATES

    @property
    def duration_seconds(self) -> float | None:
        """Seconds from start to end (or to now while running)."""
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return (end - self.started_at).total_seconds()


class JobLogLine(models.Model):
    """One line of a job's output, ordered by ``seq`` (1, 2, 3, ... with no gaps)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_lines")
    seq = models.PositiveIntegerField()
    ts = models.DateTimeField(default=timezone.now)
    stream = models.CharField(max_length=8, choices=LogStream.choices, default=LogStream.STDOUT)
    text = models.TextField()

    scope_organization = "job__organization"
    scope_min_action = "view_details"

    class Meta:
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="log_line_seq_unique")]

    def __str__(self) -> str:
        return f"{self.job_id}:{self.seq} {self.text[:60]}"
