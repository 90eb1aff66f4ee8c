"""Lifecycle requests without the lab: who may stop, start, restart and destroy, which input is refused (400, never
500), the typed confirmations, the states the page and API show, monitoring's view of an environment stopped on
purpose, and removing an environment from the panel (a choice is required and recorded)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from deployments.lifecycle import start_lifecycle
from monitoring import incidents
from monitoring.poller import stopped_on_purpose
from panel.accounts.models import AuditEvent
from panel.inventory.choices import EnvironmentState, Lifecycle
from panel.inventory.models import Environment
from panel.inventory.services import environment_state
from panel.jobs.choices import JobKind
from panel.jobs.models import Job
from panel.jobs.runner import JobFailed

pytestmark = pytest.mark.django_db


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def html(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def url(environment: Environment, action: str) -> str:
    return f"/api/v1/environments/{environment.pk}/{action}/"


@pytest.mark.parametrize("action", ["stop", "start", "restart", "destroy"])
@pytest.mark.parametrize("name", ["victor", "carol", "bob"])
def test_only_owners_and_operators_act(
    inventory: dict[str, Any], users: dict[str, Any], action: str, name: str
) -> None:
    """Viewers, customers and another organization's owner: 404 like an unknown id, and no job."""
    environment = inventory["env_a"]
    response = api(users[name]).post(url(environment, action), {"confirm": "prod"}, format="json")
    assert response.status_code in (403, 404), response.content
    assert not Job.objects.filter(environment=environment).exists()
    assert html(users[name]).post(f"/environments/{environment.pk}/{action}/", {"confirm": "prod"}).status_code == 404


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("stop", {"service": "../etc"}),
        ("stop", {"service": "odoo; rm -rf /"}),
        ("stop", {"service": ["odoo"]}),
        ("stop", {"service": "x" * 200}),
        ("stop", {}),  # production: the typed name is missing
        ("stop", {"confirm": "PROD"}),
        ("restart", {"service": "odoo", "confirm": "staging"}),
        ("destroy", {}),
        ("destroy", {"confirm": ""}),
        ("destroy", {"confirm": "prod", "volumes": "maybe"}),
        ("destroy", {"confirm": "nope", "volumes": True}),
        ("destroy", {"confirm": "prod", "backup": True}),  # no backup storage
    ],
)
def test_refused_input(inventory: dict[str, Any], users: dict[str, Any], action: str, body: dict[str, Any]) -> None:
    environment = inventory["env_a"]
    response = api(users["olga"]).post(url(environment, action), body, format="json")
    assert response.status_code == 400, response.content
    assert not Job.objects.filter(environment=environment).exists()


@pytest.mark.parametrize("path", ["/api/v1/environments/abc/stop/", "/api/v1/environments/99999999999999999999/stop/",
                                  "/api/v1/environments/0/destroy/"])  # fmt: skip
def test_odd_ids(users: dict[str, Any], path: str) -> None:
    assert api(users["alice"]).post(path, {}, format="json").status_code == 404


def test_start_queues_one_job_and_audits(inventory: dict[str, Any], users: dict[str, Any]) -> None:
    environment = inventory["env_a"]
    response = api(users["olga"]).post(url(environment, "start"), {"service": "odoo"}, format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job"]["id"])
    assert (
        job.kind == JobKind.START
        and job.params["service"] == "odoo"
        and job.lock_key == f"environment:{environment.pk}"
    )
    event = AuditEvent.objects.get(action="environment.start", object_id=str(environment.pk))
    assert event.detail == {"job": job.pk, "service": "odoo"}
    # The environment is held: a second action (or a deploy) waits for the first one: 409 names it.
    busy = api(users["alice"]).post(url(environment, "stop"), {"confirm": "prod"}, format="json")
    assert busy.status_code == 409 and busy.json()["job"] == job.pk
    state = environment_state(environment)
    assert state.code == EnvironmentState.CHANGING and state.label == "starting"
    assert api(users["alice"]).get(f"/api/v1/environments/{environment.pk}/").json()["state"] == "changing"
    assert incidents.suppression(environment) is not None


def test_staging_stop_needs_no_typed_name(inventory: dict[str, Any], users: dict[str, Any]) -> None:
    environment = inventory["env_a"]
    Environment.objects.filter(pk=environment.pk).update(kind="staging")
    environment.refresh_from_db()
    job = start_lifecycle(environment=environment, actor=users["alice"], action="stop")
    assert job.kind == JobKind.STOP
    with pytest.raises(JobFailed):  # destroying always needs it
        start_lifecycle(environment=environment, actor=users["alice"], action="destroy", confirm="")


def test_destroy_records_volumes_choice(inventory: dict[str, Any], users: dict[str, Any]) -> None:
    environment = inventory["env_a"]
    response = api(users["alice"]).post(
        url(environment, "destroy"), {"confirm": "prod", "volumes": True}, format="json"
    )
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job"]["id"])
    assert job.kind == JobKind.DESTROY and job.params["volumes"] is True
    detail = AuditEvent.objects.get(action="environment.destroy").detail
    assert detail["volumes"] is True and detail["backup"] is False


def test_states_from_what_the_job_found(inventory: dict[str, Any], users: dict[str, Any]) -> None:
    environment = inventory["env_a"]
    facts = {"job_label": "Stop #7", "at": "2026-12-01 21:00:00 UTC", "containers": {"db": "exited", "odoo": "exited"},
             "stopped": ["db", "odoo"], "running": []}  # fmt: skip
    Environment.objects.filter(pk=environment.pk).update(lifecycle=Lifecycle.STOPPED, lifecycle_facts=facts)
    environment.refresh_from_db()
    state = environment_state(environment)
    assert (state.code, state.label) == (EnvironmentState.STOPPED, "stopped")
    assert "Stop #7" in state.detail
    assert "Stopped on purpose" in stopped_on_purpose(environment)
    assert "on purpose" in (incidents.suppression(environment) or "")
    page = html(users["alice"]).get(f"/environments/{environment.pk}/").content.decode()
    assert 'data-testid="lifecycle"' in page and "stopped" in page
    customer = api(users["carol"]).get(f"/api/v1/environments/{environment.pk}/").json()
    assert customer["state"] == "stopped" and "Stop #7" not in customer["state_detail"]
    # Nothing to act on for a viewer.
    assert (
        'data-testid="lifecycle"' not in html(users["victor"]).get(f"/environments/{environment.pk}/").content.decode()
    )

    Environment.objects.filter(pk=environment.pk).update(
        lifecycle=Lifecycle.STOPPED, lifecycle_facts={**facts, "stopped": ["odoo"], "running": ["db"]}
    )
    environment.refresh_from_db()
    assert environment_state(environment).label == "stopped: odoo"

    Environment.objects.filter(pk=environment.pk).update(lifecycle=Lifecycle.DESTROYED, lifecycle_facts={})
    environment.refresh_from_db()
    assert environment_state(environment).code == EnvironmentState.DESTROYED
    # A destroyed environment comes back only with a deploy.
    refused = api(users["alice"]).post(url(environment, "start"), {}, format="json")
    assert refused.status_code == 400 and "deploy" in refused.json()["detail"]


def test_delete_needs_a_choice(inventory: dict[str, Any], users: dict[str, Any]) -> None:
    environment = inventory["env_a"]
    client = api(users["alice"])
    for query in ("", "?choice=", "?choice=bogus", "?choice[]=x", "?choice=destroyed"):
        response = client.delete(f"/api/v1/environments/{environment.pk}/{query}")
        assert response.status_code == 400, (query, response.content)
    page = html(users["alice"])
    response = page.post(f"/environments/{environment.pk}/delete/", {})
    assert response.status_code == 400 and "Choose what happens on the server" in response.content.decode()
    response = page.post(f"/environments/{environment.pk}/delete/", {"choice": "destroyed"})
    assert response.status_code == 400 and "was not destroyed" in response.content.decode()
    assert Environment.objects.filter(pk=environment.pk).exists()
    assert not AuditEvent.objects.filter(action="environment.deleted").exists()
    # Viewers and other organizations cannot remove it at all.
    assert api(users["victor"]).delete(f"/api/v1/environments/{environment.pk}/?choice=leave_running").status_code in (
        403,
        404,
    )
    assert api(users["bob"]).delete(f"/api/v1/environments/{environment.pk}/?choice=leave_running").status_code == 404
    # A project whose environments were neither destroyed nor removed stays.
    assert client.delete(f"/api/v1/projects/{environment.project_id}/").status_code == 409
    page.post(f"/projects/{environment.project_id}/delete/")
    assert Environment.objects.filter(pk=environment.pk).exists()


def test_delete_leave_running_records_what_was_left(inventory: dict[str, Any], users: dict[str, Any]) -> None:
    """The fixture's server has no confirmed host key: what runs cannot be listed, and the entry says so, with the
    server and compose project, so nothing is unaccounted for."""
    environment = inventory["env_a"]
    response = api(users["olga"]).delete(f"/api/v1/environments/{environment.pk}/?choice=leave_running")
    assert response.status_code == 200, response.content
    assert not Environment.objects.filter(pk=environment.pk).exists()
    event = AuditEvent.objects.get(action="environment.deleted", object_id=str(environment.pk))
    left = event.detail["left"]
    assert event.detail["choice"] == "leave_running"
    assert left["compose_project"] == "shop-16-0-prod" and left["server"] == "alpha-1"
    assert left["containers"] is None and "host key" in left["error"]


def test_delete_destroyed_html(inventory: dict[str, Any], users: dict[str, Any]) -> None:
    environment = inventory["env_a"]
    Environment.objects.filter(pk=environment.pk).update(
        lifecycle=Lifecycle.DESTROYED, lifecycle_facts={"job_label": "Destroy #3", "volumes_removed": ["v"]}
    )
    page = html(users["alice"])
    assert "It was destroyed" in page.get(f"/environments/{environment.pk}/delete/").content.decode()
    response = page.post(f"/environments/{environment.pk}/delete/", {"choice": "destroyed"})
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="environment.deleted", object_id=str(environment.pk))
    assert event.detail == {"choice": "destroyed", "destroyed": {"job_label": "Destroy #3", "volumes_removed": ["v"]}}
    # With its only environment gone, the project can go.
    assert api(users["alice"]).delete(f"/api/v1/projects/{environment.project_id}/").status_code == 204
