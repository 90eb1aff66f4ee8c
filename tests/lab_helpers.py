"""Helpers shared by the tests that onboard lab hosts into the panel."""

from __future__ import annotations

import time
from typing import Any

from panel.inventory.models import Server
from panel.inventory.services import confirm_host_key, create_server
from panel.jobs.models import Job
from panel.remote.ssh import Target
from tests.lab.lab import LabHost

TERMINAL = ("succeeded", "failed", "canceled", "interrupted")


def add_lab_server(organization: Any, actor: Any, host: LabHost, *, user: str | None = None, name: str = "") -> Server:
    """Register a lab host as a person would: read its key, compare the fingerprint, confirm it."""
    server = create_server(
        organization=organization,
        actor=actor,
        name=name or f"{host.name}-{user or 'deploy'}",
        host=host.address,
        port=host.port,
        username=user or host.username,
        private_key=host.private_key_pem,
    )
    assert server.host_key_fingerprint == host.host_key_fingerprint
    confirm_host_key(server=server, actor=actor, fingerprint=server.host_key_fingerprint)
    server.refresh_from_db()
    return server


def lab_target(host: LabHost, *, user: str | None = None) -> Target:
    """A remote-layer target for a lab host, pinned to its current host key."""
    return Target(
        label=host.name,
        host=host.address,
        port=host.port,
        username=user or host.username,
        private_key=host.private_key_pem,
        host_key_type=host.host_key_type,
        host_key_base64=host.host_key_base64,
    )


def wait_job(job: Job, timeout: float = 60, statuses: tuple[str, ...] = TERMINAL) -> Job:
    """Poll a job until it reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status in statuses:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job.pk} still {job.status} after {timeout}s")
