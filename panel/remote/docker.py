"""The docker SDK over the panel's pinned SSH connection.

docker-py's own ``ssh://`` transport reads ``~/.ssh/known_hosts`` and ``~/.ssh/config`` of the worker's user and
knows nothing of the pinned keys; this adapter instead opens a channel on the pooled, pinned transport and runs
``docker system dial-stdio`` on it for each HTTP connection.
"""

from __future__ import annotations

from typing import Any

import docker
from docker.transport.basehttpadapter import BaseHTTPAdapter
from docker.transport.sshconn import SSHConnection, SSHConnectionPool
from urllib3._collections import RecentlyUsedContainer

from panel.remote.ssh import Target, get_connection


class _PinnedClient:
    """What ``SSHConnectionPool`` needs of an SSH client: the transport."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def get_transport(self) -> Any:
        return get_connection(self.target).transport


class _PinnedConnectionPool(SSHConnectionPool):  # type: ignore[misc]
    def __init__(self, target: Target, timeout: float, maxsize: int) -> None:
        super().__init__(ssh_client=None, timeout=timeout, maxsize=maxsize, host=None)
        self.target = target

    def _new_conn(self) -> SSHConnection:
        # Ask the pool each time: a reconnected transport (after a server restart) is picked up.
        return SSHConnection(get_connection(self.target).transport, self.timeout, None)


class PinnedSSHAdapter(BaseHTTPAdapter):  # type: ignore[misc]
    """requests adapter that reaches dockerd through ``docker system dial-stdio`` on a pinned SSH channel."""

    def __init__(self, target: Target, timeout: float = 60, max_pool_size: int = 2) -> None:
        self.target = target
        self.timeout = timeout
        self.max_pool_size = max_pool_size
        self.pools: RecentlyUsedContainer[Any, SSHConnectionPool] = RecentlyUsedContainer(
            4, dispose_func=lambda pool: pool.close()
        )
        super().__init__()

    def get_connection(self, url: Any, proxies: Any = None) -> SSHConnectionPool:
        with self.pools.lock:
            pool = self.pools.get(url)
            if pool is None:
                pool = _PinnedConnectionPool(self.target, self.timeout, self.max_pool_size)
                self.pools[url] = pool
            return pool


def docker_client(target: Target, *, timeout: float = 60, version: str = "1.41") -> docker.DockerClient:
    """A ``DockerClient`` whose every request travels over the server's pinned SSH connection."""
    api = docker.APIClient(base_url="tcp://127.0.0.1:9", version=version, timeout=timeout)
    adapter = PinnedSSHAdapter(target, timeout=timeout)
    api.mount("http+docker://ssh", adapter)
    api._custom_adapter = adapter
    api.base_url = "http+docker://ssh"
    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = api
    return client
