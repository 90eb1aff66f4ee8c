"""Benchmark: deploy overhead and time to the first live log line, against lab host lab1.

1. Deploy overhead: wall time of a panel redeploy (API request → Celery worker → pipeline over SSH → job
   succeeded) ÷ wall time of a plain ``ssh host bash -c SCRIPT`` running the same git and compose commands, in
   the same run, alternated (aim ≤ 1.1).
2. Time from ``POST /api/v1/environments/{id}/deploy/`` to the first log line in a websocket client (median
   and p95), next to a bare ``ssh host true`` measured in the same run.

Starts its own panel (uvicorn + a Celery worker on a fresh SQLite database and the Redis of bin/test-services)
and needs the lab (``python -m tests.lab.lab up``).

    .venv/bin/python bench/deploy.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="panel-bench-"))
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"sqlite:///{WORK / 'bench.sqlite3'}",
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6390/7"),
        "DEPLOY_HEALTH_TIMEOUT": "120",
        "CELERY_IMPORTS": "",
    }
)

import django  # noqa: E402

django.setup()

import websockets  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402

from bench.common import percentile  # noqa: E402
from panel.accounts.models import Membership, Organization  # noqa: E402
from panel.accounts.services import create_token  # noqa: E402
from panel.inventory.services import confirm_host_key, create_environment, create_project, create_server  # noqa: E402
from tests.lab.lab import ensure_up, exclusive_use  # noqa: E402

KEY = "panel-demo-16-0-prod"

# The same commands the panel's pipeline runs for a redeploy of an unchanged commit to production.
PLAIN_SCRIPT = """
set -e
mark() {{ echo "@@phase $1 $(date +%s.%N)"; }}
mark fetch
D=doodba-panel/{key}; S=$D/src
git -C $S fetch --force --prune --no-tags -- {url} '+refs/heads/*:refs/remotes/panel/*' '+refs/tags/*:refs/tags/*'
C=$(git -C $S rev-parse --verify --quiet 'refs/remotes/panel/main^{{commit}}')
git -C $S checkout --quiet --force --detach $C
cp $S/.docker/odoo.env /tmp/bench-odoo.env; cp $S/.docker/db-access.env /tmp/bench-db-access.env
cp $S/.docker/db-creation.env /tmp/bench-db-creation.env; cp $S/docker-compose.panel.yaml /tmp/bench-override.yaml
git -C $S clean -ffdxq
mkdir -p $S/.docker
cp /tmp/bench-odoo.env $S/.docker/odoo.env; cp /tmp/bench-db-access.env $S/.docker/db-access.env
cp /tmp/bench-db-creation.env $S/.docker/db-creation.env; touch $S/.docker/smtp.env $S/.docker/backup.env
cp /tmp/bench-override.yaml $S/docker-compose.panel.yaml
mark config
P="docker compose --ansi never -p {key} -f $S/prod.yaml -f $S/docker-compose.panel.yaml"
docker compose --ansi never -p {key} -f $S/prod.yaml config --format json >/dev/null
$P config --quiet
mark build
$P build
docker image inspect --format "{{{{.Id}}}}" {key}-odoo:$(echo $C | cut -c1-12) >/dev/null
mark snapshot
mkdir -p $D/snapshots; $P run --rm -T --entrypoint pg_dump odoo --format=custom > $D/snapshots/bench.dump
mark update
$P run --rm odoo click-odoo-update
mark start
$P up -d --remove-orphans
mark health
until $P exec -T odoo curl -fsS --max-time 5 http://localhost:8069/web/health | grep -q pass; do sleep 1; done
mark end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(argv: list[str], name: str) -> subprocess.Popen[bytes]:
    log = open(WORK / f"{name}.log", "wb")  # the process keeps it open
    return subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def api(base: str, token: str, path: str, method: str = "GET") -> tuple[int, dict]:
    request = urllib.request.Request(
        base + path, method=method, data=b"{}" if method == "POST" else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def wait_job(base: str, token: str, job_id: int) -> dict:
    while True:
        _, job = api(base, token, f"/api/v1/jobs/{job_id}/")
        if job.get("status") not in ("queued", "running"):
            return job
        time.sleep(0.2)


async def first_line(base: str, cookie: str, token: str, env_id: int) -> tuple[float, int]:
    started = time.perf_counter()
    status, body = await asyncio.to_thread(api, base, token, f"/api/v1/environments/{env_id}/deploy/", "POST")
    assert status == 202, body
    job_id = body["job"]["id"]
    url = base.replace("http://", "ws://") + f"/ws/jobs/{job_id}/?after=0"
    async with websockets.connect(url, additional_headers={"Cookie": cookie, "Origin": base}) as ws:
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "lines" and frame["lines"]:
                return time.perf_counter() - started, job_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    lab = LAB
    host = lab.hosts["lab1"]
    host.docker("compose", "-p", KEY, "down", "-v", "--remove-orphans", timeout=300)
    subprocess.run(["rm", "-rf", str(host.home / "doodba-panel")], check=True)
    call_command("migrate", verbosity=0)
    org = Organization.objects.create(name="Bench", slug="bench")
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username="bench", password="bench-password-123")
    Membership.objects.create(user=user, organization=org, role="owner")
    server = create_server(
        organization=org, actor=user, name="lab1", host=host.address, port=host.port, username=host.username,
        private_key=host.private_key_pem,
    )  # fmt: skip
    confirm_host_key(server=server, actor=user, fingerprint=server.host_key_fingerprint)
    project = create_project(organization=org, actor=user, name="Panel demo", slug="panel-demo",
                             git_url=str(lab.sample_repo_path), odoo_version="16.0")  # fmt: skip
    environment = create_environment(project=project, server=server, actor=user, name="prod",
                                     compose_files=["prod.yaml"], git_ref="main")  # fmt: skip
    _, token = create_token(user=user, name="bench", scope="write", days=1)
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    python = sys.executable
    procs = [
        start(
            [python, "-m", "uvicorn", "panel.asgi:application", "--port", str(port), "--log-level", "warning"], "web"
        ),
        start([python, "-m", "celery", "-A", "panel", "worker", "-Q", "jobs", "-c", "1", "-l", "warning"], "worker"),
    ]
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/login/", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        # Warm-up: the first deploy initialises the database and builds the image.
        status, body = api(base, token, f"/api/v1/environments/{environment.pk}/deploy/", "POST")
        assert status == 202, body
        job = wait_job(base, token, body["job"]["id"])
        assert job["status"] == "succeeded", job

        ssh = host.ssh_argv("true")[:-3]
        script = PLAIN_SCRIPT.format(key=KEY, url=shlex.quote(str(lab.sample_repo_path)))
        panel_times, plain_times, first_lines, ssh_true = [], [], [], []
        panel_steps: list[dict[str, float]] = []
        plain_phases: list[dict[str, float]] = []
        for _ in range(args.rounds):
            elapsed, job_id = asyncio.run(first_line(base, cookie, token, environment.pk))
            first_lines.append(elapsed)
            job = wait_job(base, token, job_id)
            assert job["status"] == "succeeded", job
            panel_times.append(_job_seconds(job))
            steps = {step["name"]: step["seconds"] for step in (job.get("result") or {}).get("steps", [])}
            steps["outside steps"] = round(panel_times[-1] - sum(steps.values()), 3)
            panel_steps.append(steps)
            started = time.perf_counter()
            # The script is an argument, not stdin: `compose run` would read the rest of a script fed on stdin.
            done = subprocess.run([*ssh, host.address, "--", "bash -c " + shlex.quote(script)], check=True,
                                  stdin=subprocess.DEVNULL, capture_output=True)  # fmt: skip
            assert "@@phase end" in done.stdout.decode(), done.stdout.decode()[-2000:]
            plain_times.append(time.perf_counter() - started)
            plain_phases.append(_phases(done.stdout.decode(), plain_times[-1]))
            started = time.perf_counter()
            subprocess.run([*ssh, host.address, "--", "true"], check=True)
            ssh_true.append(time.perf_counter() - started)
        report = {
            "rounds": args.rounds,
            "panel_deploy_median_s": round(statistics.median(panel_times), 2),
            "plain_ssh_script_median_s": round(statistics.median(plain_times), 2),
            "deploy_overhead_ratio": round(statistics.median(panel_times) / statistics.median(plain_times), 3),
            "first_log_line_median_ms": round(statistics.median(first_lines) * 1000, 1),
            "first_log_line_p95_ms": round(percentile(first_lines, 95) * 1000, 1),
            "ssh_true_median_ms": round(statistics.median(ssh_true) * 1000, 1),
            "panel_step_medians_s": _medians(panel_steps),
            "plain_phase_medians_s": _medians(plain_phases),
        }
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        host.docker("compose", "-p", KEY, "down", "-v", "--remove-orphans", timeout=300)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "deploy.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def _phases(output: str, total: float) -> dict[str, float]:
    """Seconds per phase of the plain script, from its ``@@phase NAME EPOCH`` marks (ssh login: the rest)."""
    marks = [line.split()[1:] for line in output.splitlines() if line.startswith("@@phase ")]
    phases = {name: float(end) - float(start) for (name, start), (_, end) in itertools.pairwise(marks)}
    phases["ssh login and exit"] = total - sum(phases.values())
    return phases


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {name: round(statistics.median(row.get(name, 0.0) for row in rows), 3) for name in rows[0]} if rows else {}


def _job_seconds(job: dict) -> float:
    """Wall time of a job as a user sees it: from the request (created) to the end."""
    from datetime import datetime

    created = datetime.fromisoformat(job["created_at"])
    finished = datetime.fromisoformat(job["finished_at"])
    return (finished - created).total_seconds()


if __name__ == "__main__":
    LAB = ensure_up()
    with exclusive_use():  # other test sessions must not use lab1 while we measure
        main()
