"""Run ``python -m panel.launcher`` (what ``bin/run-panel`` runs) as the README does, and look at its processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, free_port

# What a child's command line says it is (the launcher's own names for them).
KINDS = (("redis", "redis-server"), ("web", "uvicorn"), ("worker", " worker "), ("beat", " beat "))


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the test settings: the launcher must work from nothing, as on a fresh machine."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PANEL_", "DATABASE_", "REDIS_", "CELERY_", "DJANGO_", "JOB_", "SSH_", "DEPLOY_"))
    }
    env.update(extra)
    return env


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` still runs (zombies aside)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


@dataclass
class RunningPanel:
    """A launcher process started from a clean environment, with its output in ``log_path``."""

    data_dir: Path
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    username: str = ""
    password: str = ""
    jar: CookieJar = field(default_factory=CookieJar)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 60, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if len(re.findall(pattern, text)) >= count:
                return text
            assert self.proc.poll() is None, f"the launcher exited:\n{text[-5000:]}"
            time.sleep(0.2)
        raise AssertionError(f"the launcher never logged {pattern!r}:\n{self.log_text()[-5000:]}")

    def children(self) -> dict[str, int]:
        """The launcher's direct children by kind: redis, web, worker, beat."""
        found: dict[str, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _ppid(int(entry.name)) == self.proc.pid:
                line = f" {_cmdline(int(entry.name))} "
                for kind, marker in KINDS:
                    if marker in line:
                        found[kind] = int(entry.name)
        return found

    def wait_for_new_child(self, kind: str, old_pid: int, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.children().get(kind)
            if pid is not None and pid != old_pid:
                return pid
            assert self.proc.poll() is None, f"the launcher exited:\n{self.log_text()[-5000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no new {kind} process after {timeout}s:\n{self.log_text()[-5000:]}")

    def child_env(self, kind: str = "worker") -> dict[str, str]:
        """The environment the launcher gave a child (REDIS_URL with the embedded Redis's password, secrets)."""
        raw = Path(f"/proc/{self.children()[kind]}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)

    def manage_shell(self, code: str, timeout: float = 60) -> str:
        """Run Python in ``manage.py shell`` against the panel's own database and Redis; return its stdout."""
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "--no-imports", "-c", code],
            cwd=ROOT, env=self.child_env(), capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the launcher alone (its children live in their own sessions) and wait for it."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=timeout)

    def cleanup(self, pids: list[int]) -> None:
        """After a test, whatever happened: nothing of this panel keeps running."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    # HTTP as a browser does it: cookies, CSRF tokens from the forms.
    def opener(self) -> urllib.request.OpenerDirector:
        return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def csrf(self) -> str:
        return next(cookie.value for cookie in self.jar if cookie.name == "csrftoken")

    def get(self, path: str, timeout: float = 30) -> tuple[int, str]:
        try:
            with self.opener().open(self.base + path, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def post_form(self, path: str, data: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
        """POST a form with the CSRF token; returns status, final URL (after redirects) and body."""
        form = {"csrfmiddlewaretoken": self.csrf(), **data}
        request = urllib.request.Request(
            self.base + path, data=urllib.parse.urlencode(form).encode(), headers={"Referer": self.base + path}
        )
        try:
            with self.opener().open(request, timeout=timeout) as response:
                return response.status, response.geturl(), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.geturl(), exc.read().decode(errors="replace")

    def login(self) -> str:
        status, page = self.get("/login/")
        assert status == 200 and 'name="password"' in page, page[:2000]
        status, url, body = self.post_form("/login/", {"username": self.username, "password": self.password})
        assert status == 200 and "/login/" not in url, body[:2000]
        return body

    def api(self, method: str, path: str, token: str = "", body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        """Call the API with a token, or without one as the signed-in browser (session cookie + CSRF header)."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        else:
            headers.update({"X-CSRFToken": self.csrf(), "Referer": self.base + "/"})
        request = urllib.request.Request(
            self.base + path, data=None if body is None else json.dumps(body).encode(), method=method, headers=headers
        )
        try:
            with (self.opener() if not token else urllib.request.build_opener()).open(
                request, timeout=timeout
            ) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                return exc.code, json.loads(text)
            except ValueError:
                return exc.code, text.decode(errors="replace")


def start_panel(data_dir: Path, timeout: float = 180, **env: str) -> RunningPanel:
    """Start the launcher as the README does and wait until it prints its URL and the first login."""
    port = free_port()
    log_path = data_dir / "launcher.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "panel.launcher"],
            cwd=ROOT,
            env=clean_env(PANEL_DATA_DIR=str(data_dir), PANEL_PORT=str(port), **env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    panel = RunningPanel(data_dir=data_dir, port=port, proc=proc, log_path=log_path)
    try:
        text = panel.wait_for_log(r"The panel is running at", timeout=timeout)
    except BaseException:
        panel.cleanup(list(panel.children().values()))
        raise
    match = re.search(r"user: (\S+)\s+password: (\S+)", text)
    if match:
        panel.username, panel.password = match.groups()
    return panel
