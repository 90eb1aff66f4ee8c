"""What the benchmarks share: percentiles, and a panel served by a real uvicorn in front of one container on lab1.

Import after the benchmark has set its environment and called ``django.setup()``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def percentile(values: list[float], pct: float) -> float:
    """The ``pct``-th percentile (0-100) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


@dataclass
class LabPanel:
    """A signed-in owner's view of one environment whose only container runs on lab1."""

    host: Any
    container: str
    container_id: str
    environment: Any
    client: Any
    headers: dict[str, str]
    port: int

    def socket_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/environments/{self.environment.pk}/{path}"


@contextmanager
def lab_panel(
    *,
    project: str,
    service: str,
    run_args: list[str],
    kind: str,
    uvicorn_env: dict[str, str] | None = None,
) -> Iterator[LabPanel]:
    """Hold the lab, start ``docker run -d <run_args>`` on lab1 labelled as ``service`` of compose project
    ``project``, create a fresh test database with an organization, its owner, lab1 and one ``kind`` environment of
    that project, and serve the panel on a free port; everything is removed afterwards."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from panel.accounts.models import Membership, Organization
    from panel.inventory.models import Environment, Project
    from tests.conftest import ManagedProcess, free_port, wait_for_port
    from tests.lab.lab import ensure_up, exclusive_use
    from tests.lab_helpers import add_lab_server

    host = ensure_up().hosts["lab1"]
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    database = connection.settings_dict
    server_proc: Any = None
    container = f"{project}-{service}-1"
    try:
        with exclusive_use():
            host.docker("rm", "-f", container)
            started = host.docker(
                "run", "-d", "--name", container, "--label", f"com.docker.compose.project={project}",
                "--label", f"com.docker.compose.service={service}", *run_args,
            )  # fmt: skip
            if started.returncode != 0:
                raise RuntimeError(started.stderr)
            organization = Organization.objects.create(name="Bench", slug="bench")
            user = get_user_model().objects.create_user("bench", password="bench-bench-bench-42")
            Membership.objects.create(user=user, organization=organization, role="owner")
            server = add_lab_server(organization, user, host, name="lab1-bench")
            bench_project = Project.objects.create(
                organization=organization, name="Bench", slug="bench", git_url="/srv/git/x.git", odoo_version="16.0"
            )
            name = {"production": "prod"}.get(kind, kind)
            environment = Environment.objects.create(
                project=bench_project, server=server, name=name, kind=kind, compose_files=[f"{name}.yaml"],
                compose_project=project,
            )  # fmt: skip
            port = free_port()
            url_db = (
                f"postgres://{database['USER']}:{database['PASSWORD']}@{database['HOST']}:{database['PORT']}/"
                f"{database['NAME']}"
            )
            server_proc = ManagedProcess(
                "uvicorn",
                [sys.executable, "-m", "uvicorn", "panel.asgi:application", "--host", "127.0.0.1", "--port",
                 str(port), "--log-level", "warning"],
                Path(f"/tmp/bench-{project}-uvicorn-{os.getpid()}.log"),
                env={"DATABASE_URL": url_db, "REDIS_URL": os.environ["REDIS_URL"], **(uvicorn_env or {})},
            )  # fmt: skip
            server_proc.start()
            wait_for_port(port, server_proc)
            client = Client()
            client.force_login(user)
            headers = {"Cookie": f"sessionid={client.cookies['sessionid'].value}", "Origin": f"http://127.0.0.1:{port}"}
            yield LabPanel(host, container, started.stdout.strip(), environment, client, headers, port)
    finally:
        if server_proc is not None:
            server_proc.stop()
        host.docker("rm", "-f", container)
        connection.creation.destroy_test_db(old_name, verbosity=0)
