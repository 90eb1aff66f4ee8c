"""Live job output over a websocket.

Protocol: connect to ``/ws/jobs/<id>/?after=<seq>``. The socket must carry a session of a user who may see the
job's details and come from one of the panel's own origins (checked in ``panel.asgi``), otherwise it is closed
before any data. The server joins the job's group first, then sends every stored line after ``after``, then live
lines; any gap (a dropped channel message) is filled from the database, and a line is never sent twice on one
socket.
Frames: ``{"type": "lines", "lines": [{"seq", "ts", "stream", "text"}]}``,
``{"type": "steps", "steps": [{"name", "status", "seconds", "first_seq", "last_seq"}]}`` while steps change, and
``{"type": "progress", "progress": {"label", "done", "total"}}`` while a backup, restore or download moves data
(bytes; ``total`` null when unknown), and ``{"type": "status", "status", "reason", "finished_at"}``; the final
status is sent once, after the last line.

Live pushes through the channel layer are best effort: a Redis flush or restart drops the job's group and its
messages. So while the job runs, a socket that heard nothing for ``JOB_WS_QUIET_SECONDS`` reads the database
itself (lines, then the status, sending the final status if the job ended) and joins its group again.

Access is not only checked at connect: every ``JOB_WS_ACCESS_CHECK_SECONDS``, and before sending anything once
that long has passed since the last check, the socket re-reads its session (a logout deletes it; it must still
hold the same active user, past every login step such as the second factor: ``is_fully_authenticated``) and the
user's access to the job, and closes with 4401 (signed out) or 4403 (access lost) when either is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import import_module
from typing import Any
from urllib.parse import parse_qs

from channels.auth import get_user
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from panel.accounts.choices import Action
from panel.accounts.scoping import for_user
from panel.accounts.services import is_fully_authenticated
from panel.jobs.choices import JobStatus
from panel.jobs.models import Job, JobLogLine
from panel.jobs.services import group_name, serialize_line

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
# The watchdog never spins faster than this, whatever the settings say.
MIN_INTERVAL = 0.2


class JobLogConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Streams one job's log lines and status changes; catches up on its own and re-checks access."""

    job_id: int
    user_id: int
    session_key: str | None
    last_sent: int
    finished: bool
    closed: bool
    last_event: float
    checked_at: float
    lock: asyncio.Lock
    watchdog: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        session = self.scope.get("session")
        if await connect_refusal(self.scope) is not None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        if not await self._may_see(user):
            await database_sync_to_async(_record_denied)(user, self.job_id)
            await self.close(code=CLOSE_NOT_FOUND)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode(errors="replace"))
        try:
            self.last_sent = max(0, int(query.get("after", ["0"])[0]))
        except ValueError:
            self.last_sent = 0
        self.user_id = user.pk
        self.session_key = session.session_key
        self.finished = False
        self.closed = False
        self.lock = asyncio.Lock()
        self.last_event = self.checked_at = time.monotonic()
        await self.channel_layer.group_add(group_name(self.job_id), self.channel_name)
        await self.accept()
        async with self.lock:
            await self._catch_up()
            status = await self._status()
            if status is not None and status["status"] not in ACTIVE:
                await self._send_status(status)
        self.watchdog = asyncio.ensure_future(self._watch())

    async def disconnect(self, code: int) -> None:
        self.closed = True
        if self.watchdog is not None and self.watchdog is not asyncio.current_task():
            self.watchdog.cancel()
        if hasattr(self, "job_id") and self.channel_layer is not None:
            try:
                await self.channel_layer.group_discard(group_name(self.job_id), self.channel_name)
            except Exception:  # Redis gone: the membership expires by itself
                logger.warning("could not leave channel group of job %s", self.job_id, exc_info=True)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Clients do not send anything meaningful; ignore it."""

    async def job_lines(self, event: dict[str, Any]) -> None:
        self.last_event = time.monotonic()
        async with self.lock:
            lines = [line for line in event["lines"] if line["seq"] > self.last_sent]
            if not lines:
                return
            if lines[0]["seq"] != self.last_sent + 1:
                await self._catch_up()
                return
            if await self._send({"type": "lines", "lines": lines}):
                self.last_sent = lines[-1]["seq"]

    async def job_steps(self, event: dict[str, Any]) -> None:
        self.last_event = time.monotonic()
        async with self.lock:
            if not self.finished:
                await self._send({"type": "steps", "steps": event["steps"]})

    async def job_progress(self, event: dict[str, Any]) -> None:
        self.last_event = time.monotonic()
        async with self.lock:
            if not self.finished:
                await self._send({"type": "progress", "progress": event["progress"]})

    async def job_status(self, event: dict[str, Any]) -> None:
        self.last_event = time.monotonic()
        async with self.lock:
            await self._catch_up()
            await self._send_status({key: value for key, value in event.items() if key != "type"})

    async def _watch(self) -> None:
        """Re-check access on time, and resynchronise from the database while a running job is quiet."""
        quiet = max(MIN_INTERVAL, settings.JOB_WS_QUIET_SECONDS)
        check_every = max(MIN_INTERVAL, settings.JOB_WS_ACCESS_CHECK_SECONDS)
        while not self.closed:
            now = time.monotonic()
            due = self.checked_at + check_every
            if not self.finished:
                due = min(due, self.last_event + quiet)
            await asyncio.sleep(max(MIN_INTERVAL, due - now))
            try:
                async with self.lock:
                    if self.closed:
                        return
                    if time.monotonic() - self.checked_at >= check_every and not await self._check_access():
                        return
                    if not self.finished and time.monotonic() - self.last_event >= quiet:
                        await self._resync()
            except Exception:
                # A database or Redis hiccup must not end the watchdog: the next round tries again.
                logger.warning("live log socket of job %s could not resynchronise", self.job_id, exc_info=True)

    async def _resync(self) -> None:
        """Join the group again (a flush dropped it), send stored lines, then the final status if the job ended."""
        self.last_event = time.monotonic()
        try:
            await self.channel_layer.group_add(group_name(self.job_id), self.channel_name)
        except Exception:
            logger.warning("could not rejoin channel group of job %s", self.job_id, exc_info=True)
        await self._catch_up()
        status = await self._status()
        if status is None:
            await self._close(CLOSE_NOT_FOUND)
        elif status["status"] not in ACTIVE:
            await self._catch_up()
            await self._send_status(status)

    async def _send(self, frame: dict[str, Any]) -> bool:
        """Send a frame unless the socket closed or access, re-checked when due, is gone (then close)."""
        if self.closed:
            return False
        check_every = max(MIN_INTERVAL, settings.JOB_WS_ACCESS_CHECK_SECONDS)
        if time.monotonic() - self.checked_at >= check_every and not await self._check_access():
            return False
        await self.send_json(frame)
        return True

    async def _send_status(self, status: dict[str, Any]) -> None:
        """Send a status frame; the final one only once."""
        if self.finished:
            return
        frame = {
            "type": "status",
            "status": status["status"],
            "reason": status.get("reason", ""),
            "finished_at": status.get("finished_at"),
        }
        if await self._send(frame) and frame["status"] not in ACTIVE:
            self.finished = True

    async def _catch_up(self) -> None:
        while not self.closed:
            lines = await self._lines_after(self.last_sent)
            if not lines or not await self._send({"type": "lines", "lines": lines}):
                return
            self.last_sent = lines[-1]["seq"]

    async def _check_access(self) -> bool:
        """Re-read the session and the user's access; close the socket and answer False when either is gone."""
        self.checked_at = time.monotonic()
        verdict = await self._access_verdict()
        if verdict is not None:
            await self._close(verdict)
            return False
        return True

    async def _access_verdict(self) -> int | None:
        """None while the session still holds the same, fully signed-in user who may see the job; else a code."""
        user = await session_user(self.session_key, self.user_id)
        if user is None:
            return CLOSE_UNAUTHENTICATED
        if not await self._may_see(user):
            return CLOSE_FORBIDDEN
        return None

    async def _close(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            await self.close(code=code)

    @database_sync_to_async
    def _may_see(self, user: Any) -> bool:
        return for_user(Job, user, Action.VIEW_DETAILS).filter(pk=self.job_id).exists()

    @database_sync_to_async
    def _lines_after(self, after: int) -> list[dict[str, Any]]:
        rows = JobLogLine.objects.filter(job_id=self.job_id, seq__gt=after).order_by("seq")[
            : settings.JOB_LOG_PAGE_SIZE
        ]
        return [serialize_line(row) for row in rows]

    @database_sync_to_async
    def _status(self) -> dict[str, Any] | None:
        job = Job.objects.filter(pk=self.job_id).only("status", "reason", "finished_at").first()
        if job is None:
            return None
        return {
            "status": job.status,
            "reason": job.reason,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        }


async def connect_refusal(scope: dict[str, Any]) -> int | None:
    """``CLOSE_UNAUTHENTICATED`` unless the socket's scope carries a session of a fully signed-in user (past every
    login step such as the second factor); None when it does. Every panel socket asks this before anything else."""
    user = scope.get("user")
    session = scope.get("session")
    if user is None or not user.is_authenticated or session is None:
        return CLOSE_UNAUTHENTICATED
    if not await database_sync_to_async(is_fully_authenticated)(user, session):
        return CLOSE_UNAUTHENTICATED
    return None


async def session_user(session_key: str | None, user_id: int) -> Any | None:
    """The user the stored session ``session_key`` still holds, if it is ``user_id``, active and fully signed in;
    None otherwise (logged out, another user, deactivated). Open sockets re-check their access with it."""
    if not session_key:
        return None
    engine = import_module(settings.SESSION_ENGINE)
    # A fresh store: the scope's one keeps what it read at connect, a logout deletes the stored session.
    session = engine.SessionStore(session_key=session_key)
    user = await get_user({"session": session})
    if not user.is_authenticated or user.pk != user_id or not user.is_active:
        return None
    if not await database_sync_to_async(is_fully_authenticated)(user, session):
        return None
    return user


def _record_denied(user: Any, job_id: int) -> None:
    from panel.accounts.services import record

    record(
        action="access.denied", actor=user, security=True, detail={"object": "job", "id": job_id, "via": "websocket"}
    )
