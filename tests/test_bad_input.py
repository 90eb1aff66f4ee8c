"""Bad input answers 4xx, never 500: NUL characters, digits ``int`` refuses, ids past bigint, unbounded pages,
a duplicate name on an edit form, OPTIONS on the docs page and PUT on the API."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client, override_settings
from rest_framework.test import APIClient

from deployments.models import Deployment
from panel.accounts.models import AuditEvent
from panel.accounts.services import create_invitation
from panel.inventory.models import Server
from panel.jobs.models import Job
from panel.validators import parse_id
from tests.conftest import PASSWORD
from tests.test_webhooks import github, push_payload

pytestmark = pytest.mark.django_db

# '²' is a digit to str.isdigit() but not to int(); '٣' (Arabic-Indic 3) and ' 1' are ints to int() but not ids;
# 2**63 is past PostgreSQL's bigint.
NOT_IDS = ["²", "١", "٣", " 1", "1 ", "+1", "1_0", "0", "-1", "1.0", "0x1", str(2**63), "9" * 30, "", "a", "\x00"]


def logged_in(username: str = "alice") -> Client:
    client = Client(raise_request_exception=False)
    assert client.login(username=username, password=PASSWORD)
    return client


def api(user: Any) -> APIClient:
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(user)
    return client


def test_it_parses_ids_strictly() -> None:
    assert parse_id("1") == 1
    assert parse_id("007") == 7
    assert parse_id(str(2**63 - 1)) == 2**63 - 1
    for value in NOT_IDS:
        assert parse_id(value) is None, value
    assert parse_id(None) is None and parse_id(3) is None


def test_it_refuses_a_nul_in_a_webhook_branch(inventory: dict[str, Any]) -> None:
    environment = inventory["env_a"]
    environment.auto_deploy = True
    environment.save()
    for branch in ["main\x00", "ma\x00in", "\ud800"]:
        response = github(environment.project, push_payload(branch))
        assert response.status_code == 400, response.content
        assert "branch name is not allowed" in response.json()["detail"]
    events = AuditEvent.objects.filter(action="webhook.refused_branch").order_by("pk")
    recorded = [event.detail["branch"] for event in events]
    assert recorded == ["main\\x00", "ma\\x00in", "\\ud800"]
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/?status=%00",
        "/jobs/?page=%00",
        "/servers/?x=%00",
        "/audit/?security=%00",
        "/jobs/?%00=1",
        "/servers/%00/",
        "/invite/%00/",
        "/api/v1/jobs/?status=%00",
        "/api/v1/environments/?limit=%00",
        "/api/v1/invitations/?organization=%00",
        "/api/v1/jobs/1/lines/?after=%00",
    ],
)
def test_it_answers_400_to_a_nul_anywhere_in_the_query_string(users: dict[str, Any], path: str) -> None:
    for client in (logged_in(), api(users["alice"])):
        response = client.get(path)
        assert response.status_code in (400, 404), (path, response.status_code)
        if "%00" in path.split("?")[-1] or path.startswith("/api/"):
            assert response.status_code == 400
            assert "NUL" in response.content.decode()
    assert logged_in().get("/api/v1/jobs/?status=%00").json() == {
        "detail": "The request contains a NUL character, which is not allowed."
    }


def test_it_answers_400_to_a_nul_in_form_data_and_json_bodies(inventory: dict[str, Any], users: Any) -> None:
    server = inventory["server_a"]
    client = logged_in()
    response = client.post(f"/servers/{server.pk}/edit/", {"name": "x\x00", "port": "22", "username": "deploy"})
    assert response.status_code == 400
    response = client.post("/login/", {"username": "alice\x00", "password": "x"})
    assert response.status_code == 400
    # JSON: NUL and lone surrogates anywhere (a list, a key, a nested object) answer 400, naming the field.
    rest = api(users["alice"])
    url = f"/api/v1/servers/{server.pk}/"
    for body, field, why in [
        ('{"labels": ["a\\u0000"]}', "labels", "NUL"),
        ('{"name": "\\ud800"}', "name", "surrogate"),
        ('{"labels": ["ok", "\\udfff"]}', "labels", "surrogate"),
        ('{"x": {"y": ["\\udfff"]}}', "x", "surrogate"),
        ('{"x\\u0000": 1}', "non_field_errors", "NUL"),
        ('["\\ud800"]', "non_field_errors", "surrogate"),
    ]:
        response = rest.patch(url, body, content_type="application/json")
        assert response.status_code == 400, body
        assert why in response.json()[field][0], body
    response = rest.patch(url, {"name": "x\x00"}, format="multipart")
    assert response.status_code == 400
    server.refresh_from_db()
    assert server.name == "alpha-1" and server.labels == []


def test_it_lists_every_job_for_an_unknown_status(inventory: dict[str, Any]) -> None:
    Job.objects.create(organization=inventory["server_a"].organization, kind="validate_server",
                       server=inventory["server_a"], status="failed")  # fmt: skip
    client = logged_in()
    for status in ["bogus", "²", "queued' OR 1=1"]:
        response = client.get("/jobs/", {"status": status})
        assert response.status_code == 200
        assert "Validate server" in response.content.decode()
    assert "Validate server" not in client.get("/jobs/", {"status": "succeeded"}).content.decode()


def test_it_treats_anything_but_ascii_digits_as_no_job_on_the_server_page(inventory: dict[str, Any]) -> None:
    server = inventory["server_a"]
    job = Job.objects.create(organization=server.organization, kind="validate_server", server=server)
    client = logged_in()
    for value in NOT_IDS[:-1]:
        response = client.get(f"/servers/{server.pk}/", {"job": value})
        assert response.status_code == 200, value
        assert response.context["log_job"] == job, "falls back to the latest job"


def test_it_answers_404_to_a_compare_of_non_ids(inventory: dict[str, Any], users: dict[str, Any]) -> None:
    environment = inventory["env_a"]
    jobs = [Job.objects.create(organization=environment.project.organization, kind="deploy", environment=environment,
                               status="succeeded") for _ in range(2)]  # fmt: skip
    first, second = (
        Deployment.objects.create(environment=environment, job=job, ref="main", commit=c * 40, status="succeeded")
        for job, c in zip(jobs, "ab", strict=True)
    )
    client = logged_in()
    url = f"/environments/{environment.pk}/compare/"
    assert client.get(url, {"from": first.pk, "to": second.pk}).status_code == 200
    for value in NOT_IDS[:-1]:
        assert client.get(url, {"from": value, "to": second.pk}).status_code == 404, value
        assert client.get(url, {"from": first.pk, "to": value}).status_code == 404, value


def test_it_filters_invitations_by_an_organization_id_only(orgs: dict[str, Any], users: dict[str, Any]) -> None:
    create_invitation(actor=users["alice"], organization=orgs["a"], email="x@example.com", role="viewer")
    client = api(users["alice"])
    assert client.get("/api/v1/invitations/", {"organization": orgs["a"].pk}).json()["count"] == 1
    for value in NOT_IDS[:-1]:
        response = client.get("/api/v1/invitations/", {"organization": value})
        assert response.status_code == 200, value
        assert response.json()["count"] == (1 if value == "" else 0), value


def test_it_answers_404_when_switching_to_a_non_id(orgs: dict[str, Any], users: dict[str, Any]) -> None:
    client = logged_in()
    assert client.post("/org/switch/", {"organization": orgs["a"].pk}).status_code == 302
    for value in NOT_IDS[:-1]:
        assert client.post("/org/switch/", {"organization": value}).status_code == 404, value


@pytest.mark.parametrize("path", ["/servers/{big}/", "/jobs/{big}/", "/environments/{big}/", "/deployments/{big}/"])
def test_it_answers_404_to_ids_past_bigint_in_the_path(users: dict[str, Any], path: str) -> None:
    big = "9" * 30
    assert logged_in().get(path.format(big=big)).status_code == 404
    assert api(users["alice"]).get("/api/v1" + path.format(big=big)).status_code == 404


@override_settings(API_MAX_PAGE_SIZE=2)
def test_it_caps_api_pages_at_the_maximum(inventory: dict[str, Any], users: dict[str, Any]) -> None:
    server = inventory["server_a"]
    for _ in range(3):
        Job.objects.create(organization=server.organization, kind="validate_server", server=server, status="failed")
    client = api(users["alice"])
    for limit in ["3", "100", str(2**63), "9" * 40]:
        response = client.get("/api/v1/jobs/", {"limit": limit})
        assert response.status_code == 200, limit
        body = response.json()
        assert body["count"] == 3 and len(body["results"]) == 2, limit
    for limit, offset in [("²", "0"), ("-1", "0"), ("0", "0"), ("1", "9" * 40), ("1", "-5"), ("1", "²")]:
        response = client.get("/api/v1/jobs/", {"limit": limit, "offset": offset})
        assert response.status_code == 200, (limit, offset)
        assert len(response.json()["results"]) <= 2


def test_it_shows_a_form_error_for_a_duplicate_server_name(inventory: dict[str, Any]) -> None:
    server = inventory["server_a"]
    Server.objects.create(organization=server.organization, name="taken", host="127.0.0.98", username="deploy")
    response = logged_in().post(
        f"/servers/{server.pk}/edit/", {"name": "taken", "port": "22", "username": "deploy", "labels_text": ""}
    )
    assert response.status_code == 200
    assert "Another server of this organization is already named taken." in response.content.decode()
    server.refresh_from_db()
    assert server.name == "alpha-1"
    # The same name in another organization is fine.
    other = inventory["server_b"]
    response = logged_in("bob").post(
        f"/servers/{other.pk}/edit/", {"name": "taken", "port": "22", "username": "deploy", "labels_text": ""}
    )
    assert response.status_code == 302
    assert Server.objects.get(pk=other.pk).name == "taken"


def test_it_answers_options_and_other_methods_on_the_docs_and_schema(db: Any) -> None:
    client = Client(raise_request_exception=False)
    for path in ["/api/v1/docs/", "/api/v1/docs/?script=", "/api/v1/schema/"]:
        response = client.options(path)
        assert response.status_code == 200, path
        assert "GET" in response["Allow"]
        for method in ["post", "put", "patch", "delete"]:
            assert getattr(client, method)(path).status_code == 405, (path, method)


def test_it_documents_patch_and_answers_405_to_put(inventory: dict[str, Any], users: dict[str, Any]) -> None:
    schema = Client().get("/api/v1/schema/?format=json").json()
    methods = {method for operations in schema["paths"].values() for method in operations}
    assert "patch" in methods and "put" not in methods
    client = api(users["alice"])
    for path in [f"/api/v1/servers/{inventory['server_a'].pk}/", f"/api/v1/projects/{inventory['project_a'].pk}/",
                 f"/api/v1/environments/{inventory['env_a'].pk}/"]:  # fmt: skip
        response = client.put(path, {"name": "x"}, format="json")
        assert response.status_code == 405, path
        assert response.json() == {"detail": 'Method "PUT" not allowed.'}
        assert "PUT" not in response["Allow"] and "PATCH" in response["Allow"]


def test_it_documents_the_error_answers_of_every_operation(db: Any) -> None:
    schema = Client().get("/api/v1/schema/?format=json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"400", "401", "403"} <= codes, (method, path)
            if "{id}" in path:
                assert "404" in codes, (method, path)
    busy = schema["paths"]["/api/v1/environments/{id}/deploy/"]["post"]["responses"]["409"]
    ref = busy["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert set(schema["components"]["schemas"][ref]["properties"]) == {"detail", "job"}
    for name, field in [("Job", "created_by"), ("Deployment", "triggered_by")]:
        assert schema["components"]["schemas"][name]["properties"][field]["nullable"] is True
    assert json.dumps(schema).count('"additionalProperties": {}') >= 1


def test_it_answers_every_page_without_a_server_error_whatever_the_query(
    inventory: dict[str, Any], orgs: dict[str, Any]
) -> None:
    """A sweep over the HTML pages with every query parameter the views read, set to what ``int`` or the database
    would trip over, and to plain junk."""
    server, project, environment = inventory["server_a"], inventory["project_a"], inventory["env_a"]
    job = Job.objects.create(organization=server.organization, kind="validate_server", server=server)
    pages = [
        "/", "/servers/", "/servers/new/", f"/servers/{server.pk}/", f"/servers/{server.pk}/facts/",
        f"/servers/{server.pk}/confirm/", f"/servers/{server.pk}/edit/", f"/servers/{server.pk}/delete/",
        "/projects/", "/projects/new/", f"/projects/{project.pk}/", f"/projects/{project.pk}/edit/",
        f"/projects/{project.pk}/environments/new/", f"/environments/{environment.pk}/",
        f"/environments/{environment.pk}/edit/", f"/environments/{environment.pk}/compare/", "/audit/", "/tokens/",
        "/organizations/", f"/organizations/{orgs['a'].pk}/members/", "/jobs/", f"/jobs/{job.pk}/",
        f"/jobs/{job.pk}/log.txt", "/account/two-factor/", "/invite/nope/",
    ]  # fmt: skip
    names = ["job", "from", "to", "status", "page", "organization", "security", "next", "script"]
    client = logged_in()
    for value in ["²", "٣", "9" * 40, "-1", "'; --", "%", "é" * 300, "\x00"]:
        for page in pages:
            response = client.get(page, {name: value for name in names})
            assert response.status_code < 500, (page, value, response.status_code)
    # Bytes that are not UTF-8 (a surrogate's encoding, 0xFF) reach the views as replacement characters.
    for page in pages:
        response = client.get(page + "?" + "&".join(f"{name}=%ED%A0%80%FF" for name in names))
        assert response.status_code < 500, (page, response.status_code)


def test_it_answers_options_and_head_on_every_api_path(inventory: dict[str, Any], users: dict[str, Any]) -> None:
    schema = Client().get("/api/v1/schema/?format=json").json()
    client = api(users["alice"])
    for path in [*schema["paths"], "/api/v1/docs/", "/api/v1/schema/", "/api/v1/nothing/here/"]:
        concrete = path.replace("{id}", str(inventory["env_a"].pk))
        for method in ("options", "head"):
            response = getattr(client, method)(concrete)
            assert response.status_code < 500, (method, concrete, response.status_code)
    assert client.get("/api/v1/nothing/here/").json() == {"detail": "Not found."}
