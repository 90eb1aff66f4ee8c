"""Live container logs: one remote ``docker logs --follow`` per (environment, service), shared by every viewer.

How it fits together:

- **Which services.** ``environment_services`` lists the containers of the environment's compose project on its
  server (``docker ps`` over the server's pooled SSH connection). That list is the allowlist: a service name from a
  URL is only ever looked up in it, and the remote commands get the container's id (checked hex), never the name.
- **One follower.** The viewers of a stream (websocket consumers, in any ASGI process) register in a Redis sorted
  set (``viewers``) with a heartbeat. Each one, at connect and at every heartbeat, calls ``ensure_follower``: the
  process that wins a Redis lease (``SET NX PX``) runs the ``Follower`` thread, which runs ``docker logs --follow
  --timestamps`` over SSH and appends the lines, one stream entry each, in one pipelined round trip per chunk read,
  to a bounded Redis Stream. Viewers read that stream (``XREAD``), so a hundred viewers cost one remote process.
- **Positions.** A line's position is its Redis Stream id. A client that reconnects sends the last id it has and
  gets exactly the entries after it. A follower that starts on a stream that still exists (a reconnect after the
  follower stopped, another process taking over a lost lease) asks docker for the lines ``--since`` the newest
  stored line's docker timestamp and drops those it already stored, so the stream has no gap and no duplicate.
- **The end.** When no viewer heartbeat is fresh for ``MONITOR_LOG_LINGER_SECONDS``, or the lease is lost, the
  follower closes its channel and ends the remote process by its tag (``DOODBA_PANEL_LOGS=<tag>`` in its
  environment, TERM then KILL, as a job's hold does): closing an SSH channel alone leaves ``docker logs -f``
  running on the server until it next writes. A follower that died with its process (no clean end) leaves its tag
  in Redis; the next follower of the stream kills that tag on the server first.
- **Downloads** (``download_chunks``) stream ``docker logs --timestamps --since --until`` to the HTTP response as
  the server sends it, line by line; nothing is held whole.
"""

from __future__ import annotations

import datetime
import logging
import re
import secrets
import select
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from panel.inventory.models import Environment
from panel.remote.containers import ContainerListFailed, compose_containers
from panel.remote.errors import RemoteError
from panel.remote.ssh import READ_CHUNK, Target, exec_channel, run_capture

logger = logging.getLogger(__name__)

TAG_VARIABLE = "DOODBA_PANEL_LOGS"
# Compose service names (``[a-zA-Z0-9._-]``); anything else never reaches Redis keys or the page.
# docker prints RFC 3339 timestamps with nine fraction digits (RFC3339NanoFixed) before each line.
TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")
# $1 tag: end every process of the SSH user that carries it (TERM, then KILL after 2 s); prints how many it found.
KILL_SCRIPT = r"""tag=$1
tagged() { grep -lzxF -- "DOODBA_PANEL_LOGS=$tag" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3; }
found=$(tagged | wc -l)
for p in $(tagged); do kill -TERM "$p" 2>/dev/null; done
n=0; while [ -n "$(tagged)" ] && [ $n -lt 10 ]; do sleep 0.2; n=$((n + 1)); done
for p in $(tagged); do kill -KILL "$p" 2>/dev/null; done
echo "ended $found"
"""


class LogsUnavailable(Exception):
    """The environment's containers cannot be listed or read right now; the message says why."""


# -- the allowlist -----------------------------------------------------------------------------------


def environment_services(environment: Environment) -> dict[str, str]:
    """The environment's compose services that have a container on its server, ``{service: container id}``, in
    name order (running or stopped; one-off ``compose run`` containers are left out). Raises ``LogsUnavailable``."""
    try:
        return compose_containers(
            Target.for_server(environment.server),
            environment.compose_project,
            include_stopped=True,
            timeout=settings.MONITOR_LOG_COMMAND_TIMEOUT,
        )
    except ContainerListFailed as exc:
        raise LogsUnavailable(f"{exc} (on {environment.server.name})") from exc
    except RemoteError as exc:
        raise LogsUnavailable(str(exc)) from exc


# -- positions and keys ------------------------------------------------------------------------------


def stream_key(environment_id: int, service: str) -> str:
    """The Redis Stream of one (environment, service)."""
    return f"panel:logs:{int(environment_id)}:{service}"


def _keys(environment_id: int, service: str) -> tuple[str, str, str, str]:
    base = stream_key(environment_id, service)
    return base, f"{base}:viewers", f"{base}:lease", f"{base}:tag"


def split_line(raw: str) -> tuple[str, str]:
    """``(docker timestamp, text)`` of one ``docker logs --timestamps`` line; the timestamp normalised to nine
    fraction digits and UTC so that strings compare in time order (empty when the line has none)."""
    stamp, _, text = raw.partition(" ")
    match = TIMESTAMP.match(stamp)
    if not match:
        return "", raw
    whole, fraction, zone = match.groups()
    if zone != "Z":
        moment = datetime.datetime.fromisoformat(f"{whole}{zone}").astimezone(datetime.UTC)
        whole = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{(fraction or '').ljust(9, '0')}Z", text


def docker_time(value: datetime.datetime | str) -> str:
    """A moment as docker's ``--since``/``--until`` take it: Unix seconds with nine fraction digits."""
    if isinstance(value, str):
        whole, _, fraction = value.rstrip("Z").partition(".")
        moment = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC)
        return f"{int(moment.timestamp())}.{fraction.ljust(9, '0')[:9]}"
    return f"{value.timestamp():.9f}"


def _decode(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def serialize_entry(entry_id: Any, fields: dict[Any, Any]) -> dict[str, Any]:
    """A stream entry as the websocket sends it: ``{"id", "n", "ts", "stream", "text"}``. ``n`` counts the lines of
    the stream one by one: a client that sees it jump knows lines are missing there (the stream no longer held them
    when it reconnected, or it expired and started afresh)."""
    values = {_decode(key): _decode(value) for key, value in fields.items()}
    number = values.get("n", "")
    return {
        "id": _decode(entry_id),
        "n": int(number) if number.isdigit() else 0,
        "ts": values.get("ts", ""),
        "stream": values.get("s", "out"),
        "text": values.get("t", ""),
    }


# -- the follower ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where one stream's lines come from: the server, the compose project and the service (already allowed)."""

    environment_id: int
    service: str
    target: Target
    compose_project: str


_PROCESS = secrets.token_hex(6)
_FOLLOWERS: dict[str, Follower] = {}
_FOLLOWERS_LOCK = threading.Lock()
_CLIENT: redis.Redis | None = None
# Renew the lease only if we still hold it; drop it only if it is ours.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def redis_client() -> redis.Redis:
    """The process's Redis client for log streams (thread safe: a connection pool)."""
    global _CLIENT
    if _CLIENT is None:
        _CLIENT = redis.Redis.from_url(settings.REDIS_URL, health_check_interval=30)
    return _CLIENT


def ensure_follower(source: Source) -> bool:
    """Make sure some process follows ``source``: start a ``Follower`` here if none holds the stream's lease.

    Returns True when this call started one. Cheap when one runs: a local check, or one ``SET NX``.
    """
    key = stream_key(source.environment_id, source.service)
    with _FOLLOWERS_LOCK:
        current = _FOLLOWERS.get(key)
        if current is not None and current.is_alive():
            return False
        _, _, lease_key, _ = _keys(source.environment_id, source.service)
        token = f"{_PROCESS}-{secrets.token_hex(4)}"
        lease_ms = int(settings.MONITOR_LOG_LEASE_SECONDS * 1000)
        if not redis_client().set(lease_key, token, nx=True, px=lease_ms):
            return False
        follower = Follower(source, token)
        _FOLLOWERS[key] = follower
        follower.start()
        return True


def local_followers() -> list[Follower]:
    """The followers running in this process (tests, the benchmark)."""
    with _FOLLOWERS_LOCK:
        return [follower for follower in _FOLLOWERS.values() if follower.is_alive()]


def add_viewer(environment_id: int, service: str, viewer: str) -> None:
    """Register (or refresh) a viewer's heartbeat; the follower keeps running while one is fresh."""
    _, viewers_key, _, _ = _keys(environment_id, service)
    redis_client().zadd(viewers_key, {viewer: time.time()})


def remove_viewer(environment_id: int, service: str, viewer: str) -> None:
    """A viewer left: once none is left for ``MONITOR_LOG_LINGER_SECONDS``, the follower ends."""
    _, viewers_key, _, _ = _keys(environment_id, service)
    redis_client().zrem(viewers_key, viewer)


def end_tagged(target: Target, tag: str) -> int:
    """End every process on the server that carries ``tag`` (TERM, then KILL); returns how many there were."""
    result = run_capture(target, ["sh", "-c", KILL_SCRIPT, "sh", tag], timeout=settings.MONITOR_LOG_COMMAND_TIMEOUT)
    words = result.stdout.strip().rpartition("\n")[2].split()
    return int(words[1]) if len(words) == 2 and words[0] == "ended" and words[1].isdigit() else 0


class Follower(threading.Thread):
    """Runs one remote ``docker logs --follow`` and appends its lines to the stream while viewers remain."""

    def __init__(self, source: Source, token: str) -> None:
        super().__init__(name=f"logs-{source.environment_id}-{source.service}", daemon=True)
        self.source = source
        self.token = token
        self.tag = f"logs-{secrets.token_hex(8)}"
        self.key, self.viewers_key, self.lease_key, self.tag_key = _keys(source.environment_id, source.service)
        self.stopping = threading.Event()
        self.ended_reason = ""
        self.number = 0  # the n of the newest stored line

    def stop(self) -> None:
        """Ask the follower to end (it ends its remote process before the thread ends)."""
        self.stopping.set()

    def run(self) -> None:
        client = redis_client()
        try:
            previous = client.getset(self.tag_key, self.tag)
            if previous and _decode(previous) != self.tag:
                # A follower that died without cleaning up (its process was killed) may have left its docker logs.
                end_tagged(self.source.target, _decode(previous))
            self._follow(client)
        except Exception:
            logger.warning("log follower of %s ended with an error", self.key, exc_info=True)
        finally:
            self._finish(client)

    def _follow(self, client: redis.Redis) -> None:
        """Follow the service's container; when it stops (docker logs ends), wait and follow its next container."""
        idle_since: float | None = None
        next_check = 0.0
        while not self.stopping.is_set():
            container = self._container()
            if container is None:
                # No container (yet, or any more): keep the lease and count the viewers while waiting for one.
                idle_since = self._keep_going(client, time.monotonic(), idle_since)
                if idle_since is None:
                    return
                self.stopping.wait(settings.MONITOR_LOG_RETRY_SECONDS)
                continue
            since, skip = self._resume_point(client)
            argv = ["env", f"{TAG_VARIABLE}={self.tag}", "docker", "logs", "--follow", "--timestamps"]
            argv += ["--since", docker_time(since)] if since else ["--tail", str(settings.MONITOR_LOG_TAIL_LINES)]
            argv += ["--", container]
            with exec_channel(self.source.target, argv) as channel:
                channel.shutdown_write()
                buffers = {"out": b"", "err": b""}
                while not self.stopping.is_set():
                    lines: list[tuple[str, str, str]] = []
                    while channel.recv_ready():
                        buffers["out"] = self._split(buffers["out"] + channel.recv(READ_CHUNK), "out", lines)
                    while channel.recv_stderr_ready():
                        buffers["err"] = self._split(buffers["err"] + channel.recv_stderr(READ_CHUNK), "err", lines)
                    if lines:
                        skip = self._append(client, lines, since, skip)
                    now = time.monotonic()
                    if now >= next_check:
                        next_check = now + settings.MONITOR_LOG_HEARTBEAT_SECONDS / 2
                        idle_since = self._keep_going(client, now, idle_since)
                        if idle_since is None:
                            return
                    if channel.eof_received or channel.closed:
                        break
                    select.select([channel], [], [], 0.25)
            # The container stopped (or was replaced by a deploy): end what may be left, look again shortly.
            end_tagged(self.source.target, self.tag)
            self.stopping.wait(settings.MONITOR_LOG_RETRY_SECONDS)

    def _keep_going(self, client: redis.Redis, now: float, idle_since: float | None) -> float | None:
        """Renew the lease and look at the viewers: the new idle mark (0 while viewers remain), None to stop."""
        lease_ms = int(settings.MONITOR_LOG_LEASE_SECONDS * 1000)
        if not client.eval(_RENEW, 1, self.lease_key, self.token, lease_ms):
            self.ended_reason = "lease lost"
            return None
        stale = time.time() - settings.MONITOR_LOG_VIEWER_TIMEOUT_SECONDS
        pipe = client.pipeline()
        pipe.zremrangebyscore(self.viewers_key, "-inf", stale)
        pipe.zcard(self.viewers_key)
        viewers = pipe.execute()[1]
        if viewers:
            return 0.0
        if not idle_since:
            return now
        if now - idle_since >= settings.MONITOR_LOG_LINGER_SECONDS:
            self.ended_reason = "no viewer left"
            return None
        return idle_since

    def _container(self) -> str | None:
        """The service's current container id (looked up again after each end: a deploy replaces it)."""
        try:
            found = compose_containers(
                self.source.target,
                self.source.compose_project,
                service=self.source.service,
                include_stopped=True,
                timeout=settings.MONITOR_LOG_COMMAND_TIMEOUT,
            )
        except RemoteError:
            logger.warning("log follower of %s could not list containers", self.key, exc_info=True)
            return None
        return found.get(self.source.service)

    def _resume_point(self, client: redis.Redis) -> tuple[str, int]:
        """``(docker timestamp of the newest stored line, how many stored lines carry it)``; ("", 0) for a new
        stream (then the follower starts with the last ``MONITOR_LOG_TAIL_LINES``)."""
        newest: list[Any] = client.xrevrange(self.key, count=200)  # type: ignore[assignment]
        entries = [serialize_entry(entry_id, fields) for entry_id, fields in newest]
        self.number = entries[0]["n"] if entries else 0
        stamps = [entry["ts"] for entry in entries if entry["ts"]]
        if not stamps:
            return "", 0
        # The newest moment stored (stdout and stderr lines may be stored slightly out of time order).
        last = max(stamps)
        return last, stamps.count(last)

    @staticmethod
    def _split(data: bytes, stream: str, lines: list[tuple[str, str, str]]) -> bytes:
        *complete, rest = data.split(b"\n")
        for raw in complete:
            stamp, text = split_line(raw.decode("utf-8", errors="replace").rstrip("\r"))
            lines.append((stamp, stream, text[: settings.JOB_LOG_MAX_LINE]))
        if len(rest) > settings.JOB_LOG_MAX_LINE * 4:
            stamp, text = split_line(rest.decode("utf-8", errors="replace"))
            lines.append((stamp, stream, text[: settings.JOB_LOG_MAX_LINE]))
            rest = b""
        return rest

    def _append(self, client: redis.Redis, lines: list[tuple[str, str, str]], since: str, skip: int) -> int:
        """Append one read's lines (stdout and stderr merged in time order) in one round trip; lines older than the
        resume point, and the first ``skip`` lines at it (already stored), are dropped. Returns what is left to
        skip."""
        lines.sort(key=lambda line: line[0])
        pipe = client.pipeline(transaction=False)
        cap = settings.MONITOR_LOG_STREAM_LINES
        for stamp, stream, text in lines:
            if since and stamp and stamp < since:
                continue
            if since and stamp == since and skip > 0:
                skip -= 1
                continue
            self.number += 1
            fields = {"n": self.number, "ts": stamp, "s": stream, "t": text}
            pipe.xadd(self.key, fields, maxlen=cap, approximate=True)  # type: ignore[arg-type]
        pipe.expire(self.key, int(settings.MONITOR_LOG_RESUME_SECONDS))
        pipe.execute()
        return skip

    def _finish(self, client: redis.Redis) -> None:
        """End the remote process by its tag, give the lease back, leave the stream to expire."""
        try:
            end_tagged(self.source.target, self.tag)
        except Exception:
            logger.warning("log follower of %s could not end its remote process", self.key, exc_info=True)
        try:
            client.eval(_RELEASE, 1, self.lease_key, self.token)
        except redis.RedisError:
            logger.warning("log follower of %s could not release its lease", self.key, exc_info=True)
        with _FOLLOWERS_LOCK:
            if _FOLLOWERS.get(self.key) is self:
                del _FOLLOWERS[self.key]


# -- downloads ---------------------------------------------------------------------------------------


def parse_range(since: str, until: str) -> tuple[datetime.datetime, datetime.datetime]:
    """The asked time range (ISO dates or ``datetime-local`` values, in the panel's time zone when they carry
    none); ``until`` defaults to now. Raises ``ValueError`` with a message for a person."""
    now = timezone.now()

    def moment(value: str, name: str) -> datetime.datetime:
        try:
            parsed = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{name} is not a date and time (YYYY-MM-DDTHH:MM).") from None
        return timezone.make_aware(parsed) if timezone.is_naive(parsed) else parsed

    if not since.strip():
        raise ValueError("Give the start of the range.")
    start = moment(since, "From")
    end = moment(until, "To") if until.strip() else now
    if end <= start:
        raise ValueError("The end of the range must come after its start.")
    return start, end


async def download_chunks(
    target: Target, container: str, start: datetime.datetime, end: datetime.datetime
) -> AsyncIterator[bytes]:
    """``docker logs --timestamps`` of ``container`` between ``start`` and ``end``, as the server sends it: stdout
    and stderr lines interleaved in arrival order, each line whole. Memory stays bounded (one read at a time, the
    SSH window holds the rest); a download the client abandons ends its remote process by tag."""
    tag = f"logs-{secrets.token_hex(8)}"
    argv = [
        "env", f"{TAG_VARIABLE}={tag}", "docker", "logs", "--timestamps",
        "--since", docker_time(start), "--until", docker_time(end), "--", container,
    ]  # fmt: skip
    reader = _DownloadReader(target, argv)
    finished = False
    try:
        await sync_to_async(reader.open, thread_sensitive=False)()
        while True:
            chunk = await sync_to_async(reader.read, thread_sensitive=False)()
            if chunk is None:
                finished = True
                return
            if chunk:
                yield chunk
    finally:
        await sync_to_async(reader.close, thread_sensitive=False)(tag if not finished else "")


class _DownloadReader:
    """The blocking side of a download: one channel, whole lines out of each stream."""

    def __init__(self, target: Target, argv: list[str]) -> None:
        self.target = target
        self.argv = argv
        self.context: Any = None
        self.channel: Any = None
        self.buffers = {"out": b"", "err": b""}

    def open(self) -> None:
        self.context = exec_channel(self.target, self.argv)
        self.channel = self.context.__enter__()
        self.channel.shutdown_write()
        self.started = time.monotonic()

    def read(self) -> bytes | None:
        """The next whole lines (b"" when nothing came yet), None at the end."""
        channel = self.channel
        out = b""
        for stream, ready, receive in (
            ("out", channel.recv_ready, channel.recv),
            ("err", channel.recv_stderr_ready, channel.recv_stderr),
        ):
            if ready():
                data = self.buffers[stream] + receive(READ_CHUNK)
                head, newline, rest = data.rpartition(b"\n")
                self.buffers[stream] = rest
                out += head + newline
        if out:
            return out
        if channel.eof_received or channel.closed:
            # What arrived with the end, then any unterminated last line.
            while channel.recv_ready():
                self.buffers["out"] += channel.recv(READ_CHUNK)
            while channel.recv_stderr_ready():
                self.buffers["err"] += channel.recv_stderr(READ_CHUNK)
            rest = b"".join(value + b"\n" for value in self.buffers.values() if value)
            self.buffers = {"out": b"", "err": b""}
            return rest or None
        if time.monotonic() - self.started > settings.SSH_COMMAND_TIMEOUT:
            return None
        select.select([channel], [], [], 0.5)
        return b""

    def close(self, tag: str) -> None:
        if self.context is not None:
            self.context.__exit__(None, None, None)
        if tag:
            try:
                end_tagged(self.target, tag)
            except RemoteError:
                logger.warning("could not end an abandoned log download on %s", self.target.label, exc_info=True)
