"""Test restores without the lab: the throwaway compose file is isolated from the environment (from a real
``docker compose config`` shape), the API and the page start one (202 / 409 / 400 / 404), the schedule fan-out
starts a due one once, a job that died leaves the backup *failed*, never passed, and the page shows a failed
verification with its reason. No worker runs here: the jobs these requests queue stay queued.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from backups.models import Backup, BackupSettings
from backups.scheduling import run_schedules
from backups.services import settle_backups
from backups.testrestore import TestRestoreFailed, throwaway_compose
from panel.inventory.models import Server
from panel.jobs.choices import JobKind
from panel.jobs.models import Job
from tests.backup_fixtures import make_local_storage

pytestmark = pytest.mark.django_db

# What `docker compose config --format json` answers for the lab's sample project (prod.yaml + the panel override).
CONFIG: dict[str, Any] = {
    "name": "panel-demo-16-0-prod",
    "services": {
        "db": {
            "image": "ghcr.io/tecnativa/postgres-autoconf:15-alpine",
            "environment": {"POSTGRES_DB": "prod", "POSTGRES_USER": "odoo", "POSTGRES_PASSWORD": "secret"},
            "networks": {"default": {"aliases": ["panel-demo-16-0-prod-db"]}},
            "restart": "unless-stopped",
            "shm_size": "4294967296",
            "volumes": [{"type": "volume", "source": "db", "target": "/var/lib/postgresql/data", "volume": {}}],
            "labels": {"io.doodba-panel.environment": "7"},
        },
        "odoo": {
            "build": {"context": "/home/x/doodba-panel/panel-demo-16-0-prod/src/odoo"},
            "image": "panel-demo-16-0-prod-odoo:577eaf80226c",
            "container_name": "prod-odoo",
            "environment": {"PGDATABASE": "prod", "PGHOST": "panel-demo-16-0-prod-db", "PGPASSWORD": "secret"},
            "hostname": "panel-demo.example.com",
            "ports": [{"target": 8069, "published": "8069"}],
            "networks": {"default": None, "inverseproxy_shared": None},
            "labels": {"traefik.enable": "true", "doodba.domain.main": "panel-demo.example.com"},
            "volumes": [
                {"type": "volume", "source": "filestore", "target": "/var/lib/odoo"},
                {"type": "bind", "source": "/etc/odoo-extra.conf", "target": "/opt/odoo/custom/extra.conf"},
            ],
            "depends_on": {"db": {"condition": "service_started"}, "smtp": {"condition": "service_started"}},
        },
        "smtp": {"image": "tecnativa/postfix-relay"},
    },
    "networks": {"default": {}, "inverseproxy_shared": {"external": True, "name": "inverseproxy_shared"}},
    "volumes": {"db": {}, "filestore": {"external": True, "name": "prod-filestore"}},
}


def test_it_writes_a_throwaway_compose_file_that_shares_nothing_with_the_environment() -> None:
    project = "panel-test-restore-42"
    pinned = "panel-demo-16-0-prod-odoo:panel-3"
    document = throwaway_compose(CONFIG, project=project, database="prod", images={"odoo": pinned})
    assert document["name"] == project and sorted(document["services"]) == ["db", "odoo"]
    odoo, db = document["services"]["odoo"], document["services"]["db"]
    assert odoo["image"] == pinned and db["image"] == CONFIG["services"]["db"]["image"]
    for service in (odoo, db):
        # No port, no Traefik label, no container name, no restart policy, no build.
        assert not {"ports", "container_name", "hostname", "restart", "build"} & set(service)
        assert service["labels"] == {"io.doodba-panel.test-restore": project}
        assert list(service["networks"]) == ["default"]
    # Its own internal network (nothing leaves the copy), where the db keeps the name PGHOST uses.
    assert document["networks"] == {"default": {"internal": True, "labels": {"io.doodba-panel.test-restore": project}}}
    assert db["networks"]["default"] == {"aliases": ["panel-demo-16-0-prod-db"]}
    # New volumes only (the environment's external filestore volume is not mounted); a bind mount read-only.
    assert odoo["volumes"][0] == {"type": "volume", "source": "odoo-0", "target": "/var/lib/odoo"}
    assert odoo["volumes"][1]["read_only"] is True
    assert db["volumes"] == [{"type": "volume", "source": "db-0", "target": "/var/lib/postgresql/data"}]
    assert set(document["volumes"]) == {"odoo-0", "db-0"}
    assert odoo["environment"]["PGDATABASE"] == "prod" and odoo["environment"]["MAX_CRON_THREADS"] == "0"
    assert odoo["depends_on"] == {"db": {"condition": "service_started"}}


def test_it_refuses_a_configuration_whose_odoo_uses_another_database_server() -> None:
    config = {**CONFIG, "services": {**CONFIG["services"]}}
    config["services"]["odoo"] = {**CONFIG["services"]["odoo"], "environment": {"PGHOST": "db.example.com"}}
    with pytest.raises(TestRestoreFailed, match=r"PGHOST is 'db\.example\.com'"):
        throwaway_compose(config, project="panel-test-restore-1", database="prod", images={})
    with pytest.raises(TestRestoreFailed, match="no db service"):
        throwaway_compose(
            {"services": {"odoo": {"image": "x"}}}, project="panel-test-restore-1", database="p", images={}
        )


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def configured(inventory: dict[str, Any], backup_root: Any) -> dict[str, Any]:
    env = inventory["env_a"]
    storage = make_local_storage(env.project.organization, backup_root)
    BackupSettings.objects.create(environment=env, storage=storage)
    return {**inventory, "storage": storage}


def good_backup(environment: Any, storage: Any, *, started_at: Any = None, status: str = "good") -> Backup:
    started_at = started_at or timezone.now()
    return Backup.objects.create(
        environment=environment, storage=storage, kind="scheduled", status=status, started_at=started_at,
        finished_at=started_at if status == "good" else None,
        manifest={"objects": [{"key": "x"}], "odoo": {"base_version": "16.0.1.3"}} if status == "good" else {},
        key_prefix=f"backups/{environment.compose_project}/{started_at:%s}-{status}",
    )  # fmt: skip


def test_the_api_starts_a_test_restore_of_a_good_backup_once_at_a_time(configured, users) -> None:
    env, storage = configured["env_a"], configured["storage"]
    backup = good_backup(env, storage)
    url = f"/api/v1/backups/{backup.pk}/test-restore/"
    response = client_for(users["olga"]).post(url, {}, format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job"]["id"])
    assert job.kind == JobKind.TEST_RESTORE and job.params == {"backup_id": backup.pk, "server_id": env.server_id}
    backup.refresh_from_db()
    assert backup.test_restore_status == "running" and backup.test_restore_job_id == job.pk
    body = client_for(users["alice"]).get(f"/api/v1/backups/{backup.pk}/").json()
    assert body["test_restore_status"] == "running" and body["test_restore_job"] == job.pk
    assert body["verify_status"] == "" and body["verify_reason"] == ""
    # One test restore of the environment at a time.
    busy = client_for(users["alice"]).post(url, {}, format="json")
    assert busy.status_code == 409 and busy.json()["job"] == job.pk
    # Only good backups; viewers, customers and other organizations do not see the action.
    failed = good_backup(env, storage, status="failed")
    refused = client_for(users["olga"]).post(f"/api/v1/backups/{failed.pk}/test-restore/", {}, format="json")
    assert refused.status_code == 400 and "only good backups" in refused.json()["detail"]
    for name in ("victor", "carol", "bob"):
        assert client_for(users[name]).post(url, {}, format="json").status_code == 404, name
    # Another organization's server is not one to run it on.
    Job.objects.filter(pk=job.pk).update(status="succeeded", finished_at=timezone.now())
    other = client_for(users["alice"]).post(url, {"server": configured["server_b"].pk}, format="json")
    assert other.status_code == 400 and "server" in other.json()


def test_it_uses_the_environment_s_test_restore_server(configured, users) -> None:
    env, storage = configured["env_a"], configured["storage"]
    spare = Server.objects.get(pk=env.server_id)
    spare.pk, spare.name, spare.host = None, "alpha-2", "10.0.0.99"
    spare.save()
    url = f"/api/v1/environments/{env.pk}/backup-settings/"
    body = {"test_restore_schedule": "30 5 * * 6", "test_restore_server": spare.pk}
    changed = client_for(users["olga"]).patch(url, body, format="json")
    assert changed.status_code == 200 and changed.json()["test_restore_schedule"] == "30 5 * * 6", changed.content
    for wrong in ({"test_restore_schedule": "* * * * *"}, {"test_restore_server": configured["server_b"].pk}):
        refused = client_for(users["olga"]).patch(url, wrong, format="json")
        assert refused.status_code == 400 and set(refused.json()) == set(wrong), refused.content
    assert BackupSettings.objects.get(environment=env).test_restore_server == spare
    response = client_for(users["olga"]).post(f"/api/v1/backups/{good_backup(env, storage).pk}/test-restore/")
    assert response.status_code == 202, response.content
    assert Job.objects.get(pk=response.json()["job"]["id"]).params["server_id"] == spare.pk


def test_the_schedule_starts_a_due_test_restore_of_the_newest_good_backup_once(configured) -> None:
    env, storage = configured["env_a"], configured["storage"]
    now = timezone.now()
    good_backup(env, storage, started_at=now - timedelta(days=9))
    newest = good_backup(env, storage, started_at=now - timedelta(days=8))
    good_backup(env, storage, started_at=now - timedelta(days=1), status="failed")
    report = run_schedules(now)
    assert report.test_restores == [env.pk]
    job = Job.objects.get(kind=JobKind.TEST_RESTORE)
    assert job.trigger == "schedule" and job.params["backup_id"] == newest.pk
    # Started once: not due again until the next weekly run.
    assert run_schedules(now + timedelta(minutes=1)).test_restores == []
    Job.objects.filter(pk=job.pk).update(status="failed", finished_at=now)
    assert run_schedules(now + timedelta(hours=1)).test_restores == []
    assert run_schedules(now + timedelta(days=7, minutes=1)).test_restores == [env.pk]
    # A blank schedule starts none.
    Job.objects.filter(kind=JobKind.TEST_RESTORE).update(status="succeeded", finished_at=now)
    BackupSettings.objects.filter(environment=env).update(test_restore_schedule="")
    assert run_schedules(now + timedelta(days=30)).test_restores == []


def test_a_test_restore_whose_job_died_is_failed_never_passed(configured, users) -> None:
    env, storage = configured["env_a"], configured["storage"]
    backup = good_backup(env, storage)
    response = client_for(users["olga"]).post(f"/api/v1/backups/{backup.pk}/test-restore/")
    job = Job.objects.get(pk=response.json()["job"]["id"])
    Job.objects.filter(pk=job.pk).update(status="interrupted", reason="the worker died", finished_at=timezone.now())
    settle_backups(env)
    backup.refresh_from_db()
    assert backup.test_restore_status == "failed" and backup.test_restored_at is not None
    assert backup.test_restore_reason == f"Test restore #{job.pk} ended interrupted before it finished: the worker died"
    # A verify that died the same way.
    Backup.objects.filter(pk=backup.pk).update(verify_status="running")
    settle_backups(env)
    backup.refresh_from_db()
    assert backup.verify_status == "failed" and "verify job is gone" in backup.verify_reason


def test_the_page_shows_a_failed_verification_and_test_restore_and_offers_a_test_restore(
    configured, users, client
) -> None:
    env, storage = configured["env_a"], configured["storage"]
    backup = good_backup(env, storage)
    Backup.objects.filter(pk=backup.pk).update(
        verify_status="failed", verify_reason="1 problem: filestore/ab/abc: the SHA-256 differs",
        test_restore_status="failed", test_restored_at=timezone.now(), test_restore_reason="pg_restore failed",
    )  # fmt: skip
    client.force_login(users["olga"])
    page = client.get(f"/environments/{env.pk}/").content.decode()
    assert "verification failed" in page and "the SHA-256 differs" in page
    assert "test restore failed" in page and "pg_restore failed" in page
    assert 'data-testid="backup-test-restore-button"' in page
    response = client.post(f"/backups/{backup.pk}/test-restore/")
    job = Job.objects.get(kind=JobKind.TEST_RESTORE)
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    client.force_login(users["victor"])
    assert 'data-testid="backup-test-restore-button"' not in client.get(f"/environments/{env.pk}/").content.decode()
    assert client.post(f"/backups/{backup.pk}/test-restore/").status_code == 404
