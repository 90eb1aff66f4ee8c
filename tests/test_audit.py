"""The audit log records who did what, and security events that owners can read."""

from __future__ import annotations

from django.urls import reverse

from panel.accounts.models import AuditEvent
from tests.conftest import PASSWORD


def test_it_records_a_denied_access_for_the_owner_of_the_object(client, users, inventory) -> None:
    client.force_login(users["bob"])
    response = client.get(reverse("server_detail", args=[inventory["server_a"].pk]))
    assert response.status_code == 404
    event = AuditEvent.objects.get(action="access.denied")
    assert event.is_security and event.actor == users["bob"]
    assert event.organization == inventory["server_a"].organization
    assert event.object_id == str(inventory["server_a"].pk)
    # Alice, owner of A, reads it in the audit log; Bob does not see A's log.
    client.force_login(users["alice"])
    assert "access.denied" in client.get(reverse("audit_log")).content.decode()


def test_it_does_not_record_lookups_of_objects_that_do_not_exist(client, users, inventory) -> None:
    client.force_login(users["bob"])
    assert client.get(reverse("server_detail", args=[999999])).status_code == 404
    assert not AuditEvent.objects.filter(action="access.denied").exists()


def test_it_records_failed_logins_as_security_events(client, users) -> None:
    client.post(reverse("login"), {"username": "alice", "password": "wrong"})
    event = AuditEvent.objects.get(action="login.failed")
    assert event.is_security and "wrong" not in str(event.detail)
    client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert AuditEvent.objects.filter(action="login.succeeded", actor=users["alice"]).exists()
