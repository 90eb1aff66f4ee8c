"""SSH with pinned host keys, one reused connection per server per worker process.

There is no ``SSHClient`` and no host key policy here: the panel drives ``paramiko.Transport`` itself, compares
the key the server presents with the pinned one right after key exchange and closes the socket on any
difference, before authentication and before any channel is opened.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from panel.remote.errors import (
    AuthenticationFailed,
    CommandTimeout,
    HostKeyMismatch,
    HostKeyNotConfirmed,
    RemoteError,
    Unreachable,
)

if TYPE_CHECKING:
    from panel.inventory.models import Server
    from panel.remote.session import Hold

logger = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
# paramiko keeps one pending global-request reply per transport: one liveness probe at a time.
_PROBE_LOCK = threading.Lock()
OutputCallback = Callable[[str, str], None]  # (stream "out" | "err", line without newline)


@dataclass(frozen=True)
class HostKey:
    """A server's host key as presented during key exchange."""

    key_type: str
    base64: str
    fingerprint: str


@dataclass(frozen=True)
class Target:
    """Everything needed to reach one server; built from a ``Server`` row, never from user input directly."""

    label: str
    host: str
    port: int
    username: str
    private_key: str = field(repr=False)
    host_key_type: str
    host_key_base64: str

    @classmethod
    def for_server(cls, server: Server) -> Target:
        """The target of a server whose host key a person confirmed."""
        if not server.host_key_pinned:
            raise HostKeyNotConfirmed(
                f"The host key of {server.name} has not been confirmed yet: confirm its fingerprint first."
            )
        return cls(
            label=f"{server.name} ({server.host}:{server.port})",
            host=server.host,
            port=server.port,
            username=server.username,
            private_key=server.private_key,
            host_key_type=server.host_key_type,
            host_key_base64=server.host_key_base64,
        )

    @property
    def pool_key(self) -> str:
        """Identity of a pooled connection: any change of address, user, key or pin opens a new one."""
        digest = hashlib.sha256(
            "\0".join(
                [self.host, str(self.port), self.username, self.private_key, self.host_key_type, self.host_key_base64]
            ).encode()
        ).hexdigest()
        return digest


@dataclass(frozen=True)
class CommandResult:
    """Exit code and (size-capped) output of a short command."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Exit code 0."""
        return self.exit_code == 0


def fingerprint_of(key: paramiko.PKey) -> str:
    """``SHA256:...`` exactly as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def fingerprint_of_base64(key_base64: str) -> str:
    """The SHA256 fingerprint of a base64 public key blob."""
    digest = hashlib.sha256(base64.b64decode(key_base64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def generate_key_pair(comment: str) -> tuple[str, str]:
    """A new Ed25519 key pair: (OpenSSH private key, ``ssh-ed25519 AAAA... comment`` public line)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}".strip()


def load_private_key(text: str) -> paramiko.PKey:
    """Parse an OpenSSH/PEM private key (Ed25519, ECDSA or RSA)."""
    key_classes: list[type[paramiko.PKey]] = [paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey]
    for key_class in key_classes:
        try:
            return key_class.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise RemoteError("The stored SSH private key cannot be read (unsupported type or passphrase-protected).")


def public_line_of(private_key_text: str, comment: str = "") -> str:
    """The ``authorized_keys`` line for a private key."""
    key = load_private_key(private_key_text)
    return f"{key.get_name()} {key.get_base64()} {comment}".strip()


def _open_socket(host: str, port: int) -> socket.socket:
    timeout = settings.SSH_CONNECT_TIMEOUT
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise Unreachable(f"Cannot resolve {host}: check the host name.") from exc
    except ConnectionRefusedError as exc:
        raise Unreachable(f"{host}:{port} refused the connection: is sshd running and is the port right?") from exc
    except TimeoutError as exc:
        raise Unreachable(
            f"No answer from {host}:{port} within {timeout:g} s: the server is down or a firewall drops SSH."
        ) from exc
    except OSError as exc:
        raise Unreachable(f"Cannot reach {host}:{port}: {exc.strerror or exc}.") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _start_transport(host: str, port: int) -> paramiko.Transport:
    sock = _open_socket(host, port)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = settings.SSH_BANNER_TIMEOUT
    transport.handshake_timeout = settings.SSH_BANNER_TIMEOUT
    transport.auth_timeout = settings.SSH_AUTH_TIMEOUT
    # Rekeying in the middle of multi-GiB streams stalls paramiko (issue 822): rekey rarely, between operations.
    transport.packetizer.REKEY_BYTES = pow(2, 40)
    transport.packetizer.REKEY_PACKETS = pow(2, 40)
    try:
        transport.start_client(timeout=settings.SSH_BANNER_TIMEOUT + settings.SSH_CONNECT_TIMEOUT)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        transport.close()
        raise Unreachable(
            f"{host}:{port} accepted the connection but did not complete an SSH handshake within "
            f"{settings.SSH_BANNER_TIMEOUT:g} s: the server stopped answering or this is not an SSH port."
        ) from exc
    return transport


def fetch_host_key(host: str, port: int) -> HostKey:
    """Connect, read the host key the server presents, disconnect. Nothing is authenticated or run."""
    transport = _start_transport(host, port)
    try:
        key = transport.get_remote_server_key()
        return HostKey(key_type=key.get_name(), base64=key.get_base64(), fingerprint=fingerprint_of(key))
    finally:
        transport.close()


class Connection:
    """One authenticated SSH transport to a server; channels are opened per operation, capped by a semaphore."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.transport = self._connect(target)
        self.channels = threading.BoundedSemaphore(settings.SSH_MAX_CHANNELS)
        self.created_at = time.monotonic()

    @staticmethod
    def _connect(target: Target) -> paramiko.Transport:
        transport = _start_transport(target.host, target.port)
        try:
            presented = transport.get_remote_server_key()
            if presented.get_name() != target.host_key_type or presented.get_base64() != target.host_key_base64:
                raise HostKeyMismatch(
                    label=target.label,
                    presented=fingerprint_of(presented),
                    pinned=fingerprint_of_base64(target.host_key_base64),
                )
            pkey = load_private_key(target.private_key)
            try:
                transport.auth_publickey(target.username, pkey)
            except paramiko.AuthenticationException as exc:
                raise AuthenticationFailed(
                    f"{target.label} refused the panel's SSH key for user {target.username}: add the public key "
                    f"shown on the server page to ~{target.username}/.ssh/authorized_keys."
                ) from exc
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise Unreachable(f"{target.label} closed the connection during authentication: {exc}.") from exc
            if not transport.is_authenticated():
                raise AuthenticationFailed(f"{target.label} did not accept public key authentication.")
            if settings.SSH_KEEPALIVE_INTERVAL:
                transport.set_keepalive(settings.SSH_KEEPALIVE_INTERVAL)
        except BaseException:
            transport.close()
            raise
        return transport

    @property
    def alive(self) -> bool:
        """The transport is still up and authenticated."""
        return self.transport.is_active() and self.transport.is_authenticated()

    def open_channel(self) -> paramiko.Channel:
        """A new session channel; give it back with ``release``."""
        if not self.channels.acquire(timeout=settings.SSH_COMMAND_TIMEOUT):
            raise CommandTimeout(f"Too many operations in flight on {self.target.label}.")
        try:
            return self.transport.open_session(timeout=settings.SSH_CONNECT_TIMEOUT)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.channels.release()
            raise Unreachable(f"{self.target.label} refused a new SSH channel: {exc}.") from exc

    def release(self, channel: paramiko.Channel) -> None:
        """Close a channel from ``open_channel``."""
        try:
            channel.close()
        finally:
            self.channels.release()

    def close(self) -> None:
        """Close the transport."""
        self.transport.close()


# Counting hooks (monitoring's Prometheus metrics add one): called with the pool's size after every use or change.
POOL_LISTENERS: list[Callable[[int], None]] = []


def _report_pool_size(size: int) -> None:
    for listener in POOL_LISTENERS:
        try:
            listener(size)
        except Exception:  # counting never breaks a connection
            logger.debug("an SSH pool listener failed", exc_info=True)


class _Pool:
    """Connections of this process, keyed by target; reset after a fork (Celery prefork children)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections: dict[str, Connection] = {}
        self.pid = os.getpid()

    def get(self, target: Target) -> Connection:
        connection = self._get(target)
        _report_pool_size(len(self.connections))
        return connection

    def _get(self, target: Target) -> Connection:
        with self.lock:
            if self.pid != os.getpid():
                self.connections = {}
                self.pid = os.getpid()
            connection = self.connections.get(target.pool_key)
            if connection is not None and connection.alive:
                return connection
            if connection is not None:
                connection.close()
            connection = Connection(target)
            self.connections[target.pool_key] = connection
            return connection

    def discard(self, connection: Connection) -> None:
        with self.lock:
            if self.connections.get(connection.target.pool_key) is connection:
                del self.connections[connection.target.pool_key]
        connection.close()
        _report_pool_size(len(self.connections))

    def close_all(self) -> None:
        with self.lock:
            for connection in self.connections.values():
                connection.close()
            self.connections = {}
        _report_pool_size(0)


POOL = _Pool()


def get_connection(target: Target) -> Connection:
    """The process's connection to ``target`` (opened on first use, reopened when it died)."""
    return POOL.get(target)


@contextmanager
def exec_channel(target: Target, argv: Sequence[str]) -> Iterator[paramiko.Channel]:
    """A channel running ``argv``; the caller reads it (streams, binary data)."""
    connection = get_connection(target)
    try:
        channel = connection.open_channel()
    except Unreachable:
        # The pooled transport died since its last use; nothing ran on it, so one new connection is safe.
        POOL.discard(connection)
        connection = get_connection(target)
        channel = connection.open_channel()
    try:
        channel.exec_command(shlex.join(argv))
        yield channel
    finally:
        connection.release(channel)


class _LineSplitter:
    """Turns chunks of bytes into complete lines, capping overlong ones."""

    def __init__(self, stream: str, callback: OutputCallback, max_line: int) -> None:
        self.stream = stream
        self.callback = callback
        self.max_line = max_line
        self.buffer = b""

    def feed(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self._emit(line)
        while len(self.buffer) > self.max_line:
            self._emit(self.buffer[: self.max_line])
            self.buffer = self.buffer[self.max_line :]

    def close(self) -> None:
        if self.buffer:
            self._emit(self.buffer)
            self.buffer = b""

    def _emit(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        self.callback(self.stream, text[: self.max_line])


def run(
    target: Target,
    argv: Sequence[str],
    *,
    on_output: OutputCallback,
    timeout: float | None = None,
    idle_timeout: float | None = None,
    stdin: bytes | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Run ``argv`` on the server, streaming each output line to ``on_output`` as it arrives; return the exit code.

    ``timeout`` bounds the whole command, ``idle_timeout`` the silence between two outputs.
    """
    from panel.remote.session import HoldLost, current_hold

    timeout = settings.SSH_COMMAND_TIMEOUT if timeout is None else timeout
    idle_timeout = settings.SSH_IDLE_OUTPUT_TIMEOUT if idle_timeout is None else idle_timeout
    max_line = settings.JOB_LOG_MAX_LINE
    out = _LineSplitter("out", on_output, max_line)
    err = _LineSplitter("err", on_output, max_line)
    name = argv[0]
    held = current_hold(target)
    if held is not None:
        # A job's command: refuse it once the job's hold ended, and tag it so the hold can end it.
        held.check()
        argv = held.tagged(argv)
    with exec_channel(target, argv) as channel:
        if stdin is not None:
            channel.sendall(stdin)
        channel.shutdown_write()
        started = last_output = last_probe = time.monotonic()
        while True:
            if held is not None and held.lost():
                raise HoldLost(held.lost_reason)
            if channel.recv_ready():
                out.feed(channel.recv(READ_CHUNK))
                last_output = time.monotonic()
                continue
            if channel.recv_stderr_ready():
                err.feed(channel.recv_stderr(READ_CHUNK))
                last_output = time.monotonic()
                continue
            if channel.eof_received or channel.closed:
                break
            now = time.monotonic()
            if now - started > timeout:
                raise _timed_out(target, channel, held, f"{name} did not finish within {timeout:g} s", "")
            if now - last_output > idle_timeout:
                raise _timed_out(
                    target, channel, held, f"{name} produced no output for {idle_timeout:g} s", "; it was stopped"
                )
            if should_stop is not None and should_stop():
                raise CommandTimeout(f"{name} was stopped on request.")
            last_probe = _probe_silence(
                target, channel, held, f"{name} produced no output", now, last_output, last_probe
            )
            select.select([channel], [], [], 0.5)
        # Data that arrived between the last check and EOF is still buffered: take it.
        while channel.recv_ready():
            out.feed(channel.recv(READ_CHUNK))
        while channel.recv_stderr_ready():
            err.feed(channel.recv_stderr(READ_CHUNK))
        # After EOF the exit status follows at once; wait for it within what is left of the timeout.
        remaining = max(1.0, timeout - (time.monotonic() - started))
        if not channel.status_event.wait(remaining):
            raise CommandTimeout(f"{name} did not report an exit status on {target.label}.")
        out.close()
        err.close()
        return channel.recv_exit_status()


@dataclass(frozen=True)
class StreamResult:
    """How a streamed command ended: its exit code, the (capped) end of its stderr and the bytes moved."""

    exit_code: int
    stderr: str
    bytes_out: int
    bytes_in: int

    @property
    def ok(self) -> bool:
        """Exit code 0."""
        return self.exit_code == 0


def stream(
    target: Target,
    argv: Sequence[str],
    *,
    sink: Callable[[bytes], None] | None = None,
    source: Iterable[bytes] | None = None,
    timeout: float | None = None,
    idle_timeout: float | None = None,
    stderr_limit: int = 64 * 1024,
    close_stdin: bool = True,
    name: str = "",
) -> StreamResult:
    """Run ``argv`` on the server with binary stdin/stdout: each chunk of its stdout goes to ``sink`` as it
    arrives, ``source``'s chunks are its stdin (none: stdin is closed at once, unless ``close_stdin`` is false: then
    it stays open until the command ended, for commands that watch it to end with the connection). Returns the exit code, the last
    ``stderr_limit`` bytes of stderr and the byte counts; it never raises for a non-zero exit (the caller decides).

    Memory stays bounded: the SSH window (2 MiB) limits what the server sends before ``sink`` took the previous
    chunk, and one chunk of ``source`` is in flight at a time. A command that stops reading its stdin early (it
    exited) ends the feeding, not the call. ``name`` is what messages call the command (default: ``argv[0]``).
    Like ``run``, it refuses to start once the job's hold ended, is tagged
    by it, and stops with ``HoldLost`` when the hold ends; ``timeout`` bounds the whole command, ``idle_timeout``
    the time without a byte moving either way.
    """
    from panel.remote.session import HoldLost, current_hold

    timeout = settings.SSH_COMMAND_TIMEOUT if timeout is None else timeout
    idle_timeout = settings.SSH_IDLE_OUTPUT_TIMEOUT if idle_timeout is None else idle_timeout
    name = name or argv[0]
    held = current_hold(target)
    if held is not None:
        held.check()
        argv = held.tagged(argv)
    chunks = iter(source) if source is not None else None
    pending = b""
    err = bytearray()
    bytes_out = bytes_in = 0
    with exec_channel(target, argv) as channel:
        if chunks is None and close_stdin:
            channel.shutdown_write()
        started = last_activity = last_probe = time.monotonic()
        while True:
            if held is not None and held.lost():
                raise HoldLost(held.lost_reason)
            moved = False
            if channel.recv_ready():
                data = channel.recv(READ_CHUNK)
                bytes_out += len(data)
                if sink is not None and data:
                    sink(data)
                moved = True
            if channel.recv_stderr_ready():
                err += channel.recv_stderr(READ_CHUNK)
                del err[:-stderr_limit]
                moved = True
            if chunks is not None:
                if channel.exit_status_ready() or channel.closed:
                    chunks = None  # it exited without reading all of its stdin: stop feeding it
                elif not pending:
                    # Only the source's end ends stdin: an empty chunk (a tar's padding of a file whose size is a
                    # multiple of 512) is no end of input.
                    following = next(chunks, None)
                    while following is not None and not following:
                        following = next(chunks, None)
                    if following is None:
                        channel.shutdown_write()
                        chunks = None
                    else:
                        pending = following
                if pending and chunks is not None and channel.send_ready():
                    try:
                        sent = channel.send(pending[:READ_CHUNK])
                    except OSError:
                        sent, chunks = 0, None
                    bytes_in += sent
                    pending = pending[sent:]
                    moved = moved or sent > 0
            now = time.monotonic()
            if now - started > timeout:
                raise _timed_out(target, channel, held, f"{name} did not finish within {timeout:g} s", "")
            if moved:
                last_activity = now
                continue
            if channel.eof_received or channel.closed:
                break
            if now - last_activity > idle_timeout:
                raise _timed_out(
                    target, channel, held, f"{name} moved no data for {idle_timeout:g} s", "; it was stopped"
                )
            last_probe = _probe_silence(target, channel, held, f"{name} moved no data", now, last_activity, last_probe)
            # Waiting for the window to open (stdin) is not visible to select(): poll it more often.
            select.select([channel], [], [], 0.01 if pending else 0.2)
        while channel.recv_ready():
            data = channel.recv(READ_CHUNK)
            bytes_out += len(data)
            if sink is not None and data:
                sink(data)
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(READ_CHUNK)
            del err[:-stderr_limit]
        remaining = max(1.0, timeout - (time.monotonic() - started))
        if not channel.status_event.wait(remaining):
            raise CommandTimeout(f"{name} did not report an exit status on {target.label}.")
        code = channel.recv_exit_status()
    return StreamResult(code, err.decode("utf-8", errors="replace"), bytes_out, bytes_in)


def answers(transport: paramiko.Transport, within: float) -> bool:
    """Whether the server still answers on ``transport``: a keepalive request that wants a reply, replied to
    within ``within`` seconds (sshd answers it from its main loop, however busy the command is)."""
    replied = threading.Event()

    def ask() -> None:
        try:
            transport.global_request("keepalive@openssh.com", wait=True)
        except (paramiko.SSHException, EOFError, OSError):  # the transport broke: no answer
            return
        if transport.is_active():
            replied.set()

    if not _PROBE_LOCK.acquire(timeout=within):
        return True  # another probe is under way; do not judge the server on a lock
    try:
        threading.Thread(target=ask, name="ssh-alive", daemon=True).start()
        return replied.wait(within)
    finally:
        _PROBE_LOCK.release()


def _probe_silence(
    target: Target, channel: paramiko.Channel, held: Hold | None, what: str, now: float, since: float, probed: float
) -> float:
    """A silent command (pg_dump waiting for a lock, ``compose stop`` waiting for a container, a restore writing an
    index) is not a dead server: while nothing moves, ask the server every ``SSH_KEEPALIVE_INTERVAL`` whether it
    still answers at all, and raise ``_stopped_answering`` when it does not. Returns when it last asked."""
    every = settings.SSH_KEEPALIVE_INTERVAL
    if not every or now - since <= every or now - probed <= every:
        return probed
    transport = channel.get_transport()
    if transport is not None and not answers(transport, settings.SSH_BANNER_TIMEOUT):
        raise _stopped_answering(target, transport, held, f"{what} for {now - since:.0f} s")
    return now


def _timed_out(target: Target, channel: paramiko.Channel, held: Hold | None, what: str, tail: str) -> RemoteError:
    """The error of a command that ran out of time (``what`` on ``target``).

    If the server does not answer a keepalive either (``SSH_BANNER_TIMEOUT``), it stopped answering altogether
    (down, paused, cut off): say so, and close the connection instead of waiting on it. The next operation then
    reconnects, and a job's hold ends at once: the server ends the job's commands when it sees the connection
    close, and nothing of the job waits for a server that does not answer.
    """
    transport = channel.get_transport()
    if transport is None or answers(transport, settings.SSH_BANNER_TIMEOUT):
        return CommandTimeout(f"{what} on {target.label}{tail}.")
    return _stopped_answering(target, transport, held, what)


def _stopped_answering(target: Target, transport: paramiko.Transport, held: Hold | None, what: str) -> RemoteError:
    """The error of a server that did not answer a keepalive: close the connection (and end the job's hold)."""
    within = settings.SSH_BANNER_TIMEOUT
    message = (
        f"{target.label} stopped answering over SSH: {what}, and the server did not answer a keepalive within "
        f"{within:g} s either. It is down, overloaded or cut off from the panel: check it, then run the job again."
    )
    logger.warning("%s: closing the connection", message)
    transport.close()
    if held is not None:
        held.abort(message)
    return Unreachable(message)


def run_capture(
    target: Target,
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    limit: int = 1024 * 1024,
) -> CommandResult:
    """Run a short command and return its output (each stream capped at ``limit`` characters)."""
    chunks: dict[str, list[str]] = {"out": [], "err": []}
    sizes = {"out": 0, "err": 0}

    def collect(stream: str, line: str) -> None:
        if sizes[stream] < limit:
            chunks[stream].append(line)
            sizes[stream] += len(line) + 1

    code = run(target, argv, on_output=collect, timeout=timeout, idle_timeout=timeout)
    return CommandResult(code, "\n".join(chunks["out"]), "\n".join(chunks["err"]))
