"""Models of the backups app: where backups are stored (``BackupStorage``)."""

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
