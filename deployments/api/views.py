"""API endpoints of deployments (thin: scope, validate, call ``deployments.services``, answer).

- ``POST /environments/{id}/deploy/`` (body ``{"ref": optional}``), ``POST /environments/{id}/promote/`` and
  ``POST /deployments/{id}/rollback/``: owners and operators; 202 with the deployment and its queued job, **409**
  ``{"detail", "job"}`` when another job holds the environment, 400 for a bad ref or a refused action.
- ``GET /deployments/?environment=<id>``, ``GET /deployments/{id}/``: everyone who may see the environment; customers
  in the reduced form of ``DeploymentSerializer``.
- ``GET /deployments/{id}/compare/?with=<id>``: staff (``view_details``).
- ``POST /projects/{id}/webhook-secret/``: owners and operators; rotates the git webhook secret and shows it once.
- ``POST /projects/{id}/read-answers/`` (body ``{"server": id}``): owners and operators; 202 with the job that reads
  the repository's ``.copier-answers.yml`` into the project, 409 while one runs, 400 for a server it may not use.

The environment and project actions are mixed into inventory's viewsets through ``panel.extensions``
(``deployments.extensions``).

Objects outside ``for_user(..., action)`` answer 404, like unknown ids (a viewer's POST included).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.response import Response

from deployments import services
from deployments.api.serializers import (
    CompareQuerySerializer,
    CompareSerializer,
    DeploymentFilterSerializer,
    DeploymentSerializer,
    DeploymentStartedSerializer,
    DeployRequestSerializer,
    ReadAnswersRequestSerializer,
    WebhookSecretSerializer,
)
from deployments.choices import Trigger
from deployments.models import Deployment
from deployments.webhooks import rotate_webhook_secret, webhook_url
from panel.accounts.api.serializers import DetailSerializer
from panel.accounts.choices import Action
from panel.accounts.scoping import for_user, get_for_user
from panel.inventory.models import Server
from panel.jobs.api.serializers import JobBusySerializer, JobStartedSerializer
from panel.jobs.api.views import busy_response
from panel.jobs.runner import JobFailed
from panel.jobs.services import TargetBusy

# 503: the broker could not take the job (it was ended at once, holding nothing); same body as a 409.
STARTED_RESPONSES = {
    202: DeploymentStartedSerializer,
    400: DetailSerializer,
    409: JobBusySerializer,
    503: JobBusySerializer,
}


def started_response(deployment: Deployment, context: dict[str, Any]) -> Response:
    """202 with the deployment and its queued job."""
    body = DeploymentStartedSerializer({"deployment": deployment, "job": deployment.job}, context=context)
    return Response(body.data, status=status.HTTP_202_ACCEPTED)


def run_action(start: Any, context: dict[str, Any], **kwargs: Any) -> Response:
    """Call a ``start_*`` service and map its refusals: busy → 409, refused → 400, bad ref → 400 on ``ref``."""
    try:
        deployment = start(**kwargs)
    except TargetBusy as exc:
        return busy_response(exc)
    except JobFailed as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    except DjangoValidationError as exc:
        raise serializers.ValidationError({"ref": exc.messages}) from exc
    return started_response(deployment, context)


class EnvironmentDeployActions(viewsets.GenericViewSet):  # type: ignore[type-arg]
    """Deploy, check and promote, mixed into ``EnvironmentViewSet`` (``get_object`` scopes POST to ``change``)."""

    @extend_schema(request=DeployRequestSerializer, responses=STARTED_RESPONSES)
    @action(detail=True, methods=["post"])
    def deploy(self, request: Request, pk: str | None = None) -> Response:
        """Deploy ``ref`` (default: the environment's git ref) through the pipeline; one job per environment."""
        environment = self.get_object()
        body = DeployRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return run_action(
            services.start_deploy,
            self.get_serializer_context(),
            environment=environment,
            actor=request.user,
            ref=body.validated_data.get("ref", ""),
            trigger=Trigger.API,
        )

    @extend_schema(request=None, responses={202: JobStartedSerializer, 409: JobBusySerializer, 503: JobBusySerializer})
    @action(detail=True, methods=["post"])
    def check(self, request: Request, pk: str | None = None) -> Response:
        """Check what runs: containers, their images and Odoo's health. When it is a known deployment that answers,
        the environment's state is ``running`` again (this is how a *needs attention* state is cleared without a
        deploy); otherwise the job fails and says what it found."""
        environment = self.get_object()
        try:
            job = services.start_check(environment=environment, actor=request.user, trigger=Trigger.API)
        except TargetBusy as exc:
            return busy_response(exc)
        body = JobStartedSerializer({"job": job}, context=self.get_serializer_context())
        return Response(body.data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses=STARTED_RESPONSES)
    @action(detail=True, methods=["post"])
    def promote(self, request: Request, pk: str | None = None) -> Response:
        """Deploy here the commit the project's staging environment runs now (400 when there is none)."""
        environment = self.get_object()
        return run_action(
            services.start_promote, self.get_serializer_context(), environment=environment, actor=request.user
        )


class ProjectWebhookActions(viewsets.GenericViewSet):  # type: ignore[type-arg]
    """The webhook secret rotation, mixed into ``ProjectViewSet`` (``get_object`` scopes POST to ``change``)."""

    @extend_schema(request=None, responses={200: WebhookSecretSerializer})
    @action(detail=True, methods=["post"], url_path="webhook-secret")
    def webhook_secret(self, request: Request, pk: str | None = None) -> Response:
        """Rotate the git webhook secret and show the new one, once (the old one stops working at once)."""
        project = self.get_object()
        secret = rotate_webhook_secret(project=project, actor=request.user)
        body = {"webhook_url": webhook_url(project, request), "webhook_secret": secret}
        return Response(body, headers={"Cache-Control": "no-store"})


class ProjectAnswersActions(viewsets.GenericViewSet):  # type: ignore[type-arg]
    """Reading the repository's ``.copier-answers.yml``, mixed into ``ProjectViewSet``."""

    @extend_schema(
        request=ReadAnswersRequestSerializer,
        responses={202: JobStartedSerializer, 400: DetailSerializer, 409: JobBusySerializer, 503: JobBusySerializer},
    )
    @action(detail=True, methods=["post"], url_path="read-answers")
    def read_answers(self, request: Request, pk: str | None = None) -> Response:
        """Fetch the default branch on a server and fill the project from its ``.copier-answers.yml``: the Odoo
        version (while nothing is deployed), the PostgreSQL version, the name (while it is the slug) and the domains
        new environments start from (``copier_answers``)."""
        project = self.get_object()
        body = ReadAnswersRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        server = for_user(Server, request.user, Action.CHANGE).filter(pk=body.validated_data["server"]).first()
        if server is None:
            raise serializers.ValidationError({"server": ["No such server."]})
        try:
            job = services.start_read_answers(project=project, server=server, actor=request.user)
        except TargetBusy as exc:
            return busy_response(exc)
        except JobFailed as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        started = JobStartedSerializer({"job": job}, context=self.get_serializer_context())
        return Response(started.data, status=status.HTTP_202_ACCEPTED)


@extend_schema_view(
    list=extend_schema(
        parameters=[OpenApiParameter("environment", OpenApiTypes.INT, description="Only this environment's.")]
    )
)
class DeploymentViewSet(viewsets.ReadOnlyModelViewSet):  # type: ignore[type-arg]
    """Deployments of the caller's environments, newest first; customers see the reduced form."""

    serializer_class = DeploymentSerializer

    def get_queryset(self) -> models.QuerySet[Deployment]:
        if getattr(self, "swagger_fake_view", False):
            return Deployment.objects.none()
        scope = Action.VIEW if self.request.method in SAFE_METHODS else Action.CHANGE
        queryset = for_user(
            Deployment.objects.select_related("environment__project", "job", "triggered_by"), self.request.user, scope
        )
        if self.action == "list":
            query = DeploymentFilterSerializer(data=self.request.query_params)
            query.is_valid(raise_exception=True)
            if "environment" in query.validated_data:
                queryset = queryset.filter(environment_id=query.validated_data["environment"])
        return queryset

    @extend_schema(request=None, responses=STARTED_RESPONSES)
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: str | None = None) -> Response:
        """Put this (successful) deployment back in place: its commit, images and configuration."""
        deployment = self.get_object()
        return run_action(
            services.start_rollback, self.get_serializer_context(), deployment=deployment, actor=request.user
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("with", OpenApiTypes.INT, required=True, description="The other deployment's id.")
        ],
        responses={200: CompareSerializer, 400: DetailSerializer},
    )
    @action(detail=True, methods=["get"])
    def compare(self, request: Request, pk: str | None = None) -> Response:
        """Commits and configuration changes between this deployment and ``with`` (staff only; either order)."""
        query = CompareQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        queryset = Deployment.objects.select_related("environment")
        first = get_for_user(queryset, request.user, Action.VIEW_DETAILS, pk=pk)
        other = get_for_user(queryset, request.user, Action.VIEW_DETAILS, pk=query.validated_data["with"])
        if other.environment_id != first.environment_id:
            return Response(
                {"detail": "Compare two deployments of the same environment."}, status=status.HTTP_400_BAD_REQUEST
            )
        older, newer = sorted((first, other), key=lambda item: (item.created_at, item.pk))
        return Response(services.compare(older, newer))
