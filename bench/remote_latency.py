"""Benchmark: 200 remote `docker ps` calls through the panel's remote layer vs. OpenSSH with ControlMaster.

Both run in the same process run against the same lab host (tests/lab). Prints medians, p95s, the ratio
panel ÷ OpenSSH (aim ≤ 1.2) and the SSH logins the lab sshd logged per 200 panel calls (aim: 1 per process).

    .venv/bin/python bench/remote_latency.py [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from bench.common import percentile  # noqa: E402
from panel.remote import run_capture  # noqa: E402
from panel.remote.ssh import POOL  # noqa: E402
from tests.lab.lab import ensure_up, exclusive_use  # noqa: E402
from tests.lab_helpers import lab_target  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    host = LAB.hosts["lab1"]
    command = ["docker", "ps", "--format", "{{.ID}}"]

    # Baseline: one multiplexed OpenSSH connection (ControlMaster), a new channel per call.
    control = Path(tempfile.mkdtemp()) / "cm.sock"
    base = host.ssh_argv("true")[:-3]  # everything up to the host/--/command
    master = [
        *base,
        "-o",
        "ControlMaster=yes",
        "-o",
        f"ControlPath={control}",
        "-o",
        "ControlPersist=60",
        "-N",
        "-f",
        host.address,
    ]
    subprocess.run(master, check=True)
    openssh: list[float] = []
    for _ in range(args.calls):
        started = time.perf_counter()
        subprocess.run(
            [*base, "-o", f"ControlPath={control}", host.address, "--", " ".join(command)],
            check=True,
            capture_output=True,
        )
        openssh.append(time.perf_counter() - started)
    subprocess.run([*base, "-o", f"ControlPath={control}", "-O", "exit", host.address], capture_output=True)

    # The panel: pinned paramiko connection, one channel per call.
    POOL.close_all()
    user_marker = f"Accepted publickey for {host.username} "
    logins_before = host.sshd_log_text().count(user_marker)
    target = lab_target(host)
    panel: list[float] = []
    for _ in range(args.calls):
        started = time.perf_counter()
        result = run_capture(target, command)
        panel.append(time.perf_counter() - started)
        assert result.ok, result.stderr
    time.sleep(0.5)
    logins = host.sshd_log_text().count(user_marker) - logins_before

    report = {
        "calls": args.calls,
        "panel_median_ms": round(statistics.median(panel) * 1000, 2),
        "panel_p95_ms": round(percentile(panel, 95) * 1000, 2),
        "openssh_controlmaster_median_ms": round(statistics.median(openssh) * 1000, 2),
        "openssh_controlmaster_p95_ms": round(percentile(openssh, 95) * 1000, 2),
        "ratio_median": round(statistics.median(panel) / statistics.median(openssh), 3),
        "panel_ssh_logins": logins,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "remote_latency.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(
        f"\n| {args.calls} × docker ps | panel median {report['panel_median_ms']} ms (p95 {report['panel_p95_ms']}) "
        f"| OpenSSH ControlMaster median {report['openssh_controlmaster_median_ms']} ms "
        f"(p95 {report['openssh_controlmaster_p95_ms']}) | ratio {report['ratio_median']} "
        f"| SSH logins: {logins} |"
    )


if __name__ == "__main__":
    LAB = ensure_up()
    with exclusive_use():  # other test sessions must not use lab1 while we measure
        main()
