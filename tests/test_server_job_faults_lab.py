"""Server jobs (Prepare server, Install proxy) and Check what runs, broken in the middle on the lab, with real
workers: each ends bounded and truthfully, nothing the job started keeps running on the server, and the server's
lock is free for the next job.

- The worker is SIGKILLed while Prepare server creates a network, and while Install proxy runs ``compose up``:
  the reaper ends the job *interrupted*, the server ends the job's processes (so the network and the proxy are
  never made by the dead job), and the same job run again succeeds at once.
- The database lock of a Prepare server is deleted: a second one waits for the first one's lock on the server.
- The disk that holds ``~/doodba-panel`` is full when Prepare server starts: it fails at once saying so, and runs
  nothing without its lock.
- PostgreSQL stops for longer than the lease during Prepare server: the job ends its work on the server at once
  (before the database is back), then ends *interrupted* saying the database was unreachable, with every log
  line kept.
- The lab host's sshd (and every session it serves) is paused during a Check what runs: the job fails within the
  bound its SSH timeouts give, says which server and command stopped answering, the environment stays as it was
  recorded (running), and once the host answers again nothing of the check is left there.

To make a step slow enough to interrupt, ``docker_shim`` puts a ``docker`` wrapper first on the SSH user's PATH
(through ``~/.bashrc``, which bash reads for SSH commands): a command of a job (one that carries the job's tag)
matching the test's pattern records itself in ``~/.panel-shim/hits`` and sleeps before running the real docker.
The finaliser removes the wrapper: the lab hosts are shared by every test.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

from deployments.services import start_check
from panel.inventory import proxy
from panel.inventory.choices import EnvironmentState
from panel.inventory.models import Environment
from panel.inventory.services import SERVER_COMPOSE_PROJECT, environment_state, start_prepare
from panel.jobs.models import Job, JobLogLine
from panel.remote.session import TAG_VARIABLE
from tests.deploy_fixtures import KEY, deploy
from tests.lab.traefik import ensure_traefik_image
from tests.lab_helpers import add_lab_server, wait_job
from tests.services import start_postgres, stop_postgres
from tests.test_job_faults_lab import tagged_processes, wait_for_line
from tests.test_prepare_lab import check_out, make_bare, networks_on

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

SHIM_DIR = ".panel-shim"
BASHRC_LINE = f'export PATH="$HOME/{SHIM_DIR}:$PATH"  # tests/test_server_job_faults_lab.py\n'
# $PATTERN is a shell case pattern matched against " <docker arguments> ".
SHIM = """#!/bin/sh
case " $* " in
  $PATTERN)
    if [ -n "${TAG_VARIABLE}" ]; then
      echo "TAG_VARIABLE=${TAG_VARIABLE} $*" >>"$HOME/SHIM_DIR/hits"
      sleep SECONDS
    fi ;;
esac
exec REAL "$@"
"""
HTTP_PORT = 18080
HTTPS_PORT = 18443


class DockerShim:
    """The ``docker`` wrapper on a lab host: install it with a pattern, read what it caught, remove it."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.bashrc = host.home / ".bashrc"
        self.original = host.home / ".bashrc.panel-shim-orig"
        self.hits = host.home / SHIM_DIR / "hits"

    def install(self, pattern: str, seconds: int = 60) -> None:
        real = self.host.ssh("sh", "-c", "command -v docker", check=True).stdout.strip()
        assert real and SHIM_DIR not in real, real
        text = (
            SHIM.replace("$PATTERN", pattern).replace("TAG_VARIABLE", TAG_VARIABLE).replace("SHIM_DIR", SHIM_DIR)
            .replace("SECONDS", str(seconds)).replace("REAL", shlex.quote(real))
        )  # fmt: skip
        script = f"mkdir -p ~/{SHIM_DIR} && rm -f ~/{SHIM_DIR}/hits && cat >~/{SHIM_DIR}/docker && chmod 755 ~/{SHIM_DIR}/docker"
        self.host.ssh("sh", "-c", script, input=text, check=True)
        if not self.original.exists():
            self.original.write_bytes(self.bashrc.read_bytes())
        # Before the "not interactive: return" guard, so that SSH commands see it too.
        self.bashrc.write_text(BASHRC_LINE + self.original.read_text())
        found = self.host.ssh("sh", "-c", "command -v docker", check=True).stdout.strip()
        assert found.endswith(f"{SHIM_DIR}/docker"), f"the shim is not first on the SSH user's PATH: {found}"

    def remove(self) -> None:
        if self.original.exists():
            self.bashrc.write_bytes(self.original.read_bytes())
            self.original.unlink()
        self.host.ssh("rm", "-rf", "--", SHIM_DIR, check=True)

    def caught(self, job: Job) -> list[str]:
        """The docker commands of ``job`` the shim holds back (or held back)."""
        try:
            lines = self.hits.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [line for line in lines if line.startswith(f"{TAG_VARIABLE}={job.pk}-")]

    def wait_caught(self, job: Job, timeout: float = 120) -> str:
        """Wait until a command of ``job`` is held back in the shim (the job is in the middle of that step)."""
        deadline = time.monotonic() + timeout
        while not self.caught(job):
            job.refresh_from_db()
            assert job.status in ("queued", "running"), f"job {job.pk} ended ({job.status}: {job.reason}) first"
            assert time.monotonic() < deadline, f"job {job.pk} never ran the command the shim waits for"
            time.sleep(0.1)
        return self.caught(job)[0]


@pytest.fixture
def docker_shim(lab1: Any) -> Iterator[DockerShim]:
    shim = DockerShim(lab1)
    shim.remove()  # what an interrupted earlier session may have left
    yield shim
    shim.remove()


@pytest.fixture
def proxy_down(lab1: Any) -> Iterator[None]:
    def down() -> None:
        lab1.docker("compose", "-p", proxy.PROJECT, "down", "-v", "--remove-orphans", timeout=300)

    down()
    yield
    down()


@pytest.fixture
def bare_lab1(lab1: Any) -> Iterator[Any]:
    make_bare(lab1)
    yield lab1
    make_bare(lab1)


def job_log(job: Job) -> str:
    return "\n".join(JobLogLine.objects.filter(job=job).order_by("seq").values_list("text", flat=True))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} within {timeout:g} s"
        time.sleep(0.2)
    return time.monotonic() - started


def proxy_containers(host: Any) -> list[str]:
    return host.docker("ps", "-aq", "--filter", "label=io.doodba-panel.proxy", check=True).stdout.split()


def prepared_server(lab1: Any, lab_sample: Any, demo_project: Any, users: dict[str, Any], orgs: dict[str, Any]) -> Any:
    """A server whose prod environment is checked out and declares inverseproxy_shared, which is missing."""
    from panel.inventory.services import create_environment

    server = add_lab_server(orgs["a"], users["alice"], lab1)
    create_environment(project=demo_project, server=server, actor=users["alice"], name="prod", kind="production",
                       compose_files=["prod.yaml"])  # fmt: skip
    check_out(lab1, lab_sample, KEY)
    assert "inverseproxy_shared" not in networks_on(lab1)
    return server


@pytest.fixture
def demo_project(lab_sample: Any, users: dict[str, Any], orgs: dict[str, Any]) -> Any:
    from panel.inventory.services import create_project

    return create_project(
        organization=orgs["a1"], actor=users["alice"], name="Panel demo", slug="panel-demo",
        git_url=str(lab_sample.sample_repo_path), odoo_version="16.0",
    )  # fmt: skip


def test_it_interrupts_a_prepare_whose_worker_died_and_leaves_nothing_running(
    jobs_worker: Any, monitoring_worker: Any, bare_lab1: Any, lab_sample: Any, demo_project: Any,
    docker_shim: DockerShim, users: dict[str, Any], orgs: dict[str, Any],
) -> None:  # fmt: skip
    lab1 = bare_lab1
    server = prepared_server(lab1, lab_sample, demo_project, users, orgs)
    docker_shim.install('*" network create "*')
    job = start_prepare(server=server, actor=users["alice"])
    caught = docker_shim.wait_caught(job)
    assert "network create -- inverseproxy_shared" in caught
    assert tagged_processes(lab1, job), "the held-back command does not carry the job's tag"
    assert JobLogLine.objects.filter(job=job, text__startswith="Holding this server's lock on ").exists()
    jobs_worker.kill()
    job = wait_job(job, timeout=30, statuses=("interrupted",))
    assert "stopped responding" in job.reason, job.reason
    # The server ended the job's commands when its connection dropped: the network was never created by it.
    assert tagged_processes(lab1, job) == []
    assert "inverseproxy_shared" not in networks_on(lab1)

    docker_shim.remove()
    jobs_worker.start()
    again = wait_job(start_prepare(server=server, actor=users["alice"]), timeout=120)
    text = job_log(again)
    assert again.status == "succeeded", f"{again.reason}\n{text}"
    assert "Holding this server's lock on " in text
    assert "to release this server's lock" not in text, "the dead job's lock was still held"
    assert again.result["created"] == ["inverseproxy_shared"]
    assert "inverseproxy_shared" in networks_on(lab1)
    assert tagged_processes(lab1, again) == []


def test_it_interrupts_a_proxy_install_whose_worker_died_and_leaves_nothing_running(
    jobs_worker: Any, monitoring_worker: Any, lab1: Any, docker_shim: DockerShim, proxy_down: None,
    users: dict[str, Any], orgs: dict[str, Any],
) -> None:  # fmt: skip
    # A server job's end removes the one-off containers of the proxy's compose project.
    assert SERVER_COMPOSE_PROJECT == proxy.PROJECT
    ensure_traefik_image(lab1.spec)
    server = add_lab_server(orgs["a"], users["alice"], lab1)
    server.proxy_bind_address, server.proxy_http_port, server.proxy_https_port = lab1.address, HTTP_PORT, HTTPS_PORT
    server.save()
    docker_shim.install('*" compose "*" up "*')
    job = proxy.start_proxy_install(server=server, actor=users["alice"])
    caught = docker_shim.wait_caught(job)
    assert f"-p {proxy.PROJECT}" in caught and " up -d" in caught, caught
    wait_for_line(job, r"^▶ Start the proxy$", timeout=30)
    jobs_worker.kill()
    job = wait_job(job, timeout=30, statuses=("interrupted",))
    assert "stopped responding" in job.reason, job.reason
    assert tagged_processes(lab1, job) == []
    # The held-back ``compose up`` died with the job: no proxy was started by it.
    assert proxy_containers(lab1) == []

    docker_shim.remove()
    jobs_worker.start()
    again = wait_job(proxy.start_proxy_install(server=server, actor=users["alice"]), timeout=180)
    text = job_log(again)
    assert again.status == "succeeded", f"{again.reason}\n{text}"
    assert "Holding this server's lock on " in text
    assert "to release this server's lock" not in text, "the dead job's lock was still held"
    assert "Traefik runs and listens on" in text
    assert len(proxy_containers(lab1)) == 1
    assert tagged_processes(lab1, again) == []


def test_it_never_runs_two_prepares_at_once_on_a_server_without_the_database_lock(
    jobs_worker: Any, bare_lab1: Any, lab_sample: Any, demo_project: Any, docker_shim: DockerShim,
    users: dict[str, Any], orgs: dict[str, Any],
) -> None:  # fmt: skip
    lab1 = bare_lab1
    server = prepared_server(lab1, lab_sample, demo_project, users, orgs)
    docker_shim.install('*" network create "*', seconds=6)
    first = start_prepare(server=server, actor=users["alice"])
    docker_shim.wait_caught(first)
    # The database lock is gone (a bug, a manual edit): the database lets a second server job start.
    Job.objects.filter(pk=first.pk).update(lock_key=None)
    second = start_prepare(server=server, actor=users["alice"])
    wait_for_line(second, rf"^Waiting up to .* for job #{first.pk} to release this server's lock", timeout=60)
    first, second = wait_job(first, timeout=120), wait_job(second, timeout=120)
    assert first.status == "succeeded", first.reason
    assert second.status == "succeeded", second.reason
    # The second ran only once the first had finished its work on the server.
    created = JobLogLine.objects.get(job=first, text__startswith="Created 1 network: inverseproxy_shared").ts
    held_at = JobLogLine.objects.get(job=second, text__startswith="Holding this server's lock on ").ts
    assert held_at >= created, "the second prepare ran while the first did"
    assert first.result["created"] == ["inverseproxy_shared"]
    assert second.result["created"] == [] and second.result["present"] == ["inverseproxy_shared"]
    assert docker_shim.caught(second) == [], "the second prepare created the network again"


@pytest.fixture
def full_deploy_root(bare_lab1: Any) -> Iterator[Path]:
    """``~/doodba-panel`` of lab1 on a tiny file system that is full (no space, no inode left: ``fill-*`` files);
    unmounted afterwards whatever happened."""
    root = bare_lab1.home / "doodba-panel"

    def unmount() -> None:
        while subprocess.run(["mountpoint", "-q", str(root)]).returncode == 0:
            subprocess.run(["umount", "-l", str(root)], check=True)

    unmount()
    root.mkdir(exist_ok=True)
    owner = root.parent.stat()
    os.chown(root, owner.st_uid, owner.st_gid)  # what is left once it is unmounted
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=64k,nr_inodes=8,mode=0755,uid={owner.st_uid},"
                    f"gid={owner.st_gid}", "panel-full-disk", str(root)], check=True)  # fmt: skip
    with contextlib.suppress(OSError):  # every block, then every inode
        for number in range(16):
            (root / f"fill-{number}").write_bytes(b"x" * 16384)
    with contextlib.suppress(OSError):
        for number in range(16):
            (root / f"fill-inode-{number}").touch()
    full = bare_lab1.ssh("sh", "-c", "mkdir ~/doodba-panel/probe")
    assert "No space left on device" in full.stderr, full
    yield root
    unmount()


def test_it_says_the_disk_is_full_when_a_prepare_cannot_take_the_servers_lock(
    jobs_worker: Any, full_deploy_root: Path, lab1: Any, users: dict[str, Any], orgs: dict[str, Any]
) -> None:
    server = add_lab_server(orgs["a"], users["alice"], lab1)
    job = wait_job(start_prepare(server=server, actor=users["alice"]), timeout=60)
    assert job.status == "failed", job.reason
    assert job.reason.startswith(f"Could not take this server's lock on {server.name} ({lab1.address}:{lab1.port}) "
                                 "(doodba-panel/.server/.panel-lock): the server's disk is full ("), job.reason  # fmt: skip
    assert "No space left on device" in job.reason and job.reason.endswith("Free space there, then run the job again.")
    assert [step["name"] for step in job.result.get("steps", [])] == [], "the job ran without its lock"
    assert tagged_processes(lab1, job) == []
    # Space again: the same job succeeds.
    for path in full_deploy_root.glob("fill-*"):
        path.unlink()
    again = wait_job(start_prepare(server=server, actor=users["alice"]), timeout=60)
    assert again.status == "succeeded", again.reason


@pytest.mark.exclusive
def test_it_stops_a_prepare_whose_database_went_away_and_leaves_nothing_running(
    jobs_worker: Any, bare_lab1: Any, lab_sample: Any, demo_project: Any, docker_shim: DockerShim,
    users: dict[str, Any], orgs: dict[str, Any],
) -> None:  # fmt: skip
    lab1 = bare_lab1
    server = prepared_server(lab1, lab_sample, demo_project, users, orgs)
    docker_shim.install('*" network create "*')
    job = start_prepare(server=server, actor=users["alice"])
    docker_shim.wait_caught(job)
    assert tagged_processes(lab1, job)
    stop_postgres()
    try:
        # The lease is 3 s in the tests: the job ends its work on the server on its own, without the database.
        wait_until(lambda: tagged_processes(lab1, job) == [], timeout=settings.JOB_LEASE_SECONDS + 10,
                   what="the job's commands on the server did not end while the database was away")  # fmt: skip
        assert "inverseproxy_shared" not in networks_on(lab1)
    finally:
        start_postgres()
        connections.close_all()
    job = wait_job(job, timeout=150)
    assert job.status == "interrupted", job.reason
    assert "database was unreachable" in job.reason, job.reason
    # Every line of the job was kept, in order, up to the outcome.
    seqs = list(JobLogLine.objects.filter(job=job).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, job.last_seq + 1))
    text = job_log(job)
    assert "▶ Networks" in text and text.endswith(f"✖ {job.reason}"), text[-2000:]
    assert tagged_processes(lab1, job) == []
    assert "inverseproxy_shared" not in networks_on(lab1)


def test_it_fails_a_check_in_bounded_time_when_the_server_stops_answering(
    deploy_env: Environment, jobs_worker: Any, lab1: Any, docker_shim: DockerShim, users: dict[str, Any]
) -> None:
    first = deploy(deploy_env, users["alice"])
    assert first.status == "succeeded", first.job.reason
    deploy_env.refresh_from_db()
    before = environment_state(deploy_env)
    assert before.code == EnvironmentState.RUNNING, before
    docker_shim.install('*" exec "*" curl "*')
    check = start_check(environment=deploy_env, actor=users["alice"])
    docker_shim.wait_caught(check)  # in the middle of "Check what runs": asking Odoo for its health
    lab1.pause_sshd()
    paused_at = time.monotonic()
    # The health command is silent: after SSH_KEEPALIVE_INTERVAL without output (or its 30 s at the latest) the
    # panel asks the server whether it still answers; it does not within SSH_BANNER_TIMEOUT, so the job says the
    # server stopped answering and drops the connection at once (nothing waits on a server that does not answer).
    bound = 30 + settings.SSH_BANNER_TIMEOUT + 10
    try:
        check = wait_job(check, timeout=bound + 30)
        took = time.monotonic() - paused_at
    finally:
        lab1.resume_sshd()
    assert took <= bound, took
    assert check.status == "failed", check.status
    assert check.reason.startswith(f"{deploy_env.server.name} ({lab1.address}:{lab1.port}) stopped answering over SSH: "
                                   "docker "), check.reason  # fmt: skip
    assert "check it, then run the job again" in check.reason
    # The check proved nothing and changed nothing: the environment is what the panel last recorded.
    deploy_env.refresh_from_db()
    after = environment_state(deploy_env)
    assert (after.code, after.commit) == (before.code, before.commit), after
    # Once the host answers again, it ends what the check left there.
    wait_until(lambda: tagged_processes(lab1, check) == [], timeout=30,
               what="the check's commands still ran on the server after it answered again")  # fmt: skip
    docker_shim.remove()
    again = wait_job(start_check(environment=deploy_env, actor=users["alice"]), timeout=120)
    assert again.status == "succeeded", again.reason
    assert again.result["deployment"] == first.pk
    deploy_env.refresh_from_db()
    assert environment_state(deploy_env).code == EnvironmentState.RUNNING
