"""Odoo dump zips (backups.odoozip): the streaming writer and reader round trip, each guard against a crafted
malicious zip, bounded memory for a large member, and the psql restore command against the real PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import tracemalloc
import uuid
import warnings
import zipfile
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.test import override_settings

from backups.odoozip import (
    MIB,
    OdooDumpReader,
    OdooDumpWriter,
    OdooManifest,
    OdooZipError,
    ZipLimits,
    check_member_name,
    declared_entry_count,
    iter_odoo_zip,
    psql_restore_argv,
    write_odoo_zip,
)

MANIFEST = {
    "odoo_dump": "1",
    "db_name": "prod",
    "version": "17.0",
    "version_info": [17, 0, 0, "final", 0, ""],
    "major_version": "17.0",
    "pg_version": "15.0",
    "modules": {"base": "17.0.1.3", "web": "17.0.1.0", "sale": None},
}
DUMP = b"".join(b"INSERT INTO res_partner VALUES (%d, 'partner %d');\n" % (n, n * 7919) for n in range(5000))


def sha1_name(content: bytes) -> str:
    digest = hashlib.sha1(content).hexdigest()  # Odoo names filestore files by their sha1
    return f"{digest[:2]}/{digest}"


FILES = {sha1_name(content): content for content in (b"attachment one", os.urandom(70_000), b"")}


class NonSeekableSink:
    """A sink like a pipe or an HTTP upload: write only, no tell/seek."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data) -> int:
        self.buffer += data
        return len(data)

    def flush(self) -> None:
        pass


class CountingSink:
    """A non-seekable sink that keeps only a running hash and a byte count (the large-member test)."""

    def __init__(self) -> None:
        self.size = 0
        self.sha256 = hashlib.sha256()

    def write(self, data) -> int:
        self.size += len(data)
        self.sha256.update(data)
        return len(data)

    def flush(self) -> None:
        pass


class GeneratedStream:
    """``size`` bytes produced on the fly (random hex text, compresses about 2:1), never held whole."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = os.urandom((n + 1) // 2).hex().encode()[:n]
        self.left -= len(data)
        self.digest.update(data)
        return data


def odoo_style_zip(tmp_path: Path, *, manifest=MANIFEST, dump=DUMP, files=FILES) -> Path:
    """A zip as Odoo's dump_db writes it: the files of a dump directory zipped with ZipFile.write (Unix modes)."""
    source = tmp_path / "dump_dir"
    (source / "filestore").mkdir(parents=True)
    (source / "dump.sql").write_bytes(dump)
    (source / "manifest.json").write_text(json.dumps(manifest, indent=4))
    for name, content in files.items():
        path = source / "filestore" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    target = tmp_path / "odoo.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for path in sorted(source.rglob("*"), key=lambda p: (p.name != "dump.sql", str(p))):
            if path.is_file():
                archive.write(path, path.relative_to(source).as_posix())
    return target


def build_zip(members, *, manifest=MANIFEST, dump: bytes | None = DUMP) -> bytes:
    """A zip with dump.sql, manifest.json and the given extra members: (name or ZipInfo, bytes)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of some tests
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            if dump is not None:
                archive.writestr("dump.sql", dump)
            if manifest is not None:
                archive.writestr(
                    "manifest.json", manifest if isinstance(manifest, bytes | str) else json.dumps(manifest)
                )
            for name, content in members:
                archive.writestr(name, content)
    return buffer.getvalue()


def read(data: bytes, **limits) -> OdooDumpReader:
    return OdooDumpReader(io.BytesIO(data), limits=ZipLimits(**limits))


def collect(reader: OdooDumpReader) -> tuple[bytes, dict[str, bytes]]:
    with reader.open_dump() as stream:
        dump = stream.read()
    return dump, {path: stream.read() for path, stream in reader.iter_filestore()}


# --- Round trips -----------------------------------------------------------------------------------------------


def test_it_reads_a_zip_made_the_way_odoo_makes_it(tmp_path):
    with open(odoo_style_zip(tmp_path), "rb") as handle, OdooDumpReader(handle) as reader:
        assert reader.manifest.db_name == "prod"
        assert reader.manifest.odoo_major == 17
        assert reader.manifest.pg_major == 15
        assert reader.manifest.modules["base"] == "17.0.1.3"
        assert reader.manifest.version_info == (17, 0, 0, "final", 0, "")
        assert reader.dump.size == len(DUMP)
        assert reader.filestore_size == sum(len(content) for content in FILES.values())
        assert collect(reader) == (DUMP, FILES)
        assert reader.ignored == ()


@pytest.mark.parametrize("sink_kind", ["file", "non-seekable", "iterator"])
def test_it_round_trips_through_the_writer(tmp_path, sink_kind):
    files = [(name, io.BytesIO(content)) for name, content in FILES.items()]
    if sink_kind == "file":
        with open(tmp_path / "out.zip", "w+b") as sink:
            write_odoo_zip(sink, dump_sql=io.BytesIO(DUMP), filestore=files, manifest=MANIFEST)
        data = (tmp_path / "out.zip").read_bytes()
    elif sink_kind == "non-seekable":
        sink = NonSeekableSink()
        write_odoo_zip(sink, dump_sql=io.BytesIO(DUMP), filestore=files, manifest=MANIFEST)
        data = bytes(sink.buffer)
    else:
        data = b"".join(iter_odoo_zip(dump_sql=io.BytesIO(DUMP), filestore=files, manifest=MANIFEST))
    # Python's zipfile (which Odoo's restore uses) accepts it and every CRC matches.
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert names[:2] == ["dump.sql", "manifest.json"]  # dump.sql first, as Odoo writes it
        assert json.loads(archive.read("manifest.json")) == MANIFEST
        if sink_kind != "file":
            assert all(info.flag_bits & 0x08 for info in archive.infolist())  # data descriptors, no seeking back
    reader = read(data)
    assert reader.manifest == OdooManifest.from_mapping(MANIFEST)
    assert collect(reader) == (DUMP, FILES)


def test_it_streams_the_download_iterator_as_the_inputs_are_read():
    dump = GeneratedStream(8 * MIB)
    chunks = iter_odoo_zip(dump_sql=dump, filestore=[], manifest=MANIFEST, compresslevel=1)
    first = next(chunks)
    assert first.startswith(b"PK\x03\x04")
    assert dump.left > 4 * MIB  # the first bytes went out before the dump was read whole
    rest = b"".join(chunks)
    assert dump.left == 0
    with read(first + rest).open_dump() as stream:
        assert hashlib.sha256(stream.read()).digest() == dump.digest.digest()


def test_it_refuses_to_write_a_bad_manifest_or_an_unsafe_filestore_name():
    with pytest.raises(OdooZipError, match="major_version"):
        write_odoo_zip(
            NonSeekableSink(), dump_sql=io.BytesIO(b""), filestore=[], manifest={**MANIFEST, "major_version": "x"}
        )
    sink = NonSeekableSink()
    with pytest.raises(OdooZipError, match="outside"), OdooDumpWriter(sink) as writer:
        writer.add_filestore_file("../../etc/cron.d/evil", io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="already"), OdooDumpWriter(NonSeekableSink()) as writer:
        writer.add_dump(io.BytesIO(b"1"))
        writer.add_dump(io.BytesIO(b"2"))


# --- Guards ----------------------------------------------------------------------------------------------------


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (0o120777 << 16) & 0xFFFF0000
    return info


def fifo_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = 0o010644 << 16
    return info


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/etc/passwd", "absolute path"),
        ("filestore//etc/passwd", "outside its folder"),
        ("../evil.sh", "outside its folder"),
        ("filestore/../../.ssh/authorized_keys", "outside its folder"),
        ("filestore/ab/../../../x", "outside its folder"),
        ("filestore/./ab/x", "outside its folder"),
        ("filestore\\..\\..\\evil", "backslash"),
        ("C:/Windows/evil.dll", "absolute path"),
        ("c:evil", "absolute path"),
        ("filestore/ab/\x1b[31mred", "control characters"),
        ("filestore/" + "a" * 2000, "overlong"),
    ],
)
def test_it_refuses_zip_slip_names(name, message):
    with pytest.raises(OdooZipError, match=message):
        read(build_zip([(name, b"x")]))


def test_it_refuses_a_nul_in_a_member_name():
    # zipfile cuts names at NUL when writing, so the name is patched into the bytes.
    data = build_zip([("filestore/abXdef", b"x")]).replace(b"filestore/abXdef", b"filestore/ab\x00def")
    with pytest.raises(OdooZipError, match="control characters"):
        read(data)


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (symlink_info("filestore/ab/link"), "symbolic link"),
        (symlink_info("dump2.sql"), "symbolic link"),
        (fifo_info("filestore/ab/fifo"), "not a regular file"),
    ],
)
def test_it_refuses_symlinks_and_special_files(info, message):
    with pytest.raises(OdooZipError, match=message):
        read(build_zip([(info, b"/etc/shadow")]))


def central_entry(data: bytes | bytearray, name: str) -> int:
    """The offset of ``name``'s central directory header (its name starts 46 bytes in)."""
    entry = data.index(name.encode(), data.index(b"PK\x01\x02")) - 46
    assert data[entry : entry + 4] == b"PK\x01\x02"
    return entry


def test_it_refuses_encrypted_members_and_other_compression_methods():
    # zipfile does not write encrypted members: set the flag in the central directory.
    data = bytearray(build_zip([("filestore/ab/secret", b"x")]))
    entry = central_entry(data, "filestore/ab/secret")
    (flags,) = struct.unpack("<H", data[entry + 8 : entry + 10])
    data[entry + 8 : entry + 10] = struct.pack("<H", flags | 0x1)
    with pytest.raises(OdooZipError, match="encrypted"):
        read(bytes(data))
    bzip = zipfile.ZipInfo("filestore/ab/bz")
    bzip.compress_type = zipfile.ZIP_BZIP2
    with pytest.raises(OdooZipError, match="compression method 12"):
        read(build_zip([(bzip, b"x" * 100)]))


@pytest.mark.parametrize(
    "names",
    [
        ["filestore/ab/x", "filestore/ab/x"],
        ["dump.sql"],  # a second dump.sql: which one would psql run?
        ["filestore/ab", "filestore/ab/"],
    ],
)
def test_it_refuses_duplicate_names(names):
    with pytest.raises(OdooZipError, match="twice"):
        read(build_zip([(name, b"x") for name in names]))


def test_it_refuses_too_many_members_before_parsing_them():
    data = build_zip([(f"filestore/ab/{n}", b"x") for n in range(10)])
    assert declared_entry_count(io.BytesIO(data)) == 12
    assert read(data, max_members=12).filestore_size == 10
    with pytest.raises(OdooZipError, match="12 members; at most 11"):
        read(data, max_members=11)


def test_it_counts_the_members_of_a_zip64_archive():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for n in range(0x10000 + 5):  # past the 16-bit count: zipfile writes a zip64 end record
            archive.writestr(f"{n:x}", b"")
    data = buffer.getvalue()
    assert declared_entry_count(io.BytesIO(data)) == 0x10005
    with pytest.raises(OdooZipError, match="65541 members; at most 1000"):
        read(data, max_members=1000)


def test_it_refuses_members_and_totals_over_the_size_limits():
    data = build_zip([("filestore/ab/big", os.urandom(5000))], dump=b"SELECT 1;\n")
    with pytest.raises(OdooZipError, match="filestore/ab/big' is 5000 bytes; at most 4000"):
        read(data, max_member_size=4000)
    with pytest.raises(OdooZipError, match="expands to more than 5100 bytes"):
        read(data, max_total_size=5100)
    assert read(data, max_member_size=5000, max_total_size=6000).filestore_size == 5000


def test_it_refuses_a_compression_ratio_bomb():
    bomb = build_zip([("filestore/ab/zeros", bytes(50 * MIB))])
    assert len(bomb) < 200_000  # 50 MiB of zeros deflate ~1000:1
    with pytest.raises(OdooZipError, match=r"'filestore/ab/zeros' expands 10\d\d times; at most 200"):
        read(bomb)
    # A small, very compressible file is normal (ratio_floor) and so is a bigger ratio when allowed.
    assert read(build_zip([("filestore/ab/zeros", bytes(64 * 1024))])).filestore_size == 64 * 1024
    assert read(bomb, max_ratio=2000).filestore_size == 50 * MIB


def test_it_refuses_a_bomb_of_many_small_members():
    # Each member stays under the 1 MiB ratio floor; the archive as a whole expands ~1000 times.
    data = build_zip([(f"filestore/ab/{n}", bytes(MIB - 1)) for n in range(8)], dump=b"")
    with pytest.raises(OdooZipError, match=r"The zip expands \d+ times"):
        read(data)


def test_it_refuses_overlapping_members():
    # Fifield's "better zip bomb": many central directory entries that share one compressed body.
    data = bytearray(build_zip([("filestore/ab/one", DUMP), ("filestore/ab/two", DUMP)]))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        one, two = archive.getinfo("filestore/ab/one"), archive.getinfo("filestore/ab/two")
    entry = central_entry(data, "filestore/ab/two")
    assert data[entry : entry + 4] == b"PK\x01\x02"
    assert struct.unpack("<L", data[entry + 42 : entry + 46])[0] == two.header_offset
    data[entry + 42 : entry + 46] = struct.pack("<L", one.header_offset)
    with pytest.raises(OdooZipError, match="overlaps"):
        read(bytes(data))


def test_it_stops_a_member_that_lies_about_its_size():
    data = bytearray(build_zip([("filestore/ab/liar", b"0123456789" * 1000)]))
    entry = central_entry(data, "filestore/ab/liar")
    assert struct.unpack("<L", data[entry + 24 : entry + 28])[0] == 10_000
    data[entry + 24 : entry + 28] = struct.pack("<L", 100)  # declares 100 bytes, inflates to 10,000
    reader = read(bytes(data))
    assert dict(reader.filestore)["ab/liar"].size == 100
    with pytest.raises(OdooZipError, match="damaged"):
        for _, stream in reader.iter_filestore():
            stream.read()


def test_it_refuses_a_corrupted_member_while_reading():
    data = bytearray(build_zip([]))
    start = data.index(b"dump.sql") + len(b"dump.sql") + 200
    data[start : start + 50] = bytes(50)
    reader = read(bytes(data))
    with pytest.raises(OdooZipError, match=r"dump\.sql' is damaged"), reader.open_dump() as stream:
        stream.read()


NOT_ODOO_DUMPS = [
    (b"", "not a zip file"),
    (b"PK\x03\x04 this is not a zip", "not a zip file"),
    (os.urandom(4096), "not a zip file"),
    (build_zip([])[:-30], "not a zip file"),
    (build_zip([], dump=None), "no dump.sql"),
    (build_zip([], manifest=None), "no manifest.json"),
    (build_zip([], manifest=b"{not json"), "not valid JSON"),
    (build_zip([], manifest=b"[" * 100_000 + b"]" * 100_000), "not valid JSON"),
    (build_zip([], manifest=[1, 2]), "not a JSON object"),
    (build_zip([], manifest={**MANIFEST, "odoo_dump": "2"}), "not an Odoo dump manifest"),
    (build_zip([], manifest={k: v for k, v in MANIFEST.items() if k != "db_name"}), "db_name is missing"),
    (build_zip([], manifest={**MANIFEST, "major_version": "17.0; DROP"}), "major_version"),
    (build_zip([], manifest={**MANIFEST, "pg_version": "fifteen"}), "pg_version"),
    (build_zip([], manifest={**MANIFEST, "version_info": "17.0"}), "version_info"),
    (build_zip([], manifest={**MANIFEST, "modules": {"web": "17.0"}}), "base is not installed"),
    (build_zip([], manifest={**MANIFEST, "modules": {"base": 17}}), "version of module 'base'"),
    (build_zip([], manifest={**MANIFEST, "modules": {"../base": "1"}}), "not a module name"),
]


@pytest.mark.parametrize(
    ("data", "message"),
    NOT_ODOO_DUMPS,
    # Ids that do not spell the bytes out: both pytest-xdist processes must collect the same ids, and random bytes
    # or a zip's timestamps would differ between them.
    ids=[f"{number}-{message}" for number, (_data, message) in enumerate(NOT_ODOO_DUMPS)],
)
def test_it_refuses_what_is_not_an_odoo_dump(data, message):
    with pytest.raises(OdooZipError, match=message):
        read(data)


def test_it_refuses_an_oversized_manifest():
    manifest = {**MANIFEST, "modules": {**MANIFEST["modules"], **{f"m{n}": "1.0" for n in range(10_000)}}}
    with pytest.raises(OdooZipError, match=r"manifest.json is \d+ bytes; at most 100000"):
        read(build_zip([], manifest=manifest), max_manifest_size=100_000)


def test_it_lists_unknown_members_without_handing_them_out():
    reader = read(build_zip([("__MACOSX/._dump.sql", b"x"), ("filestore/", b""), ("filestore/ab/x", b"y")]))
    assert reader.ignored == ("__MACOSX/._dump.sql",)
    assert collect(reader)[1] == {"ab/x": b"y"}


def test_it_needs_a_seekable_file():
    with pytest.raises(TypeError, match="seekable"):
        OdooDumpReader(NonSeekableReader())


class NonSeekableReader(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


@override_settings(BACKUP_ZIP_MAX_MEMBERS=3, BACKUP_ZIP_MAX_RATIO=50)
def test_it_reads_its_limits_from_settings():
    limits = ZipLimits.from_settings()
    assert (limits.max_members, limits.max_ratio) == (3, 50)
    assert limits.max_member_size == settings.BACKUP_ZIP_MAX_MEMBER_GIB * 1024**3
    with pytest.raises(OdooZipError, match="at most 3"):
        OdooDumpReader(io.BytesIO(build_zip([("filestore/a", b"1"), ("filestore/b", b"2")])))


def test_it_has_the_same_defaults_in_settings_and_code():
    assert ZipLimits.from_settings() == ZipLimits()


def test_it_checks_member_names_for_the_writer_too():
    check_member_name("filestore/ab/abcdef")
    check_member_name("filestore/")
    for name in ("", "a//b", "a/./b", "/a", "a\\b", "D:\\x"):
        with pytest.raises(OdooZipError):
            check_member_name(name)


# --- Memory ----------------------------------------------------------------------------------------------------

LARGE = 256 * MIB


def test_it_writes_and_reads_a_large_member_in_bounded_memory(tmp_path):
    dump = GeneratedStream(LARGE)
    tracemalloc.start()
    try:
        sink = CountingSink()
        write_odoo_zip(sink, dump_sql=dump, filestore=[], manifest=MANIFEST, compresslevel=1)
        _, write_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dump.left == 0
    assert sink.size > LARGE // 4
    assert write_peak < 16 * MIB, f"writing a {LARGE >> 20} MiB member peaked at {write_peak >> 20} MiB"

    # The same bytes again, to disk this time, and read back in chunks.
    path = tmp_path / "large.zip"
    again = GeneratedStream(LARGE)
    with open(path, "wb") as handle:
        write_odoo_zip(handle, dump_sql=again, filestore=[], manifest=MANIFEST, compresslevel=1)
    tracemalloc.start()
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as handle, OdooDumpReader(handle) as reader, reader.open_dump() as stream:
            assert reader.dump.size == LARGE
            while chunk := stream.read(MIB):
                digest.update(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.digest() == again.digest.digest()
    assert read_peak < 16 * MIB, f"reading a {LARGE >> 20} MiB member peaked at {read_peak >> 20} MiB"


# --- psql ------------------------------------------------------------------------------------------------------


def test_it_builds_a_psql_command_that_stops_at_the_first_error():
    argv = psql_restore_argv("restore_42", username="odoo")
    assert argv == [
        "psql",
        "--no-psqlrc",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
        "--single-transaction",
        "--username=odoo",
        "--dbname=restore_42",
        "--file=-",
    ]
    assert psql_restore_argv("db", dump_path="/tmp/x/dump.sql", psql="/usr/bin/psql")[-1] == "--file=/tmp/x/dump.sql"
    for database in ("host=evil dbname=x", "-c", "postgres://evil/x", "a b", "", "x" * 64):
        with pytest.raises(ValueError):
            psql_restore_argv(database)
    with pytest.raises(ValueError):
        psql_restore_argv("db", username="--command=DROP")
    with pytest.raises(ValueError):
        psql_restore_argv("db", dump_path="relative.sql")


@pytest.fixture
def scratch_database():
    """An empty database on the test PostgreSQL server, dropped afterwards; yields (name, psql environment)."""
    server = settings.DATABASES["default"]
    name = f"pure_psql_{uuid.uuid4().hex[:10]}"
    conninfo = dict(
        host=server["HOST"], port=server["PORT"], user=server["USER"], password=server["PASSWORD"], dbname="postgres"
    )
    with psycopg.connect(**conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    env = {
        **os.environ,
        "PGHOST": str(server["HOST"]),
        "PGPORT": str(server["PORT"]),
        "PGUSER": str(server["USER"]),
        "PGPASSWORD": str(server["PASSWORD"]),
    }
    try:
        yield name, env
    finally:
        with psycopg.connect(**conninfo, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


PARTLY_BROKEN_DUMP = b"""
CREATE TABLE res_partner (id integer PRIMARY KEY, name text);
INSERT INTO res_partner VALUES (1, 'Azure Interior');
INSERT INTO res_partner VALUES (2, 'Deco Addict');
INSERT INTO res_partner VALUES (2, 'duplicate key: this fails');
CREATE TABLE ir_attachment (id integer PRIMARY KEY);
"""


def tables(env: dict[str, str], database: str) -> str:
    out = subprocess.run(
        [
            "psql",
            "--no-psqlrc",
            "-Atc",
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'",
            f"--dbname={database}",
        ],
        env=env,
        capture_output=True,
        check=True,
    )
    return out.stdout.decode().strip()


def test_it_fails_a_partly_failed_restore_where_odoos_psql_call_exits_0(scratch_database, tmp_path):
    database, env = scratch_database
    # Odoo's restore_db: psql -q -f dump.sql, no ON_ERROR_STOP. It exits 0 and leaves half a database.
    odoo = subprocess.run(
        ["psql", f"--dbname={database}", "-q", "-f", "-"], input=PARTLY_BROKEN_DUMP, env=env, capture_output=True
    )
    assert odoo.returncode == 0
    assert b"duplicate key" in odoo.stderr
    assert tables(env, database) == "ir_attachment,res_partner"

    # Ours, into a fresh database: the error stops psql, the exit status says so, and nothing is left.
    with psycopg.connect(
        host=env["PGHOST"],
        port=env["PGPORT"],
        user=env["PGUSER"],
        password=env["PGPASSWORD"],
        dbname=database,
        autocommit=True,
    ) as connection:
        connection.execute("DROP TABLE res_partner, ir_attachment")
    ours = subprocess.run(psql_restore_argv(database), input=PARTLY_BROKEN_DUMP, env=env, capture_output=True)
    assert ours.returncode == 3  # psql: an error in a script with ON_ERROR_STOP
    assert b"duplicate key" in ours.stderr
    assert tables(env, database) == ""

    # A good dump restores, from stdin or from a file.
    good = PARTLY_BROKEN_DUMP.replace(b"(2, 'duplicate key: this fails')", b"(3, 'Gemini Furniture')")
    (tmp_path / "dump.sql").write_bytes(good)
    argv = psql_restore_argv(database, dump_path=str(tmp_path / "dump.sql"))
    assert subprocess.run(argv, env=env, capture_output=True).returncode == 0
    assert tables(env, database) == "ir_attachment,res_partner"
