"""Live container logs over a websocket (``monitoring.logs`` holds the follower and the stream).

Protocol: connect to ``/ws/environments/<id>/logs/<service>/?after=<position>``. The socket must carry a session of
a user who may see the environment's details (owner, operator or viewer: customers never see application logs)
and come from one of the panel's own origins (checked in ``panel.asgi``), else it closes before any data: 4401
signed out, 4404 no such environment for this user or no such service among its containers (refused at the
handshake: HTTP 403); 4503 (after the handshake) when the server cannot be reached, which is worth retrying. Without ``after`` it
sends the newest ``MONITOR_LOG_TAIL_LINES`` stored lines, then live lines; with it, every line after that position
(a reconnect loses and repeats nothing while the stream still holds it).
Frames: ``{"type": "lines", "lines": [{"id", "n", "ts", "stream", "text"}]}`` (``n`` counts the stream's lines: a jump
means lines the stream no longer held): one frame carries whatever arrived since
the previous one (at most ``MONITOR_LOG_FRAME_LINES``), so bursts travel in batches.

Like the job log socket, it re-reads its session and the user's access every ``JOB_WS_ACCESS_CHECK_SECONDS`` and
closes with 4401 or 4403 when either is gone. Every ``MONITOR_LOG_HEARTBEAT_SECONDS`` it renews its viewer entry
and makes sure some process follows the stream (it takes the follower over when its holder died).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from monitoring.logs import (
    LogsUnavailable,
    Source,
    add_viewer,
    ensure_follower,
    environment_services,
    remove_viewer,
    serialize_entry,
    stream_key,
)
from panel.accounts.choices import Action
from panel.accounts.scoping import for_user
from panel.inventory.models import Environment
from panel.jobs.consumers import (
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHENTICATED,
    MIN_INTERVAL,
    connect_refusal,
    session_user,
)
from panel.remote.containers import SERVICE_NAME
from panel.remote.errors import RemoteError
from panel.remote.ssh import Target

logger = logging.getLogger(__name__)

CLOSE_UNAVAILABLE = 4503  # the server cannot be reached (the page retries); the others as the job log socket's
POSITION = re.compile(r"^\d{1,20}-\d{1,20}$")


class ContainerLogConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Streams one service's container log from the shared Redis Stream; re-checks access on time."""

    source: Source
    user_id: int
    session_key: str | None
    viewer: str
    closed = False
    reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        refusal = await connect_refusal(self.scope)
        if refusal is not None:
            await self.close(code=refusal)
            return
        user, session = self.scope["user"], self.scope["session"]
        kwargs = self.scope["url_route"]["kwargs"]
        environment_id, service = int(kwargs["environment_id"]), str(kwargs["service"])
        environment = await self._environment(user, environment_id)
        if environment is None:
            await database_sync_to_async(_record_denied)(user, environment_id)
            await self.close(code=CLOSE_NOT_FOUND)
            return
        if not SERVICE_NAME.match(service):
            await self.close(code=CLOSE_NOT_FOUND)
            return
        try:
            # The allowlist: only a service that has a container in the environment's compose project.
            services = await asyncio.to_thread(environment_services, environment)
            target = Target.for_server(environment.server)
        except (LogsUnavailable, RemoteError) as exc:
            # Accepted, then closed: the browser learns it is worth trying again later (4503 is not final).
            logger.info("logs of environment %s unavailable: %s", environment_id, exc)
            await self.accept()
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        if service not in services:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode(errors="replace"))
        after = query.get("after", [""])[0]
        self.source = Source(environment_id, service, target, environment.compose_project)
        self.user_id = user.pk
        self.session_key = session.session_key
        self.viewer = secrets.token_hex(8)
        self.redis = aioredis.Redis.from_url(settings.REDIS_URL)
        await self.accept()
        self.reader = asyncio.ensure_future(self._stream(after if POSITION.match(after) else ""))

    async def disconnect(self, code: int) -> None:
        self.closed = True
        if self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel()
        if hasattr(self, "viewer"):
            try:
                await asyncio.to_thread(remove_viewer, self.source.environment_id, self.source.service, self.viewer)
            except Exception:  # Redis gone: the entry goes stale by itself
                logger.warning("could not remove log viewer %s", self.viewer, exc_info=True)
            await self.redis.aclose()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Clients send nothing meaningful (pause and filter are the browser's); ignore it."""

    async def _stream(self, after: str) -> None:
        """Register, start or find the follower, send the tail (or what follows ``after``), then live lines."""
        key = stream_key(self.source.environment_id, self.source.service)
        heartbeat = max(MIN_INTERVAL, settings.MONITOR_LOG_HEARTBEAT_SECONDS)
        check_every = max(MIN_INTERVAL, settings.JOB_WS_ACCESS_CHECK_SECONDS)
        beat_at = checked_at = 0.0
        last = after
        while not self.closed:
            try:
                now = time.monotonic()
                if now - beat_at >= heartbeat:
                    beat_at = now
                    await asyncio.to_thread(add_viewer, self.source.environment_id, self.source.service, self.viewer)
                    await asyncio.to_thread(ensure_follower, self.source)
                if checked_at and now - checked_at >= check_every:
                    checked_at = now
                    verdict = await self._access_verdict()
                    if verdict is not None:
                        await self._close(verdict)
                        return
                checked_at = checked_at or now
                if not last:
                    newest = await self.redis.xrevrange(key, count=settings.MONITOR_LOG_TAIL_LINES)
                    await self._send_lines([serialize_entry(i, f) for i, f in reversed(newest)])
                    last = serialize_entry(*newest[0])["id"] if newest else "0-0"
                    continue
                wait_ms = int(1000 * max(0.05, min(beat_at + heartbeat, checked_at + check_every) - now))
                found = await self.redis.xread({key: last}, count=settings.MONITOR_LOG_FRAME_LINES, block=wait_ms)
                if found:
                    lines = [serialize_entry(i, f) for i, f in found[0][1]]
                    await self._send_lines(lines)
                    last = lines[-1]["id"]
                    if settings.MONITOR_LOG_BATCH_SECONDS:
                        await asyncio.sleep(settings.MONITOR_LOG_BATCH_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A Redis restart or an SSH hiccup must not end the socket: the next round tries again.
                logger.warning("log socket of %s could not read its stream", key, exc_info=True)
                await asyncio.sleep(1.0)

    async def _send_lines(self, lines: list[dict[str, Any]]) -> None:
        if lines and not self.closed:
            await self.send_json({"type": "lines", "lines": lines})

    async def _access_verdict(self) -> int | None:
        """None while the session still holds the same, fully signed-in user who may see the environment's
        details; else the close code."""
        user = await session_user(self.session_key, self.user_id)
        if user is None:
            return CLOSE_UNAUTHENTICATED
        if await self._environment(user, self.source.environment_id) is None:
            return CLOSE_FORBIDDEN
        return None

    async def _close(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            await self.close(code=code)

    @database_sync_to_async
    def _environment(self, user: Any, environment_id: int) -> Environment | None:
        queryset = for_user(Environment.objects.select_related("server"), user, Action.VIEW_DETAILS)
        return queryset.filter(pk=environment_id).first()


def _record_denied(user: Any, environment_id: int) -> None:
    from panel.accounts.services import record

    record(
        action="access.denied",
        actor=user,
        security=True,
        detail={"object": "environment logs", "id": environment_id, "via": "websocket"},
    )
