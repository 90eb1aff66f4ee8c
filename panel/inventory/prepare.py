"""Preparing a server for Doodba: the tools a deploy needs, and the external networks its compose files declare.

A server as it arrives has never run Doodba: it has no ``inverseproxy_shared`` or ``globalwhitelist_shared``
network, and it may lack Docker, the compose v2 plugin or git. The *Prepare server* job (``panel.inventory.services
.prepare_server``) checks the tools and creates the networks of every environment already checked out there;
each deploy creates the networks of its own environment before anything needs them (``deployments.pipeline``).

Networks are read from ``docker compose config --format json`` (its ``networks`` entries with ``external: true``,
by their ``name``), never from a list the panel keeps: whatever a project declares is what gets made.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from panel.jobs.runner import JobFailed
from panel.remote import Target, run_capture

# Docker's own rule for network names (daemon/network: ``^[a-zA-Z0-9][a-zA-Z0-9_.-]+$``), capped in length.
NETWORK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# For each name: keep it if it exists, else create it; a create that loses a race with another job (a deploy of a
# second environment on the same server) finds the network there afterwards and counts it as present.
NETWORKS_SCRIPT = (
    'for n in "$@"; do '
    'if docker network inspect -- "$n" >/dev/null 2>&1; then echo "present $n"; '
    'elif docker network create -- "$n" >/dev/null; then echo "created $n"; '
    'elif docker network inspect -- "$n" >/dev/null 2>&1; then echo "present $n"; '
    "else exit 1; fi; done"
)
# What the tool checks need to know about the login, in one round trip: uid, passwordless sudo, the OS.
WHOAMI_SCRIPT = (
    'echo "uid=$(id -u)"; '
    "if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then echo sudo=yes; else echo sudo=no; fi; "
    '( . /etc/os-release 2>/dev/null; echo "os_id=${ID:-}"; echo "os_like=${ID_LIKE:-}"; '
    'echo "os_codename=${VERSION_CODENAME:-}" )'
)
# Debian releases whose docker-compose package is compose v1 (1.x), not the v2 plugin the panel needs.
DEBIAN_WITHOUT_COMPOSE_V2 = ("buster", "bullseye", "bookworm")
COMPOSE_V2_BINARY = "/usr/local/lib/docker/cli-plugins/docker-compose"
#: The panel's compose override in a checkout (``deployments.pipeline.OVERRIDE_FILE``; a deploy's Traefik labels
#: put odoo on ``inverseproxy_shared`` there, so its networks count too).
OVERRIDE_FILE = "docker-compose.panel.yaml"


class PrepareFailed(JobFailed):
    """The server cannot be prepared as asked; the message says what to do."""


def external_networks(config: Any) -> list[str]:
    """The names of the external networks in a ``docker compose config --format json`` document, sorted.

    Compose normalises every spelling (``external: true``, the old ``external: {name: ...}``) to ``external:
    true`` plus ``name``. A name Docker would refuse (or anything that is not a string) is refused here, so nothing
    from the project's files reaches a command line unchecked.
    """
    networks = config.get("networks") if isinstance(config, dict) else None
    if not isinstance(networks, dict):
        return []
    names: set[str] = set()
    for key, spec in networks.items():
        if not isinstance(spec, dict) or not spec.get("external"):
            continue
        name = spec.get("name") or key
        if not isinstance(name, str) or not NETWORK_NAME_RE.fullmatch(name):
            raise PrepareFailed(f"The compose files declare an external network named {str(name)[:80]!r}, "
                                "which is not a name Docker accepts.")  # fmt: skip
        names.add(name)
    return sorted(names)


def create_networks(target: Target, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Create each of ``names`` that does not exist on the server: ``(created, already present)``, in one round trip."""
    if not names:
        return [], []
    result = run_capture(target, ["sh", "-c", NETWORKS_SCRIPT, "sh", *names], timeout=120)
    created = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("created ")]
    present = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("present ")]
    if not result.ok:
        missing = [name for name in names if name not in created and name not in present]
        raise PrepareFailed(
            f"Could not create the Docker network {missing[0] if missing else '?'}: "
            f"{(result.stderr.strip() or result.stdout.strip())[-300:] or 'no output'}"
        )
    return created, present


def describe_networks(created: Sequence[str], present: Sequence[str]) -> str:
    """One log line saying which external networks were made and which were there already."""
    if not created and not present:
        return "The compose files declare no external network."
    parts = []
    if created:
        parts.append(f"Created the external network{'s' if len(created) > 1 else ''} {', '.join(created)}.")
    if present:
        verb = "exist" if len(present) > 1 else "exists"
        parts.append(f"{', '.join(present)} already {verb}: nothing to create{' for it' if created else ''}.")
    return " ".join(parts)


def compose_argv(compose_project: str, directory: str, files: Sequence[str], *args: str) -> list[str]:
    """``docker compose -p KEY -f DIR/src/FILE ... ARGS`` for an environment's checkout."""
    argv = ["docker", "compose", "--ansi", "never", "-p", compose_project]
    for name in files:
        argv += ["-f", f"{directory}/src/{name}"]
    return [*argv, *args]


def declared_networks(target: Target, compose_project: str, directory: str, files: Sequence[str]) -> list[str]:
    """The external networks an environment's compose files (in its checkout on the server) declare."""
    result = run_capture(target, compose_argv(compose_project, directory, files, "config", "--format", "json"),
                         timeout=120)  # fmt: skip
    if not result.ok:
        raise PrepareFailed(f"The compose files are not valid: {result.stderr.strip()[-500:]}")
    try:
        config = json.loads(result.stdout)
    except ValueError as exc:
        raise PrepareFailed("docker compose config did not answer JSON.") from exc
    return external_networks(config)


# -- tools --------------------------------------------------------------------------------------------------------


@dataclass
class Tools:
    """What a server has of what deploys need, and whether the panel's login may install packages."""

    docker_version: str = ""
    docker_problem: str = ""  # why Docker cannot be used (in words), "" when it can
    docker_installed: bool = True
    compose_version: str = ""
    git_version: str = ""
    uid: int | None = None
    sudo: bool = False
    os_id: str = ""
    os_like: str = ""
    os_codename: str = ""

    @property
    def may_install(self) -> bool:
        """Root, or passwordless sudo (``sudo -n true`` succeeded)."""
        return self.uid == 0 or self.sudo

    @property
    def debian_like(self) -> bool:
        """Debian, Ubuntu or a derivative: the distributions whose packages the panel knows."""
        return self.os_id in ("debian", "ubuntu") or bool({"debian", "ubuntu"} & set(self.os_like.split()))

    @property
    def ready(self) -> bool:
        """Everything a deploy needs is there and usable."""
        return not self.docker_problem and bool(self.docker_version and self.compose_version and self.git_version)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[-1][:64] if text.strip() else ""


def classify_docker_error(output: str, username: str) -> tuple[str, bool]:
    """Why ``docker version`` failed, in words a person can act on, and whether Docker is installed at all."""
    lowered = output.lower()
    if "permission denied" in lowered:
        return (
            f"User {username} may not use Docker (permission denied on the Docker socket). Add it to the docker "
            f"group on the server: sudo usermod -aG docker {username} (the panel's next login picks it up).",
            True,
        )
    if "cannot connect to the docker daemon" in lowered or "is the docker daemon running" in lowered:
        return "The Docker daemon is not running: start it on the server with sudo systemctl start docker.", True
    if "not found" in lowered:
        return "Docker is not installed on the server.", False
    return f"Docker did not answer: {output.strip()[:300]}", True


def probe(target: Target, username: str) -> Tools:
    """Ask the server for Docker, the compose v2 plugin, git, the login's uid and sudo, and its OS."""
    tools = Tools()
    who = run_capture(target, ["sh", "-c", WHOAMI_SCRIPT], timeout=60)
    facts = dict(line.split("=", 1) for line in who.stdout.splitlines() if "=" in line)
    tools.uid = int(facts["uid"]) if facts.get("uid", "").isdigit() else None
    tools.sudo = facts.get("sudo") == "yes"
    tools.os_id = facts.get("os_id", "")[:32]
    tools.os_like = facts.get("os_like", "")[:64]
    tools.os_codename = facts.get("os_codename", "")[:32]
    docker = run_capture(target, ["docker", "version", "--format", "{{.Server.Version}}"], timeout=60)
    if docker.ok and docker.stdout.strip():
        tools.docker_version = _first_line(docker.stdout)
    else:
        tools.docker_problem, tools.docker_installed = classify_docker_error(
            docker.stderr + "\n" + docker.stdout, username
        )
    if tools.docker_installed:
        compose = run_capture(target, ["docker", "compose", "version", "--short"], timeout=60)
        if compose.ok and compose.stdout.strip():
            tools.compose_version = _first_line(compose.stdout)
    git = run_capture(target, ["git", "--version"], timeout=60)
    if git.ok:
        tools.git_version = _first_line(git.stdout).removeprefix("git version ")
    return tools


@dataclass
class Plan:
    """What is missing, the OS packages that would provide it, and what a person must do by hand."""

    missing: list[str] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    by_hand: list[str] = field(default_factory=list)

    def commands(self, tools: Tools) -> list[str]:
        """The shell commands that install ``packages`` as the login would run them."""
        if not self.packages:
            return []
        sudo = "" if tools.uid == 0 else "sudo "
        return [f"{sudo}apt-get update", f"{sudo}apt-get install -y {' '.join(self.packages)}"]


def plan(tools: Tools, username: str) -> Plan:
    """What to install for ``tools`` to be ready, with Debian/Ubuntu packages where they exist."""
    result = Plan()
    compose_note = (
        f"put the compose v2 binary (from https://github.com/docker/compose/releases) at {COMPOSE_V2_BINARY}, mode 755"
    )
    if not tools.docker_installed:
        result.missing.append("Docker")
        result.packages.append("docker.io")
    elif tools.docker_problem:
        result.missing.append("access to Docker")
        result.by_hand.append(tools.docker_problem)
    if not tools.compose_version:
        result.missing.append("the docker compose v2 plugin")
        if tools.os_id == "ubuntu":
            result.packages.append("docker-compose-v2")
        elif tools.os_id == "debian" and tools.os_codename in DEBIAN_WITHOUT_COMPOSE_V2:
            result.by_hand.append(
                f"Debian {tools.os_codename} has no package of docker compose v2 (its docker-compose is v1): "
                "install Docker's own docker-ce and docker-compose-plugin packages from download.docker.com "
                f"(https://docs.docker.com/engine/install/debian/), or {compose_note}."
            )
        elif tools.os_id == "debian":
            result.packages.append("docker-compose")  # trixie and later: compose v2, installed as the CLI plugin
        else:
            result.by_hand.append(f"Install the docker compose v2 plugin (docker-compose-plugin), or {compose_note}.")
    if not tools.git_version:
        result.missing.append("git")
        result.packages.append("git")
    if result.packages and not tools.debian_like:
        result.by_hand.append(
            f"Install {', '.join(result.packages)} with the package manager of {tools.os_id or 'this system'} "
            "(the panel installs only Debian and Ubuntu packages)."
        )
        result.packages = []
    return result


def advice(tools: Tools, result: Plan, username: str) -> str:
    """The message of a server that is not ready: what is missing and exactly what to run (or that the panel can)."""
    text = f"Missing on the server: {', '.join(result.missing)}."
    commands = result.commands(tools)
    if commands:
        if tools.may_install:
            who = "root" if tools.uid == 0 else f"{username} has passwordless sudo"
            text += (
                f" The panel can install {' '.join(result.packages)} ({who}): run Prepare server with "
                '“install the missing packages” (API: {"install": true}).'
            )
        else:
            text += (
                f" {username} is not root and has no passwordless sudo (sudo -n true failed), so the panel cannot "
                f"install packages. Run on the server as root or with sudo: {' && '.join(commands)}."
            )
    for line in result.by_hand:
        text += f" {line}"
    return text


def install_argv(tools: Tools, packages: Sequence[str]) -> list[list[str]]:
    """The commands the panel runs to install ``packages`` (root directly, otherwise ``sudo -n``)."""
    prefix = [] if tools.uid == 0 else ["sudo", "-n"]
    apt = [*prefix, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    return [[*apt, "update"], [*apt, "install", "-y", "--no-install-recommends", *packages]]


def install_timeout() -> float:
    """How long an install of OS packages may take (``SERVER_PREPARE_INSTALL_TIMEOUT``)."""
    return float(settings.SERVER_PREPARE_INSTALL_TIMEOUT)
