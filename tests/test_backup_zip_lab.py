"""Odoo dump zips against the lab (a deployed sample environment on lab1: real PostgreSQL container, Odoo stand-in,
a real worker): a backup downloaded as a zip holds SQL that psql accepts, the filestore byte-identical and Odoo's
manifest; that zip imported back is restored and served (rows and files), and a zip whose SQL fails half-way fails
its restore while the original keeps serving its data.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import subprocess
import zipfile
from typing import Any

import psycopg
import pytest
from django.conf import settings
from rest_framework.test import APIClient

from backups.models import Backup
from backups.odoozip import OdooManifest, write_odoo_zip
from panel.jobs.models import Job
from tests.deploy_fixtures import health
from tests.lab_helpers import wait_job
from tests.test_backup_lab import content_named, deployed, run_backup_of
from tests.test_restore_lab import attach, filestore_hashes, job_log, setup_backups, sql

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

__all__ = ["deployed"]  # a fixture


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def psql_accepts(dump_sql: bytes) -> str:
    """Apply ``dump_sql`` with psql ON_ERROR_STOP in a scratch database of the test PostgreSQL; returns the count
    of ``notes`` rows in it."""
    name = f"zipcheck_{secrets.token_hex(4)}"
    base = settings.DATABASES["default"]
    dsn = f"postgresql://{base['USER']}:{base['PASSWORD']}@{base['HOST']}:{base['PORT']}"
    with psycopg.connect(f"{dsn}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        proc = subprocess.run(
            ["psql", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", "--single-transaction", f"{dsn}/{name}"],
            input=dump_sql, capture_output=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        with psycopg.connect(f"{dsn}/{name}") as connection:
            row = connection.execute("SELECT count(*) FROM notes").fetchone()
        return str(row[0] if row else "")
    finally:
        with psycopg.connect(f"{dsn}/postgres", autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def import_zip(user: Any, environment: Any, body: bytes) -> Job:
    url = f"/api/v1/environments/{environment.pk}/import-zip/?confirm={environment.name}"
    response = client_for(user).generic("POST", url, body, content_type="application/zip")
    assert response.status_code == 202, response.content
    return wait_job(Job.objects.get(pk=response.json()["job"]["id"]), timeout=180)


def with_failing_sql(data: bytes) -> bytes:
    """The same zip, with a failing statement half-way through dump.sql (before a statement in its middle)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        lines = archive.read("dump.sql").decode().splitlines(keepends=True)
        starts = [i for i, line in enumerate(lines) if line.startswith(("CREATE TABLE ", "COPY ", "ALTER TABLE "))]
        middle = starts[len(starts) // 2]
        broken = "".join([*lines[:middle], "SELECT 1/0; -- fails half-way\n", *lines[middle:]]).encode()
        files = {name[len("filestore/") :]: archive.read(name) for name in archive.namelist()
                 if name.startswith("filestore/")}  # fmt: skip
        manifest = OdooManifest.parse(archive.read("manifest.json")).raw
    sink = io.BytesIO()
    write_odoo_zip(sink, dump_sql=io.BytesIO(broken),
                   filestore=[(name, io.BytesIO(body)) for name, body in files.items()], manifest=manifest)  # fmt: skip
    return sink.getvalue()


def test_it_downloads_a_backup_as_an_odoo_zip_imports_it_back_and_refuses_sql_that_fails_half_way(
    deployed, jobs_worker, lab1, users
) -> None:
    alice = users["alice"]
    setup_backups(deployed)
    sql(lab1, "CREATE TABLE notes (id int PRIMARY KEY, body text)")
    sql(lab1, "INSERT INTO notes SELECT g, md5(g::text) FROM generate_series(1, 300) g")
    attach(lab1, {content_named(data): data for data in (os.urandom(150_000), b"a tiny attachment")})
    expected_files = filestore_hashes(lab1)
    backup = run_backup_of(deployed, alice)
    assert backup.status == "good", backup.reason

    # Download: dump.sql first (plain SQL psql accepts), Odoo's manifest, the filestore byte-identical.
    response = client_for(alice).get(f"/api/v1/backups/{backup.pk}/download/")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    data = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert names[:2] == ["dump.sql", "manifest.json"]
        manifest = OdooManifest.parse(archive.read("manifest.json"))
        files = {name.removeprefix("filestore/"): archive.read(name) for name in names if name.startswith("filestore/")}
        dump_sql = archive.read("dump.sql")
    assert manifest.db_name == "prod" and manifest.major_version == "16.0" and manifest.pg_version == "15.0"
    assert "base" in manifest.modules and "panel_demo" in manifest.modules
    got = {f"./{name}": hashlib.sha256(body).hexdigest() for name, body in files.items()}
    assert got == expected_files
    assert b"CREATE TABLE public.notes" in dump_sql and b"OWNER TO" not in dump_sql
    assert psql_accepts(dump_sql) == "300"

    # Import it back over what came after the download: the zip's rows and files serve again.
    sql(lab1, "INSERT INTO notes VALUES (9999, 'after the download')")
    late = os.urandom(4000)
    attach(lab1, {content_named(late): late})
    job = import_zip(alice, deployed, data)
    assert job.status == "succeeded", job.reason + "\n" + job_log(job)[-3000:]
    imported = Backup.objects.get(pk=job.params["backup_id"])
    assert imported.kind == "imported" and imported.status == "good"
    assert sql(lab1, "SELECT count(*) FROM notes") == "300"
    assert sql(lab1, "SELECT count(*) FROM notes WHERE id = 9999") == "0"
    assert filestore_hashes(lab1) == expected_files
    assert health(lab1)["status"] == "pass"
    log = job_log(job)
    assert "psql exited 0" in log and "all 3 attachments the database references" in log

    # The same zip with a statement failing half-way: the restore fails, the original keeps serving its data.
    sql(lab1, "CREATE TABLE marker AS SELECT 'written after the import' AS what")
    job = import_zip(alice, deployed, with_failing_sql(data))
    assert job.status == "failed", job_log(job)[-3000:]
    assert "psql (dump.sql) failed" in job.reason and "division by zero" in job.reason, job.reason
    assert "Nothing live was changed" in job.reason
    assert sql(lab1, "SELECT what FROM marker") == "written after the import"
    assert sql(lab1, "SELECT count(*) FROM notes") == "300"
    assert sql(lab1, "SELECT count(*) FROM pg_database WHERE datname LIKE 'prod\\_restore\\_%'", "postgres") == "0"
    assert health(lab1)["status"] == "pass"
