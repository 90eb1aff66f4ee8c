"""API of backup storages: ``/api/v1/backup-storages/`` (registered through ``panel.extensions``).

Like servers: owners and operators of an organization create and change its storages, viewers read them,
customers never see them, and another organization's storage answers 404. The secret access key is write-only
(``secret_access_key_set`` says whether one is stored); the encryption keyset is never accepted nor shown.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from backups.models import BackupStorage
from backups.services import check_storage
from backups.storage import StorageError
from panel.accounts.api.serializers import (
    AuditedSecretSerializer,
    DetailSerializer,
    ScopedRelatedField,
    api_validation_error,
)
from panel.accounts.api.views import ScopedModelViewSet
from panel.accounts.models import Organization
from panel.accounts.services import record

ACCESS_KEY_RE = r"^[A-Za-z0-9+/=_.-]{1,128}$"
SECRET_KEY_RE = r"^[\x21-\x7e]{1,256}$"


class BackupStorageSerializer(AuditedSecretSerializer):
    """A local directory or an S3-compatible bucket that backups are written to."""

    audit_name = "backup_storage"
    secret_field = "secret_access_key"

    organization = ScopedRelatedField(Organization)
    access_key_id = serializers.RegexField(
        ACCESS_KEY_RE, required=False, allow_blank=True, max_length=128, help_text="S3 access key id."
    )
    secret_access_key = serializers.RegexField(
        SECRET_KEY_RE,
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=256,
        trim_whitespace=False,
        style={"input_type": "password"},
        help_text="S3 secret access key. Never returned; leave it out to keep the stored one.",
    )
    secret_access_key_set = serializers.SerializerMethodField(help_text="A secret access key is stored.")

    class Meta:
        model = BackupStorage
        fields = [
            "id",
            "organization",
            "name",
            "kind",
            "path",
            "endpoint_url",
            "region",
            "bucket",
            "addressing_style",
            "prefix",
            "access_key_id",
            "secret_access_key",
            "secret_access_key_set",
            "encrypt",
            "created_at",
        ]
        read_only_fields = ["created_at"]
        create_only = ["organization", "kind"]

    def get_secret_access_key_set(self, obj: BackupStorage) -> bool:
        return bool(obj.secret_access_key)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Every model validator and the per-kind rules, on the storage as it would be saved."""
        candidate = BackupStorage() if self.instance is None else BackupStorage.objects.get(pk=self.instance.pk)
        for name, value in attrs.items():
            if name == "secret_access_key" and not value:
                continue  # blank keeps the stored one
            setattr(candidate, name, value)
        try:
            candidate.full_clean(exclude=["encryption_keyset"])
        except DjangoValidationError as exc:
            raise api_validation_error(exc) from exc
        return attrs


class StorageCheckSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The outcome of a storage check."""

    ok = serializers.BooleanField(help_text="The storage stored, returned and deleted a test object.")
    detail = serializers.CharField(help_text="What was done, or the step that failed and why.")


@extend_schema_view(
    list=extend_schema(description="Backup storages of the organizations the caller sees details of."),
    create=extend_schema(description="Add a storage: kind `local` (path) or `s3` (bucket, keys, endpoint)."),
    destroy=extend_schema(
        description="Remove a storage no backup, environment or stored file uses any more (409 with what still does).",
        responses={204: None, 409: DetailSerializer},
    ),
)
class BackupStorageViewSet(ScopedModelViewSet):
    """Where backups are stored. Owners and operators change them, viewers read them, customers never see them."""

    model = BackupStorage
    audit_name = "backup_storage"
    serializer_class = BackupStorageSerializer

    def base_queryset(self) -> models.QuerySet[BackupStorage]:
        return BackupStorage.objects.select_related("organization")

    @extend_schema(request=None, responses={200: StorageCheckSerializer})
    @action(detail=True, methods=["post"])
    def check(self, request: Request, pk: str | None = None) -> Response:
        """Write a test object, read it back, verify and delete it (owners and operators)."""
        storage = self.get_object()
        try:
            detail = check_storage(storage)
        except StorageError as exc:
            return Response({"ok": False, "detail": str(exc)})
        record(action="backup_storage.checked", actor=request.user, obj=storage)
        return Response({"ok": True, "detail": detail})
