"""Models of the backups app: where backups are stored (``BackupStorage``), which storage and schedule each
environment uses (``BackupSettings``), the backups themselves (``Backup``) and the deduplicated filestore files
(``FilestoreObject``, one per content per storage)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import models
from django.utils import timezone

from backups.validators import (
    validate_bucket,
    validate_endpoint_url,
    validate_local_path,
    validate_prefix,
    validate_region,
)
from panel.accounts.models import Organization
from panel.crypto import EncryptedTextField
from panel.inventory.models import Environment, Server
from panel.jobs.models import Job
from panel.validators import validate_name


class StorageKind(models.TextChoices):
    LOCAL = "local", "Local directory"
    S3 = "s3", "S3-compatible"


class AddressingStyle(models.TextChoices):
    AUTO = "auto", "Automatic"
    PATH = "path", "Path (endpoint/bucket/key)"
    VIRTUAL = "virtual", "Virtual host (bucket.endpoint/key)"


# Fields that hold secrets: write-only in forms and the API, never shown.
SECRET_FIELDS = ("secret_access_key", "encryption_keyset")


class BackupStorage(models.Model):
    """A place backups are written to: a directory on the panel host, or a bucket of an S3-compatible store.

    The secret access key and the encryption keyset are encrypted at rest (``PANEL_ENCRYPTION_KEYS``) and never
    leave the panel: objects are encrypted by the panel's worker before they are uploaded, so neither the Docker
    hosts nor the store ever see the key.
    """

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="backup_storages")
    name = models.CharField(max_length=63, validators=[validate_name])
    kind = models.CharField(max_length=8, choices=StorageKind.choices)
    # local
    path = models.CharField(
        max_length=400,
        blank=True,
        validators=[validate_local_path],
        help_text="Absolute directory on the panel host, under one of BACKUP_LOCAL_ROOTS.",
    )
    # s3
    endpoint_url = models.CharField(
        max_length=500,
        blank=True,
        validators=[URLValidator(schemes=["http", "https"]), validate_endpoint_url],
        help_text="S3 endpoint (MinIO, R2, Wasabi, Garage); blank for AWS.",
    )
    region = models.CharField(max_length=64, blank=True, validators=[validate_region])
    bucket = models.CharField(max_length=63, blank=True, validators=[validate_bucket])
    addressing_style = models.CharField(max_length=8, choices=AddressingStyle.choices, default=AddressingStyle.AUTO)
    access_key_id = models.CharField(max_length=128, blank=True)
    secret_access_key = EncryptedTextField(blank=True, help_text="Encrypted at rest; write-only.")
    # both
    prefix = models.CharField(
        max_length=200,
        blank=True,
        validators=[validate_prefix],
        help_text="Every object of this storage is stored under this prefix (e.g. panel/).",
    )
    encrypt = models.BooleanField(
        default=False, help_text="Encrypt objects at rest with a key kept in the panel (Tink streaming AEAD)."
    )
    # A Tink keyset (JSON): the primary key encrypts, every key decrypts. Kept when ``encrypt`` is switched off so
    # that the objects written before stay readable.
    encryption_keyset = EncryptedTextField(blank=True, help_text="Encrypted at rest; never shown.")
    created_at = models.DateTimeField(default=timezone.now)

    scope_organization = "organization"
    scope_min_action = "view_details"

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="backup_storage_name_unique_per_org")
        ]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        # Never the secrets (a repr ends up in logs and tracebacks).
        return f"<BackupStorage {self.pk} {self.kind} {self.name!r}>"

    def save(self, *args: object, **kwargs: object) -> None:
        # An encrypted storage gets its key the first time it is saved with encryption on.
        if self.encrypt and not self.encryption_keyset:
            from backups.crypto import new_keyset

            self.encryption_keyset = new_keyset()
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    def clean(self) -> None:
        """The fields each kind needs; the other kind's fields stay blank."""
        super().clean()
        errors: dict[str, str] = {}
        if self.kind == StorageKind.LOCAL:
            if not self.path:
                errors["path"] = "A local storage needs a directory."
            for field in ("endpoint_url", "bucket", "access_key_id"):
                if getattr(self, field):
                    errors[field] = "Only S3 storages have this."
        elif self.kind == StorageKind.S3:
            if not self.bucket:
                errors["bucket"] = "An S3 storage needs a bucket."
            if not self.access_key_id:
                errors["access_key_id"] = "An S3 storage needs an access key id."
            if not self.secret_access_key:
                errors["secret_access_key"] = "An S3 storage needs a secret access key."
            if self.path:
                errors["path"] = "Only local storages have a directory."
        if errors:
            raise ValidationError(errors)


class BackupSettings(models.Model):
    """Where and when one environment is backed up (inventory knows nothing of backups: the link lives here)."""

    environment = models.OneToOneField(Environment, on_delete=models.CASCADE, related_name="backup_settings")
    storage = models.ForeignKey(BackupStorage, on_delete=models.PROTECT, related_name="environment_settings")
    schedule = models.CharField(
        max_length=200, blank=True, help_text="Cron expression (5 fields); blank: no scheduled backups."
    )
    time_zone = models.CharField(max_length=64, default="UTC", help_text="IANA time zone of the schedule.")
    test_restore_schedule = models.CharField(
        max_length=200,
        blank=True,
        default="0 4 * * 0",
        help_text="Cron expression (5 fields, in the same time zone) of the test restores; blank: none scheduled.",
    )
    test_restore_server = models.ForeignKey(
        Server,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Where test restores run; blank: the environment's own server.",
    )

    scope_organization = "environment__project__organization"

    class Meta:
        verbose_name_plural = "backup settings"

    def __str__(self) -> str:
        return f"Backups of {self.environment_id} into {self.storage_id}"

    def clean(self) -> None:
        """The schedule is valid in its time zone, and the storage belongs to the environment's organization."""
        super().clean()
        from backups.schedule import validate_schedule

        if self.schedule:
            try:
                self.schedule = validate_schedule(self.schedule, self.time_zone)
            except ValidationError as exc:
                raise ValidationError({"schedule": exc.messages}) from exc
        if self.test_restore_schedule:
            try:
                self.test_restore_schedule = validate_schedule(self.test_restore_schedule, self.time_zone)
            except ValidationError as exc:
                raise ValidationError({"test_restore_schedule": exc.messages}) from exc
        server = self.test_restore_server
        if server is not None and self.environment_id is not None:
            environment = self.environment
            allowed = {environment.server.organization_id, environment.project.organization_id}
            if server.organization_id not in allowed:
                raise ValidationError({"test_restore_server": "Choose a server of the environment's organization."})
        if (
            self.storage_id is not None
            and self.environment_id is not None
            and self.storage.organization_id != self.environment.project.organization_id
        ):
            raise ValidationError({"storage": "Choose a backup storage of the environment's organization."})


class BackupKind(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    MANUAL = "manual", "Manual"
    PRE_DEPLOY = "pre-deploy", "Before a deploy"
    PRE_RESTORE = "pre-restore", "Before a restore"
    IMPORTED = "imported", "Imported Odoo zip"


class BackupStatus(models.TextChoices):
    RUNNING = "running", "Running"
    GOOD = "good", "Good"
    FAILED = "failed", "Failed"
    INTERRUPTED = "interrupted", "Interrupted"


class CheckStatus(models.TextChoices):
    """The outcome of a *Verify* or a test restore of a backup ("": never run)."""

    NONE = "", "Never run"
    RUNNING = "running", "Running"
    PASSED = "passed", "Passed"
    FAILED = "failed", "Failed"


class Backup(models.Model):
    """One backup of an environment: its database dump, filestore and manifest in one storage.

    ``status`` is ``good`` only once every object was confirmed by the storage and ``pg_restore --list`` accepted
    the dump; it is set at the very end of the job, so a backup whose job died stays ``running`` until the job's
    end is seen (``backups.services.settle_backups``), then ``interrupted``.
    """

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="backups")
    storage = models.ForeignKey(BackupStorage, on_delete=models.PROTECT, related_name="backups")
    kind = models.CharField(max_length=16, choices=BackupKind.choices)
    status = models.CharField(max_length=16, choices=BackupStatus.choices, default=BackupStatus.RUNNING)
    reason = models.TextField(blank=True)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="backups")
    key_prefix = models.CharField(max_length=300, help_text="Where the backup's own objects are in the storage.")
    manifest = models.JSONField(default=dict, blank=True)
    database_bytes = models.BigIntegerField(default=0)
    filestore_bytes = models.BigIntegerField(default=0, help_text="Every file the backup lists, stored or reused.")
    uploaded_bytes = models.BigIntegerField(default=0, help_text="What this backup wrote to the storage.")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    verify_status = models.CharField(max_length=16, choices=CheckStatus.choices, blank=True, default="")
    verify_reason = models.TextField(blank=True)
    test_restore_status = models.CharField(max_length=16, choices=CheckStatus.choices, blank=True, default="")
    test_restored_at = models.DateTimeField(null=True, blank=True)
    test_restore_reason = models.TextField(blank=True)
    test_restore_job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    scope_organization = "environment__project__organization"

    class Meta:
        ordering = ["-started_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["storage", "key_prefix"], name="backup_key_prefix_unique_per_storage"),
            models.CheckConstraint(
                condition=~models.Q(status="good") | (models.Q(finished_at__isnull=False) & ~models.Q(manifest={})),
                name="backup_good_has_manifest_and_end",
            ),
            models.CheckConstraint(
                condition=models.Q(database_bytes__gte=0)
                & models.Q(filestore_bytes__gte=0)
                & models.Q(uploaded_bytes__gte=0),
                name="backup_sizes_not_negative",
            ),
        ]
        indexes = [models.Index(fields=["environment", "status", "-started_at"], name="backup_env_status_idx")]

    def __str__(self) -> str:
        return f"Backup #{self.pk}"

    @property
    def size(self) -> int:
        """Database dump plus filestore, in bytes."""
        return self.database_bytes + self.filestore_bytes

    @property
    def dump_sha256(self) -> str:
        """The SHA-256 of the stored database dump, as the manifest lists it ("" when it lists none)."""
        objects = self.manifest.get("objects", []) if isinstance(self.manifest, dict) else []
        entry = next((e for e in objects if isinstance(e, dict) and e.get("role") == "database"), None)
        return str(entry.get("sha256", "")) if entry is not None else ""


class FilestoreObject(models.Model):
    """A filestore file stored once in a storage under its content's name (``filestore/<xx>/<sha1>``).

    A row exists only after the storage confirmed the object; every later backup that lists a file with this
    SHA-1 reuses it instead of uploading it again. ``sha256`` is of the stored bytes (ciphertext when
    encrypted), ``plain_sha256`` of the file itself.
    """

    storage = models.ForeignKey(BackupStorage, on_delete=models.PROTECT, related_name="filestore_objects")
    sha1 = models.CharField(max_length=40)
    key = models.CharField(max_length=300)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    encrypted = models.BooleanField(default=False)
    plain_size = models.BigIntegerField(null=True, blank=True)
    plain_sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["storage", "sha1"], name="filestore_object_unique_per_storage"),
            models.CheckConstraint(condition=models.Q(sha1__regex=r"^[0-9a-f]{40}$"), name="filestore_object_sha1"),
            models.CheckConstraint(condition=models.Q(size__gte=0), name="filestore_object_size_not_negative"),
        ]

    def __str__(self) -> str:
        return self.key


class BackupPolicy(models.Model):
    """What an organization allows around its backups (a row only once an owner changed the defaults)."""

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="backup_policy")
    customers_may_download = models.BooleanField(
        default=False, help_text="Customers may download their production environments' backups as Odoo zips."
    )

    scope_organization = "organization"

    class Meta:
        verbose_name_plural = "backup policies"

    def __str__(self) -> str:
        return f"Backup policy of {self.organization_id}"
