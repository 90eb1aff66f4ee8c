"""API endpoints of jobs: list and read (everyone who may see the job), log lines (staff), cancel (owner/operator)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.response import Response

from panel.accounts.api.serializers import DetailSerializer
from panel.accounts.api.views import Conflict
from panel.accounts.choices import Action
from panel.accounts.scoping import for_user, get_for_user
from panel.accounts.services import record
from panel.jobs.api.serializers import JobFilterSerializer, JobLinesQuerySerializer, JobLinesSerializer, JobSerializer
from panel.jobs.models import Job
from panel.jobs.services import TargetBusy, request_cancel, serialize_line


def busy_response(exc: TargetBusy) -> Response:
    """409 naming the job that holds the target (the API twin of ``panel.jobs.views.busy_message``)."""
    return Response({"detail": str(exc), "job": exc.job.pk if exc.job else None}, status=status.HTTP_409_CONFLICT)


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("server", OpenApiTypes.INT, description="Only jobs of this server."),
            OpenApiParameter("environment", OpenApiTypes.INT, description="Only jobs of this environment."),
            OpenApiParameter("status", OpenApiTypes.STR, description="queued, running, succeeded, failed, ..."),
        ]
    )
)
class JobViewSet(viewsets.ReadOnlyModelViewSet):  # type: ignore[type-arg]
    """Jobs of the caller's organizations (newest first). Customers see kind, status and timestamps only."""

    serializer_class = JobSerializer

    def get_queryset(self) -> models.QuerySet[Job]:
        if getattr(self, "swagger_fake_view", False):
            return Job.objects.none()
        scope = Action.VIEW if self.request.method in SAFE_METHODS else Action.CHANGE
        queryset = for_user(Job.objects.select_related("created_by"), self.request.user, scope)
        if self.action == "list":
            query = JobFilterSerializer(data=self.request.query_params)
            query.is_valid(raise_exception=True)
            queryset = queryset.filter(**query.filters())
        return queryset

    @extend_schema(
        parameters=[
            OpenApiParameter("after", OpenApiTypes.INT, description="Return lines with a greater seq (default 0)."),
            OpenApiParameter("limit", OpenApiTypes.INT, description="At most this many lines (capped)."),
        ],
        responses={200: JobLinesSerializer},
    )
    @action(detail=True, methods=["get"])
    def lines(self, request: Request, pk: str | None = None) -> Response:
        """Log lines after ``after``; needs details access (customers get 404, like for an unknown job)."""
        job = get_for_user(Job, request.user, Action.VIEW_DETAILS, pk=pk)
        query = JobLinesQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        after: int = query.validated_data["after"]
        limit = min(query.validated_data.get("limit", settings.JOB_LOG_PAGE_SIZE), settings.JOB_LOG_PAGE_SIZE)
        # The job is read before its lines, and lines are capped at its last_seq: when the status read here is
        # terminal, every line up to last_seq is stored, so a client that stops on "not more and terminal" has all.
        rows = list(job.log_lines.filter(seq__gt=after, seq__lte=job.last_seq).order_by("seq")[:limit])
        last_seq = rows[-1].seq if rows else after
        payload: dict[str, Any] = {
            "lines": [serialize_line(row) for row in rows],
            "last_seq": last_seq,
            "status": job.status,
            "more": last_seq < job.last_seq,
        }
        return Response(payload)

    @extend_schema(request=None, responses={202: JobSerializer, 409: DetailSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Ask the job to stop: a queued job ends at once, a running one at its next step."""
        job = self.get_object()
        if job.is_terminal:
            raise Conflict(f"Job #{job.pk} has already ended ({job.status}).")
        request_cancel(job)
        record(action="job.cancel_requested", actor=request.user, obj=job, request=request)
        job.refresh_from_db()
        return Response(self.get_serializer(job).data, status=status.HTTP_202_ACCEPTED)
