"""The terminal websocket: ``/ws/environments/<id>/terminal/``.

The socket's Origin was checked before it got here (``panel.asgi.OriginValidator``: the panel's own origin only),
and its session must hold a fully signed-in user. It is accepted, then its first message must be
``{"type": "open", "ticket": ..., "cols": ..., "rows": ...}`` within ``TERMINAL_OPEN_SECONDS``. The ticket travels
in that message, not in the URL, so it never lands in an access log or a proxy's log (it is one-time and lives 30 s
anyway). Nothing runs on the server before the ticket is used (``terminal.services.consume_ticket``).

Then: binary frames from the browser are keystrokes, binary frames to it are the PTY's output; text frames are
JSON control messages (``{"type": "resize", "cols", "rows"}`` in, ``{"type": "ready" | "end", ...}`` out).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from panel.jobs.consumers import connect_refusal, session_user
from terminal.models import TerminalSession
from terminal.services import (
    Recorder,
    RemoteTerminal,
    TerminalRefused,
    TerminalUnavailable,
    clamp_size,
    consume_ticket,
    environment_for_terminal,
    finish_session,
    plan_session,
    record_refusal,
    start_session,
)

logger = logging.getLogger(__name__)

CLOSE_BAD_MESSAGE = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_TIMEOUT = 4408
CLOSE_UNAVAILABLE = 4503
ACCESS_CHECK_SECONDS = 5.0


class TerminalConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """One terminal session: ticket first, then a PTY on the server until either side ends it."""

    remote: RemoteTerminal | None = None
    session: TerminalSession | None = None
    recorder: Recorder | None = None
    ended = False
    opening = False
    tasks: list[asyncio.Task[None]]

    async def connect(self) -> None:
        self.tasks = []
        refusal = await connect_refusal(self.scope)
        if refusal is not None:
            await self.close(code=refusal)
            return
        self.user = self.scope["user"]
        self.session_key = self.scope["session"].session_key
        self.environment_id = int(self.scope["url_route"]["kwargs"]["environment_id"])
        self.output: asyncio.Queue[bytes] = asyncio.Queue()
        self.last_input = self.started = time.monotonic()
        await self.accept()
        self.tasks.append(asyncio.ensure_future(self._open_deadline()))

    async def _open_deadline(self) -> None:
        await asyncio.sleep(settings.TERMINAL_OPEN_SECONDS)
        if self.remote is None and not self.ended and not self.opening:
            await self._refuse(TerminalRefused("No ticket in time.", CLOSE_TIMEOUT, "no_ticket"))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.ended:
            return
        if self.remote is None:
            if self.opening:
                return
            await self._open(text_data)
            return
        if bytes_data is not None:
            self.last_input = time.monotonic()
            if len(bytes_data) <= 4096:
                self.remote.write(bytes_data)
            else:
                await asyncio.to_thread(self.remote.write, bytes_data)
            return
        message = _json(text_data)
        if message.get("type") == "resize":
            cols, rows = clamp_size(message.get("cols"), message.get("rows"))
            await asyncio.to_thread(self.remote.resize, cols, rows)
            if self.recorder is not None:
                self.recorder.resize(cols, rows)

    async def _open(self, text_data: str | None) -> None:
        message = _json(text_data)
        if message.get("type") != "open":
            await self._refuse(TerminalRefused("The first message must open the terminal.", CLOSE_BAD_MESSAGE, "bad"))
            return
        self.opening = True
        try:
            environment, profile = await database_sync_to_async(consume_ticket)(
                message.get("ticket"), user=self.user, environment_id=self.environment_id
            )
        except TerminalRefused as refusal:
            await self._refuse(refusal)
            return
        cols, rows = clamp_size(message.get("cols"), message.get("rows"))
        loop = asyncio.get_running_loop()
        try:
            plan = await asyncio.to_thread(plan_session, environment, profile)
            self.session = await database_sync_to_async(start_session)(
                user=self.user, environment=environment, profile=profile, plan=plan
            )
            title = f"{profile} on {environment} by {self.user.get_username()}"
            self.recorder = Recorder(self.session.recording, cols, rows, title)
            self.remote = await asyncio.to_thread(
                RemoteTerminal, plan, cols, rows, lambda data: _deliver(loop, self.output, data)
            )
        except TerminalUnavailable as exc:
            logger.info("terminal on environment %s unavailable: %s", self.environment_id, exc)
            await self.send(text_data=json.dumps({"type": "end", "reason": "unavailable", "message": str(exc)}))
            await self._end("unavailable", code=CLOSE_UNAVAILABLE)
            return
        self.opening = False
        await self.send(text_data=json.dumps({"type": "ready", "profile": profile, "session": self.session.pk}))
        self.tasks.append(asyncio.ensure_future(self._pump()))
        self.tasks.append(asyncio.ensure_future(self._watch()))

    async def _pump(self) -> None:
        """The PTY's output to the browser (coalesced per event-loop turn) and to the recording."""
        while not self.ended:
            data = await self.output.get()
            finished = not data
            chunks = [data]
            while not finished and not self.output.empty():
                more = self.output.get_nowait()
                finished = not more
                chunks.append(more)
            payload = b"".join(chunks)
            if payload:
                await self.send(bytes_data=payload)
                if self.recorder is not None:
                    self.recorder.output(payload)
            if finished:
                await self._end("exited")
                return

    async def _watch(self) -> None:
        """The limits (idle, maximum length) every second; the user's session and access every
        ``ACCESS_CHECK_SECONDS``."""
        checked = time.monotonic()
        while not self.ended:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if now - self.last_input >= settings.TERMINAL_IDLE_SECONDS:
                await self._end("idle_timeout")
                return
            if now - self.started >= settings.TERMINAL_MAX_SECONDS:
                await self._end("max_length")
                return
            if now - checked >= ACCESS_CHECK_SECONDS:
                checked = now
                # A logout (or a lost second factor, a deactivated account) ends the session like a lost role.
                if await session_user(self.session_key, self.user.pk) is None:
                    await self._end("logged_out", code=CLOSE_UNAUTHENTICATED)
                    return
                try:
                    await database_sync_to_async(environment_for_terminal)(self.user, self.environment_id)
                except TerminalRefused:
                    await self._end("access_lost", code=4403)
                    return

    async def _refuse(self, refusal: TerminalRefused) -> None:
        self.ended = True
        await database_sync_to_async(record_refusal)(self.user, self.environment_id, refusal)
        try:
            await self.send(text_data=json.dumps({"type": "end", "reason": refusal.reason, "message": str(refusal)}))
            await self.close(code=refusal.code if refusal.code >= 4000 else CLOSE_BAD_MESSAGE)
        except Exception:  # the client left already
            logger.debug("terminal socket already closed", exc_info=True)

    async def _end(self, reason: str, code: int = 1000) -> None:
        """End the session once: the remote processes, the recording, the row and the audit, then the socket."""
        if self.ended:
            return
        self.ended = True
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        if self.remote is not None:
            try:
                await asyncio.to_thread(self.remote.close)
            except Exception:
                logger.warning("could not end terminal session %s", self.remote.plan.tag, exc_info=True)
        if self.session is not None:
            await database_sync_to_async(finish_session)(self.session, reason=reason, recorder=self.recorder)
        try:
            await self.send(text_data=json.dumps({"type": "end", "reason": reason}))
            await self.close(code=code)
        except Exception:  # the client left already
            logger.debug("terminal socket already closed", exc_info=True)

    async def disconnect(self, code: int) -> None:
        if not self.ended and hasattr(self, "user"):
            await self._end("closed")
        else:
            for task in getattr(self, "tasks", []):
                if task is not asyncio.current_task():
                    task.cancel()


def _json(text: str | None) -> dict[str, Any]:
    if not text or len(text) > 4096:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _deliver(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes], data: bytes) -> None:
    """Hand output read by the channel's thread to the socket's event loop."""
    loop.call_soon_threadsafe(queue.put_nowait, data)
