"""Odoo zip import and download through uvicorn, as the panel is served (ASGI): the upload reaches the storage while
the client is still sending it (Django's ASGI handler would first stage the whole body on disk), and the download
streams back the same bytes.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backups.models import Backup, BackupSettings
from backups.odoozip import write_odoo_zip
from panel.accounts.services import create_token
from panel.jobs.models import Job
from tests.backup_fixtures import make_local_storage
from tests.conftest import ManagedProcess, free_port, wait_for_port
from tests.test_backup_zip import MANIFEST

pytestmark = pytest.mark.django_db(transaction=True)

MIB = 1024 * 1024


@pytest.fixture
def zip_server(tmp_path: Path, settings: Any) -> Iterator[tuple[str, Path]]:
    """uvicorn serving the panel, storing imported zips in 1 MiB parts under a local root of its own."""
    root = tmp_path / "backups"
    root.mkdir()
    settings.BACKUP_LOCAL_ROOTS = [str(root)]
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "panel.asgi:application", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning"]  # fmt: skip
    proc = ManagedProcess("uvicorn-zip", argv, tmp_path / "uvicorn.log",
                          env={"BACKUP_ZIP_PART_MB": "1", "BACKUP_LOCAL_ROOTS": str(root)})  # fmt: skip
    proc.start()
    try:
        wait_for_port(port, proc)
        yield f"127.0.0.1:{port}", root
    finally:
        proc.stop()


def big_zip() -> bytes:
    data = os.urandom(6 * MIB)  # random: deflate cannot shrink it, so the zip is about 6 MiB
    digest = hashlib.sha1(data).hexdigest()
    sink = io.BytesIO()
    write_odoo_zip(sink, dump_sql=io.BytesIO(b"SELECT 1;\n"), filestore=[(f"{digest[:2]}/{digest}", io.BytesIO(data))],
                   manifest=MANIFEST)  # fmt: skip
    return sink.getvalue()


def test_it_streams_an_upload_into_the_storage_while_it_arrives_and_streams_the_download(
    zip_server, inventory, users
) -> None:
    address, root = zip_server
    env = inventory["env_a"]
    env.project.odoo_version = "16.0"
    env.project.save(update_fields=["odoo_version"])
    BackupSettings.objects.create(environment=env, storage=make_local_storage(env.project.organization, root))
    _, token = create_token(user=users["olga"], name="zip", scope="write")
    body = big_zip()
    seen_while_sending: list[str] = []

    def slow_body() -> Iterator[bytes]:
        for start in range(0, len(body), MIB):
            yield body[start : start + MIB]
            if start == 2 * MIB:
                # Three MiB sent, three to go: the first part must already be in the storage.
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not seen_while_sending:
                    seen_while_sending.extend(str(p.name) for p in root.rglob("odoo.zip.000000"))
                    time.sleep(0.1)

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/zip"}
    connection = http.client.HTTPConnection(address, timeout=60)
    # Production without its name typed: refused before the body is read.
    connection.request("POST", f"/api/v1/environments/{env.pk}/import-zip/", body=body, headers=headers)
    refused = connection.getresponse()
    assert refused.status == 400 and b"Type the environment" in refused.read()
    connection.close()
    connection = http.client.HTTPConnection(address, timeout=60)
    connection.request("POST", f"/api/v1/environments/{env.pk}/import-zip/?confirm=prod", body=slow_body(),
                       headers=headers, encode_chunked=True)  # fmt: skip
    response = connection.getresponse()
    answer = response.read()
    assert response.status == 202, answer
    assert seen_while_sending == ["odoo.zip.000000"]
    backup = Backup.objects.get(kind="imported")
    assert backup.manifest["zip"]["parts"] == -(-len(body) // MIB)
    connection.close()
    connection = http.client.HTTPConnection(address, timeout=60)
    connection.request("GET", f"/api/v1/backups/{backup.pk}/download/", headers={"Authorization": f"Bearer {token}"})
    download = connection.getresponse()
    assert download.status == 200 and download.getheader("Content-Type") == "application/zip"
    assert download.getheader("Content-Length") is None  # streamed, not collected first
    assert download.read() == body
    connection.close()


def test_it_streams_the_page_form_upload_into_the_storage_under_uvicorn(zip_server, inventory, users) -> None:
    import re
    import secrets

    from tests.ws_helpers import session_cookie

    address, root = zip_server
    env = inventory["env_a"]
    env.project.odoo_version = "16.0"
    env.project.save(update_fields=["odoo_version"])
    BackupSettings.objects.create(environment=env, storage=make_local_storage(env.project.organization, root))
    session = session_cookie(users["olga"])
    connection = http.client.HTTPConnection(address, timeout=60)
    connection.request("GET", f"/environments/{env.pk}/", headers={"Cookie": session})
    page = connection.getresponse()
    html = page.read().decode()
    assert page.status == 200 and 'data-testid="import-zip-form"' in html
    csrf_cookie = re.search(r"csrftoken=([^;]+)", page.getheader("Set-Cookie") or "")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert csrf_cookie and token
    connection.close()
    body = big_zip()
    boundary = "zipform" + secrets.token_hex(8)
    head = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in (("csrfmiddlewaretoken", token.group(1)), ("confirm", "prod"))
    ) + (f'--{boundary}\r\nContent-Disposition: form-data; name="zip"; filename="shop.zip"\r\n'
         "Content-Type: application/zip\r\n\r\n")  # fmt: skip
    tail = f"\r\n--{boundary}--\r\n".encode()
    seen_while_sending: list[str] = []

    def form() -> Iterator[bytes]:
        yield head.encode()
        for start in range(0, len(body), MIB):
            yield body[start : start + MIB]
            if start == 2 * MIB:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not seen_while_sending:
                    seen_while_sending.extend(str(p.name) for p in root.rglob("odoo.zip.000000"))
                    time.sleep(0.1)
        yield tail

    headers = {
        "Cookie": f"{session}; csrftoken={csrf_cookie.group(1)}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(head.encode()) + len(body) + len(tail)),
    }
    connection = http.client.HTTPConnection(address, timeout=60)
    connection.request("POST", f"/environments/{env.pk}/import-zip/", body=form(), headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status == 302, response.status
    backup = Backup.objects.get(kind="imported")
    job = Job.objects.get(kind="restore")
    assert response.getheader("Location") == f"/jobs/{job.pk}/" and job.params["backup_id"] == backup.pk
    assert seen_while_sending == ["odoo.zip.000000"]
    assert backup.manifest["zip"]["size"] == len(body) and backup.manifest["zip"]["filename"] == "shop.zip"
