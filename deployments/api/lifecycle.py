"""API actions of an environment's lifecycle (``deployments.lifecycle``), mixed into ``EnvironmentViewSet``.

- ``POST /environments/{id}/stop/``, ``.../start/``, ``.../restart/``: body ``{"service": optional, "confirm":
  the environment's name (Stop and Restart of a production environment)}``;
- ``POST /environments/{id}/destroy/``: body ``{"confirm": the environment's name, "volumes": false,
  "backup": false}``.

Owners and operators: 202 with the queued job; 400 for a refused request (a missing confirmation, a malformed
service, a final backup without backup storage, a destroyed environment); 409 ``{"detail", "job"}`` while another
job holds the environment. Viewers, customers and other organizations get 404, like unknown ids.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from deployments import lifecycle
from deployments.pipeline import SERVICE_NAME_RE
from panel.accounts.api.serializers import DetailSerializer
from panel.jobs.api.serializers import JobBusySerializer, JobStartedSerializer
from panel.jobs.api.views import busy_response
from panel.jobs.runner import JobFailed
from panel.jobs.services import TargetBusy

RESPONSES = {202: JobStartedSerializer, 400: DetailSerializer, 409: JobBusySerializer, 503: JobBusySerializer}


class ServiceActionSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Body of stop, start and restart."""

    service = serializers.RegexField(
        SERVICE_NAME_RE.pattern,
        required=False,
        allow_blank=True,
        max_length=63,
        help_text="One compose service (odoo, db, ...); blank or absent: the whole environment.",
    )
    confirm = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=100,
        help_text="The environment's name, typed: needed to stop or restart a production environment.",
    )


class DestroySerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Body of destroy."""

    confirm = serializers.CharField(max_length=100, help_text="The environment's name, typed.")
    volumes = serializers.BooleanField(
        required=False, default=False, help_text="Remove the environment's volumes too (its database, filestore)."
    )
    backup = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Take a final backup into the environment's backup storage first; nothing is removed unless it "
        "is good.",
    )


class EnvironmentLifecycleActions(viewsets.GenericViewSet):  # type: ignore[type-arg]
    """Stop, start, restart and destroy (``get_object`` scopes POST to ``change``)."""

    def _lifecycle(self, request: Request, action_name: str, body: serializers.Serializer) -> Response:  # type: ignore[type-arg]
        environment = self.get_object()
        body.is_valid(raise_exception=True)
        values: dict[str, Any] = dict(body.validated_data)
        try:
            job = lifecycle.start_lifecycle(
                environment=environment, actor=request.user, action=action_name, trigger="api", **values
            )
        except TargetBusy as exc:
            return busy_response(exc)
        except JobFailed as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        started = JobStartedSerializer({"job": job}, context=self.get_serializer_context())
        return Response(started.data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=ServiceActionSerializer, responses=RESPONSES)
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str | None = None) -> Response:
        """Stop the environment (or one service): ``docker compose stop``; the job checks every container stopped
        and the environment is *stopped* (monitoring neither alerts nor counts it down)."""
        return self._lifecycle(request, "stop", ServiceActionSerializer(data=request.data))

    @extend_schema(request=ServiceActionSerializer, responses=RESPONSES)
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        """Start the environment (or one service) and wait until Odoo answers ``/web/health``."""
        return self._lifecycle(request, "start", ServiceActionSerializer(data=request.data))

    @extend_schema(request=ServiceActionSerializer, responses=RESPONSES)
    @action(detail=True, methods=["post"])
    def restart(self, request: Request, pk: str | None = None) -> Response:
        """Restart the environment (or only one service) and wait until Odoo answers ``/web/health``."""
        return self._lifecycle(request, "restart", ServiceActionSerializer(data=request.data))

    @extend_schema(request=DestroySerializer, responses=RESPONSES)
    @action(detail=True, methods=["post"], url_path="destroy", url_name="destroy-environment")
    def destroy_environment(self, request: Request, pk: str | None = None) -> Response:
        """Destroy the environment: an optional final backup, ``docker compose down`` (its volumes only when
        asked), then its images and checkout are removed from the server. It can then be removed from the panel
        (``DELETE ?choice=destroyed``) or deployed afresh."""
        return self._lifecycle(request, "destroy", DestroySerializer(data=request.data))
