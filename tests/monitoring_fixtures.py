"""Running environments for monitoring tests, without a panel deploy (a pytest plugin, loaded by conftest.py).

* ``running_env`` (function): a ``RunningEnv`` on ``lab1`` (the test holds the lab lock through ``lab1``): a compose
  project of the Odoo stand-in (``odoo``) and the lab's PostgreSQL image (``db``), started with
  ``docker compose up -d`` on first use and kept running for the rest of the session (taken down at its end).
  Before each test it is made healthy again (Odoo running and answering ``/web/health``, port 8072 open, the crons
  as the stand-in creates them, no ``queue_job`` table), and fresh rows point at it: ``server`` (``lab1`` added as
  a person would, in organization ``orgs["a"]``), ``project`` (organization ``orgs["a1"]``, Odoo 16.0) and
  ``environment`` (``prod``, production, ``compose_project`` = the running project). Uses the ``orgs`` and
  ``users`` fixtures (alice owns A), and ``db``: request ``transactional_db`` too when a worker must see the rows.
* ``running_env2`` (function): the same on ``lab2`` (its own project and Server row, same organizations).

``RunningEnv`` (stable interface, used by the incidents, logs and dashboard tests):

* ``host`` (``LabHost``), ``server``, ``project``, ``environment``, ``compose_project``, ``database`` ("prod");
* ``container(service)``: the container name of ``odoo`` or ``db``;
* ``stop_odoo()`` / ``start_odoo()``: stop the odoo container (``docker compose stop``) / start it and wait until
  ``/web/health`` answers;
* ``break_websocket()`` / ``heal_websocket()``: port 8072 stops / starts listening while 8069 keeps answering
  (the stand-in's fault file, see tests/lab/images/odoo/standin/odoo_standin/cli.py); both wait for the effect;
* ``sql(query)``: run SQL in the environment's database (psql in the db container, as the superuser ``odoo``) and
  return its unaligned, tuples-only output (``|`` between columns);
* ``print_line(service, text)``: write one line to the container's stdout (what ``docker logs`` shows);
* ``psql_session(sql)``: a ``subprocess.Popen`` of psql in the db that ran ``sql`` and stays connected (holding
  its locks or transaction) until the caller kills it;
* ``install_queue_job()``: give the database the ``queue_job`` table (and module row) that OCA's queue_job
  creates, so the queue_job check has something to read;
* ``odoo_health()``: True when ``/web/health`` answers ``pass`` from inside the odoo container.

The containers carry the label ``panel-test.monitoring-owner=<pid>``; a session removes leftovers of sessions that
died without taking theirs down.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from panel.inventory.models import Environment, Project, Server
from tests.lab.lab import POSTGRES_IMAGE, Lab, LabHost, docker_cli
from tests.lab_helpers import add_lab_server

ODOO_IMAGE = "ghcr.io/tecnativa/doodba:16.0-onbuild"
OWNER_LABEL = "panel-test.monitoring-owner"
DATABASE = "prod"
DB_USER = "odoo"
FAULT_FILE = "/tmp/odoo-standin/8072.off"

# The stand-in image is Doodba's onbuild stage: its entrypoint and user are set by the ONBUILD steps of a project's
# build, so a project that runs it as is names the entrypoint itself. ``-i base`` initialises the database once
# (a no-op on the next starts), then the server runs on 8069 and 8072.
COMPOSE_TEMPLATE = """\
services:
  odoo:
    image: {odoo_image}
    entrypoint: ["/opt/odoo/common/entrypoint"]
    command: ["odoo", "-i", "base"]
    environment:
      PGHOST: db
      PGUSER: {user}
      PGPASSWORD: monitoring-lab
      PGDATABASE: {database}
      PROXY_MODE: "true"
    labels:
      {owner_label}: "{owner}"
    depends_on: [db]
    restart: unless-stopped
  db:
    image: {postgres_image}
    environment:
      POSTGRES_USER: {user}
      POSTGRES_PASSWORD: monitoring-lab
      POSTGRES_DB: {database}
    labels:
      {owner_label}: "{owner}"
    restart: unless-stopped
"""

RESET_SQL = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
    WHERE application_name = 'psql' AND pid <> pg_backend_pid() AND datname = current_database();
UPDATE ir_cron SET active = true, nextcall = (now() AT TIME ZONE 'UTC') + interval '1 day', lastcall = NULL,
    failure_count = 0, first_failure_date = NULL;
DROP TABLE IF EXISTS queue_job;
DELETE FROM ir_module_module WHERE name = 'queue_job';
"""

QUEUE_JOB_SQL = """
CREATE TABLE IF NOT EXISTS queue_job (
    id serial PRIMARY KEY, uuid varchar NOT NULL UNIQUE, name varchar, func_string varchar, state varchar NOT NULL,
    channel varchar, priority integer, date_created timestamp, date_enqueued timestamp, date_started timestamp,
    date_done timestamp, eta timestamp, exc_info text, retry integer DEFAULT 0, max_retries integer);
INSERT INTO ir_module_module (name, state, latest_version) VALUES ('queue_job', 'installed', '16.0.2.6.0')
    ON CONFLICT (name) DO UPDATE SET state = 'installed';
"""


class MonitoringLabError(AssertionError):
    """The running environment did not reach the state a helper waits for."""


def _wait(predicate: Any, what: str, timeout: float = 60.0, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise MonitoringLabError(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)


@dataclass
class ComposeStack:
    """One compose project of the stand-in on one lab host, started once per session."""

    host: LabHost
    name: str
    directory: Path
    started: bool = False

    @property
    def compose_file(self) -> Path:
        return self.directory / "docker-compose.yaml"

    def compose(self, *argv: str, timeout: float = 300, check: bool = True) -> Any:
        result = self.host.docker("compose", "-p", self.name, "-f", str(self.compose_file), *argv, timeout=timeout)
        if check and result.returncode != 0:
            raise MonitoringLabError(f"docker compose {' '.join(argv)} on {self.host.name}: {result.stderr[-2000:]}")
        return result

    def container(self, service: str) -> str:
        return f"{self.name}-{service}-1"

    def exec(self, service: str, *argv: str, input: str | None = None, timeout: float = 60) -> Any:
        """``docker exec`` in the service's container (the local CLI against the host's daemon, not over SSH)."""
        return subprocess.run(
            [docker_cli(), "exec", *(["-i"] if input is not None else []), self.container(service), *argv],
            env={**os.environ, "DOCKER_HOST": self.host.docker_host},
            text=True, capture_output=True, timeout=timeout, input=input,
            stdin=subprocess.DEVNULL if input is None else None,
        )  # fmt: skip

    def write_compose_file(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        values = {"odoo_image": ODOO_IMAGE, "postgres_image": POSTGRES_IMAGE, "user": DB_USER, "database": DATABASE}
        self.compose_file.write_text(COMPOSE_TEMPLATE.format(**values, owner_label=OWNER_LABEL, owner=os.getpid()))

    def odoo_health(self) -> bool:
        result = self.exec("odoo", "curl", "-fsS", "--max-time", "3", "http://localhost:8069/web/health", timeout=20)
        return result.returncode == 0 and '"pass"' in result.stdout

    def websocket_listening(self) -> bool:
        result = self.exec(
            "odoo", "curl", "-sS", "--max-time", "3", "-o", "/dev/null", "http://localhost:8072/websocket"
        )
        return result.returncode == 0

    def states(self) -> dict[str, str]:
        result = self.compose("ps", "--all", "--format", "json", check=False)
        states: dict[str, str] = {}
        for line in result.stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                row = json.loads(line)
                states[row.get("Service", "?")] = row.get("State", "?")
        return states

    def ensure_healthy(self) -> None:
        """Up (once, or again after a fault test stopped a container), healthy, 8072 open, data as created."""
        if not self.started:
            self.write_compose_file()
            self.started = True
        states = self.states()
        for service, state in states.items():
            if state == "paused":
                self.host.docker("unpause", self.container(service))
        if states.get("odoo") not in ("running", "paused") or states.get("db") not in ("running", "paused"):
            self.compose("up", "-d")
        _wait(self.odoo_health, f"/web/health of {self.name} on {self.host.name}", timeout=90)
        self.exec("odoo", "rm", "-f", FAULT_FILE)
        _wait(self.websocket_listening, f"port 8072 of {self.name} listening", timeout=10)
        result = self.sql(RESET_SQL)
        if result.returncode != 0:
            raise MonitoringLabError(f"resetting {self.name}'s database: {result.stderr}")

    def sql(self, query: str) -> Any:
        return self.exec(
            "db", "psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-U", DB_USER, "-d", DATABASE, input=query
        )

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", timeout=300, check=False)


@dataclass
class RunningEnv:
    """A running environment and its panel rows (see the module docstring)."""

    stack: ComposeStack
    server: Server
    project: Project
    environment: Environment
    database: str = DATABASE
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def host(self) -> LabHost:
        return self.stack.host

    @property
    def compose_project(self) -> str:
        return self.stack.name

    def container(self, service: str) -> str:
        """The container name of ``service`` (``odoo`` or ``db``)."""
        return self.stack.container(service)

    def stop_odoo(self) -> None:
        """Stop the odoo container (as ``docker compose stop odoo``)."""
        self.stack.compose("stop", "odoo")

    def start_odoo(self) -> None:
        """Start the odoo container and wait until ``/web/health`` answers."""
        self.stack.compose("start", "odoo")
        _wait(self.stack.odoo_health, f"/web/health of {self.compose_project}", timeout=60)

    def break_websocket(self) -> None:
        """Port 8072 stops listening; 8069 keeps answering."""
        self.stack.exec("odoo", "sh", "-c", f"mkdir -p {os.path.dirname(FAULT_FILE)} && touch {FAULT_FILE}")
        _wait(lambda: not self.stack.websocket_listening(), "port 8072 closing", timeout=10)

    def heal_websocket(self) -> None:
        """Port 8072 listens again."""
        self.stack.exec("odoo", "rm", "-f", FAULT_FILE)
        _wait(self.stack.websocket_listening, "port 8072 opening", timeout=10)

    def sql(self, query: str) -> str:
        """Run SQL in the environment's database; its tuples-only output (fails the test on an SQL error)."""
        result = self.stack.sql(query)
        if result.returncode != 0:
            raise MonitoringLabError(f"SQL failed: {result.stderr.strip()}")
        return str(result.stdout).strip()

    def print_line(self, service: str, text: str) -> None:
        """Write ``text`` as one line of the container's stdout (its ``docker logs``)."""
        result = self.stack.exec(service, "sh", "-c", 'printf "%s\\n" "$1" >/proc/1/fd/1', "sh", text)
        if result.returncode != 0:
            raise MonitoringLabError(f"printing into {self.container(service)}: {result.stderr.strip()}")

    def psql_session(self, sql: str) -> subprocess.Popen[str]:
        """A psql session in the db that runs ``sql`` and stays connected until the caller kills it (the next
        test's reset ends what is left of it in the database)."""
        process = subprocess.Popen(
            [docker_cli(), "exec", "-i", self.container("db"), "psql", "-X", "-q", "-U", DB_USER, "-d", DATABASE],
            env={**os.environ, "DOCKER_HOST": self.host.docker_host},
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert process.stdin is not None
        process.stdin.write(sql + "\n")
        process.stdin.flush()
        return process

    def install_queue_job(self) -> None:
        """Create what OCA's queue_job module would (its table and an installed module row)."""
        self.sql(QUEUE_JOB_SQL)

    def odoo_health(self) -> bool:
        """``/web/health`` answers ``pass`` (asked inside the odoo container)."""
        return self.stack.odoo_health()


def _remove_leftovers(lab: Lab) -> None:
    """Take down stand-in projects of sessions that are gone (their owner pid no longer runs)."""
    for host in lab.hosts.values():
        result = host.docker(
            "ps", "-a", "--filter", f"label={OWNER_LABEL}", "--format",
            f'{{{{.Label "{OWNER_LABEL}"}}}} {{{{.Label "com.docker.compose.project"}}}}', check=False,
        )  # fmt: skip
        for line in result.stdout.splitlines():
            owner, _, project = line.partition(" ")
            if owner.isdigit() and int(owner) != os.getpid() and not Path(f"/proc/{owner}").exists() and project:
                host.docker("compose", "-p", project, "down", "-v", "--remove-orphans", timeout=300, check=False)


@pytest.fixture(scope="session")
def _monitoring_stacks(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ComposeStack]]:
    _remove_leftovers(lab)
    root = tmp_path_factory.mktemp("monitoring-stacks")
    stacks = {
        name: ComposeStack(host=lab.hosts[name], name=f"mon{os.getpid()}{suffix}-16-0-prod", directory=root / name)
        for name, suffix in (("lab1", "a"), ("lab2", "b"))
    }
    yield stacks
    for stack in stacks.values():
        if stack.started:
            stack.down()


def _running_env(stack: ComposeStack, orgs: dict[str, Any], users: dict[str, Any], slug: str) -> RunningEnv:
    stack.ensure_healthy()
    server = add_lab_server(orgs["a"], users["alice"], stack.host, name=f"{stack.host.name}-monitored")
    project = Project.objects.create(
        organization=orgs["a1"], name=slug.title(), slug=slug, git_url="/srv/git/monitored.git", odoo_version="16.0"
    )
    environment = Environment.objects.create(
        project=project, server=server, name="prod", compose_files=["prod.yaml"], compose_project=stack.name
    )
    return RunningEnv(stack=stack, server=server, project=project, environment=environment)


@pytest.fixture
def running_env(
    lab1: LabHost, _monitoring_stacks: dict[str, ComposeStack], orgs: dict[str, Any], users: dict[str, Any], db: Any
) -> RunningEnv:
    """A running stand-in environment on lab1 and its Server/Project/Environment rows (see the module docstring)."""
    return _running_env(_monitoring_stacks["lab1"], orgs, users, "monitored")


@pytest.fixture
def running_env2(
    lab2: LabHost, _monitoring_stacks: dict[str, ComposeStack], orgs: dict[str, Any], users: dict[str, Any], db: Any
) -> RunningEnv:
    """The same on lab2 (its own server row and project)."""
    return _running_env(_monitoring_stacks["lab2"], orgs, users, "monitored-two")
