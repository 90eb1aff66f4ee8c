"""Remote access: every command the panel runs on a server goes through this package.

- ``ssh``: pinned-host-key SSH connections (paramiko), one per server per worker process, a channel per operation.
- ``commands``: argv lists only; ``shlex.join`` is the only way to a remote shell string.
- ``docker``: the docker SDK over the same pinned connection (``docker system dial-stdio``).
- ``containers``: an environment's compose containers by label (one ``docker ps``).
- ``tunnel``: HTTP to a container's address over a ``direct-tcpip`` channel.
"""

from panel.remote.errors import (
    AuthenticationFailed,
    CommandTimeout,
    HostKeyMismatch,
    HostKeyNotConfirmed,
    RemoteError,
    Unreachable,
)
from panel.remote.ssh import (
    CommandResult,
    HostKey,
    StreamResult,
    Target,
    fetch_host_key,
    generate_key_pair,
    get_connection,
    run,
    run_capture,
    stream,
)

__all__ = [
    "AuthenticationFailed",
    "CommandResult",
    "CommandTimeout",
    "HostKey",
    "HostKeyMismatch",
    "HostKeyNotConfirmed",
    "RemoteError",
    "StreamResult",
    "Target",
    "Unreachable",
    "fetch_host_key",
    "generate_key_pair",
    "get_connection",
    "run",
    "run_capture",
    "stream",
]
