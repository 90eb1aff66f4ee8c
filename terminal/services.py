"""The terminal in the browser: who may open one, tickets, the remote PTY, its end, and its recording.

How it fits together:

- **Who.** Owners and operators (``Action.CHANGE`` through ``for_user``) of an environment whose organization (and
  that organization's provider, when it has one) has not turned terminals off. Viewers, customers and other
  organizations never get a ticket, and a ticket is checked again when it is used.
- **Tickets.** ``issue_ticket`` (a POST with CSRF) stores the SHA-256 of a random token with its user, environment,
  profile and expiry (``TERMINAL_TICKET_SECONDS``). ``consume_ticket`` marks it used with one conditional ``UPDATE``
  (unused and not expired), so two sockets racing for one ticket cannot both win, then checks that the socket's
  user and environment are the ticket's. Production environments need an explicit confirmation with the POST.
- **What runs.** The browser names a profile only. ``PROFILES`` maps it to a compose service; the container is the
  running one labelled with the environment's ``com.docker.compose.project`` and that service, addressed by its
  full id (checked hex); the database is the odoo container's ``PGDATABASE`` (checked). The command is built here.
- **The PTY.** ``RemoteTerminal`` opens a session channel on the server's pooled SSH connection, asks for a PTY and
  runs ``docker exec -it`` in it; resizes go to ``channel.resize_pty`` (sshd tells the docker client, which resizes
  the exec's TTY).
- **The end.** ``docker exec`` processes outlive their client, so closing the channel is not enough: every process
  of a session carries ``DOODBA_PANEL_TERMINAL=<tag>`` in its environment (the docker client on the host, through
  ``env``; the processes in the container, through ``docker exec -e``), and ``end_session_processes`` ends them by
  that tag, in the container and on the host (HUP, then KILL).
- **Recording.** ``Recorder`` writes asciicast v2 (header, then ``[seconds, "o", text]`` events; resizes as ``"r"``):
  output only, what the user types is never stored (a typed password is not echoed, so it is not recorded).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import re
import secrets
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import paramiko
from django.conf import settings
from django.utils import timezone

from panel.accounts.choices import Action
from panel.accounts.models import Organization
from panel.accounts.scoping import for_user
from panel.inventory.choices import EnvironmentKind
from panel.inventory.models import Environment
from panel.remote.containers import CONTAINER_ID, compose_containers
from panel.remote.errors import RemoteError
from panel.remote.ssh import READ_CHUNK, Connection, Target, get_connection, run_capture
from terminal.models import Profile, TerminalSession, TerminalTicket

logger = logging.getLogger(__name__)

TAG_VARIABLE = "DOODBA_PANEL_TERMINAL"
TERM = "xterm-256color"
DATABASE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
MIN_SIZE, MAX_COLS, MAX_ROWS = 2, 500, 200

# $1 tag: end the processes that carry it. Runs on the host (the docker client) and in the container (what the
# exec started); only ``tr`` and ``grep -F`` are needed (busybox has both). HUP first, KILL what is left after 1 s.
END_SCRIPT = r"""tag=$1
tagged() { for d in /proc/[0-9]*; do
  tr '\0' '\n' < "$d/environ" 2>/dev/null | grep -qxF -- "DOODBA_PANEL_TERMINAL=$tag" && echo "${d#/proc/}"
done; }
found=$(tagged | wc -l)
for p in $(tagged); do kill -HUP "$p" 2>/dev/null; done
n=0; while [ -n "$(tagged)" ] && [ $n -lt 5 ]; do sleep 0.2; n=$((n + 1)); done
for p in $(tagged); do kill -KILL "$p" 2>/dev/null; done
echo "ended $found"
"""
# Bash when the image has it, else sh.
SHELL_SCRIPT = "if command -v bash >/dev/null 2>&1; then exec bash; fi; exec sh"
# The db image's superuser over the local socket (with its password if it has one), on the environment's database.
PSQL_SCRIPT = (
    'PGPASSWORD="${POSTGRES_PASSWORD:-}"; export PGPASSWORD; exec psql -U "${POSTGRES_USER:-postgres}" -d "$1"'
)


@dataclass(frozen=True)
class ProfileSpec:
    """Where a profile runs (a compose service) and whether it needs the environment's database name."""

    service: str
    needs_database: bool


PROFILES: dict[str, ProfileSpec] = {
    Profile.SHELL: ProfileSpec("odoo", needs_database=False),
    Profile.PSQL: ProfileSpec("db", needs_database=True),
    Profile.ODOO_SHELL: ProfileSpec("odoo", needs_database=True),
}


class TerminalRefused(Exception):
    """A terminal cannot be opened; ``code`` is the websocket close code (4401, 4403, 4404) or HTTP-like status."""

    def __init__(self, message: str, code: int, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class TerminalUnavailable(Exception):
    """The server or the container cannot be reached right now; the message says why."""


# -- who may ------------------------------------------------------------------------------------------------------


def terminals_enabled(organization: Organization) -> bool:
    """The organization and, when it is managed, its provider allow terminals."""
    if not organization.terminal_enabled:
        return False
    provider = organization.managed_by
    return provider is None or provider.terminal_enabled


def environment_for_terminal(user: Any, environment_id: Any) -> Environment:
    """The environment ``user`` may open a terminal on, or ``TerminalRefused`` (404: not theirs to change, which
    includes viewers and customers; 403: their organization turned terminals off)."""
    try:
        pk = int(environment_id)
    except (TypeError, ValueError):
        raise TerminalRefused("No such environment.", 4404, "not_found") from None
    # Roles are cached on the user object; a long-lived socket's user must be asked afresh.
    user.__dict__.pop("_panel_org_ids", None)
    queryset = Environment.objects.select_related("server", "project__organization__managed_by")
    environment = for_user(queryset, user, Action.CHANGE).filter(pk=pk).first()
    if environment is None:
        raise TerminalRefused("No such environment.", 4404, "not_found")
    if not terminals_enabled(environment.project.organization):
        raise TerminalRefused("Terminals are turned off for this organization.", 4403, "disabled")
    return environment


def may_open_terminal(user: Any, environment: Environment) -> bool:
    """Whether the environment page shows the *Terminal* button to ``user``."""
    try:
        environment_for_terminal(user, environment.pk)
    except TerminalRefused:
        return False
    return True


# -- tickets ------------------------------------------------------------------------------------------------------


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_ticket(*, user: Any, environment: Environment, profile: str, confirmed: bool) -> str:
    """A one-time ticket (the token; only its hash is stored) for ``user`` to open ``profile`` on ``environment``
    (already checked with ``environment_for_terminal``). Production needs ``confirmed``."""
    if profile not in PROFILES:
        raise TerminalRefused("Unknown profile.", 400, "bad_profile")
    if environment.kind == EnvironmentKind.PRODUCTION and not confirmed:
        raise TerminalRefused(
            f"{environment} is a production environment: confirm that you mean to open a terminal on it.",
            400,
            "unconfirmed",
        )
    token = secrets.token_urlsafe(32)
    now = timezone.now()
    TerminalTicket.objects.filter(expires_at__lt=now - timedelta(hours=1)).delete()
    TerminalTicket.objects.create(
        token_hash=_hash(token),
        user=user,
        environment=environment,
        profile=profile,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.TERMINAL_TICKET_SECONDS),
    )
    return token


def consume_ticket(token: Any, *, user: Any, environment_id: int) -> tuple[Environment, str]:
    """Use a ticket once: ``(environment, profile)`` when it is unused, unexpired, the socket's user's and for this
    environment, and the user still may open a terminal there; else ``TerminalRefused`` (4401 or 4403/4404)."""
    if not isinstance(token, str) or not 20 <= len(token) <= 100:
        raise TerminalRefused("No ticket.", 4401, "no_ticket")
    digest = _hash(token)
    now = timezone.now()
    won = TerminalTicket.objects.filter(token_hash=digest, used_at__isnull=True, expires_at__gt=now).update(used_at=now)
    if won != 1:
        ticket = TerminalTicket.objects.filter(token_hash=digest).first()
        if ticket is None:
            raise TerminalRefused("Unknown ticket.", 4401, "unknown_ticket")
        if ticket.used_at is not None and ticket.used_at <= now:
            raise TerminalRefused("This ticket was used already.", 4401, "reused_ticket")
        raise TerminalRefused("This ticket expired.", 4401, "expired_ticket")
    ticket = TerminalTicket.objects.get(token_hash=digest)
    if ticket.user_id != user.pk:
        raise TerminalRefused("This ticket is someone else's.", 4401, "foreign_ticket")
    if ticket.environment_id != environment_id:
        raise TerminalRefused("This ticket is for another environment.", 4403, "other_environment")
    environment = environment_for_terminal(user, environment_id)
    return environment, ticket.profile


# -- what runs ----------------------------------------------------------------------------------------------------


def running_container(target: Target, environment: Environment, service: str) -> str:
    """The full id of the running container of ``service`` in the environment's compose project (one-off
    ``compose run`` containers left out); ``TerminalUnavailable`` when there is none."""
    try:
        found = compose_containers(
            target, environment.compose_project, service=service, timeout=settings.TERMINAL_COMMAND_TIMEOUT
        )
    except RemoteError as exc:
        raise TerminalUnavailable(str(exc)) from exc
    if service not in found:
        raise TerminalUnavailable(f"The {service} service of {environment} has no running container.")
    return found[service]


def database_of(target: Target, odoo_container: str) -> str:
    """The database the odoo container uses (its ``PGDATABASE``, checked)."""
    out = _capture(
        target, ["docker", "inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", odoo_container]
    )
    for line in out.splitlines():
        name, _, value = line.partition("=")
        if name == "PGDATABASE" and DATABASE_NAME.match(value):
            return value
    raise TerminalUnavailable("The odoo container names no usable database (PGDATABASE).")


def _capture(target: Target, argv: list[str]) -> str:
    try:
        result = run_capture(target, argv, timeout=settings.TERMINAL_COMMAND_TIMEOUT)
    except RemoteError as exc:
        raise TerminalUnavailable(str(exc)) from exc
    if not result.ok:
        raise TerminalUnavailable(f"{argv[0]} {argv[1]} failed: {result.stderr.strip()[:300]}")
    return result.stdout


@dataclass(frozen=True)
class Plan:
    """A resolved session: where, in which container, and the remote command (built here, never from input)."""

    target: Target
    container: str
    tag: str
    argv: list[str]


def plan_session(environment: Environment, profile: str) -> Plan:
    """Resolve ``profile`` on ``environment``'s server: the container by its compose labels, then the command."""
    spec = PROFILES[profile]
    try:
        target = Target.for_server(environment.server)
    except RemoteError as exc:
        raise TerminalUnavailable(str(exc)) from exc
    container = running_container(target, environment, spec.service)
    database = ""
    if spec.needs_database:
        odoo = container if spec.service == "odoo" else running_container(target, environment, "odoo")
        database = database_of(target, odoo)
    tag = f"term-{secrets.token_hex(12)}"
    return Plan(target=target, container=container, tag=tag, argv=remote_argv(profile, container, database, tag))


def remote_argv(profile: str, container: str, database: str, tag: str) -> list[str]:
    """The command run on the server for ``profile`` (the docker client tagged on the host, the exec in the
    container)."""
    if not CONTAINER_ID.match(container):
        raise ValueError("container must be a full container id")
    if profile == Profile.SHELL:
        inner = ["sh", "-c", SHELL_SCRIPT]
    elif profile == Profile.PSQL:
        inner = ["sh", "-c", PSQL_SCRIPT, "sh", database]
    elif profile == Profile.ODOO_SHELL:
        inner = ["odoo", "shell", "-d", database]
    else:
        raise ValueError(f"unknown profile {profile!r}")
    if PROFILES[profile].needs_database and not DATABASE_NAME.match(database):
        raise ValueError("database name refused")
    tagged = f"{TAG_VARIABLE}={tag}"
    return ["env", tagged, "docker", "exec", "-it", "-e", tagged, "-e", f"TERM={TERM}", container, *inner]


def end_session_processes(target: Target, container: str, tag: str) -> int:
    """End every process of the session, in the container and on the host; returns how many carried the tag."""
    ended = 0
    for argv in (
        ["docker", "exec", container, "sh", "-c", END_SCRIPT, "sh", tag],
        ["sh", "-c", END_SCRIPT, "sh", tag],
    ):
        try:
            result = run_capture(target, argv, timeout=settings.TERMINAL_COMMAND_TIMEOUT)
        except RemoteError:
            continue
        words = result.stdout.strip().rpartition("\n")[2].split()
        if len(words) == 2 and words[0] == "ended" and words[1].isdigit():
            ended += int(words[1])
    return ended


def clamp_size(cols: Any, rows: Any) -> tuple[int, int]:
    """A terminal size from the browser, as integers within sane bounds (80x24 for anything unusable)."""
    try:
        c, r = int(cols), int(rows)
    except (TypeError, ValueError):
        return 80, 24
    return max(MIN_SIZE, min(MAX_COLS, c)), max(MIN_SIZE, min(MAX_ROWS, r))


# -- the PTY ------------------------------------------------------------------------------------------------------


# The docker client forwards a size change (SIGWINCH) to the exec's TTY only once it watches for it, a moment after
# the session's first output (it sets the initial size, then starts watching): a signal in between is lost and the
# container's TTY keeps its old size. So a resize that comes before the session has settled is held and applied,
# latest size only, this long after the first output.
RESIZE_SETTLE_SECONDS = 1.0


class RemoteTerminal:
    """One PTY session channel on the server's pooled SSH connection; a thread reads it into ``on_output`` (bytes;
    ``b""`` once at the end)."""

    def __init__(self, plan: Plan, cols: int, rows: int, on_output: Callable[[bytes], None]) -> None:
        self.plan = plan
        self.on_output = on_output
        self.connection: Connection = get_connection(plan.target)
        self.channel: paramiko.Channel = self.connection.open_channel()
        self.lock = threading.Lock()
        self.closed = False
        self.size = (cols, rows)
        self.first_output = threading.Event()
        self.first_output_at = 0.0
        self.resize_lock = threading.Lock()
        self.held_resize: threading.Thread | None = None
        try:
            self.channel.get_pty(term=TERM, width=cols, height=rows)
            self.channel.exec_command(shlex.join(plan.argv))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.connection.release(self.channel)
            raise TerminalUnavailable(f"The server refused the terminal: {exc}.") from exc
        self.reader = threading.Thread(target=self._read, name=f"terminal-{plan.tag}", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            while True:
                data = self.channel.recv(READ_CHUNK)
                if not data:
                    break
                if not self.first_output.is_set():
                    self.first_output_at = time.monotonic()
                    self.first_output.set()
                self.on_output(data)
        except (paramiko.SSHException, EOFError, OSError):
            pass
        finally:
            self.first_output.set()
            self.on_output(b"")

    def write(self, data: bytes) -> None:
        """Send keystrokes (or a paste) to the PTY."""
        if not self.closed:
            try:
                self.channel.sendall(data)
            except (paramiko.SSHException, EOFError, OSError):
                pass

    def settled(self) -> bool:
        """Whether a size change now reaches the container's TTY (see ``RESIZE_SETTLE_SECONDS``)."""
        return self.first_output.is_set() and time.monotonic() >= self.first_output_at + RESIZE_SETTLE_SECONDS

    def resize(self, cols: int, rows: int) -> None:
        """Change the PTY's size (sshd passes it on to the docker client, which resizes the exec's TTY); held until
        the session has settled."""
        with self.lock:
            if self.closed:
                return
            self.size = (cols, rows)
            if not self.settled():
                if self.held_resize is None:
                    self.held_resize = threading.Thread(
                        target=self._resize_when_settled, name=f"terminal-resize-{self.plan.tag}", daemon=True
                    )
                    self.held_resize.start()
                return
        self._apply_size()

    def _resize_when_settled(self) -> None:
        self.first_output.wait(timeout=settings.TERMINAL_OPEN_SECONDS)
        time.sleep(max(0.0, self.first_output_at + RESIZE_SETTLE_SECONDS - time.monotonic()))
        while True:
            applied = self._apply_size()
            with self.lock:
                if self.closed or applied == self.size:
                    self.held_resize = None
                    return

    def _apply_size(self) -> tuple[int, int]:
        """Apply the latest size asked for (whichever of two concurrent callers runs last applies the newest)."""
        with self.resize_lock:
            cols, rows = self.size
            if not self.closed:
                try:
                    self.channel.resize_pty(width=cols, height=rows)
                except (paramiko.SSHException, EOFError, OSError):
                    pass
            return cols, rows

    def close(self) -> int:
        """Close the channel and end the session's processes on the server (no orphan); returns how many were
        still there."""
        with self.lock:
            if self.closed:
                return 0
            self.closed = True
        try:
            self.connection.release(self.channel)
        except Exception:  # the transport may be gone already; the processes are ended below either way
            logger.debug("terminal channel %s already closed", self.plan.tag, exc_info=True)
        return end_session_processes(self.plan.target, self.plan.container, self.plan.tag)


# -- recording ----------------------------------------------------------------------------------------------------


def recordings_dir() -> Path:
    """Where recordings are stored (created on first use)."""
    directory = Path(settings.DATA_DIR) / "terminal"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class Recorder:
    """An asciicast v2 file: output events only (``"o"``) and resizes (``"r"``), capped at
    ``TERMINAL_RECORDING_MAX_BYTES`` (past it, one note and nothing more)."""

    def __init__(self, name: str, cols: int, rows: int, title: str) -> None:
        self.path = recordings_dir() / name
        self.file = self.path.open("w", encoding="utf-8")
        self.started = time.monotonic()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.bytes = 0
        self.truncated = False
        header = {
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": int(time.time()),
            "title": title,
            "env": {"TERM": TERM},
        }
        self._line(header)

    def _line(self, value: Any) -> None:
        if self.truncated or self.file.closed:
            return
        text = json.dumps(value, ensure_ascii=False) + "\n"
        size = len(text.encode())
        if self.bytes + size > settings.TERMINAL_RECORDING_MAX_BYTES:
            self.truncated = True
            note = [round(time.monotonic() - self.started, 6), "o", "\r\n[recording stopped: size limit]\r\n"]
            self.file.write(json.dumps(note) + "\n")
            return
        self.file.write(text)
        self.bytes += size

    def output(self, data: bytes) -> None:
        text = self.decoder.decode(data)
        if text:
            self._line([round(time.monotonic() - self.started, 6), "o", text])

    def resize(self, cols: int, rows: int) -> None:
        self._line([round(time.monotonic() - self.started, 6), "r", f"{cols}x{rows}"])

    def close(self) -> None:
        if not self.file.closed:
            rest = self.decoder.decode(b"", final=True)
            if rest:
                self._line([round(time.monotonic() - self.started, 6), "o", rest])
            self.file.close()


def recording_path(session: TerminalSession) -> Path | None:
    """The recording file of a session, when it has one (its name is ours: no path from input)."""
    if not session.recording or "/" in session.recording:
        return None
    path = recordings_dir() / session.recording
    return path if path.is_file() else None


# -- bookkeeping --------------------------------------------------------------------------------------------------


def start_session(*, user: Any, environment: Environment, profile: str, plan: Plan) -> TerminalSession:
    """The session's row (its recording named after it) and its audit entry (who, environment, profile)."""
    from panel.accounts.services import record

    session = TerminalSession.objects.create(
        environment=environment,
        environment_name=str(environment)[:200],
        organization=environment.project.organization,
        user=user,
        username=user.get_username(),
        profile=profile,
        container=plan.container,
        tag=plan.tag,
    )
    session.recording = f"{session.pk}-{plan.tag}.cast"
    session.save(update_fields=["recording"])
    record(
        action="terminal.started",
        actor=user,
        obj=environment,
        detail={"profile": profile, "session": session.pk},
    )
    return session


def finish_session(session: TerminalSession, *, reason: str, recorder: Recorder | None) -> None:
    """Close the recording, store how the session ended, audit it."""
    from panel.accounts.services import record

    if recorder is not None:
        recorder.close()
        session.recording_bytes = recorder.bytes
        session.recording_truncated = recorder.truncated
    session.ended_at = timezone.now()
    session.end_reason = reason[:40]
    session.save(update_fields=["ended_at", "end_reason", "recording_bytes", "recording_truncated"])
    seconds = round((session.ended_at - session.started_at).total_seconds(), 1)
    record(
        action="terminal.ended",
        actor=session.user,
        obj=session.environment,
        organization=session.organization,
        actor_name=session.username,
        detail={"profile": session.profile, "session": session.pk, "reason": session.end_reason, "seconds": seconds},
    )


def record_refusal(user: Any, environment_id: Any, refusal: TerminalRefused) -> None:
    """A security event for a refused terminal (no ticket, reused, expired, foreign, not allowed)."""
    from panel.accounts.services import record

    environment = Environment.objects.filter(pk=environment_id).first() if str(environment_id).isdigit() else None
    record(
        action="terminal.refused",
        actor=user,
        obj=environment,
        security=True,
        detail={"reason": refusal.reason, "environment": str(environment_id)[:20]},
    )
