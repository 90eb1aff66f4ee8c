"""The remote layer against a real lab host: pinning, reuse, streaming, quoting, timeouts, docker SDK."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from panel.remote import CommandTimeout, HostKeyMismatch, run, run_capture
from panel.remote.docker import docker_client
from panel.remote.ssh import POOL, exec_channel, get_connection
from tests.lab_helpers import lab_target

pytestmark = pytest.mark.lab


@pytest.fixture(autouse=True)
def fresh_pool():
    POOL.close_all()
    yield
    POOL.close_all()


def logins(host, user: str) -> int:
    return host.sshd_log_text().count(f"Accepted publickey for {user} ")


def test_it_reuses_one_connection_for_many_commands(lab1) -> None:
    # The no-docker user is used by no other test, so its logins in the sshd log are ours alone.
    user = lab1.nodocker_username
    target = lab_target(lab1, user=user)
    before = logins(lab1, user)
    for n in range(20):
        assert run_capture(target, ["echo", str(n)]).stdout == str(n)
    assert logins(lab1, user) - before == 1


def test_it_runs_the_docker_sdk_over_the_same_pinned_connection(lab1) -> None:
    target = lab_target(lab1)
    assert run_capture(target, ["true"]).ok
    transport = get_connection(target).transport
    client = docker_client(target)
    assert isinstance(client.containers.list(all=True), list)
    assert client.version()["ApiVersion"]
    assert get_connection(target).transport is transport
    assert len(POOL.connections) == 1


def test_it_passes_arguments_through_without_a_shell_interpreting_them(lab1, tmp_path: Path) -> None:
    marker = Path("/tmp/panel-injection-marker")
    marker.unlink(missing_ok=True)
    payloads = [f"; touch {marker}", f"$(touch {marker})", f"`touch {marker}`", f"| touch {marker}", "a\nb", "-n"]
    result = run_capture(lab_target(lab1), ["printf", "%s\\n", *payloads])
    assert result.ok
    assert result.stdout.split("\n") == [
        f"; touch {marker}",
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"| touch {marker}",
        "a",
        "b",
        "-n",
    ]
    assert not marker.exists()


def test_it_streams_output_while_the_command_runs(lab1) -> None:
    seen: list[tuple[float, str, str]] = []
    started = time.monotonic()
    code = run(
        lab_target(lab1),
        ["sh", "-c", "echo first; sleep 1.5; echo oops >&2; sleep 0.3; echo last"],
        on_output=lambda stream, line: seen.append((time.monotonic() - started, stream, line)),
    )
    assert code == 0
    assert [(s, line) for _, s, line in seen] == [("out", "first"), ("err", "oops"), ("out", "last")]
    assert seen[0][0] < 1.0, "the first line arrived before the command ended"


def test_it_stops_a_command_that_runs_too_long(lab1) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="did not finish within 1 s"):
        run(lab_target(lab1), ["sleep", "30"], on_output=lambda *_: None, timeout=1)
    assert time.monotonic() - started < 5


def test_it_refuses_a_key_other_than_the_pinned_one(lab1, lab2) -> None:
    impostor = lab_target(lab1)
    wrong = lab_target(lab2)
    target = type(impostor)(**{**impostor.__dict__, "host_key_base64": wrong.host_key_base64})
    with pytest.raises(HostKeyMismatch, match="Host key mismatch"):
        run_capture(target, ["true"])


def test_it_streams_a_large_output_intact(lab1) -> None:
    size = 256 * 1024 * 1024
    digest = hashlib.sha256()
    received = 0
    with exec_channel(lab_target(lab1), ["sh", "-c", f"head -c {size} /dev/zero"]) as channel:
        while chunk := channel.recv(1024 * 1024):
            digest.update(chunk)
            received += len(chunk)
        assert channel.recv_exit_status() == 0
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(bytes(size)).hexdigest()
