"""API of backups: ``POST /api/v1/environments/{id}/backup/`` (*Backup now*) and ``/api/v1/backups/``.

- *Backup now*: owners and operators (``change`` on the environment); 202 with the backup and its queued job,
  **409** ``{"detail", "job"}`` while another job (a deploy, a backup) holds the environment, 400 when the
  environment has no backup storage.
- ``GET`` / ``PATCH /api/v1/environments/{id}/backup-settings/`` (``{"storage", "schedule", "time_zone"}``): staff read
  them (404 while there are none), owners and operators set them; the storage must be one of the environment's
  organization, the schedule valid in its time zone (400 otherwise).
- ``GET /backups/?environment=<id>``, ``GET /backups/{id}/``: everyone who may see the environment, newest first.
  Customers see only production environments' backups, and of them only the date and the state.

- ``POST /environments/{id}/restore/`` ``{"backup", "confirm"}`` and ``POST /environments/{id}/copy-production/``:
  owners and operators; 202 with the restore job, 409 busy, 400 refused (versions, not good, another project, a
  production target without ``confirm`` = its name).
- ``POST /backups/{id}/verify/``: owners and operators; 202 with the *Verify* job, 409 while one runs, 400 for a
  backup that is not good.
- ``POST /backups/{id}/test-restore/`` ``{"server"?}``: owners and operators; 202 with the test restore job, 409
  while one of the environment runs, 400 for a backup that is not good or a server of another organization.

Objects outside ``for_user(..., action)`` answer 404, like unknown ids.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.db.models import Q
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from backups.models import Backup, BackupSettings, BackupStorage
from backups.restore import (
    RestoreRefused,
    confirmation_problem,
    copy_production_to,
    restore_into_new_environment,
    start_restore,
)
from backups.services import settle_backups, start_backup
from backups.testrestore import TestRestoreRefused, start_test_restore
from backups.verify import start_verify
from backups.zip_api import BackupZipActions
from panel.accounts.api.serializers import (
    CustomerViewMixin,
    DetailSerializer,
    ScopedRelatedField,
    api_validation_error,
)
from panel.accounts.choices import Action
from panel.accounts.scoping import can, for_user, organization_ids
from panel.accounts.services import record
from panel.inventory.choices import EnvironmentKind
from panel.inventory.models import Server
from panel.jobs.api.serializers import JobBusySerializer, JobSerializer, JobStartedSerializer
from panel.jobs.api.views import busy_response
from panel.jobs.runner import JobFailed
from panel.jobs.services import TargetBusy


class BackupSerializer(CustomerViewMixin, serializers.ModelSerializer):  # type: ignore[type-arg]
    """A backup of an environment (customers: its dates and state only)."""

    customer_fields = ("id", "environment", "status", "started_at", "finished_at", "verified_at")
    size = serializers.IntegerField(read_only=True, help_text="Database dump plus filestore, in bytes.")
    objects = serializers.SerializerMethodField(help_text="How many objects the manifest lists.")

    class Meta:
        model = Backup
        fields = [
            "id", "environment", "storage", "kind", "status", "reason", "job", "key_prefix", "size",
            "database_bytes", "filestore_bytes", "uploaded_bytes", "objects", "started_at", "finished_at",
            "verified_at", "verify_status", "verify_reason", "test_restore_status", "test_restored_at",
            "test_restore_reason", "test_restore_job",
        ]  # fmt: skip
        read_only_fields = fields

    def organization_id_of(self, instance: Backup) -> int:
        return int(instance.environment.project.organization_id)

    def get_objects(self, instance: Backup) -> int:
        return len(instance.manifest.get("objects", [])) + (1 if instance.manifest else 0)


class BackupSettingsSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """Where and when an environment is backed up."""

    storage = ScopedRelatedField(BackupStorage, help_text="A backup storage of the environment's organization.")
    test_restore_server = ScopedRelatedField(
        Server, required=False, allow_null=True,
        help_text="Where test restores run (a server of the environment's organization); null: its own server.",
    )  # fmt: skip

    class Meta:
        model = BackupSettings
        fields = ["storage", "schedule", "time_zone", "test_restore_schedule", "test_restore_server"]


class BackupStartedSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """202: the backup record and the queued job that takes it."""

    backup = BackupSerializer(read_only=True)
    job = JobSerializer(read_only=True)


class TestRestoreRequestSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """``POST /backups/{id}/test-restore/`` (every field optional)."""

    server = ScopedRelatedField(
        Server, required=False, help_text="Where the copy runs; default: the environment's test restore server."
    )


class BackupFilterSerializer(serializers.Serializer):  # type: ignore[type-arg]
    environment = serializers.IntegerField(required=False, min_value=1, max_value=2**63 - 1)


def visible_backups(user: Any) -> models.QuerySet[Backup]:
    """The backups ``user`` may see: staff all of their organizations', customers production ones only."""
    queryset = for_user(Backup.objects.select_related("environment__project", "job"), user, Action.VIEW)
    staff = organization_ids(user, Action.VIEW_DETAILS)
    return queryset.filter(
        Q(environment__project__organization_id__in=staff) | Q(environment__kind=EnvironmentKind.PRODUCTION)
    )


class RestoreRequestSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """``POST /environments/{id}/restore/``."""

    backup = serializers.IntegerField(min_value=1, help_text="A good backup of an environment of the same project.")
    confirm = serializers.CharField(
        required=False, allow_blank=True, max_length=63,
        help_text="The target environment's name; required when the target is production.",
    )  # fmt: skip


class NewEnvironmentSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """``POST /backups/{id}/restore-into-new/``: the environment to create (of the backup's project)."""

    name = serializers.CharField(max_length=63)
    kind = serializers.ChoiceField(choices=EnvironmentKind.choices, default=EnvironmentKind.TEST)
    server = ScopedRelatedField(Server, help_text="A server the project's environments may run on.")
    compose_files = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, max_length=10,
        help_text="Default: those of the backup's environment.",
    )  # fmt: skip
    git_ref = serializers.CharField(max_length=200, required=False, help_text="Default: the backup's environment's.")
    domain = serializers.CharField(max_length=253, required=False, allow_blank=True)


def _job_started(view: Any, start: Any, refused: tuple[type[Exception], ...] = (RestoreRefused, JobFailed)) -> Response:
    """Call a job start service and answer: 202 with the job, 409 busy, 400 refused (one of ``refused``)."""
    try:
        job = start()
    except TargetBusy as exc:
        return busy_response(exc)
    except refused as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    body = JobStartedSerializer({"job": job}, context=view.get_serializer_context())
    return Response(body.data, status=status.HTTP_202_ACCEPTED)


class EnvironmentBackupActions(viewsets.GenericViewSet):  # type: ignore[type-arg]
    """*Backup now*, backup settings, restore and copy production, mixed into ``EnvironmentViewSet`` (``get_object``
    scopes POST to ``change``)."""

    @extend_schema(
        request=None,
        responses={202: BackupStartedSerializer, 400: DetailSerializer, 409: JobBusySerializer, 503: JobBusySerializer},
    )
    @action(detail=True, methods=["post"])
    def backup(self, request: Request, pk: str | None = None) -> Response:
        """Back up the environment now (database, filestore and manifest into its backup storage)."""
        environment = self.get_object()
        try:
            backup = start_backup(environment=environment, actor=request.user, trigger="api")
        except TargetBusy as exc:
            return busy_response(exc)
        except JobFailed as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        body = BackupStartedSerializer({"backup": backup, "job": backup.job}, context=self.get_serializer_context())
        return Response(body.data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=RestoreRequestSerializer,
        responses={202: JobStartedSerializer, 400: DetailSerializer, 409: JobBusySerializer, 503: JobBusySerializer},
    )
    @action(detail=True, methods=["post"])
    def restore(self, request: Request, pk: str | None = None) -> Response:
        """Restore a good backup of this project into this environment: checked before it starts, a safety backup
        first, restored aside and checked, neutralized unless production, then swapped in (swapped back on
        failure). Over production, ``confirm`` must be the environment's name."""
        environment = self.get_object()
        body = RestoreRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        backup = (
            visible_backups(request.user)
            .filter(pk=body.validated_data["backup"], environment__project_id=environment.project_id)
            .first()
        )
        if backup is None or not can(request.user, Action.VIEW_DETAILS, backup.environment):
            raise serializers.ValidationError({"backup": ["No such backup of this project."]})
        problem = confirmation_problem(environment, body.validated_data.get("confirm"))
        if problem:
            raise serializers.ValidationError({"confirm": [problem]})
        return _job_started(self, lambda: start_restore(backup=backup, target=environment, actor=request.user,
                                                            trigger="api"))  # fmt: skip

    @extend_schema(
        request=None,
        responses={202: JobStartedSerializer, 400: DetailSerializer, 409: JobBusySerializer, 503: JobBusySerializer},
    )
    @action(detail=True, methods=["post"], url_path="copy-production")
    def copy_production(self, request: Request, pk: str | None = None) -> Response:
        """*Copy production to staging*: restore the project's production's newest good backup into this
        environment (not production), neutralized."""
        environment = self.get_object()
        return _job_started(self, lambda: copy_production_to(environment, request.user))

    @extend_schema(methods=["GET"], request=None, responses={200: BackupSettingsSerializer, 404: DetailSerializer})
    @extend_schema(
        methods=["PATCH"],
        request=BackupSettingsSerializer,
        responses={200: BackupSettingsSerializer, 400: DetailSerializer},
    )
    @action(detail=True, methods=["get", "patch"], url_path="backup-settings")
    def backup_settings(self, request: Request, pk: str | None = None) -> Response:
        """The environment's backup storage and schedule (staff read them; owners and operators set them)."""
        environment = self.get_object()
        if not can(request.user, Action.VIEW_DETAILS, environment):
            raise Http404("Not found.")
        current = BackupSettings.objects.filter(environment=environment).first()
        context = self.get_serializer_context()
        if request.method == "GET":
            if current is None:
                raise Http404("This environment has no backup settings yet.")
            return Response(BackupSettingsSerializer(current, context=context).data)
        # The first time a storage is required; after that any field may be changed alone.
        body = BackupSettingsSerializer(current, data=request.data, context=context, partial=current is not None)
        body.is_valid(raise_exception=True)
        config = current or BackupSettings(environment=environment)
        for name, value in body.validated_data.items():
            setattr(config, name, value)
        try:
            config.full_clean()
        except DjangoValidationError as exc:
            raise api_validation_error(exc) from exc
        config.save()
        record(
            action="environment.backup_settings",
            actor=request.user,
            obj=environment,
            detail={
                "storage": config.storage_id,
                "schedule": config.schedule,
                "time_zone": config.time_zone,
                "test_restore_schedule": config.test_restore_schedule,
                "test_restore_server": config.test_restore_server_id,
            },
        )
        return Response(BackupSettingsSerializer(config, context=context).data)


@extend_schema_view(
    list=extend_schema(
        parameters=[OpenApiParameter("environment", OpenApiTypes.INT, description="Only this environment's.")]
    )
)
class BackupViewSet(BackupZipActions, viewsets.ReadOnlyModelViewSet):  # type: ignore[type-arg]
    """Backups of the caller's environments, newest first; customers see production ones, dates and state only."""

    serializer_class = BackupSerializer

    def get_queryset(self) -> models.QuerySet[Backup]:
        if getattr(self, "swagger_fake_view", False):
            return Backup.objects.none()
        queryset = visible_backups(self.request.user)
        if self.action == "list":
            query = BackupFilterSerializer(data=self.request.query_params)
            query.is_valid(raise_exception=True)
            if "environment" in query.validated_data:
                queryset = queryset.filter(environment_id=query.validated_data["environment"])
        return queryset

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # A backup whose job died is shown as what it is (interrupted), never as still running.
        settle_backups()
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=NewEnvironmentSerializer,
        responses={202: JobStartedSerializer, 400: DetailSerializer, 503: JobBusySerializer},
    )
    @action(detail=True, methods=["post"], url_path="restore-into-new")
    def restore_into_new(self, request: Request, pk: str | None = None) -> Response:
        """Create an environment of the backup's project and start one restore job that deploys it (its git ref),
        then restores this good backup into it (neutralized unless production). Owners and operators of the
        project; 400 for invalid fields (the name taken, a server it may not use) or a backup that cannot restore."""
        backup = self.get_object()
        if not can(request.user, Action.CHANGE, backup.environment):
            raise Http404
        body = NewEnvironmentSerializer(data=request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        fields = dict(body.validated_data)
        source = backup.environment
        fields.setdefault("compose_files", list(source.compose_files))
        fields.setdefault("git_ref", source.git_ref)
        try:
            return _job_started(
                self, lambda: restore_into_new_environment(backup=backup, actor=request.user, trigger="api", **fields)
            )
        except DjangoValidationError as exc:
            raise api_validation_error(exc) from exc

    @extend_schema(
        request=None,
        responses={202: JobStartedSerializer, 400: DetailSerializer, 409: JobBusySerializer, 503: JobBusySerializer},
    )
    @action(detail=True, methods=["post"])
    def verify(self, request: Request, pk: str | None = None) -> Response:
        """Read every object of a good backup back from its storage and check it (size, SHA-256, each filestore
        file's SHA-1, ``pg_restore --list`` of the dump); ``verified_at`` is set on success and cleared otherwise.
        Owners and operators; 400 for a backup that is not good, 409 while it is being verified."""
        backup = self.get_object()
        if not can(request.user, Action.CHANGE, backup.environment):
            raise Http404
        return _job_started(self, lambda: start_verify(backup, request.user, trigger="api"), refused=(JobFailed,))

    @extend_schema(
        request=TestRestoreRequestSerializer,
        responses={202: JobStartedSerializer, 400: DetailSerializer, 409: JobBusySerializer, 503: JobBusySerializer},
    )
    @action(detail=True, methods=["post"], url_path="test-restore")
    def test_restore(self, request: Request, pk: str | None = None) -> Response:
        """Test-restore a good backup: restored as a throwaway compose project on the environment's test restore
        server (or ``server``, one of its organization), Odoo started on it, ``/web/health`` and ``base``'s version
        checked, the result recorded on the backup, the copy removed. Owners and operators; 400 for a backup that is
        not good, 409 while a test restore of the environment runs."""
        backup = self.get_object()
        if not can(request.user, Action.CHANGE, backup.environment):
            raise Http404
        body = TestRestoreRequestSerializer(data=request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        server = body.validated_data.get("server")
        return _job_started(
            self, lambda: start_test_restore(backup, request.user, server=server, trigger="api"),
            refused=(TestRestoreRefused, JobFailed),
        )  # fmt: skip
