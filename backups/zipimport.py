"""Odoo dump zips in and out of the panel (the web database manager's format: ``dump.sql``, ``filestore/``,
``manifest.json``; see ``backups.odoozip``).

**Import** (``ZipImport``): the upload is streamed into the environment's backup storage as it arrives, as parts of
``BACKUP_ZIP_PART_MB`` (``<prefix>/odoo.zip.000000``, ...; each its own object, encrypted like every object of an
encrypting storage). Nothing of it is held in memory beyond one chunk, nor written to the panel's disk. Parts make
the stored zip seekable on every storage (``StoredZipFile``: a seek opens one part and reads forward in it; Tink's
streaming decryption and an S3 body only read forward), so ``OdooDumpReader`` checks the central directory and the
manifest (zip-slip names, bombs, member kinds, ``base`` installed) straight from the storage. Only a zip that passed
is recorded, as a ``Backup`` of kind ``imported`` (good: every part confirmed by the storage); a refused one is
deleted. Then the restore job runs from it (``backups.restore``, with ``ZipRestoreSource``): the same checks, safety
backup, restore aside, neutralization and swap as any restore; ``dump.sql`` goes through ``psql`` with
``ON_ERROR_STOP`` in one transaction, so a dump failing half-way fails the restore before the swap.

**Download** (``download_refusal`` / ``download_chunks``): a good backup streamed as an Odoo zip. The custom-format
dump is converted to plain SQL while it streams by ``pg_restore --file=-`` on the panel host (fed from the storage,
decrypted in the panel); the filestore objects and tars are read from the storage one at a time. An imported backup
is handed out as the zip that was uploaded. A failure half-way ends the stream before the zip's central directory,
so a broken download never passes for a complete zip.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime
import io
import json
import logging
import re
import secrets
import subprocess
import tarfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backups.models import Backup, BackupKind, BackupPolicy, BackupStatus
from backups.odoozip import (
    OdooDumpReader,
    OdooManifest,
    OdooZipError,
    ZipLimits,
    check_member_name,
    iter_odoo_zip,
    psql_restore_argv,
)
from backups.services import backup_lock_key, backup_settings_of, settle_backups
from backups.storage import CHUNK, Storage, StorageError, StoredObject, open_storage, validate_key
from panel.accounts.choices import Action
from panel.accounts.scoping import can
from panel.accounts.services import record
from panel.inventory.choices import EnvironmentKind
from panel.inventory.models import Environment
from panel.jobs.choices import ACTIVE_STATES
from panel.jobs.models import Job
from panel.jobs.runner import JobFailed
from panel.jobs.services import TargetBusy

if TYPE_CHECKING:
    from backups.restore import RestoreRun

logger = logging.getLogger(__name__)

ZIP_SOURCE = "odoo-zip"
PART_ROLE = "zip-part"
PART_NAME = "odoo.zip.{:06d}"
MANIFEST_NAME = "manifest.json"
FILESTORE_KEY_RE = re.compile(r"filestore/[0-9a-f]{2}/[0-9a-f]{40}")
BLOCK = 512


class ZipImportRefused(Exception):
    """The upload is refused (not an Odoo zip, a guard, a version, a missing confirmation); the API answers 400."""


def part_entry(stored: StoredObject, index: int) -> dict[str, Any]:
    """The manifest entry of one stored part of an uploaded zip."""
    entry: dict[str, Any] = {"key": stored.key, "role": PART_ROLE, "index": index, "size": stored.size,
                             "sha256": stored.sha256}  # fmt: skip
    if stored.encrypted:
        entry.update(encrypted=True, plain_size=stored.plain_size, plain_sha256=stored.plain_sha256)
    return entry


def _expected(entry: dict[str, Any]) -> StoredObject:
    return StoredObject(
        key=entry["key"], size=int(entry["size"]), sha256=entry["sha256"], encrypted=bool(entry.get("encrypted")),
        plain_size=entry.get("plain_size"), plain_sha256=entry.get("plain_sha256", ""),
    )  # fmt: skip


def _plain_size(part: StoredObject) -> int:
    return int(part.plain_size) if part.encrypted and part.plain_size is not None else part.size


# -- the stored zip ---------------------------------------------------------------------------------------------


class ZipUploadWriter:
    """Writes an upload into ``storage`` as parts of ``part_size`` bytes under ``prefix``, chunk by chunk.

    ``close()`` returns the parts once the storage confirmed each; ``abort()`` removes whatever was written. More
    than ``max_size`` bytes are refused (``ZipImportRefused``) as they arrive.
    """

    def __init__(self, storage: Storage, prefix: str, *, part_size: int, max_size: int) -> None:
        self.storage = storage
        self.prefix = prefix
        self.part_size = part_size
        self.max_size = max_size
        self.size = 0
        self.parts: list[StoredObject] = []
        self._writer: Any = None
        self._in_part = 0

    def write(self, chunk: bytes) -> None:
        """Store the next bytes of the upload."""
        self.size += len(chunk)
        if self.size > self.max_size:
            raise ZipImportRefused(f"The upload is larger than {self.max_size} bytes (BACKUP_ZIP_MAX_TOTAL_GIB).")
        view = memoryview(chunk)
        while len(view):
            if self._writer is None:
                key = f"{self.prefix}/{PART_NAME.format(len(self.parts))}"
                self._writer = self.storage.writer(key, expected_size=self.part_size)
                self._in_part = 0
            piece = view[: self.part_size - self._in_part]
            self._writer.write(bytes(piece))
            self._in_part += len(piece)
            view = view[len(piece) :]
            if self._in_part == self.part_size:
                self.parts.append(self._writer.close())
                self._writer = None

    def close(self) -> list[StoredObject]:
        """Finish the last part; returns every part as the storage confirmed it."""
        if self._writer is not None:
            self.parts.append(self._writer.close())
            self._writer = None
        if not self.parts:
            raise ZipImportRefused("The upload is empty: send the zip as the request body.")
        return self.parts

    def abort(self) -> None:
        """Remove what was written (an open part is aborted, closed ones deleted)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.abort()
            self._writer = None
        for part in self.parts:
            with contextlib.suppress(StorageError, ValueError):
                self.storage.delete(part.key)


class StoredZipFile(io.RawIOBase):
    """A seekable, read-only file over the stored parts of a zip.

    A read at a position opens the part holding it (``storage.reader``: decrypted, size and SHA-256 checked when a
    part is read to its end) and reads forward; a seek backwards, or into another part, opens that part again. The
    zip reader's pattern (the tail, the central directory, then the members in the order of their data) opens each
    part about once. ``opened`` counts the opens.
    """

    def __init__(self, storage: Storage, parts: list[StoredObject]) -> None:
        super().__init__()
        self._storage = storage
        self._parts = parts
        self._sizes = [_plain_size(part) for part in parts]
        self._starts: list[int] = []
        total = 0
        for size in self._sizes:
            self._starts.append(total)
            total += size
        self._size = total
        self._pos = 0
        self._index = -1
        self._reader: BinaryIO | None = None
        self._reader_pos = 0
        self.opened = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError("Seek before the start of the zip.")
        self._pos = base + offset
        return self._pos

    def _open(self, index: int) -> BinaryIO:
        if self._reader is not None:
            self._reader.close()
        part = self._parts[index]
        self._reader = self._storage.reader(part.key, expected=part)
        self._index = index
        self._reader_pos = self._starts[index]
        self.opened += 1
        return self._reader

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos >= self._size or not len(view):
            return 0
        index = bisect.bisect_right(self._starts, self._pos) - 1
        reader = self._reader
        if reader is None or index != self._index or self._reader_pos > self._pos:
            reader = self._open(index)
        while self._reader_pos < self._pos:  # forward within the part: read on
            skipped = reader.read(min(CHUNK, self._pos - self._reader_pos))
            if not skipped:
                raise StorageError(f"{self._parts[index].key} is shorter than recorded.")
            self._reader_pos += len(skipped)
        end = self._starts[index] + self._sizes[index]
        data = reader.read(min(len(view), end - self._pos))
        if not data:
            raise StorageError(f"{self._parts[index].key} is shorter than recorded.")
        view[: len(data)] = data
        self._pos += len(data)
        self._reader_pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        # zipfile expects full reads (a header, the central directory); a read may span parts.
        if size is None or size < 0:
            size = self._size - self._pos
        out = bytearray()
        while len(out) < size:
            chunk = bytearray(min(size - len(out), CHUNK))
            n = self.readinto(chunk)
            if not n:
                break
            out += chunk[:n]
        return bytes(out)

    def close(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(Exception):
                self._reader.close()
            self._reader = None
        super().close()


def zip_parts(backup: Backup) -> list[StoredObject]:
    """The stored parts of an imported backup, in order (each key checked to be under the backup's prefix)."""
    entries = sorted(
        (entry for entry in backup.manifest.get("objects", []) if entry.get("role") == PART_ROLE),
        key=lambda entry: int(entry["index"]),
    )
    parts = [_expected(entry) for entry in entries]
    for part in parts:
        validate_key(part.key)
        if not part.key.startswith(f"{backup.key_prefix}/"):
            raise StorageError(f"{part.key} is not under the backup's prefix.")
    return parts


def open_stored_zip(storage: Storage, parts: list[StoredObject]) -> OdooDumpReader:
    """The stored zip opened and checked by ``OdooDumpReader`` (``OdooZipError`` when it is refused)."""
    stored = StoredZipFile(storage, parts)
    try:
        reader = OdooDumpReader(stored, limits=ZipLimits.from_settings())  # type: ignore[arg-type]
    except BaseException:
        stored.close()
        raise
    reader._stored = stored  # type: ignore[attr-defined]  # closed with it (see close_reader)
    return reader


def close_reader(reader: OdooDumpReader) -> None:
    """Close the zip and the stored file under it."""
    reader.close()
    stored = getattr(reader, "_stored", None)
    if stored is not None:
        stored.close()


# -- import -----------------------------------------------------------------------------------------------------


def odoo_major(version: str) -> str:
    """``"16"`` for ``"16.0"``."""
    return (version or "").strip().split(".")[0]


def check_import_allowed(environment: Environment, confirm: str | None, *, require_confirm: bool = True) -> None:
    """Refuse an import before any byte is stored: no backup storage, production without its name typed, or a job
    holding the environment (``TargetBusy``)."""
    try:
        backup_settings_of(environment)
    except JobFailed as exc:
        raise ZipImportRefused(str(exc)) from exc
    if require_confirm:
        check_confirm(environment, confirm)
    holder = Job.objects.filter(lock_key=backup_lock_key(environment), status__in=ACTIVE_STATES).first()
    if holder is not None:
        raise TargetBusy(holder)


def check_confirm(environment: Environment, confirm: str | None) -> None:
    """Over production, ``confirm`` must be the environment's name (as ``POST /environments/{id}/restore/``)."""
    if environment.kind == EnvironmentKind.PRODUCTION and (confirm or "") != environment.name:
        raise ZipImportRefused(f"Type the environment's name ({environment.name}) to restore over production.")


@dataclass
class ZipImport:
    """One upload of an Odoo zip into ``environment``: ``write()`` each chunk as it arrives, then ``finish()``
    (checks, records the imported backup, queues the restore job) or ``abort()``."""

    environment: Environment
    actor: Any
    trigger: str = "api"
    filename: str = ""
    backup: Backup | None = None
    job: Job | None = None
    _upload: ZipUploadWriter = field(init=False)

    def __post_init__(self) -> None:
        try:
            config = backup_settings_of(self.environment)
        except JobFailed as exc:
            raise ZipImportRefused(str(exc)) from exc
        self.storage_row = config.storage
        try:
            self.storage = open_storage(config.storage)
        except StorageError as exc:
            raise ZipImportRefused(f"Cannot open the backup storage: {exc}") from exc
        now = timezone.now()
        self.started_at = now
        self.prefix = f"backups/{self.environment.compose_project}/{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
        self._upload = ZipUploadWriter(
            self.storage,
            self.prefix,
            part_size=settings.BACKUP_ZIP_PART_MB * 1024 * 1024,
            max_size=settings.BACKUP_ZIP_MAX_TOTAL_GIB * 1024**3,
        )

    @property
    def shown_name(self) -> str:
        """The uploaded file's name, printable characters only (it ends up in the backup's reason)."""
        return "".join(ch for ch in self.filename if ch.isprintable())[:100]

    @property
    def size(self) -> int:
        """Bytes received so far."""
        return self._upload.size

    def write(self, chunk: bytes) -> None:
        """Store the next chunk of the upload (an error aborts the upload)."""
        try:
            self._upload.write(chunk)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Remove what was stored of the upload."""
        self._upload.abort()

    def finish(self, *, confirm: str | None = None, check_production: bool = False) -> Backup:
        """Check the stored zip, record the imported backup and queue its restore (``self.job``).

        Raises ``ZipImportRefused`` (the stored parts removed) when the zip is refused, and ``TargetBusy`` when a
        job took the environment meanwhile (the backup is kept: restore it from the list).
        """
        try:
            if check_production:
                check_confirm(self.environment, confirm)
            parts = self._upload.close()
            try:
                reader = open_stored_zip(self.storage, parts)
            except OdooZipError as exc:
                raise ZipImportRefused(f"The zip is refused: {exc}") from exc
            try:
                manifest = reader.manifest
                dump_size, files, filestore_size = reader.dump.size, len(reader.filestore), reader.filestore_size
                ignored = list(reader.ignored[:20])
            finally:
                close_reader(reader)
            major = str(manifest.version_info[0])
            if major != odoo_major(self.environment.project.odoo_version):
                raise ZipImportRefused(
                    f"The zip is a dump of Odoo {manifest.version}, and {self.environment} runs Odoo "
                    f"{self.environment.project.odoo_version}: a database is only restored into the Odoo major "
                    "version that wrote it."
                )
            backup = self._record(parts, manifest, dump_size, files, filestore_size, ignored)
        except BaseException:
            self.abort()
            raise
        self.backup = backup
        from backups.restore import RestoreRefused, start_restore

        try:
            self.job = start_restore(backup=backup, target=self.environment, actor=self.actor, trigger=self.trigger)
        except RestoreRefused as exc:
            raise ZipImportRefused(f"{exc} The zip is kept as backup #{backup.pk}.") from exc
        return backup

    def _record(
        self,
        parts: list[StoredObject],
        manifest: OdooManifest,
        dump_size: int,
        files: int,
        filestore_size: int,
        ignored: list[str],
    ) -> Backup:
        environment = self.environment
        finished = timezone.now()
        version = f"{manifest.version_info[0]}.{manifest.version_info[1]}"
        objects = [part_entry(part, index) for index, part in enumerate(parts)]
        body: dict[str, Any] = {
            "format": 1,
            "source": ZIP_SOURCE,
            "kind": BackupKind.IMPORTED,
            "environment": {"id": environment.pk, "name": environment.name, "kind": environment.kind,
                            "compose_project": environment.compose_project, "project": environment.project.slug},
            "database": manifest.db_name,
            "odoo": {"image_version": version, "base_version": manifest.modules.get("base") or "",
                     "version": manifest.version},
            # psql reads plain SQL of any pg_dump; a statement the target cannot run fails the restore.
            "postgresql": {"server_version": manifest.pg_version, "pg_dump_major": 0, "pg_dump_version": ""},
            "modules": {name: value or "" for name, value in manifest.modules.items()},
            "dump": {"format": "sql", "member": "dump.sql", "size": dump_size, "restored_with": "psql ON_ERROR_STOP"},
            "zip": {"size": self._upload.size, "parts": len(parts), "filename": self.shown_name,
                    "files": files, "filestore_bytes": filestore_size, "ignored": ignored},
            "objects": objects,
            "started_at": self.started_at.isoformat(),
            "finished_at": finished.isoformat(),
        }  # fmt: skip
        data = json.dumps(body, indent=1, sort_keys=True).encode()
        stored = self.storage.put_bytes(f"{self.prefix}/{MANIFEST_NAME}", data)
        manifest_entry: dict[str, Any] = {"key": stored.key, "role": "manifest", "size": stored.size,
                                          "sha256": stored.sha256}  # fmt: skip
        if stored.encrypted:
            manifest_entry.update(encrypted=True, plain_size=stored.plain_size, plain_sha256=stored.plain_sha256)
        with transaction.atomic():
            backup = Backup.objects.create(
                environment=environment, storage=self.storage_row, kind=BackupKind.IMPORTED,
                status=BackupStatus.GOOD, key_prefix=self.prefix, manifest={**body, "manifest_object": manifest_entry},
                database_bytes=dump_size, filestore_bytes=filestore_size,
                uploaded_bytes=sum(part.size for part in parts) + stored.size,
                started_at=self.started_at, finished_at=finished,
                reason=f"Imported Odoo zip{f' {self.shown_name}' if self.shown_name else ''} ({self.size} bytes).",
            )  # fmt: skip
            record(
                action="environment.import_zip",
                actor=self.actor,
                obj=environment,
                detail={"backup": backup.pk, "bytes": self.size, "files": files, "odoo": manifest.version},
            )
        return backup


def import_stream(
    *,
    environment: Environment,
    actor: Any,
    chunks: Iterable[bytes],
    confirm: str | None,
    trigger: str = "api",
    filename: str = "",
) -> ZipImport:
    """Import an Odoo zip read from ``chunks`` (a request body) into ``environment`` and queue its restore.

    Refused before reading (``ZipImportRefused``, ``TargetBusy``): no storage, production without ``confirm``, a job
    holding the environment. Then as ``ZipImport.finish``.
    """
    check_import_allowed(environment, confirm)
    upload = ZipImport(environment=environment, actor=actor, trigger=trigger, filename=filename)
    try:
        for chunk in chunks:
            if chunk:
                upload.write(chunk)
    except ZipImportRefused:
        raise
    except BaseException:
        upload.abort()
        raise
    upload.finish()
    return upload


# -- restore from a stored zip ------------------------------------------------------------------------------------


class ZipRestoreSource:
    """What the restore job reads from an imported backup: ``dump.sql`` into ``psql`` (``ON_ERROR_STOP``, one
    transaction) and the filestore members as one tar stream."""

    def __init__(self, backup: Backup, storage: Storage) -> None:
        self.backup = backup
        self.storage = storage
        self.parts = zip_parts(backup)

    @contextlib.contextmanager
    def _reader(self, run: RestoreRun) -> Iterator[OdooDumpReader]:
        try:
            reader = open_stored_zip(self.storage, self.parts)
        except OdooZipError as exc:
            raise run.failure(f"The stored zip of backup #{self.backup.pk} is refused: {exc}") from exc
        try:
            yield reader
        finally:
            close_reader(reader)

    def restore_database(self, run: RestoreRun) -> None:
        """Feed ``dump.sql`` to psql in the target's db container, into the new database ``run.restored``."""
        argv = run.db(*psql_restore_argv(run.restored, username=run.db_user))
        with self._reader(run) as reader, reader.open_dump() as dump:
            total = reader.dump.size
            run.context.write(
                f"Restoring dump.sql ({total / 1e6:.1f} MB) with psql ON_ERROR_STOP in one transaction into the new "
                f"database {run.restored}; the live {run.database} keeps serving."
            )
            sent = 0

            def chunks() -> Iterator[bytes]:
                nonlocal sent
                try:
                    while chunk := dump.read(CHUNK):
                        sent += len(chunk)
                        run.context.progress("Restoring dump.sql", sent, total)
                        yield chunk
                except OdooZipError as exc:
                    raise run.failure(str(exc)) from exc

            result = run.stream(argv, "psql (dump.sql)", source=chunks(), sink=lambda _chunk: None)
        run.context.write(f"psql exited 0: dump.sql ({result.bytes_in / 1e6:.1f} MB) is in {run.restored}.")

    def filestore_tar(self, run: RestoreRun) -> Iterator[bytes]:
        """The zip's ``filestore/`` as one tar stream (names checked by the reader, sizes as declared)."""
        from backups.restore import _padding, _tar_header

        with self._reader(run) as reader:
            total = reader.filestore_size
            sizes = {path: member.size for path, member in reader.filestore}
            for path, stream in reader.iter_filestore():
                size = sizes[path]
                yield _tar_header(path, size)
                sent = 0
                try:
                    while chunk := stream.read(CHUNK):
                        sent += len(chunk)
                        yield chunk
                except OdooZipError as exc:
                    raise run.failure(str(exc)) from exc
                if sent != size:
                    raise run.failure(f"The zip member filestore/{path} is shorter than declared.")
                yield _padding(size)
                run.files += 1
                run.bytes += size
                run.context.progress("Restoring the filestore", run.bytes, total)
        yield b"\0" * (2 * BLOCK)


def restore_source(backup: Backup, storage: Storage) -> ZipRestoreSource | None:
    """The zip source of an imported backup, or None for a backup the panel took (dump and filestore objects)."""
    if backup.manifest.get("source") == ZIP_SOURCE:
        return ZipRestoreSource(backup, storage)
    return None


# -- download ---------------------------------------------------------------------------------------------------


def may_download(user: Any, backup: Backup) -> bool:
    """Staff who see the environment's details; customers only a production backup, and only when their
    organization's ``BackupPolicy.customers_may_download`` is on (the caller already scoped ``backup`` to ``user``)."""
    environment = backup.environment
    if can(user, Action.VIEW_DETAILS, environment):
        return True
    if environment.kind != EnvironmentKind.PRODUCTION or not can(user, Action.VIEW, environment):
        return False
    return BackupPolicy.objects.filter(
        organization_id=environment.project.organization_id, customers_may_download=True
    ).exists()


def odoo_manifest_of(backup: Backup) -> dict[str, Any]:
    """The ``manifest.json`` Odoo writes, from a backup's manifest (versions, database, installed modules)."""
    manifest = backup.manifest
    odoo = manifest.get("odoo") or {}
    version = (odoo.get("image_version") or "").strip() or ".".join((odoo.get("base_version") or "").split(".")[:2])
    parts = version.split(".")
    major = int(parts[0]) if parts and parts[0].isdigit() else 0
    minor = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    server = (manifest.get("postgresql") or {}).get("server_version", "")
    pg_major = re.match(r"(\d+)", server or "")
    modules = {name: (value or None) for name, value in (manifest.get("modules") or {}).items()}
    return {
        "odoo_dump": "1",
        "db_name": manifest.get("database") or backup.environment.compose_project,
        "version": f"{major}.{minor}",
        "version_info": [major, minor, 0, "final", 0, ""],
        "major_version": f"{major}.{minor}",
        "pg_version": f"{pg_major.group(1)}.0" if pg_major else "0.0",
        "modules": modules,
    }


# Where Debian and PostgreSQL's apt repository install each major version's client side by side.
VERSIONED_PG_RESTORE = "/usr/lib/postgresql/{major}/bin/pg_restore"


def _local_pg_restore(dump_major: int = 0) -> tuple[str, int] | None:
    """The panel host's pg_restore for a dump of ``dump_major``: that major version's own when it is installed (a
    newer pg_restore writes SQL only newer servers run, e.g. 17's ``SET transaction_timeout``), else
    ``BACKUP_VERIFY_PG_RESTORE``; with its major version, or None when there is none."""
    from backups.verify import _local_pg_restore as find

    if dump_major:
        own = find(VERSIONED_PG_RESTORE.format(major=dump_major))
        if own is not None and own[1] == dump_major:
            return own
    return find(settings.BACKUP_VERIFY_PG_RESTORE)


def _dump_major(backup: Backup) -> int:
    return int((backup.manifest.get("postgresql") or {}).get("pg_dump_major") or 0)


def download_refusal(backup: Backup) -> str:
    """Why ``backup`` cannot be streamed as an Odoo zip, checked before the response starts ("" when it can)."""
    settle_backups(backup.environment)
    backup.refresh_from_db()
    if backup.status != BackupStatus.GOOD:
        return f"Backup #{backup.pk} is {backup.get_status_display().lower()}: only good backups are downloaded."
    objects = backup.manifest.get("objects", [])
    try:
        for entry in objects:
            key = validate_key(entry.get("key", ""))
            if not (key.startswith(f"{backup.key_prefix}/") or FILESTORE_KEY_RE.fullmatch(key)):
                return f"Backup #{backup.pk} lists an object outside its prefix ({key[:100]}); it is not handed out."
    except ValueError as exc:
        return f"Backup #{backup.pk} lists an object the panel does not read: {exc}"
    if backup.manifest.get("source") == ZIP_SOURCE:
        return ""
    if not any(entry.get("role") == "database" for entry in objects):
        return f"Backup #{backup.pk}'s manifest lists no database dump."
    try:
        OdooManifest.from_mapping(odoo_manifest_of(backup))
    except OdooZipError as exc:
        return f"Backup #{backup.pk} cannot be described as an Odoo dump: {exc}"
    dump_major = _dump_major(backup)
    local = _local_pg_restore(dump_major)
    if local is None:
        return "The panel host has no pg_restore (install postgresql-client) to turn the dump into dump.sql."
    if local[1] < dump_major:
        return (
            f"The panel host's pg_restore {local[1]} cannot read a dump of pg_dump {dump_major}: install a newer "
            "postgresql-client on the panel host (BACKUP_VERIFY_PG_RESTORE)."
        )
    return ""


def download_name(backup: Backup) -> str:
    """``<compose project>_<UTC time>_<id>.zip``."""
    when = (backup.finished_at or backup.started_at).astimezone(datetime.UTC)
    return f"{backup.environment.compose_project}_{when:%Y-%m-%d_%H-%M-%S}_{backup.pk}.zip"


class _PgRestoreSql(io.RawIOBase):
    """The plain SQL of a custom-format dump: ``pg_restore --file=-`` on the panel host, fed from the storage by a
    thread. The read that reaches the end raises ``StorageError`` when pg_restore or the feed failed."""

    def __init__(self, path: str, storage: Storage, expected: StoredObject) -> None:
        super().__init__()
        argv = [path, "--no-owner", "--no-privileges", "--file=-"]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stderr = bytearray()
        self.feed_error: BaseException | None = None
        self._done = False
        self._threads = [
            threading.Thread(target=self._feed, args=(storage, expected), daemon=True),
            threading.Thread(target=self._drain, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _feed(self, storage: Storage, expected: StoredObject) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            with storage.reader(expected.key, expected=expected) as source:
                while chunk := source.read(CHUNK):
                    stdin.write(chunk)
        except (BrokenPipeError, OSError) as exc:
            if not isinstance(exc, BrokenPipeError):
                self.feed_error = exc
        except BaseException as exc:  # noqa: BLE001 - reported by the reading side
            self.feed_error = exc
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        while chunk := self.process.stderr.read(65536):
            if len(self.stderr) < 65536:
                self.stderr.extend(chunk)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        assert self.process.stdout is not None
        n = self.process.stdout.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            return int(n)
        if not self._done:
            self._done = True
            code = self.process.wait(timeout=600)
            for thread in self._threads:
                thread.join(timeout=60)
            if self.feed_error is not None:
                raise StorageError(f"Reading the dump from the storage failed: {self.feed_error}")
            if code != 0:
                raise StorageError(f"pg_restore exited {code}: {self.stderr.decode(errors='replace').strip()[-400:]}")
        return 0

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        super().close()


def _backup_filestore(storage: Storage, objects: list[dict[str, Any]]) -> Iterator[tuple[str, BinaryIO]]:
    """Each filestore file of a panel backup as ``(path, stream)``: content-named objects, then the tars' files."""
    for entry in objects:
        if entry.get("role") != "filestore":
            continue
        name = entry.get("name", "")
        check_member_name(name)
        with storage.reader(entry["key"], expected=_expected(entry)) as stream:
            yield name, stream
    for entry in objects:
        if entry.get("role") not in ("filestore-other", "filestore-mismatched"):
            continue
        with (
            storage.reader(entry["key"], expected=_expected(entry)) as source,
            tarfile.open(fileobj=source, mode="r|") as archive,
        ):
            for member in archive:
                if not member.isfile():
                    continue
                try:
                    check_member_name(member.name)
                except OdooZipError:
                    logger.warning("backup tar member %r left out of the zip", member.name[:200])
                    continue
                data = archive.extractfile(member)
                assert data is not None
                yield member.name, data  # type: ignore[misc]


def download_chunks(backup: Backup) -> Iterator[bytes]:
    """The bytes of ``backup`` as an Odoo zip, produced as they are read (call ``download_refusal`` first).

    Everything that needs the database (the storage's row, the manifest) is read here, in the caller's thread; the
    returned iterator only reads the storage and runs pg_restore (under ASGI it is advanced in worker threads).
    """
    storage = open_storage(backup.storage)
    objects = list(backup.manifest.get("objects", []))
    if backup.manifest.get("source") == ZIP_SOURCE:
        return _stored_zip_chunks(storage, zip_parts(backup))
    entry = next(entry for entry in objects if entry.get("role") == "database")
    local = _local_pg_restore(_dump_major(backup))
    assert local is not None
    return _converted_chunks(local[0], storage, _expected(entry), objects, odoo_manifest_of(backup))


def _stored_zip_chunks(storage: Storage, parts: list[StoredObject]) -> Iterator[bytes]:
    for part in parts:
        with storage.reader(part.key, expected=part) as stream:
            while chunk := stream.read(CHUNK):
                yield chunk


def _converted_chunks(
    pg_restore: str, storage: Storage, dump: StoredObject, objects: list[dict[str, Any]], manifest: dict[str, Any]
) -> Iterator[bytes]:
    sql = _PgRestoreSql(pg_restore, storage, dump)
    try:
        yield from iter_odoo_zip(
            dump_sql=io.BufferedReader(sql, CHUNK), filestore=_backup_filestore(storage, objects), manifest=manifest
        )
    finally:
        sql.close()


def record_download(backup: Backup, actor: Any) -> None:
    """Audit a download."""
    record(action="backup.download", actor=actor, obj=backup.environment, detail={"backup": backup.pk})
