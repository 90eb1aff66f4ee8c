"""The lab itself works: SSH to two hosts with their own Docker daemons, and a Doodba-shaped deploy.

No Django needed: these tests only use the lab plugin (``tests/lab/fixtures.py``).
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess

import pytest

from tests.lab.lab import SAMPLE_PROJECT_KEY, HostPaths, Lab, LabHost, pub_of

pytestmark = pytest.mark.lab

DEPLOY_DIR = SAMPLE_PROJECT_KEY
COMPOSE = ["docker", "compose", "--progress=quiet", "-p", SAMPLE_PROJECT_KEY, "-f", "prod.yaml"]
MANIFEST = "odoo/custom/src/private/panel_demo/__manifest__.py"
SECRETS = {
    ".docker/odoo.env": "ADMIN_PASSWORD=lab-admin-password\n",
    ".docker/db-access.env": "PGPASSWORD=lab-db-password\n",
    ".docker/db-creation.env": "POSTGRES_PASSWORD=lab-db-password\n",
}


def remote(host: LabHost, script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a shell script as the deploy user, in the deploy dir when it exists; fail loudly."""
    proc = host.ssh("sh", "-c", f"set -e; cd ~/{DEPLOY_DIR} 2>/dev/null || true; {script}", timeout=timeout)
    assert proc.returncode == 0, f"remote script failed ({proc.returncode}):\n{script}\n{proc.stdout}\n{proc.stderr}"
    return proc


def compose(*argv: str) -> str:
    """A compose command line for ``remote()``."""
    return shlex.join([*COMPOSE, *argv])


def test_it_reaches_each_hosts_own_docker_daemon_over_ssh(lab1: LabHost, lab2: LabHost) -> None:
    roots = {}
    for host in (lab1, lab2):
        proc = host.ssh("docker", "version", "--format", "{{json .Server}}", check=True)
        assert json.loads(proc.stdout)["ApiVersion"] == "1.41"
        env = host.ssh("sh", "-c", "echo $DOCKER_HOST", check=True).stdout.strip()
        assert env == f"unix://{host.docker_socket}"
        info = host.ssh("docker", "info", "--format", "{{.DockerRootDir}}", check=True).stdout.strip()
        assert info == str(HostPaths(host.spec).data_root)
        roots[host.name] = info
        assert host.ssh("docker", "compose", "version", check=True).stdout.startswith("Docker Compose version v2")
    assert roots["lab1"] != roots["lab2"]
    # The local docker() helper talks to the same daemon.
    assert lab1.docker("info", "--format", "{{.DockerRootDir}}", check=True).stdout.strip() == roots["lab1"]


def test_it_denies_the_docker_socket_to_the_nodocker_user(lab1: LabHost) -> None:
    assert lab1.nodocker_username
    proc = lab1.ssh("docker", "ps", user=lab1.nodocker_username)
    assert proc.returncode != 0
    assert "permission denied" in proc.stderr.lower()
    assert lab1.ssh("id", "-un", user=lab1.nodocker_username, check=True).stdout.strip() == lab1.nodocker_username


def test_it_exposes_pinnable_host_keys_and_verbose_sshd_logs(lab: Lab, lab1: LabHost, lab2: LabHost) -> None:
    for host in (lab1, lab2):
        printed = subprocess.run(
            ["ssh-keygen", "-lf", str(pub_of(HostPaths(host.spec).host_key))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[1]
        assert host.host_key_fingerprint == printed
        assert host.host_key_type == "ssh-ed25519"
        scanned = subprocess.run(
            ["ssh-keyscan", "-t", "ed25519", "-p", str(host.port), host.address], capture_output=True, text=True
        ).stdout
        assert host.host_key_base64 in scanned
        assert host.private_key_pem.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert lab1.host_key_base64 != lab2.host_key_base64
    lab1.ssh("true", check=True)
    assert re.search(
        r"Accepted publickey for lab1-deploy from 127\.0\.0\.\d+ port \d+ ssh2: ED25519", lab1.sshd_log_text()
    )


def test_it_simulates_host_faults_and_restores_them(lab1: LabHost) -> None:
    original = lab1.host_key_fingerprint
    new = lab1.regenerate_host_key()
    assert new != original and lab1.host_key_fingerprint == new
    lab1.ssh("true", check=True)  # the lab's known_hosts follows the new key
    lab1.restore_host_key()
    assert lab1.host_key_fingerprint == original

    lab1.pause_sshd()
    with socket.create_connection((lab1.address, lab1.port), timeout=2) as sock:  # TCP still accepts...
        sock.settimeout(1.5)
        try:
            banner = sock.recv(64)
        except TimeoutError:
            banner = b""
    assert banner == b""  # ...but nothing answers
    lab1.resume_sshd()
    lab1.ssh("true", check=True, timeout=20)

    lab1.stop_dockerd()
    assert lab1.ssh("docker", "ps").returncode != 0
    lab1.start_dockerd()
    lab1.ssh("docker", "ps", check=True)

    lab1.stop_sshd()
    assert lab1.ssh("true", timeout=20).returncode == 255
    lab1.start_sshd()
    lab1.ssh("true", check=True)


def test_it_deploys_the_sample_project_over_ssh(lab_sample: Lab, lab1: LabHost) -> None:
    repo = lab_sample.sample_repo_path
    remote(
        lab1,
        f"cd ~ && if [ -d {DEPLOY_DIR} ]; then (cd {DEPLOY_DIR} && {compose('down', '-v')}); fi; rm -rf {DEPLOY_DIR}",
    )
    remote(lab1, f"cd ~ && git clone -q --branch main {repo} {DEPLOY_DIR}")
    secrets = " && ".join(f"printf %s '{content}' > {path}" for path, content in SECRETS.items())
    remote(lab1, f"mkdir -p .docker && umask 077 && {secrets}")
    try:
        remote(lab1, compose("build"))
        remote(lab1, compose("up", "-d", "--remove-orphans"))
        init = remote(lab1, compose("run", "--rm", "odoo", "odoo", "--stop-after-init", "-i", "base"))
        assert "odoo.modules.loading: init db" in init.stdout
        health = remote(
            lab1,
            compose(
                "exec", "-T", "odoo", "python3", "-c",
                "import urllib.request as u; print(u.urlopen('http://localhost:8069/web/health').read().decode())",
            ),
        )  # fmt: skip
        assert json.loads(health.stdout) == {"status": "pass"}

        # A database it has never seen: store the hashes first, then nothing needs updating.
        remote(lab1, compose("run", "--rm", "odoo", "click-odoo-update", "--only-compute-hashes"))
        idle = remote(lab1, compose("run", "--rm", "odoo", "click-odoo-update"))
        assert "No module needs updating" in idle.stdout

        # Bump the private addon in the repo: only that addon is updated after pull + build.
        manifest = lab_sample.sample_file(MANIFEST).replace('"16.0.1.0.0"', '"16.0.1.0.1"')
        sha = lab_sample.commit_to_sample({MANIFEST: manifest}, "[IMP] panel_demo: bump")
        remote(lab1, 'git pull -q --ff-only && test "$(git rev-parse HEAD)" = ' + sha)
        remote(lab1, compose("build"))
        update = remote(lab1, compose("run", "--rm", "odoo", "click-odoo-update"))
        assert "Updating addons for their hash changed: panel_demo." in update.stdout
        versions = remote(
            lab1,
            compose("exec", "-T", "db", "psql", "-U", "odoo", "-Atc",
                    "SELECT name || '=' || latest_version FROM ir_module_module ORDER BY name", "prod"),
        ).stdout.split()  # fmt: skip
        assert "panel_demo=16.0.1.0.1" in versions

        dump = lab1.ssh(
            "sh",
            "-c",
            f"cd ~/{DEPLOY_DIR} && {compose('exec', '-T', 'db', 'pg_dump', '-U', 'odoo', '-Fc', 'prod')} | head -c 5",
        )
        assert dump.stdout == "PGDMP"
    finally:
        remote(lab1, compose("down", "-v", "--remove-orphans"))
    leftovers = lab1.ssh(
        "docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={SAMPLE_PROJECT_KEY}", check=True
    )
    assert leftovers.stdout.strip() == ""
