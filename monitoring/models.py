"""Health of the fleet: samples and rollups, the current state per environment and server, named checks, incidents,
notification channels and their deliveries, maintenance windows and the organizations' status pages.

``Event`` is older: things people may want to be told about (backup overdue, pre-deploy backup failed). Deploy,
backup and restore outcomes are read from ``panel.jobs.Job`` for timelines; features do not write here.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from panel.crypto import EncryptedTextField


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


class HealthState(models.TextChoices):
    """What a poll says about an environment. *unknown*: the panel could not look (server unreachable, never
    polled); never counted as down, never alerted as down."""

    UP = "up", "Up"
    DEGRADED = "degraded", "Degraded"  # answers, but a check fails (8072 down, cron stuck, ...)
    DOWN = "down", "Down"
    UNKNOWN = "unknown", "Unknown"
    MAINTENANCE = "maintenance", "Maintenance"


class CheckStatus(models.TextChoices):
    OK = "ok", "OK"
    WARNING = "warning", "Warning"
    FAILING = "failing", "Failing"
    UNKNOWN = "unknown", "Unknown"


class ServerHealth(models.Model):
    """The newest poll of one server (one row per server, updated every cycle)."""

    server = models.OneToOneField("inventory.Server", on_delete=models.CASCADE, related_name="health")
    reachable = models.BooleanField(null=True)
    error = models.TextField(blank=True)
    polled_at = models.DateTimeField(null=True, blank=True)
    cycle_seconds = models.FloatField(null=True, blank=True, help_text="Wall time of the newest poll cycle.")
    load1 = models.FloatField(null=True, blank=True)
    load5 = models.FloatField(null=True, blank=True)
    cpus = models.PositiveSmallIntegerField(null=True, blank=True)
    memory_used_bytes = models.BigIntegerField(null=True, blank=True)
    memory_total_bytes = models.BigIntegerField(null=True, blank=True)
    disk_used_bytes = models.BigIntegerField(null=True, blank=True)
    disk_total_bytes = models.BigIntegerField(null=True, blank=True)
    cycles = models.PositiveIntegerField(default=0, help_text="Poll cycles so far (Odoo checks run every few).")

    scope_organization = "server__organization"

    def __str__(self) -> str:
        return f"{self.server_id}: reachable={self.reachable}"


class EnvironmentHealth(models.Model):
    """The newest known health of one environment (one row per environment, updated every cycle)."""

    environment = models.OneToOneField("inventory.Environment", on_delete=models.CASCADE, related_name="health")
    state = models.CharField(max_length=16, choices=HealthState.choices, default=HealthState.UNKNOWN)
    since = models.DateTimeField(default=timezone.now, help_text="When the state last changed.")
    message = models.TextField(blank=True, help_text="Why, in words a person can act on.")
    polled_at = models.DateTimeField(null=True, blank=True)
    http_ok = models.BooleanField(null=True)
    http_ms = models.FloatField(null=True, blank=True)
    websocket_ok = models.BooleanField(null=True)
    websocket_ms = models.FloatField(null=True, blank=True)
    cpu_percent = models.FloatField(null=True, blank=True)
    memory_bytes = models.BigIntegerField(null=True, blank=True)
    restarts = models.PositiveIntegerField(null=True, blank=True)
    containers = models.JSONField(
        default=list, blank=True, help_text="[{service, name, state, health, restarts, cpu_percent, memory_bytes}]"
    )
    database_bytes = models.BigIntegerField(null=True, blank=True)
    filestore_bytes = models.BigIntegerField(null=True, blank=True)
    odoo_checked_at = models.DateTimeField(null=True, blank=True)

    scope_organization = "environment__project__organization"

    def __str__(self) -> str:
        return f"{self.environment_id}: {self.state}"


class Sample(models.Model):
    """One raw poll of one environment (kept ``MONITOR_RAW_RETENTION_HOURS``, then only its rollups remain)."""

    environment = models.ForeignKey("inventory.Environment", on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(default=timezone.now)
    state = models.CharField(max_length=16, choices=HealthState.choices)
    http_ms = models.FloatField(null=True, blank=True)
    websocket_ms = models.FloatField(null=True, blank=True)
    cpu_percent = models.FloatField(null=True, blank=True)
    memory_bytes = models.BigIntegerField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["environment", "at"])]

    def __str__(self) -> str:
        return f"{self.environment_id} {self.at:%Y-%m-%d %H:%M:%S}: {self.state}"


class ServerSample(models.Model):
    """One raw poll of one server."""

    server = models.ForeignKey("inventory.Server", on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(default=timezone.now)
    reachable = models.BooleanField()
    cycle_seconds = models.FloatField(null=True, blank=True)
    load1 = models.FloatField(null=True, blank=True)
    memory_used_bytes = models.BigIntegerField(null=True, blank=True)
    disk_used_bytes = models.BigIntegerField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["server", "at"])]

    def __str__(self) -> str:
        return f"{self.server_id} {self.at:%Y-%m-%d %H:%M:%S}: reachable={self.reachable}"


class RollupPeriod(models.TextChoices):
    HOUR = "hour", "Hour"
    DAY = "day", "Day"


class Rollup(models.Model):
    """Samples of one environment over an hour (kept 30 days) or a day (kept 400 days). Uptime over a period is
    ``up / (up + degraded + down)``: unknown and maintenance samples are left out of both sides."""

    environment = models.ForeignKey("inventory.Environment", on_delete=models.CASCADE, related_name="rollups")
    period = models.CharField(max_length=8, choices=RollupPeriod.choices)
    start = models.DateTimeField()
    up = models.PositiveIntegerField(default=0)
    degraded = models.PositiveIntegerField(default=0)
    down = models.PositiveIntegerField(default=0)
    unknown = models.PositiveIntegerField(default=0)
    maintenance = models.PositiveIntegerField(default=0)
    http_ms_avg = models.FloatField(null=True, blank=True)
    http_ms_max = models.FloatField(null=True, blank=True)
    cpu_percent_avg = models.FloatField(null=True, blank=True)
    memory_bytes_avg = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["environment", "period", "start"], name="monitoring_rollup_unique")
        ]

    def __str__(self) -> str:
        return f"{self.environment_id} {self.period} {self.start:%Y-%m-%d %H:%M}"


class ServerRollup(models.Model):
    """Samples of one server over an hour or a day."""

    server = models.ForeignKey("inventory.Server", on_delete=models.CASCADE, related_name="rollups")
    period = models.CharField(max_length=8, choices=RollupPeriod.choices)
    start = models.DateTimeField()
    reachable = models.PositiveIntegerField(default=0)
    unreachable = models.PositiveIntegerField(default=0)
    load1_avg = models.FloatField(null=True, blank=True)
    memory_used_bytes_avg = models.FloatField(null=True, blank=True)
    disk_used_bytes_max = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["server", "period", "start"], name="monitoring_server_rollup_unique")
        ]

    def __str__(self) -> str:
        return f"{self.server_id} {self.period} {self.start:%Y-%m-%d %H:%M}"


class CheckState(models.Model):
    """One named check of one environment (``availability``, ``websocket``, ``cron_overdue``, ...): its newest
    result and the consecutive failure/success counts that open and close incidents."""

    environment = models.ForeignKey("inventory.Environment", on_delete=models.CASCADE, related_name="checks")
    name = models.CharField(max_length=40)
    status = models.CharField(max_length=16, choices=CheckStatus.choices, default=CheckStatus.UNKNOWN)
    message = models.TextField(blank=True)
    value = models.FloatField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    consecutive_successes = models.PositiveIntegerField(default=0)
    checked_at = models.DateTimeField(null=True, blank=True)
    changed_at = models.DateTimeField(default=timezone.now)

    scope_organization = "environment__project__organization"

    class Meta:
        constraints = [models.UniqueConstraint(fields=["environment", "name"], name="monitoring_check_unique")]

    def __str__(self) -> str:
        return f"{self.environment_id} {self.name}: {self.status}"


class Incident(models.Model):
    """A check that failed ``MONITOR_FAIL_THRESHOLD`` cycles in a row, until ``MONITOR_RECOVER_THRESHOLD``
    successes close it. At most one open incident per (environment, check): the partial unique constraint makes
    opening a race that exactly one worker wins, and closing is a conditional ``UPDATE ... WHERE closed_at IS
    NULL`` whose single winner notifies."""

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="incidents")
    environment = models.ForeignKey("inventory.Environment", on_delete=models.CASCADE, related_name="incidents")
    check_name = models.CharField(max_length=40)
    title = models.CharField(max_length=300)
    message = models.TextField(blank=True)
    severity = models.CharField(max_length=16, choices=Event.Severity.choices, default=Event.Severity.CRITICAL)
    opened_at = models.DateTimeField(default=timezone.now, db_index=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    suppressed = models.BooleanField(default=False, help_text="Opened during maintenance or a deploy: no alerts.")
    last_reminded_at = models.DateTimeField(null=True, blank=True)
    reminders_sent = models.PositiveIntegerField(default=0)

    scope_organization = "organization"

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "check_name"],
                condition=Q(closed_at__isnull=True),
                name="monitoring_one_open_incident",
            )
        ]

    def __str__(self) -> str:
        return self.title


class IncidentUpdate(models.Model):
    """A line on an incident's timeline (opened, still failing, a message, recovered)."""

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="updates")
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=24)  # opened, update, closed, reminder, note
    message = models.TextField()

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message[:60]}"


class ChannelKind(models.TextChoices):
    EMAIL = "email", "E-mail"
    WEBHOOK = "webhook", "Webhook (JSON, HMAC-signed)"
    SLACK = "slack", "Slack-compatible webhook"


class NotificationChannel(models.Model):
    """Where an organization's alerts go. ``environment`` set: an override for that one environment (see the
    README for how overrides combine with the organization's channels)."""

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="notification_channels"
    )
    environment = models.ForeignKey(
        "inventory.Environment", null=True, blank=True, on_delete=models.CASCADE, related_name="notification_channels"
    )
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=ChannelKind.choices)
    target = models.CharField(max_length=1000, help_text="E-mail addresses (comma-separated) or the webhook URL.")
    secret = EncryptedTextField(blank=True, help_text="HMAC key of a JSON webhook; write-only.")
    enabled = models.BooleanField(default=True)
    muted = models.BooleanField(default=False, help_text="On an environment override: send nothing for it.")
    consecutive_failures = models.PositiveIntegerField(default=0)
    failing_since = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    scope_organization = "organization"

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class Notification(models.Model):
    """One message to one channel about one incident transition. Unique per (channel, incident, kind, sequence):
    whatever retries or restarts, a transition is delivered at most once per channel, and ``status`` says whether
    it was."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    channel = models.ForeignKey(NotificationChannel, on_delete=models.CASCADE, related_name="notifications")
    incident = models.ForeignKey(
        Incident, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications"
    )
    kind = models.CharField(max_length=24)  # opened, closed, reminder, test
    sequence = models.PositiveIntegerField(default=0, help_text="Reminder number; 0 for open and close.")
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "incident", "kind", "sequence"], name="monitoring_notification_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.sequence} to {self.channel_id}: {self.status}"


class MaintenanceWindow(models.Model):
    """While it lasts, the environments it covers raise no alerts (their samples count as maintenance).
    ``environment`` empty: every environment of the organization."""

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="maintenance_windows"
    )
    environment = models.ForeignKey(
        "inventory.Environment", null=True, blank=True, on_delete=models.CASCADE, related_name="maintenance_windows"
    )
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    reason = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)

    scope_organization = "organization"

    class Meta:
        ordering = ["-starts_at", "-id"]

    def __str__(self) -> str:
        return f"{self.starts_at:%Y-%m-%d %H:%M} - {self.ends_at:%Y-%m-%d %H:%M}"


class StatusPage(models.Model):
    """An organization's status page: its environments (production ones unless chosen), state, 90 days of uptime,
    incidents, last deploy and last good backup. ``public_token_hash`` set: reachable without login at
    ``/status/p/<token>/`` until revoked (the token itself is shown once and never stored)."""

    class Include(models.TextChoices):
        PRODUCTION = "production", "Production environments"
        ALL = "all", "All environments"
        SELECTED = "selected", "Selected environments"

    organization = models.OneToOneField("accounts.Organization", on_delete=models.CASCADE, related_name="status_page")
    title = models.CharField(max_length=200, blank=True)
    include = models.CharField(max_length=16, choices=Include.choices, default=Include.PRODUCTION)
    environments = models.ManyToManyField("inventory.Environment", blank=True, related_name="+")
    public_token_hash = models.CharField(max_length=64, blank=True, db_index=True)
    public_since = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    scope_organization = "organization"

    def __str__(self) -> str:
        return self.title or f"status page of {self.organization_id}"
