"""Backups in a real browser against the lab: *Backup now* on production's page with its progress drawn live, then
*Copy production to staging* on staging's page, confirmed, and staging healthy with production's data, neutralized,
while production is untouched.

Runs against uvicorn (HTTP + websockets), a real Celery worker and the lab host ``lab1``.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import pytest

# Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run in one unless told.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

from playwright.sync_api import Browser, Page

from backups.models import Backup
from panel.jobs.models import Job
from tests.test_backup_lab import FILESTORE, ODOO
from tests.test_browser_deploy import log_in
from tests.test_restore_lab import (
    STAGING_KEY,
    attach,
    content_named,
    deployed,
    dump_hash,
    filestore_hashes,
    setup_backups,
    sql,
    staging,
)

pytestmark = [pytest.mark.browser, pytest.mark.lab, pytest.mark.django_db(transaction=True)]

__all__ = ["deployed", "staging"]  # fixtures

# Records every text the job page's progress shows, with the job's status at that moment.
RECORD = """
window.__progress = [];
new MutationObserver(() => {
  const text = document.querySelector('[data-job-progress-text]');
  const badge = document.querySelector('[data-testid="job-status"]');
  const shown = text && !text.closest('[hidden]') ? text.textContent.trim() : '';
  const last = window.__progress[window.__progress.length - 1];
  if (shown && (!last || last.text !== shown)) {
    window.__progress.push({text: shown, status: badge ? badge.textContent.trim() : ''});
  }
}).observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
"""
FINISHED = (
    "() => { const b = document.querySelector('[data-testid=\"job-status\"]');"
    " return b && ['succeeded','failed','canceled','interrupted'].includes(b.textContent.trim()); }"
)


def fill_filestore(host: Any, files: int, megabytes: int) -> None:
    """``files`` content-named random files of ``megabytes`` each, written inside the odoo container (fast)."""
    script = (
        f"for i in $(seq {files}); do head -c {megabytes}M /dev/urandom > {FILESTORE}/new; "
        f"s=$(sha1sum {FILESTORE}/new | cut -c1-40); d={FILESTORE}/$(echo $s | cut -c1-2); "
        f"mkdir -p $d && mv {FILESTORE}/new $d/$s; done"
    )
    result = host.ssh("docker", "exec", "-u", "odoo", ODOO, "sh", "-c", script, timeout=300)
    assert result.returncode == 0, result.stderr


def finished_job(page: Page) -> Job:
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    job = Job.objects.get(pk=int(page.url.rstrip("/").rsplit("/", 1)[1]))
    page.wait_for_function(FINISHED, timeout=240_000)
    job.refresh_from_db()
    return job


def test_it_backs_up_with_live_progress_and_copies_production_to_staging_from_the_page(
    live_server_url: str, deployed: Any, staging: Any, jobs_worker: Any, lab1: Any, users: Any, browser: Browser
) -> None:
    setup_backups(deployed)
    sql(lab1, "CREATE TABLE orders (id int PRIMARY KEY, customer text)")
    sql(lab1, "INSERT INTO orders SELECT g, 'customer ' || g FROM generate_series(1, 300) g")
    sql(lab1, "INSERT INTO ir_config_parameter (key, value) VALUES ('database.uuid', 'prod-uuid') "
              "ON CONFLICT (key) DO UPDATE SET value = 'prod-uuid'")  # fmt: skip
    document = os.urandom(10_000)
    attach(lab1, {content_named(document): document})
    # Enough filestore (random, so it does not compress) that the backup takes a few seconds to watch.
    fill_filestore(lab1, files=24, megabytes=8)

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.add_init_script(RECORD)
    log_in(page, live_server_url, "alice")

    # Backup now, on production's page: the job page draws the progress live, in bytes and percent.
    page.goto(f"{live_server_url}/environments/{deployed.pk}/")
    page.get_by_test_id("backup-now").click()
    job = finished_job(page)
    assert job.status == "succeeded", job.reason
    backup = Backup.objects.get(job=job)
    assert backup.status == "good" and backup.filestore_bytes > 190 * 2**20
    seen = page.evaluate("window.__progress")
    live = [entry for entry in seen if entry["status"] == "running" and re.search(r"\(\d+ %\)$", entry["text"])]
    assert live, seen
    assert any(entry["text"].startswith("Backing up the filestore: ") for entry in live), seen
    production_dump, production_files = dump_hash(lab1), filestore_hashes(lab1)
    # The backup is listed on production's page, good, with its size.
    page.goto(f"{live_server_url}/environments/{deployed.pk}/")
    row = page.get_by_test_id("backup-row").first
    assert "good" in row.inner_text() and "MB" in row.inner_text()

    # Copy production to staging, on staging's page: the confirmation names the target.
    page.goto(f"{live_server_url}/environments/{staging.pk}/")
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.get_by_test_id("copy-production").click()
    job = finished_job(page)
    assert dialogs and "into test?" in dialogs[0] and "neutralized" in dialogs[0], dialogs
    assert job.status == "succeeded", job.reason
    assert job.environment_id == staging.pk and job.params["backup_id"] == backup.pk
    page.goto(f"{live_server_url}/environments/{staging.pk}/")
    assert page.get_by_test_id("environment-state").inner_text().strip().startswith("running")

    def staging_sql(query: str) -> str:
        result = lab1.ssh("docker", "exec", f"{STAGING_KEY}-db-1", "psql", "-U", "odoo", "-d", "prod", "-tAc", query)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    # Staging serves production's data, neutralized.
    assert staging_sql("SELECT count(*) FROM orders") == "300"
    assert staging_sql("SELECT count(*) FROM ir_mail_server WHERE active AND smtp_host <> 'invalid'") == "0"
    assert staging_sql("SELECT string_agg(name, ',') FROM ir_cron WHERE active") == "Base: Auto-vacuum internal data"
    assert staging_sql("SELECT value FROM ir_config_parameter WHERE key = 'database.is_neutralized'") == "true"
    assert staging_sql("SELECT value FROM ir_config_parameter WHERE key = 'database.uuid'") not in ("", "prod-uuid")
    assert staging_sql("SELECT value FROM ir_config_parameter WHERE key = 'web.base.url'") == (
        "https://test.panel-demo.example.com"
    )
    result = lab1.ssh("docker", "exec", f"{STAGING_KEY}-odoo-1", "sha256sum", f"{FILESTORE}/{content_named(document)}")
    assert result.stdout.split()[0] == hashlib.sha256(document).hexdigest()
    staging_health = lab1.ssh(
        "docker", "exec", f"{STAGING_KEY}-odoo-1", "curl", "-fsS", "http://localhost:8069/web/health"
    )
    assert '"pass"' in staging_health.stdout
    # Production is untouched, and not neutralized.
    assert dump_hash(lab1) == production_dump and filestore_hashes(lab1) == production_files
    assert sql(lab1, "SELECT count(*) FROM ir_config_parameter WHERE key = 'database.is_neutralized'") == "0"
    assert not problems, problems
