"""Live job output over a websocket.

Protocol: connect to ``/ws/jobs/<id>/?after=<seq>``. The socket must carry a session of a user who may see the
job's details and come from an allowed Origin (checked in ``panel.asgi``), otherwise it is closed before any data.
The server joins the job's group first, then sends every stored line after ``after``, then live lines; any gap
(a dropped channel message) is filled from the database, and a line is never sent twice on one socket.
Frames: ``{"type": "lines", "lines": [{"seq", "ts", "stream", "text"}]}``,
``{"type": "steps", "steps": [{"name", "status", "seconds", "first_seq", "last_seq"}]}`` while steps change, and
``{"type": "status", "status", "reason", "finished_at"}``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from panel.accounts.choices import Action
from panel.accounts.scoping import for_user
from panel.jobs.models import Job, JobLogLine
from panel.jobs.services import group_name, serialize_line

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class JobLogConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Streams one job's log lines and status changes."""

    job_id: int
    last_sent: int

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        if not await self._may_see(user):
            await database_sync_to_async(_record_denied)(user, self.job_id)
            await self.close(code=CLOSE_NOT_FOUND)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        try:
            self.last_sent = max(0, int(query.get("after", ["0"])[0]))
        except ValueError:
            self.last_sent = 0
        await self.channel_layer.group_add(group_name(self.job_id), self.channel_name)
        await self.accept()
        await self._catch_up()
        status = await self._status()
        if status["status"] not in ("queued", "running"):
            await self.send_json(status)

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "job_id") and self.channel_layer is not None:
            await self.channel_layer.group_discard(group_name(self.job_id), self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Clients do not send anything meaningful; ignore it."""

    async def job_lines(self, event: dict[str, Any]) -> None:
        lines = [line for line in event["lines"] if line["seq"] > self.last_sent]
        if not lines:
            return
        if lines[0]["seq"] != self.last_sent + 1:
            await self._catch_up()
            return
        self.last_sent = lines[-1]["seq"]
        await self.send_json({"type": "lines", "lines": lines})

    async def job_steps(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "steps", "steps": event["steps"]})

    async def job_status(self, event: dict[str, Any]) -> None:
        await self._catch_up()
        await self.send_json({key: value for key, value in event.items() if key != "type"} | {"type": "status"})

    async def _catch_up(self) -> None:
        while True:
            lines = await self._lines_after(self.last_sent)
            if not lines:
                return
            self.last_sent = lines[-1]["seq"]
            await self.send_json({"type": "lines", "lines": lines})

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
    def _status(self) -> dict[str, Any]:
        job = Job.objects.get(pk=self.job_id)
        return {
            "type": "status",
            "status": job.status,
            "reason": job.reason,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        }


def _record_denied(user: Any, job_id: int) -> None:
    from panel.accounts.services import record

    record(
        action="access.denied", actor=user, security=True, detail={"object": "job", "id": job_id, "via": "websocket"}
    )
