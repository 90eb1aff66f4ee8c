"""Helpers that break and mend the services the tests talk to (the Redis of ``bin/test-services``)."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.parse

from django.conf import settings

# Set by tests/conftest.py while a test marked ``exclusive`` runs: only such a test may stop the shared servers
# (with pytest-xdist, another process's tests are using them).
EXCLUSIVE = {"held": False}


def own_servers() -> bool:
    """Whether this pytest-xdist process has its own copy of PostgreSQL and Redis (tests/settings.py)."""
    return os.environ.get("PANEL_TEST_OWN_SERVERS") == "1"


def _require_exclusive(what: str) -> None:
    if not EXCLUSIVE["held"] and not own_servers():
        raise AssertionError(f"a test that stops the shared {what} must be marked @pytest.mark.exclusive")


def _shared_redis(url: str | None) -> bool:
    return url is None or redis_address(url) == redis_address(settings.REDIS_URL)


def redis_address(url: str | None = None) -> tuple[str, int]:
    """Host and port of the Redis server at ``url`` (default: settings.REDIS_URL)."""
    parsed = urllib.parse.urlsplit(url or settings.REDIS_URL)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379


def redis_cli(*args: str, url: str | None = None, timeout: float = 5) -> subprocess.CompletedProcess[str]:
    host, port = redis_address(url)
    return subprocess.run(
        ["redis-cli", "-h", host, "-p", str(port), *args], capture_output=True, text=True, timeout=timeout
    )


def redis_is_up(url: str | None = None) -> bool:
    try:
        return redis_cli("ping", url=url, timeout=2).stdout.strip() == "PONG"
    except subprocess.TimeoutExpired:
        return False


def stop_redis(url: str | None = None, timeout: float = 10) -> None:
    """Shut the server down without saving (its data is gone, as after a crash of a cache-only Redis)."""
    if _shared_redis(url):
        _require_exclusive("Redis")
    redis_cli("shutdown", "nosave", url=url)
    deadline = time.monotonic() + timeout
    while redis_is_up(url):
        assert time.monotonic() < deadline, "Redis did not shut down"
        time.sleep(0.1)


def start_redis(url: str | None = None, timeout: float = 10) -> None:
    """Start the server again with bin/test-services' flags (a no-op if it already answers)."""
    if redis_is_up(url):
        return
    host, port = redis_address(url)
    subprocess.run(
        ["redis-server", "--bind", host, "--port", str(port), "--daemonize", "yes", "--save", "", "--appendonly",
         "no", "--logfile", f"/tmp/panel-test-redis-{port}.log"],
        check=True, timeout=timeout,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not redis_is_up(url):
        assert time.monotonic() < deadline, "Redis did not start again"
        time.sleep(0.1)


def restart_redis(url: str | None = None, down_for: float = 1.0) -> None:
    """Stop the Redis server at ``url``, keep it down for ``down_for`` seconds, start it again."""
    stop_redis(url)
    try:
        time.sleep(down_for)
    finally:
        start_redis(url)


def _postgres_port() -> int:
    return int(settings.DATABASES["default"].get("PORT") or 5432)


def _postgres_cluster() -> list[str]:
    """Version and name of the cluster serving the test database (bin/test-services: one per copy, by port)."""
    port = _postgres_port()
    listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True, timeout=30).stdout
    for line in listing.splitlines():
        version, name, cluster_port, *_ = line.split()
        if int(cluster_port) == port:
            return [version, name]
    raise AssertionError(f"no PostgreSQL cluster listens on port {port}: {listing!r}")


def stop_postgres() -> None:
    """Stop the test PostgreSQL server (every open connection breaks, as in a restart or a failover)."""
    _require_exclusive("PostgreSQL")
    subprocess.run(["pg_ctlcluster", *_postgres_cluster(), "stop", "-m", "fast"], check=True, timeout=60)


def start_postgres(timeout: float = 60) -> None:
    """Start it again and wait until it accepts connections."""
    subprocess.run(["pg_ctlcluster", *_postgres_cluster(), "start"], check=True, timeout=timeout)
    deadline = time.monotonic() + timeout
    ready = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(_postgres_port())]
    while subprocess.run(ready, timeout=10).returncode != 0:
        assert time.monotonic() < deadline, "PostgreSQL did not start again"
        time.sleep(0.2)
