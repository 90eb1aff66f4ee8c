"""*Backup now* and the backup list through the API and the environment page: who may start one (202 / 409 /
400 / 404), what each role sees (customers: production backups' dates and states only), and a backup whose job
died shown as interrupted, never as running or good.

No worker runs here, so the jobs these requests queue stay queued; backups that "ran" are made directly.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from backups.models import Backup, BackupSettings
from backups.services import settle_backups
from panel.accounts.models import AuditEvent
from panel.inventory.models import Environment
from panel.jobs.choices import JobKind, JobStatus
from panel.jobs.models import Job
from tests.backup_fixtures import make_local_storage

pytestmark = pytest.mark.django_db

CUSTOMER_FIELDS = {"id", "environment", "status", "started_at", "finished_at", "verified_at"}


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def configured(inventory: dict[str, Any], backup_root: Any) -> dict[str, Any]:
    """env_a (production, org A1) backs up into a local storage of A1; a staging environment beside it too."""
    env = inventory["env_a"]
    storage = make_local_storage(env.project.organization, backup_root)
    BackupSettings.objects.create(environment=env, storage=storage)
    staging = Environment.objects.create(
        project=env.project, server=env.server, name="staging", kind="staging", compose_files=["prod.yaml"],
        compose_project="shop-16-0-staging",
    )  # fmt: skip
    BackupSettings.objects.create(environment=staging, storage=storage)
    return {**inventory, "storage": storage, "staging": staging}


def ran_backup(
    environment: Environment, storage: Any, *, status: str = "good", job_status: str = "succeeded"
) -> Backup:
    job = Job.objects.create(
        kind=JobKind.BACKUP, organization=environment.project.organization, environment=environment, status=job_status
    )
    now = timezone.now()
    return Backup.objects.create(
        environment=environment, storage=storage, kind="manual", job=job, status=status,
        key_prefix=f"backups/{environment.compose_project}/{job.pk}", database_bytes=1000, filestore_bytes=2000,
        manifest={"objects": [{"key": "x"}]} if status == "good" else {}, finished_at=now if status == "good" else None,
        verified_at=now if status == "good" else None,
    )  # fmt: skip


def test_it_starts_a_backup_and_refuses_a_second_while_it_holds_the_environment(configured, users) -> None:
    env = configured["env_a"]
    response = client_for(users["olga"]).post(f"/api/v1/environments/{env.pk}/backup/")
    assert response.status_code == 202, response.content
    body = response.json()
    backup = Backup.objects.get(pk=body["backup"]["id"])
    assert body["backup"]["status"] == "running" and body["job"]["id"] == backup.job_id
    assert backup.job.kind == "backup" and backup.job.lock_key == f"environment:{env.pk}"
    assert backup.storage == configured["storage"] and backup.key_prefix.startswith("backups/shop-16-0-prod/")
    assert AuditEvent.objects.filter(action="environment.backup").exists()
    again = client_for(users["alice"]).post(f"/api/v1/environments/{env.pk}/backup/")
    assert again.status_code == 409 and again.json()["job"] == backup.job_id
    # A deploy holds the same lock: a backup never overlaps it.
    Job.objects.filter(pk=backup.job_id).update(status=JobStatus.SUCCEEDED, lock_key=None)
    Job.objects.create(kind=JobKind.DEPLOY, organization=env.project.organization, environment=env,
                       lock_key=f"environment:{env.pk}")  # fmt: skip
    assert client_for(users["olga"]).post(f"/api/v1/environments/{env.pk}/backup/").status_code == 409


def test_it_answers_400_without_a_storage_and_404_to_viewers_customers_and_strangers(configured, users) -> None:
    env = configured["env_a"]
    BackupSettings.objects.filter(environment=env).delete()
    response = client_for(users["alice"]).post(f"/api/v1/environments/{env.pk}/backup/")
    assert response.status_code == 400 and "no backup storage" in response.json()["detail"]
    for name in ("victor", "carol", "bob"):
        assert client_for(users[name]).post(f"/api/v1/environments/{env.pk}/backup/").status_code == 404, name
    assert not Backup.objects.exists()


def test_customers_see_only_production_backups_dates_and_states(configured, users) -> None:
    prod = ran_backup(configured["env_a"], configured["storage"])
    staging = ran_backup(configured["staging"], configured["storage"])
    staff = client_for(users["victor"]).get("/api/v1/backups/").json()
    assert {item["id"] for item in staff["results"]} == {prod.pk, staging.pk}
    assert staff["results"][0]["size"] == 3000
    customer = client_for(users["carol"]).get("/api/v1/backups/").json()
    assert [item["id"] for item in customer["results"]] == [prod.pk]
    assert set(customer["results"][0]) == CUSTOMER_FIELDS
    assert client_for(users["carol"]).get(f"/api/v1/backups/{staging.pk}/").status_code == 404
    assert client_for(users["bob"]).get(f"/api/v1/backups/{prod.pk}/").status_code == 404
    assert client_for(users["bob"]).get("/api/v1/backups/").json()["results"] == []
    assert client_for(users["victor"]).get("/api/v1/backups/?environment=x").status_code == 400


def test_a_backup_whose_job_died_is_interrupted_never_running_or_good(configured, users) -> None:
    backup = ran_backup(configured["env_a"], configured["storage"], status="running", job_status="running")
    assert settle_backups() == 0
    Job.objects.filter(pk=backup.job_id).update(status=JobStatus.INTERRUPTED, reason="The worker stopped responding.")
    listed = client_for(users["alice"]).get(f"/api/v1/backups/?environment={configured['env_a'].pk}").json()
    assert listed["results"][0]["status"] == "interrupted"
    backup.refresh_from_db()
    assert backup.status == "interrupted" and "worker stopped responding" in backup.reason and backup.finished_at


def test_the_environment_page_lists_backups_with_a_backup_now_button(configured, users, client) -> None:
    env, staging = configured["env_a"], configured["staging"]
    ran_backup(env, configured["storage"])
    ran_backup(env, configured["storage"], status="failed", job_status="failed")
    client.force_login(users["olga"])
    page = client.get(f"/environments/{env.pk}/").content.decode()
    assert 'data-testid="backup-now"' in page and page.count('data-testid="backup-row"') == 2
    assert "2.9\xa0KB" in page and "Manual" in page and ">good<" in page and ">failed<" in page
    response = client.post(f"/environments/{env.pk}/backup/")
    backup = Backup.objects.get(status="running")
    assert response.status_code == 302 and response["Location"] == f"/jobs/{backup.job_id}/"
    client.force_login(users["victor"])
    assert 'data-testid="backup-now"' not in client.get(f"/environments/{env.pk}/").content.decode()
    assert client.post(f"/environments/{env.pk}/backup/").status_code == 404
    client.force_login(users["carol"])
    page = client.get(f"/environments/{env.pk}/").content.decode()
    section = page.partition('data-testid="backups"')[2]
    assert section.count('data-testid="backup-row"') == 3 and ">good<" in section
    assert "KB" not in section and "Manual" not in section and "job #" not in section and "backup-now" not in section
    ran_backup(staging, configured["storage"])
    assert 'data-testid="backups"' not in client.get(f"/environments/{staging.pk}/").content.decode()


def test_backup_settings_validate_the_schedule_and_the_storage_organization(configured, users) -> None:
    from django.core.exceptions import ValidationError

    from backups.services import BackupRun

    config = BackupSettings.objects.get(environment=configured["env_a"])
    config.schedule, config.time_zone = "0 3 * * *", "Europe/Madrid"
    config.full_clean()
    for schedule, zone, message in (
        ("* * * * *", "UTC", "at most every 1 hour"),
        ("0 3 * *", "UTC", "five"),
        ("0 3 * * *", "Mars/Olympus", "time zone"),
    ):
        config.schedule, config.time_zone = schedule, zone
        with pytest.raises(ValidationError, match=message) as raised:
            config.full_clean()
        assert set(raised.value.message_dict) == {"schedule"}
    config.schedule, config.time_zone = "", "UTC"
    config.storage = make_local_storage(configured["env_b"].project.organization, configured["storage"].path, name="b")
    with pytest.raises(ValidationError, match="organization"):
        config.full_clean()
    # zstd/lz4 only where pg_dump has them (16+); gzip before.
    run = BackupRun.__new__(BackupRun)
    assert run.compression(15) == ["--compress=6"] and run.compression(16) == ["--compress=zstd"]


def test_staff_set_an_environments_backup_storage_and_schedule(configured, users, backup_root) -> None:
    env = configured["env_a"]
    BackupSettings.objects.filter(environment=env).delete()
    url = f"/api/v1/environments/{env.pk}/backup-settings/"
    assert client_for(users["olga"]).get(url).status_code == 404
    missing = client_for(users["olga"]).patch(url, {"schedule": "0 3 * * *"}, format="json")
    assert missing.status_code == 400 and "storage" in missing.json()
    body = {"storage": configured["storage"].pk, "schedule": "30 2 * * *", "time_zone": "Europe/Madrid"}
    response = client_for(users["olga"]).patch(url, body, format="json")
    assert response.status_code == 200, response.content
    # The test restores keep their defaults (weekly, on the environment's own server).
    stored = {**body, "test_restore_schedule": "0 4 * * 0", "test_restore_server": None}
    assert response.json() == stored
    assert client_for(users["victor"]).get(url).json() == stored
    assert AuditEvent.objects.filter(action="environment.backup_settings").exists()
    for name in ("victor", "carol", "bob"):
        assert client_for(users[name]).patch(url, body, format="json").status_code == 404, name
    for name in ("carol", "bob"):
        assert client_for(users[name]).get(url).status_code == 404, name
    bad = client_for(users["olga"]).patch(url, {**body, "schedule": "* * * * *"}, format="json")
    assert bad.status_code == 400 and "schedule" in bad.json()
    bad = client_for(users["olga"]).patch(url, {**body, "time_zone": "Mars/Olympus"}, format="json")
    assert bad.status_code == 400 and "schedule" in bad.json()
    # The provider's own storage is visible to its staff, but not the environment's organization's.
    provider = make_local_storage(users["olga"].memberships.first().organization, backup_root, name="provider")
    bad = client_for(users["olga"]).patch(url, {**body, "storage": provider.pk}, format="json")
    assert bad.status_code == 400 and "storage" in bad.json()
    stranger = make_local_storage(configured["env_b"].project.organization, backup_root, name="stranger")
    assert client_for(users["olga"]).patch(url, {**body, "storage": stranger.pk}, format="json").status_code == 400
    assert BackupSettings.objects.get(environment=env).schedule == "30 2 * * *"
    # After that, one field alone.
    response = client_for(users["alice"]).patch(url, {"schedule": ""}, format="json")
    assert response.status_code == 200 and response.json()["storage"] == configured["storage"].pk


def test_staff_verify_a_good_backup_through_the_api_and_nobody_else_can(configured, users) -> None:
    good = ran_backup(configured["env_a"], configured["storage"])
    failed = ran_backup(configured["env_a"], configured["storage"], status="failed", job_status="failed")
    response = client_for(users["olga"]).post(f"/api/v1/backups/{good.pk}/verify/")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["job"]["id"])
    assert job.kind == JobKind.VERIFY and job.params["backup_id"] == good.pk
    # One verify at a time per backup; nothing to verify in a failed one.
    again = client_for(users["olga"]).post(f"/api/v1/backups/{good.pk}/verify/")
    assert again.status_code == 409 and again.json()["job"] == job.pk
    refused = client_for(users["olga"]).post(f"/api/v1/backups/{failed.pk}/verify/")
    assert refused.status_code == 400 and refused.json()["detail"]
    # A viewer, a customer and another organization get 404, and no job.
    for name in ("victor", "carol", "bob"):
        assert client_for(users[name]).post(f"/api/v1/backups/{good.pk}/verify/").status_code == 404, name
    assert Job.objects.filter(kind=JobKind.VERIFY).count() == 1


def test_staff_restore_a_backup_and_copy_production_through_the_api(configured, users) -> None:
    production, staging = configured["env_a"], configured["staging"]
    good = ran_backup(production, configured["storage"])
    Backup.objects.filter(pk=good.pk).update(manifest={"objects": [{"key": "x"}], "odoo": {"image_version": "16.0"}})
    olga = client_for(users["olga"])
    # Over production the environment's name must be typed; a backup of another project or a failed one is refused.
    refused = olga.post(f"/api/v1/environments/{production.pk}/restore/", {"backup": good.pk}, format="json")
    assert refused.status_code == 400 and production.name in refused.json()["confirm"][0]
    failed = ran_backup(production, configured["storage"], status="failed", job_status="failed")
    body = {"backup": failed.pk, "confirm": production.name}
    refused = olga.post(f"/api/v1/environments/{production.pk}/restore/", body, format="json")
    assert refused.status_code == 400 and "only good backups restore" in refused.json()["detail"]
    other = olga.post(f"/api/v1/environments/{production.pk}/restore/", {"backup": 10**9}, format="json")
    assert other.status_code == 400 and other.json() == {"backup": ["No such backup of this project."]}
    # Production's backup into staging (no confirmation needed there), then a second job on staging is busy.
    started = olga.post(f"/api/v1/environments/{staging.pk}/restore/", {"backup": good.pk}, format="json")
    assert started.status_code == 202, started.content
    job = Job.objects.get(pk=started.json()["job"]["id"])
    assert job.kind == JobKind.RESTORE and job.params == {"environment_id": staging.pk, "backup_id": good.pk}
    busy = olga.post(f"/api/v1/environments/{staging.pk}/copy-production/")
    assert busy.status_code == 409 and busy.json()["job"] == job.pk
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED)
    copy = olga.post(f"/api/v1/environments/{staging.pk}/copy-production/")
    assert copy.status_code == 202, copy.content
    assert Job.objects.get(pk=copy.json()["job"]["id"]).params["backup_id"] == good.pk
    # Copying into production itself is refused; viewers, customers and strangers get 404.
    assert olga.post(f"/api/v1/environments/{production.pk}/copy-production/").status_code == 400
    for name in ("victor", "carol", "bob"):
        response = client_for(users[name]).post(f"/api/v1/environments/{staging.pk}/restore/", {"backup": good.pk})
        assert response.status_code == 404, name
    assert Job.objects.filter(kind=JobKind.RESTORE).count() == 2
