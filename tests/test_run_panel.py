"""Command 1 (bin/run-panel → panel.launcher): SQLite, embedded Redis, web + worker + beat, a first login."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

from tests.conftest import ROOT, free_port


def test_it_serves_a_working_login_page_with_a_printed_first_login(tmp_path: Path) -> None:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PANEL_", "DATABASE_", "REDIS_", "CELERY_", "DJANGO_"))
    }
    env.update({"PANEL_DATA_DIR": str(tmp_path), "PANEL_PORT": str(port)})
    log = tmp_path / "launcher.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "panel.launcher"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        text = ""
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "The panel is running at" in text:
                break
            assert proc.poll() is None, text
            time.sleep(0.3)
        match = re.search(r"user: (\S+)\s+password: (\S+)", text)
        assert match, text
        username, password = match.groups()
        assert f"http://127.0.0.1:{port}/" in text
        # Secrets were generated into a private file, not a default.
        env_file = tmp_path / "panel.env"
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        assert "PANEL_ENCRYPTION_KEYS=" in env_file.read_text()

        jar = CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        base = f"http://127.0.0.1:{port}"
        # The URL works as soon as it is printed: no retry.
        page = opener.open(f"{base}/login/", timeout=5).read().decode()
        assert 'name="password"' in page
        token = next(cookie.value for cookie in jar if cookie.name == "csrftoken")
        form = urllib.parse.urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token})
        request = urllib.request.Request(f"{base}/login/", data=form.encode(), headers={"Referer": f"{base}/login/"})
        response = opener.open(request, timeout=10)
        assert "/login/" not in response.geturl(), "logged in and redirected away from the login page"
        assert username in response.read().decode()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
