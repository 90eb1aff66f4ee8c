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


@pytest.mark.parametrize("xml_ids", [True, False], ids=["ir_model_data", "by-name"])
def test_it_neutralizes_an_odoo_before_16_in_sql(xml_ids: bool) -> None:
    """The SQL run for Odoo < 16 (no ``odoo neutralize``), on real PostgreSQL tables shaped like Odoo's."""
    from django.db import connection

    from backups.restore import NEUTRALIZE_SQL

    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE ir_mail_server (id serial PRIMARY KEY, name varchar, active boolean DEFAULT true);"
            "CREATE TABLE ir_cron (id serial PRIMARY KEY, name varchar, active boolean DEFAULT true);"
            "CREATE TABLE ir_config_parameter (id serial PRIMARY KEY, key varchar UNIQUE NOT NULL, value text);"
            "INSERT INTO ir_mail_server (name) VALUES ('smtp'), ('other smtp');"
            "INSERT INTO ir_cron (name) VALUES ('Base: Auto-vacuum internal data'), ('Mail: Email Queue Manager'),"
            " ('Renamed vacuum');"
        )
        if xml_ids:
            # Odoo finds the autovacuum cron by its XML id, whatever it is called (here: renamed).
            cursor.execute(
                "CREATE TABLE ir_model_data (id serial PRIMARY KEY, module varchar, name varchar, model varchar,"
                " res_id integer); INSERT INTO ir_model_data (module, name, model, res_id)"
                " VALUES ('base', 'autovacuum_job', 'ir.cron', 3), ('mail', 'ir_cron_mail_scheduler_action', 'ir.cron', 2)"
            )
        cursor.execute(NEUTRALIZE_SQL)
        cursor.execute("SELECT count(*) FROM ir_mail_server WHERE active")
        assert cursor.fetchone() == (0,)
        cursor.execute("SELECT name FROM ir_cron WHERE active")
        kept = "Renamed vacuum" if xml_ids else "Base: Auto-vacuum internal data"
        assert cursor.fetchall() == [(kept,)]
        cursor.execute("SELECT value FROM ir_config_parameter WHERE key = 'database.is_neutralized'")
        assert cursor.fetchall() == [("true",)]
        cursor.execute(NEUTRALIZE_SQL)  # twice: still one flag
        cursor.execute("SELECT count(*) FROM ir_config_parameter")
        assert cursor.fetchone() == (1,)
