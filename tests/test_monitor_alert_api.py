"""The alert API and pages: channels (write-only secrets, masked URLs, test action), maintenance windows, incidents
(open first, customers see their own environments' only, without staff notes), tenancy (404), bad input (400)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from monitoring import checks
from monitoring.incidents import observe
from monitoring.models import Incident, MaintenanceWindow, NotificationChannel
from panel.accounts.models import AuditEvent
from tests.alert_receivers import webhook_receiver

pytestmark = pytest.mark.django_db

CHANNELS = "/api/v1/notification-channels/"
WINDOWS = "/api/v1/maintenance-windows/"
INCIDENTS = "/api/v1/incidents/"
SECRET = "whsec-0123456789abcdef-never-shown"
SLACK = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def page(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def fail(env: Any, name: str = checks.AVAILABILITY, cycles: int = 3, start: Any = None) -> Incident:
    at = start or timezone.now()
    for step in range(cycles):
        observe(env, name, "failing", f"{name} fails", at=at + timedelta(seconds=step))
    return Incident.objects.get(environment=env, check_name=name, closed_at__isnull=True)


def test_it_never_answers_the_secret_nor_a_webhook_url(users: Any, orgs: Any) -> None:
    alice = api(users["alice"])
    response = alice.post(
        CHANNELS,
        {"organization": orgs["a"].pk, "name": "pager", "kind": "webhook", "target": "https://hooks.example.com/t0ken",
         "secret": SECRET},
        format="json",
    )  # fmt: skip
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["target"] == "https://hooks.example.com/…" and body["secret_set"] is True and "secret" not in body
    slack = alice.post(
        CHANNELS, {"organization": orgs["a"].pk, "name": "chat", "kind": "slack", "target": SLACK}, format="json"
    )
    assert slack.status_code == 201, slack.json()
    listed = alice.get(CHANNELS).content.decode() + alice.get(f"{CHANNELS}{body['id']}/").content.decode()
    html = page(users["alice"]).get("/notification-channels/").content.decode()
    for text in (listed, html):
        assert SECRET not in text and "t0ken" not in text and "XXXXSECRETXXXX" not in text
    # PATCH without the secret keeps it; a blank secret keeps it too.
    assert alice.patch(f"{CHANNELS}{body['id']}/", {"name": "pager 2", "secret": ""}, format="json").status_code == 200
    channel = NotificationChannel.objects.get(pk=body["id"])
    assert channel.secret == SECRET and channel.name == "pager 2"
    audit = AuditEvent.objects.filter(action__startswith="notification_channel.")
    assert audit.count() == 3 and SECRET not in str(list(audit.values_list("detail", flat=True)))


def test_it_lets_staff_read_owners_change_and_nobody_else_see_channels(users: Any, orgs: Any) -> None:
    channel = NotificationChannel.objects.create(organization=orgs["a"], name="ops", kind="email", target="o@x.org")
    url = f"{CHANNELS}{channel.pk}/"
    assert api(users["victor"]).get(url).status_code == 200  # viewer reads
    assert api(users["victor"]).patch(url, {"name": "v"}, format="json").status_code == 404
    assert api(users["victor"]).post(f"{url}test/").status_code == 404
    for outsider in ("carol", "bob"):  # the provider's customer, another organization
        assert api(users[outsider]).get(url).status_code == 404
        assert api(users[outsider]).get(CHANNELS).json()["results"] == []
    assert page(users["carol"]).get("/notification-channels/").status_code == 404
    bravo = page(users["bob"]).get("/notification-channels/")
    assert bravo.status_code == 200 and "o@x.org" not in bravo.content.decode()
    assert api(users["olga"]).delete(url).status_code == 204
    created = api(users["victor"]).post(
        CHANNELS, {"organization": orgs["a"].pk, "name": "x", "kind": "email", "target": "a@b.org"}, format="json"
    )
    assert created.status_code == 403


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "webhook", "target": "https://hooks.example.com/x"},  # no secret
        {"kind": "webhook", "target": "https://hooks.example.com/x", "secret": "short"},
        {"kind": "email", "target": "ops@example.com\x00"},
        {"kind": "email", "target": "a@b.org", "name": "n\x00"},
        {"kind": "email", "target": "a@b.org", "muted": True},  # only an override can be muted
        {"kind": "slack", "target": "javascript:alert(1)"},
        {"kind": "sms", "target": "+100"},
    ],
)
def test_it_refuses_bad_channels_with_400(users: Any, orgs: Any, fields: dict[str, Any]) -> None:
    body = {"organization": orgs["a"].pk, "name": "n", **fields}
    assert api(users["alice"]).post(CHANNELS, body, format="json").status_code == 400


def test_it_refuses_an_override_for_another_organizations_environment(users: Any, orgs: Any, inventory: Any) -> None:
    body = {"organization": orgs["a"].pk, "name": "n", "kind": "email", "target": "a@b.org"}
    ok = api(users["alice"]).post(CHANNELS, {**body, "environment": inventory["env_a"].pk}, format="json")
    assert ok.status_code == 400  # env_a belongs to A1, not A
    assert "same organization" in str(ok.json())
    good = api(users["alice"]).post(
        CHANNELS, {**body, "organization": orgs["a1"].pk, "environment": inventory["env_a"].pk}, format="json"
    )
    assert good.status_code == 201
    bravo = api(users["alice"]).post(CHANNELS, {**body, "environment": inventory["env_b"].pk}, format="json")
    assert bravo.status_code == 400 and "does not exist" in str(bravo.json())


def test_it_sends_a_test_message_and_shows_a_failing_channel(users: Any, orgs: Any) -> None:
    with webhook_receiver() as receiver:
        receiver.status = 503
        channel = NotificationChannel.objects.create(
            organization=orgs["a"], name="pager", kind="webhook", target=receiver.url, secret=SECRET
        )
        response = api(users["olga"]).post(f"{CHANNELS}{channel.pk}/test/")
        assert response.status_code == 200
        assert response.json()["ok"] is False and "HTTP 503" in response.json()["detail"]
        shown = api(users["victor"]).get(f"{CHANNELS}{channel.pk}/").json()
        assert shown["failing"] is True and "HTTP 503" in shown["last_error"] and shown["failing_since"]
        html = page(users["victor"]).get("/notification-channels/").content.decode()
        assert "failing" in html and "HTTP 503" in html
        receiver.status = 200
        result = page(users["alice"]).post(f"/notification-channels/{channel.pk}/test/", follow=True)
        assert "The test message was delivered." in result.content.decode()
        assert receiver.requests[-1].json()["event"] == "test"
        assert api(users["victor"]).get(f"{CHANNELS}{channel.pk}/").json()["failing"] is False


def test_it_plans_and_ends_a_maintenance_window(users: Any, orgs: Any, inventory: Any) -> None:
    now = timezone.now()
    body = {"organization": orgs["a1"].pk, "environment": inventory["env_a"].pk, "starts_at": now.isoformat(),
            "ends_at": (now + timedelta(hours=2)).isoformat(), "reason": "upgrade"}  # fmt: skip
    created = api(users["olga"]).post(WINDOWS, body, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["active"] is True and created.json()["created_by"] == users["olga"].pk
    assert api(users["victor"]).get(WINDOWS).json()["count"] == 1
    assert api(users["carol"]).get(WINDOWS).json()["count"] == 0
    assert api(users["bob"]).post(f"{WINDOWS}{created.json()['id']}/end/").status_code == 404
    ended = api(users["olga"]).post(f"{WINDOWS}{created.json()['id']}/end/")
    assert ended.status_code == 200 and ended.json()["active"] is False
    assert MaintenanceWindow.objects.get().ends_at <= timezone.now()
    for bad in (
        {**body, "ends_at": body["starts_at"]},
        {**body, "ends_at": (now + timedelta(days=40)).isoformat()},
        {**body, "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2020-01-01T01:00:00Z"},
        {**body, "environment": inventory["env_b"].pk},
        {**body, "reason": "x\x00"},
        {**body, "starts_at": "tomorrow"},
    ):
        assert api(users["olga"]).post(WINDOWS, bad, format="json").status_code == 400
    # The page: plan one, see it, end it.
    client = page(users["alice"])
    form = {"organization": orgs["a1"].pk, "environment": "", "starts_at": now.strftime("%Y-%m-%dT%H:%M"),
            "ends_at": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"), "reason": "whole org"}  # fmt: skip
    response = client.post("/maintenance-windows/", form, follow=True)
    assert "Maintenance window planned" in response.content.decode()
    window = MaintenanceWindow.objects.get(reason="whole org")
    assert window.environment is None and window.created_by == users["alice"]
    assert "End now" in client.get("/maintenance-windows/").content.decode()
    client.post(f"/maintenance-windows/{window.pk}/end/")
    window.refresh_from_db()
    assert window.ends_at <= timezone.now()
    assert page(users["carol"]).get("/maintenance-windows/").status_code == 404


def test_it_lists_open_incidents_first_and_scopes_them(users: Any, orgs: Any, inventory: Any) -> None:
    env_a, env_b = inventory["env_a"], inventory["env_b"]
    old = fail(env_a, checks.WEBSOCKET, start=timezone.now() - timedelta(hours=5))
    for step in range(2):
        observe(env_a, checks.WEBSOCKET, "ok", "8072 answers", at=timezone.now() - timedelta(hours=4, seconds=-step))
    now = timezone.now()
    MaintenanceWindow.objects.create(organization=orgs["a1"], starts_at=now, ends_at=now + timedelta(minutes=1))
    current = fail(env_a, start=now + timedelta(seconds=1))  # suppressed: a staff note on its timeline
    fail(env_b)
    alice = api(users["alice"]).get(INCIDENTS).json()["results"]
    assert [i["id"] for i in alice] == [current.pk, old.pk]
    assert alice[0]["open"] is True and alice[1]["open"] is False and alice[0]["suppressed"] is True
    assert [u["kind"] for u in alice[0]["updates"]] == ["opened", "note"]
    carol = api(users["carol"]).get(INCIDENTS).json()["results"]
    assert [i["id"] for i in carol] == [current.pk, old.pk]
    assert "suppressed" not in carol[0] and [u["kind"] for u in carol[0]["updates"]] == ["opened"]
    assert "availability fails" not in str(carol) and "message" not in carol[0]  # checks' words may name servers
    assert carol[0]["updates"][0]["message"] == "The problem was detected; the hosting team is told."
    assert [i["environment"] for i in api(users["bob"]).get(INCIDENTS).json()["results"]] == [env_b.pk]
    assert api(users["bob"]).get(f"{INCIDENTS}{current.pk}/").status_code == 404
    assert [i["id"] for i in api(users["alice"]).get(INCIDENTS, {"open": "false"}).json()["results"]] == [old.pk]
    assert api(users["alice"]).get(INCIDENTS, {"environment": env_b.pk}).json()["results"] == []
    for bad in ({"environment": "x"}, {"environment": "99999999999999999999"}, {"open": "maybe"}):
        assert api(users["alice"]).get(INCIDENTS, bad).status_code == 400
    assert api(users["alice"]).post(INCIDENTS, {}).status_code == 405
    # The pages: the list and the timeline; the customer sees no staff note and no deliveries.
    listed = page(users["carol"]).get("/incidents/").content.decode()
    assert current.title in listed and "Bravo" not in listed
    detail = page(users["carol"]).get(f"/incidents/{current.pk}/").content.decode()
    assert "No alerts" not in detail and "Messages sent" not in detail and "The problem was detected" in detail
    assert "availability fails" not in detail
    staff = page(users["alice"]).get(f"/incidents/{current.pk}/").content.decode()
    assert "No alerts: Maintenance window" in staff and "Messages sent" in staff and "availability fails" in staff
    assert page(users["bob"]).get(f"/incidents/{current.pk}/").status_code == 404


def test_it_adds_and_edits_a_channel_on_the_page_keeping_url_and_secret(users: Any, orgs: Any) -> None:
    client = page(users["alice"])
    assert client.get("/notification-channels/new/").status_code == 200
    form = {"organization": orgs["a"].pk, "environment": "", "name": "pager", "kind": "webhook",
            "target": "https://hooks.example.com/t0ken", "secret": SECRET, "enabled": "on"}  # fmt: skip
    response = client.post("/notification-channels/new/", form, follow=True)
    assert "Channel pager added" in response.content.decode()
    channel = NotificationChannel.objects.get()
    edit = client.get(f"/notification-channels/{channel.pk}/edit/").content.decode()
    assert "t0ken" not in edit and SECRET not in edit
    client.post(f"/notification-channels/{channel.pk}/edit/", {**form, "name": "pager 2", "target": "", "secret": ""})
    channel.refresh_from_db()
    assert (channel.name, channel.target, channel.secret) == ("pager 2", "https://hooks.example.com/t0ken", SECRET)
    bad = client.post("/notification-channels/new/", {**form, "secret": ""})
    assert bad.status_code == 200 and "needs a signing secret" in bad.content.decode()
    assert page(users["victor"]).get("/notification-channels/new/").status_code == 404
    client.post(f"/notification-channels/{channel.pk}/delete/")
    assert not NotificationChannel.objects.exists()
