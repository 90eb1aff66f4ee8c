"""Odoo dump zips through the API, without the lab: the upload stored as (encrypted) parts and read back seekable;
zip-slip, bomb and wrong-version zips refused with 400 before anything is recorded or restored (and nothing kept in
the storage); who may import (owners and operators; production needs its name typed) and who may download
(staff; customers only with their organization's policy); traversal attempts answer 404.

No worker runs here: an accepted import queues its restore job, which stays queued.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from backups.models import Backup, BackupPolicy, BackupSettings
from backups.odoozip import write_odoo_zip
from backups.storage import StorageError, open_storage
from backups.zipimport import ZipUploadWriter, close_reader, open_stored_zip, zip_parts
from panel.accounts.models import AuditEvent
from panel.jobs.models import Job
from tests.backup_fixtures import make_local_storage

pytestmark = pytest.mark.django_db

MANIFEST = {
    "odoo_dump": "1",
    "db_name": "shop",
    "version": "16.0",
    "version_info": [16, 0, 0, "final", 0, ""],
    "major_version": "16.0",
    "pg_version": "15.0",
    "modules": {"base": "16.0.1.3", "web": "16.0.1.0"},
}


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def sha1_name(data: bytes) -> str:
    digest = hashlib.sha1(data).hexdigest()
    return f"{digest[:2]}/{digest}"


def odoo_zip(files: dict[str, bytes] | None = None, manifest: dict[str, Any] | None = None, sql: bytes = b"") -> bytes:
    files = files if files is not None else {sha1_name(b"hello"): b"hello"}
    sink = io.BytesIO()
    write_odoo_zip(
        sink,
        dump_sql=io.BytesIO(sql or b"CREATE TABLE t (id int);\n"),
        filestore=[(name, io.BytesIO(data)) for name, data in files.items()],
        manifest=manifest or MANIFEST,
    )
    return sink.getvalue()


def raw_zip(members: dict[str, bytes]) -> bytes:
    """A zip with exactly these member names (zipfile keeps '..' in a name it is given)."""
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return sink.getvalue()


@pytest.fixture
def configured(inventory: dict[str, Any], backup_root: Path) -> dict[str, Any]:
    env = inventory["env_a"]  # production of org A1 (managed by A)
    storage = make_local_storage(env.project.organization, backup_root, encrypt=True)
    BackupSettings.objects.create(environment=env, storage=storage)
    env.project.odoo_version = "16.0"
    env.project.save(update_fields=["odoo_version"])
    return {**inventory, "storage": storage, "root": backup_root}


def stored_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def post_zip(user: Any, env: Any, body: bytes, confirm: str | None = "prod", **extra: Any) -> Any:
    url = f"/api/v1/environments/{env.pk}/import-zip/"
    if confirm is not None:
        url += f"?confirm={confirm}"
    return client_for(user).generic("POST", url, body, content_type=extra.pop("content_type", "application/zip"))


def test_it_stores_an_upload_as_encrypted_parts_and_reads_the_zip_back_seeking_in_them(configured) -> None:
    storage = open_storage(configured["storage"])
    files = {sha1_name(data): data for data in (os.urandom(300_000), os.urandom(150_000), b"small")}
    data = odoo_zip(files, sql=b"-- sql\n" + os.urandom(200_000).hex().encode())
    writer = ZipUploadWriter(storage, "backups/t/1", part_size=64 * 1024, max_size=10**9)
    for start in range(0, len(data), 10_000):  # chunks that do not align with the parts
        writer.write(data[start : start + 10_000])
    parts = writer.close()
    assert len(parts) == -(-len(data) // (64 * 1024)) and all(part.encrypted for part in parts)
    raw = b"".join((configured["root"] / part.key).read_bytes() for part in parts)
    assert b"hello" not in raw and data[:200] not in raw  # encrypted at rest
    reader = open_stored_zip(storage, parts)
    try:
        assert reader.manifest.db_name == "shop"
        with reader.open_dump() as dump:
            assert dump.read().startswith(b"-- sql\n")
        assert {path: stream.read() for path, stream in reader.iter_filestore()} == files
        # The tail, the manifest, then forward through the members: each part opened a few times, not per read.
        assert reader._stored.opened <= 3 * len(parts)  # type: ignore[attr-defined]
    finally:
        close_reader(reader)
    writer.abort()
    assert stored_files(configured["root"]) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            raw_zip(
                {
                    "dump.sql": b"x",
                    "manifest.json": json.dumps(MANIFEST).encode(),
                    "filestore/../../../etc/cron.d/evil": b"* * * * * root sh",
                }
            ),
            "points outside",
        ),
        (raw_zip({"dump.sql": b"\0" * (20 * 1024 * 1024), "manifest.json": json.dumps(MANIFEST).encode()}), "zip bomb"),
        (raw_zip({"dump.sql": b"x", "/etc/passwd": b"root"}), "absolute path"),
        (b"this is not a zip at all", "not a zip"),
        (
            odoo_zip(
                manifest={
                    **MANIFEST,
                    "version": "15.0",
                    "version_info": [15, 0, 0, "final", 0, ""],
                    "major_version": "15.0",
                }
            ),
            "runs Odoo 16.0",
        ),
    ],
    ids=["zip-slip", "bomb", "absolute", "not-a-zip", "other-odoo"],
)
def test_it_refuses_a_dangerous_or_foreign_zip_with_400_and_keeps_nothing(configured, users, body, message) -> None:
    env = configured["env_a"]
    response = post_zip(users["olga"], env, body)
    assert response.status_code == 400, response.content
    assert message in response.json()["detail"]
    assert not Backup.objects.exists() and not Job.objects.exists()
    assert stored_files(configured["root"]) == []


def test_it_imports_a_zip_into_production_only_with_its_name_typed_and_queues_the_restore(configured, users) -> None:
    env = configured["env_a"]
    body = odoo_zip()
    for confirm in (None, "", "Prod"):
        response = post_zip(users["olga"], env, body, confirm=confirm)
        assert response.status_code == 400 and "Type the environment's name (prod)" in response.json()["detail"]
    assert stored_files(configured["root"]) == [] and not Job.objects.exists()
    response = post_zip(users["olga"], env, body, content_type="application/json")
    assert response.status_code == 415
    response = post_zip(users["olga"], env, body)
    assert response.status_code == 202, response.content
    backup = Backup.objects.get(pk=response.json()["backup"])
    job = Job.objects.get(pk=response.json()["job"]["id"])
    assert backup.kind == "imported" and backup.status == "good" and backup.environment == env
    assert backup.manifest["source"] == "odoo-zip" and backup.manifest["odoo"]["image_version"] == "16.0"
    assert backup.manifest["zip"]["size"] == len(body) and backup.manifest["zip"]["files"] == 1
    assert job.kind == "restore" and job.params == {"environment_id": env.pk, "backup_id": backup.pk}
    assert AuditEvent.objects.filter(action="environment.import_zip").exists()
    # The environment is now held by the restore job: another import is refused before its body is stored.
    files_before = stored_files(configured["root"])
    again = post_zip(users["alice"], env, body)
    assert again.status_code == 409 and again.json()["job"] == job.pk
    assert stored_files(configured["root"]) == files_before
    # And the imported backup downloads as the very zip that was uploaded.
    download = client_for(users["victor"]).get(f"/api/v1/backups/{backup.pk}/download/")
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    assert download["Content-Disposition"].startswith('attachment; filename="shop-16-0-prod_')
    assert b"".join(download.streaming_content) == body


def test_it_lets_only_owners_and_operators_of_the_environment_import(configured, users) -> None:
    env, other = configured["env_a"], configured["env_b"]
    for name in ("victor", "carol", "bob"):
        response = post_zip(users[name], env, odoo_zip())
        assert response.status_code in (403, 404), (name, response.status_code)
    assert post_zip(users["alice"], other, odoo_zip(), confirm="prod").status_code == 404
    assert not Job.objects.exists() and stored_files(configured["root"]) == []


def test_it_downloads_for_staff_and_for_customers_only_when_their_organization_allows_it(configured, users) -> None:
    env = configured["env_a"]
    accepted = post_zip(users["alice"], env, odoo_zip())
    assert accepted.status_code == 202
    backup_id = accepted.json()["backup"]
    url = f"/api/v1/backups/{backup_id}/download/"
    assert client_for(users["bob"]).get(url).status_code == 404  # another organization
    assert client_for(users["carol"]).get(url).status_code == 404  # a customer, no policy
    policy_url = f"/api/v1/backup-policies/{env.project.organization_id}/"
    assert client_for(users["carol"]).get(policy_url).json() == {
        "organization": env.project.organization_id, "customers_may_download": False,
    }  # fmt: skip
    for name in ("carol", "olga", "bob"):  # only owners change it (bob: another organization)
        answer = client_for(users[name]).patch(policy_url, {"customers_may_download": True}, format="json")
        assert answer.status_code == 404, name
    answer = client_for(users["alice"]).patch(policy_url, {"customers_may_download": True}, format="json")
    assert answer.status_code == 200 and answer.json()["customers_may_download"] is True
    assert BackupPolicy.objects.get(organization=env.project.organization).customers_may_download
    assert AuditEvent.objects.filter(action="organization.backup_policy").exists()
    response = client_for(users["carol"]).get(url)
    assert response.status_code == 200 and b"".join(response.streaming_content).startswith(b"PK")
    assert client_for(users["bob"]).get(url).status_code == 404
    # A customer still gets nothing of an environment that is not production.
    env.kind = "staging"
    env.save(update_fields=["kind"])
    assert client_for(users["carol"]).get(url).status_code == 404


def test_it_answers_404_to_download_paths_that_try_to_escape_and_400_to_a_manifest_that_does(configured, users) -> None:
    env = configured["env_a"]
    accepted = post_zip(users["alice"], env, odoo_zip())
    backup = Backup.objects.get(pk=accepted.json()["backup"])
    client = client_for(users["alice"])
    for path in (
        f"/api/v1/backups/..%2F{backup.pk}/download/",
        f"/api/v1/backups/{backup.pk}%2F..%2F{backup.pk}/download/",
        f"/api/v1/backups/{backup.pk}/download/..%2F..%2Fmanifest.json",
        "/api/v1/backups/-1/download/",
        "/api/v1/backups/99999999999999999999999/download/",
        f"/api/v1/backups/{backup.pk}.json/download/",
    ):
        assert client.get(path).status_code == 404, path
    for key in ("../../etc/passwd", f"backups/other-project/x/{Path(backup.key_prefix).name}", "/abs"):
        objects = [{**entry, "key": key} for entry in backup.manifest["objects"]]
        Backup.objects.filter(pk=backup.pk).update(manifest={**backup.manifest, "objects": objects})
        response = client.get(f"/api/v1/backups/{backup.pk}/download/")
        assert response.status_code == 400, key
        assert "outside its prefix" in response.json()["detail"] or "does not read" in response.json()["detail"]


def page_client(user: Any, **kwargs: Any) -> Any:
    from django.test import Client

    client = Client(**kwargs)
    client.force_login(user)
    return client


def upload_form(body: bytes, **fields: str) -> dict[str, Any]:
    upload = io.BytesIO(body)
    upload.name = "shop.zip"
    return {"zip": upload, **fields}


def test_it_imports_from_the_environment_page_streaming_the_file_into_the_storage(configured, users) -> None:
    env = configured["env_a"]
    page = page_client(users["olga"]).get(f"/environments/{env.pk}/")
    assert b'data-testid="import-zip-form"' in page.content and b'data-testid="import-zip-confirm"' in page.content
    url = f"/environments/{env.pk}/import-zip/"
    # Production without its name typed, and a bomb: back to the page with the reason, nothing kept.
    answer = page_client(users["olga"]).post(url, upload_form(odoo_zip()), follow=True)
    assert b"Type the environment&#x27;s name (prod)" in answer.content
    bomb = raw_zip({"dump.sql": b"\0" * (20 * 1024 * 1024), "manifest.json": json.dumps(MANIFEST).encode()})
    answer = page_client(users["olga"]).post(url, upload_form(bomb, confirm="prod"), follow=True)
    assert b"zip bomb" in answer.content
    # Without the CSRF token the upload is refused, and what was streamed is removed again.
    forged = page_client(users["olga"], enforce_csrf_checks=True).post(url, upload_form(odoo_zip(), confirm="prod"))
    assert forged.status_code == 403
    assert not Backup.objects.exists() and not Job.objects.exists() and stored_files(configured["root"]) == []
    # Viewers and customers cannot post it at all.
    for name in ("victor", "carol", "bob"):
        assert page_client(users[name]).post(url, upload_form(odoo_zip(), confirm="prod")).status_code == 404
    answer = page_client(users["olga"]).post(url, upload_form(odoo_zip(), confirm="prod"))
    backup = Backup.objects.get(kind="imported")
    job = Job.objects.get(kind="restore")
    assert answer.status_code == 302 and answer["Location"] == f"/jobs/{job.pk}/"
    assert backup.manifest["zip"]["filename"] == "shop.zip" and job.params["backup_id"] == backup.pk
    # Its row in the backup list has a download link.
    page = page_client(users["victor"]).get(f"/environments/{env.pk}/")
    assert f'href="/api/v1/backups/{backup.pk}/download/"'.encode() in page.content


def test_it_lets_owners_switch_customer_downloads_on_the_environment_page(configured, users) -> None:
    env = configured["env_a"]
    accepted = post_zip(users["alice"], env, odoo_zip())
    assert accepted.status_code == 202
    link = f'href="/api/v1/backups/{accepted.json()["backup"]}/download/"'.encode()
    assert link not in page_client(users["carol"]).get(f"/environments/{env.pk}/").content
    assert b"customers-may-download" not in page_client(users["olga"]).get(f"/environments/{env.pk}/").content
    url = f"/environments/{env.pk}/backup-policy/"
    assert page_client(users["olga"]).post(url, {"customers_may_download": "on"}).status_code == 404
    assert page_client(users["carol"]).post(url, {"customers_may_download": "on"}).status_code == 404
    assert b"customers-may-download" in page_client(users["alice"]).get(f"/environments/{env.pk}/").content
    assert page_client(users["alice"]).post(url, {"customers_may_download": "on"}).status_code == 302
    assert BackupPolicy.objects.get(organization=env.project.organization).customers_may_download
    assert link in page_client(users["carol"]).get(f"/environments/{env.pk}/").content
    assert page_client(users["alice"]).post(url, {}).status_code == 302
    assert not BackupPolicy.objects.get(organization=env.project.organization).customers_may_download


def test_it_verifies_an_imported_zip_like_any_backup_and_finds_an_altered_part(configured, users) -> None:
    from backups.verify import verify_objects

    accepted = post_zip(users["alice"], configured["env_a"], odoo_zip({sha1_name(b"x" * 5000): b"x" * 5000}))
    backup = Backup.objects.get(pk=accepted.json()["backup"])
    storage = open_storage(configured["storage"])
    report = verify_objects(storage, backup.manifest)
    assert report.ok and report.objects == len(backup.manifest["objects"]) + 1  # the parts and the manifest
    part = configured["root"] / backup.manifest["objects"][0]["key"]
    data = bytearray(part.read_bytes())
    data[-20] ^= 1
    part.write_bytes(bytes(data))
    report = verify_objects(storage, backup.manifest)
    assert not report.ok and backup.manifest["objects"][0]["key"] in report.problems[0]


def test_it_imports_into_an_encrypted_s3_storage_and_downloads_the_same_bytes(configured, users, moto_s3) -> None:
    from tests.backup_fixtures import make_s3_storage

    env = configured["env_a"]
    bucket = "zips-" + os.urandom(4).hex()
    moto_s3.client().create_bucket(Bucket=bucket)
    storage_row = make_s3_storage(env.project.organization, moto_s3, bucket, name="s3", encrypt=True)
    BackupSettings.objects.filter(environment=env).update(storage=storage_row)
    files = {sha1_name(data): data for data in (os.urandom(120_000), b"tiny")}
    body = odoo_zip(files)
    accepted = post_zip(users["olga"], env, body)
    assert accepted.status_code == 202, accepted.content
    backup = Backup.objects.get(pk=accepted.json()["backup"])
    keys = [item["Key"] for item in moto_s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert sorted(keys) == sorted(
        entry["key"] for entry in [*backup.manifest["objects"], backup.manifest["manifest_object"]]
    )
    reader = open_stored_zip(open_storage(storage_row), zip_parts(backup))
    try:
        assert {path: stream.read() for path, stream in reader.iter_filestore()} == files
    finally:
        close_reader(reader)
    download = client_for(users["alice"]).get(f"/api/v1/backups/{backup.pk}/download/")
    assert download.status_code == 200 and b"".join(download.streaming_content) == body


def custom_dump(sql: str) -> bytes:
    """A ``pg_dump --format=custom`` of a scratch database holding ``sql``, written to a pipe (as the backup job's)."""
    import subprocess

    import psycopg
    from django.conf import settings

    base = settings.DATABASES["default"]
    dsn = f"postgresql://{base['USER']}:{base['PASSWORD']}@{base['HOST']}:{base['PORT']}"
    name = f"zipsrc_{os.urandom(4).hex()}"
    with psycopg.connect(f"{dsn}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(f"{dsn}/{name}", autocommit=True) as connection:
            connection.execute(sql)
        dump = subprocess.run(["pg_dump", "--format=custom", f"{dsn}/{name}"], capture_output=True, check=True)
        return dump.stdout
    finally:
        with psycopg.connect(f"{dsn}/postgres", autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_it_converts_a_custom_dump_while_streaming_and_breaks_the_zip_when_the_dump_is_altered(
    configured, users
) -> None:
    from django.utils import timezone

    from backups.services import _object_entry

    env = configured["env_a"]
    storage = open_storage(configured["storage"])
    prefix = "backups/shop-16-0-prod/20261201T000000Z-test"
    dump = custom_dump("CREATE TABLE notes (id int, body text); INSERT INTO notes SELECT g, md5(g::text) FROM "
                       "generate_series(1, 2000) g")  # fmt: skip
    attachment = os.urandom(70_000)
    name = sha1_name(attachment)
    objects = [
        _object_entry(storage.put_bytes(f"{prefix}/database.dump", dump), "database"),
        {**_object_entry(storage.put_bytes(f"filestore/{name}", attachment), "filestore"), "name": name},
    ]
    now = timezone.now()
    backup = Backup.objects.create(
        environment=env, storage=configured["storage"], kind="manual", status="good", key_prefix=prefix,
        started_at=now, finished_at=now, manifest={
            "database": "shop", "objects": objects, "modules": {"base": "16.0.1.3"},
            "odoo": {"image_version": "16.0", "base_version": "16.0.1.3"},
            "postgresql": {"server_version": "15.8", "pg_dump_major": 15},
        },
    )  # fmt: skip
    response = client_for(users["olga"]).get(f"/api/v1/backups/{backup.pk}/download/")
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as archive:
        assert archive.namelist() == ["dump.sql", "manifest.json", f"filestore/{name}"]
        sql = archive.read("dump.sql")
        assert json.loads(archive.read("manifest.json"))["db_name"] == "shop"
        assert archive.read(f"filestore/{name}") == attachment
    assert b"CREATE TABLE public.notes" in sql and b"COPY public.notes" in sql and b"OWNER TO" not in sql
    # The stored dump altered afterwards: the stream stops before the zip's directory (never a valid zip).
    path = configured["root"] / objects[0]["key"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    response = client_for(users["olga"]).get(f"/api/v1/backups/{backup.pk}/download/")
    assert response.status_code == 200  # the headers went out before the damage was read
    received = bytearray()
    with pytest.raises(StorageError, match=r"authenticate|SHA-256|pg_restore"):
        for chunk in response.streaming_content:
            received += chunk
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(bytes(received)))
