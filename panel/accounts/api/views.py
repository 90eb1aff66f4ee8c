"""API views of tenancy (organizations and their members, invitations, tokens) and ``ScopedModelViewSet``, the base of every object endpoint.

Access rules, the same for every endpoint:

- Objects are reached only through ``for_user(Model, user, action)`` with ``action`` = ``view`` for safe methods and
  ``change`` for the others. An object the caller may not take that action on answers **404** with the same body as
  an id that does not exist (another organization's server, or a viewer trying to PATCH or DELETE).
- Creating takes the target (``organization``, or ``project`` for an environment) in the body. A target the caller
  cannot see is refused like an unknown id (400 "does not exist"); one the caller can see but not change (a viewer's
  or a customer's own organization) answers **403**.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import models, transaction
from django.db.models import ProtectedError
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from panel.accounts.api import schema  # noqa: F401  (registers the token scheme)
from panel.accounts.api.serializers import (
    ApiTokenCreatedSerializer,
    ApiTokenCreateSerializer,
    ApiTokenSerializer,
    InvitationCreatedSerializer,
    InvitationCreateSerializer,
    InvitationSerializer,
    MemberSerializer,
    OrganizationSerializer,
)
from panel.accounts.choices import Action
from panel.accounts.models import ApiToken, Invitation, Membership, Organization
from panel.accounts.scoping import for_user, get_for_user
from panel.accounts.services import create_invitation, create_token, record, revoke_invitation, revoke_token
from panel.jobs.choices import ACTIVE_STATES
from panel.jobs.models import Job
from panel.validators import parse_id


class Conflict(exceptions.APIException):
    """409: the request is valid but the object's state does not allow it now."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The object's current state does not allow this."
    default_code = "conflict"


class ScopedModelViewSet(viewsets.ModelViewSet):  # type: ignore[type-arg]
    """A model viewset whose every object goes through the scoping helper (see the module docstring)."""

    model: ClassVar[type[models.Model]]
    audit_name: ClassVar[str]
    http_method_names: ClassVar[list[str]] = ["get", "post", "patch", "delete", "head", "options"]  # type: ignore[misc]

    def scope_action(self) -> str:
        """``view`` for safe methods, ``change`` for the others."""
        return Action.VIEW if self.request.method in SAFE_METHODS else Action.CHANGE

    def base_queryset(self) -> models.QuerySet[Any]:
        """The unscoped queryset (select_related etc.); ``get_queryset`` scopes it."""
        return self.model._default_manager.all()

    def get_queryset(self) -> models.QuerySet[Any]:
        if getattr(self, "swagger_fake_view", False):
            return self.model._default_manager.none()
        return for_user(self.base_queryset(), self.request.user, self.scope_action())

    def active_jobs(self, instance: Any) -> models.QuerySet[Job]:
        """Queued or running jobs that would lose their target if ``instance`` were deleted."""
        return Job.objects.none()

    def perform_destroy(self, instance: Any) -> None:
        busy = self.active_jobs(instance).filter(status__in=ACTIVE_STATES).first()
        if busy is not None:
            raise Conflict(f"Job #{busy.pk} is queued or running on it; wait for it to end or cancel it.")
        try:
            with transaction.atomic():
                record(action=f"{self.audit_name}.deleted", actor=self.request.user, obj=instance, request=self.request)
                instance.delete()
        except ProtectedError as exc:
            names = sorted({str(obj) for obj in exc.protected_objects})[:10]
            raise Conflict(f"It is still used by: {', '.join(names)}.") from exc


class OrganizationViewSet(viewsets.ReadOnlyModelViewSet):  # type: ignore[type-arg]
    """Organizations the caller belongs to or manages, with the caller's role (ids to use when creating objects)."""

    serializer_class = OrganizationSerializer

    def get_queryset(self) -> models.QuerySet[Organization]:
        if getattr(self, "swagger_fake_view", False):
            return Organization.objects.none()
        return for_user(Organization, self.request.user, Action.VIEW)

    @extend_schema(responses=MemberSerializer(many=True))
    @action(detail=True, methods=["get"])
    def members(self, request: Request, pk: str | None = None) -> Response:
        """Members of the organization and their roles; owners of it or of its provider only (404 otherwise)."""
        organization = get_for_user(Organization, request.user, Action.ADMIN, pk=pk)
        memberships = (
            for_user(Membership, request.user, Action.ADMIN)
            .filter(organization=organization)
            .select_related("user")
            .order_by("user__username")
        )
        page = self.paginate_queryset(memberships)
        assert page is not None
        return self.get_paginated_response(MemberSerializer(page, many=True).data)


class ApiTokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,  # type: ignore[type-arg]
):
    """The caller's own API tokens. Tokens belong to a user, not an organization: the queryset is the caller's.

    Creating a token needs a session (a person signed in): a token cannot mint tokens, so a leaked token cannot
    outlive its own expiry. Deleting revokes the token at once (the row stays for the audit trail).
    """

    serializer_class = ApiTokenSerializer

    def get_queryset(self) -> models.QuerySet[ApiToken]:
        if getattr(self, "swagger_fake_view", False):
            return ApiToken.objects.none()
        return ApiToken.objects.filter(user_id=self.request.user.pk or 0)  # IsAuthenticated: pk is set

    def get_serializer_class(self) -> type[BaseSerializer[Any]]:
        if self.action == "create":
            return ApiTokenCreateSerializer
        return ApiTokenSerializer

    @extend_schema(request=ApiTokenCreateSerializer, responses={201: ApiTokenCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create a token; the response is the only time its plain value is shown."""
        if isinstance(request.auth, ApiToken):
            raise exceptions.PermissionDenied("Sign in to create API tokens; a token cannot create tokens.")
        serializer = ApiTokenCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        token, plain = create_token(user=request.user, **serializer.validated_data)
        token.token = plain  # type: ignore[attr-defined]
        return Response(ApiTokenCreatedSerializer(token).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: ApiToken) -> None:
        if instance.revoked_at is None:
            revoke_token(token=instance, actor=self.request.user)


class InvitationViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,  # type: ignore[type-arg]
):
    """Invitations of the organizations the caller administers (owners of it or of its provider).

    Creating one returns its plain token and link once; only a hash is stored. Like tokens, invitations need a
    session: an invitation creates an account, and a leaked API token must not be able to mint a lasting one.
    Deleting revokes a pending invitation (the row stays for the audit trail); an accepted one answers 409.
    """

    serializer_class = InvitationSerializer

    def get_queryset(self) -> models.QuerySet[Invitation]:
        if getattr(self, "swagger_fake_view", False):
            return Invitation.objects.none()
        invitations = for_user(Invitation, self.request.user, Action.ADMIN).select_related("created_by", "accepted_by")
        organization = self.request.query_params.get("organization", "")
        if organization:
            invitations = invitations.filter(organization_id=parse_id(organization) or 0)
        return invitations

    def get_serializer_class(self) -> type[BaseSerializer[Any]]:
        if self.action == "create":
            return InvitationCreateSerializer
        return InvitationSerializer

    @extend_schema(
        parameters=[OpenApiParameter("organization", int, description="Only this organization's invitations.")]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Invitations, newest first, with their status (pending, accepted, revoked, expired)."""
        return super().list(request, *args, **kwargs)

    @extend_schema(request=InvitationCreateSerializer, responses={201: InvitationCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Invite someone; the response is the only time the token and link are shown."""
        if isinstance(request.auth, ApiToken):
            raise exceptions.PermissionDenied("Sign in to create invitations; an API token cannot create accounts.")
        serializer = InvitationCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        invitation, token = create_invitation(actor=request.user, request=request, **serializer.validated_data)
        invitation.token = token  # type: ignore[attr-defined]
        invitation.url = request.build_absolute_uri(reverse("invitation_accept", args=[token]))  # type: ignore[attr-defined]
        return Response(InvitationCreatedSerializer(invitation).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: Invitation) -> None:
        if instance.accepted_at is not None:
            raise Conflict("This invitation was already accepted; remove the member instead.")
        revoke_invitation(actor=self.request.user, invitation=instance, request=self.request)
