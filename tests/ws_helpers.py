"""Helpers for tests that follow a job's live log through the real websocket (uvicorn + websockets client)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis
import websockets
from django.conf import settings
from django.db import connection
from django.test import Client

from panel.jobs.models import Job


def session_cookie(user: Any) -> str:
    """A fresh session of ``user`` (stored in the database), as a Cookie header value."""
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def ws_url(base: str, job_id: int, after: int = 0) -> str:
    return base.replace("http://", "ws://") + f"/ws/jobs/{job_id}/?after={after}"


def lines_of(frames: list[dict[str, Any]]) -> list[int]:
    """Every line's seq, in the order the frames brought them (duplicates kept)."""
    return [line["seq"] for frame in frames if frame["type"] == "lines" for line in frame["lines"]]


def statuses_of(frames: list[dict[str, Any]]) -> list[str]:
    return [frame["status"] for frame in frames if frame["type"] == "status"]


async def read_until(socket: Any, stop: Any, timeout: float = 30) -> list[dict[str, Any]]:
    """Frames until ``stop(frame, frames)`` says so; fails when ``timeout`` seconds pass first."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            raw = await asyncio.wait_for(socket.recv(), timeout=deadline - time.monotonic())
        except TimeoutError:
            break
        frames.append(json.loads(raw))
        if stop(frames[-1], frames):
            return frames
    raise AssertionError(f"timed out after {timeout}s; got {len(lines_of(frames))} lines, {statuses_of(frames)}")


async def wait_closed(socket: Any, timeout: float) -> tuple[int | None, list[dict[str, Any]], float]:
    """Read until the server closes the socket: (close code, frames received, seconds it took)."""
    started = time.monotonic()
    frames: list[dict[str, Any]] = []
    try:
        while True:
            left = timeout - (time.monotonic() - started)
            frames.append(json.loads(await asyncio.wait_for(socket.recv(), timeout=max(0.01, left))))
    except websockets.exceptions.ConnectionClosed:
        return socket.close_code, frames, time.monotonic() - started
    except TimeoutError:
        raise AssertionError(f"the socket stayed open for {timeout}s") from None


def in_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ORM code from a worker thread (``asyncio.to_thread``), closing that thread's connection afterwards."""
    try:
        return function(*args, **kwargs)
    finally:
        connection.close()


def status_of(job_id: int) -> str:
    return str(Job.objects.get(pk=job_id).status)


def flush_redis() -> None:
    """FLUSHDB the Redis database this test session uses (channel groups, messages and Celery's keys go)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()
