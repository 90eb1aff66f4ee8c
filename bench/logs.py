"""Benchmark: container log lines, stdout → websocket client, against ``ssh host docker logs -f`` in the same run.

A container on lab host lab1 (labelled as service ``gen`` of a compose project, so the panel's allowlist finds it)
sleeps; for each measurement a ``docker exec`` inside it writes ``--lines`` lines at ``--rate`` lines/s to the
container's stdout, each carrying its own send time (``time.time_ns()``: the lab's dockerd shares this machine's
clock). Per line, latency = arrival at the client − send time.

- **Panel:** a real uvicorn serves the panel; a websocket client follows ``gen`` through the Logs socket (the
  follower's ``docker logs --follow`` over the pooled SSH connection, the Redis Stream, the frames).
- **Baseline:** the OpenSSH client runs ``docker logs -f`` on the host and this process reads its stdout.

The two alternate (``--rounds`` each). Prints p50 and p99 of each side, the ratios panel ÷ baseline (aim ≤ 1.5)
and the lines lost or duplicated on the panel side (aim 0); then a burst of ``--burst`` lines written as fast as
the generator can, and the frames that carried it to the panel's client (batches, not a frame per line). Writes
``bench/results/logs.json``.

    .venv/bin/python bench/logs.py [--rate 1000] [--lines 10000] [--rounds 2]

Uses a fresh PostgreSQL test database (created and dropped) and Redis db 7 (``BENCH_REDIS_URL``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("DATABASE_URL", "postgres://panel_test:panel_test@127.0.0.1:5432/panel_bench_logs")
os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6390/7")

import django  # noqa: E402

django.setup()

import websockets  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402

from tests.conftest import ManagedProcess, free_port, wait_for_port  # noqa: E402
from tests.lab.lab import ensure_up, exclusive_use  # noqa: E402
from tests.monitoring_fixtures import ODOO_IMAGE  # noqa: E402

PROJECT = f"benchlogs{os.getpid()}"
# Writes "<run> <n> <send ns>" lines at a steady rate (catching up after a late wake-up, as a busy server would).
GENERATOR = r"""
import os, sys, time
run, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out = os.open("/proc/1/fd/1", os.O_WRONLY)
start = time.monotonic()
for n in range(count):
    due = start + n / rate
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    os.write(out, f"{run} {n} {time.time_ns()}\n".encode())
"""


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def generate(host: Any, container: str, run: str, lines: int, rate: float) -> None:
    result = host.docker("exec", container, "python3", "-c", GENERATOR, run, str(lines), str(rate), timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"generator failed: {result.stderr}")


def parse(text: str, run: str, arrived: int, seen: dict[int, float], duplicates: list[int]) -> None:
    parts = text.split()
    if len(parts) == 3 and parts[0] == run:
        n, sent = int(parts[1]), int(parts[2])
        if n in seen:
            duplicates.append(n)
        seen[n] = (arrived - sent) / 1e6


def baseline(host: Any, container: str, run: str, lines: int, rate: float) -> tuple[dict[int, float], list[int]]:
    """``ssh host docker logs -f`` read line by line by this process."""
    argv = host.ssh_argv("docker", "logs", "--follow", "--tail", "0", container)
    reader = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    seen: dict[int, float] = {}
    duplicates: list[int] = []
    assert reader.stdout is not None

    def read() -> None:
        for raw in reader.stdout:  # type: ignore[union-attr]
            parse(raw.decode(errors="replace"), run, time.time_ns(), seen, duplicates)
            if len(seen) >= lines:
                return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    time.sleep(1.0)  # docker logs -f is following
    generate(host, container, run, lines, rate)
    thread.join(timeout=15)
    reader.kill()
    reader.wait()
    return seen, duplicates


async def panel(
    url: str, headers: dict[str, str], host: Any, container: str, run: str, lines: int, rate: float
) -> tuple[dict[int, float], list[int], int]:
    """The Logs websocket, following the container through the panel; also returns the frames received."""
    seen: dict[int, float] = {}
    duplicates: list[int] = []
    frames = 0
    async with websockets.connect(url, additional_headers=headers, max_size=None) as socket:
        # The tail may come from the stream before the follower runs again: wait for a fresh line to come through.
        ready = f"{run}-ready"
        await asyncio.to_thread(generate, host, container, ready, 1, rate)
        deadline = time.monotonic() + 30
        while not any(line["text"].startswith(f"{ready} ") for line in json.loads(await socket.recv())["lines"]):
            assert time.monotonic() < deadline, "the follower did not start"
        task = asyncio.ensure_future(asyncio.to_thread(generate, host, container, run, lines, rate))
        deadline = time.monotonic() + lines / rate + 15
        while len(seen) < lines and time.monotonic() < deadline:
            try:
                raw = await asyncio.wait_for(socket.recv(), timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            arrived = time.time_ns()
            frames += 1
            for line in json.loads(raw)["lines"]:
                parse(line["text"], run, arrived, seen, duplicates)
        await task
    return seen, duplicates, frames


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--lines", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--burst", type=int, default=5000)
    args = parser.parse_args()
    from django.contrib.auth import get_user_model

    from panel.accounts.models import Membership, Organization
    from panel.inventory.models import Environment, Project
    from tests.lab_helpers import add_lab_server

    lab = ensure_up()
    host = lab.hosts["lab1"]
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    database = connection.settings_dict
    server_proc: ManagedProcess | None = None
    container = f"{PROJECT}-gen-1"
    try:
        with exclusive_use():
            started = host.docker(
                "run", "-d", "--name", container, "--label", f"com.docker.compose.project={PROJECT}",
                "--label", "com.docker.compose.service=gen", "--entrypoint", "python3", ODOO_IMAGE,
                "-c", "import time; time.sleep(10**9)",
            )  # fmt: skip
            if started.returncode != 0:
                raise RuntimeError(started.stderr)
            organization = Organization.objects.create(name="Bench", slug="bench")
            user = get_user_model().objects.create_user("bench", password="bench-bench-bench-42")
            Membership.objects.create(user=user, organization=organization, role="owner")
            server = add_lab_server(organization, user, host, name="lab1-bench")
            project = Project.objects.create(
                organization=organization, name="Bench", slug="bench", git_url="/srv/git/x.git", odoo_version="16.0"
            )
            environment = Environment.objects.create(
                project=project, server=server, name="prod", compose_files=["prod.yaml"], compose_project=PROJECT
            )
            port = free_port()
            url_db = (
                f"postgres://{database['USER']}:{database['PASSWORD']}@{database['HOST']}:{database['PORT']}/"
                f"{database['NAME']}"
            )
            server_proc = ManagedProcess(
                "uvicorn",
                [sys.executable, "-m", "uvicorn", "panel.asgi:application", "--host", "127.0.0.1", "--port",
                 str(port), "--log-level", "warning"],
                Path(f"/tmp/bench-logs-uvicorn-{os.getpid()}.log"),
                env={"DATABASE_URL": url_db, "REDIS_URL": os.environ["REDIS_URL"], "MONITOR_LOG_TAIL_LINES": "1"},
            )  # fmt: skip
            server_proc.start()
            wait_for_port(port, server_proc)
            client = Client()
            client.force_login(user)
            headers = {"Cookie": f"sessionid={client.cookies['sessionid'].value}", "Origin": f"http://127.0.0.1:{port}"}
            url = f"ws://127.0.0.1:{port}/ws/environments/{environment.pk}/logs/gen/"
            generate(host, container, "warmup", 1, args.rate)  # a first line for the panel's tail

            sides: dict[str, list[float]] = {"baseline": [], "panel": []}
            lost = {"baseline": 0, "panel": 0}
            duplicated = {"baseline": 0, "panel": 0}
            frames = 0
            for round_number in range(args.rounds):
                run = f"b{round_number}"
                seen, duplicates = baseline(host, container, run, args.lines, args.rate)
                sides["baseline"] += list(seen.values())
                lost["baseline"] += args.lines - len(seen)
                duplicated["baseline"] += len(duplicates)
                run = f"p{round_number}"
                seen, duplicates, count = asyncio.run(panel(url, headers, host, container, run, args.lines, args.rate))
                sides["panel"] += list(seen.values())
                lost["panel"] += args.lines - len(seen)
                duplicated["panel"] += len(duplicates)
                frames += count
                print(f"round {round_number + 1}: baseline {len(sides['baseline'])}, panel {len(sides['panel'])}")
            # A burst (as fast as the generator writes): how many frames carry it.
            burst, burst_duplicates, burst_frames = asyncio.run(
                panel(url, headers, host, container, "burst", args.burst, 1e9)
            )
    finally:
        if server_proc is not None:
            server_proc.stop()
        host.docker("rm", "-f", container)
        connection.creation.destroy_test_db(old_name, verbosity=0)

    base, ours = summary(sides["baseline"]), summary(sides["panel"])
    report = {
        "rate_lines_per_s": args.rate,
        "lines_per_side": args.lines * args.rounds,
        "baseline": base,
        "panel": ours,
        "p50_ratio": round(ours["p50_ms"] / base["p50_ms"], 2),
        "p99_ratio": round(ours["p99_ms"] / base["p99_ms"], 2),
        "panel_lost": lost["panel"],
        "panel_duplicated": duplicated["panel"],
        "baseline_lost": lost["baseline"],
        "panel_lines_per_frame": round(len(sides["panel"]) / max(1, frames), 1),
        "burst_lines": args.burst,
        "burst_received": len(burst),
        "burst_duplicated": len(burst_duplicates),
        "burst_frames": burst_frames,
    }
    print(json.dumps(report, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "logs.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
