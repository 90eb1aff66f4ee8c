"""HTTP requests to a service on a server's private network, through the server's pooled SSH connection.

The panel opens a ``direct-tcpip`` channel on the pinned, pooled transport (``panel.remote.ssh``) to an address
that only the server can reach (a container's IP on a compose network) and speaks HTTP/1.1 on it: nothing is
published on the server, nothing listens on the panel's side. Each request takes one channel (counted against the
connection's cap, like a command) and closes it (``Connection: close``). Responses are read through
``http.client`` (content length and chunked encoding) and capped in size; every step is bounded by a timeout.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import paramiko

from panel.remote.errors import CommandTimeout, RemoteError, Unreachable
from panel.remote.ssh import POOL, Target, get_connection


class TunnelError(RemoteError):
    """The server could not reach the address, or the service answered something that is not HTTP."""


class ResponseTooLarge(TunnelError):
    """The service's answer is larger than the caller's limit."""


@dataclass(frozen=True)
class HTTPAnswer:
    """Status, headers (names lower-cased) and body of one HTTP response."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        """The body parsed as JSON (``TunnelError`` when it is not)."""
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise TunnelError(f"The service answered HTTP {self.status} with a body that is not JSON.") from exc


def _open(target: Target, host: str, port: int, timeout: float) -> tuple[Any, paramiko.Channel]:
    connection = get_connection(target)
    if not connection.channels.acquire(timeout=timeout):
        raise CommandTimeout(f"Too many operations in flight on {target.label}.")
    try:
        channel = connection.transport.open_channel(
            "direct-tcpip", dest_addr=(host, port), src_addr=("127.0.0.1", 0), timeout=timeout
        )
    except paramiko.ChannelException as exc:
        connection.channels.release()
        raise TunnelError(
            f"{target.label} could not connect to {host}:{port} ({exc.text or 'refused'}): the service is not "
            "running there, or the server's sshd forbids TCP forwarding (AllowTcpForwarding)."
        ) from exc
    except (paramiko.SSHException, EOFError, OSError) as exc:
        connection.channels.release()
        # The pooled transport died since its last use: a new connection next time.
        POOL.discard(connection)
        raise Unreachable(f"{target.label} refused a forwarding channel: {exc}.") from exc
    channel.settimeout(timeout)
    return connection, channel


def request(
    target: Target,
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    body: bytes | None = None,
    content_type: str = "application/json",
    timeout: float = 10.0,
    limit: int = 16 * 1024 * 1024,
) -> HTTPAnswer:
    """One HTTP/1.1 request to ``host:port`` as seen from the server (an IP address; names are refused, since the
    server would resolve them); the answer's body is read whole, up to ``limit`` bytes."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise TunnelError(f"{host!r} is not an IP address.") from exc
    if not path.startswith("/") or any(c in path for c in "\r\n ") or not 0 < port < 65536:
        raise TunnelError("The request path or port is malformed.")
    if method not in ("GET", "POST", "PUT", "DELETE"):
        raise TunnelError(f"Method {method!r} is not allowed.")
    target_path = path + (f"?{urlencode(query)}" if query else "")
    host_header = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    lines = [
        f"{method} {target_path} HTTP/1.1",
        f"Host: {host_header}",
        "Accept: application/json, */*",
        "Connection: close",
        "User-Agent: doodba-panel",
    ]
    if body is not None:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    elif method in ("POST", "PUT", "DELETE"):
        lines.append("Content-Length: 0")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    connection, channel = _open(target, str(address), port, timeout)
    try:
        channel.sendall(head + (body or b""))
        response = http.client.HTTPResponse(channel)  # type: ignore[arg-type]  # a socket with makefile()
        try:
            response.begin()
            data = response.read(limit + 1)
        except (http.client.HTTPException, ValueError) as exc:
            raise TunnelError(f"{host}:{port} did not answer HTTP: {exc!r}.") from exc
        except TimeoutError as exc:
            raise CommandTimeout(
                f"{host}:{port} did not answer within {timeout:g} s (through {target.label})."
            ) from exc
        if len(data) > limit:
            raise ResponseTooLarge(f"{host}:{port} answered more than {limit} bytes.")
        headers = {name.lower(): value for name, value in response.getheaders()}
        return HTTPAnswer(status=response.status, headers=headers, body=data)
    except OSError as exc:
        if isinstance(exc, TimeoutError):
            raise CommandTimeout(
                f"{host}:{port} did not answer within {timeout:g} s (through {target.label})."
            ) from exc
        raise TunnelError(f"The connection to {host}:{port} broke: {exc}.") from exc
    finally:
        connection.release(channel)
