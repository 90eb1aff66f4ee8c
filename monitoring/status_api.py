"""API of status pages, by organization id: the same data as the HTML page.

- ``GET /api/v1/status-pages/``: one row per organization the user may see (its id and name, the page's title,
  what it includes, whether a public link exists), paginated.
- ``GET /api/v1/status-pages/{organization id}/``: the page (state, environments with uptime, 90 daily bars, last
  deployment and last good backup, incidents with their timelines) and its settings; members of the organization
  and staff of its provider.
- ``PATCH /api/v1/status-pages/{organization id}/`` ``{"title", "include", "environments"}``: owners and operators.
- ``POST /api/v1/status-pages/{organization id}/public-link/``: a new public link, ``{"token", "url"}`` shown once
  (any older link stops working); ``DELETE`` on the same route revokes it (204). Owners and operators.

Organizations outside the user's reach (or, for changes, outside their owner/operator roles) answer 404.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.http import Http404
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from monitoring import statuspage
from monitoring.models import StatusPage
from panel.accounts.api.serializers import DetailSerializer
from panel.accounts.choices import Action
from panel.accounts.models import Organization
from panel.accounts.scoping import can, for_user
from panel.inventory.models import Environment


class StatusOrganizationSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    name = serializers.CharField()


class StatusBarSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """One UTC day: uptime 0..1 (null without measurements) and the minutes it was down."""

    day = serializers.DateField()
    uptime = serializers.FloatField(allow_null=True)
    down_minutes = serializers.IntegerField()


class StatusEnvironmentSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    name = serializers.CharField()
    project = serializers.CharField()
    kind = serializers.CharField()
    state = serializers.CharField(help_text="up, degraded, down, unknown or maintenance.")
    state_label = serializers.CharField()
    since = serializers.DateTimeField(allow_null=True)
    uptime = serializers.DictField(child=serializers.FloatField(allow_null=True), help_text="By window: 24h, 7d, …")
    bars = StatusBarSerializer(many=True)
    last_deployed_at = serializers.DateTimeField(allow_null=True)
    last_backup_at = serializers.DateTimeField(allow_null=True)


class StatusIncidentUpdateSerializer(serializers.Serializer):  # type: ignore[type-arg]
    at = serializers.DateTimeField()
    kind = serializers.CharField()
    text = serializers.CharField()


class StatusIncidentSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    environment = serializers.IntegerField()
    title = serializers.CharField()
    check = serializers.CharField()
    open = serializers.BooleanField()
    opened_at = serializers.DateTimeField()
    closed_at = serializers.DateTimeField(allow_null=True)
    updates = StatusIncidentUpdateSerializer(many=True)


class StatusPageSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A status page: what it shows and how it is set up."""

    organization = StatusOrganizationSerializer()
    title = serializers.CharField()
    state = serializers.CharField()
    state_label = serializers.CharField()
    generated_at = serializers.DateTimeField()
    windows = serializers.ListField(child=serializers.CharField())
    environments = StatusEnvironmentSerializer(many=True)
    incidents = StatusIncidentSerializer(many=True)
    include = serializers.CharField()
    selected_environments = serializers.ListField(child=serializers.IntegerField())
    public = serializers.BooleanField(help_text="Whether a public link works.")
    public_since = serializers.DateTimeField(allow_null=True)


class StatusPageListSerializer(serializers.Serializer):  # type: ignore[type-arg]
    organization = StatusOrganizationSerializer()
    title = serializers.CharField()
    include = serializers.CharField()
    public = serializers.BooleanField()


class StatusPageChangeSerializer(serializers.Serializer):  # type: ignore[type-arg]
    title = serializers.CharField(max_length=200, allow_blank=True, required=False)
    include = serializers.ChoiceField(choices=StatusPage.Include.choices, required=False)
    environments = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**62), max_length=10000, required=False
    )


class PublicLinkSerializer(serializers.Serializer):  # type: ignore[type-arg]
    token = serializers.CharField(help_text="Shown once; only its hash is stored.")
    url = serializers.CharField()


def _page_representation(page: StatusPage) -> dict[str, Any]:
    data = statuspage.status_data(page)
    return {
        **data,
        "include": page.include,
        "selected_environments": sorted(page.environments.values_list("pk", flat=True)),
        "public": bool(page.public_token_hash),
        "public_since": page.public_since,
    }


class StatusPageViewSet(viewsets.GenericViewSet):  # type: ignore[type-arg]
    """Status pages by organization id (see the module docstring)."""

    serializer_class = StatusPageSerializer
    lookup_value_regex = r"[0-9]{1,18}"

    def get_queryset(self) -> models.QuerySet[Organization]:
        if getattr(self, "swagger_fake_view", False):
            return Organization.objects.none()
        return for_user(Organization.objects.all(), self.request.user, Action.VIEW).order_by("name", "pk")

    def _organization(self, action_name: str = Action.VIEW) -> Organization:
        organization = self.get_queryset().filter(pk=int(self.kwargs["pk"])).first()
        if organization is None or (
            action_name != Action.VIEW and not can(self.request.user, action_name, organization)
        ):
            raise Http404
        return organization

    @extend_schema(responses={200: StatusPageListSerializer(many=True)})
    def list(self, request: Request) -> Response:
        """The status pages the user may see."""
        organizations = self.paginate_queryset(self.get_queryset().select_related("status_page"))
        assert organizations is not None
        rows = []
        for organization in organizations:
            page = getattr(organization, "status_page", None)
            rows.append(
                {
                    "organization": {"id": organization.pk, "name": organization.name},
                    "title": (page.title if page else "") or f"{organization.name} status",
                    "include": page.include if page else StatusPage.Include.PRODUCTION,
                    "public": bool(page and page.public_token_hash),
                }
            )
        return self.get_paginated_response(StatusPageListSerializer(rows, many=True).data)

    @extend_schema(responses={200: StatusPageSerializer})
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        """One organization's status page."""
        page = statuspage.page_for(self._organization())
        return Response(StatusPageSerializer(_page_representation(page)).data)

    @extend_schema(request=StatusPageChangeSerializer, responses={200: StatusPageSerializer, 400: DetailSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        """Change the title and which environments the page shows (owners and operators)."""
        organization = self._organization(Action.CHANGE)
        page = statuspage.page_for(organization)
        body = StatusPageChangeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        wanted = body.validated_data.get("environments")
        if wanted is None:
            chosen = list(page.environments.select_related("project"))
        else:
            chosen = list(
                Environment.objects.filter(project__organization=organization, pk__in=wanted).select_related("project")
            )
            if len(chosen) != len(set(wanted)):
                raise serializers.ValidationError({"environments": ["Unknown environment of this organization."]})
        statuspage.configure(
            page=page,
            actor=request.user,
            title=body.validated_data.get("title", page.title),
            include=body.validated_data.get("include", page.include),
            environments=chosen,
        )
        return Response(StatusPageSerializer(_page_representation(page)).data)

    @extend_schema(request=None, responses={201: PublicLinkSerializer, 204: None})
    @action(detail=True, methods=["post", "delete"], url_path="public-link")
    def public_link(self, request: Request, pk: str | None = None) -> Response:
        """POST: a new public link (shown once; the older one stops working). DELETE: revoke it."""
        page = statuspage.page_for(self._organization(Action.CHANGE))
        if request.method == "DELETE":
            statuspage.revoke_public_link(page=page, actor=request.user)
            return Response(status=status.HTTP_204_NO_CONTENT)
        token = statuspage.create_public_link(page=page, actor=request.user)
        url = request.build_absolute_uri(reverse("status_public", kwargs={"token": token}))
        response = Response({"token": token, "url": url}, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response
