"""Shared fixtures: users at different access levels, and the real processes (ASGI server, Celery workers).

Processes run against pytest-django's test database, so tests that use them need ``transactional_db``
(data must be committed to be seen by another process).
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

pytest_plugins = ["tests.lab.fixtures", "tests.deploy_fixtures", "tests.backup_fixtures", "tests.monitoring_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple 42"

# Fixtures that hold the lab's hosts (tests.lab.fixtures): a test that uses one is a lab test.
LAB_FIXTURES = {"lab1", "lab2", "lab_hosts_held", "lab_sample"}


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Mark every test that holds the lab ``lab``, and split the suite in two groups for pytest-xdist's
    ``--dist loadgroup`` (bin/run-tests): the lab's tests wait for each other anyway (one lab, one lock), so they run
    in one process while the rest runs in another. A wrapper, so the marks are there before xdist reads them in its
    own ``pytest_collection_modifyitems``; afterwards, in a worker, every grouped test's id must carry its group, or
    xdist schedules the tests as if there were no groups (it did with pytest 9.2: both processes took lab tests and
    waited for each other on the lab's lock), and the run fails instead."""
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)
            item.add_marker(pytest.mark.xdist_group("lab"))
        else:
            item.add_marker(pytest.mark.xdist_group("rest"))
    yield
    if config.getoption("loadgroup", False):
        ignored = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if ignored:
            message = (
                f"pytest-xdist ignored the test groups ({ignored[0]} has no @group): the lab's tests would run in "
                "both processes and wait for each other; check the pytest and pytest-xdist versions "
                "(requirements-dev.txt)"
            )
            print(message, file=sys.stderr)  # xdist reports a worker's collection error only as a crash
            raise pytest.UsageError(message)


@contextmanager
def shared_services(exclusive: bool) -> Iterator[None]:
    """Hold the shared PostgreSQL and Redis servers for a test, across the processes of one pytest-xdist run:
    shared by ordinary tests, exclusive for those that stop a server (``@pytest.mark.exclusive``), so a fault
    test never breaks a test of the other process. Writers queue at a gate first, so readers cannot starve them.
    Outside xdist there is nobody to share with, nor when each process has its own copy of the servers
    (``PANEL_TEST_SERVER_COPIES``, see tests/settings.py): then a fault test stops only its own process's servers."""
    from tests.services import own_servers

    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run or own_servers():
        yield
        return
    base = Path(tempfile.gettempdir()) / f"doodba-panel-tests-{run}"
    with open(f"{base}.gate", "a+") as gate, open(f"{base}.lock", "a+") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def _shared_services(request: pytest.FixtureRequest) -> Iterator[None]:
    """See ``shared_services``; taken before any function fixture (so always before the lab's lock)."""
    from tests import services

    exclusive = request.node.get_closest_marker("exclusive") is not None
    with shared_services(exclusive):
        services.EXCLUSIVE["held"] = exclusive
        try:
            yield
        finally:
            services.EXCLUSIVE["held"] = False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_env() -> dict[str, str]:
    """Environment of child processes: the test settings and the test database."""
    database = settings.DATABASES["default"]
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["DATABASE_URL"] = (
        f"postgres://{database['USER']}:{database['PASSWORD']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    )
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    return env


@dataclass
class ManagedProcess:
    """A child process in its own process group, with its output in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None  # variables on top of process_env()

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, env=process_env() | (self.env or {}), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        if self.process:
            # Children (prefork pool, DB connections) must be gone before the test database is dropped.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_for_port(port: int, proc: ManagedProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process and proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not listen on {port}:\n{proc.log_text()[-3000:]}")


def wait_for_log(proc: ManagedProcess, marker: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker in proc.log_text():
            return
        if proc.process and proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_text()[-3000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} never logged {marker!r}:\n{proc.log_text()[-3000:]}")


@pytest.fixture(scope="session")
def process_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("process-logs")


@pytest.fixture(scope="session")
def live_server_url(django_db_setup: Any, process_logs: Path) -> Iterator[str]:
    """The panel served by uvicorn (HTTP + websockets) on a loopback port, as in production."""
    port = free_port()
    proc = ManagedProcess(
        "uvicorn",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "panel.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            # As docker-compose.yml runs it: uvicorn trusts the same proxies as Django (loopback in the tests).
            "--proxy-headers",
            "--forwarded-allow-ips",
            ",".join(settings.PANEL_TRUSTED_PROXIES),
            "--log-level",
            "warning",
        ],
        process_logs / "uvicorn.log",
    )
    proc.start()
    wait_for_port(port, proc)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


def celery_worker(name: str, queues: str, log_dir: Path, *extra: str) -> ManagedProcess:
    return ManagedProcess(
        name,
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "panel",
            "worker",
            "-Q",
            queues,
            "-n",
            f"{name}@%h",
            "--concurrency",
            "2",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "info",
            *extra,
        ],
        log_dir / f"{name}.log",
    )


@pytest.fixture(scope="session")
def monitoring_worker(django_db_setup: Any, process_logs: Path) -> Iterator[ManagedProcess]:
    """The monitoring-queue worker with the beat scheduler embedded (runs the job reaper)."""
    proc = celery_worker("monitoring", "monitoring", process_logs, "-B", "-s", str(process_logs / "beat-schedule"))
    proc.start()
    wait_for_log(proc, "ready.")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def _jobs_worker_session(django_db_setup: Any, process_logs: Path) -> Iterator[ManagedProcess]:
    proc = celery_worker("jobs", "jobs", process_logs)
    proc.start()
    wait_for_log(proc, "ready.")
    yield proc
    proc.stop()


@pytest.fixture
def jobs_worker(_jobs_worker_session: ManagedProcess, transactional_db: Any) -> ManagedProcess:
    """A real Celery worker on the jobs queue; restarted if an earlier test killed it."""
    proc = _jobs_worker_session
    if proc.process is None or proc.process.poll() is not None:
        proc.start()
        wait_for_log(proc, "ready.")
    return proc


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (no downloaded browser, no outside traffic)."""
    from django.db import connections
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            yield browser
        finally:
            browser.close()
            # ORM calls made while Playwright's loop ran used their own connections: close them, or the test
            # database cannot be dropped at the end of the session.
            connections.close_all()


@pytest.fixture
def make_user(django_user_model: Any) -> Any:
    """Create a user with a role in an organization."""
    from panel.accounts.models import Membership

    def make(username: str, organization: Any = None, role: str = "owner") -> Any:
        user = django_user_model.objects.create_user(username=username, password=PASSWORD)
        if organization is not None:
            Membership.objects.create(user=user, organization=organization, role=role)
        return user

    return make


@pytest.fixture
def orgs(db: Any) -> dict[str, Any]:
    """Provider org A (hosting company), customer org A1 managed by A, unrelated org B."""
    from panel.accounts.models import Organization

    a = Organization.objects.create(name="Alpha Hosting", slug="alpha")
    a1 = Organization.objects.create(name="Alpha Customer", slug="alpha-customer", managed_by=a)
    b = Organization.objects.create(name="Bravo", slug="bravo")
    return {"a": a, "a1": a1, "b": b}


@pytest.fixture
def users(orgs: dict[str, Any], make_user: Any) -> dict[str, Any]:
    """alice owns A, olga operates A, victor views A, carol is a customer of A1, bob owns B."""
    return {
        "alice": make_user("alice", orgs["a"], "owner"),
        "olga": make_user("olga", orgs["a"], "operator"),
        "victor": make_user("victor", orgs["a"], "viewer"),
        "carol": make_user("carol", orgs["a1"], "customer"),
        "bob": make_user("bob", orgs["b"], "owner"),
    }


@pytest.fixture
def inventory(orgs: dict[str, Any], users: dict[str, Any]) -> dict[str, Any]:
    """A server of A (with a pinned, made-up host key), a project of A1 with an environment; the same for B."""
    from panel.inventory.models import Environment, Project, Server
    from panel.remote.ssh import generate_key_pair

    def server(org: Any, name: str) -> Any:
        private, public = generate_key_pair(name)
        return Server.objects.create(
            organization=org,
            name=name,
            host="127.0.0.99",
            port=22,
            username="deploy",
            private_key=private,
            public_key=public,
            host_key_type="ssh-ed25519",
            host_key_base64="AAAAC3NzaC1lZDI1NTE5AAAAIBXz",
            host_key_fingerprint="SHA256:test",
        )

    def project(org: Any, slug: str) -> Any:
        return Project.objects.create(organization=org, name=slug.title(), slug=slug, git_url="/srv/git/x.git")

    sa, sb = server(orgs["a"], "alpha-1"), server(orgs["b"], "bravo-1")
    pa, pb = project(orgs["a1"], "shop"), project(orgs["b"], "erp")
    ea = Environment.objects.create(
        project=pa, server=sa, name="prod", compose_files=["prod.yaml"], compose_project="shop-16-0-prod"
    )
    eb = Environment.objects.create(
        project=pb, server=sb, name="prod", compose_files=["prod.yaml"], compose_project="erp-16-0-prod"
    )
    return {"server_a": sa, "server_b": sb, "project_a": pa, "project_b": pb, "env_a": ea, "env_b": eb}
