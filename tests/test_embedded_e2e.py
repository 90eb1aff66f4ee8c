"""The one-command panel end to end: ``python -m panel.launcher`` as the README runs it (SQLite, embedded Redis,
its own web, worker and beat), used only through HTTP as a person and a script would.

A person logs in with the printed first login, adds lab1 and lab2 with the HTML forms, checks and confirms
their fingerprints; a token made through the API sets up the sample project. Then validations of both servers
and a deploy run at the same time, twice: every job succeeds, and neither log shows "database is locked" or a
traceback (the first Validate of a fresh panel used to die with "database is locked"). Meanwhile beat polls the
fleet and rolls up history on SQLite: the deployed environment turns up, with its uptime, on the dashboard.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.deploy_fixtures import KEY, clean_host, health
from tests.lab_helpers import TERMINAL
from tests.launcher_helpers import RunningPanel, start_panel

pytestmark = pytest.mark.lab


def add_server(panel: RunningPanel, organization: str, host: Any) -> int:
    """Add a lab host with the HTML form, compare the fingerprint shown with the host's own, confirm it."""
    status, url, page = panel.post_form(
        "/servers/new/",
        {"organization": organization, "name": host.name, "host": host.address, "port": str(host.port),
         "username": host.username, "private_key": host.private_key_pem},
    )  # fmt: skip
    match = re.search(r"/servers/(\d+)/confirm/$", url)
    assert status == 200 and match, page[-3000:]
    shown = re.search(r'data-testid="fingerprint">([^<]+)<', page)
    assert shown and shown.group(1) == host.host_key_fingerprint, "the page shows the key the host really has"
    server_id = int(match.group(1))
    status, url, page = panel.post_form(f"/servers/{server_id}/confirm/", {"fingerprint": shown.group(1)})
    assert status == 200 and url.endswith(f"/servers/{server_id}/"), page[-3000:]
    return server_id


def validate(panel: RunningPanel, server_id: int) -> int:
    """Click *Validate*: the page goes to the new job."""
    status, url, page = panel.post_form(f"/servers/{server_id}/validate/", {})
    match = re.search(r"/jobs/(\d+)/$", url)
    assert status == 200 and match, f"{status} {url}\n{page[-3000:]}"
    return int(match.group(1))


def wait_jobs(panel: RunningPanel, token: str, job_ids: list[int], timeout: float = 300) -> dict[int, Any]:
    deadline = time.monotonic() + timeout
    jobs: dict[int, Any] = {}
    while time.monotonic() < deadline:
        for job_id in job_ids:
            status, body = panel.api("GET", f"/api/v1/jobs/{job_id}/", token)
            assert status == 200, body
            jobs[job_id] = body
        if all(job["status"] in TERMINAL for job in jobs.values()):
            return jobs
        time.sleep(0.5)
    raise AssertionError(f"jobs still running after {timeout}s: {jobs}\n{panel.log_text()[-5000:]}")


def job_log(panel: RunningPanel, token: str, job_id: int) -> str:
    status, body = panel.api("GET", f"/api/v1/jobs/{job_id}/lines/?limit=1000", token)
    return "\n".join(line["text"] for line in body["lines"]) if status == 200 else str(body)


def at_once(*calls: Callable[[], int]) -> list[int]:
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


def test_it_validates_two_servers_and_deploys_at_once_on_sqlite_with_no_internal_error(
    tmp_path: Path, lab1: Any, lab2: Any, lab_sample: Any
) -> None:
    clean_host(lab1)
    # Monitoring runs on SQLite too: beat polls every 5 s and rolls up every 10 s, during the deploys.
    panel = start_panel(tmp_path, MONITOR_INTERVAL="5", MONITOR_ROLLUP_INTERVAL="10")
    pids = list(panel.children().values())
    try:
        assert panel.username in panel.login()
        status, page = panel.get("/servers/new/")
        assert status == 200, page
        organization = re.search(r'<select name="organization"[^>]*>\s*<option value="(\d+)"', page)
        assert organization, page
        servers = [add_server(panel, organization.group(1), host) for host in (lab1, lab2)]

        status, body = panel.api("POST", "/api/v1/tokens/", body={"name": "e2e", "scope": "write"})
        assert status == 201, body
        token = body["token"]
        status, project = panel.api(
            "POST", "/api/v1/projects/", token,
            {"organization": int(organization.group(1)), "name": "Panel demo", "slug": "panel-demo",
             "git_url": str(lab_sample.sample_repo_path), "odoo_version": "16.0"},
        )  # fmt: skip
        assert status == 201, project
        status, environment = panel.api(
            "POST", "/api/v1/environments/", token,
            {"project": project["id"], "server": servers[0], "name": "prod", "kind": "production",
             "compose_files": ["prod.yaml"], "git_ref": "main"},
        )  # fmt: skip
        assert status == 201, environment
        assert environment["compose_project"] == KEY

        def deploy() -> int:
            status, body = panel.api("POST", f"/api/v1/environments/{environment['id']}/deploy/", token, {})
            assert status == 202, body
            return int(body["job"]["id"])

        # The first deploy initialises the database; the second one dumps it first (production) and updates it.
        for round_ in (1, 2):
            job_ids = at_once(lambda: validate(panel, servers[0]), lambda: validate(panel, servers[1]), deploy)
            jobs = wait_jobs(panel, token, job_ids)
            for job_id, job in jobs.items():
                assert job["status"] == "succeeded", (
                    f"round {round_}: job {job_id} ({job['kind']}) {job['status']}: {job['reason']}\n"
                    + job_log(panel, token, job_id)[-3000:]
                )
        for server_id in servers:
            status, server = panel.api("GET", f"/api/v1/servers/{server_id}/", token)
            assert status == 200 and server["status"] == "ok", server
        status, environment = panel.api("GET", f"/api/v1/environments/{environment['id']}/", token)
        assert status == 200 and environment["state"] == "running", environment
        assert health(lab1) == {"status": "pass"}
        status, page = panel.get(f"/servers/{servers[0]}/")
        assert status == 200, page[-2000:]

        # Beat's poll cycles reach the running environment: it is up, with its uptime measured, on the dashboard.
        deadline = time.monotonic() + 90
        while True:
            status, state = panel.api("GET", f"/api/v1/environments/{environment['id']}/health/", token)
            assert status == 200, state
            if state["state"] == "up" and state["uptime"]["24h"] is not None:
                break
            assert time.monotonic() < deadline, state
            time.sleep(1)
        assert 0 < state["uptime"]["24h"] <= 1, state  # (a poll may have caught the second deploy's restart)
        status, page = panel.get("/dashboard/")
        assert status == 200 and "Panel demo" in page, page[-2000:]

        log = panel.log_text()
        assert "database is locked" not in log, log[-8000:]
        assert "Traceback" not in log, log[-8000:]
        assert "Internal error" not in log, log[-8000:]
        assert panel.stop() == 0
    finally:
        panel.cleanup(pids)
        clean_host(lab1)
