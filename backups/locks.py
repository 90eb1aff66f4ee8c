"""The storage lock: retention's deletion of deduplicated filestore files and a backup reusing them never race.

A backup reuses a ``FilestoreObject`` (a file stored once per storage) instead of uploading it again; retention
deletes the ones no remaining backup lists. Without a lock a backup could read a row, retention delete the row and
the object, and the backup list a file that is gone and be recorded good. Both sides take one PostgreSQL advisory
lock per storage (``pg_advisory_lock``, a session lock: it is held across transactions and ends with the
connection if the process dies):

- retention (``backups.scheduling._delete_unlisted_files``) holds it from its check that no backup into the storage
  runs until the rows are deleted (committed first) *and* then the objects;
- a backup holds it while it claims the objects it reuses (``claim_filestore_objects``); its own row says
  ``running`` (committed before) from then on until it ends.

So either retention went first and the backup, waiting for the lock, no longer finds the deleted rows and uploads
those files again; or the backup went first and retention, once it has the lock, sees it running and deletes no
file of that storage. On SQLite (the one-machine launcher) there are no advisory locks: the lock is a no-op there,
where one process runs everything and a backup and retention rarely meet.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from django.db import connection

from backups.models import FilestoreObject

LOOKUP_BATCH = 2000
#: The first key of the storages' advisory locks ("bkst"); the second is the storage's id.
LOCK_NAMESPACE = 0x626B7374


@contextmanager
def storage_lock(storage_id: int) -> Iterator[None]:
    """Hold the storage's advisory lock for the block, waiting for it (see the module docstring)."""
    if connection.vendor != "postgresql":
        yield
        return
    key = [LOCK_NAMESPACE, int(storage_id) & 0x7FFFFFFF]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s::int, %s::int)", key)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s::int, %s::int)", key)


def claim_filestore_objects(storage_id: int, sha1s: Iterable[str]) -> dict[str, FilestoreObject]:
    """The storage's filestore objects with these SHA-1s, read under the storage lock: a backup whose row is
    ``running`` may list every one returned, retention deletes none of them while it runs."""
    wanted = sorted(set(sha1s))
    known: dict[str, FilestoreObject] = {}
    with storage_lock(storage_id):
        for start in range(0, len(wanted), LOOKUP_BATCH):
            batch = wanted[start : start + LOOKUP_BATCH]
            for obj in FilestoreObject.objects.filter(storage_id=storage_id, sha1__in=batch):
                known[obj.sha1] = obj
    return known
