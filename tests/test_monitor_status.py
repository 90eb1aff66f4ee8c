"""Status pages (real PostgreSQL, Django's test client): a customer sees only their own organization's page, the
public link shows the same page without login and stops working once revoked or replaced, nothing secret is on it,
the API carries the same data, and a page costs the same number of queries for 10 and for 200 environments."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from monitoring import history
from monitoring.models import EnvironmentHealth, Incident, IncidentUpdate, Sample, StatusPage

pytestmark = pytest.mark.django_db

SECRET_BITS = ("alpha-1", "127.0.0.99", "shop-16-0-prod", "db-container-7", "shop.example.com")


def _client(user: Any = None) -> Client:
    client = Client(raise_request_exception=False)
    if user is not None:
        client.force_login(user)
    return client


def _api(user: Any) -> APIClient:
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(user)
    return client


@pytest.fixture
def outage(inventory: dict[str, Any]) -> dict[str, Any]:
    """env_a (production, customer org A1) is down now, was down for an hour two days ago (an incident whose
    messages name its server), was deployed yesterday and has a good backup from this morning."""
    from backups.models import Backup, BackupStorage
    from deployments.models import Deployment
    from panel.jobs.models import Job

    env = inventory["env_a"]
    env.domain = "shop.example.com"
    env.save(update_fields=["domain"])
    now = timezone.now()
    EnvironmentHealth.objects.create(
        environment=env,
        state="down",
        since=now - timedelta(minutes=5),
        message="Odoo on alpha-1 (127.0.0.99) does not answer: container db-container-7 exited",
        containers=[{"service": "db", "name": "db-container-7", "state": "exited"}],
    )
    day = (now - timedelta(days=2)).replace(hour=10, minute=0, second=0, microsecond=0)
    Sample.objects.bulk_create(
        [Sample(environment=env, at=day + timedelta(minutes=m), state="up" if m >= 60 else "down") for m in range(120)]
    )
    history.rollup(now=day + timedelta(hours=3))
    Sample.objects.all().delete()  # as if pruned: that day comes from its rollups only
    Sample.objects.bulk_create(
        [Sample(environment=env, at=now - timedelta(minutes=m), state="up") for m in range(10, 40)]
    )
    incident = Incident.objects.create(
        organization=env.project.organization,
        environment=env,
        check_name="availability",
        title="shop prod on alpha-1 is down",
        message="127.0.0.99: connection refused",
        opened_at=day,
        closed_at=day + timedelta(hours=1),
    )
    IncidentUpdate.objects.create(incident=incident, at=day, kind="opened", message="alpha-1 refused: db-container-7")
    IncidentUpdate.objects.create(incident=incident, at=day, kind="note", message="No alerts: deploy on alpha-1")
    IncidentUpdate.objects.create(incident=incident, at=day + timedelta(hours=1), kind="closed", message="Recovered.")
    Incident.objects.create(
        organization=env.project.organization, environment=env, check_name="websocket", title="w",
        opened_at=now - timedelta(hours=1), suppressed=True,
    )  # fmt: skip
    job = Job.objects.create(organization=env.project.organization, kind="deploy", environment=env, status="succeeded")
    deployed = now - timedelta(days=1)
    Deployment.objects.create(environment=env, job=job, ref="main", commit="a" * 40, status="succeeded",
                              finished_at=deployed)  # fmt: skip
    storage = BackupStorage.objects.create(organization=env.project.organization, name="local", kind="local",
                                           path="/srv/backups")  # fmt: skip
    backed_up = now - timedelta(hours=3)
    Backup.objects.create(environment=env, storage=storage, kind="scheduled", status="good", key_prefix="b/1",
                          started_at=backed_up, finished_at=backed_up, manifest={"x": 1})  # fmt: skip
    Backup.objects.create(environment=env, storage=storage, kind="scheduled", status="failed", key_prefix="b/2",
                          started_at=now - timedelta(hours=1))  # fmt: skip
    return {"env": env, "day": day, "deployed": deployed, "backed_up": backed_up, "incident": incident}


def test_it_shows_a_customer_only_their_own_organizations_page(
    orgs: dict[str, Any], users: dict[str, Any], outage: dict[str, Any]
) -> None:
    carol, bob, alice = users["carol"], users["bob"], users["alice"]
    a1, b = orgs["a1"], orgs["b"]
    response = _client(carol).get("/status/")
    assert response.status_code == 302 and response["Location"] == f"/status/{a1.pk}/"
    page = _client(carol).get(f"/status/{a1.pk}/")
    assert page.status_code == 200
    assert "Shop · prod" in page.content.decode()
    assert b"Page settings" not in page.content  # customers do not configure it
    assert _client(carol).get(f"/status/{b.pk}/").status_code == 404
    assert _client(carol).get(f"/status/{orgs['a'].pk}/").status_code == 404
    assert _client(bob).get(f"/status/{a1.pk}/").status_code == 404
    staff = _client(alice).get(f"/status/{a1.pk}/")  # the provider's staff see their customers' pages
    assert staff.status_code == 200 and b"Page settings" in staff.content
    assert _client().get(f"/status/{a1.pk}/").status_code == 302  # login first

    listing = _api(carol).get("/api/v1/status-pages/")
    assert listing.status_code == 200
    assert [row["organization"]["id"] for row in listing.json()["results"]] == [a1.pk]
    assert _api(carol).get(f"/api/v1/status-pages/{b.pk}/").status_code == 404
    assert _api(bob).get(f"/api/v1/status-pages/{a1.pk}/").status_code == 404
    assert _api(carol).get("/api/v1/status-pages/99999999999999999999/").status_code == 404


def test_it_shows_state_uptime_bars_incidents_deploy_and_backup_and_nothing_secret(
    orgs: dict[str, Any], users: dict[str, Any], outage: dict[str, Any]
) -> None:
    env, day = outage["env"], outage["day"]
    html = _client(users["carol"]).get(f"/status/{orgs['a1'].pk}/").content.decode()
    for bit in SECRET_BITS:
        assert bit not in html, bit
    assert 'data-state="down"' in html
    bars = re.findall(r'data-day="([0-9-]+)" data-uptime="([0-9.]*)" data-down-minutes="([0-9]+)"', html)
    assert len(bars) == 90
    by_day = {d: (u, m) for d, u, m in bars}
    assert by_day[f"{day:%Y-%m-%d}"] == ("0.500000", "30")  # 60 up, 60 down samples at a 30 s interval
    assert by_day[f"{timezone.now():%Y-%m-%d}"][0] == "1.000000"
    assert by_day[f"{timezone.now() - timedelta(days=3):%Y-%m-%d}"] == ("", "0")  # not measured
    assert "Shop · prod: Unavailable" in html
    assert "Problem detected" in html and "Resolved" in html
    assert "Live updates not working" not in html  # suppressed (maintenance, deploy) incidents are not shown
    assert f"{outage['deployed']:%Y-%m-%d %H:%M}" in html
    assert f"{outage['backed_up']:%Y-%m-%d %H:%M}" in html

    data = _api(users["carol"]).get(f"/api/v1/status-pages/{orgs['a1'].pk}/").json()
    text = str(data)
    for bit in SECRET_BITS:
        assert bit not in text, bit
    (row,) = data["environments"]
    assert row["id"] == env.pk and row["state"] == "down" and row["name"] == "prod"
    assert len(row["bars"]) == 90 and row["bars"][-1]["day"] == f"{timezone.now():%Y-%m-%d}"
    assert {"day": f"{day:%Y-%m-%d}", "uptime": 0.5, "down_minutes": 30} in row["bars"]
    assert row["uptime"]["24h"] == 1.0 and row["uptime"]["7d"] == pytest.approx(90 / 150)
    assert row["last_backup_at"] is not None and row["last_deployed_at"] is not None
    (incident,) = data["incidents"]
    assert incident["open"] is False
    assert [u["kind"] for u in incident["updates"]] == ["opened", "closed"]
    assert data["state"] == "down" and data["public"] is False


def test_it_serves_the_page_through_a_public_link_until_revoked(
    orgs: dict[str, Any], users: dict[str, Any], outage: dict[str, Any]
) -> None:
    a1 = orgs["a1"]
    assert _client(users["carol"]).post(f"/status/{a1.pk}/public-link/").status_code == 404  # customers cannot
    response = _client(users["olga"]).post(f"/status/{a1.pk}/public-link/")
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    url = re.search(r"http://testserver(/status/p/[A-Za-z0-9_-]{40,}/)", response.content.decode()).group(1)
    token = url.split("/")[3]
    stored = StatusPage.objects.get(organization=a1)
    assert stored.public_token_hash and token not in stored.public_token_hash and len(stored.public_token_hash) == 64

    anonymous = _client()
    public = anonymous.get(url)
    assert public.status_code == 200
    html = public.content.decode()
    assert "Shop · prod: Unavailable" in html and 'data-state="down"' in html
    assert "Page settings" not in html and "csrfmiddlewaretoken" not in html
    for bit in SECRET_BITS:
        assert bit not in html, bit
    assert public["Referrer-Policy"] == "no-referrer"
    assert anonymous.get(url.replace(token, token[:-1] + ("A" if token[-1] != "A" else "B"))).status_code == 404
    assert anonymous.get("/status/p/%00/").status_code in (400, 404)

    # Replacing the link stops the old one; revoking stops the new one, at once (the cache does not keep it alive).
    second = _client(users["alice"]).post(f"/status/{a1.pk}/public-link/").content.decode()
    new_url = re.search(r"http://testserver(/status/p/[A-Za-z0-9_-]{40,}/)", second).group(1)
    assert anonymous.get(url).status_code == 404
    assert anonymous.get(new_url).status_code == 200
    assert _client(users["carol"]).post(f"/status/{a1.pk}/public-link/revoke/").status_code == 404
    assert _client(users["alice"]).post(f"/status/{a1.pk}/public-link/revoke/").status_code == 302
    assert anonymous.get(new_url).status_code == 404

    # The API does the same.
    created = _api(users["olga"]).post(f"/api/v1/status-pages/{a1.pk}/public-link/")
    assert created.status_code == 201
    api_url = created.json()["url"].removeprefix("http://testserver")
    assert anonymous.get(api_url).status_code == 200
    assert _api(users["carol"]).delete(f"/api/v1/status-pages/{a1.pk}/public-link/").status_code == 404
    assert _api(users["olga"]).delete(f"/api/v1/status-pages/{a1.pk}/public-link/").status_code == 204
    assert anonymous.get(api_url).status_code == 404


def test_it_lets_owners_and_operators_choose_the_environments(
    orgs: dict[str, Any], users: dict[str, Any], inventory: dict[str, Any]
) -> None:
    from panel.inventory.models import Environment

    a1, env = orgs["a1"], inventory["env_a"]
    staging = Environment.objects.create(project=env.project, server=env.server, name="staging", kind="staging",
                                         compose_files=["prod.yaml"], compose_project="shop-staging")  # fmt: skip

    def shown(user: Any) -> list[str]:
        return [row["name"] for row in _api(user).get(f"/api/v1/status-pages/{a1.pk}/").json()["environments"]]

    assert shown(users["carol"]) == ["prod"]  # production only by default
    assert _api(users["carol"]).patch(f"/api/v1/status-pages/{a1.pk}/", {"include": "all"}).status_code == 404
    assert _api(users["victor"]).patch(f"/api/v1/status-pages/{a1.pk}/", {"include": "all"}).status_code == 404
    changed = _api(users["olga"]).patch(f"/api/v1/status-pages/{a1.pk}/", {"include": "all", "title": "Shop"})
    assert changed.status_code == 200 and changed.json()["title"] == "Shop"
    assert shown(users["carol"]) == ["prod", "staging"]
    body = {"include": "selected", "environments": [staging.pk]}
    assert _api(users["olga"]).patch(f"/api/v1/status-pages/{a1.pk}/", body, format="json").status_code == 200
    assert shown(users["carol"]) == ["staging"]
    foreign = {"include": "selected", "environments": [inventory["env_b"].pk]}
    assert _api(users["olga"]).patch(f"/api/v1/status-pages/{a1.pk}/", foreign, format="json").status_code == 400
    assert _api(users["olga"]).patch(f"/api/v1/status-pages/{a1.pk}/", {"include": "x"}).status_code == 400

    # The HTML form.
    response = _client(users["alice"]).post(
        f"/status/{a1.pk}/settings/", {"title": "Our shop", "include": "selected", "environments": [str(env.pk), "x"]}
    )
    assert response.status_code == 302
    assert shown(users["carol"]) == ["prod"]
    assert _client(users["carol"]).post(f"/status/{a1.pk}/settings/", {"include": "all"}).status_code == 404
    assert _client(users["alice"]).post(f"/status/{a1.pk}/settings/", {"include": "bogus"}).status_code == 302
    assert "Our shop" in _client(users["carol"]).get(f"/status/{a1.pk}/").content.decode()


def _environments(inventory: dict[str, Any], count: int) -> None:
    """``count`` production environments in A1 with health, samples, an incident each and a deployment."""
    from deployments.models import Deployment
    from panel.inventory.models import Environment
    from panel.jobs.models import Job

    env = inventory["env_a"]
    existing = Environment.objects.filter(project=env.project).count()
    now = timezone.now()
    created = Environment.objects.bulk_create(
        Environment(project=env.project, server=env.server, name=f"e{i}", compose_files=["prod.yaml"],
                    compose_project=f"shop-e{i}") for i in range(existing, count)
    )  # fmt: skip
    EnvironmentHealth.objects.bulk_create(EnvironmentHealth(environment=e, state="up") for e in created)
    Sample.objects.bulk_create(
        Sample(environment=e, at=now - timedelta(minutes=m), state="up") for e in created for m in range(3)
    )
    incidents = Incident.objects.bulk_create(
        Incident(organization=env.project.organization, environment=e, check_name="availability", title="t",
                 opened_at=now - timedelta(hours=2), closed_at=now - timedelta(hours=1)) for e in created
    )  # fmt: skip
    IncidentUpdate.objects.bulk_create(IncidentUpdate(incident=i, kind="opened", message="m") for i in incidents)
    jobs = Job.objects.bulk_create(
        Job(organization=env.project.organization, kind="deploy", environment=e, status="succeeded") for e in created
    )
    Deployment.objects.bulk_create(
        Deployment(environment=j.environment, job=j, ref="main", status="succeeded", finished_at=now) for j in jobs
    )


@override_settings(MONITOR_STATUS_CACHE_SECONDS=0)
def test_it_costs_the_same_queries_for_10_and_200_environments(
    orgs: dict[str, Any], users: dict[str, Any], inventory: dict[str, Any]
) -> None:
    a1 = orgs["a1"]
    token = _client(users["alice"]).post(f"/status/{a1.pk}/public-link/").content.decode()
    url = re.search(r"http://testserver(/status/p/[A-Za-z0-9_-]{40,}/)", token).group(1)
    counts: dict[int, dict[str, int]] = {}
    for size in (10, 200):
        _environments(inventory, size)
        counts[size] = {}
        for name, client, path in (
            ("public", _client(), url),
            ("page", _client(users["carol"]), f"/status/{a1.pk}/"),
            ("api", _api(users["carol"]), f"/api/v1/status-pages/{a1.pk}/"),
        ):
            client.get(path)  # warm up (session, content types)
            with CaptureQueriesContext(connection) as queries:
                response = client.get(path)
            assert response.status_code == 200
            counts[size][name] = len(queries)
        assert len(_api(users["carol"]).get(f"/api/v1/status-pages/{a1.pk}/").json()["environments"]) == size
    assert counts[10] == counts[200], counts
    assert counts[200]["public"] <= 12, counts


def test_it_caches_the_public_page_briefly(orgs: dict[str, Any], users: dict[str, Any], outage: dict[str, Any]) -> None:
    from django.core.cache import cache

    cache.clear()
    a1 = orgs["a1"]
    html = _client(users["alice"]).post(f"/status/{a1.pk}/public-link/").content.decode()
    url = re.search(r"http://testserver(/status/p/[A-Za-z0-9_-]{40,}/)", html).group(1)
    anonymous = _client()
    assert anonymous.get(url).status_code == 200
    EnvironmentHealth.objects.filter(environment=outage["env"]).update(state="up")
    with CaptureQueriesContext(connection) as queries:
        cached = anonymous.get(url)
    assert len(queries) == 1  # the token's page only: revocation is still seen at once
    assert 'data-state="down"' in cached.content.decode()  # within MONITOR_STATUS_CACHE_SECONDS
    cache.clear()
    assert 'data-state="up"' in anonymous.get(url).content.decode()
