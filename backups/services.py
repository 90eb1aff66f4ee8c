"""Services of the backups app that are not a job: checking that a storage really stores."""

from __future__ import annotations

import secrets

from backups.models import BackupStorage
from backups.storage import IntegrityError, StorageError, open_storage

CHECK_PREFIX = "panel-check"


def check_storage(backup_storage: BackupStorage) -> str:
    """Write a small object, read it back and verify it, delete it and make sure it is gone.

    Listing a bucket proves little (coolify#7779: the connection check passed while every upload failed), so this
    does what a backup does, on a few bytes. Returns what was done; raises ``StorageError`` naming the step that
    failed.
    """
    storage = open_storage(backup_storage, max_attempts=2)
    key = f"{CHECK_PREFIX}/{secrets.token_hex(8)}"
    payload = secrets.token_bytes(4096)
    stored = storage.put_bytes(key, payload)
    try:
        with storage.reader(key, expected=stored) as stream:
            if stream.read() != payload:
                raise IntegrityError("The object read back is not the one written.")
    finally:
        storage.delete(key)
    if storage.stat(key) is not None:
        raise StorageError(f"{key} is still listed after it was deleted.")
    sealed = ", encrypted" if stored.encrypted else ""
    return f"Wrote {stored.size} bytes{sealed}, read them back with the same SHA-256 and deleted them."
