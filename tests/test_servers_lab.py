"""Validating servers against real lab hosts (sshd + dockerd), through a real Celery worker."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.conf import settings

from panel.accounts.models import AuditEvent
from panel.inventory.services import start_validation
from panel.jobs.models import JobLogLine
from tests.lab_helpers import add_lab_server, wait_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


def validate(server: Any, actor: Any, timeout: float = 60) -> Any:
    job = start_validation(server=server, actor=actor)
    job = wait_job(job, timeout=timeout)
    server.refresh_from_db()
    return job


def log_text(job: Any) -> str:
    return "\n".join(JobLogLine.objects.filter(job=job).values_list("text", flat=True))


def test_it_validates_a_lab_host_and_records_its_versions(jobs_worker, lab1, users, orgs) -> None:
    server = add_lab_server(orgs["a"], users["alice"], lab1)
    job = validate(server, users["alice"])
    assert job.status == "succeeded", job.reason
    expected_docker = lab1.docker("version", "--format", "{{.Server.Version}}", check=True).stdout.strip()
    expected_compose = lab1.ssh("docker", "compose", "version", "--short", check=True).stdout.strip()
    assert server.status == "ok"
    assert server.docker_version == expected_docker
    assert server.compose_version == expected_compose
    assert server.docker_access is True
    assert server.architecture and server.os_name
    assert server.disk_free_bytes and server.disk_free_bytes > 0
    assert "through the pinned SSH connection" in log_text(job)
    assert [step["name"] for step in job.result["steps"]] == [
        "Connect over SSH",
        "System",
        "Docker",
        "Docker Compose",
        "Free disk",
    ]


def test_it_refuses_a_host_whose_key_changed_before_running_anything(jobs_worker, lab1, users, orgs) -> None:
    server = add_lab_server(orgs["a"], users["alice"], lab1)
    pinned = server.host_key_fingerprint
    new_fingerprint = lab1.regenerate_host_key()
    log_offset = len(lab1.sshd_log_text())
    job = validate(server, users["alice"])
    assert job.status == "failed"
    assert "Host key mismatch" in job.reason
    assert new_fingerprint in job.reason and pinned in job.reason
    after = lab1.sshd_log_text()[log_offset:]
    assert "Accepted publickey" not in after, after
    assert "Starting session" not in after, after
    event = AuditEvent.objects.get(action="server.host_key_mismatch")
    assert event.is_security and event.detail["presented"] == new_fingerprint
    assert server.status == "problem"
    # The pinned key stays what the person confirmed.
    assert server.host_key_fingerprint == pinned


def test_it_fails_within_a_bounded_time_when_the_host_stops_answering(jobs_worker, lab1, users, orgs) -> None:
    server = add_lab_server(orgs["a"], users["alice"], lab1)
    lab1.pause_sshd()
    started = time.monotonic()
    bound = 2 * (settings.SSH_CONNECT_TIMEOUT + settings.SSH_BANNER_TIMEOUT) + 10
    job = validate(server, users["alice"], timeout=bound + 10)
    assert time.monotonic() - started <= bound
    assert job.status == "failed"
    assert "did not complete an SSH handshake" in job.reason
    assert "stopped answering" in job.reason


def test_it_says_when_sshd_is_down(jobs_worker, lab1, users, orgs) -> None:
    server = add_lab_server(orgs["a"], users["alice"], lab1)
    lab1.stop_sshd()
    job = validate(server, users["alice"])
    assert job.status == "failed"
    assert "refused the connection" in job.reason


def test_it_says_when_the_docker_daemon_is_not_running(jobs_worker, lab1, users, orgs) -> None:
    server = add_lab_server(orgs["a"], users["alice"], lab1)
    lab1.stop_dockerd()
    job = validate(server, users["alice"])
    assert job.status == "failed"
    assert "The Docker daemon is not running" in job.reason
    assert server.status == "problem" and "Docker daemon is not running" in server.status_message


def test_it_says_when_the_ssh_user_may_not_use_docker(jobs_worker, lab1, users, orgs) -> None:
    server = add_lab_server(orgs["a"], users["alice"], lab1, user=lab1.nodocker_username)
    job = validate(server, users["alice"])
    assert job.status == "failed"
    assert f"User {lab1.nodocker_username} may not use Docker" in job.reason
    assert "usermod -aG docker" in job.reason
    assert server.docker_access is False


def test_it_says_when_the_server_refuses_the_panels_key(jobs_worker, lab1, users, orgs) -> None:
    server = add_lab_server(orgs["a"], users["alice"], lab1)
    from panel.inventory.services import regenerate_server_key

    regenerate_server_key(server=server, actor=users["alice"])
    job = validate(server, users["alice"])
    assert job.status == "failed"
    assert "refused the panel's SSH key" in job.reason
