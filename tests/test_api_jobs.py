"""Job actions through the API: validation is queued once per server (202, then 409), log lines page correctly,
cancel stops a queued job. No worker runs here, so queued jobs stay queued."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from panel.accounts.models import AuditEvent
from panel.jobs.choices import JobKind, JobStatus
from panel.jobs.models import Job
from panel.jobs.services import append_lines

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(users: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(users["alice"])
    return client


@pytest.fixture
def pinned_server(inventory: Any) -> Any:
    server = inventory["server_a"]
    server.host_key_confirmed_at = timezone.now()
    server.save()
    return server


def test_it_queues_one_validation_per_server(alice: APIClient, pinned_server: Any) -> None:
    url = f"/api/v1/servers/{pinned_server.pk}/validate/"
    first = alice.post(url)
    assert first.status_code == 202, first.content
    job = first.json()["job"]
    assert job["kind"] == "validate_server"
    assert job["status"] == "queued"
    assert job["server"] == pinned_server.pk
    second = alice.post(url)
    assert second.status_code == 409, second.content
    assert second.json()["job"] == job["id"]
    assert "already running" in second.json()["detail"]
    assert Job.objects.filter(server=pinned_server).count() == 1
    assert AuditEvent.objects.filter(action="server.validate", object_id=str(pinned_server.pk)).count() == 1


def test_it_refuses_to_validate_before_the_host_key_is_confirmed(alice: APIClient, inventory: Any) -> None:
    response = alice.post(f"/api/v1/servers/{inventory['server_a'].pk}/validate/")
    assert response.status_code == 409
    assert "host key" in response.json()["detail"]
    assert not Job.objects.exists()


def test_it_confirms_the_host_key_only_with_the_right_fingerprint(alice: APIClient, inventory: Any) -> None:
    server = inventory["server_a"]
    url = f"/api/v1/servers/{server.pk}/confirm-host-key/"
    wrong = alice.post(url, {"fingerprint": "SHA256:other"}, format="json")
    assert wrong.status_code == 400
    assert "fingerprint" in wrong.json()
    server.refresh_from_db()
    assert server.host_key_confirmed_at is None
    right = alice.post(url, {"fingerprint": "SHA256:test"}, format="json")
    assert right.status_code == 200, right.content
    assert right.json()["status"] == "unvalidated"
    assert right.json()["host_key_confirmed_at"]


def test_it_pages_log_lines(users: Any, alice: APIClient, inventory: Any) -> None:
    job = Job.objects.create(kind=JobKind.VALIDATE_SERVER, organization=inventory["server_a"].organization)
    append_lines(job.pk, [("out", f"line {n}") for n in range(1, 6)])
    url = f"/api/v1/jobs/{job.pk}/lines/"
    page = alice.get(url, {"limit": 2}).json()
    assert [line["seq"] for line in page["lines"]] == [1, 2]
    assert set(page["lines"][0]) == {"seq", "ts", "stream", "text"}
    assert page["lines"][0]["text"] == "line 1"
    assert page["lines"][0]["stream"] == "out"
    assert page == page | {"last_seq": 2, "status": "queued", "more": True}
    page = alice.get(url, {"after": 2, "limit": 10}).json()
    assert [line["seq"] for line in page["lines"]] == [3, 4, 5]
    assert page["last_seq"] == 5 and page["more"] is False
    page = alice.get(url, {"after": 5}).json()
    assert page["lines"] == [] and page["last_seq"] == 5 and page["more"] is False
    assert alice.get(url, {"after": -1}).status_code == 400
    assert alice.get(url, {"limit": "x"}).status_code == 400


def test_it_works_for_the_html_job_page_over_a_session(users: Any, inventory: Any) -> None:
    from tests.conftest import PASSWORD

    job = Job.objects.create(kind=JobKind.VALIDATE_SERVER, organization=inventory["server_a"].organization)
    append_lines(job.pk, [("panel", "hello")])
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username="victor", password=PASSWORD)
    response = client.get(f"/api/v1/jobs/{job.pk}/lines/?after=0")
    assert response.status_code == 200
    assert response.json()["lines"][0]["text"] == "hello"


def test_it_cancels_a_queued_job(alice: APIClient, inventory: Any) -> None:
    job = Job.objects.create(kind=JobKind.VALIDATE_SERVER, organization=inventory["server_a"].organization)
    response = alice.post(f"/api/v1/jobs/{job.pk}/cancel/")
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "canceled"
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELED
    assert alice.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 409
    assert AuditEvent.objects.filter(action="job.cancel_requested", object_id=str(job.pk)).count() == 1


def test_it_refuses_to_delete_a_server_with_an_active_job(alice: APIClient, pinned_server: Any) -> None:
    assert alice.post(f"/api/v1/servers/{pinned_server.pk}/validate/").status_code == 202
    response = alice.delete(f"/api/v1/servers/{pinned_server.pk}/")
    assert response.status_code == 409
    assert "queued or running" in response.json()["detail"]
    Job.objects.update(status=JobStatus.SUCCEEDED)
    response = alice.delete(f"/api/v1/servers/{pinned_server.pk}/")
    assert response.status_code == 409  # its environment still uses it
    assert "still used by" in response.json()["detail"]
    environment = pinned_server.environments.get()
    assert alice.delete(f"/api/v1/environments/{environment.pk}/?choice=leave_running").status_code == 200
    assert alice.delete(f"/api/v1/servers/{pinned_server.pk}/").status_code == 204
    assert AuditEvent.objects.filter(action="server.deleted").count() == 1
