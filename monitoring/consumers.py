"""Live health over a websocket: the dashboard and the environment page.

Protocol: connect to ``/ws/health/`` (every environment the user may see: the dashboard) or
``/ws/health/?environment=<id>`` (one environment: its page). The socket must carry a session of a fully signed-in
user and come from one of the panel's own origins (checked in ``panel.asgi``), as the job log's; an environment the
user may not see closes it with 4404 before any data. It joins the channel group of every organization the user
may see (``monitoring.live.health_group``), sends the current health once, then every change the poller pushes.

Frames: ``{"type": "health", "environments": [...], "servers": [...]}``. Customers get each environment's ``id``,
``state``, ``state_label``, ``css``, ``since`` and ``uptime`` only, and no servers; staff get the message, response
times, CPU, memory and restarts too, and on the dashboard the servers' reachability, load and disk.

Access is re-checked every ``JOB_WS_ACCESS_CHECK_SECONDS`` and before a send once that long has passed (the job log
consumer's ``session_user``): signed out closes with 4401; losing any organization the socket joined (removed,
demoted from staff to customer, which changes what it may be sent) or the one environment closes with 4403. Each
check also joins the groups again, so a Redis flush costs at most one check interval of live updates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from monitoring.live import for_viewer, health_group, snapshot
from panel.accounts.choices import Action
from panel.accounts.scoping import for_user, organization_ids
from panel.inventory.models import Environment
from panel.jobs.consumers import (
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHENTICATED,
    MIN_INTERVAL,
    connect_refusal,
    session_user,
)
from panel.validators import parse_id

logger = logging.getLogger(__name__)


class HealthConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Streams the health of what the user may see; re-checks access on time."""

    user_id: int
    session_key: str | None
    environment_id: int | None
    view_orgs: frozenset[int]
    detail_orgs: frozenset[int]
    server_orgs: frozenset[int]  # where the user sees details: servers of these organizations may be sent
    closed: bool
    checked_at: float
    watchdog: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.closed = False
        self.view_orgs = frozenset()
        refusal = await connect_refusal(self.scope)
        if refusal is not None:
            await self.close(code=refusal)
            return
        user = self.scope["user"]
        query = parse_qs(self.scope.get("query_string", b"").decode(errors="replace"))
        raw = query.get("environment", [None])[0]
        self.environment_id = parse_id(raw) if raw is not None else None
        if raw is not None and self.environment_id is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.user_id = user.pk
        self.session_key = self.scope["session"].session_key
        scope = await self._scope_of(user)
        if scope is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.view_orgs, self.detail_orgs = scope
        self.server_orgs = await database_sync_to_async(organization_ids)(user, Action.VIEW_DETAILS)
        self.checked_at = time.monotonic()
        await self._join()
        await self.accept()
        await self._send_snapshot()
        self.watchdog = asyncio.ensure_future(self._watch())

    async def disconnect(self, code: int) -> None:
        self.closed = True
        if self.watchdog is not None and self.watchdog is not asyncio.current_task():
            self.watchdog.cancel()
        if self.channel_layer is None:
            return
        for organization_id in self.view_orgs:
            try:
                await self.channel_layer.group_discard(health_group(organization_id), self.channel_name)
            except Exception:  # noqa: BLE001 - Redis gone: the membership expires by itself
                logger.warning("could not leave the health group of organization %s", organization_id)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Clients send nothing meaningful; ignore it."""

    async def health_update(self, event: dict[str, Any]) -> None:
        organization_id = event.get("organization")
        if organization_id not in self.view_orgs:
            return
        frame = self._frame(organization_id, event)
        if frame["environments"] or frame["servers"]:
            await self._send(frame)

    async def _send(self, frame: dict[str, Any]) -> None:
        """Send unless closed or access, re-checked when due, is gone (then the socket is closed)."""
        if self.closed:
            return
        if time.monotonic() - self.checked_at >= self._check_every() and not await self._check_access():
            return
        await self.send_json(frame)

    async def _send_snapshot(self) -> None:
        for organization_id, entry in (await self._snapshot()).items():
            await self._send(self._frame(organization_id, entry))

    def _frame(self, organization_id: int, entry: dict[str, Any]) -> dict[str, Any]:
        return for_viewer(
            entry,
            details=organization_id in self.detail_orgs,
            server_orgs=self.server_orgs,
            environment_id=self.environment_id,
        )

    async def _join(self) -> None:
        for organization_id in self.view_orgs:
            await self.channel_layer.group_add(health_group(organization_id), self.channel_name)

    @staticmethod
    def _check_every() -> float:
        return max(MIN_INTERVAL, settings.JOB_WS_ACCESS_CHECK_SECONDS)

    async def _watch(self) -> None:
        """Re-check access on time; rejoin the groups (a Redis flush drops them)."""
        while not self.closed:
            await asyncio.sleep(max(MIN_INTERVAL, self.checked_at + self._check_every() - time.monotonic()))
            try:
                if not self.closed and time.monotonic() - self.checked_at >= self._check_every():
                    if await self._check_access():
                        await self._join()
            except Exception:
                # A database or Redis hiccup must not end the watchdog: the next round tries again.
                logger.warning("live health socket could not re-check its access", exc_info=True)

    async def _check_access(self) -> bool:
        """Re-read the session and the user's scope; close the socket and answer False when either shrank."""
        self.checked_at = time.monotonic()
        user = await session_user(self.session_key, self.user_id)
        if user is None:
            await self._close(CLOSE_UNAUTHENTICATED)
            return False
        scope = await self._scope_of(user)
        # Any organization lost, or seen with fewer rights: what this socket may be sent changed.
        server_orgs = await database_sync_to_async(organization_ids)(user, Action.VIEW_DETAILS)
        if (
            scope is None
            or not self.view_orgs <= scope[0]
            or not self.detail_orgs <= scope[1]
            or not self.server_orgs <= server_orgs
        ):
            await self._close(CLOSE_FORBIDDEN)
            return False
        return True

    async def _close(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            await self.close(code=code)

    @database_sync_to_async
    def _scope_of(self, user: Any) -> tuple[frozenset[int], frozenset[int]] | None:
        """(organizations seen, organizations seen in detail) of this socket; None when its environment is not
        visible (any more)."""
        if self.environment_id is not None:
            organization_id = (
                for_user(Environment, user, Action.VIEW)
                .filter(pk=self.environment_id)
                .values_list("project__organization_id", flat=True)
                .first()
            )
            if organization_id is None:
                return None
            view = frozenset({organization_id})
            return view, view & organization_ids(user, Action.VIEW_DETAILS)
        return organization_ids(user, Action.VIEW), organization_ids(user, Action.VIEW_DETAILS)

    @database_sync_to_async
    def _snapshot(self) -> dict[int, dict[str, Any]]:
        if self.environment_id is not None:
            ids = [self.environment_id]
        else:
            ids = list(
                Environment.objects.filter(project__organization_id__in=self.view_orgs).values_list("pk", flat=True)
            )
        return snapshot(ids)
