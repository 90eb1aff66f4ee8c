"""Where backup objects are stored: a local directory or an S3-compatible bucket, optionally encrypted at rest.

Every object is streamed: writers take chunks and readers hand out chunks, so no object is ever held whole in
memory (an S3 upload holds one part) or staged on the panel's disk. A writer's ``close()`` returns a
``StoredObject`` only after the store confirmed the object's size and checksum; on any error the writer aborts,
and an aborted or interrupted write leaves nothing listed:

- local: the object is written under a hidden temporary name (``.<name>.tmp-<random>``), fsynced and renamed into
  place, the directory fsynced; ``abort()`` removes the temporary file;
- S3: objects smaller than one part are one ``PutObject`` with ``Content-MD5``; larger ones a multipart upload
  whose parts each carry ``Content-MD5`` (the store refuses a part that arrives altered) and whose returned ETags
  are compared with the MD5s computed here; after ``CompleteMultipartUpload`` a ``HeadObject`` must report the
  size written (and the multipart ETag where the store uses S3's format). ``abort()`` aborts the multipart
  upload; an upload interrupted by a killed worker is never an object, and ``cleanup()`` aborts what is left.

The SHA-256 recorded is that of the stored bytes (what ``verify`` reads back); for an encrypted storage the
plaintext's size and SHA-256 are returned too (``plain_size``, ``plain_sha256``), computed on the way at the cost
of a second hash.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import io
import logging
import os
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from django.conf import settings
from django.core.exceptions import ValidationError

from backups import crypto
from backups.validators import KEY_SEGMENT_RE, check_endpoint_policy, path_in_local_roots

if TYPE_CHECKING:
    from backups.models import BackupStorage

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB
S3_MAX_PARTS = 10_000
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * GiB
# The part size doubles every this many parts, so that a stream of unknown (or underestimated) size never runs
# out of S3's 10,000 parts: 16 MiB parts reach 16 GB after 1,000 parts and ~16 TB after 10,000.
PART_GROWTH_EVERY = 1_000
# Stored bytes of an encrypted object start with this, then Tink's streaming AEAD ciphertext.
ENCRYPTED_MAGIC = b"DPTINK1\n"
SHA256_METADATA = "sha256"
PLAIN_SHA256_METADATA = "plain-sha256"
ENCRYPTED_METADATA = "encrypted"
ENCRYPTED_FORMAT = "tink-streaming-aead"
KEY_MAX_LENGTH = 900
CHUNK = 1 * MiB
XATTR_SHA256 = "user.doodba_panel.sha256"
MD5_ETAG_RE = re.compile(r"[0-9a-f]{32}")
MULTIPART_ETAG_RE = re.compile(r"([0-9a-f]{32})-([0-9]+)")


class StorageError(Exception):
    """The store failed or refused an operation (the message says which and why)."""


class IntegrityError(StorageError):
    """What the store holds is not what was written: size, checksum or authentication tag differ."""


@dataclass(frozen=True)
class StoredObject:
    """An object as the store holds it. ``sha256`` is of the stored bytes ("" when the store did not keep it,
    e.g. ``list()`` of S3); ``plain_*`` describe the plaintext of an encrypted object (None/"" otherwise)."""

    key: str
    size: int
    sha256: str
    encrypted: bool = False
    plain_size: int | None = None
    plain_sha256: str = ""


def validate_key(key: str) -> str:
    """A relative object key: '/'-separated segments of ``[A-Za-z0-9._-]`` not starting with '.', so no '..', no
    leading '/', no NUL, no hidden names (temporary files are hidden). Raises ValueError (the API answers 400)."""
    if not isinstance(key, str) or not key or len(key) > KEY_MAX_LENGTH:
        raise ValueError("An object key is 1-900 characters.")
    if not all(KEY_SEGMENT_RE.fullmatch(segment) for segment in key.split("/")):
        raise ValueError(f"Not an allowed object key: {key!r}.")
    return key


def validate_list_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key, or a key followed by '/'."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def part_size_for(expected_size: int | None, part_number: int = 1) -> int:
    """The size of part ``part_number`` (1-based) of an upload expected to be ``expected_size`` bytes.

    A known size gets a part size at which it fits into 9,000 parts (margin for a slight underestimate); the base
    size is ``BACKUP_S3_PART_SIZE_MB``. Every ``PART_GROWTH_EVERY`` parts the size doubles, so that streams of
    unknown size (or larger than expected) keep within S3's 10,000 parts up to S3's 5 TiB object limit.
    """
    base = max(S3_MIN_PART, settings.BACKUP_S3_PART_SIZE_MB * MiB)
    if expected_size:
        needed = -(-expected_size // (S3_MAX_PARTS - PART_GROWTH_EVERY))
        base = max(base, -(-needed // MiB) * MiB)
    grown = base * 2 ** ((part_number - 1) // PART_GROWTH_EVERY)
    return min(S3_MAX_PART, grown)


class _RawWriter(ABC):
    """A backend's half of a writer: stores bytes under a full key; hashes what it stores."""

    def __init__(self) -> None:
        self.size = 0
        self.sha256 = hashlib.sha256()

    @abstractmethod
    def write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def commit(self, metadata: dict[str, str]) -> None:
        """Make the object visible, after confirming the store holds exactly ``self.size`` bytes."""

    @abstractmethod
    def abort(self) -> None: ...


class _Sink(io.RawIOBase):
    """The file-like destination Tink's encrypting stream writes ciphertext to (it closes it at the end)."""

    def __init__(self, raw: _RawWriter) -> None:
        self._raw = raw
        self.aborted = False
        # Tink turns an exception raised here into a TinkError; the writer raises this one instead.
        self.error: BaseException | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.aborted:
            return len(data)  # a garbage-collected stream flushing after abort(): drop it
        view = memoryview(data).cast("B")
        try:
            self._raw.write(bytes(view))
        except BaseException as exc:
            self.error = exc
            raise
        return len(view)


class ObjectWriter:
    """Streams one object into a storage. Use as a context manager: an exception aborts it; leaving the block
    normally closes it (``result`` holds the ``StoredObject``). ``close()`` may also be called explicitly."""

    def __init__(
        self,
        raw: _RawWriter,
        key: str,
        *,
        keyset: str | None,
        expected_size: int | None,
        exact: bool,
    ) -> None:
        self.key = key
        self._raw = raw
        self._expected_size = expected_size
        self._exact = exact
        self._plain_size = 0
        self._plain_sha256 = hashlib.sha256() if keyset else None
        self._sink: _Sink | None = None
        self._encrypting: BinaryIO | None = None
        self._state = "open"
        self.result: StoredObject | None = None
        if keyset:
            try:
                raw.write(ENCRYPTED_MAGIC)
                self._sink = _Sink(raw)
                self._encrypting = crypto.encrypting_stream(keyset, self._sink, key.encode())  # type: ignore[arg-type]
            except BaseException:
                self.abort()
                raise

    def write(self, chunk: bytes) -> None:
        """Store the next bytes of the object (any length)."""
        if self._state != "open":
            raise StorageError(f"The writer of {self.key} is {self._state}.")
        try:
            self._plain_size += len(chunk)
            if self._encrypting is not None and self._plain_sha256 is not None:
                self._plain_sha256.update(chunk)
                self._encrypting.write(chunk)
            else:
                self._raw.write(chunk)
        except BaseException as exc:
            self.abort()
            self._raise_cause(exc)
            raise

    def close(self) -> StoredObject:
        """Finish the object; returns it once the store confirmed its size and checksum (else aborts, raises)."""
        if self._state == "closed" and self.result is not None:
            return self.result
        if self._state != "open":
            raise StorageError(f"The writer of {self.key} is {self._state}.")
        try:
            if self._exact and self._expected_size is not None and self._plain_size != self._expected_size:
                raise IntegrityError(
                    f"{self.key}: {self._plain_size} bytes were written, {self._expected_size} were expected."
                )
            if self._encrypting is not None:
                self._encrypting.close()  # writes the last, marked segment
            sha256 = self._raw.sha256.hexdigest()
            metadata = {SHA256_METADATA: sha256}
            plain_sha256 = ""
            if self._plain_sha256 is not None:
                plain_sha256 = self._plain_sha256.hexdigest()
                metadata[PLAIN_SHA256_METADATA] = plain_sha256
            self._raw.commit(metadata)
        except BaseException as exc:
            self.abort()
            self._raise_cause(exc)
            raise
        self._state = "closed"
        encrypted = self._encrypting is not None
        self.result = StoredObject(
            key=self.key,
            size=self._raw.size,
            sha256=sha256,
            encrypted=encrypted,
            plain_size=self._plain_size if encrypted else None,
            plain_sha256=plain_sha256,
        )
        return self.result

    def _raise_cause(self, exc: BaseException) -> None:
        """Raise what the store said rather than the TinkError the encrypting stream wrapped it in."""
        if self._sink is not None and self._sink.error is not None and isinstance(exc, crypto.DecryptionError):
            raise self._sink.error from None
        if isinstance(exc, crypto.DecryptionError):
            raise StorageError(f"Encrypting {self.key} failed: {exc}") from exc

    def abort(self) -> None:
        """Throw the object away: nothing of it remains listed. Safe to call more than once."""
        if self._state in ("aborted", "closed"):
            return
        self._state = "aborted"
        if self._sink is not None:
            self._sink.aborted = True
        try:
            self._raw.abort()
        except Exception:
            logger.exception("Aborting the upload of %s failed", self.key)

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.close()


class _VerifyingReader(io.RawIOBase):
    """Reads a stream and, at its end, compares its size and SHA-256 with what was expected (IntegrityError)."""

    def __init__(
        self,
        source: Any,
        *,
        key: str,
        size: int | None,
        sha256: str,
        what: str,
        underlying: _VerifyingReader | None = None,
    ) -> None:
        self._source = source
        self._underlying = underlying
        # What this reader raised: the decrypting stream above it turns that into a TinkError.
        self.error: StorageError | None = None
        self._key = key
        self._size = size
        self._sha256 = sha256
        self._what = what
        self._count = 0
        self._hash = hashlib.sha256()
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._readinto(buffer)
        except StorageError as exc:
            self.error = exc
            raise

    def _readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._source.read(len(view))
        except crypto.DecryptionError as exc:
            if self._underlying is not None and self._underlying.error is not None:
                raise self._underlying.error from None  # the stored bytes' own error, not Tink's wrapping
            raise IntegrityError(f"{self._key}: the encrypted object does not authenticate ({exc}).") from exc
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"{self._key}: reading failed: {exc}") from exc
        if data:
            view[: len(data)] = data
            self._count += len(data)
            self._hash.update(data)
            if self._size is not None and self._count > self._size:
                raise IntegrityError(f"{self._key}: the {self._what} is longer than {self._size} bytes.")
            return len(data)
        if not self._done:
            self._done = True
            if self._size is not None and self._count != self._size:
                raise IntegrityError(f"{self._key}: the {self._what} has {self._count} bytes, not {self._size}.")
            if self._sha256 and self._hash.hexdigest() != self._sha256:
                raise IntegrityError(f"{self._key}: the {self._what}'s SHA-256 is not the one recorded.")
        return 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._source.close()
        super().close()


class _Prepended(io.RawIOBase):
    """``head`` followed by the rest of ``source`` (to put back the bytes read to detect the format)."""

    def __init__(self, head: bytes, source: Any) -> None:
        self._head = head
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._source.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._source.close()
        super().close()


def _read_exactly(source: Any, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = source.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


class Storage(ABC):
    """One configured storage: keys are relative and always land under its prefix."""

    def __init__(self, *, name: str, prefix: str, keyset: str | None, encrypt: bool) -> None:
        self.name = name
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if self.prefix:
            validate_key(self.prefix[:-1])
        self._keyset = keyset or None
        self._encrypt = bool(encrypt and keyset)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} prefix={self.prefix!r} encrypt={self._encrypt}>"

    @property
    def encrypts(self) -> bool:
        """New objects are encrypted at rest."""
        return self._encrypt

    # The interface the backup jobs use.

    def writer(self, key: str, *, expected_size: int | None = None, exact: bool = False) -> ObjectWriter:
        """A streaming writer for ``key``. ``expected_size`` (plaintext bytes) chooses the S3 part size; with
        ``exact`` a different number of bytes written is refused at ``close()``."""
        validate_key(key)
        stored_size = None
        if expected_size is not None:
            # Tink adds a header and 16 bytes per 1 MiB segment.
            stored_size = expected_size + (expected_size // MiB + 2) * 16 + 64 if self._encrypt else expected_size
        raw = self._raw_writer(self.prefix + key, stored_size, encrypted=self._encrypt)
        return ObjectWriter(
            raw, key, keyset=self._keyset if self._encrypt else None, expected_size=expected_size, exact=exact
        )

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        """Store a small object (a manifest) in one go."""
        with self.writer(key, expected_size=len(data), exact=True) as writer:
            writer.write(data)
        assert writer.result is not None
        return writer.result

    def reader(self, key: str, *, expected: StoredObject | None = None) -> BinaryIO:
        """A streaming reader of the object's plaintext (decrypted when it is encrypted).

        With ``expected`` (what ``close()`` returned, as the caller recorded it) the stored size and SHA-256 (and
        the plaintext's, when known) are checked: the read that reaches the end raises ``IntegrityError`` when
        they differ. An encrypted object that does not authenticate raises ``IntegrityError`` too. On a storage
        that encrypts, an object that is not encrypted is refused unless ``expected`` says it was stored plain.
        """
        validate_key(key)
        source = _VerifyingReader(
            self._raw_reader(self.prefix + key),
            key=key,
            size=expected.size if expected is not None else None,
            sha256=expected.sha256 if expected is not None else "",
            what="stored object",
        )
        head = _read_exactly(source, len(ENCRYPTED_MAGIC))
        if head == ENCRYPTED_MAGIC:
            if not self._keyset:
                source.close()
                raise StorageError(f"{key} is encrypted and this storage has no key.")
            plain = crypto.decrypting_stream(self._keyset, io.BufferedReader(source, CHUNK), key.encode())
            size = expected.plain_size if expected is not None else None
            sha = expected.plain_sha256 if expected is not None else ""
            return io.BufferedReader(
                _VerifyingReader(plain, key=key, size=size, sha256=sha, what="decrypted object", underlying=source),
                CHUNK,
            )  # type: ignore[return-value]
        if self._encrypt and (expected is None or expected.encrypted):
            source.close()
            raise IntegrityError(f"{key} is not encrypted, but this storage encrypts its objects.")
        return io.BufferedReader(_Prepended(head, source), CHUNK)  # type: ignore[return-value]

    def verify(self, key: str, expected: StoredObject, *, decrypt: bool = True) -> StoredObject:
        """Read the whole object back and check it against ``expected`` (IntegrityError when it differs).

        With ``decrypt`` an encrypted object is also decrypted (every segment authenticated, the plaintext's size
        and SHA-256 checked); without it only the stored bytes are read and checked, which needs no key.
        """
        validate_key(key)
        if decrypt:
            stream: Any = self.reader(key, expected=expected)
        else:
            stream = _VerifyingReader(
                self._raw_reader(self.prefix + key),
                key=key,
                size=expected.size,
                sha256=expected.sha256,
                what="stored object",
            )
        with stream:
            while stream.read(CHUNK):
                pass
        return expected

    @abstractmethod
    def stat(self, key: str) -> StoredObject | None:
        """The object's stored size (and SHA-256 when the store kept it), or None when there is none."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object (no error when it is already gone)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every complete object whose key starts with ``prefix``, in key order."""

    @abstractmethod
    def cleanup(self, older_than: float = 86400.0) -> int:
        """Remove what interrupted writes older than ``older_than`` seconds left behind; returns how many."""

    @abstractmethod
    def _raw_writer(self, full_key: str, stored_size: int | None, *, encrypted: bool) -> _RawWriter: ...

    @abstractmethod
    def _raw_reader(self, full_key: str) -> Any: ...


# Local directory.


class _LocalWriter(_RawWriter):
    def __init__(self, base: str, full_key: str) -> None:
        super().__init__()
        self._final = os.path.join(base, full_key)
        directory = os.path.dirname(self._final)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not os.path.realpath(directory).startswith(os.path.realpath(base).rstrip("/") + "/") and (
            os.path.realpath(directory) != os.path.realpath(base)
        ):
            raise StorageError(f"{full_key} resolves outside the storage directory.")
        self._dir = directory
        self._temp = os.path.join(directory, f".{os.path.basename(self._final)}.tmp-{secrets.token_hex(8)}")
        self._fd: int | None = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)

    def write(self, chunk: bytes) -> None:
        assert self._fd is not None
        view = memoryview(chunk)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:  # a full disk, a quota
            raise StorageError(f"Writing {self._final}: {exc.strerror}.") from exc
        self.size += len(chunk)
        self.sha256.update(chunk)

    def commit(self, metadata: dict[str, str]) -> None:
        try:
            self._commit(metadata)
        except OSError as exc:
            raise StorageError(f"Storing {self._final}: {exc.strerror}.") from exc

    def _commit(self, metadata: dict[str, str]) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        on_disk = os.fstat(self._fd).st_size
        if on_disk != self.size:
            raise IntegrityError(f"{self._final}: {on_disk} bytes on disk, {self.size} written.")
        with contextlib.suppress(OSError):  # a file system without user xattrs: stat() reports no sha256
            os.setxattr(self._fd, XATTR_SHA256, metadata[SHA256_METADATA].encode())
        os.close(self._fd)
        self._fd = None
        os.replace(self._temp, self._final)
        dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def abort(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)


class LocalStorage(Storage):
    """A directory on the panel host (inside ``BACKUP_LOCAL_ROOTS``)."""

    def __init__(self, *, path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not path_in_local_roots(path):
            raise StorageError(f"{path} is not inside BACKUP_LOCAL_ROOTS.")
        self.base = os.path.realpath(path)

    def _path(self, full_key: str) -> str:
        return os.path.join(self.base, full_key)

    def _raw_writer(self, full_key: str, stored_size: int | None, *, encrypted: bool) -> _RawWriter:
        try:
            return _LocalWriter(self.base, full_key)
        except OSError as exc:
            raise StorageError(f"Cannot write {full_key} in {self.base}: {exc.strerror}.") from exc

    def _raw_reader(self, full_key: str) -> Any:
        try:
            return open(self._path(full_key), "rb", buffering=0)  # the caller closes it
        except FileNotFoundError as exc:
            raise StorageError(f"{full_key} is not in the storage.") from exc

    def _object(self, key: str, path: str) -> StoredObject:
        with open(path, "rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            encrypted = handle.read(len(ENCRYPTED_MAGIC)) == ENCRYPTED_MAGIC
            try:
                sha256 = os.getxattr(handle.fileno(), XATTR_SHA256).decode()
            except OSError:
                sha256 = ""
        return StoredObject(key=key, size=size, sha256=sha256, encrypted=encrypted)

    def stat(self, key: str) -> StoredObject | None:
        validate_key(key)
        path = self._path(self.prefix + key)
        if not os.path.isfile(path):
            return None
        return self._object(key, path)

    def delete(self, key: str) -> None:
        validate_key(key)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(self.prefix + key))

    def _walk(self) -> Iterator[tuple[str, str, list[str], list[str]]]:
        top = self._path(self.prefix) if self.prefix else self.base
        for directory, subdirs, files in os.walk(top):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            rel = os.path.relpath(directory, top)
            yield directory, "" if rel == "." else rel + "/", subdirs, files

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        validate_list_prefix(prefix)
        found: list[tuple[str, str]] = []
        for directory, rel, _subdirs, files in self._walk():
            if not (rel.startswith(prefix) or prefix.startswith(rel)):
                continue
            for name in files:
                key = rel + name
                if not name.startswith(".") and key.startswith(prefix):
                    found.append((key, os.path.join(directory, name)))
        for key, path in sorted(found):
            with contextlib.suppress(FileNotFoundError):
                yield self._object(key, path)

    def cleanup(self, older_than: float = 86400.0) -> int:
        removed = 0
        limit = time.time() - older_than
        for directory, _rel, _subdirs, files in self._walk():
            for name in files:
                path = os.path.join(directory, name)
                if name.startswith(".") and ".tmp-" in name:
                    with contextlib.suppress(FileNotFoundError):
                        if os.stat(path).st_mtime < limit:
                            os.unlink(path)
                            removed += 1
        return removed


# S3-compatible stores.


def _etag(value: str | None) -> str:
    return (value or "").strip('"').lower()


def _s3_error(what: str, exc: Exception) -> StorageError:
    detail = str(exc)
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        detail = f"{error.get('Code', '')} {error.get('Message', '')}".strip() or detail
    return StorageError(f"{what}: {detail}")


class _S3Writer(_RawWriter):
    def __init__(self, client: Any, bucket: str, full_key: str, stored_size: int | None, encrypted: bool) -> None:
        super().__init__()
        # Known before the first byte, so a multipart object carries it too (its checksums are known only after).
        self._initial_metadata = {ENCRYPTED_METADATA: ENCRYPTED_FORMAT} if encrypted else {}
        self._client = client
        self._bucket = bucket
        self._key = full_key
        self._expected = stored_size
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._part_md5s: list[bytes] = []

    def _part_size(self) -> int:
        return part_size_for(self._expected, len(self._parts) + 1)

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.sha256.update(chunk)
        self._buffer += chunk
        while len(self._buffer) >= self._part_size():
            size = self._part_size()
            with memoryview(self._buffer) as view:  # one copy of the part, not two
                part = bytes(view[:size])
            del self._buffer[:size]
            self._upload_part(part)

    def _upload_part(self, part: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._upload_id is None:
            try:
                created = self._client.create_multipart_upload(
                    Bucket=self._bucket, Key=self._key, Metadata=self._initial_metadata
                )
            except (BotoCoreError, ClientError) as exc:
                raise _s3_error(f"Starting the upload of {self._key}", exc) from exc
            self._upload_id = str(created["UploadId"])
        number = len(self._parts) + 1
        if number > S3_MAX_PARTS:
            raise StorageError(f"{self._key}: more than {S3_MAX_PARTS} parts.")
        digest = hashlib.md5(part, usedforsecurity=False).digest()
        try:
            answer = self._client.upload_part(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=part,
                ContentLength=len(part),
                ContentMD5=base64.b64encode(digest).decode(),
            )
        except (BotoCoreError, ClientError) as exc:
            raise _s3_error(f"Uploading part {number} of {self._key}", exc) from exc
        etag = _etag(answer.get("ETag"))
        # S3 and most compatible stores answer a part's MD5 as its ETag; an MD5-shaped ETag that differs means
        # the store holds other bytes than were sent. (Content-MD5 already made the store check it.)
        if MD5_ETAG_RE.fullmatch(etag) and etag != digest.hex():
            raise IntegrityError(f"{self._key}: the store's checksum of part {number} is not the one sent.")
        if not etag:
            raise IntegrityError(f"{self._key}: the store answered no ETag for part {number}.")
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self._part_md5s.append(digest)

    def commit(self, metadata: dict[str, str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._upload_id is None:
            body = bytes(self._buffer)
            self._buffer = bytearray()
            digest = hashlib.md5(body, usedforsecurity=False).digest()
            try:
                answer = self._client.put_object(
                    Bucket=self._bucket,
                    Key=self._key,
                    Body=body,
                    ContentLength=len(body),
                    ContentMD5=base64.b64encode(digest).decode(),
                    Metadata={**self._initial_metadata, **metadata},
                )
            except (BotoCoreError, ClientError) as exc:
                raise _s3_error(f"Uploading {self._key}", exc) from exc
            etag = _etag(answer.get("ETag"))
            if MD5_ETAG_RE.fullmatch(etag) and etag != digest.hex():
                raise IntegrityError(f"{self._key}: the store's checksum is not the one sent.")
            expected_etag = digest.hex()
        else:
            if self._buffer:
                self._upload_part(bytes(self._buffer))
                self._buffer = bytearray()
            try:
                self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
            except (BotoCoreError, ClientError) as exc:
                raise _s3_error(f"Completing the upload of {self._key}", exc) from exc
            self._upload_id = None
            combined = hashlib.md5(b"".join(self._part_md5s), usedforsecurity=False).hexdigest()
            expected_etag = f"{combined}-{len(self._parts)}"
        self._confirm(expected_etag)

    def _confirm(self, expected_etag: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self._client.head_object(Bucket=self._bucket, Key=self._key)
        except (BotoCoreError, ClientError) as exc:
            raise _s3_error(f"Checking {self._key} after the upload", exc) from exc
        if int(head.get("ContentLength", -1)) != self.size:
            self._remove()
            raise IntegrityError(f"{self._key}: the store holds {head.get('ContentLength')} bytes, not {self.size}.")
        etag = _etag(head.get("ETag"))
        shaped = MULTIPART_ETAG_RE.fullmatch(etag) if "-" in expected_etag else MD5_ETAG_RE.fullmatch(etag)
        if shaped and etag != expected_etag:
            self._remove()
            raise IntegrityError(f"{self._key}: the store's checksum of the object is not the one of what was sent.")

    def _remove(self) -> None:
        with contextlib.suppress(Exception):
            self._client.delete_object(Bucket=self._bucket, Key=self._key)

    def abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is not None:
            from botocore.exceptions import ClientError

            upload_id, self._upload_id = self._upload_id, None
            try:
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=upload_id)
            except ClientError as exc:
                # A store that dropped the upload when it refused to complete it has nothing left to abort.
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise


class _S3Body(io.RawIOBase):
    """A GetObject body as a raw stream that raises StorageError on transport errors (botocore raises when the
    body ends before its Content-Length)."""

    def __init__(self, body: Any, key: str) -> None:
        self._body = body
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from botocore.exceptions import BotoCoreError

        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except (BotoCoreError, OSError) as exc:
            raise StorageError(f"Reading {self._key}: {exc}") from exc
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()
        super().close()


class S3Storage(Storage):
    """A bucket of an S3-compatible store, reached with boto3."""

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str,
        region: str,
        access_key_id: str,
        secret_access_key: str,
        addressing_style: str = "auto",
        max_attempts: int | None = None,
        **kwargs: Any,
    ) -> None:
        import boto3
        from botocore.config import Config

        super().__init__(**kwargs)
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        config = Config(
            # Newer boto3 adds CRC checksums to every upload by default; many S3-compatible stores refuse them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Every upload carries Content-MD5, which the signature covers and the store checks: hashing each
            # body once more with SHA-256 for the signature (what botocore does over http) is a pass over every
            # byte for nothing (over https botocore already skips it when Content-MD5 is there).
            s3=cast(Any, {"addressing_style": addressing_style, "payload_signing_enabled": False}),
            connect_timeout=settings.BACKUP_S3_CONNECT_TIMEOUT,
            read_timeout=settings.BACKUP_S3_READ_TIMEOUT,
            retries={"max_attempts": max_attempts or settings.BACKUP_S3_MAX_ATTEMPTS, "mode": "standard"},
        )
        # A session of its own: boto3's default session is shared and not thread-safe.
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )

    def __repr__(self) -> str:
        return f"<S3Storage {self.name!r} bucket={self.bucket!r} prefix={self.prefix!r} encrypt={self.encrypts}>"

    def _raw_writer(self, full_key: str, stored_size: int | None, *, encrypted: bool) -> _RawWriter:
        return _S3Writer(self._client, self.bucket, full_key, stored_size, encrypted)

    def _raw_reader(self, full_key: str) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=full_key)
        except (BotoCoreError, ClientError) as exc:
            raise _s3_error(f"Reading {full_key}", exc) from exc
        return _S3Body(answer["Body"], full_key)

    def stat(self, key: str) -> StoredObject | None:
        from botocore.exceptions import BotoCoreError, ClientError

        validate_key(key)
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _s3_error(f"Checking {key}", exc) from exc
        except BotoCoreError as exc:
            raise _s3_error(f"Checking {key}", exc) from exc
        metadata = head.get("Metadata") or {}
        plain = metadata.get(PLAIN_SHA256_METADATA, "")
        return StoredObject(
            key=key,
            size=int(head["ContentLength"]),
            sha256=metadata.get(SHA256_METADATA, ""),
            encrypted=metadata.get(ENCRYPTED_METADATA) == ENCRYPTED_FORMAT or bool(plain),
            plain_sha256=plain,
        )

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        validate_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except (BotoCoreError, ClientError) as exc:
            raise _s3_error(f"Deleting {key}", exc) from exc

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        from botocore.exceptions import BotoCoreError, ClientError

        validate_list_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    key = str(item["Key"])[len(self.prefix) :]
                    yield StoredObject(key=key, size=int(item["Size"]), sha256="")
        except (BotoCoreError, ClientError) as exc:
            raise _s3_error(f"Listing {prefix or 'the storage'}", exc) from exc

    def multipart_uploads(self) -> builtins.list[Any]:
        """The multipart uploads in progress (or left by interrupted writers) under the storage's prefix."""
        from botocore.exceptions import BotoCoreError, ClientError

        uploads: builtins.list[Any] = []
        try:
            paginator = self._client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                uploads.extend(page.get("Uploads", []))
        except (BotoCoreError, ClientError) as exc:
            raise _s3_error("Listing unfinished uploads", exc) from exc
        return uploads

    def cleanup(self, older_than: float = 86400.0) -> int:
        removed = 0
        limit = time.time() - older_than
        for upload in self.multipart_uploads():
            initiated = upload.get("Initiated")
            if initiated is not None and initiated.timestamp() >= limit:
                continue
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                removed += 1
        return removed


def open_storage(backup_storage: BackupStorage, *, max_attempts: int | None = None) -> Storage:
    """The ``Storage`` of a configured ``BackupStorage`` (the endpoint is checked against the SSRF policy again:
    a name may resolve elsewhere than when it was saved). ``max_attempts`` overrides ``BACKUP_S3_MAX_ATTEMPTS``
    (a check made while someone waits gives up sooner)."""
    from backups.models import StorageKind

    common: dict[str, Any] = {
        "name": backup_storage.name,
        "prefix": backup_storage.prefix,
        "keyset": backup_storage.encryption_keyset or None,
        "encrypt": backup_storage.encrypt,
    }
    if backup_storage.encrypt and not backup_storage.encryption_keyset:
        raise StorageError(f"{backup_storage.name} encrypts but has no key (save it once to create one).")
    if backup_storage.kind == StorageKind.LOCAL:
        return LocalStorage(path=backup_storage.path, **common)
    if backup_storage.kind == StorageKind.S3:
        try:
            check_endpoint_policy(backup_storage.endpoint_url)
        except ValidationError as exc:
            raise StorageError(" ".join(exc.messages)) from exc
        return S3Storage(
            bucket=backup_storage.bucket,
            endpoint_url=backup_storage.endpoint_url,
            region=backup_storage.region,
            access_key_id=backup_storage.access_key_id,
            secret_access_key=backup_storage.secret_access_key,
            addressing_style=backup_storage.addressing_style,
            max_attempts=max_attempts,
            **common,
        )
    raise StorageError(f"Unknown storage kind {backup_storage.kind!r}.")
