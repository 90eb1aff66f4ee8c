"""The mail catcher of an environment: find it, talk to it, read and delete its mails.

- **Which environments.** Staging, test and development ones (``has_catcher_kind``); production environments
  have no catcher view at all. A catcher is a compose service of the environment named in ``MAILCATCHER_SERVICES``
  (doodba's ``test.yaml`` calls MailHog ``smtp``) with a running container.
- **Finding it.** ``docker ps`` filtered by the environment's compose labels (project and service) gives the
  container's full id; ``docker inspect`` of that id gives its IP on the project's network. Nothing the browser
  sends names a container, a service or an address.
- **Reaching it.** A ``direct-tcpip`` channel on the server's pooled SSH connection to that IP and
  ``MAILCATCHER_HTTP_PORT`` (``panel.remote.tunnel``): no port is published on the server.
- **Which API.** ``adapters.detect`` asks MailHog's v2 and Mailpit's v1 API; the address and the answer are
  cached for ``MAILCATCHER_ADDRESS_CACHE_SECONDS`` and forgotten on the first failed request.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache

from mailcatcher.adapters import ADAPTERS, Adapter, CatcherError, Mail, MailPage, Part, detect
from panel.inventory.choices import EnvironmentKind
from panel.inventory.models import Environment
from panel.remote.containers import ContainerListFailed, compose_containers
from panel.remote.errors import RemoteError
from panel.remote.ssh import Target, run_capture
from panel.remote.tunnel import HTTPAnswer, TunnelError, request

CATCHER_KINDS = frozenset({EnvironmentKind.STAGING, EnvironmentKind.TEST, EnvironmentKind.DEVELOPMENT})


class CatcherUnavailable(Exception):
    """The environment's catcher cannot be reached right now (or it has none); the message says why."""


@dataclass(frozen=True)
class Catcher:
    """Where an environment's catcher answers and which API it speaks."""

    service: str
    container: str
    address: str
    port: int
    kind: str

    @property
    def label(self) -> str:
        """MailHog or Mailpit."""
        return ADAPTERS[self.kind].label


def has_catcher_kind(environment: Environment) -> bool:
    """Whether the environment may have a mail catcher view (never production)."""
    return environment.kind in CATCHER_KINDS


def _cache_key(environment: Environment) -> str:
    return f"mailcatcher:catcher:{environment.pk}:{environment.server_id}:{environment.compose_project}"


def _find_container(target: Target, environment: Environment) -> tuple[str, str]:
    """``(service, full container id)`` of the first running catcher service of the environment."""
    try:
        running = compose_containers(target, environment.compose_project, timeout=settings.MAILCATCHER_TIMEOUT)
    except ContainerListFailed as exc:
        raise CatcherUnavailable(f"{exc} (on {environment.server.name})") from exc
    for service in settings.MAILCATCHER_SERVICES:
        if service in running:
            return service, running[service]
    names = ", ".join(settings.MAILCATCHER_SERVICES)
    raise CatcherUnavailable(
        f"{environment} runs no mail catcher: no running container of a service named {names} "
        f"(doodba's test.yaml calls MailHog smtp). Deploy it, or start that service."
    )


def _container_address(target: Target, environment: Environment, container: str) -> str:
    """The container's IP, preferably on the project's default network."""
    result = run_capture(
        target,
        ["docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}", "--", container],
        timeout=settings.MAILCATCHER_TIMEOUT,
    )
    if not result.ok:
        raise CatcherUnavailable(f"docker inspect failed on {environment.server.name}: {result.stderr.strip()[:300]}")
    try:
        networks = json.loads(result.stdout or "{}")
    except ValueError as exc:
        raise CatcherUnavailable("docker inspect answered something that is not JSON.") from exc
    preferred = f"{environment.compose_project}_default"
    names = sorted(networks or {}, key=lambda name: (name != preferred, name))
    for name in names:
        network = networks[name]
        address = network.get("IPAddress") if isinstance(network, dict) else None
        if isinstance(address, str) and address:
            try:
                return str(ipaddress.ip_address(address))
            except ValueError:
                continue
    raise CatcherUnavailable("The mail catcher's container has no IP address on any network.")


def _sender(target: Target, address: str, port: int) -> Any:
    def send(method: str, path: str, query: dict[str, str] | None) -> HTTPAnswer:
        return request(
            target,
            address,
            port,
            method,
            path,
            query=query,
            timeout=settings.MAILCATCHER_TIMEOUT,
            limit=settings.MAILCATCHER_MAX_BYTES,
        )

    return send


def locate(environment: Environment, *, fresh: bool = False) -> Catcher:
    """The environment's catcher (cached unless ``fresh``); ``CatcherUnavailable`` says why there is none."""
    if not has_catcher_kind(environment):
        raise CatcherUnavailable("Production environments have no mail catcher.")
    key = _cache_key(environment)
    cached = None if fresh else cache.get(key)
    if isinstance(cached, dict):
        try:
            return Catcher(**cached)
        except TypeError:
            pass
    try:
        target = Target.for_server(environment.server)
        service, container = _find_container(target, environment)
        address = _container_address(target, environment, container)
        port = settings.MAILCATCHER_HTTP_PORT
        kind = detect(_sender(target, address, port)).kind
    except RemoteError as exc:
        raise CatcherUnavailable(str(exc)) from exc
    catcher = Catcher(service=service, container=container, address=address, port=port, kind=kind)
    if settings.MAILCATCHER_ADDRESS_CACHE_SECONDS:
        cache.set(key, catcher.__dict__, settings.MAILCATCHER_ADDRESS_CACHE_SECONDS)
    return catcher


def forget(environment: Environment) -> None:
    """Drop the cached address (the container was replaced, the catcher changed)."""
    cache.delete(_cache_key(environment))


def _adapter(environment: Environment, catcher: Catcher) -> Adapter:
    target = Target.for_server(environment.server)
    return ADAPTERS[catcher.kind](_sender(target, catcher.address, catcher.port))


def _call(environment: Environment, operation: str, *args: Any, **kwargs: Any) -> Any:
    """Run ``operation`` of the adapter; a failure on a cached address retries once on a fresh one."""
    for attempt in (0, 1):
        catcher = locate(environment, fresh=attempt == 1)
        try:
            return getattr(_adapter(environment, catcher), operation)(*args, **kwargs)
        except CatcherError:
            raise  # the catcher answered: the answer stands
        except (TunnelError, RemoteError) as exc:
            forget(environment)
            if attempt == 1:
                raise CatcherUnavailable(str(exc)) from exc
    raise AssertionError("unreachable")


def list_mails(
    *, environment: Environment, start: int = 0, limit: int | None = None, query: str = "", search_kind: str = "any"
) -> MailPage:
    """A page of the environment's caught mails, newest first (``query``: only those that match)."""
    limit = min(limit or settings.MAILCATCHER_PAGE_SIZE, 250)
    return _call(environment, "list", start=max(0, start), limit=max(1, limit), query=query, search_kind=search_kind)  # type: ignore[no-any-return]


def get_mail(*, environment: Environment, message_id: str) -> Mail:
    """One caught mail (``MailNotFound`` for an unknown id)."""
    return _call(environment, "get", message_id)  # type: ignore[no-any-return]


def get_part(*, environment: Environment, message_id: str, part: str) -> Part:
    """One attachment of a caught mail."""
    return _call(environment, "part", message_id, part)  # type: ignore[no-any-return]


def delete_all(*, environment: Environment, actor: Any = None, request: Any = None) -> None:
    """Delete every mail the environment's catcher holds, and record who did it."""
    from panel.accounts.services import record

    catcher = locate(environment)
    _call(environment, "delete_all")
    record(
        action="mailcatcher.delete_all",
        actor=actor,
        obj=environment,
        request=request,
        detail={"catcher": catcher.kind, "service": catcher.service},
    )
