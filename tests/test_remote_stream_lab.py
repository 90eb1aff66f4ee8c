"""``panel.remote.stream`` against a real lab host: binary stdout into a sink, stdin from an iterator, exit codes
of every kind, bounded memory, timeouts."""

from __future__ import annotations

import hashlib
import os
import resource

import pytest

from panel.remote import CommandTimeout, stream
from panel.remote.ssh import POOL
from tests.lab_helpers import lab_target

pytestmark = pytest.mark.lab

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def fresh_pool():
    POOL.close_all()
    yield
    POOL.close_all()


def test_it_streams_binary_stdout_into_the_sink_byte_for_byte(lab1) -> None:
    target = lab_target(lab1)
    digest = hashlib.sha256()
    # 64 MiB of the same pseudo-random bytes on both sides; the sink sees every byte, in order.
    script = "head -c 67108864 /dev/zero | openssl enc -aes-128-ctr -nosalt -pass pass:x 2>/dev/null"
    result = stream(target, ["sh", "-c", script], sink=digest.update, timeout=120)
    assert result.ok and result.bytes_out == 64 * MiB
    remote = lab1.ssh("sh", "-c", script + " | sha256sum", check=True).stdout.split()[0]
    assert digest.hexdigest() == remote


def test_it_returns_the_exit_code_and_the_end_of_stderr(lab1) -> None:
    target = lab_target(lab1)
    result = stream(target, ["sh", "-c", "echo partial; echo broken >&2; exit 3"], sink=lambda chunk: None)
    assert result.exit_code == 3 and not result.ok
    assert result.stderr.strip() == "broken" and result.bytes_out == len(b"partial\n")


def test_it_feeds_stdin_from_an_iterator_and_keeps_memory_bounded(lab1) -> None:
    target = lab_target(lab1)
    block = os.urandom(MiB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def chunks():
        for _ in range(256):
            yield block

    out: list[bytes] = []
    result = stream(target, ["sh", "-c", "sha256sum | cut -c1-64"], source=chunks(), sink=out.append, timeout=180)
    assert result.ok, result.stderr
    expected = hashlib.sha256()
    for _ in range(256):
        expected.update(block)
    assert b"".join(out).decode().strip() == expected.hexdigest()
    assert result.bytes_in == 256 * MiB
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, f"peak RSS grew by {grown_mib:.0f} MiB for a 256 MiB stream"


def test_it_feeds_every_chunk_after_an_empty_one(lab1) -> None:
    """An empty chunk is not the end of stdin (the restore's tar stream yields one after each file whose size is a
    multiple of 512 bytes; taking it for the end truncated the restored filestore after the first such file)."""
    target = lab_target(lab1)
    out: list[bytes] = []
    result = stream(target, ["wc", "-c"], source=iter([b"a" * 512, b"", b"b" * 100, b""]), sink=out.append)
    assert result.ok, result.stderr
    assert b"".join(out).decode().strip() == "612" and result.bytes_in == 612


def test_it_stops_feeding_a_command_that_exits_early(lab1) -> None:
    target = lab_target(lab1)

    def endless():
        while True:
            yield b"x" * 65536

    result = stream(target, ["head", "-c", "10"], source=endless(), sink=lambda chunk: None, timeout=30)
    assert result.ok and result.bytes_out == 10


def test_it_stops_a_command_that_moves_no_data(lab1) -> None:
    target = lab_target(lab1)
    with pytest.raises(CommandTimeout, match="moved no data for 1 s"):
        stream(target, ["sleep", "30"], sink=lambda chunk: None, idle_timeout=1, timeout=30)


def test_it_keeps_stdin_open_for_commands_that_watch_it(lab1) -> None:
    target = lab_target(lab1)
    out: list[bytes] = []
    # By default stdin is closed at once: cat ends.
    assert stream(target, ["sh", "-c", "cat; echo eof"], sink=out.append).ok and b"".join(out) == b"eof\n"
    # Kept open, the command sees no end of its input until the connection goes.
    with pytest.raises(CommandTimeout, match="moved no data"):
        stream(target, ["sh", "-c", "cat; echo eof"], sink=out.append, close_stdin=False, idle_timeout=2)
