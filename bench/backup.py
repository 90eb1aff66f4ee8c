"""Benchmark: backups and restores of the sample project on lab host lab1, through a real Celery worker into
``rclone serve s3`` (on this machine's disk; for the deduplication figure, reached through a proxy that counts the
bytes the S3 server receives).

In one run:

1. Backup throughput: the "Dump the database" step of a panel backup (pg_dump in the db container, streamed over
   SSH into S3 with its checksums) ÷ a plain ``ssh host "docker compose exec -T db pg_dump -Fc …" > /dev/null``
   of the same database: medians of three each, alternated (aim ≥ 0.9). The whole backup job (dump, ``pg_restore
   --list``, filestore) is also compared with that pg_dump plus a plain ``tar`` of the filestore over SSH.
2. Restore: wall time of a panel restore of the 3 GiB backup into the same environment (check, safety backup,
   restore aside, checks, swap, health) ÷ a plain ``pg_restore`` into a new database plus a ``tar`` copy of the
   filestore over SSH from the same files on this machine's disk (aim ≤ 1.2).
3. Deduplication: bytes the S3 server received for a second backup of the unchanged filestore, less the new
   database dump, ÷ the filestore's size (aim < 1 %).
4. Memory: the peak RSS (``VmHWM``) of the worker child that ran a 3 GiB backup ÷ that of a 300 MiB one, each in
   a freshly started worker and into an empty bucket (aim ≤ 1.1).

Starts its own worker (a fresh SQLite database, the Redis of bin/test-services) and needs the lab
(``python -m tests.lab.lab up``). Needs about 10 GB of free disk (the lab's volumes and the S3 server's files,
removed at the end).

    .venv/bin/python bench/backup.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="panel-bench-backup-"))
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

from django.core.management import call_command  # noqa: E402

from backups.models import Backup, BackupSettings, BackupStorage  # noqa: E402
from backups.restore import start_restore  # noqa: E402
from backups.services import start_backup  # noqa: E402
from deployments.services import start_deploy  # noqa: E402
from panel.accounts.models import Membership, Organization  # noqa: E402
from panel.inventory.services import confirm_host_key, create_environment, create_project, create_server  # noqa: E402
from panel.jobs.models import Job, JobLogLine  # noqa: E402
from tests.backup_fixtures import (  # noqa: E402
    RCLONE,
    CountingProxy,
    S3Endpoint,
    _free_port,
    _wait_for_port,
    make_s3_storage,
)
from tests.deploy_fixtures import COMPOSE, KEY  # noqa: E402
from tests.lab.lab import ensure_up, exclusive_use  # noqa: E402
from tests.test_backup_size_lab import FILESTORE, fill, vm_hwm_mib  # noqa: E402

SMALL = (30, 270)  # MiB of database, MiB of filestore: 300 MiB
BIG = (200, 2880)  # 3 GiB


def start(argv: list[str], name: str) -> subprocess.Popen[bytes]:
    log = open(WORK / f"{name}.log", "ab")  # the process keeps it open
    return subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def start_worker(name: str) -> subprocess.Popen[bytes]:
    """A jobs worker with one prefork child (the job's process), ready."""
    argv = [sys.executable, "-m", "celery", "-A", "panel", "worker", "-Q", "jobs", "-c", "1", "-n", f"{name}@%h",
            "--without-gossip", "--without-mingle", "-l", "info"]  # fmt: skip
    proc = start(argv, name)
    deadline = time.monotonic() + 60
    while "ready." not in (WORK / f"{name}.log").read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, (WORK / f"{name}.log").read_text()[-3000:]
        time.sleep(0.2)
    return proc


def wait(job: Job, timeout: float = 1200) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status not in ("queued", "running"):
            if job.status != "succeeded":
                log = "\n".join(JobLogLine.objects.filter(job=job).values_list("text", flat=True))
                raise AssertionError(f"job {job.pk} {job.status}: {job.reason}\n{log[-6000:]}")
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job.pk} still {job.status}")


def seconds(job: Job) -> float:
    return (job.finished_at - job.created_at).total_seconds()


def step_seconds(job: Job, name: str) -> float:
    return sum(step["seconds"] for step in job.result.get("steps", []) if step["name"] == name)


def timed(argv: list[str], **kwargs: Any) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, **kwargs)
    return time.perf_counter() - started


def backup_into(environment: Any, storage: Any, user: Any) -> Backup:
    BackupSettings.objects.update_or_create(environment=environment, defaults={"storage": storage})
    backup = start_backup(environment=environment, actor=user)
    wait(backup.job)
    backup.refresh_from_db()
    assert backup.status == "good", backup.reason
    return backup


def peak_of(job: Job) -> float:
    job.refresh_from_db()
    return vm_hwm_mib(int(job.worker.rpartition(":")[2]))


def main() -> None:
    host = LAB.hosts["lab1"]

    def compose(*argv: str) -> list[str]:
        return host.ssh_argv(*COMPOSE, *argv)

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
                             git_url=str(LAB.sample_repo_path), odoo_version="16.0")  # fmt: skip
    environment = create_environment(project=project, server=server, actor=user, name="prod", kind="production",
                                     compose_files=["prod.yaml"], git_ref="main")  # fmt: skip

    s3_root = WORK / "s3"
    s3_root.mkdir()
    port = _free_port()
    rclone = start([RCLONE, "serve", "s3", "--config", "/dev/null", "--auth-key", "bench,bench-secret", "--addr",
                    f"127.0.0.1:{port}", "--etag-hash", "MD5", str(s3_root)], "rclone")  # fmt: skip
    procs = [rclone]
    proxy = None
    try:
        _wait_for_port(port)
        direct = S3Endpoint("rclone", f"http://127.0.0.1:{port}", "bench", "bench-secret", s3_root)
        proxy = CountingProxy(direct)
        storages = {}
        for name in ("small", "big"):
            direct.client().create_bucket(Bucket=name)
            storages[name] = make_s3_storage(org, direct, name, name=name)

        worker = start_worker("bench-deploy")
        deployment = start_deploy(environment=environment, actor=user)
        wait(deployment.job)
        environment.refresh_from_db()
        stop(worker)

        # Memory, 300 MiB: a fresh worker, an empty bucket.
        fill(host, *SMALL)
        worker = start_worker("bench-small")
        small = backup_into(environment, storages["small"], user)
        rss_small = peak_of(small.job)
        stop(worker)

        # 3 GiB: the database grown to 200 MiB (the table is made again), 2.6 GiB more files.
        fill(host, BIG[0], BIG[1] - SMALL[1])
        dump = compose("exec", "-T", "db", "pg_dump", "-Fc", "-U", "odoo", "-d", "prod")
        plain_dump = [timed(dump, stdout=subprocess.DEVNULL)]
        worker = start_worker("bench-big")
        procs.append(worker)
        big = backup_into(environment, storages["big"], user)
        rss_big = peak_of(big.job)
        plain_dump.append(timed(dump, stdout=subprocess.DEVNULL))
        tar = compose("exec", "-T", "odoo", "tar", "-c", "-f", "-", "-C", FILESTORE, ".")
        plain_tar = timed(tar, stdout=subprocess.DEVNULL)
        dump_bytes = big.database_bytes
        total_bytes = big.database_bytes + big.filestore_bytes

        # Deduplication: the same filestore again, into the same storage, now reached through the counting proxy
        # (a Python proxy costs CPU: the measured backups go straight to the S3 server).
        BackupStorage.objects.filter(pk=storages["big"].pk).update(endpoint_url=proxy.endpoint.url)
        proxy.reset()
        again = backup_into(environment, storages["big"], user)
        received = proxy.sent
        again_dump = next(e for e in again.manifest["objects"] if e["role"] == "database")["size"]
        BackupStorage.objects.filter(pk=storages["big"].pk).update(endpoint_url=direct.url)
        plain_dump.append(timed(dump, stdout=subprocess.DEVNULL))

        # Restore of the 3 GiB backup into the same environment, then the plain commands from the same files.
        restore = wait(start_restore(backup=big, target=environment, actor=user))
        restore_s = seconds(restore)
        restore_steps = {step["name"]: step["seconds"] for step in restore.result.get("steps", [])}
        dump_file = s3_root / "big" / big.key_prefix / "database.dump"
        plain_db = "bench_plain"
        restore_db = compose("exec", "-T", "db", "sh", "-c",
                             f"createdb -U odoo {plain_db} && pg_restore -U odoo --no-owner --exit-on-error -d {plain_db}")  # fmt: skip
        with open(dump_file, "rb") as source:
            plain_restore_db = timed(restore_db, stdin=source)
        target_dir = "/var/lib/odoo/filestore/bench_plain"
        started = time.perf_counter()
        packer = subprocess.Popen(["tar", "-c", "-f", "-", "-C", str(s3_root / "big" / "filestore"), "."],
                                  stdout=subprocess.PIPE)  # fmt: skip
        unpack = compose("exec", "-T", "odoo", "sh", "-c", f"mkdir -p {target_dir} && tar -x -f - -C {target_dir}")
        subprocess.run(unpack, stdin=packer.stdout, check=True)
        assert packer.wait() == 0
        plain_restore_files = time.perf_counter() - started
        plain_restore_s = plain_restore_db + plain_restore_files
        # The same dump three times through the panel (the 3 GiB backup, the second one and the restore's safety
        # backup), three times plain, alternated: medians (2 shared cores make single runs vary by 10-20 %).
        panel_dumps = [step_seconds(job, "Dump the database") for job in (big.job, again.job, restore)]
        panel_dump_s = statistics.median(panel_dumps)
        plain_dump_s = statistics.median(plain_dump)

        report = {
            "date": time.strftime("%Y-%m-%d"),
            "backup_gib": round(total_bytes / 1024**3, 2),
            "dump_mb": round(dump_bytes / 1e6, 1),
            "panel_dump_step_s": [round(value, 2) for value in panel_dumps],
            "plain_pg_dump_s": [round(value, 2) for value in plain_dump],
            "dump_throughput_ratio": round(plain_dump_s / panel_dump_s, 3),
            "panel_backup_job_s": round(seconds(big.job), 2),
            "panel_backup_steps_s": {s["name"]: s["seconds"] for s in big.job.result.get("steps", [])},
            "plain_pg_dump_plus_tar_s": round(plain_dump_s + plain_tar, 2),
            "backup_job_throughput_ratio": round((plain_dump_s + plain_tar) / seconds(big.job), 3),
            "panel_restore_s": round(restore_s, 2),
            "panel_restore_steps_s": restore_steps,
            "plain_pg_restore_s": round(plain_restore_db, 2),
            "plain_filestore_copy_s": round(plain_restore_files, 2),
            "restore_ratio": round(restore_s / plain_restore_s, 3),
            "second_backup_s3_received_bytes": received,
            "second_backup_dump_bytes": again_dump,
            "second_backup_panel_uploaded_bytes": again.uploaded_bytes,
            "filestore_bytes": again.filestore_bytes,
            "dedup_ratio_percent": round(100 * (received - again_dump) / again.filestore_bytes, 3),
            "worker_peak_rss_mib_300mib": round(rss_small, 1),
            "worker_peak_rss_mib_3gib": round(rss_big, 1),
            "rss_ratio": round(rss_big / rss_small, 3),
        }
    finally:
        for proc in procs:
            stop(proc)
        if proxy is not None:
            proxy.close()
        host.docker("compose", "-p", KEY, "down", "-v", "--remove-orphans", timeout=300)
        shutil.rmtree(WORK, ignore_errors=True)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "backup.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    LAB = ensure_up()
    with exclusive_use():  # other test sessions must not use lab1 while we measure
        main()
