"""Pushes live job updates to the channel layer from synchronous code, through one event loop per process.

``async_to_sync`` would start a fresh event loop for every push, and channels-redis keeps its Redis connections per
event loop, so every log batch would open (and tear down) a Redis connection. One background loop per process
keeps one connection pool and sends messages in the order they were queued. Live pushes are best effort: viewers
catch up from the database, so a message lost with a dying process costs nothing but latency.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

# Counting hooks (monitoring's Prometheus metrics add one): called with "sent" or "dropped" for every message.
LISTENERS: list[Callable[[str], None]] = []


def _counted(outcome: str) -> None:
    for listener in LISTENERS:
        try:
            listener(outcome)
        except Exception:  # counting never breaks a push
            logger.debug("a publisher listener failed", exc_info=True)


class _Publisher:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None

    def send(self, group: str, message: dict[str, Any]) -> None:
        """Queue a group message; returns at once."""
        with self.lock:
            if self.pid != os.getpid() or self.loop is None or self.queue is None:
                # First use in this process (or after a fork: the parent's loop thread does not exist here).
                self.loop, self.queue = asyncio.new_event_loop(), asyncio.Queue()
                self.pid = os.getpid()
                threading.Thread(
                    target=self._run, args=(self.loop, self.queue), name="channel-publisher", daemon=True
                ).start()
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (group, message))

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_drain(queue))


async def _drain(queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
    layer = get_channel_layer()
    while True:
        group, message = await queue.get()
        if layer is None:
            continue
        try:
            await layer.group_send(group, message)
        except Exception as exc:  # noqa: BLE001 - best effort: viewers catch up from the database
            # One line, not a traceback per push while Redis is away.
            logger.warning("could not push an update to channel group %s: %s", group, exc)
            _counted("dropped")
        else:
            _counted("sent")


PUBLISHER = _Publisher()


def publish(group: str, message: dict[str, Any]) -> None:
    """Send ``message`` to a channel group without blocking the caller."""
    PUBLISHER.send(group, message)
