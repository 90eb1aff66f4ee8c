"""Notifications of incidents: which channels, the messages, and their delivery exactly once per channel.

- **Channels** (``NotificationChannel``) belong to an organization. An environment's alerts go to the channels of
  its organization and of the organizations that manage it (a hosting provider's), unless the environment has
  *overrides*: channels whose ``environment`` is that environment. Overrides work per kind: an environment with
  an e-mail channel of its own sends its e-mails there instead of to the organizations' e-mail channels, while
  webhooks and Slack still go to the organizations' unless it has those too; a *muted* override sends nothing of
  its kind for that environment. Disabled channels send nothing.
- **Exactly once**: the winner of an incident's transition (``monitoring.incidents``) creates one ``Notification``
  row per channel in its transaction (unique per channel, incident, kind and sequence: a second winner cannot
  exist, a replay creates nothing). After commit a task on the monitoring queue delivers each row, claiming it
  with a conditional ``UPDATE`` that sets ``claimed_until`` (a lease): two workers never send one row, and a
  worker killed mid-send leaves the row to whoever finds the lease expired (the periodic sweep).
- **Retries**: a failed attempt is retried after ``MONITOR_NOTIFY_BACKOFF`` × 2^(attempt-1) seconds, at most
  ``MONITOR_NOTIFY_ATTEMPTS`` times; then the row is *failed* and the incident's timeline says so. The channel
  shows as failing (``failing_since``, ``last_error``) from its first failed attempt until a delivery succeeds.
- **Webhooks** (``webhook``): ``POST`` of the JSON payload with ``X-Panel-Event``, ``X-Panel-Delivery`` (the
  notification's id: the same on every retry, for receivers that deduplicate) and ``X-Panel-Signature:
  t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the channel's secret>``. Slack-compatible webhooks get
  ``{"text": ...}``. Redirects are not followed; with ``PANEL_BLOCK_PRIVATE_WEBHOOKS`` a URL whose host resolves
  to a loopback, private or link-local address is refused when saved and again before every attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from celery import shared_task
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage, get_connection
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone

from monitoring.models import ChannelKind, Incident, IncidentUpdate, Notification, NotificationChannel
from panel.inventory.models import Environment

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Panel-Signature"
MAX_BACKOFF = 3600.0
MAX_ERROR = 2000
MAX_ADDRESSES = 20


class DeliveryError(Exception):
    """A channel refused or could not take a message (the reason is shown on the channel)."""


# Targets ----------------------------------------------------------------------------------------------------------


def email_addresses(target: str) -> list[str]:
    """The comma-separated addresses of an e-mail channel."""
    return [address.strip() for address in target.split(",") if address.strip()]


def validate_target(kind: str, target: str) -> None:
    """An e-mail channel's addresses, or a webhook's http(s) URL within the SSRF policy (``ValidationError``)."""
    if "\x00" in target or any(ord(char) < 32 for char in target):
        raise ValidationError("Control characters are not allowed here.")
    if kind == ChannelKind.EMAIL:
        addresses = email_addresses(target)
        if not addresses:
            raise ValidationError("Enter at least one e-mail address.")
        if len(addresses) > MAX_ADDRESSES:
            raise ValidationError(f"At most {MAX_ADDRESSES} addresses.")
        for address in addresses:
            validate_email(address)
        return
    try:
        parts = urlsplit(target)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValidationError("Enter an http:// or https:// URL.") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter an http:// or https:// URL.")
    if parts.username or parts.password:
        raise ValidationError("Put no user name or password in the URL (a JSON webhook signs its requests).")
    check_webhook_policy(target)


def check_webhook_policy(url: str) -> None:
    """With ``PANEL_BLOCK_PRIVATE_WEBHOOKS``, refuse a webhook whose host resolves to loopback, private,
    link-local (cloud metadata) or reserved addresses (SSRF from the panel)."""
    if not getattr(settings, "PANEL_BLOCK_PRIVATE_WEBHOOKS", False):
        return
    from backups.validators import blocked_address

    host = urlsplit(url).hostname or ""
    address = blocked_address(host)
    if address is not None:
        raise ValidationError(
            f"The webhook host {host} resolves to {address}, a loopback, private or link-local address; not allowed."
        )


# Which channels ---------------------------------------------------------------------------------------------------


def organization_chain(organization_id: int) -> list[int]:
    """The organization and those that manage it (its provider, and theirs), nearest first."""
    from panel.accounts.models import Organization

    chain: list[int] = []
    current: int | None = organization_id
    while current is not None and current not in chain:
        chain.append(current)
        current = Organization.objects.filter(pk=current).values_list("managed_by_id", flat=True).first()
    return chain


def channels_for(environment: Environment) -> list[NotificationChannel]:
    """The enabled channels an alert of ``environment`` goes to (see the module docstring for overrides)."""
    organizations = organization_chain(environment.project.organization_id)
    candidates = list(
        NotificationChannel.objects.filter(organization_id__in=organizations, enabled=True).filter(
            Q(environment__isnull=True) | Q(environment=environment)
        )
    )
    overridden = {channel.kind for channel in candidates if channel.environment_id == environment.pk}
    return [
        channel
        for channel in candidates
        if not channel.muted and (channel.environment_id == environment.pk or channel.kind not in overridden)
    ]


# Messages ---------------------------------------------------------------------------------------------------------

EVENT_NAMES = {"opened": "incident.opened", "closed": "incident.closed", "reminder": "incident.reminder"}


def incident_payload(incident: Incident, kind: str) -> dict[str, Any]:
    """The JSON document of a notification (nothing secret: names, states and dates)."""
    environment = incident.environment
    url = ""
    if settings.PANEL_URL:
        url = settings.PANEL_URL.rstrip("/") + reverse("incident_detail", args=[incident.pk])
    return {
        "event": EVENT_NAMES.get(kind, kind),
        "incident": {
            "id": incident.pk,
            "title": incident.title,
            "message": incident.message,
            "check": incident.check_name,
            "severity": incident.severity,
            "opened_at": incident.opened_at.isoformat(),
            "closed_at": incident.closed_at.isoformat() if incident.closed_at else None,
            "reminders_sent": incident.reminders_sent,
            "url": url,
        },
        "environment": {
            "id": environment.pk,
            "name": environment.name,
            "kind": environment.kind,
            "project": environment.project.name,
            "domain": environment.domain,
        },
        "organization": {"id": incident.organization_id},
    }


def summary(payload: dict[str, Any]) -> tuple[str, str]:
    """A subject line and a text body for e-mail and Slack."""
    event = payload.get("event", "")
    incident = payload.get("incident") or {}
    title = str(incident.get("title", ""))
    if event == "test":
        return "[Doodba Panel] Test message", str(payload.get("message", "This channel works."))
    prefix = {"incident.opened": "DOWN" if incident.get("check") == "availability" else "PROBLEM"}.get(event)
    if event == "incident.closed":
        subject = f"[Doodba Panel] RESOLVED: {title}"
    elif event == "incident.reminder":
        subject = f"[Doodba Panel] STILL OPEN: {title}"
    else:
        subject = f"[Doodba Panel] {prefix or 'PROBLEM'}: {title}"
    lines = [title, "", str(incident.get("message", "")), "", f"Opened: {incident.get('opened_at')}"]
    if incident.get("closed_at"):
        lines.append(f"Closed: {incident.get('closed_at')}")
    if incident.get("url"):
        lines.append(f"Details: {incident['url']}")
    return subject[:250], "\n".join(lines)


def queue_notifications(incident: Incident, kind: str, *, sequence: int = 0) -> int:
    """Create the notifications of one incident transition (call it in the winner's transaction) and deliver
    them after commit. A row that exists already (a replay) is not created twice. Returns how many channels."""
    channels = channels_for(incident.environment)
    if not channels:
        return 0
    payload = incident_payload(incident, kind)
    Notification.objects.bulk_create(
        [
            Notification(channel=channel, incident=incident, kind=kind, sequence=sequence, payload=payload)
            for channel in channels
        ],
        ignore_conflicts=True,
    )
    ids = list(
        Notification.objects.filter(
            incident=incident, kind=kind, sequence=sequence, status=Notification.Status.PENDING
        ).values_list("id", flat=True)
    )

    def enqueue_all() -> None:
        for notification_id in ids:
            _enqueue(notification_id)

    transaction.on_commit(enqueue_all)
    return len(channels)


def _enqueue(notification_id: int, countdown: float = 0) -> None:
    """Hand a delivery to the monitoring queue; a broker outage is not fatal (the sweep finds the row)."""
    try:
        deliver_notification.apply_async((notification_id,), countdown=countdown)
    except Exception:  # the row is in the database; the periodic sweep delivers it
        logger.warning("could not queue notification %s; the sweep will deliver it", notification_id, exc_info=True)


# Delivery ---------------------------------------------------------------------------------------------------------


def claim(notification_id: int, now: datetime | None = None) -> datetime | None:
    """Take a due notification for one attempt: one conditional ``UPDATE`` (pending, or sending with an expired
    lease). Returns the lease's end (the claim's token), or None when it is not due or another worker has it."""
    now = now or timezone.now()
    lease = now + timedelta(seconds=settings.MONITOR_NOTIFY_LEASE)
    claimed = (
        Notification.objects.filter(
            pk=notification_id,
            status__in=[Notification.Status.PENDING, Notification.Status.SENDING],
            next_attempt_at__lte=now,
        )
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .update(status=Notification.Status.SENDING, claimed_until=lease, attempts=F("attempts") + 1)
    )
    return lease if claimed else None


def deliver(notification_id: int) -> str:
    """Deliver one notification if it is due and nobody else is at it; record the outcome on the row and the
    channel. Returns the row's status afterwards (or ``skipped``)."""
    lease = claim(notification_id)
    if lease is None:
        return "skipped"
    notification = Notification.objects.select_related("channel", "incident").filter(pk=notification_id).first()
    if notification is None:
        return "skipped"  # its channel was deleted meanwhile
    channel = notification.channel
    if not channel.enabled and notification.kind != "test":
        Notification.objects.filter(pk=notification.pk, claimed_until=lease).update(
            status=Notification.Status.FAILED, claimed_until=None, last_error="The channel was disabled."
        )
        return Notification.Status.FAILED
    logger.info("notification %s: attempt %s to channel %s", notification.pk, notification.attempts, channel.pk)
    try:
        send(channel, notification)
    except DeliveryError as exc:
        return _failed(notification, lease, str(exc))
    now = timezone.now()
    Notification.objects.filter(pk=notification.pk, claimed_until=lease).update(
        status=Notification.Status.SENT, sent_at=now, claimed_until=None, last_error=""
    )
    NotificationChannel.objects.filter(pk=channel.pk).update(
        consecutive_failures=0, failing_since=None, last_success_at=now
    )
    logger.info("notification %s (%s) sent to channel %s", notification.pk, notification.kind, channel.pk)
    return Notification.Status.SENT


def _failed(notification: Notification, lease: datetime, error: str) -> str:
    """One attempt failed: retry later with backoff, or give up after the last attempt; the channel shows it."""
    now = timezone.now()
    error = error[:MAX_ERROR]
    last = notification.attempts >= settings.MONITOR_NOTIFY_ATTEMPTS or notification.kind == "test"
    delay = min(settings.MONITOR_NOTIFY_BACKOFF * 2 ** max(notification.attempts - 1, 0), MAX_BACKOFF)
    with transaction.atomic():
        Notification.objects.filter(pk=notification.pk, claimed_until=lease).update(
            status=Notification.Status.FAILED if last else Notification.Status.PENDING,
            next_attempt_at=now + timedelta(seconds=delay),
            claimed_until=None,
            last_error=error,
        )
        NotificationChannel.objects.filter(pk=notification.channel_id).update(
            consecutive_failures=F("consecutive_failures") + 1,
            failing_since=Coalesce(F("failing_since"), now),
            last_error=error,
        )
        if last and notification.incident_id is not None:
            IncidentUpdate.objects.create(
                incident_id=notification.incident_id,
                at=now,
                kind="note",
                message=f"The {notification.kind} message to {notification.channel.name} could not be delivered "
                f"after {notification.attempts} attempts: {error}",
            )
    logger.warning("notification %s attempt %s failed: %s", notification.pk, notification.attempts, error)
    if last:
        return Notification.Status.FAILED
    transaction.on_commit(lambda: _enqueue(notification.pk, countdown=delay))
    return Notification.Status.PENDING


def due_notifications(now: datetime | None = None, limit: int = 500) -> list[int]:
    """Ids of notifications that should be attempted now and that no live lease covers (lost task messages,
    workers killed mid-send, retries whose countdown passed)."""
    now = now or timezone.now()
    return list(
        Notification.objects.filter(
            status__in=[Notification.Status.PENDING, Notification.Status.SENDING], next_attempt_at__lte=now
        )
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .order_by("next_attempt_at")
        .values_list("id", flat=True)[:limit]
    )


def send(channel: NotificationChannel, notification: Notification) -> None:
    """Send one message through one channel (``DeliveryError`` with the reason on failure)."""
    payload = dict(notification.payload)
    if channel.kind == ChannelKind.EMAIL:
        send_email(channel, payload)
    elif channel.kind == ChannelKind.WEBHOOK:
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        headers = {
            "X-Panel-Event": str(payload.get("event", "")),
            "X-Panel-Delivery": str(notification.pk),
            SIGNATURE_HEADER: sign(channel.secret, body),
        }
        post(channel.target, body, headers)
    elif channel.kind == ChannelKind.SLACK:
        subject, text = summary(payload)
        body = json.dumps({"text": f"*{subject}*\n{text}"}).encode()
        post(channel.target, body, {})
    else:
        raise DeliveryError(f"Unknown channel kind {channel.kind!r}.")


def send_email(channel: NotificationChannel, payload: dict[str, Any]) -> None:
    """One e-mail to the channel's addresses over the configured SMTP server (``EMAIL_*``)."""
    subject, body = summary(payload)
    try:
        connection = get_connection(timeout=settings.EMAIL_TIMEOUT)
        EmailMessage(
            subject, body, settings.DEFAULT_FROM_EMAIL, email_addresses(channel.target), connection=connection
        ).send()
    except (OSError, ValueError) as exc:  # smtplib's errors are OSErrors
        raise DeliveryError(f"SMTP {settings.EMAIL_HOST}:{settings.EMAIL_PORT}: {exc}") from exc


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Panel-Signature`` value: ``t=<unix time>,v1=<hex HMAC-SHA256("<t>." + body)>`` (no secret: no
    ``v1``; receivers should then refuse it)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    if not secret:
        return f"t={timestamp}"
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: str, body: bytes, header: str, *, tolerance: int = 300) -> bool:
    """What a receiver does (the README shows the same in a few lines): recompute the HMAC of ``"<t>." + body``,
    compare in constant time, and refuse a timestamp older than ``tolerance`` seconds (replays)."""
    try:
        fields = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is an answer, not an invitation to post elsewhere (SSRF)


_opener = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))


def post(url: str, body: bytes, headers: dict[str, str]) -> None:
    """POST a JSON body; anything but a 2xx answer within ``MONITOR_NOTIFY_TIMEOUT`` is a ``DeliveryError``."""
    try:
        check_webhook_policy(url)
    except ValidationError as exc:
        raise DeliveryError(" ".join(exc.messages)) from exc
    if urlsplit(url).scheme not in ("http", "https"):
        raise DeliveryError("Only http:// and https:// webhooks are sent.")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked just above
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "doodba-panel", **headers},
    )
    try:
        with _opener.open(request, timeout=settings.MONITOR_NOTIFY_TIMEOUT) as response:
            response.read(65536)
            code = response.status
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"{urlsplit(url).hostname} answered HTTP {exc.code}.") from exc
    except (OSError, ValueError) as exc:
        raise DeliveryError(f"{urlsplit(url).hostname}: {getattr(exc, 'reason', exc)}") from exc
    if not 200 <= code < 300:
        raise DeliveryError(f"{urlsplit(url).hostname} answered HTTP {code}.")


def send_test(channel: NotificationChannel) -> tuple[bool, str]:
    """Send a test message through ``channel`` now (one attempt, recorded like any delivery, so a working test
    clears the failing state and a failing one shows it). Returns (delivered, what happened)."""
    payload = {
        "event": "test",
        "message": f"A test message from the Doodba Panel to the channel {channel.name}.",
        "organization": {"id": channel.organization_id},
        "sent_at": timezone.now().isoformat(),
    }
    notification = Notification.objects.create(channel=channel, incident=None, kind="test", payload=payload)
    status = deliver(notification.pk)
    notification.refresh_from_db(fields=["last_error"])
    if status == Notification.Status.SENT:
        return True, "The test message was delivered."
    return False, notification.last_error or "The test message was not delivered."


# Tasks (thin: the monitoring queue runs them; beat runs the sweep and the reminders) ------------------------------


@shared_task(name="monitoring.notify.deliver_notification", ignore_result=True)
def deliver_notification(notification_id: int) -> str:
    """Deliver one notification (a no-op when it is not due or another worker has it)."""
    return deliver(int(notification_id))


@shared_task(name="monitoring.notify.deliver_due", ignore_result=True)
def deliver_due() -> int:
    """Deliver what is due and unclaimed (the safety net for lost messages and killed workers)."""
    ids = due_notifications()
    for notification_id in ids:
        deliver(notification_id)
    return len(ids)


@shared_task(name="monitoring.notify.send_reminders", ignore_result=True)
def send_reminders() -> int:
    """Queue the reminders of incidents that stayed open past ``MONITOR_REMINDER_MINUTES``."""
    from monitoring.incidents import send_reminders as remind

    return remind()
