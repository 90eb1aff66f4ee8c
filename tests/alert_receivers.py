"""Real receivers of alerts for tests: an SMTP server (aiosmtpd) and an HTTP webhook receiver, both on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Received:
    """One webhook request as it arrived."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A threaded HTTP server that records every POST and answers ``status`` (changeable while it runs); ``hold``
    makes it wait before answering (a slow receiver)."""

    url: str = ""
    status: int = 200
    hold: float = 0.0
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, event: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            found = [r.json() for r in self.requests]
        return [body for body in found if event is None or body.get("event") == event]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"webhook receiver: condition not met within {timeout} s: {self.requests}")
            time.sleep(0.1)


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if receiver.hold:
                time.sleep(receiver.hold)
            with receiver.lock:
                receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
            self.send_response(receiver.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/panel"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class SmtpServer:
    """A real SMTP server (aiosmtpd) that keeps every message it accepted."""

    host: str = "127.0.0.1"
    port: int = 0
    messages: list[Message] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rcpt_hold: float = 0.0
    rcpt_calls: int = 0  # RCPT TO commands seen (a conversation in progress)

    def subjects(self) -> list[str]:
        with self.lock:
            return [str(message["Subject"]) for message in self.messages]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"SMTP server: condition not met within {timeout} s: {self.subjects()}")
            time.sleep(0.1)


@contextmanager
def smtp_server() -> Iterator[SmtpServer]:
    import asyncio

    smtp = SmtpServer()

    class Handler:
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
            smtp.rcpt_calls += 1
            if smtp.rcpt_hold:
                await asyncio.sleep(smtp.rcpt_hold)
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            with smtp.lock:
                smtp.messages.append(message_from_bytes(envelope.content))
                smtp.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            return "250 Message accepted for delivery"

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        smtp.port = int(sock.getsockname()[1])
    controller = Controller(Handler(), hostname="127.0.0.1", port=smtp.port)
    controller.start()
    try:
        yield smtp
    finally:
        controller.stop()


# Two real monitoring workers that deliver to these receivers ------------------------------------------------------


def wait_for_new_log(proc: Any, offset: int, marker: str, timeout: float = 60.0) -> None:
    """Wait for ``marker`` in what ``proc`` logged after ``offset`` (a restarted worker appends to its old log)."""
    deadline = time.monotonic() + timeout
    while marker not in proc.log_text()[offset:]:
        if proc.process is not None and proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} never logged {marker!r}:\n{proc.log_text()[-3000:]}")
        time.sleep(0.2)


def start_worker(proc: Any, env: dict[str, str]) -> None:
    """(Re)start a worker process with ``env`` on top of the test environment and wait until it consumes."""
    proc.stop()
    proc.env = env
    offset = len(proc.log_text())
    proc.start()
    wait_for_new_log(proc, offset, "ready.")


@dataclass
class AlertWorkers:
    """The session's monitoring worker and a second one, both with beat (the delivery sweep), both sending to the
    test's SMTP server; ``smtp`` and ``webhooks`` are what they send to."""

    workers: list[Any]
    smtp: SmtpServer
    webhooks: WebhookReceiver
    env: dict[str, str]

    def restart(self, proc: Any) -> None:
        start_worker(proc, self.env)

    def reset(self) -> None:
        """Forget what earlier tests received (the workers are shared by a module's tests)."""
        with self.smtp.lock:
            self.smtp.messages.clear()
            self.smtp.envelopes.clear()
        self.smtp.rcpt_hold, self.smtp.rcpt_calls = 0.0, 0
        with self.webhooks.lock:
            self.webhooks.requests.clear()
        self.webhooks.status, self.webhooks.hold = 200, 0.0
        for proc in self.workers:
            if proc.process is None or proc.process.poll() is not None:
                self.restart(proc)


@contextmanager
def alert_workers(monitoring_worker: Any, log_dir: Any, **settings: str) -> Iterator[AlertWorkers]:
    """Run the session's monitoring worker and a second one (real Celery processes) configured for these tests
    (the SMTP server's port, a 1 s delivery sweep, short leases and backoff); on exit the second one stops and the
    session's worker is restarted with its usual environment."""
    from tests.conftest import celery_worker

    with smtp_server() as smtp, webhook_receiver() as webhooks:
        env = {
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": smtp.host,
            "EMAIL_PORT": str(smtp.port),
            "EMAIL_TIMEOUT": "30",
            "EMAIL_FROM": "alerts@panel.test",
            "MONITOR_NOTIFY_SWEEP_INTERVAL": "1",
            "MONITOR_NOTIFY_LEASE": "4",
            "MONITOR_NOTIFY_BACKOFF": "1",
            **settings,
        }
        usual_env = monitoring_worker.env
        second = celery_worker("monitoring-2", "monitoring", log_dir, "-B", "-s", str(log_dir / "beat-schedule-2"))
        try:
            start_worker(monitoring_worker, env)
            start_worker(second, env)
            yield AlertWorkers([monitoring_worker, second], smtp, webhooks, env)
        finally:
            second.stop()
            start_worker(monitoring_worker, usual_env or {})
