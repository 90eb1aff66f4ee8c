"""Backup storage (backups.storage) against a local directory and real S3 servers over HTTP (moto, rclone)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from backups.models import BackupStorage
from backups.storage import (
    ENCRYPTED_MAGIC,
    IntegrityError,
    MiB,
    S3Storage,
    Storage,
    StorageError,
    StoredObject,
    open_storage,
    part_size_for,
    validate_key,
)
from tests.backup_fixtures import CountingProxy, S3Endpoint, make_local_storage, make_s3_storage

pytestmark = pytest.mark.django_db


def pattern(size: int, seed: int = 1, chunk: int = 1 * MiB) -> Iterator[bytes]:
    """``size`` bytes generated on the fly (never all in memory), different for each seed and offset."""
    block = hashlib.sha256(str(seed).encode()).digest() * (chunk // 32)
    offset = 0
    while offset < size:
        n = min(chunk, size - offset)
        prefix = offset.to_bytes(8, "big")
        yield (prefix + block)[:n]
        offset += n


def digest(chunks: Iterator[bytes]) -> tuple[int, str]:
    hasher = hashlib.sha256()
    size = 0
    for chunk in chunks:
        hasher.update(chunk)
        size += len(chunk)
    return size, hasher.hexdigest()


def read_all(storage: Storage, key: str, **kwargs: Any) -> tuple[int, str]:
    with storage.reader(key, **kwargs) as stream:
        return digest(iter(lambda: stream.read(256 * 1024), b""))


def write(storage: Storage, key: str, chunks: Iterator[bytes], **kwargs: Any) -> StoredObject:
    with storage.writer(key, **kwargs) as writer:
        for chunk in chunks:
            writer.write(chunk)
    assert writer.result is not None
    return writer.result


@pytest.fixture
def small_parts(settings: Any) -> None:
    """5 MiB parts (S3's minimum), so that a few MiB make a multipart upload."""
    settings.BACKUP_S3_PART_SIZE_MB = 5


@pytest.fixture
def s3(orgs: dict[str, Any], s3_server: S3Endpoint, s3_bucket: str, small_parts: None) -> S3Storage:
    storage = open_storage(make_s3_storage(orgs["a"], s3_server, s3_bucket, prefix="panel/acme"))
    assert isinstance(storage, S3Storage)
    return storage


@pytest.fixture
def local(orgs: dict[str, Any], backup_root: Path) -> Storage:
    return open_storage(make_local_storage(orgs["a"], backup_root / "store", prefix="panel"))


def test_it_round_trips_a_multipart_object(s3: S3Storage, s3_server: S3Endpoint, s3_bucket: str) -> None:
    size = 17 * MiB + 12345
    expected = digest(pattern(size))
    stored = write(s3, "backups/1/db.dump", pattern(size))
    assert (stored.size, stored.sha256) == expected
    assert stored.encrypted is False

    # Under the storage's prefix, as four parts (5+5+5+2 MiB), listed and readable back byte for byte.
    head = s3_server.client().head_object(Bucket=s3_bucket, Key="panel/acme/backups/1/db.dump")
    assert head["ContentLength"] == size
    if s3_server.name == "moto":
        assert head["ETag"].strip('"').endswith("-4")
    assert [(o.key, o.size) for o in s3.list("backups/")] == [("backups/1/db.dump", size)]
    stat = s3.stat("backups/1/db.dump")
    assert stat is not None and stat.size == size
    assert read_all(s3, "backups/1/db.dump") == expected
    assert read_all(s3, "backups/1/db.dump", expected=stored) == expected
    assert s3.multipart_uploads() == []

    # A small object is one PUT and keeps its SHA-256 as metadata (where the store keeps metadata: moto does,
    # rclone over a local directory forgets it).
    sha = hashlib.sha256(b'{"objects": []}').hexdigest()
    manifest = s3.put_bytes("backups/1/manifest.json", b'{"objects": []}')
    assert manifest == StoredObject(key="backups/1/manifest.json", size=15, sha256=sha)
    kept = s3.stat("backups/1/manifest.json")
    assert kept is not None and kept.size == 15
    assert kept.sha256 == (sha if s3_server.name == "moto" else kept.sha256) and kept.sha256 in ("", sha)
    assert [o.key for o in s3.list("backups/1/")] == ["backups/1/db.dump", "backups/1/manifest.json"]

    s3.delete("backups/1/db.dump")
    assert s3.stat("backups/1/db.dump") is None
    assert [o.key for o in s3.list()] == ["backups/1/manifest.json"]


def test_it_round_trips_on_a_local_directory(local: Storage, backup_root: Path) -> None:
    size = 3 * MiB + 7
    stored = write(local, "backups/2/db.dump", pattern(size, seed=2))
    assert (stored.size, stored.sha256) == digest(pattern(size, seed=2))
    path = backup_root / "store" / "panel" / "backups" / "2" / "db.dump"
    assert path.stat().st_size == size
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert read_all(local, "backups/2/db.dump", expected=stored) == (stored.size, stored.sha256)
    assert [(o.key, o.size) for o in local.list("backups/")] == [("backups/2/db.dump", size)]
    assert local.stat("backups/2/db.dump") is not None
    assert local.stat("backups/2/nothing") is None
    local.put_bytes("backups/2/manifest.json", b"{}")
    assert [o.key for o in local.list("backups/2/m")] == ["backups/2/manifest.json"]
    local.delete("backups/2/db.dump")
    assert [o.key for o in local.list()] == ["backups/2/manifest.json"]


@pytest.mark.parametrize("where", ["local", "rclone"])
def test_it_streams_200_mb_without_holding_it_in_memory(
    where: str, request: pytest.FixtureRequest, orgs: dict[str, Any], small_parts: None
) -> None:
    # rclone runs in its own process, so what is traced here is only the panel's side of the upload (moto's
    # threaded server would keep the object in this process's memory).
    if where == "local":
        storage = request.getfixturevalue("local")
    else:
        server = request.getfixturevalue("rclone_s3")
        bucket = "stream-" + os.urandom(4).hex()
        server.client().create_bucket(Bucket=bucket)
        storage = open_storage(make_s3_storage(orgs["a"], server, bucket))
    size = 200 * MiB
    tracemalloc.start()
    try:
        stored = write(storage, "big/stream.bin", pattern(size, seed=3), expected_size=size)
        _current, peak_write = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert read_all(storage, "big/stream.bin", expected=stored) == digest(pattern(size, seed=3))
        _current, peak_read = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size == size
    # One 5 MiB part (and its copy for the request) plus the 1 MiB chunks in flight: far below the 200 MiB.
    assert peak_write < 24 * MiB, peak_write
    assert peak_read < 8 * MiB, peak_read


def test_it_leaves_nothing_listed_after_an_aborted_upload(s3: S3Storage) -> None:
    with pytest.raises(RuntimeError, match="pg_dump failed"), s3.writer("backups/3/db.dump") as writer:
        for chunk in pattern(12 * MiB):
            writer.write(chunk)
        assert len(s3.multipart_uploads()) == 1  # two parts are stored by now
        raise RuntimeError("pg_dump failed")
    assert list(s3.list()) == []
    assert s3.stat("backups/3/db.dump") is None
    assert s3.multipart_uploads() == []
    with pytest.raises(StorageError, match="aborted"):
        writer.write(b"more")


def test_it_never_lists_an_upload_that_was_interrupted(
    s3: S3Storage, s3_server: S3Endpoint, local: Storage, backup_root: Path
) -> None:
    # A worker killed mid-stream neither closes nor aborts its writer.
    for storage in (s3, local):
        writer = storage.writer("backups/4/db.dump")
        for chunk in pattern(11 * MiB):
            writer.write(chunk)
        assert list(storage.list()) == []
        assert storage.stat("backups/4/db.dump") is None
        del writer
    leftovers = [p for p in (backup_root / "store").rglob("*") if p.is_file()]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".db.dump.tmp-")
    assert len(s3.multipart_uploads()) == 1
    # Cleaning up keeps what is recent (it may be a running upload), then removes what was left behind.
    assert local.cleanup(older_than=3600) == 0
    if s3_server.name != "moto":  # moto dates every upload 2010-11-10
        assert s3.cleanup(older_than=3600) == 0
    assert local.cleanup(older_than=0) == 1 and s3.cleanup(older_than=0) == 1
    assert [p for p in (backup_root / "store").rglob("*") if p.is_file()] == []
    assert s3.multipart_uploads() == []


class Corrupting:
    """A client that alters what it sends (a flaky proxy, a bad NIC, a buggy SDK) around the real one."""

    def __init__(self, client: Any, mode: str) -> None:
        self._client = client
        self._mode = mode

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def complete_multipart_upload(self, **kwargs: Any) -> Any:
        if self._mode == "dropped":  # a part left out of the completed object (a buggy SDK or store)
            parts = kwargs["MultipartUpload"]["Parts"]
            kwargs["MultipartUpload"] = {"Parts": parts[:1] + parts[2:]}
        return self._client.complete_multipart_upload(**kwargs)

    def upload_part(self, **kwargs: Any) -> Any:
        if self._mode == "dropped":
            return self._client.upload_part(**kwargs)
        body = bytearray(kwargs["Body"])
        if kwargs["PartNumber"] == 2:
            if self._mode == "flip":  # the bytes change on the way; the MD5 sent is still the right one
                body[100] ^= 0xFF
            else:  # a part comes out short, and whatever sent it recomputed the MD5 for the short part
                del body[-1000:]
                import base64

                kwargs["ContentMD5"] = base64.b64encode(hashlib.md5(bytes(body)).digest()).decode()
            kwargs["ContentLength"] = len(body)
        kwargs["Body"] = bytes(body)
        return self._client.upload_part(**kwargs)


@pytest.mark.parametrize("mode", ["flip", "short", "dropped"])
def test_it_refuses_a_part_that_the_store_did_not_receive_intact(
    s3: S3Storage, s3_server: S3Endpoint, mode: str
) -> None:
    s3._client = Corrupting(s3._client, mode)
    with pytest.raises(StorageError) as refused:
        write(s3, "backups/5/db.dump", pattern(16 * MiB))
    if mode == "short":
        # The store took the short part (its MD5 matched): the ETag it answered is not the MD5 of the part.
        assert isinstance(refused.value, IntegrityError)
        assert "checksum of part 2" in str(refused.value)
    if mode == "dropped":
        # Every part arrived intact, but one was left out of the object. rclone refuses the gap; moto completes
        # the object (S3 allows gaps), and only the size check after completion tells: it is deleted again.
        if s3_server.name == "rclone":
            assert "InvalidPart" in str(refused.value)
        else:
            assert isinstance(refused.value, IntegrityError)
            assert "bytes, not 16777216" in str(refused.value)
    assert list(s3.list()) == []
    assert s3.multipart_uploads() == []


def test_it_reports_the_store_error_through_encryption(encrypted: S3Storage) -> None:
    encrypted._client = Corrupting(encrypted._client, "flip")
    # The store's refusal (rclone checks Content-MD5) or the ETag check (moto does not), not Tink's wrapper.
    with pytest.raises(StorageError, match="part 2") as refused:
        write(encrypted, "backups/5b/db.dump", pattern(16 * MiB))
    assert "Tink" not in str(refused.value) and "UNKNOWN" not in str(refused.value)
    assert list(encrypted.list()) == []
    assert encrypted.multipart_uploads() == []


def test_it_refuses_a_size_other_than_the_exact_one_expected(s3: S3Storage, local: Storage) -> None:
    for storage in (s3, local):
        with pytest.raises(IntegrityError, match="9 bytes were written, 10 were expected"):
            write(storage, "files/ab/cdef", iter([b"123456789"]), expected_size=10, exact=True)
        assert list(storage.list()) == []


def test_it_detects_an_object_altered_after_upload(
    s3: S3Storage, s3_server: S3Endpoint, s3_bucket: str, local: Storage, backup_root: Path
) -> None:
    stored = write(s3, "backups/6/db.dump", pattern(6 * MiB, seed=6))
    local_stored = write(local, "backups/6/db.dump", pattern(6 * MiB, seed=6))
    # The same size, one byte different, behind the panel's back.
    client = s3_server.client()
    altered = bytearray(b"".join(pattern(6 * MiB, seed=6)))
    altered[3 * MiB + 100] ^= 1
    client.put_object(Bucket=s3_bucket, Key="panel/acme/backups/6/db.dump", Body=bytes(altered))
    path = backup_root / "store" / "panel" / "backups" / "6" / "db.dump"
    with open(path, "r+b") as handle:
        handle.seek(3 * MiB + 100)
        handle.write(bytes([altered[3 * MiB + 100]]))
    for storage, expected in ((s3, stored), (local, local_stored)):
        with pytest.raises(IntegrityError, match="SHA-256 is not the one recorded"):
            storage.verify("backups/6/db.dump", expected)
    # Shortened: refused on size.
    client.put_object(Bucket=s3_bucket, Key="panel/acme/backups/6/db.dump", Body=bytes(altered[:-1]))
    with pytest.raises(IntegrityError, match="bytes, not"):
        s3.verify("backups/6/db.dump", stored)


@pytest.fixture
def encrypted(orgs: dict[str, Any], s3_server: S3Endpoint, s3_bucket: str, small_parts: None) -> S3Storage:
    row = make_s3_storage(orgs["a"], s3_server, s3_bucket, name="sealed", encrypt=True)
    assert row.encryption_keyset  # created on save
    storage = open_storage(row)
    assert isinstance(storage, S3Storage)
    return storage


def test_it_round_trips_encrypted_objects(encrypted: S3Storage, s3_server: S3Endpoint, s3_bucket: str) -> None:
    size = 11 * MiB + 3
    plain = digest(pattern(size, seed=7))
    stored = write(encrypted, "backups/7/db.dump", pattern(size, seed=7), expected_size=size)
    assert stored.encrypted
    assert (stored.plain_size, stored.plain_sha256) == plain
    assert stored.size > size  # header and one tag per 1 MiB segment
    raw = s3_server.client().get_object(Bucket=s3_bucket, Key="backups/7/db.dump")["Body"].read()
    assert (len(raw), hashlib.sha256(raw).hexdigest()) == (stored.size, stored.sha256)
    assert raw.startswith(ENCRYPTED_MAGIC)
    assert next(pattern(size, seed=7))[8:4096] not in raw
    assert read_all(encrypted, "backups/7/db.dump") == plain
    assert read_all(encrypted, "backups/7/db.dump", expected=stored) == plain
    stat = encrypted.stat("backups/7/db.dump")
    assert stat is not None and stat.size == stored.size
    if s3_server.name == "moto":  # rclone over a local directory forgets metadata
        assert stat.encrypted
    # Small objects too.
    assert encrypted.put_bytes("backups/7/manifest.json", b"{}").plain_sha256 == hashlib.sha256(b"{}").hexdigest()
    assert read_all(encrypted, "backups/7/manifest.json") == (2, hashlib.sha256(b"{}").hexdigest())


def test_it_detects_tampering_with_encrypted_objects(
    encrypted: S3Storage, s3_server: S3Endpoint, s3_bucket: str
) -> None:
    size = 3 * MiB
    write(encrypted, "backups/8/db.dump", pattern(size, seed=8))
    client = s3_server.client()
    raw = client.get_object(Bucket=s3_bucket, Key="backups/8/db.dump")["Body"].read()

    def stored_as(key: str, data: bytes) -> None:
        client.put_object(Bucket=s3_bucket, Key=key, Body=data)

    flipped = bytearray(raw)
    flipped[2 * MiB] ^= 1
    stored_as("backups/8/flipped", bytes(flipped))
    stored_as("backups/8/truncated", raw[: len(raw) - 100])
    stored_as("backups/8/cut-at-segment", raw[: len(ENCRYPTED_MAGIC) + 1 * MiB])
    stored_as("backups/8/moved", raw)  # a valid ciphertext, of another key
    stored_as("backups/8/plain", b"".join(pattern(size, seed=8)))
    # Recorded checksums catch it without the key; decrypting catches it without them.
    original = write(encrypted, "backups/8/original", pattern(size, seed=8))
    encrypted.verify("backups/8/original", original, decrypt=False)
    stored_as("backups/8/original", bytes(flipped))
    with pytest.raises(IntegrityError, match="SHA-256 is not the one recorded"):
        encrypted.verify("backups/8/original", original, decrypt=False)
    # An intact object whose recorded checksum differs: the recorded checksum is named, not the decryption.
    intact = write(encrypted, "backups/8/intact", pattern(size, seed=8))
    with pytest.raises(IntegrityError, match="stored object's SHA-256 is not the one recorded"):
        read_all(encrypted, "backups/8/intact", expected=dataclasses.replace(intact, sha256="0" * 64))
    with pytest.raises(IntegrityError, match="decrypted object's SHA-256 is not the one recorded"):
        read_all(encrypted, "backups/8/intact", expected=dataclasses.replace(intact, plain_sha256="0" * 64))
    # No expected checksums given: the authentication alone refuses each one.
    for key in ("flipped", "truncated", "cut-at-segment", "moved"):
        with pytest.raises(IntegrityError, match="does not authenticate"):
            read_all(encrypted, f"backups/8/{key}")
    with pytest.raises(IntegrityError, match="not encrypted"):
        read_all(encrypted, "backups/8/plain")


def test_it_reads_objects_written_before_encryption_was_switched_on_only_when_recorded_plain(
    orgs: dict[str, Any], backup_root: Path
) -> None:
    row = make_local_storage(orgs["a"], backup_root / "switch")
    before = open_storage(row).put_bytes("old", b"plain bytes")
    row.encrypt = True
    row.save()
    storage = open_storage(row)
    assert storage.encrypts
    assert storage.put_bytes("new", b"sealed").encrypted
    assert [(o.key, o.encrypted) for o in storage.list()] == [("new", True), ("old", False)]
    with storage.reader("old", expected=before) as stream:
        assert stream.read() == b"plain bytes"
    with pytest.raises(IntegrityError, match="not encrypted"):
        storage.reader("old")
    # Switched off again: new objects are plain, the encrypted ones stay readable (the keyset is kept).
    row.encrypt = False
    row.save()
    storage = open_storage(row)
    with storage.reader("new") as stream:
        assert stream.read() == b"sealed"


@pytest.mark.parametrize(
    "key",
    ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", ".hidden", "a/.x.tmp-1", "a\x00b", "a b",
     "a\\b", "é", "a;rm -rf", "x" * 901],
)  # fmt: skip
def test_it_refuses_keys_that_could_escape_the_prefix(key: str, local: Storage, s3: S3Storage) -> None:
    with pytest.raises(ValueError):
        validate_key(key)
    for storage in (local, s3):
        with pytest.raises(ValueError):
            storage.writer(key)
        with pytest.raises(ValueError):
            storage.stat(key)
        with pytest.raises(ValueError):
            storage.reader(key)
        with pytest.raises(ValueError):
            storage.delete(key)


def test_it_refuses_listing_prefixes_and_storage_settings_that_escape(
    local: Storage, orgs: dict[str, Any], backup_root: Path
) -> None:
    for prefix in ("../", "/", "a/../", "..", "a//"):
        with pytest.raises(ValueError):
            list(local.list(prefix))
    for fields in (
        {"path": "/etc"},
        {"path": str(backup_root / ".." / "elsewhere")},
        {"path": "relative/dir"},
        {"path": str(backup_root / "ok"), "prefix": "../up"},
        {"path": str(backup_root / "ok"), "prefix": "/abs"},
        {"path": str(backup_root / "ok"), "prefix": "a/.hidden"},
        {"path": str(backup_root / "ok"), "prefix": "a//b"},
    ):
        with pytest.raises(ValidationError):
            make_local_storage(orgs["a"], Path(fields.pop("path")), **fields)
    # A symlink inside the root that points out of it.
    (backup_root / "link").symlink_to("/tmp")
    with pytest.raises(ValidationError):
        make_local_storage(orgs["a"], backup_root / "link")


def test_it_keeps_the_secrets_out_of_reprs_and_the_database(
    orgs: dict[str, Any], moto_s3: S3Endpoint, small_parts: None
) -> None:
    moto_s3.client().create_bucket(Bucket="secrets-check")
    row = make_s3_storage(orgs["a"], moto_s3, "secrets-check", encrypt=True)
    storage = open_storage(row)
    secret = moto_s3.secret_access_key
    keyset = row.encryption_keyset
    shown = [repr(row), str(row), repr(storage), str(storage), repr(storage.put_bytes("x", b"1"))]
    for text in shown:
        assert secret not in text and keyset not in text and "keyValue" not in text
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret_access_key, encryption_keyset FROM backups_backupstorage WHERE id = %s", [row.pk])
        stored_secret, stored_keyset = cursor.fetchone()
    assert secret not in stored_secret and "keyValue" not in stored_keyset
    fresh = BackupStorage.objects.get(pk=row.pk)
    assert fresh.secret_access_key == secret and fresh.encryption_keyset == keyset


def test_it_chooses_part_sizes_that_fit_streams_past_78_gib(settings: Any) -> None:
    settings.BACKUP_S3_PART_SIZE_MB = 8  # boto3's default, which stops at 78 GiB
    gib = 1024 * MiB
    for expected in (100 * gib, 500 * gib, 4 * 1024 * gib):
        parts = [part_size_for(expected, n) for n in range(1, 10_001)]
        assert sum(parts[:9_000]) >= expected
        assert all(5 * MiB <= p <= 5 * gib for p in parts)
    # Unknown size: the parts grow, so 10,000 of them reach S3's 5 TiB limit.
    unknown = [part_size_for(None, n) for n in range(1, 10_001)]
    assert unknown[0] == 8 * MiB and sum(unknown) >= 5 * 1024 * gib
    assert sum(unknown[:3000]) < 80 * gib < sum(unknown[:4000])


def test_it_applies_the_ssrf_policy_to_endpoints(orgs: dict[str, Any], moto_s3: S3Endpoint, settings: Any) -> None:
    row = make_s3_storage(orgs["a"], moto_s3, "policy-bucket")
    settings.PANEL_BLOCK_PRIVATE_S3_ENDPOINTS = True
    for url in ("http://127.0.0.1:9000", "http://169.254.169.254", "http://10.1.2.3", "http://localhost:9000"):
        row.endpoint_url = url
        with pytest.raises(ValidationError, match="not allowed"):
            row.full_clean()
    # Saved before the policy was switched on: refused when it is opened.
    with pytest.raises(StorageError, match="not allowed"):
        open_storage(BackupStorage.objects.get(pk=row.pk))
    row.endpoint_url = "https://8.8.8.8"
    row.full_clean()
    for url in ("http://user:pw@8.8.8.8", "https://8.8.8.8/?x=1", "ftp://8.8.8.8", "http://8.8.8.8#f"):
        row.endpoint_url = url
        with pytest.raises(ValidationError):
            row.full_clean()


def test_it_requires_what_each_kind_needs(orgs: dict[str, Any], backup_root: Path) -> None:
    with pytest.raises(ValidationError) as local_error:
        BackupStorage(organization=orgs["a"], name="l", kind="local", bucket="abc").full_clean()
    assert set(local_error.value.message_dict) >= {"path", "bucket"}
    with pytest.raises(ValidationError) as s3_error:
        BackupStorage(organization=orgs["a"], name="s", kind="s3", path=str(backup_root)).full_clean()
    assert set(s3_error.value.message_dict) >= {"bucket", "access_key_id", "secret_access_key", "path"}


def test_it_sends_each_byte_once_and_fails_cleanly_when_the_store_is_unreachable(
    orgs: dict[str, Any], counting_proxy: CountingProxy, s3_bucket: str, small_parts: None, settings: Any
) -> None:
    storage = open_storage(make_s3_storage(orgs["a"], counting_proxy.endpoint, s3_bucket))
    counting_proxy.reset()
    write(storage, "backups/9/db.dump", pattern(12 * MiB, seed=9))
    # Three parts and the requests around them: the bytes once, plus a few KiB of HTTP.
    assert 12 * MiB < counting_proxy.sent < 12 * MiB + 64 * 1024
    counting_proxy.close()
    settings.BACKUP_S3_MAX_ATTEMPTS = 1
    storage = open_storage(make_s3_storage(orgs["a"], counting_proxy.endpoint, s3_bucket, name="gone"))
    with pytest.raises(StorageError, match="Uploading backups/9/small"):
        storage.put_bytes("backups/9/small", b"x" * 100)
    with pytest.raises(StorageError, match="Starting the upload"):
        write(storage, "backups/9/large", pattern(6 * MiB))


def test_it_never_lists_an_upload_whose_store_went_away_mid_stream(
    orgs: dict[str, Any],
    counting_proxy: CountingProxy,
    s3_server: S3Endpoint,
    s3_bucket: str,
    small_parts: None,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.BACKUP_S3_MAX_ATTEMPTS = 2
    storage = open_storage(make_s3_storage(orgs["a"], counting_proxy.endpoint, s3_bucket))
    writer = storage.writer("backups/10/db.dump")
    chunks = pattern(30 * MiB, seed=10)
    with pytest.raises(StorageError, match="Uploading part"):
        for number, chunk in enumerate(chunks):
            if number == 12:  # two parts are stored
                counting_proxy.cut()
            writer.write(chunk)
    # The abort could not reach the store either; it says so, and the upload stays unlisted until cleanup.
    assert "Aborting the upload of backups/10/db.dump failed" in caplog.text
    direct = open_storage(make_s3_storage(orgs["a"], s3_server, s3_bucket, name="direct"))
    assert list(direct.list()) == [] and direct.stat("backups/10/db.dump") is None
    assert isinstance(direct, S3Storage) and len(direct.multipart_uploads()) == 1
    assert direct.cleanup(older_than=0) == 1 and direct.multipart_uploads() == []


def test_it_keeps_storage_secrets_and_encrypted_objects_readable_across_a_key_rotation(
    orgs: dict[str, Any], backup_root: Path, settings: Any
) -> None:
    from cryptography.fernet import Fernet
    from django.core.management import call_command

    from panel import crypto as panel_crypto

    row = make_local_storage(orgs["a"], backup_root / "rotated", encrypt=True)
    BackupStorage.objects.filter(pk=row.pk).update(secret_access_key="kept-secret-123")
    stored = open_storage(row).put_bytes("sealed", b"before the rotation")
    old_key = settings.PANEL_ENCRYPTION_KEYS[0]
    new_key = Fernet.generate_key().decode()
    try:
        settings.PANEL_ENCRYPTION_KEYS = [new_key, old_key]
        panel_crypto.reset_key_cache()
        call_command("rotate_encryption_keys")
        settings.PANEL_ENCRYPTION_KEYS = [new_key]
        panel_crypto.reset_key_cache()
        fresh = BackupStorage.objects.get(pk=row.pk)
        assert fresh.secret_access_key == "kept-secret-123" and fresh.encryption_keyset == row.encryption_keyset
        with open_storage(fresh).reader("sealed", expected=stored) as stream:
            assert stream.read() == b"before the rotation"
    finally:
        panel_crypto.reset_key_cache()
