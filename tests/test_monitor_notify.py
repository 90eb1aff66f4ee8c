"""Notifications (real PostgreSQL, a real SMTP server and a real HTTP receiver on loopback): which channels,
the signed webhook, Slack's text, the lease that lets one worker send, retries and the failing state, SSRF."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from monitoring import checks
from monitoring.incidents import observe
from monitoring.models import Incident, Notification, NotificationChannel
from monitoring.notify import (
    SIGNATURE_HEADER,
    channels_for,
    claim,
    deliver,
    due_notifications,
    send_test,
    validate_target,
    verify_signature,
)
from tests.alert_receivers import smtp_server, webhook_receiver

pytestmark = pytest.mark.django_db

SECRET = "s3cret-signing-key-0123456789"


@pytest.fixture
def env(inventory: dict[str, Any]) -> Any:
    return inventory["env_a"]


def open_incident(env: Any) -> Incident:
    at = timezone.now()
    for step in range(3):
        observe(env, checks.AVAILABILITY, "failing", "Odoo's /web/health answered 502", at=at + timedelta(seconds=step))
    return Incident.objects.get(environment=env, closed_at__isnull=True)


def channel(org: Any, kind: str, target: str, **fields: Any) -> NotificationChannel:
    return NotificationChannel.objects.create(
        organization=org, name=fields.pop("name", kind), kind=kind, target=target, **fields
    )


def test_it_sends_environment_overrides_instead_of_the_organizations_channels_of_that_kind(
    env: Any, orgs: Any, inventory: Any
) -> None:
    org_mail = channel(orgs["a"], "email", "ops@example.com", name="provider mail")
    org_hook = channel(orgs["a1"], "webhook", "https://hooks.example.com/x", secret=SECRET)
    channel(orgs["a"], "slack", "https://hooks.slack.com/services/T/B/x", enabled=False)
    channel(orgs["b"], "email", "bravo@example.com")  # another organization: never
    assert {c.pk for c in channels_for(env)} == {org_mail.pk, org_hook.pk}
    customer_mail = channel(orgs["a1"], "email", "shop@example.com", environment=env)
    channel(orgs["a1"], "webhook", "https://hooks.example.com/y", environment=inventory["env_b"], secret=SECRET)
    assert {c.pk for c in channels_for(env)} == {customer_mail.pk, org_hook.pk}
    channel(orgs["a1"], "webhook", "https://hooks.example.com/z", environment=env, muted=True, secret=SECRET)
    assert {c.pk for c in channels_for(env)} == {customer_mail.pk}


def test_it_delivers_one_email_over_smtp_and_one_signed_webhook(env: Any, orgs: Any, settings: Any) -> None:
    with smtp_server() as smtp, webhook_receiver() as receiver:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = smtp.host, smtp.port
        settings.DEFAULT_FROM_EMAIL = "alerts@panel.example"
        mail = channel(orgs["a"], "email", "ops@example.com, oncall@example.com")
        hook = channel(orgs["a"], "webhook", receiver.url, secret=SECRET)
        slack = channel(orgs["a"], "slack", receiver.url + "/slack")
        incident = open_incident(env)
        rows = Notification.objects.filter(incident=incident)
        assert sorted(rows.values_list("channel_id", flat=True)) == sorted([mail.pk, hook.pk, slack.pk])
        for row in rows:
            assert deliver(row.pk) == "sent"
            assert deliver(row.pk) == "skipped"  # sent once, whoever asks again
        assert smtp.subjects() == [f"[Doodba Panel] DOWN: {env} is down"]
        assert smtp.envelopes == [("alerts@panel.example", ["ops@example.com", "oncall@example.com"])]
        hooks = [r for r in receiver.requests if r.path == "/hooks/panel"]
        assert len(hooks) == 1
        body = hooks[0].json()
        assert body["event"] == "incident.opened" and body["incident"]["id"] == incident.pk
        assert body["environment"]["id"] == env.pk and body["incident"]["message"] == "Odoo's /web/health answered 502"
        header = hooks[0].headers[SIGNATURE_HEADER]
        assert verify_signature(SECRET, hooks[0].body, header)
        assert not verify_signature("another-secret-0123456789", hooks[0].body, header)
        assert not verify_signature(SECRET, hooks[0].body.replace(b"502", b"503"), header)
        # The README's recipe, written out: HMAC-SHA256 over "<t>." + the raw body.
        fields = dict(item.split("=", 1) for item in header.split(","))
        expected = hmac.new(SECRET.encode(), fields["t"].encode() + b"." + hooks[0].body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 60
        assert hooks[0].headers["X-Panel-Delivery"] == str(rows.get(channel=hook).pk)
        slack_body = next(r for r in receiver.requests if r.path.endswith("/slack")).json()
        assert set(slack_body) == {"text"} and f"{env} is down" in slack_body["text"]
        assert SECRET not in json.dumps([r.headers for r in receiver.requests]) + str(receiver.bodies())
        assert NotificationChannel.objects.get(pk=hook.pk).last_success_at is not None


def test_it_lets_one_claim_in_until_its_lease_expires(env: Any, orgs: Any, settings: Any) -> None:
    settings.MONITOR_NOTIFY_LEASE = 60
    channel(orgs["a"], "email", "ops@example.com")
    row = Notification.objects.get(incident=open_incident(env))
    lease = claim(row.pk)
    assert lease is not None
    assert claim(row.pk) is None and deliver(row.pk) == "skipped"  # a second worker finds it taken
    assert row.pk not in due_notifications()
    # The first worker died mid-send: once its lease is over, the row is due again and one worker takes it.
    later = lease + timedelta(seconds=1)
    assert row.pk in due_notifications(now=later)
    assert claim(row.pk, now=later) is not None
    assert claim(row.pk, now=later) is None
    assert Notification.objects.get(pk=row.pk).attempts == 2


def test_it_retries_with_backoff_then_marks_the_channel_failing_not_dropped(env: Any, orgs: Any, settings: Any) -> None:
    settings.MONITOR_NOTIFY_ATTEMPTS = 3
    settings.MONITOR_NOTIFY_BACKOFF = 10.0
    with webhook_receiver() as receiver:
        receiver.status = 500
        hook = channel(orgs["a"], "webhook", receiver.url, secret=SECRET, name="pager")
        row = Notification.objects.get(incident=open_incident(env))
        before = timezone.now()
        assert deliver(row.pk) == "pending"
        row.refresh_from_db()
        assert row.attempts == 1 and row.next_attempt_at >= before + timedelta(seconds=10)
        assert deliver(row.pk) == "skipped"  # not due before its backoff
        hook.refresh_from_db()
        assert hook.failing_since is not None and "HTTP 500" in hook.last_error and hook.consecutive_failures == 1
        first_failure = hook.failing_since
        Notification.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
        assert deliver(row.pk) == "pending"
        row.refresh_from_db()
        assert row.next_attempt_at >= timezone.now() + timedelta(seconds=19)  # 10 s, then 20 s
        Notification.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
        assert deliver(row.pk) == "failed"
        hook.refresh_from_db()
        assert hook.failing_since == first_failure and hook.consecutive_failures == 3
        note = row.incident.updates.get(kind="note")
        assert "pager" in note.message and "3 attempts" in note.message
        assert len(receiver.requests) == 3
        # The receiver is fixed: a test message goes through and the channel is no longer failing.
        receiver.status = 204
        assert send_test(hook) == (True, "The test message was delivered.")
        hook.refresh_from_db()
        assert hook.failing_since is None and hook.consecutive_failures == 0 and hook.last_success_at is not None


def test_it_reports_an_unreachable_smtp_server_on_the_channel(env: Any, orgs: Any, settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9  # discard: nothing listens
    mail = channel(orgs["a"], "email", "ops@example.com")
    ok, detail = send_test(mail)
    assert not ok and "SMTP 127.0.0.1:9" in detail
    mail.refresh_from_db()
    assert mail.failing_since is not None and mail.last_error == detail


def test_it_does_not_follow_redirects(env: Any, orgs: Any) -> None:
    with webhook_receiver() as receiver:
        receiver.status = 302
        ok, detail = send_test(channel(orgs["a"], "slack", receiver.url))
        assert not ok and "302" in detail


def test_it_refuses_private_webhook_targets_with_the_ssrf_policy(orgs: Any, settings: Any) -> None:
    validate_target("webhook", "http://127.0.0.1:8000/hook")  # off by default (tests, lab)
    settings.PANEL_BLOCK_PRIVATE_WEBHOOKS = True
    for url in ("http://127.0.0.1:8000/hook", "http://169.254.169.254/latest/", "http://10.1.2.3/", "http://[::1]/"):
        with pytest.raises(ValidationError, match="not allowed"):
            validate_target("webhook", url)
    # A channel saved before the policy was turned on is refused at send time too (DNS may change as well).
    stored = channel(orgs["a"], "slack", "http://127.0.0.1:9/x")
    ok, detail = send_test(stored)
    assert not ok and "not allowed" in detail


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        ("email", ""),
        ("email", "not-an-address"),
        ("email", "a@example.com\x00"),
        ("webhook", "ftp://example.com/x"),
        ("webhook", "https://user:pw@example.com/x"),
        ("webhook", "http://example.com:99999/"),
        ("slack", "hooks.slack.com/services/x"),
        ("slack", "https://exa\nmple.com/"),
    ],
)
def test_it_refuses_bad_targets(kind: str, target: str) -> None:
    with pytest.raises(ValidationError):
        validate_target(kind, target)


def test_it_sends_nothing_through_a_channel_disabled_meanwhile(env: Any, orgs: Any) -> None:
    mail = channel(orgs["a"], "email", "ops@example.com")
    row = Notification.objects.get(incident=open_incident(env))
    NotificationChannel.objects.filter(pk=mail.pk).update(enabled=False)
    assert deliver(row.pk) == "failed"
    row.refresh_from_db()
    assert row.last_error == "The channel was disabled." and row.sent_at is None
    NotificationChannel.objects.filter(pk=mail.pk).delete()
    assert deliver(row.pk) == "skipped"
