"""The mail catcher's pages and API with a recorded Mailpit (no lab): who sees them, production's absence, the
HTML document's policy, bad ids, delete all (CSRF, audit), a catcher that cannot be reached."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from mailcatcher import services
from mailcatcher.adapters import Mailpit
from mailcatcher.views import HTML_POLICY
from panel.accounts.models import AuditEvent
from panel.inventory.models import Environment
from tests.mail_fixtures import MAILPIT_ID, Recorded, mailpit

pytestmark = pytest.mark.django_db


@pytest.fixture
def catcher(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    """Every environment's catcher is a recorded Mailpit."""
    send = mailpit()
    found = services.Catcher(service="smtp", container="0" * 64, address="10.0.0.2", port=8025, kind="mailpit")
    monkeypatch.setattr(services, "locate", lambda environment, fresh=False: found)
    monkeypatch.setattr(services, "_adapter", lambda environment, catcher: Mailpit(send))
    return send


@pytest.fixture
def test_env(inventory: dict[str, Any]) -> Environment:
    return Environment.objects.create(
        project=inventory["project_a"], server=inventory["server_a"], name="test", kind="test",
        compose_files=["test.yaml"], compose_project="shop-16-0-test",
    )  # fmt: skip


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_it_lists_searches_and_shows_mails_to_staff(
    users: dict[str, Any], test_env: Environment, catcher: Recorded
) -> None:
    victor = client_for(users["victor"])  # a viewer sees details
    page = victor.get(f"/environments/{test_env.pk}/mails/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Your invoice INV/2024/00042" in text and "Jane Smith &lt;jane@example.com&gt;" in text
    assert "Mailpit" in text and "mails-delete-all" not in text  # viewers do not delete
    found = victor.get(f"/environments/{test_env.pk}/mails/", {"q": "reset", "kind": "from", "page": "x"})
    assert found.status_code == 200 and "Password reset" in found.content.decode()
    assert catcher.calls[-1] == ("GET", "/api/v1/search", {"query": 'from:"reset"', "start": "0", "limit": "50"})
    detail = victor.get(f"/environments/{test_env.pk}/mails/{MAILPIT_ID}/")
    body = detail.content.decode()
    assert detail.status_code == 200
    assert "Dear Jane," in body and "INV_2024_00042.pdf" in body and "Return-Path" in body
    assert f'src="/environments/{test_env.pk}/mails/{MAILPIT_ID}/html/" sandbox=""' in body
    assert "<script>parent.postMessage" not in body  # the mail's HTML is never inline in the panel's page
    environment_page = victor.get(f"/environments/{test_env.pk}/").content.decode()
    assert 'data-testid="environment-mails"' in environment_page


def test_it_serves_the_html_under_a_policy_that_runs_no_script(
    users: dict[str, Any], test_env: Environment, catcher: Recorded
) -> None:
    response = client_for(users["olga"]).get(f"/environments/{test_env.pk}/mails/{MAILPIT_ID}/html/")
    assert response.status_code == 200
    assert response["Content-Security-Policy"] == HTML_POLICY
    policy = {d.strip().split(" ")[0]: d.strip() for d in HTML_POLICY.split(";")}
    assert policy["default-src"] == "default-src 'none'" and "script-src" not in policy and "sandbox" in policy
    assert response["X-Frame-Options"] == "SAMEORIGIN"
    attachment = client_for(users["olga"]).get(f"/environments/{test_env.pk}/mails/{MAILPIT_ID}/attachments/2/")
    assert attachment.status_code == 200 and attachment.content == b"%PDF-1.4 invoice"
    assert attachment["Content-Type"] == "application/octet-stream"
    assert attachment["Content-Disposition"].startswith("attachment;")


def test_it_hides_mails_from_customers_other_organizations_and_production(
    users: dict[str, Any], inventory: dict[str, Any], test_env: Environment, catcher: Recorded
) -> None:
    for user in ("carol", "bob"):
        client = client_for(users[user])
        assert client.get(f"/environments/{test_env.pk}/mails/").status_code == 404
        assert client.get(f"/environments/{test_env.pk}/mails/{MAILPIT_ID}/html/").status_code == 404
        assert api_for(users[user]).get(f"/api/v1/environments/{test_env.pk}/mails/").status_code == 404
    carol_page = client_for(users["carol"]).get(f"/environments/{test_env.pk}/").content.decode()
    assert "environment-mails" not in carol_page
    production = inventory["env_a"]
    alice = client_for(users["alice"])
    assert alice.get(f"/environments/{production.pk}/mails/").status_code == 404
    assert alice.get(f"/environments/{production.pk}/mails/{MAILPIT_ID}/").status_code == 404
    assert "environment-mails" not in alice.get(f"/environments/{production.pk}/").content.decode()
    assert api_for(users["alice"]).get(f"/api/v1/environments/{production.pk}/mails/").status_code == 404
    assert catcher.calls == []  # nothing reached the catcher


def test_it_answers_bad_ids_and_parameters_without_500(
    users: dict[str, Any], test_env: Environment, catcher: Recorded
) -> None:
    alice, api = client_for(users["alice"]), api_for(users["alice"])
    for bad in ("..", "-x", "a%20b", "x" * 300, "unknownid"):
        assert alice.get(f"/environments/{test_env.pk}/mails/{bad}/").status_code == 404, bad
        assert alice.get(f"/environments/{test_env.pk}/mails/{bad}/html/").status_code == 404, bad
    assert alice.get(f"/environments/{test_env.pk}/mails/{MAILPIT_ID}/attachments/9/").status_code == 404
    assert alice.get(f"/environments/{test_env.pk}/mails/{MAILPIT_ID}/attachments/../").status_code == 404
    assert alice.get("/environments/99999999999999999999/mails/").status_code == 404
    assert api.get(f"/api/v1/environments/{test_env.pk}/mails/", {"limit": "x"}).status_code == 400
    assert api.get(f"/api/v1/environments/{test_env.pk}/mails/", {"kind": "subject"}).status_code == 400
    assert api.get(f"/api/v1/environments/{test_env.pk}/mails/unknownid/").status_code == 404
    assert api.get("/api/v1/environments/abc/mails/").status_code == 404


def test_it_serves_the_api(users: dict[str, Any], test_env: Environment, catcher: Recorded) -> None:
    api = api_for(users["victor"])
    listing = api.get(f"/api/v1/environments/{test_env.pk}/mails/", {"q": "bob", "kind": "to", "limit": "5"})
    assert listing.status_code == 200, listing.content
    assert listing.json()["catcher"] == "mailpit" and listing.json()["total"] == 1
    assert listing.json()["results"][0]["subject"] == "Password reset"
    one = api.get(f"/api/v1/environments/{test_env.pk}/mails/{MAILPIT_ID}/")
    assert one.status_code == 200
    data = one.json()
    assert data["text"].startswith("Dear Jane,") and data["attachments"][0]["filename"] == "INV_2024_00042.pdf"
    assert {"name": "Subject", "value": "Your invoice INV/2024/00042"} in data["headers"]
    assert api.delete(f"/api/v1/environments/{test_env.pk}/mails/").status_code == 404  # a viewer
    assert ("DELETE", "/api/v1/messages", None) not in catcher.calls
    assert api_for(users["olga"]).delete(f"/api/v1/environments/{test_env.pk}/mails/").status_code == 204
    assert ("DELETE", "/api/v1/messages", None) in catcher.calls


def test_it_deletes_all_with_csrf_and_records_it(
    users: dict[str, Any], test_env: Environment, catcher: Recorded
) -> None:
    path = f"/environments/{test_env.pk}/mails/delete/"
    victor = client_for(users["victor"])
    assert victor.post(path).status_code == 404
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(users["olga"])
    assert strict.post(path).status_code == 403
    assert ("DELETE", "/api/v1/messages", None) not in catcher.calls
    response = client_for(users["olga"]).post(path)
    assert response.status_code == 302 and response["Location"] == f"/environments/{test_env.pk}/mails/"
    assert ("DELETE", "/api/v1/messages", None) in catcher.calls
    event = AuditEvent.objects.get(action="mailcatcher.delete_all")
    assert event.actor == users["olga"] and event.object_id == str(test_env.pk)


def test_it_says_why_when_the_catcher_cannot_be_reached(
    users: dict[str, Any], test_env: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(environment: Any, fresh: bool = False) -> Any:
        raise services.CatcherUnavailable("test runs no mail catcher: no running container of a service named smtp")

    monkeypatch.setattr(services, "locate", unreachable)
    page = client_for(users["alice"]).get(f"/environments/{test_env.pk}/mails/")
    assert page.status_code == 503 and "no running container of a service named smtp" in page.content.decode()
    api = api_for(users["alice"]).get(f"/api/v1/environments/{test_env.pk}/mails/")
    assert api.status_code == 503 and "smtp" in api.json()["detail"]
