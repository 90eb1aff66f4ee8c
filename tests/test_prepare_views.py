"""Starting *Prepare server*: the API action and the server page's buttons (no worker: jobs stay queued).

Who may, what the body may say, one job per server shared with validation (lock ``server:<id>``). What the job
does on a host is in ``test_prepare_lab.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from panel.inventory.services import start_validation
from panel.jobs.models import Job

pytestmark = pytest.mark.django_db


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def pinned_server(inventory: Any) -> Any:
    server = inventory["server_a"]
    server.host_key_confirmed_at = timezone.now()
    server.save()
    return server


def test_it_queues_a_prepare_job_for_owners_and_operators_only(users: Any, pinned_server: Any) -> None:
    url = f"/api/v1/servers/{pinned_server.pk}/prepare/"
    assert api(users["victor"]).post(url, {}, format="json").status_code in (403, 404)  # a viewer
    assert api(users["bob"]).post(url, {}, format="json").status_code == 404  # another organization
    assert api(users["alice"]).post(url, {"install": "maybe"}, format="json").status_code == 400
    assert not Job.objects.exists()
    response = api(users["olga"]).post(url, {"install": True}, format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job"]["id"])
    assert (job.kind, job.status, job.server_id) == ("prepare_server", "queued", pinned_server.pk)
    assert job.params == {"server_id": pinned_server.pk, "install": True}
    busy = api(users["alice"]).post(url, {}, format="json")
    assert busy.status_code == 409 and busy.json()["job"] == job.pk


def test_it_waits_for_a_validation_of_the_same_server(users: Any, pinned_server: Any) -> None:
    validation = start_validation(server=pinned_server, actor=users["alice"])
    busy = api(users["alice"]).post(f"/api/v1/servers/{pinned_server.pk}/prepare/", {}, format="json")
    assert busy.status_code == 409 and busy.json()["job"] == validation.pk


def test_it_refuses_before_the_host_key_is_confirmed(users: Any, inventory: Any) -> None:
    response = api(users["alice"]).post(f"/api/v1/servers/{inventory['server_a'].pk}/prepare/", {}, format="json")
    assert response.status_code == 409 and "host key" in response.json()["detail"]


def test_it_starts_from_the_server_page(users: Any, pinned_server: Any) -> None:
    browser = Client()
    browser.force_login(users["alice"])
    page = browser.get(f"/servers/{pinned_server.pk}/").content.decode()
    assert "Prepare for Doodba" in page and "Prepare and install missing packages" in page
    response = browser.post(f"/servers/{pinned_server.pk}/prepare/")
    job = Job.objects.get(kind="prepare_server")
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.params["install"] is False
    again = browser.post(f"/servers/{pinned_server.pk}/prepare/", {"install": "1"}, follow=True)
    assert "already" in again.content.decode()  # the busy message, no second job
    assert Job.objects.filter(kind="prepare_server").count() == 1
