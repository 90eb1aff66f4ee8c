"""A job's hold on a server: a lock per environment directory, and the end of everything the job started there.

The second line of defence behind the database's one-job-per-environment lock. While a job that changes an
environment runs, one SSH channel of the job runs ``HOLD_SCRIPT``: it takes ``flock`` on a file in the
environment's directory and keeps it until its stdin closes, which happens when the job ends, when the job loses
its lease (``abort``), or when the SSH connection drops (the worker died): the lock lives exactly as long as the
job's connection. Two jobs therefore never touch one compose project at once, even when the database lock is
lost.

Every command the job runs on that server inside ``hold()`` carries a tag in its environment
(``DOODBA_PANEL_JOB=<job>-<nonce>``) that its children inherit. When the hold ends, the script ends every process
of the SSH user that carries the tag (TERM, then KILL) and removes the compose project's one-off containers
(``docker compose run``), so nothing the job started keeps running on the server, however the job ended.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import paramiko

from panel.remote.errors import RemoteError, Unreachable
from panel.remote.ssh import Connection, Target, get_connection

logger = logging.getLogger(__name__)

TAG_VARIABLE = "DOODBA_PANEL_JOB"
# $1 directory, $2 tag, $3 compose project, $4 seconds to wait for the lock. Prints "busy <holder>" while it
# waits, "locked" once it holds the lock, then waits for its stdin to close and cleans up. Until "locked" its errors
# go to stdout too, so that a failure to take the lock says why (a full disk, a directory it may not write).
HOLD_SCRIPT = r"""d=$1; tag=$2; project=$3; wait=$4
exec 3>&2 2>&1
mkdir -p -- "$d" || exit 1
exec 9>>"$d/.panel-lock" || exit 1
if ! flock -n 9; then
  echo "busy $(cat -- "$d/.panel-lock-holder" 2>/dev/null)"
  flock -w "$wait" 9 || { echo "timeout"; exit 75; }
fi
echo "${tag%-*}" >"$d/.panel-lock-holder"
echo locked
exec 2>&3 3>&-
cat >/dev/null
trap '' HUP PIPE
tagged() { grep -lzxF -- "DOODBA_PANEL_JOB=$tag" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3; }
left=$(tagged | wc -l)
for p in $(tagged); do kill -TERM "$p" 2>/dev/null; done
n=0; while [ -n "$(tagged)" ] && [ $n -lt 20 ]; do sleep 0.5; n=$((n + 1)); done
for p in $(tagged); do kill -KILL "$p" 2>/dev/null; done
oneoff=$(docker ps -aq --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.oneoff=True" 2>/dev/null)
[ -n "$oneoff" ] && docker rm -f $oneoff >/dev/null 2>&1
echo "released $left $(echo $oneoff | wc -w)"
"""


class ServerLockBusy(RemoteError):
    """Another job still holds the environment's lock on the server."""


class HoldLost(Exception):
    """The job's hold on the server ended while it was working (lease lost, connection dropped): stop at once.

    Not a ``RemoteError``: nothing may try to recover (roll back) after it, since another job may hold the
    environment by now.
    """


_CURRENT: ContextVar[Hold | None] = ContextVar("panel_remote_hold", default=None)


class Hold:
    """The lock channel of one job on one server, and the tag of the commands it runs there."""

    def __init__(
        self, target: Target, *, job_id: int, directory: str, compose_project: str, subject: str = "this environment"
    ) -> None:
        self.target = target
        self.subject = subject  # whose lock it is, for the log: "this environment", "this server"
        self.job_id = job_id
        self.directory = directory
        self.compose_project = compose_project
        self.tag = f"{job_id}-{secrets.token_hex(6)}"
        self.connection: Connection | None = None
        self.channel: paramiko.Channel | None = None
        self.lost_reason = ""
        self.lock = threading.Lock()

    # -- what commands see -------------------------------------------------------------------------

    def covers(self, target: Target) -> bool:
        """Commands for ``target`` run under this hold."""
        return target.pool_key == self.target.pool_key

    def tagged(self, argv: Sequence[str]) -> list[str]:
        """``argv`` with the job's tag in its environment (children inherit it)."""
        return ["env", f"{TAG_VARIABLE}={self.tag}", *argv]

    def lost(self) -> bool:
        """The hold ended under the job: it was aborted, or its channel or connection closed."""
        if self.lost_reason:
            return True
        channel = self.channel
        if channel is None:
            return False
        if channel.closed or channel.exit_status_ready() or not channel.get_transport().is_active():
            self.lost_reason = (
                f"The SSH connection that held this job's lock on {self.target.label} closed; the job stopped."
            )
            return True
        return False

    def check(self) -> None:
        """Raise ``HoldLost`` if the hold ended."""
        if self.lost():
            raise HoldLost(self.lost_reason)

    # -- taking and ending it ----------------------------------------------------------------------

    def acquire(self, *, wait: float, on_message: Callable[[str], None]) -> None:
        """Take the lock (waiting up to ``wait`` seconds for another job to release it)."""
        self.connection = get_connection(self.target)
        try:
            channel = self.connection.open_channel()
        except Unreachable:
            self.connection = get_connection(self.target)
            channel = self.connection.open_channel()
        self.channel = channel
        argv = ["sh", "-c", HOLD_SCRIPT, "sh", self.directory, self.tag, self.compose_project, str(int(wait))]
        channel.exec_command(shlex.join(argv))
        channel.settimeout(wait + 30)
        reader = channel.makefile("r")
        errors: list[str] = []
        try:
            while True:
                raw = reader.readline()
                line = raw.strip()
                if line == "locked":
                    on_message(f"Holding {self.subject}'s lock on {self.target.label}.")
                    return
                if line.startswith("busy"):
                    holder = line.partition(" ")[2].strip()
                    who = f"job #{holder}" if holder.isascii() and holder.isdigit() else "another job"
                    on_message(f"Waiting up to {wait:g} s for {who} to release {self.subject}'s lock on the server…")
                    continue
                if line == "timeout":
                    raise ServerLockBusy(
                        f"Another job still holds {self.subject}'s lock on {self.target.label} after {wait:g} s: "
                        f"two jobs never change one {self.subject.split()[-1]} at once. Try again when it has finished."
                    )
                if raw:  # an error of the script (kept for the message below), or an empty line
                    if line:
                        errors.append(line)
                    continue
                raise RemoteError(self._failure(errors))
        except TimeoutError as exc:
            raise Unreachable(f"{self.target.label} did not answer while taking {self.subject}'s lock.") from exc
        except BaseException:
            self._close_channel()
            raise

    def _failure(self, errors: list[str]) -> str:
        """Why the lock script ended without the lock, from what it printed."""
        said = " ".join(errors)[-400:]
        what = f"Could not take {self.subject}'s lock on {self.target.label} ({self.directory}/.panel-lock)"
        if "No space left" in said or "Disk quota exceeded" in said:
            return f"{what}: the server's disk is full ({said}). Free space there, then run the job again."
        if "flock" in said and "not found" in said:
            return f"{what}: flock is missing on the server (install util-linux). {said}"
        return f"{what}: {said or 'the lock script ended without saying why (is flock installed?)'}"

    def abort(self, reason: str) -> None:
        """End the hold now (from any thread): the server ends the job's processes and the job stops."""
        with self.lock:
            if not self.lost_reason:
                self.lost_reason = reason
        self.release()

    def release(self, on_message: Callable[[str], None] | None = None) -> None:
        """Close the lock's stdin and wait (bounded) for the server to end what the job left running."""
        with self.lock:
            channel, self.channel = self.channel, None
        if channel is None:
            return
        try:
            channel.shutdown_write()
            channel.settimeout(30)
            output = b""
            started = time.monotonic()
            while time.monotonic() - started < 30:
                chunk = channel.recv(4096)
                if not chunk:
                    break
                output += chunk
            last = output.decode(errors="replace").strip().rpartition("\n")[2]
            parts = last.split()
            if on_message and len(parts) == 3 and parts[0] == "released":
                processes, containers = int(parts[1]), int(parts[2])
                if processes or containers:
                    on_message(
                        f"Stopped what the job left running on the server: {processes} processes, "
                        f"{containers} one-off containers."
                    )
        except (OSError, paramiko.SSHException, TimeoutError, ValueError):
            # The connection itself is gone: the server saw it close, which ends the lock script the same way.
            logger.warning("job %s: the lock channel on %s closed uncleanly", self.job_id, self.target.label)
        finally:
            self._close_channel(channel)

    def _close_channel(self, channel: paramiko.Channel | None = None) -> None:
        channel = channel or self.channel
        if channel is not None and self.connection is not None:
            self.connection.release(channel)


@contextmanager
def hold(
    target: Target,
    *,
    job_id: int,
    directory: str,
    compose_project: str,
    wait: float,
    on_message: Callable[[str], None],
    subject: str = "this environment",
) -> Iterator[Hold]:
    """Hold the lock in ``directory`` on the server for the block; every command to ``target`` in it is tagged.

    ``subject`` says in the log whose lock it is ("this environment", "this server").
    """
    current = Hold(target, job_id=job_id, directory=directory, compose_project=compose_project, subject=subject)
    current.acquire(wait=wait, on_message=on_message)
    token = _CURRENT.set(current)
    try:
        yield current
    finally:
        _CURRENT.reset(token)
        current.release(on_message)


def current_hold(target: Target) -> Hold | None:
    """The hold that covers commands to ``target`` in this context, if any."""
    held = _CURRENT.get()
    return held if held is not None and held.covers(target) else None
