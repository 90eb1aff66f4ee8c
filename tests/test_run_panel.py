"""Command 1 (bin/run-panel → panel.launcher): SQLite, embedded Redis, web + worker + beat, a first login; the
launcher starts a crashed process again and stops them all on Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.launcher_helpers import RunningPanel, group_alive, start_panel


def test_it_serves_a_working_login_page_with_a_printed_first_login(tmp_path: Path) -> None:
    panel = start_panel(tmp_path)
    pids = list(panel.children().values())
    try:
        text = panel.log_text()
        assert panel.username and panel.password, text
        assert f"http://127.0.0.1:{panel.port}/" in text
        # Secrets were generated into a private file, not a default.
        env_file = tmp_path / "panel.env"
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        assert "PANEL_ENCRYPTION_KEYS=" in env_file.read_text()
        # The URL works as soon as it is printed: no retry.
        assert panel.username in panel.login()
        assert panel.stop(signal.SIGTERM) == 0
        assert not [pid for pid in pids if group_alive(pid)], "SIGTERM stopped every process"
    finally:
        panel.cleanup(pids)


JOB = """
from panel.accounts.models import Organization
from panel.jobs.services import create_job
print(create_job(kind="test_emit", organization=Organization.objects.get(), params={"count": 3}).pk)
"""


def run_a_job(panel: RunningPanel) -> None:
    """A job created in the panel's database runs to its end in the panel's worker, through its Redis."""
    job_id = int(panel.manage_shell(JOB).strip())
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        status = panel.manage_shell(f"from panel.jobs.models import Job; print(Job.objects.get(pk={job_id}).status)")
        if status.strip() in ("succeeded", "failed", "interrupted", "canceled"):
            break
        time.sleep(0.5)
    assert status.strip() == "succeeded", panel.log_text()[-5000:]


def test_it_starts_each_crashed_process_again_and_the_panel_keeps_working(tmp_path: Path) -> None:
    panel = start_panel(tmp_path, CELERY_IMPORTS="tests.job_handlers")
    seen: list[int] = []
    try:
        first = panel.children()
        seen += first.values()
        assert set(first) == {"redis", "web", "worker", "beat"}, panel.log_text()
        current = dict(first)
        for kind in ("worker", "web", "redis", "beat"):
            old = current[kind]
            os.kill(old, signal.SIGKILL)
            current[kind] = panel.wait_for_new_child(kind, old)
            seen.append(current[kind])
            text = panel.wait_for_log(rf"started the {kind} process again \(pid {current[kind]}")
            assert f"the {kind} process (pid {old}) exited with code -9" in text
            assert all(panel.children().get(other) == pid for other, pid in current.items()), "nothing else stopped"
        # A second quick crash waits longer before the restart (backoff).
        os.kill(current["worker"], signal.SIGKILL)
        text = panel.wait_for_log(rf"the worker process \(pid {current['worker']}\) exited")
        assert "starting it again in 2 s" in text
        current["worker"] = panel.wait_for_new_child("worker", current["worker"])
        seen.append(current["worker"])
        # Every process is back and works: the page answers, a job runs through the new Redis and worker.
        assert panel.username in panel.login()
        run_a_job(panel)
        assert panel.stop(signal.SIGINT) == 0
        assert not [pid for pid in seen if group_alive(pid)], "Ctrl-C stopped every process"
        assert "stopping" in panel.log_text()
    finally:
        panel.cleanup(seen)
