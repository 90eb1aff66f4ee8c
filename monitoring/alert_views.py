"""HTML pages of alerts: notification channels, maintenance windows and incidents (organization level).

Owners and operators manage channels and windows, viewers read them, customers never see them; incidents are
seen by everyone who sees the environment (customers: their own organization's). Everything is reached through
``panel.accounts.scoping``: another organization's id answers 404.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from monitoring.alert_api import MAX_WINDOW, customer_timeline, end_window, masked_target, visible_incidents
from monitoring.models import ChannelKind, Incident, MaintenanceWindow, NotificationChannel
from monitoring.notify import send_test, validate_target
from panel.accounts.choices import Action
from panel.accounts.models import Organization
from panel.accounts.scoping import can, for_user, get_for_user
from panel.accounts.services import record
from panel.inventory.forms import WriteOnlyTextarea
from panel.inventory.models import Environment
from panel.inventory.views import changeable_organizations, in_current_organization, initial_organization
from panel.validators import unstorable_text


def _no_unstorable(value: str) -> None:
    problem = unstorable_text(value)
    if problem:
        raise ValidationError(f"The text contains {problem}.")


class ChannelForm(forms.ModelForm):  # type: ignore[type-arg]
    """Add or edit a channel. The secret is write-only: blank keeps the stored one."""

    secret = forms.CharField(
        required=False, max_length=256, strip=False, widget=WriteOnlyTextarea(attrs={"rows": 1}),
        help_text="JSON webhooks: the HMAC-SHA256 key (16-256 printable characters). Never shown; blank keeps the "
        "stored one.",
    )  # fmt: skip

    class Meta:
        model = NotificationChannel
        fields = ["organization", "environment", "name", "kind", "target", "secret", "enabled", "muted"]
        help_texts = {
            "environment": "Set: an override for this environment (replaces the organization's channels of its kind).",
            "muted": "On an override: send nothing of this kind for the environment.",
        }

    def __init__(self, *args: Any, organizations: QuerySet[Organization], user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["organization"].queryset = organizations  # type: ignore[attr-defined]
        self.fields["environment"].queryset = for_user(Environment, user, Action.CHANGE).select_related("project")  # type: ignore[attr-defined]
        self.fields["environment"].required = False
        for name in ("name", "target"):
            self.fields[name].validators.append(_no_unstorable)
        if self.instance.pk:
            self.fields["organization"].disabled = True
            self.fields["kind"].disabled = True
            if self.instance.kind != ChannelKind.EMAIL:
                # A webhook URL is a credential (Slack's are): typed again to change, never shown.
                self.initial["target"] = ""
                self.fields["target"].required = False
                self.fields["target"].help_text = f"Now {masked_target(self.instance)}; blank keeps it."

    def clean_secret(self) -> str:
        secret: str = self.cleaned_data.get("secret") or ""
        if secret and not (16 <= len(secret) <= 256 and all(0x21 <= ord(char) <= 0x7E for char in secret)):
            raise ValidationError("Use 16-256 printable characters without spaces.")
        return secret

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind") or self.instance.kind
        environment, organization = data.get("environment"), data.get("organization")
        if (
            environment is not None
            and organization is not None
            and environment.project.organization_id != organization.pk
        ):
            self.add_error("environment", "Choose an environment of the same organization.")
        if data.get("muted") and environment is None:
            self.add_error("muted", "Only an environment override can be muted.")
        target = data.get("target") or ""
        if self.instance.pk and not target and kind != ChannelKind.EMAIL:
            data["target"] = self.instance.target  # kept
        elif "target" not in self.errors:
            try:
                validate_target(kind, target)
            except ValidationError as exc:
                self.add_error("target", exc)
        if kind == ChannelKind.WEBHOOK and not (data.get("secret") or self.instance.secret):
            self.add_error("secret", "A JSON webhook needs a signing secret.")
        return data

    def save(self, commit: bool = True) -> NotificationChannel:
        if not self.cleaned_data.get("secret") and self.instance.pk:
            self.instance.secret = NotificationChannel.objects.get(pk=self.instance.pk).secret
        if self.instance.pk and not self.cleaned_data.get("target"):
            self.instance.target = NotificationChannel.objects.get(pk=self.instance.pk).target
        return super().save(commit)  # type: ignore[no-any-return]


class WindowForm(forms.ModelForm):  # type: ignore[type-arg]
    """Plan a maintenance window (UTC)."""

    class Meta:
        model = MaintenanceWindow
        fields = ["organization", "environment", "starts_at", "ends_at", "reason"]
        widgets = {
            "starts_at": forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
            "ends_at": forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        }
        help_texts = {"environment": "Empty: every environment of the organization.", "starts_at": "UTC."}

    def __init__(self, *args: Any, organizations: QuerySet[Organization], user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["organization"].queryset = organizations  # type: ignore[attr-defined]
        self.fields["environment"].queryset = for_user(Environment, user, Action.CHANGE).select_related("project")  # type: ignore[attr-defined]
        self.fields["environment"].required = False
        self.fields["reason"].validators.append(_no_unstorable)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        environment, organization = data.get("environment"), data.get("organization")
        if (
            environment is not None
            and organization is not None
            and environment.project.organization_id != organization.pk
        ):
            self.add_error("environment", "Choose an environment of the same organization.")
        starts, ends = data.get("starts_at"), data.get("ends_at")
        if starts and ends:
            if ends <= starts:
                self.add_error("ends_at", "The window must end after it starts.")
            elif ends - starts > MAX_WINDOW:
                self.add_error("ends_at", "A maintenance window lasts at most 31 days.")
            elif ends <= timezone.now():
                self.add_error("ends_at", "The window would be over already.")
        return data


# Channels ---------------------------------------------------------------------------------------------------------


def _staff_organizations(request: HttpRequest) -> QuerySet[Organization]:
    return for_user(Organization, request.user, Action.VIEW_DETAILS)


@require_GET
@login_required
def channel_list(request: HttpRequest) -> HttpResponse:
    """Notification channels of the current organization, the failing ones marked (staff only)."""
    channels = in_current_organization(
        request, for_user(NotificationChannel, request.user, Action.VIEW_DETAILS), "organization"
    ).select_related("organization", "environment__project")
    if not _staff_organizations(request).exists():
        raise Http404("Not found.")
    rows = [{"channel": channel, "target": masked_target(channel)} for channel in channels]
    return render(request, "monitoring/alerts/channel_list.html", {"rows": rows})


@require_http_methods(["GET", "POST"])
@login_required
def channel_create(request: HttpRequest) -> HttpResponse:
    """Add a channel (owners and operators)."""
    organizations = changeable_organizations(request)
    form = ChannelForm(
        request.POST if request.method == "POST" else None,
        organizations=organizations,
        user=request.user,
        initial=initial_organization(request, organizations),
    )
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            channel = form.save()
            record(action="notification_channel.created", actor=request.user, obj=channel, request=request)
        messages.success(request, f"Channel {channel.name} added. Send a test message to check it.")
        return redirect("notification_channel_list")
    return render(request, "monitoring/alerts/channel_form.html", {"form": form, "creating": True})


@require_http_methods(["GET", "POST"])
@login_required
def channel_edit(request: HttpRequest, channel_id: int) -> HttpResponse:
    """Change a channel (owners and operators)."""
    channel = get_for_user(NotificationChannel, request.user, Action.CHANGE, pk=channel_id)
    form = ChannelForm(
        request.POST if request.method == "POST" else None,
        instance=channel,
        organizations=changeable_organizations(request),
        user=request.user,
    )
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            form.save()
            fields = sorted(form.changed_data)
            record(action="notification_channel.updated", actor=request.user, obj=channel, request=request,
                   detail={"fields": fields})  # fmt: skip
        messages.success(request, f"Channel {channel.name} saved.")
        return redirect("notification_channel_list")
    return render(request, "monitoring/alerts/channel_form.html", {"form": form, "channel": channel})


@require_POST
@login_required
def channel_test(request: HttpRequest, channel_id: int) -> HttpResponse:
    """Send a test message now and say how it went."""
    channel = get_for_user(NotificationChannel, request.user, Action.CHANGE, pk=channel_id)
    ok, detail = send_test(channel)
    record(action="notification_channel.tested", actor=request.user, obj=channel, request=request, detail={"ok": ok})
    (messages.success if ok else messages.error)(request, f"{channel.name}: {detail}")
    return redirect("notification_channel_list")


@require_POST
@login_required
def channel_delete(request: HttpRequest, channel_id: int) -> HttpResponse:
    """Remove a channel (its past deliveries go with it)."""
    channel = get_for_user(NotificationChannel, request.user, Action.CHANGE, pk=channel_id)
    with transaction.atomic():
        record(action="notification_channel.deleted", actor=request.user, obj=channel, request=request)
        channel.delete()
    messages.success(request, f"Channel {channel.name} removed.")
    return redirect("notification_channel_list")


# Maintenance windows ----------------------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@login_required
def window_list(request: HttpRequest) -> HttpResponse:
    """Maintenance windows of the current organization, and the form that plans one (owners and operators)."""
    if not _staff_organizations(request).exists():
        raise Http404("Not found.")
    windows = in_current_organization(
        request, for_user(MaintenanceWindow, request.user, Action.VIEW_DETAILS), "organization"
    ).select_related("organization", "environment__project", "created_by")[:200]
    organizations = for_user(Organization, request.user, Action.CHANGE)
    form = None
    if organizations.exists():
        now = timezone.now().replace(second=0, microsecond=0)
        form = WindowForm(
            request.POST if request.method == "POST" else None,
            organizations=organizations,
            user=request.user,
            initial={
                **initial_organization(request, organizations),
                "starts_at": now,
                "ends_at": now + timedelta(hours=1),
            },
        )
        if request.method == "POST" and form.is_valid():
            with transaction.atomic():
                window = form.save(commit=False)
                window.created_by = request.user
                window.save()
                record(action="maintenance_window.created", actor=request.user, obj=window, request=request)
            messages.success(request, "Maintenance window planned: no alerts for what it covers while it lasts.")
            return redirect("maintenance_window_list")
    elif request.method == "POST":
        raise Http404("Not found.")
    now = timezone.now()
    rows = [{"window": window, "active": window.starts_at <= now < window.ends_at, "over": window.ends_at <= now,
             "may_change": can(request.user, Action.CHANGE, window)} for window in windows]  # fmt: skip
    return render(request, "monitoring/alerts/window_list.html", {"rows": rows, "form": form})


@require_POST
@login_required
def window_end(request: HttpRequest, window_id: int) -> HttpResponse:
    """End a window now (a future one is cancelled)."""
    window = get_for_user(MaintenanceWindow, request.user, Action.CHANGE, pk=window_id)
    end_window(window, request.user)
    messages.success(request, "Maintenance window ended.")
    return redirect("maintenance_window_list")


# Incidents --------------------------------------------------------------------------------------------------------


@require_GET
@login_required
def incident_list(request: HttpRequest) -> HttpResponse:
    """Incidents of the current organization's environments, open ones first."""
    incidents = in_current_organization(request, visible_incidents(request.user), "organization")[:200]
    return render(request, "monitoring/alerts/incident_list.html", {"incidents": incidents})


@require_GET
@login_required
def incident_detail(request: HttpRequest, incident_id: int) -> HttpResponse:
    """One incident and its timeline (customers: in general words, without the staff notes)."""
    incident: Incident = get_for_user(visible_incidents(request.user), request.user, Action.VIEW, pk=incident_id)
    staff = can(request.user, Action.VIEW_DETAILS, incident)
    updates: list[Any] = list(incident.updates.all())
    if not staff:
        updates = customer_timeline(updates)
    deliveries = incident.notifications.select_related("channel").order_by("created_at", "id") if staff else []
    return render(
        request,
        "monitoring/alerts/incident_detail.html",
        {"incident": incident, "updates": updates, "deliveries": deliveries, "staff": staff},
    )
