"""The environment page's restore and copy buttons (no worker: the queued jobs stay queued).

A restore from the page names the backup and the target; over production the target's name must be typed; odd
input and people who may not change the target get 404 or the form again, never a job; while a restore is queued the
environment says *restoring*.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from backups.models import Backup, BackupSettings
from panel.inventory.models import Environment
from panel.inventory.services import environment_state
from panel.jobs.choices import JobKind, JobStatus
from panel.jobs.models import Job
from tests.backup_fixtures import make_local_storage
from tests.test_backup_api import ran_backup

pytestmark = pytest.mark.django_db


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def project_backups(inventory: dict[str, Any], backup_root: Any) -> dict[str, Any]:
    """Production (env_a) with a good backup of Odoo 16.0, and a staging environment beside it."""
    production = inventory["env_a"]
    storage = make_local_storage(production.project.organization, backup_root)
    BackupSettings.objects.create(environment=production, storage=storage)
    staging = Environment.objects.create(
        project=production.project, server=production.server, name="staging", kind="staging",
        compose_files=["prod.yaml"], compose_project="shop-16-0-staging",
    )  # fmt: skip
    good = ran_backup(production, storage)
    dump = {"key": f"{good.key_prefix}/database.dump", "role": "database", "size": 1000, "sha256": "ab12" * 16}
    Backup.objects.filter(pk=good.pk).update(manifest={"objects": [dump], "odoo": {"image_version": "16.0"}})
    return {**inventory, "production": production, "staging": staging, "good": good}


def test_it_restores_from_the_page_naming_the_target_and_asking_for_production_s_name(
    project_backups: dict[str, Any], users: dict[str, Any]
) -> None:
    production, staging, good = project_backups["production"], project_backups["staging"], project_backups["good"]
    olga = browser(users["olga"])
    page = olga.get(f"/environments/{production.pk}/").content.decode()
    assert f'href="/backups/{good.pk}/restore/?target={production.pk}"' in page
    # Without a target the page lists the project's environments to choose from.
    choose = olga.get(f"/backups/{good.pk}/restore/").content.decode()
    assert f"?target={staging.pk}" in choose and f"?target={production.pk}" in choose
    confirm = olga.get(f"/backups/{good.pk}/restore/?target={production.pk}").content.decode()
    assert f"Restore backup #{good.pk} into prod?" in confirm and 'name="confirm"' in confirm
    # A wrong or missing name queues nothing and says what to type.
    for typed in ("", "staging", " pro d"):
        response = olga.post(f"/backups/{good.pk}/restore/", {"target": production.pk, "confirm": typed})
        assert response.status_code == 200 and "Type the environment&#x27;s name (prod)" in response.content.decode()
    assert not Job.objects.filter(kind=JobKind.RESTORE).exists()
    response = olga.post(f"/backups/{good.pk}/restore/", {"target": production.pk, "confirm": "prod"})
    job = Job.objects.get(kind=JobKind.RESTORE)
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.environment == production and job.params["backup_id"] == good.pk
    assert environment_state(production).code == "restoring"
    # Staging needs no typed name; while production's restore is queued, staging is free.
    staging_confirm = olga.get(f"/backups/{good.pk}/restore/?target={staging.pk}").content.decode()
    assert 'name="confirm"' not in staging_confirm and "neutralized" in staging_confirm
    response = olga.post(f"/backups/{good.pk}/restore/", {"target": staging.pk})
    assert response.status_code == 302 and Job.objects.filter(kind=JobKind.RESTORE, environment=staging).exists()
    # A second restore of staging while one is queued: back to the page with the busy message, no job.
    response = olga.post(f"/backups/{good.pk}/restore/", {"target": staging.pk}, follow=True)
    assert "Another job is already running" in response.content.decode()
    assert Job.objects.filter(kind=JobKind.RESTORE).count() == 2


def test_it_offers_copy_production_on_staging_only_once_production_has_a_good_backup(
    project_backups: dict[str, Any], users: dict[str, Any]
) -> None:
    production, staging, good = project_backups["production"], project_backups["staging"], project_backups["good"]
    olga = browser(users["olga"])
    assert 'data-testid="copy-production"' not in olga.get(f"/environments/{production.pk}/").content.decode()
    page = olga.get(f"/environments/{staging.pk}/").content.decode()
    assert 'data-testid="copy-production"' in page and "into staging?" in page
    response = olga.post(f"/environments/{staging.pk}/copy-production/")
    job = Job.objects.get(kind=JobKind.RESTORE)
    assert response["Location"] == f"/jobs/{job.pk}/" and job.params["backup_id"] == good.pk
    # Without a good production backup there is no button, and a forged POST says why.
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED, lock_key=None)
    Backup.objects.filter(pk=good.pk).update(status="failed")
    assert 'data-testid="copy-production"' not in olga.get(f"/environments/{staging.pk}/").content.decode()
    response = olga.post(f"/environments/{staging.pk}/copy-production/", follow=True)
    assert "has no good backup yet" in response.content.decode()
    assert Job.objects.filter(kind=JobKind.RESTORE).count() == 1


@pytest.mark.parametrize("who", ["victor", "carol", "bob"])
def test_people_who_may_not_change_the_target_get_404_and_no_job(
    who: str, project_backups: dict[str, Any], users: dict[str, Any]
) -> None:
    staging, good = project_backups["staging"], project_backups["good"]
    client = browser(users[who])
    assert client.get(f"/backups/{good.pk}/restore/?target={staging.pk}").status_code == 404
    assert client.post(f"/backups/{good.pk}/restore/", {"target": staging.pk}).status_code == 404
    assert client.post(f"/environments/{staging.pk}/copy-production/").status_code == 404
    assert not Job.objects.filter(kind=JobKind.RESTORE).exists()


def test_odd_targets_answer_404_never_500(project_backups: dict[str, Any], users: dict[str, Any]) -> None:
    good, other = project_backups["good"], project_backups["env_b"]
    olga = browser(users["olga"])
    for target in ("abc", "0", "-1", "1e3", "²", str(2**70), "1\x00", str(other.pk)):
        expected = 400 if "\x00" in target else 404  # NUL anywhere is refused before any view runs
        assert olga.get(f"/backups/{good.pk}/restore/", {"target": target}).status_code == expected, target
        assert olga.post(f"/backups/{good.pk}/restore/", {"target": target}).status_code == expected, target
    assert olga.get("/backups/999999/restore/").status_code == 404
    assert not Job.objects.filter(kind=JobKind.RESTORE).exists()


def test_the_list_shows_age_location_and_checksum_to_staff_only(
    project_backups: dict[str, Any], users: dict[str, Any]
) -> None:
    production, good = project_backups["production"], project_backups["good"]
    staff = browser(users["victor"]).get(f"/environments/{production.pk}/").content.decode()
    assert f"{good.storage.name}: {good.key_prefix}/ · sha256 ab12ab12ab12…" in staff
    assert "ago</span>" in staff
    customer = browser(users["carol"]).get(f"/environments/{production.pk}/").content.decode()
    assert 'data-testid="backup-row"' in customer and good.key_prefix not in customer and "ab12ab12" not in customer


def test_it_restores_into_a_new_environment_from_the_page_and_the_api(
    project_backups: dict[str, Any], users: dict[str, Any]
) -> None:
    from rest_framework.test import APIClient

    production, good = project_backups["production"], project_backups["good"]
    olga = browser(users["olga"])
    form = olga.get(f"/backups/{good.pk}/restore/?target=new").content.decode()
    assert 'data-testid="restore-new-form"' in form and f'value="restore-{good.pk}"' in form
    body = {"target": "new", "name": "recovered", "kind": "test", "server": production.server_id,
            "compose_files_text": "test.yaml", "git_ref": "main", "workers": 2, "cron_threads": 1,
            "backup_keep_daily": 7}  # fmt: skip
    response = olga.post(f"/backups/{good.pk}/restore/", body)
    created = Environment.objects.get(project=production.project, name="recovered")
    job = Job.objects.get(kind=JobKind.RESTORE, environment=created)
    assert response["Location"] == f"/jobs/{job.pk}/"
    assert job.params == {"environment_id": created.pk, "backup_id": good.pk, "deploy_first": True}
    assert created.kind == "test" and created.compose_files == ["test.yaml"] and created.current_deployment is None
    # The name is taken now: the form says so and nothing more is created.
    again = olga.post(f"/backups/{good.pk}/restore/", body)
    assert again.status_code == 200 and Environment.objects.filter(name="recovered").count() == 1
    api = APIClient()
    api.force_authenticate(users["olga"])
    started = api.post(f"/api/v1/backups/{good.pk}/restore-into-new/",
                       {"name": "recovered-2", "server": production.server_id}, format="json")  # fmt: skip
    assert started.status_code == 202, started.content
    second = Environment.objects.get(name="recovered-2")
    assert second.kind == "test" and second.compose_files == production.compose_files
    assert Job.objects.get(pk=started.json()["job"]["id"]).params["deploy_first"] is True
    for body in ({"name": "recovered-2", "server": production.server_id}, {"name": "x y", "server": production.server_id},
                 {"name": "other", "server": project_backups["server_b"].pk}, {"name": "n"}):  # fmt: skip
        refused = api.post(f"/api/v1/backups/{good.pk}/restore-into-new/", body, format="json")
        assert refused.status_code in (400, 403), (body, refused.content)
    assert Environment.objects.filter(project=production.project).count() == 4
    viewer = APIClient()
    viewer.force_authenticate(users["victor"])
    response = viewer.post(f"/api/v1/backups/{good.pk}/restore-into-new/",
                           {"name": "nope", "server": production.server_id}, format="json")  # fmt: skip
    assert response.status_code == 404
