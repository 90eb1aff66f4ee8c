"""API endpoints of servers, projects and environments (thin: scope, validate, call a service, answer).

Who may call them is described in ``panel.accounts.api.views``: staff of an organization (owner, operator) change,
viewers read, customers read projects and environments in a reduced form and never see servers; everything else
answers 404. Feature apps add actions to these viewsets (``/environments/{id}/deploy/``) through
``panel.extensions``; ``panel/api_urls.py`` registers the composed classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import models
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from panel.accounts.api.serializers import DetailSerializer
from panel.accounts.api.views import Conflict, ScopedModelViewSet
from panel.inventory import proxy, services
from panel.inventory.api.serializers import (
    ConfirmHostKeySerializer,
    EnvironmentDeletedSerializer,
    EnvironmentDeleteQuerySerializer,
    EnvironmentSerializer,
    ProjectSerializer,
    ServerSerializer,
)
from panel.inventory.models import Environment, Project, Server
from panel.jobs.api.serializers import JobBusySerializer, JobStartedSerializer
from panel.jobs.api.views import busy_response
from panel.jobs.choices import ACTIVE_STATES, CHANGING_JOB_KINDS
from panel.jobs.models import Job
from panel.jobs.runner import JobFailed
from panel.jobs.services import TargetBusy
from panel.remote import RemoteError


class PrepareServerSerializer(serializers.Serializer):
    """Body of ``POST /servers/{id}/prepare/``."""

    install = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Install what is missing (docker.io, the compose v2 plugin, git) with apt-get when the SSH user is "
        "root or has passwordless sudo. Without it the job only says what is missing and exactly what to run.",
    )


class RemoteUnavailable(exceptions.APIException):
    """400: the host could not be reached to read its key; the message says why in words a person can act on."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "remote_error"


@extend_schema_view(
    create=extend_schema(
        description="Register a server: its host key is read (not yet trusted) and a key pair kept or generated.",
        responses={201: ServerSerializer, 400: DetailSerializer},
    ),
    destroy=extend_schema(responses={204: None, 409: DetailSerializer}),
)
class ServerViewSet(ScopedModelViewSet):
    """Docker hosts. Owners and operators change them, viewers read them, customers never see them."""

    model = Server
    audit_name = "server"
    serializer_class = ServerSerializer

    def base_queryset(self) -> models.QuerySet[Server]:
        return Server.objects.select_related("organization")

    def active_jobs(self, instance: Server) -> models.QuerySet[Job]:
        return Job.objects.filter(models.Q(server=instance) | models.Q(environment__server=instance))

    def perform_create(self, serializer: Any) -> None:
        try:
            serializer.save()
        except RemoteError as exc:
            raise RemoteUnavailable(str(exc)) from exc

    @extend_schema(
        request=ConfirmHostKeySerializer,
        responses={200: ServerSerializer, 400: OpenApiResponse(description="The fingerprint does not match.")},
    )
    @action(detail=True, methods=["post"], url_path="confirm-host-key")
    def confirm_host_key(self, request: Request, pk: str | None = None) -> Response:
        """Pin the host key after a person compared its fingerprint out of band."""
        server = self.get_object()
        body = ConfirmHostKeySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            services.confirm_host_key(server=server, actor=request.user, fingerprint=body.validated_data["fingerprint"])
        except JobFailed as exc:
            raise serializers.ValidationError({"fingerprint": [str(exc)]}) from exc
        return Response(self.get_serializer(server).data)

    @extend_schema(
        request=None,
        responses={202: JobStartedSerializer, 409: JobBusySerializer, 503: JobBusySerializer},
    )
    @action(detail=True, methods=["post"])
    def validate(self, request: Request, pk: str | None = None) -> Response:
        """Queue a validation job (one at a time per server; 409 names the job already queued or running)."""
        return self._queue_job(
            "validating it", lambda server: services.start_validation(server=server, actor=request.user)
        )

    @extend_schema(
        request=None,
        responses={202: JobStartedSerializer, 409: JobBusySerializer, 503: JobBusySerializer},
    )
    @action(detail=True, methods=["post"])
    def proxy(self, request: Request, pk: str | None = None) -> Response:
        """Queue a job installing or updating the server's Traefik (the inverse proxy serving the environments'
        domains over HTTPS; one server job at a time: 409 names the job already queued or running)."""
        return self._queue_job(
            "installing its proxy", lambda server: proxy.start_proxy_install(server=server, actor=request.user)
        )

    @extend_schema(
        request=PrepareServerSerializer,
        responses={202: JobStartedSerializer, 400: DetailSerializer, 409: JobBusySerializer, 503: JobBusySerializer},
    )
    @action(detail=True, methods=["post"])
    def prepare(self, request: Request, pk: str | None = None) -> Response:
        """Queue a *Prepare server* job: check Docker, the compose v2 plugin and git (optionally install them), and
        create the external networks of the environments checked out there (409 names a job already queued or
        running on the server)."""

        def start(server: Server) -> Job:
            body = PrepareServerSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            return services.start_prepare(server=server, actor=request.user, install=body.validated_data["install"])

        return self._queue_job("preparing it", start)

    def _queue_job(self, doing: str, start: Callable[[Server], Job]) -> Response:
        """202 with the job ``start`` queued on this server; 409 for an unpinned host key or a busy server."""
        server = self.get_object()
        if not server.host_key_pinned:
            raise Conflict(f"Confirm the server's host key fingerprint before {doing}.")
        try:
            job = start(server)
        except TargetBusy as exc:
            return busy_response(exc)
        return Response(JobStartedSerializer({"job": job}, context=self.get_serializer_context()).data, status=202)


@extend_schema_view(destroy=extend_schema(responses={204: None, 409: DetailSerializer}))
class ProjectViewSet(ScopedModelViewSet):
    """Doodba projects. Customers read id, name, organization and Odoo version; staff read everything but keys."""

    model = Project
    audit_name = "project"
    serializer_class = ProjectSerializer

    def active_jobs(self, instance: Project) -> models.QuerySet[Job]:
        return Job.objects.filter(environment__project=instance)

    def perform_destroy(self, instance: Project) -> None:
        left = services.environments_not_destroyed(instance)
        if left:
            raise Conflict(
                f"Remove its environments first ({', '.join(left)}): DELETE /environments/{{id}}/ needs a choice "
                "of what happens on each server (destroyed or leave_running)."
            )
        super().perform_destroy(instance)


class EnvironmentViewSet(ScopedModelViewSet):
    """Environments of projects. Customers read id, name, kind, domain, project and state; staff all but secret
    values."""

    # Feature apps add their actions (deploy, check, promote, ...) through panel.extensions; panel/api_urls.py
    # registers the composed class.

    model = Environment
    audit_name = "environment"
    serializer_class = EnvironmentSerializer

    def base_queryset(self) -> models.QuerySet[Environment]:
        active = Job.objects.filter(kind__in=CHANGING_JOB_KINDS, status__in=ACTIVE_STATES).order_by("created_at")
        return Environment.objects.select_related("project", "current_deployment", "changing_job").prefetch_related(
            models.Prefetch("jobs", queryset=active, to_attr="active_deploy_jobs")
        )

    def active_jobs(self, instance: Environment) -> models.QuerySet[Job]:
        return Job.objects.filter(environment=instance)

    @extend_schema(
        parameters=[EnvironmentDeleteQuerySerializer],
        responses={200: EnvironmentDeletedSerializer, 400: DetailSerializer, 409: DetailSerializer},
    )
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Remove the environment from the panel. ``?choice=`` is required: ``destroyed`` (its Destroy job
        succeeded) or ``leave_running`` (what is left on the server is listed in the audit entry). Without a
        choice, or ``destroyed`` for an environment that was not destroyed: 400, and nothing is removed. 409 while
        a job is queued or running on it."""
        environment = self.get_object()
        query = EnvironmentDeleteQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        busy = self.active_jobs(environment).filter(status__in=ACTIVE_STATES).first()
        if busy is not None:
            raise Conflict(f"Job #{busy.pk} is queued or running on it; wait for it to end or cancel it.")
        try:
            detail = services.remove_environment(
                environment=environment, actor=request.user, choice=query.validated_data["choice"], request=request
            )
        except services.RemovalRefused as exc:
            raise serializers.ValidationError({"choice": [str(exc)]}) from exc
        return Response(EnvironmentDeletedSerializer(detail).data)
