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

from bench.common import lab_panel, percentile  # noqa: E402
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
    uvicorn_env = {"MONITOR_LOG_TAIL_LINES": "1"}
    run_args = ["--entrypoint", "python3", ODOO_IMAGE, "-c", "import time; time.sleep(10**9)"]
    with lab_panel(project=PROJECT, service="gen", run_args=run_args, kind="production", uvicorn_env=uvicorn_env) as lp:
        host, container, headers = lp.host, lp.container, lp.headers
        url = lp.socket_url("logs/gen/")
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
