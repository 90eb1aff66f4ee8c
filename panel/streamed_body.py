"""Request bodies that reach the view as a stream under ASGI (uvicorn), for uploads too large to stage.

Django's ``ASGIHandler`` reads the whole body into a ``SpooledTemporaryFile`` before any view runs (memory up to
``FILE_UPLOAD_MAX_MEMORY_SIZE``, then the panel's disk). For the paths registered here (``register``: the Odoo zip
imports), ``StreamedBodyASGIHandler`` hands the view a file that pulls the body from the ASGI connection as the view
reads it instead: uvicorn's flow control holds the client back while the view is busy, so at most a few chunks are
in memory and nothing is written to disk. Django's disconnect listener (which would otherwise consume body
messages) waits until the body has been read. Under WSGI the body is a stream already.

``RefuseUnstorableInputMiddleware`` leaves the form fields of these paths to their views (reading them would parse
the upload with Django's default, disk-staging, upload handlers).
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from django.core.handlers.asgi import ASGIHandler

STREAMED_PATHS: list[re.Pattern[str]] = []

Receive = Callable[[], Awaitable[Mapping[str, Any]]]


def register(pattern: str) -> None:
    """Stream the request bodies of paths matching ``pattern`` (a regular expression, matched in full)."""
    compiled = re.compile(pattern)
    if all(existing.pattern != compiled.pattern for existing in STREAMED_PATHS):
        STREAMED_PATHS.append(compiled)


def is_streamed(path: str) -> bool:
    """Whether the body of a request to ``path`` is streamed to its view."""
    return any(pattern.fullmatch(path) for pattern in STREAMED_PATHS)


class ClientDisconnected(OSError):
    """The client went away before it sent the whole body."""


class ReceivedBody(io.RawIOBase):
    """The body of an ASGI request, read from the connection on demand by the (synchronous) view's thread."""

    def __init__(self, receive: Receive, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._receive = receive
        self._loop = loop
        self._buffer = b""
        self._more = True
        self._done = asyncio.Event()
        self._disconnect: Mapping[str, Any] | None = None

    def readable(self) -> bool:
        return True

    def _finish(self) -> None:
        self._more = False
        self._loop.call_soon_threadsafe(self._done.set)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._buffer and self._more:
            message = asyncio.run_coroutine_threadsafe(self._next_message(), self._loop).result()
            if message["type"] == "http.disconnect":
                self._disconnect = message
                self._finish()
                raise ClientDisconnected("The client went away before the end of the request body.")
            self._buffer = message.get("body", b"")
            if not message.get("more_body", False):
                self._finish()
        n = min(len(view), len(self._buffer))
        view[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    async def _next_message(self) -> Mapping[str, Any]:
        return await self._receive()

    async def receive_after_body(self) -> Mapping[str, Any]:
        """What Django's disconnect listener receives: nothing until the body has been read, then the connection's
        next message (a disconnect)."""
        await self._done.wait()
        if self._disconnect is not None:
            return self._disconnect
        return await self._receive()


_body: contextvars.ContextVar[ReceivedBody | None] = contextvars.ContextVar("streamed_body", default=None)


class StreamedBodyASGIHandler(ASGIHandler):
    """Django's ASGI handler, streaming the request bodies of the registered paths (see the module docstring)."""

    async def handle(self, scope: dict[str, Any], receive: Receive, send: Any) -> None:
        if (
            scope.get("type") == "http"
            and scope.get("method") in ("POST", "PUT")
            and is_streamed(scope.get("path", ""))
        ):
            body = ReceivedBody(receive, asyncio.get_running_loop())
            token = _body.set(body)
            try:
                await super().handle(scope, body.receive_after_body, send)
            finally:
                _body.reset(token)
            return
        await super().handle(scope, receive, send)

    async def read_body(self, receive: Receive) -> Any:
        body = _body.get()
        if body is not None:
            return body
        return await super().read_body(receive)


def get_asgi_application() -> StreamedBodyASGIHandler:
    """Like ``django.core.asgi.get_asgi_application``, with streamed bodies for the registered paths."""
    import django

    django.setup(set_prefix=False)
    return StreamedBodyASGIHandler()
