"""API tokens: bearer auth works, bad tokens answer 401, read tokens cannot write, only a hash is stored."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from panel.accounts.models import ApiToken
from panel.accounts.services import create_token, revoke_token
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def bearer(value: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {value}")
    return client


def test_it_authenticates_with_a_token(users: Any, inventory: Any) -> None:
    _, plain = create_token(user=users["alice"], name="ci", scope="read")
    response = bearer(plain).get("/api/v1/servers/")
    assert response.status_code == 200
    assert [item["id"] for item in response.json()["results"]] == [inventory["server_a"].pk]
    assert ApiToken.objects.get(user=users["alice"]).last_used_at is not None


def test_it_scopes_a_token_to_its_user(users: Any, inventory: Any) -> None:
    _, plain = create_token(user=users["bob"], name="ci", scope="write")
    assert bearer(plain).get(f"/api/v1/servers/{inventory['server_a'].pk}/").status_code == 404
    assert bearer(plain).patch(f"/api/v1/servers/{inventory['server_a'].pk}/", {"name": "x"}).status_code == 404


@pytest.mark.parametrize(
    "header",
    ["Bearer garbage", "Bearer dp_abc_def", "Bearer ", "Bearer a b", "Token dp_x_y", "Bearer dp_" + "x" * 500],
)
def test_it_refuses_garbage_with_401(users: Any, header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/servers/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


def test_it_refuses_expired_and_revoked_tokens_with_401(users: Any) -> None:
    expired, expired_plain = create_token(user=users["alice"], name="old", scope="write")
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked, revoked_plain = create_token(user=users["alice"], name="gone", scope="write")
    revoke_token(token=revoked, actor=users["alice"])
    assert bearer(expired_plain).get("/api/v1/servers/").status_code == 401
    assert bearer(revoked_plain).get("/api/v1/servers/").status_code == 401
    # A right prefix with a wrong secret is refused too.
    prefix = expired_plain.split("_")[1]
    _, good_plain = create_token(user=users["alice"], name="good")
    good_prefix = good_plain.split("_")[1]
    assert bearer(f"dp_{good_prefix}_wrong").get("/api/v1/servers/").status_code == 401
    assert prefix != good_prefix


def test_it_refuses_an_inactive_users_token(users: Any) -> None:
    _, plain = create_token(user=users["alice"], name="ci", scope="write")
    users["alice"].is_active = False
    users["alice"].save()
    assert bearer(plain).get("/api/v1/servers/").status_code == 401


def test_it_refuses_unsafe_methods_to_a_read_token(users: Any, orgs: Any, inventory: Any) -> None:
    _, plain = create_token(user=users["alice"], name="ro", scope="read")
    client = bearer(plain)
    server = inventory["server_a"]
    assert client.get(f"/api/v1/servers/{server.pk}/").status_code == 200
    assert client.post("/api/v1/projects/", {"organization": orgs["a"].pk, "name": "X", "slug": "x"}).status_code == 403
    assert client.patch(f"/api/v1/servers/{server.pk}/", {"name": "renamed"}).status_code == 403
    assert client.delete(f"/api/v1/environments/{inventory['env_a'].pk}/").status_code == 403
    assert client.post(f"/api/v1/servers/{server.pk}/validate/").status_code == 403
    server.refresh_from_db()
    assert server.name == "alpha-1"


def test_it_lets_a_write_token_write(users: Any, inventory: Any) -> None:
    _, plain = create_token(user=users["alice"], name="rw", scope="write")
    response = bearer(plain).patch(f"/api/v1/projects/{inventory['project_a'].pk}/", {"name": "Renamed"})
    assert response.status_code == 200, response.content


def test_it_creates_lists_and_revokes_tokens_over_a_session(users: Any) -> None:
    client = APIClient()
    assert client.login(username="alice", password=PASSWORD)
    response = client.post("/api/v1/tokens/", {"name": "deploy bot", "scope": "write", "days": 10}, format="json")
    assert response.status_code == 201, response.content
    created = response.json()
    plain = created["token"]
    assert plain.startswith("dp_")
    assert created["scope"] == "write"
    assert timedelta(days=9) < datetime.fromisoformat(created["expires_at"]) - timezone.now() <= timedelta(days=10)
    # Stored as a hash only: no column of the row holds the plain token or its secret part.
    secret = plain.split("_", 2)[2]
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_apitoken WHERE id = %s", [created["id"]])
        row = cursor.fetchone()
    assert row is not None
    assert not any(secret in str(column) or plain in str(column) for column in row)
    # Listed without the secret or its hash.
    listed = client.get("/api/v1/tokens/").json()["results"]
    assert [item["id"] for item in listed] == [created["id"]]
    assert "token" not in listed[0] and "key_hash" not in listed[0]
    assert secret not in client.get("/api/v1/tokens/").content.decode()
    # The token works, cannot mint tokens, and stops working once revoked.
    assert bearer(plain).get("/api/v1/projects/").status_code == 200
    assert bearer(plain).post("/api/v1/tokens/", {"name": "child", "scope": "write"}).status_code == 403
    assert client.delete(f"/api/v1/tokens/{created['id']}/").status_code == 204
    assert bearer(plain).get("/api/v1/projects/").status_code == 401


def test_it_keeps_tokens_private_to_their_user(users: Any) -> None:
    token, _ = create_token(user=users["alice"], name="mine")
    bob = APIClient()
    bob.force_authenticate(users["bob"])
    assert bob.get("/api/v1/tokens/").json()["results"] == []
    assert bob.delete(f"/api/v1/tokens/{token.pk}/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_it_refuses_bad_token_requests(users: Any, settings: Any) -> None:
    client = APIClient()
    client.force_authenticate(users["alice"])
    too_long = client.post("/api/v1/tokens/", {"name": "x", "days": settings.API_TOKEN_MAX_DAYS + 1}, format="json")
    assert too_long.status_code == 400
    assert "days" in too_long.json()
    bad_name = client.post("/api/v1/tokens/", {"name": "$(id)"}, format="json")
    assert bad_name.status_code == 400
    assert "name" in bad_name.json()
    bad_scope = client.post("/api/v1/tokens/", {"name": "x", "scope": "admin"}, format="json")
    assert bad_scope.status_code == 400
    assert not ApiToken.objects.exists()


def test_it_requires_authentication(db: Any) -> None:
    response = APIClient().get("/api/v1/servers/")
    assert response.status_code == 401
