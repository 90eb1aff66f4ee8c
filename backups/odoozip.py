"""Odoo's database-manager dump zip: a guarded streaming reader, a streaming writer, and the psql restore command.

The format is the one ``odoo/service/db.py`` writes (``dump_db`` with ``backup_format='zip'``) and that Odoo.sh
and Odoo Online hand out:

- ``dump.sql``: plain SQL from ``pg_dump --no-owner`` (Odoo restores it with ``psql``);
- ``filestore/<xx>/<sha1>``: the database's filestore directory, as is;
- ``manifest.json``: ``odoo_dump`` ("1"), ``db_name``, ``version``, ``version_info``, ``major_version``,
  ``pg_version`` and ``modules`` (installed module -> ``latest_version``).

The reader never extracts anything: it checks every member of the central directory first (zip-slip names,
symlinks and special files, encryption, compression methods, duplicate names, member count, per-member and total
sizes, compression ratios, overlapping members), then hands out streams. The writer produces the same format from
streams without holding a file in memory, into seekable or non-seekable sinks.
"""

from __future__ import annotations

import io
import json
import re
import stat
import struct
import zipfile
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

DUMP_NAME = "dump.sql"
MANIFEST_NAME = "manifest.json"
FILESTORE_PREFIX = "filestore/"

GIB = 1024**3
MIB = 1024**2
CHUNK_SIZE = MIB

_MAX_NAME_LENGTH = 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
_MAJOR_VERSION = re.compile(r"^(?:saas~)?(\d{1,3})\.(\d{1,2})$")
_PG_VERSION = re.compile(r"^\d{1,3}(?:\.\d{1,3}){0,2}$")
_MODULE_NAME = re.compile(r"^[A-Za-z0-9_]{1,128}$")
# Database and role names that psql cannot mistake for an option or a connection string (no '=', no '-' first).
_PG_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")


class OdooZipError(ValueError):
    """An Odoo dump zip that is refused; the message says why in words a person can act on (the API maps it to 400)."""


@dataclass(frozen=True)
class ZipLimits:
    """What an uploaded zip may hold. Sizes are uncompressed bytes as the central directory declares them.

    ``ratio_floor``: members smaller than this are not ratio-checked (a few KiB of zeros compress 1000:1 and are
    harmless); the archive as a whole is, above the same floor.
    """

    max_members: int = 500_000
    max_member_size: int = 256 * GIB
    max_total_size: int = 512 * GIB
    max_ratio: int = 200
    ratio_floor: int = MIB
    max_manifest_size: int = 4 * MIB

    @classmethod
    def from_settings(cls) -> ZipLimits:
        """The limits of the BACKUP_ZIP_* settings."""
        from django.conf import settings

        return cls(
            max_members=settings.BACKUP_ZIP_MAX_MEMBERS,
            max_member_size=settings.BACKUP_ZIP_MAX_MEMBER_GIB * GIB,
            max_total_size=settings.BACKUP_ZIP_MAX_TOTAL_GIB * GIB,
            max_ratio=settings.BACKUP_ZIP_MAX_RATIO,
        )


@dataclass(frozen=True)
class OdooManifest:
    """A validated ``manifest.json``; ``raw`` is the parsed JSON object as it was."""

    db_name: str
    version: str
    version_info: tuple[Any, ...]
    major_version: str
    pg_version: str
    modules: dict[str, str | None]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def odoo_major(self) -> int:
        """The Odoo major version as a number (``17`` for ``17.0`` and ``saas~17.2``)."""
        match = _MAJOR_VERSION.match(self.major_version)
        assert match is not None  # checked in from_mapping
        return int(match.group(1))

    @property
    def pg_major(self) -> int:
        """The PostgreSQL server's major version the dump came from (``15`` for ``15.0``; ``9`` for ``9.6``)."""
        return int(self.pg_version.split(".")[0])

    @classmethod
    def from_mapping(cls, data: object) -> OdooManifest:
        """Validate a manifest as Odoo's ``dump_db_manifest`` writes it; raise OdooZipError naming the bad field."""
        if not isinstance(data, dict):
            raise OdooZipError("manifest.json is not a JSON object.")
        if str(data.get("odoo_dump")) != "1":
            raise OdooZipError('manifest.json is not an Odoo dump manifest (odoo_dump is not "1").')
        db_name = _manifest_text(data, "db_name", 128)
        version = _manifest_text(data, "version", 64)
        major_version = _manifest_text(data, "major_version", 32)
        if not _MAJOR_VERSION.match(major_version):
            raise OdooZipError(f"manifest.json: major_version {major_version!r} is not an Odoo version like '17.0'.")
        pg_version = _manifest_text(data, "pg_version", 16)
        if not _PG_VERSION.match(pg_version):
            raise OdooZipError(f"manifest.json: pg_version {pg_version!r} is not a PostgreSQL version like '15.0'.")
        version_info = data.get("version_info")
        if (
            not isinstance(version_info, list)
            or not 2 <= len(version_info) <= 8
            or not all(isinstance(part, int) and not isinstance(part, bool) for part in version_info[:2])
            or not all(isinstance(part, str | int) and not isinstance(part, bool) for part in version_info)
        ):
            raise OdooZipError("manifest.json: version_info is not a list like [17, 0, 0, 'final', 0, ''].")
        modules = data.get("modules")
        if not isinstance(modules, dict) or not 0 < len(modules) <= 20_000:
            raise OdooZipError("manifest.json: modules is not an object of installed modules.")
        for name, module_version in modules.items():
            if not _MODULE_NAME.match(name):
                raise OdooZipError(f"manifest.json: {name[:130]!r} is not a module name.")
            if module_version is not None and (not isinstance(module_version, str) or len(module_version) > 64):
                raise OdooZipError(f"manifest.json: the version of module {name!r} is not a version string.")
        if "base" not in modules:
            raise OdooZipError("manifest.json: the module base is not installed in this dump.")
        return cls(
            db_name=db_name,
            version=version,
            version_info=tuple(version_info),
            major_version=major_version,
            pg_version=pg_version,
            modules=dict(modules),
            raw=dict(data),
        )

    @classmethod
    def parse(cls, content: bytes) -> OdooManifest:
        """Parse and validate the bytes of ``manifest.json``."""
        try:
            data = json.loads(content)
        except (ValueError, RecursionError) as exc:
            raise OdooZipError("manifest.json is not valid JSON.") from exc
        return cls.from_mapping(data)


def _manifest_text(data: dict[str, Any], key: str, limit: int) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise OdooZipError(f"manifest.json: {key} is missing or not a short text.")
    return value


@dataclass(frozen=True)
class ZipMember:
    """One member the reader will hand out: its name in the zip and declared sizes."""

    name: str
    size: int
    compressed_size: int


def check_member_name(name: str) -> None:
    """Refuse a member name that could escape an extraction directory (zip-slip) or that no tool agrees on.

    Refused: empty or overlong names, NUL and control characters, backslashes, absolute paths, drive letters,
    empty, ``.`` and ``..`` segments. A trailing ``/`` (a directory entry) is allowed.
    """
    if not name or len(name) > _MAX_NAME_LENGTH:
        raise OdooZipError("The zip holds a member with an empty or overlong name.")
    shown = name[:200]
    if not name.isprintable():
        raise OdooZipError(f"The zip member {shown!r} has control characters in its name.")
    if "\\" in name:
        raise OdooZipError(f"The zip member {shown!r} has a backslash in its name (a Windows path).")
    if name.startswith("/") or _DRIVE.match(name):
        raise OdooZipError(f"The zip member {shown!r} has an absolute path.")
    segments = name[:-1].split("/") if name.endswith("/") else name.split("/")
    for segment in segments:
        if segment in {"", ".", ".."}:
            raise OdooZipError(f"The zip member {shown!r} has a path that points outside its folder or is not plain.")


def declared_entry_count(fileobj: IO[bytes]) -> int:
    """The number of entries the zip's end-of-central-directory record declares (zip64 aware).

    Read before zipfile parses the central directory, so that a zip declaring millions of members is refused
    before millions of objects are built.
    """
    fileobj.seek(0, io.SEEK_END)
    size = fileobj.tell()
    tail_length = min(size, 22 + 65535)
    fileobj.seek(size - tail_length)
    tail = fileobj.read(tail_length)
    position = tail.rfind(b"PK\x05\x06")
    if position < 0 or len(tail) - position < 22:
        raise OdooZipError("The file is not a zip file.")
    (total,) = struct.unpack("<H", tail[position + 10 : position + 12])
    if total != 0xFFFF:
        return int(total)
    locator_at = size - tail_length + position - 20
    locator = b""
    if locator_at >= 0:
        fileobj.seek(locator_at)
        locator = fileobj.read(20)
    if len(locator) != 20 or locator[:4] != b"PK\x06\x07":
        return int(total)  # exactly 65,535 members, written without a zip64 record (zipfile does that)
    (record_at,) = struct.unpack("<Q", locator[8:16])
    if record_at > size - 56:
        raise OdooZipError("The file is not a valid zip64 file.")
    fileobj.seek(record_at)
    record = fileobj.read(56)
    if len(record) != 56 or record[:4] != b"PK\x06\x06":
        raise OdooZipError("The file is not a valid zip64 file.")
    (total64,) = struct.unpack("<Q", record[32:40])
    return int(total64)


class _MemberStream(io.RawIOBase):
    """A member's decompressed bytes; zip errors while reading become OdooZipError, and no more than the declared
    size comes out (zipfile also stops there and checks the CRC)."""

    def __init__(self, inner: IO[bytes], member: ZipMember) -> None:
        super().__init__()
        self._inner = inner
        self._member = member
        self._left = member.size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._inner.read(min(len(view), self._left + 1))
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise OdooZipError(f"The zip member {self._member.name!r} is damaged ({exc}).") from exc
        if len(data) > self._left:
            raise OdooZipError(f"The zip member {self._member.name!r} is larger than its declared size.")
        self._left -= len(data)
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            super().close()


class OdooDumpReader:
    """An Odoo dump zip opened for streaming, every member checked against ``limits`` before anything is read.

    ``fileobj`` must be seekable (the upload is first streamed to storage or disk). Raises OdooZipError when the zip
    is refused. Members other than ``dump.sql``, ``manifest.json`` and ``filestore/`` are checked like the others,
    then left alone and listed in ``ignored`` (as Odoo's own restore does).
    """

    def __init__(self, fileobj: IO[bytes], *, limits: ZipLimits | None = None) -> None:
        if not fileobj.seekable():
            raise TypeError("OdooDumpReader needs a seekable file; stream the upload to disk or storage first.")
        self.limits = limits or ZipLimits.from_settings()
        count = declared_entry_count(fileobj)
        if count > self.limits.max_members:
            raise OdooZipError(f"The zip holds {count} members; at most {self.limits.max_members} are accepted.")
        fileobj.seek(0)
        try:
            self._zip = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:
            raise OdooZipError(f"The file is not a readable zip file ({exc}).") from exc
        try:
            self._check()
        except BaseException:
            self._zip.close()
            raise

    def _check(self) -> None:
        limits = self.limits
        infos = self._zip.infolist()
        if len(infos) > limits.max_members:
            raise OdooZipError(f"The zip holds {len(infos)} members; at most {limits.max_members} are accepted.")
        seen: set[str] = set()
        total = compressed_total = 0
        dump: ZipMember | None = None
        manifest: ZipMember | None = None
        filestore: list[tuple[int, str, ZipMember]] = []
        ignored: list[str] = []
        for info in infos:
            name = info.orig_filename
            check_member_name(name)
            key = name.rstrip("/")
            if key in seen:
                raise OdooZipError(f"The zip holds {name!r} twice.")
            seen.add(key)
            _check_member_kind(info)
            if info.file_size > limits.max_member_size:
                raise OdooZipError(
                    f"The zip member {name!r} is {info.file_size} bytes; at most {limits.max_member_size} are accepted."
                )
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise OdooZipError(f"The zip member {name!r} is stored but its sizes disagree.")
            if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise OdooZipError(
                    f"The zip member {name!r} expands {info.file_size // max(info.compress_size, 1)} times; at most "
                    f"{limits.max_ratio} times is accepted (a zip bomb?)."
                )
            total += info.file_size
            compressed_total += info.compress_size
            if total > limits.max_total_size:
                raise OdooZipError(f"The zip expands to more than {limits.max_total_size} bytes.")
            member = ZipMember(name=name, size=info.file_size, compressed_size=info.compress_size)
            if info.is_dir():
                continue
            if name == DUMP_NAME:
                dump = member
            elif name == MANIFEST_NAME:
                manifest = member
            elif name.startswith(FILESTORE_PREFIX):
                filestore.append((info.header_offset, name[len(FILESTORE_PREFIX) :], member))
            else:
                ignored.append(name)
        if total > limits.ratio_floor and total > limits.max_ratio * max(compressed_total, 1):
            raise OdooZipError(
                f"The zip expands {total // max(compressed_total, 1)} times; at most {limits.max_ratio} times is "
                "accepted (a zip bomb?)."
            )
        _check_no_overlap(infos, getattr(self._zip, "start_dir", None))
        if dump is None:
            raise OdooZipError("The zip has no dump.sql: it is not an Odoo database dump (choose the zip format).")
        if manifest is None:
            raise OdooZipError("The zip has no manifest.json: it is not an Odoo database dump.")
        if manifest.size > limits.max_manifest_size:
            raise OdooZipError(f"manifest.json is {manifest.size} bytes; at most {limits.max_manifest_size}.")
        with self._open(manifest) as stream:
            content = stream.read(limits.max_manifest_size + 1)
        self.manifest = OdooManifest.parse(content)
        self.dump = dump
        # In the order of the data in the file, so that reading them all moves forward through it.
        filestore.sort(key=lambda item: item[0])
        self.filestore: tuple[tuple[str, ZipMember], ...] = tuple((path, member) for _, path, member in filestore)
        self.ignored = tuple(ignored)

    @property
    def filestore_size(self) -> int:
        """Total declared bytes of the filestore files."""
        return sum(member.size for _, member in self.filestore)

    def _open(self, member: ZipMember) -> BinaryIO:
        try:
            inner = self._zip.open(member.name)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
            raise OdooZipError(f"The zip member {member.name!r} cannot be read ({exc}).") from exc
        return io.BufferedReader(_MemberStream(inner, member), CHUNK_SIZE)  # type: ignore[return-value]

    def open_dump(self) -> BinaryIO:
        """A stream of ``dump.sql`` (close it when done)."""
        return self._open(self.dump)

    def iter_filestore(self) -> Iterator[tuple[str, BinaryIO]]:
        """Yield ``(path relative to the filestore, stream)`` for each filestore file, e.g. ``('ab/ab12…', stream)``.

        Each stream is closed when the iteration moves on; read it before asking for the next.
        """
        for path, member in self.filestore:
            with self._open(member) as stream:
                yield path, stream

    def close(self) -> None:
        """Close the zip (not the file object it was given)."""
        self._zip.close()

    def __enter__(self) -> OdooDumpReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_member_kind(info: zipfile.ZipInfo) -> None:
    """Refuse symlinks, devices, encrypted members and compression methods other than stored and deflated."""
    name = info.orig_filename
    if info.create_system == 3:  # Unix: the high 16 bits are st_mode
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode):
            raise OdooZipError(f"The zip member {name!r} is a symbolic link.")
        if mode and kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise OdooZipError(f"The zip member {name!r} is not a regular file.")
    if info.flag_bits & 0x1:
        raise OdooZipError(f"The zip member {name!r} is encrypted.")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise OdooZipError(
            f"The zip member {name!r} uses compression method {info.compress_type}; only stored and deflated are "
            "accepted (Odoo writes deflated)."
        )


def _check_no_overlap(infos: list[zipfile.ZipInfo], central_directory_at: int | None) -> None:
    """Refuse members whose data overlap (the 'better zip bomb' reuses one compressed body for many members)."""
    ordered = sorted(infos, key=lambda info: info.header_offset)
    previous_end = 0
    for info in ordered:
        if info.header_offset < previous_end:
            raise OdooZipError(f"The zip member {info.orig_filename!r} overlaps another one (a zip bomb?).")
        try:
            name_length = len(info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"))
        except UnicodeEncodeError:
            name_length = len(info.orig_filename.encode("utf-8"))
        # 30 bytes of local header and the name: a lower bound of where the member's data ends.
        previous_end = info.header_offset + 30 + name_length + info.compress_size
    if central_directory_at is not None and previous_end > central_directory_at:
        raise OdooZipError("The zip's members overlap its central directory.")


class OdooDumpWriter:
    """Write an Odoo dump zip to ``sink``, one member at a time, streaming (bounded memory whatever the sizes).

    ``sink`` may be non-seekable (a pipe, an upload): zipfile then writes data descriptors after each member
    instead of seeking back to patch the local headers. Every member is written with zip64 headers because the
    size of a stream is not known in advance. Call :meth:`close` (or use it as a context manager) to write the
    central directory; the sink itself is not closed.
    """

    def __init__(self, sink: IO[bytes], *, compresslevel: int = 6) -> None:
        self._zip = zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel)
        self._names: set[str] = set()

    def steps(self, name: str, stream: IO[bytes]) -> Iterator[int]:
        """Write member ``name`` from ``stream`` chunk by chunk, yielding the bytes copied so far after each chunk."""
        check_member_name(name)
        if name in self._names or name.endswith("/"):
            raise ValueError(f"The zip already holds {name!r} (or it is a directory name).")
        self._names.add(name)
        copied = 0
        with self._zip.open(name, mode="w", force_zip64=True) as member:
            while chunk := stream.read(CHUNK_SIZE):
                member.write(chunk)
                copied += len(chunk)
                yield copied

    def add(self, name: str, stream: IO[bytes]) -> int:
        """Write member ``name`` from ``stream``; return its size."""
        copied = 0
        for progress in self.steps(name, stream):
            copied = progress
        return copied

    def add_dump(self, stream: IO[bytes]) -> int:
        """Write ``dump.sql`` (plain SQL, as Odoo's restore runs it with psql)."""
        return self.add(DUMP_NAME, stream)

    def add_manifest(self, manifest: Mapping[str, Any]) -> OdooManifest:
        """Validate ``manifest`` (see OdooManifest) and write it as ``manifest.json``, indented like Odoo does."""
        parsed = OdooManifest.from_mapping(dict(manifest))
        self.add(MANIFEST_NAME, io.BytesIO(json.dumps(parsed.raw, indent=4).encode()))
        return parsed

    def add_filestore_file(self, path: str, stream: IO[bytes]) -> int:
        """Write one filestore file; ``path`` is relative to the filestore (``ab/ab12…``)."""
        check_member_name(path)
        return self.add(FILESTORE_PREFIX + path, stream)

    def close(self) -> None:
        """Write the central directory."""
        self._zip.close()

    def __enter__(self) -> OdooDumpWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_odoo_zip(
    sink: IO[bytes],
    *,
    dump_sql: IO[bytes],
    filestore: Iterable[tuple[str, IO[bytes]]],
    manifest: Mapping[str, Any],
    compresslevel: int = 6,
) -> None:
    """Write a whole Odoo dump zip to ``sink``: ``dump.sql`` first (as Odoo does), ``manifest.json``, the filestore.

    The manifest is validated before anything is written.
    """
    OdooManifest.from_mapping(dict(manifest))
    with OdooDumpWriter(sink, compresslevel=compresslevel) as writer:
        writer.add_dump(dump_sql)
        writer.add_manifest(manifest)
        for path, stream in filestore:
            writer.add_filestore_file(path, stream)


class _ChunkSink(io.RawIOBase):
    """A non-seekable sink that keeps what was written until :meth:`drain` takes it."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: deque[bytes] = deque()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        if chunk:
            self._chunks.append(chunk)
        return len(chunk)

    def drain(self) -> Iterator[bytes]:
        while self._chunks:
            yield self._chunks.popleft()


def iter_odoo_zip(
    *,
    dump_sql: IO[bytes],
    filestore: Iterable[tuple[str, IO[bytes]]],
    manifest: Mapping[str, Any],
    compresslevel: int = 6,
) -> Iterator[bytes]:
    """The bytes of an Odoo dump zip as an iterator (for a streamed download), produced as the inputs are read.

    At most about one chunk of each input plus the compressor's buffers are held at a time.
    """
    OdooManifest.from_mapping(dict(manifest))
    sink = _ChunkSink()
    writer = OdooDumpWriter(sink, compresslevel=compresslevel)  # type: ignore[arg-type]
    for _ in writer.steps(DUMP_NAME, dump_sql):
        yield from sink.drain()
    writer.add_manifest(manifest)
    yield from sink.drain()
    for path, stream in filestore:
        check_member_name(path)
        for _ in writer.steps(FILESTORE_PREFIX + path, stream):
            yield from sink.drain()
        yield from sink.drain()
    writer.close()
    yield from sink.drain()


def psql_restore_argv(
    database: str, *, dump_path: str = "-", psql: str = "psql", username: str | None = None
) -> list[str]:
    """The psql command that restores an Odoo ``dump.sql`` into ``database`` (``dump_path='-'`` reads stdin).

    Unlike Odoo's own ``restore_db`` (``psql -q -f dump.sql``), it sets ``ON_ERROR_STOP=1`` and runs in a single
    transaction: without them psql reports an error, goes on with the next statement and exits 0, so a dump that
    failed half-way (a missing extension, a full disk, a truncated file) would be taken as restored. Here the
    first error stops psql with a non-zero exit status and rolls back everything, leaving an empty database the
    restore job drops. ``--no-psqlrc`` keeps a ``~/.psqlrc`` from changing those settings.
    """
    if not _PG_NAME.match(database):
        raise ValueError(f"{database[:80]!r} is not a database name psql can take safely.")
    if username is not None and not _PG_NAME.match(username):
        raise ValueError(f"{username[:80]!r} is not a role name psql can take safely.")
    if dump_path != "-" and (not dump_path.startswith("/") or "\x00" in dump_path or "\n" in dump_path):
        raise ValueError("dump_path is '-' (stdin) or an absolute path.")
    argv = [
        psql,
        "--no-psqlrc",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
        "--single-transaction",
        f"--dbname={database}",
        f"--file={dump_path}",
    ]
    if username is not None:
        argv.insert(-2, f"--username={username}")
    return argv
