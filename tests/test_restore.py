"""Starting a restore (no server needed): what is refused before a job exists, and *Copy production to staging*
choosing production's newest good backup."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from backups.models import Backup, BackupStorage
from backups.restore import RestoreRefused, copy_production_to, start_restore
from panel.inventory.models import Environment
from panel.jobs.models import Job

pytestmark = pytest.mark.django_db

MANIFEST = {"odoo": {"image_version": "16.0", "base_version": "16.0.1.3"}, "postgresql": {"pg_dump_major": 15}}


@pytest.fixture
def staging(inventory: dict[str, Any]) -> Environment:
    return Environment.objects.create(
        project=inventory["project_a"], server=inventory["server_a"], name="staging", kind="staging",
        compose_files=["prod.yaml"], compose_project="shop-16-0-staging",
    )  # fmt: skip


def make_backup(environment: Environment, status: str = "good", age_hours: float = 1, **fields: Any) -> Backup:
    storage = BackupStorage.objects.get_or_create(
        organization=environment.project.organization, name="local", kind="local", path="/tmp/backups-test"
    )[0]
    finished = timezone.now() - timedelta(hours=age_hours)
    return Backup.objects.create(
        environment=environment, storage=storage, kind="manual", status=status, job=None,
        key_prefix=f"backups/{environment.compose_project}/{finished:%Y%m%dT%H%M%S%f}",
        manifest=fields.pop("manifest", MANIFEST), started_at=finished - timedelta(minutes=5),
        finished_at=finished if status == "good" else None, **fields,
    )  # fmt: skip


def test_it_copies_productions_newest_good_backup_into_staging(inventory, staging, users) -> None:
    production = inventory["env_a"]
    make_backup(production, age_hours=30)
    newest = make_backup(production, age_hours=2)
    make_backup(production, status="failed", age_hours=0.5)
    make_backup(staging, age_hours=0.1)  # staging's own backups are not production's
    job = copy_production_to(staging, users["alice"])
    assert job.kind == "restore" and job.environment == staging
    assert job.params == {"environment_id": staging.pk, "backup_id": newest.pk}
    assert job.lock_key == f"environment:{staging.pk}"


def test_it_refuses_to_copy_into_production_or_without_a_good_backup(inventory, staging, users) -> None:
    with pytest.raises(RestoreRefused, match="Production is the source"):
        copy_production_to(inventory["env_a"], users["alice"])
    make_backup(inventory["env_a"], status="failed")
    with pytest.raises(RestoreRefused, match="has no good backup yet"):
        copy_production_to(staging, users["alice"])
    assert not Job.objects.exists()


def test_it_refuses_a_backup_that_is_not_good_of_another_project_or_odoo_version(inventory, staging, users) -> None:
    with pytest.raises(RestoreRefused, match="is failed: only good backups restore"):
        start_restore(backup=make_backup(inventory["env_a"], status="failed"), target=staging, actor=users["alice"])
    other = make_backup(inventory["env_b"])
    with pytest.raises(RestoreRefused, match="only into an environment of its own project"):
        start_restore(backup=other, target=staging, actor=users["alice"])
    old = make_backup(inventory["env_a"], manifest={**MANIFEST, "odoo": {"image_version": "15.0"}})
    with pytest.raises(RestoreRefused, match=r"is of Odoo 15\.0, and .* runs Odoo 16\.0"):
        start_restore(backup=old, target=staging, actor=users["alice"])
    unknown = make_backup(inventory["env_a"], manifest={"postgresql": {"pg_dump_major": 15}})
    with pytest.raises(RestoreRefused, match="does not say which Odoo version made it"):
        start_restore(backup=unknown, target=staging, actor=users["alice"])
    assert not Job.objects.exists()
