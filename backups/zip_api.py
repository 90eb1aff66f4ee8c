"""API of Odoo dump zips (``backups.zipimport``), mixed into the environment and backup API and registered through
``panel.extensions``:

- ``POST /api/v1/environments/{id}/import-zip/?confirm=<name>``: the request body *is* the zip (``Content-Type:
  application/zip`` or ``application/octet-stream``), streamed into the environment's backup storage as it arrives.
  Owners and operators; ``confirm`` (the environment's name) over production, checked before the body is read.
  202 with the imported backup and the queued restore job; 400 for a zip refused by the guards (nothing is kept,
  nothing restored), another Odoo major version, no backup storage, a missing confirmation; 409 while a job holds
  the environment; 415 for another media type; 404 for viewers, customers and strangers.
- ``GET /api/v1/backups/{id}/download/``: a good backup as an Odoo zip, streamed. Staff who may see the
  environment; customers only production backups and only when their organization's policy allows it; 404 for
  everyone else (like an unknown id), 400 for a backup that cannot be handed out (not good, no pg_restore).
- ``GET`` / ``PATCH /api/v1/backup-policies/{organization id}/`` ``{"customers_may_download"}``: everyone of the
  organization reads it, owners change it (audited).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import models
from django.http import Http404, HttpRequest, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import BaseParser
from rest_framework.request import Request
from rest_framework.response import Response

from backups.models import BackupPolicy
from backups.storage import StorageError
from backups.zipimport import (
    ZipImportRefused,
    download_chunks,
    download_name,
    download_refusal,
    import_stream,
    may_download,
    record_download,
)
from panel.accounts.api.serializers import DetailSerializer
from panel.accounts.choices import Action
from panel.accounts.models import Organization
from panel.accounts.scoping import can, for_user
from panel.accounts.services import record
from panel.jobs.api.serializers import JobBusySerializer, JobSerializer
from panel.jobs.api.views import busy_response
from panel.jobs.services import TargetBusy

ZIP_MEDIA_TYPES = ("application/zip", "application/octet-stream", "application/x-zip-compressed")
BODY_CHUNK = 1024 * 1024


class ZipBodyParser(BaseParser):
    """Declares the zip media types (the view reads the raw body as a stream; nothing is parsed)."""

    media_type = "application/zip"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return None


class ZipImportedSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """202: the imported backup (id) and the queued restore job."""

    backup = serializers.IntegerField(help_text="The backup of kind imported that holds the uploaded zip.")
    job = JobSerializer(read_only=True)


def body_chunks(request: HttpRequest) -> Iterator[bytes]:
    """The request body, chunk by chunk (streamed: see ``panel.streamed_body`` for uvicorn)."""
    while chunk := request.read(BODY_CHUNK):
        yield chunk


def streamed(request: HttpRequest, chunks: Iterator[bytes]) -> StreamingHttpResponse:
    """A streamed response of ``chunks``: under ASGI an async iterator (Django would otherwise collect a sync
    iterator into a list, holding the whole download in memory), under WSGI the iterator itself."""
    if isinstance(request, ASGIRequest):
        return StreamingHttpResponse(_async_chunks(chunks), content_type="application/zip")
    return StreamingHttpResponse(chunks, content_type="application/zip")


def _next(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    # Each chunk is produced in a worker thread (storage reads, pg_restore), never on the event loop.
    step = sync_to_async(_next, thread_sensitive=False)
    try:
        while (chunk := await step(chunks)) is not None:
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await sync_to_async(close, thread_sensitive=False)()


class EnvironmentZipActions(viewsets.GenericViewSet):  # type: ignore[type-arg]
    """``POST /environments/{id}/import-zip/``, mixed into ``EnvironmentViewSet``."""

    @extend_schema(
        request={"application/zip": OpenApiTypes.BINARY},
        parameters=[
            OpenApiParameter("confirm", OpenApiTypes.STR, description="The environment's name (production only)."),
            OpenApiParameter("filename", OpenApiTypes.STR, description="The zip's file name, for the record."),
        ],
        responses={
            202: ZipImportedSerializer,
            400: DetailSerializer,
            409: JobBusySerializer,
            415: DetailSerializer,
            503: DetailSerializer,
        },
    )
    @action(detail=True, methods=["post"], url_path="import-zip", parser_classes=[ZipBodyParser])
    def import_zip(self, request: Request, pk: str | None = None) -> Response:
        """Import an Odoo dump zip (the database manager's ``dump.sql``, ``filestore/``, ``manifest.json``) sent as
        the request body, then restore it into this environment like any backup (checked, safety backup, restored
        aside, neutralized unless production, swapped in). Over production, ``confirm`` must be its name."""
        environment = self.get_object()
        media_type = (request.content_type or "").split(";")[0].strip().lower()
        if media_type not in ZIP_MEDIA_TYPES:
            return Response(
                {"detail": "Send the zip itself as the request body, with Content-Type: application/zip."},
                status=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            )
        try:
            upload = import_stream(
                environment=environment,
                actor=request.user,
                chunks=body_chunks(request._request),
                confirm=request.query_params.get("confirm"),
                filename=request.query_params.get("filename", "")[:200],
            )
        except TargetBusy as exc:
            return busy_response(exc)
        except ZipImportRefused as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        except StorageError as exc:  # nothing of the upload is kept
            return Response({"detail": f"The backup storage failed: {exc}"}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        except OSError as exc:  # the client went away or the body could not be read
            return Response({"detail": f"The upload was interrupted: {exc}"}, status=status.HTTP_400_BAD_REQUEST)
        assert upload.backup is not None
        body = ZipImportedSerializer(
            {"backup": upload.backup.pk, "job": upload.job}, context=self.get_serializer_context()
        )
        return Response(body.data, status=status.HTTP_202_ACCEPTED)


class BackupZipActions(viewsets.GenericViewSet):  # type: ignore[type-arg]
    """``GET /backups/{id}/download/``, mixed into ``BackupViewSet`` (whose queryset scopes what may be seen)."""

    @extend_schema(
        request=None,
        responses={
            (200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="The Odoo dump zip."),
            400: DetailSerializer,
            404: DetailSerializer,
        },
    )
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str | None = None) -> Any:
        """A good backup as an Odoo dump zip (``dump.sql`` in plain SQL, ``filestore/``, ``manifest.json``),
        streamed. Staff who may see the environment; customers only production backups, when their organization
        allows it."""
        backup = self.get_object()
        if not may_download(request.user, backup):
            raise Http404
        problem = download_refusal(backup)
        if problem:
            return Response({"detail": problem}, status=status.HTTP_400_BAD_REQUEST)
        record_download(backup, request.user)
        response = streamed(request._request, download_chunks(backup))
        response["Content-Disposition"] = f'attachment; filename="{download_name(backup)}"'
        response["Cache-Control"] = "no-store"
        return response


class BackupPolicySerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """What an organization allows around its backups."""

    organization = serializers.IntegerField(source="organization_id", read_only=True)

    class Meta:
        model = BackupPolicy
        fields = ["organization", "customers_may_download"]


class BackupPolicyViewSet(mixins.RetrieveModelMixin, viewsets.GenericViewSet):  # type: ignore[type-arg]
    """An organization's backup policy, by the organization's id: members read it, owners change it."""

    serializer_class = BackupPolicySerializer
    lookup_value_regex = r"[0-9]{1,18}"
    http_method_names = ["get", "patch", "head", "options"]

    def get_queryset(self) -> models.QuerySet[Organization]:
        if getattr(self, "swagger_fake_view", False):
            return Organization.objects.none()
        return for_user(Organization.objects.all(), self.request.user, Action.VIEW)

    def get_object(self) -> BackupPolicy:  # type: ignore[override]
        organization = self.get_queryset().filter(pk=int(self.kwargs["pk"])).first()
        if organization is None:
            raise Http404
        return BackupPolicy.objects.filter(organization=organization).first() or BackupPolicy(organization=organization)

    @extend_schema(request=BackupPolicySerializer, responses={200: BackupPolicySerializer, 400: DetailSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        """Change the policy (owners of the organization, or of the provider managing it)."""
        policy = self.get_object()
        if not can(request.user, Action.ADMIN, policy.organization):
            raise Http404
        body = BackupPolicySerializer(policy, data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        policy = body.save(organization=policy.organization)
        record(
            action="organization.backup_policy",
            actor=request.user,
            obj=policy.organization,
            detail={"customers_may_download": policy.customers_may_download},
        )
        return Response(BackupPolicySerializer(policy).data)
