"""Good backups written into a real storage without a server: a real ``pg_dump --format=custom`` of a table of the
test database, content-named filestore files and a manifest, laid out as the backup job lays them out."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import subprocess
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone


@functools.cache
def real_dump() -> bytes:
    """A small custom-format dump of one table of the test database (pg_dump on this host)."""
    database = settings.DATABASES["default"]
    env = {**os.environ, "PGPASSWORD": database["PASSWORD"]}
    argv = ["pg_dump", "--format=custom", "-h", database["HOST"], "-p", str(database["PORT"]),
            "-U", database["USER"], "-d", database["NAME"], "-t", "django_migrations"]  # fmt: skip
    return subprocess.run(argv, env=env, capture_output=True, check=True, timeout=60).stdout


def pg_dump_major() -> int:
    out = subprocess.run(["pg_dump", "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.split("(PostgreSQL)")[1].split()[0].split(".")[0])


def _entry(stored: Any, role: str, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"key": stored.key, "role": role, "size": stored.size, "sha256": stored.sha256}
    if stored.encrypted:
        entry.update(encrypted=True, plain_size=stored.plain_size, plain_sha256=stored.plain_sha256)
    return {**entry, **extra}


def store_file(storage_row: Any, content: bytes) -> Any:
    """A content-named filestore file in the storage (once per storage, like the backup job) and its row."""
    from backups.models import FilestoreObject
    from backups.storage import open_storage

    sha1 = hashlib.sha1(content, usedforsecurity=False).hexdigest()
    found = FilestoreObject.objects.filter(storage=storage_row, sha1=sha1).first()
    if found is not None:
        return found
    key = f"filestore/{sha1[:2]}/{sha1}"
    stored = open_storage(storage_row).put_bytes(key, content)
    return FilestoreObject.objects.create(
        storage=storage_row, sha1=sha1, key=key, size=stored.size, sha256=stored.sha256,
        encrypted=stored.encrypted, plain_size=stored.plain_size, plain_sha256=stored.plain_sha256,
    )  # fmt: skip


def make_backup(
    environment: Any,
    storage_row: Any,
    *,
    files: list[bytes] = (),  # type: ignore[assignment]
    dump: bytes | None = None,
    started_at: datetime | None = None,
    kind: str = "scheduled",
    status: str = "good",
    verified: bool = True,
    job: Any = None,
) -> Any:
    """A backup row with its objects really in the storage (a good one has a manifest listing them all)."""
    from backups.models import Backup
    from backups.storage import open_storage

    storage = open_storage(storage_row)
    started_at = started_at or timezone.now()
    prefix = f"backups/{environment.compose_project}/{started_at:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
    dump_obj = storage.put_bytes(f"{prefix}/database.dump", real_dump() if dump is None else dump)
    objects = [_entry(dump_obj, "database", compression="--compress=6")]
    for content in files:
        obj = store_file(storage_row, content)
        entry = {"key": obj.key, "role": "filestore", "name": f"{obj.sha1[:2]}/{obj.sha1}", "size": obj.size,
                 "sha256": obj.sha256}  # fmt: skip
        if obj.encrypted:
            entry.update(encrypted=True, plain_size=obj.plain_size, plain_sha256=obj.plain_sha256)
        objects.append(entry)
    manifest: dict[str, Any] = {
        "format": 1,
        "postgresql": {"pg_dump_major": pg_dump_major()},
        "dump": {"key": dump_obj.key, "format": "custom"},
        "objects": objects,
        "started_at": started_at.isoformat(),
    }
    if status != "good":
        return Backup.objects.create(
            environment=environment, storage=storage_row, kind=kind, status=status, key_prefix=prefix,
            started_at=started_at, job=job, reason="test",
        )  # fmt: skip
    stored = storage.put_bytes(f"{prefix}/manifest.json", json.dumps(manifest).encode())
    manifest["manifest_object"] = _entry(stored, "manifest")
    return Backup.objects.create(
        environment=environment, storage=storage_row, kind=kind, status=status, key_prefix=prefix,
        manifest=manifest, started_at=started_at, finished_at=started_at, job=job,
        verified_at=started_at if verified else None,
    )  # fmt: skip
