"""The backup storages' API: write-only secrets, tenancy (404 for other organizations), validation (400)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from backups.models import BackupStorage
from backups.storage import open_storage
from panel.accounts.models import AuditEvent
from tests.backup_fixtures import S3Endpoint

pytestmark = pytest.mark.django_db

URL = "/api/v1/backup-storages/"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY-never-shown"
NOT_FOUND = {"detail": "Not found."}


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def s3_body(orgs: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "organization": orgs["a"].pk,
        "name": "offsite",
        "kind": "s3",
        "endpoint_url": "https://s3.example.net",
        "region": "eu-west-1",
        "bucket": "acme-backups",
        "prefix": "panel/",
        "access_key_id": "AKIAEXAMPLE",
        "secret_access_key": SECRET,
        **fields,
    }


@pytest.fixture
def alice(users: dict[str, Any]) -> APIClient:
    return client_for(users["alice"])


@pytest.fixture
def storage_id(alice: APIClient, orgs: dict[str, Any]) -> int:
    response = alice.post(URL, s3_body(orgs, encrypt=True), format="json")
    assert response.status_code == 201, response.json()
    return int(response.json()["id"])


def test_it_accepts_the_secret_and_never_answers_it(
    alice: APIClient, users: dict[str, Any], orgs: dict[str, Any], storage_id: int
) -> None:
    storage = BackupStorage.objects.get(pk=storage_id)
    assert storage.secret_access_key == SECRET and storage.encryption_keyset
    answers = [
        alice.get(URL),
        alice.get(f"{URL}{storage_id}/"),
        alice.patch(f"{URL}{storage_id}/", {"region": "eu-central-1"}, format="json"),
        client_for(users["victor"]).get(f"{URL}{storage_id}/"),
        alice.get("/api/v1/schema/?format=json"),
    ]
    for response in answers:
        assert response.status_code == 200
        text = response.content.decode()
        assert SECRET not in text and storage.encryption_keyset not in text and "keyValue" not in text
    detail = answers[1].json()
    assert "secret_access_key" not in detail and "encryption_keyset" not in detail
    assert detail["secret_access_key_set"] is True and detail["encrypt"] is True
    # A change without the secret keeps it; the audit names the fields changed, never a value.
    assert BackupStorage.objects.get(pk=storage_id).secret_access_key == SECRET
    response = alice.patch(f"{URL}{storage_id}/", {"secret_access_key": "another-secret-0123"}, format="json")
    assert response.status_code == 200 and "another-secret" not in response.content.decode()
    assert BackupStorage.objects.get(pk=storage_id).secret_access_key == "another-secret-0123"
    events = AuditEvent.objects.filter(action__startswith="backup_storage.")
    assert {e.action for e in events} == {"backup_storage.created", "backup_storage.updated"}
    dumped = json.dumps([e.detail for e in events])
    assert SECRET not in dumped and "another-secret" not in dumped and "secret_access_key" in dumped


def test_it_answers_404_to_other_organizations_and_customers(
    users: dict[str, Any], orgs: dict[str, Any], storage_id: int
) -> None:
    for name in ("bob", "carol"):
        client = client_for(users[name])
        assert client.get(URL).json()["results"] == []
        for method in ("get", "patch", "delete"):
            response = getattr(client, method)(f"{URL}{storage_id}/", {"name": "mine"}, format="json")
            assert (response.status_code, response.json()) == (404, NOT_FOUND), (name, method)
    # A viewer reads, but may not change or delete.
    victor = client_for(users["victor"])
    assert victor.get(f"{URL}{storage_id}/").status_code == 200
    assert victor.patch(f"{URL}{storage_id}/", {"name": "x"}, format="json").status_code == 404
    assert victor.delete(f"{URL}{storage_id}/").status_code == 404
    # Creating in an organization one cannot see: as if it did not exist; in one's own as a viewer: 403.
    bob = client_for(users["bob"])
    response = bob.post(URL, s3_body(orgs), format="json")
    assert response.status_code == 400 and "organization" in response.json()
    assert victor.post(URL, s3_body(orgs, name="v"), format="json").status_code == 403
    assert BackupStorage.objects.get(pk=storage_id).name == "offsite"
    assert client_for(users["alice"]).delete(f"{URL}{storage_id}/").status_code == 204
    assert not BackupStorage.objects.filter(pk=storage_id).exists()


def test_it_refuses_paths_prefixes_and_endpoints_that_escape(
    alice: APIClient, orgs: dict[str, Any], backup_root: Path, settings: Any
) -> None:
    local = {"organization": orgs["a"].pk, "name": "disk", "kind": "local"}
    for fields in (
        {"path": "/etc"},
        {"path": str(backup_root / ".." / "x")},
        {"path": "backups"},
        {"path": str(backup_root), "prefix": "../up"},
        {"path": str(backup_root), "prefix": "/root"},
        {"path": str(backup_root), "prefix": "a/../../b"},
        {"path": str(backup_root), "bucket": "also-s3"},
        {"path": ""},
    ):
        response = alice.post(URL, {**local, **fields}, format="json")
        assert response.status_code == 400, (fields, response.json())
    for fields in (
        {"endpoint_url": "file:///etc/passwd"},
        {"endpoint_url": "https://user:pw@s3.example.net"},
        {"endpoint_url": "http://[::1"},
        {"endpoint_url": "http://s3.example.net:99999"},
        {"bucket": "../etc"},
        {"bucket": ""},
        {"access_key_id": "a b"},
        {"secret_access_key": ""},
        {"region": "eu west"},
        {"kind": "ftp"},
    ):
        response = alice.post(URL, s3_body(orgs, **fields), format="json")
        assert response.status_code == 400, (fields, response.json())
    settings.PANEL_BLOCK_PRIVATE_S3_ENDPOINTS = True
    for url in ("http://127.0.0.1:9000", "http://169.254.169.254/", "http://[::1]:9000"):
        response = alice.post(URL, s3_body(orgs, endpoint_url=url), format="json")
        assert response.status_code == 400 and "not allowed" in str(response.json()["endpoint_url"])
    assert not BackupStorage.objects.exists()
    response = alice.post(URL, {**local, "path": str(backup_root / "panel")}, format="json")
    assert response.status_code == 201, response.json()
    # The kind is fixed once created.
    response = alice.patch(f"{URL}{response.json()['id']}/", {"kind": "s3"}, format="json")
    assert response.status_code == 400 and "kind" in response.json()


def test_it_stores_through_a_storage_created_by_the_api(
    alice: APIClient, orgs: dict[str, Any], moto_s3: S3Endpoint
) -> None:
    moto_s3.client().create_bucket(Bucket="api-made")
    body = s3_body(
        orgs,
        endpoint_url=moto_s3.url,
        bucket="api-made",
        region="us-east-1",
        addressing_style="path",
        access_key_id=moto_s3.access_key_id,
        secret_access_key=moto_s3.secret_access_key,
        encrypt=True,
    )
    response = alice.post(URL, body, format="json")
    assert response.status_code == 201, response.json()
    storage = open_storage(BackupStorage.objects.get(pk=response.json()["id"]))
    stored = storage.put_bytes("probe", b"hello")
    assert stored.encrypted and [o.key for o in storage.list()] == ["probe"]
    with storage.reader("probe", expected=stored) as stream:
        assert stream.read() == b"hello"


def test_it_checks_that_a_storage_really_stores(
    alice: APIClient, users: dict[str, Any], orgs: dict[str, Any], rclone_s3: S3Endpoint, settings: Any
) -> None:
    rclone_s3.client().create_bucket(Bucket="api-check")
    body = s3_body(
        orgs,
        endpoint_url=rclone_s3.url,
        bucket="api-check",
        region="us-east-1",
        addressing_style="path",
        access_key_id=rclone_s3.access_key_id,
        secret_access_key=rclone_s3.secret_access_key,
    )
    storage_id = alice.post(URL, body, format="json").json()["id"]
    response = alice.post(f"{URL}{storage_id}/check/")
    assert response.status_code == 200 and response.json()["ok"] is True, response.json()
    assert "read them back with the same SHA-256" in response.json()["detail"]
    assert open_storage(BackupStorage.objects.get(pk=storage_id)).stat("x") is None
    assert list(open_storage(BackupStorage.objects.get(pk=storage_id)).list()) == []
    # Wrong credentials: the check says so (a listing-only check might not).
    response = alice.patch(f"{URL}{storage_id}/", {"secret_access_key": "wrong-secret-000"}, format="json")
    assert response.status_code == 200
    wrong = alice.post(f"{URL}{storage_id}/check/").json()
    assert wrong["ok"] is False and "wrong-secret" not in wrong["detail"], wrong
    assert "SignatureDoesNotMatch" in wrong["detail"] or "AccessDenied" in wrong["detail"], wrong
    # Nothing listens on the endpoint any more.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    alice.patch(f"{URL}{storage_id}/", {"endpoint_url": f"http://127.0.0.1:{port}"}, format="json")
    started = time.monotonic()
    failed = alice.post(f"{URL}{storage_id}/check/").json()
    assert failed["ok"] is False and "Uploading panel/panel-check/" in failed["detail"]
    assert time.monotonic() - started < 30
    for name in ("bob", "victor", "carol"):
        response = client_for(users[name]).post(f"{URL}{storage_id}/check/")
        assert (response.status_code, response.json()) == (404, NOT_FOUND)
