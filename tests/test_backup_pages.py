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
    Backup.objects.filter(pk=good.pk).update(manifest={"objects": [{"key": "x"}], "odoo": {"image_version": "16.0"}})
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
