"""Benchmark: terminal keystroke round trip (type a key, see its echo), the panel's websocket against
``ssh -tt host docker exec -it … sh`` in the same run.

A container on lab host lab1 (labelled as service ``odoo`` of a compose project, so the panel's shell profile finds
it) sleeps. On each side a shell in it runs ``cat >/dev/null`` on its TTY, so every key comes back as the TTY's echo;
a key is sent only after the previous one's echo arrived (a return every 60 keys keeps the line short). Per key,
round trip = echo arrival − send time.

- **Panel:** a real uvicorn serves the panel; a ticket from the POST, then the terminal websocket (binary frames)
  and the PTY over the pooled SSH connection.
- **Channel only** (for the breakdown): the panel's PTY channel driven from this process (paramiko, no
  websocket, no ASGI).
- **Baseline:** the OpenSSH client (``ssh -tt``) runs ``docker exec -it <id> sh`` on the host; this process writes
  its stdin and reads its stdout.

The two alternate (``--rounds`` each). Prints p50 and p99 of each side and the ratios panel ÷ baseline (aim ≤ 1.5);
writes ``bench/results/terminal.json``.

    .venv/bin/python bench/terminal.py [--keys 300] [--rounds 2]

Uses a fresh PostgreSQL test database (created and dropped) and Redis db 8 (``BENCH_REDIS_URL``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("DATABASE_URL", "postgres://panel_test:panel_test@127.0.0.1:5432/panel_bench_terminal")
os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6390/8")
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

import django  # noqa: E402

django.setup()

import websockets  # noqa: E402

from bench.common import lab_panel, percentile  # noqa: E402
from tests.monitoring_fixtures import ODOO_IMAGE  # noqa: E402

PROJECT = "benchterm"
KEYS = "abcdefghijklmnopqrstuvwxyz0123456789"
READY = "cat-ready"


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
    }


def baseline(host: Any, container: str, keys: int) -> list[float]:
    """Round trips through ``ssh -tt host docker exec -it <id> sh``."""
    argv = host.ssh_argv("docker", "exec", "-it", container, "sh")
    argv.insert(1, "-tt")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    out = proc.stdout.fileno()
    buffer = b""

    def until(needle: bytes, timeout: float = 20) -> None:
        nonlocal buffer
        deadline = time.monotonic() + timeout
        while needle not in buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"baseline: {needle!r} not in {buffer[-300:]!r}")
            if select.select([out], [], [], left)[0]:
                buffer += os.read(out, 65536)
        buffer = buffer[buffer.index(needle) + len(needle) :]

    try:
        proc.stdin.write(f"echo {READY[:3]}''{READY[3:]}; exec cat >/dev/null\n".encode())
        until(READY.encode())
        time.sleep(0.3)
        buffer = b""
        times = []
        for n in range(keys):
            key = b"\r" if n % 60 == 59 else KEYS[n % len(KEYS)].encode()
            sent = time.perf_counter()
            proc.stdin.write(key)
            until(b"\n" if key == b"\r" else key)
            times.append(time.perf_counter() - sent)
        return times
    finally:
        proc.kill()
        proc.wait()


async def panel(url: str, headers: dict[str, str], ticket: str, keys: int) -> list[float]:
    """Round trips through the panel's terminal websocket."""
    async with websockets.connect(url, additional_headers=headers) as socket:
        await socket.send(json.dumps({"type": "open", "ticket": ticket, "cols": 120, "rows": 30}))
        buffer = b""

        async def until(needle: bytes, timeout: float = 20) -> None:
            nonlocal buffer
            deadline = time.monotonic() + timeout
            while needle not in buffer:
                frame = await asyncio.wait_for(socket.recv(), timeout=max(0.01, deadline - time.monotonic()))
                if isinstance(frame, bytes):
                    buffer += frame
            buffer = buffer[buffer.index(needle) + len(needle) :]

        await socket.send(f"echo {READY[:3]}''{READY[3:]}; exec cat >/dev/null\r".encode())
        await until(READY.encode())
        await asyncio.sleep(0.3)
        buffer = b""
        times = []
        for n in range(keys):
            key = b"\r" if n % 60 == 59 else KEYS[n % len(KEYS)].encode()
            sent = time.perf_counter()
            await socket.send(key)
            await until(b"\n" if key == b"\r" else key)
            times.append(time.perf_counter() - sent)
        return times


def direct(environment: Any, keys: int) -> list[float]:
    """Round trips through the panel's PTY channel alone (paramiko, no websocket): where the panel's time goes."""
    import queue

    from terminal.services import RemoteTerminal, plan_session

    received: queue.Queue[bytes] = queue.Queue()
    remote = RemoteTerminal(plan_session(environment, "shell"), 120, 30, received.put)
    buffer = b""

    def until(needle: bytes, timeout: float = 20) -> None:
        nonlocal buffer
        while needle not in buffer:
            buffer += received.get(timeout=timeout)
        buffer = buffer[buffer.index(needle) + len(needle) :]

    try:
        remote.write(f"echo {READY[:3]}''{READY[3:]}; exec cat >/dev/null\r".encode())
        until(READY.encode())
        time.sleep(0.3)
        while not received.empty():
            received.get_nowait()
        buffer = b""
        times = []
        for n in range(keys):
            key = b"\r" if n % 60 == 59 else KEYS[n % len(KEYS)].encode()
            sent = time.perf_counter()
            remote.write(key)
            until(b"\n" if key == b"\r" else key)
            times.append(time.perf_counter() - sent)
        return times
    finally:
        remote.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    run_args = ["--entrypoint", "sleep", ODOO_IMAGE, "infinity"]
    with lab_panel(project=PROJECT, service="odoo", run_args=run_args, kind="test") as lp:
        host, container_id, environment, client = lp.host, lp.container_id, lp.environment, lp.client
        url = lp.socket_url("terminal/")

        def ticket() -> str:
            answer = client.post(f"/environments/{environment.pk}/terminal/ticket/", {"profile": "shell"})
            return str(answer.json()["ticket"])

        asyncio.run(panel(url, lp.headers, ticket(), 20))  # warm-up: the pooled SSH connection, the first exec
        baseline(host, container_id, 20)
        sides: dict[str, list[float]] = {"baseline": [], "panel": [], "channel": []}
        for round_number in range(args.rounds):
            sides["baseline"] += baseline(host, container_id, args.keys)
            sides["panel"] += asyncio.run(panel(url, lp.headers, ticket(), args.keys))
            sides["channel"] += direct(environment, args.keys)
            print(f"round {round_number + 1}: baseline {len(sides['baseline'])}, panel {len(sides['panel'])}")

    base, ours = summary(sides["baseline"]), summary(sides["panel"])
    report = {
        "keys_per_side": args.keys * args.rounds,
        "baseline": base,
        "panel": ours,
        "p50_ratio": round(ours["p50_ms"] / base["p50_ms"], 2),
        "p99_ratio": round(ours["p99_ms"] / base["p99_ms"], 2),
        "channel_only": summary(sides["channel"]),
    }
    print(json.dumps(report, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "terminal.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
