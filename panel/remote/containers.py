"""The containers of an environment's compose project on its server, found by compose's labels.

One ``docker ps --no-trunc`` filtered on ``com.docker.compose.project`` (and optionally the service), printing
``service id oneoff`` per line, newest container first. One-off ``compose run`` containers are left out; service
names and ids that do not look like compose's are dropped, so what comes back is safe to put in an argv or a page.
Used by the terminal (which container to exec in), the mail catcher (which container to reach) and the container
logs (which services may be followed).
"""

from __future__ import annotations

import re

from panel.remote.errors import RemoteError
from panel.remote.ssh import Target, run_capture

SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")
FORMAT = '{{.Label "com.docker.compose.service"}} {{.ID}} {{.Label "com.docker.compose.oneoff"}}'


class ContainerListFailed(RemoteError):
    """``docker ps`` ran and answered with an error (the message carries the first of its stderr)."""


def list_argv(project: str, *, service: str | None = None, include_stopped: bool = False) -> list[str]:
    argv = ["docker", "ps", "--no-trunc", "--filter", f"label=com.docker.compose.project={project}"]
    if include_stopped:
        argv.insert(2, "--all")
    else:
        argv += ["--filter", "status=running"]
    if service is not None:
        argv += ["--filter", f"label=com.docker.compose.service={service}"]
    return [*argv, "--format", FORMAT]


def parse(output: str) -> dict[str, str]:
    """``{service: container id}`` from ``docker ps`` lines ``service id oneoff``, in name order; for a service
    with several containers the newest (which ``docker ps`` lists first) wins."""
    services: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) < 2 or (len(parts) > 2 and parts[2] == "True"):
            continue
        service, container = parts[0], parts[1]
        if SERVICE_NAME.match(service) and CONTAINER_ID.match(container) and service not in services:
            services[service] = container
    return dict(sorted(services.items()))


def compose_containers(
    target: Target,
    project: str,
    *,
    timeout: float,
    service: str | None = None,
    include_stopped: bool = False,
) -> dict[str, str]:
    """The project's containers, ``{service: full id}``: running ones only unless ``include_stopped``. Raises
    ``RemoteError`` when the server cannot be asked and ``ContainerListFailed`` when ``docker ps`` fails."""
    result = run_capture(target, list_argv(project, service=service, include_stopped=include_stopped), timeout=timeout)
    if not result.ok:
        raise ContainerListFailed(f"docker ps failed: {result.stderr.strip()[:300]}")
    return parse(result.stdout)
