"""API of alerts: ``/api/v1/notification-channels/`` (+ ``test``), ``/api/v1/maintenance-windows/`` (+ ``end``) and
``/api/v1/incidents/`` (read only), registered through ``monitoring.extensions``.

- Channels and maintenance windows: owners and operators of an organization create, change and delete them,
  viewers read them, customers never see them. A channel's ``secret`` is write-only (``secret_set`` says whether one
  is stored), and a webhook's URL is shown as its scheme and host only (Slack's URLs are credentials).
- Incidents: everyone who may see the environment; customers (through the same ``for_user``) see the incidents of
  their own organization's environments, without the checks' messages (they may name servers) and the staff
  notes of the timeline.

Objects outside ``for_user(..., action)`` answer 404, like unknown ids.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models, transaction
from django.db.models import F
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.response import Response

from monitoring.models import ChannelKind, Incident, IncidentUpdate, MaintenanceWindow, NotificationChannel
from monitoring.notify import send_test, validate_target
from panel.accounts.api.serializers import (
    AuditedSecretSerializer,
    CustomerViewMixin,
    PanelModelSerializer,
    ScopedRelatedField,
    request_user,
)
from panel.accounts.api.views import ScopedModelViewSet
from panel.accounts.choices import Action
from panel.accounts.models import Organization
from panel.accounts.scoping import for_user
from panel.accounts.services import record
from panel.inventory.models import Environment
from panel.validators import unstorable_text

SECRET_RE = r"^[\x21-\x7e]{16,256}$"
MAX_WINDOW = timedelta(days=31)
# What customers read on an incident's timeline: the kinds they see, in words of their own (a check's message may
# name the server or its addresses, which customers never see).
CUSTOMER_WORDS = {
    "opened": "The problem was detected; the hosting team is told.",
    "update": "Still failing, for another reason.",
    "closed": "Resolved: it works again.",
}


def customer_timeline(updates: list[IncidentUpdate]) -> list[dict[str, Any]]:
    """An incident's timeline as customers see it (no staff notes, no check messages)."""
    return [
        {"at": update.at, "kind": update.kind, "message": CUSTOMER_WORDS[update.kind]}
        for update in updates
        if update.kind in CUSTOMER_WORDS
    ]


def masked_target(channel: NotificationChannel) -> str:
    """What the API and pages show of a channel's target: e-mail addresses in full, a URL as scheme://host/…"""
    if channel.kind == ChannelKind.EMAIL:
        return channel.target
    scheme, _, rest = channel.target.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0].rsplit('@', 1)[-1]}/…"


def _same_organization(environment: Environment | None, organization: Organization | None) -> None:
    if environment is not None and organization is not None and environment.project.organization_id != organization.pk:
        raise serializers.ValidationError({"environment": ["Choose an environment of the same organization."]})


def _plain_text(value: str, field: str) -> str:
    problem = unstorable_text(value)
    if problem:
        raise serializers.ValidationError({field: [f"The text contains {problem}."]})
    return value


class NotificationChannelSerializer(AuditedSecretSerializer):
    """Where an organization's alerts go: e-mail addresses, a signed JSON webhook or a Slack-compatible webhook."""

    audit_name = "notification_channel"
    secret_field = "secret"

    organization = ScopedRelatedField(Organization)
    environment = ScopedRelatedField(
        Environment, required=False, allow_null=True,
        help_text="Set: an override for this one environment (replaces the organization's channels of its kind).",
    )  # fmt: skip
    name = serializers.CharField(max_length=100, trim_whitespace=False)
    target = serializers.CharField(
        max_length=1000, trim_whitespace=False,
        help_text="E-mail addresses (comma-separated) or the webhook URL; a URL is shown as scheme://host/… only.",
    )  # fmt: skip
    secret = serializers.RegexField(
        SECRET_RE, write_only=True, required=False, allow_blank=True, max_length=256, trim_whitespace=False,
        style={"input_type": "password"},
        help_text="HMAC-SHA256 key of a JSON webhook (16-256 printable characters). Never returned; leave it out "
        "to keep the stored one.",
    )  # fmt: skip
    secret_set = serializers.SerializerMethodField(help_text="A signing secret is stored.")
    failing = serializers.SerializerMethodField(help_text="Deliveries fail since failing_since (see last_error).")

    class Meta:
        model = NotificationChannel
        fields = [
            "id", "organization", "environment", "name", "kind", "target", "secret", "secret_set", "enabled",
            "muted", "failing", "consecutive_failures", "failing_since", "last_error", "last_success_at",
            "created_at",
        ]  # fmt: skip
        read_only_fields = ["consecutive_failures", "failing_since", "last_error", "last_success_at", "created_at"]
        create_only = ["organization", "kind"]

    def get_secret_set(self, obj: NotificationChannel) -> bool:
        return bool(obj.secret)

    def get_failing(self, obj: NotificationChannel) -> bool:
        return obj.failing_since is not None

    def to_representation(self, instance: NotificationChannel) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        data["target"] = masked_target(instance)
        return data

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """The target fits the kind (and the SSRF policy), the environment is of the organization, a JSON webhook
        has a secret."""
        current = self.instance
        kind = attrs.get("kind", getattr(current, "kind", ""))
        organization = attrs.get("organization", getattr(current, "organization", None))
        environment = attrs.get("environment", getattr(current, "environment", None))
        _same_organization(environment, organization)
        _plain_text(attrs.get("name", ""), "name")
        if "name" in attrs and not attrs["name"].strip():
            raise serializers.ValidationError({"name": ["Enter a name."]})
        if "target" in attrs or current is None:
            try:
                validate_target(kind, _plain_text(attrs.get("target", ""), "target"))
            except DjangoValidationError as exc:
                raise serializers.ValidationError({"target": exc.messages}) from exc
        secret = attrs.get("secret") or getattr(current, "secret", "")
        if kind == ChannelKind.WEBHOOK and not secret:
            raise serializers.ValidationError({"secret": ["A JSON webhook needs a signing secret."]})
        if attrs.get("muted") and environment is None:
            raise serializers.ValidationError({"muted": ["Only an environment override can be muted."]})
        return attrs


class ChannelTestSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The outcome of a test message."""

    ok = serializers.BooleanField(help_text="The channel took the test message.")
    detail = serializers.CharField(help_text="What happened, or why it failed.")


class StaffViewSet(ScopedModelViewSet):
    """Staff only: viewers and up read, owners and operators change; customers see nothing."""

    def scope_action(self) -> str:
        return Action.VIEW_DETAILS if self.request.method in SAFE_METHODS else Action.CHANGE


@extend_schema_view(
    list=extend_schema(description="Notification channels of the organizations the caller sees details of."),
    create=extend_schema(description="Add a channel: kind `email` (addresses), `webhook` (URL, secret) or `slack`."),
)
class NotificationChannelViewSet(StaffViewSet):
    """Where alerts go. Owners and operators change them, viewers read them, customers never see them."""

    model = NotificationChannel
    audit_name = "notification_channel"
    serializer_class = NotificationChannelSerializer

    def base_queryset(self) -> models.QuerySet[NotificationChannel]:
        return NotificationChannel.objects.select_related("organization", "environment__project")

    @extend_schema(request=None, responses={200: ChannelTestSerializer})
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str | None = None) -> Response:
        """Send a test message through the channel now (owners and operators); a failure shows on the channel."""
        channel = self.get_object()
        ok, detail = send_test(channel)
        record(action="notification_channel.tested", actor=request.user, obj=channel, detail={"ok": ok})
        return Response({"ok": ok, "detail": detail})


class MaintenanceWindowSerializer(PanelModelSerializer):
    """A time during which the covered environments raise no alerts (incidents are still recorded)."""

    organization = ScopedRelatedField(Organization)
    environment = ScopedRelatedField(
        Environment, required=False, allow_null=True, help_text="Empty: every environment of the organization."
    )
    reason = serializers.CharField(max_length=300, required=False, allow_blank=True, trim_whitespace=False)
    active = serializers.SerializerMethodField(help_text="The window covers the present moment.")

    class Meta:
        model = MaintenanceWindow
        fields = ["id", "organization", "environment", "starts_at", "ends_at", "reason", "active", "created_by",
                  "created_at"]  # fmt: skip
        read_only_fields = ["created_by", "created_at"]

    def get_active(self, obj: MaintenanceWindow) -> bool:
        return obj.starts_at <= timezone.now() < obj.ends_at

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Ends after it starts, lasts at most 31 days, covers an environment of its organization."""
        _same_organization(attrs.get("environment"), attrs.get("organization"))
        _plain_text(attrs.get("reason", ""), "reason")
        starts, ends = attrs["starts_at"], attrs["ends_at"]
        if ends <= starts:
            raise serializers.ValidationError({"ends_at": ["The window must end after it starts."]})
        if ends - starts > MAX_WINDOW:
            raise serializers.ValidationError({"ends_at": ["A maintenance window lasts at most 31 days."]})
        if ends <= timezone.now():
            raise serializers.ValidationError({"ends_at": ["The window would be over already."]})
        return attrs

    def create(self, validated_data: dict[str, Any]) -> MaintenanceWindow:
        with transaction.atomic():
            window = MaintenanceWindow.objects.create(created_by=request_user(self), **validated_data)
            record(action="maintenance_window.created", actor=request_user(self), obj=window)
        return window


def end_window(window: MaintenanceWindow, actor: Any) -> MaintenanceWindow:
    """End a window now (a future one is cancelled: it ends when it would have started)."""
    now = timezone.now()
    with transaction.atomic():
        if window.ends_at > now:
            window.ends_at = max(window.starts_at, now)
            MaintenanceWindow.objects.filter(pk=window.pk).update(ends_at=window.ends_at)
        record(action="maintenance_window.ended", actor=actor, obj=window)
    return window


@extend_schema_view(
    list=extend_schema(
        description="Maintenance windows of the organizations the caller sees details of, newest first."
    ),
    create=extend_schema(description="Plan a window (at most 31 days) for one environment or the whole organization."),
)
class MaintenanceWindowViewSet(StaffViewSet):
    """Maintenance windows: no alerts for the environments they cover while they last."""

    model = MaintenanceWindow
    audit_name = "maintenance_window"
    serializer_class = MaintenanceWindowSerializer
    http_method_names = ["get", "post", "delete", "head", "options"]  # type: ignore[assignment,misc]

    def base_queryset(self) -> models.QuerySet[MaintenanceWindow]:
        return MaintenanceWindow.objects.select_related("organization", "environment")

    @extend_schema(request=None, responses={200: MaintenanceWindowSerializer})
    @action(detail=True, methods=["post"])
    def end(self, request: Request, pk: str | None = None) -> Response:
        """End the window now (owners and operators)."""
        window = end_window(self.get_object(), request.user)
        return Response(MaintenanceWindowSerializer(window, context=self.get_serializer_context()).data)


class IncidentUpdateSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """A line of an incident's timeline."""

    class Meta:
        model = IncidentUpdate
        fields = ["at", "kind", "message"]
        read_only_fields = fields


class IncidentSerializer(CustomerViewMixin, serializers.ModelSerializer):  # type: ignore[type-arg]
    """An incident: a check of an environment that failed several cycles in a row, until it recovered."""

    customer_fields = ("id", "environment", "check_name", "title", "severity", "opened_at", "closed_at", "open",
                       "updates")  # fmt: skip
    open = serializers.SerializerMethodField(help_text="Not closed yet.")
    updates = serializers.SerializerMethodField(help_text="The timeline, oldest first.")

    class Meta:
        model = Incident
        fields = ["id", "organization", "environment", "check_name", "title", "message", "severity", "opened_at",
                  "closed_at", "open", "suppressed", "reminders_sent", "last_reminded_at", "updates"]  # fmt: skip
        read_only_fields = fields

    def get_open(self, obj: Incident) -> bool:
        return obj.closed_at is None

    @extend_schema_field(IncidentUpdateSerializer(many=True))
    def get_updates(self, obj: Incident) -> list[dict[str, Any]]:
        updates = list(obj.updates.all())
        if not self.shows_details(obj):
            updates = customer_timeline(updates)  # type: ignore[assignment]
        return IncidentUpdateSerializer(updates, many=True).data  # type: ignore[return-value]


def visible_incidents(user: Any) -> models.QuerySet[Incident]:
    """The incidents ``user`` may see (customers: those of their organization's environments), open first."""
    return (
        for_user(Incident.objects.select_related("environment__project"), user, Action.VIEW)
        .prefetch_related("updates")
        .order_by(F("closed_at").desc(nulls_first=True), "-opened_at", "-id")
    )


class IncidentFilterSerializer(serializers.Serializer):  # type: ignore[type-arg]
    environment = serializers.IntegerField(required=False, min_value=1, max_value=2**63 - 1)
    open = serializers.BooleanField(required=False, allow_null=True, default=None)


@extend_schema_view(
    list=extend_schema(
        description="Incidents the caller may see, open ones first, then newest first.",
        parameters=[
            OpenApiParameter("environment", int, description="Only this environment's."),
            OpenApiParameter("open", bool, description="true: open ones only; false: closed ones only."),
        ],
    ),
)
class IncidentViewSet(viewsets.ReadOnlyModelViewSet):  # type: ignore[type-arg]
    """Incidents with their timelines (read only: the monitoring opens and closes them)."""

    serializer_class = IncidentSerializer

    def get_queryset(self) -> models.QuerySet[Incident]:
        if getattr(self, "swagger_fake_view", False):
            return Incident.objects.none()
        queryset = visible_incidents(self.request.user)
        if self.action == "list":
            filters = IncidentFilterSerializer(data=self.request.query_params)
            filters.is_valid(raise_exception=True)
            if filters.validated_data.get("environment"):
                queryset = queryset.filter(environment_id=filters.validated_data["environment"])
            if filters.validated_data.get("open") is not None:
                queryset = queryset.filter(closed_at__isnull=filters.validated_data["open"])
        return queryset
