"""Benchmark: one poll cycle for 200 environments over the two lab hosts ÷ one bare SSH round trip per host, and the
SSH connections a cycle opens once the first one is open (must be 0).

Each lab host gets 100 environments: one container each, the Odoo stand-in's HTTP server (8069 ``/web/health``,
8072 ``/websocket``) labelled as the odoo service of a compose project, as a deploy would label it. The poller runs
as in production, one cycle per server, both servers at once (two threads, as two monitoring worker processes
would), over ``panel.remote``'s pooled connections. The baseline, in the same run and over the same connections:
``true`` sent as one command (median of 20). The same cycle with 1 environment per host shows how the cost grows
with environments. SQL queries per cycle are counted with ``observe`` (the incidents part) as it is, and without it
(the poller's own).

    .venv/bin/python bench/poll.py [--per-host 100] [--cycles 5]

Creates (and drops at the end) ``test_<database name>``; holds the lab for its duration; removes its containers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("DATABASE_URL", "postgres://panel_test:panel_test@127.0.0.1:5432/panel_bench_poll")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6390/2")

import django  # noqa: E402

django.setup()

from django.db import connection, connections  # noqa: E402
from django.db.models import Count  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402
from django.utils import timezone  # noqa: E402

from tests.lab import lab  # noqa: E402

LABEL = "panel-bench.poll"
SERVE = "from odoo_standin import cli; cli.serve(8069)"


def start_containers(host: lab.LabHost, count: int) -> list[str]:
    """``count`` stand-in containers labelled as the odoo service of projects ``bench-<host>-<i>-16-0-prod``."""
    projects = [f"bench-{host.name}-{i}-16-0-prod" for i in range(count)]

    def start(project: str) -> None:
        host.docker(
            "run", "-d", "--name", f"{project}-odoo-1", "--label", f"{LABEL}=1",
            "--label", f"com.docker.compose.project={project}", "--label", "com.docker.compose.service=odoo",
            "--label", "com.docker.compose.oneoff=False", "-e", "PGDATABASE=prod",
            "--entrypoint", "python3", lab.DOODBA_IMAGES[0], "-c", SERVE, check=True,
        )  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(start, projects))
    return projects


def remove_containers(host: lab.LabHost) -> None:
    ids = host.docker("ps", "-aq", "--filter", f"label={LABEL}").stdout.split()
    for start in range(0, len(ids), 50):
        host.docker("rm", "-f", *ids[start : start + 50])


def accepted(host: lab.LabHost) -> int:
    return host.sshd_log_text().count(f"Accepted publickey for {host.username} ")


def rows(hosts: list[lab.LabHost], projects: dict[str, list[str]], tag: str) -> dict[str, Any]:
    """A Server per host and an Environment per project (an organization per measure, one project per host)."""
    from panel.accounts.models import Organization
    from panel.inventory.models import Environment, Project, Server

    organization = Organization.objects.create(name=f"Bench {tag}", slug=f"bench-{tag}")
    servers = {}
    for host in hosts:
        server = Server.objects.create(
            organization=organization, name=host.name, host=host.address, port=host.port, username=host.username,
            private_key=host.private_key_pem, host_key_type=host.host_key_type, host_key_base64=host.host_key_base64,
            host_key_fingerprint=host.host_key_fingerprint, host_key_confirmed_at=timezone.now(),
        )  # fmt: skip
        project = Project.objects.create(
            organization=organization, name=f"Bench {host.name}", slug=f"bench-{host.name}", git_url="/srv/git/b.git"
        )
        Environment.objects.bulk_create(
            Environment(project=project, server=server, name=f"e{i}", compose_files=["prod.yaml"], compose_project=p)
            for i, p in enumerate(projects[host.name])
        )
        servers[host.name] = server
    return servers


def cycle(servers: dict[str, Any]) -> dict[str, Any]:
    """One cycle of every server at once; each thread closes its database connection after."""
    from monitoring.poller import poll_server

    def one(server_id: int) -> Any:
        try:
            return poll_server(server_id, with_odoo=False)
        finally:
            connections.close_all()

    started = time.perf_counter()
    with ThreadPoolExecutor(len(servers)) as pool:
        reports = list(pool.map(one, [s.pk for s in servers.values()]))
    wall = time.perf_counter() - started
    return {"wall": wall, "reports": reports}


def bare_round_trip(server: Any, runs: int = 20) -> float:
    from panel.remote import Target, run_capture

    target = Target.for_server(server)
    run_capture(target, ["true"])
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        assert run_capture(target, ["true"]).ok
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def queries_of_one_cycle(server: Any, *, with_observe: bool) -> int:
    from monitoring import incidents
    from monitoring.poller import poll_server

    original = incidents.observe
    if not with_observe:
        incidents.observe = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        with CaptureQueriesContext(connection) as captured:
            poll_server(server.pk, with_odoo=False)
    finally:
        incidents.observe = original  # type: ignore[assignment]
    return len(captured.captured_queries)


def measure(hosts: list[lab.LabHost], per_host: int, cycles: int) -> dict[str, Any]:
    from monitoring.models import EnvironmentHealth, HealthState

    connections.close_all()  # a connection kept while waiting for the lab may have been ended since
    for host in hosts:
        remove_containers(host)
    with ThreadPoolExecutor(len(hosts)) as pool:
        projects = dict(
            zip([h.name for h in hosts], pool.map(lambda h: start_containers(h, per_host), hosts), strict=True)
        )
    servers = rows(hosts, projects, str(per_host))
    # Wait until every stand-in answers (first cycles), then count logins and time the measured cycles.
    deadline = time.monotonic() + 300
    while True:
        cycle(servers)
        polled = EnvironmentHealth.objects.filter(environment__server__in=list(servers.values()))
        up = polled.filter(state__in=[HealthState.UP, HealthState.DEGRADED]).count()
        if up == per_host * len(hosts) or time.monotonic() > deadline:
            break
        time.sleep(1)
    states = dict(polled.values_list("state").annotate(n=Count("pk")).order_by())
    logins = {h.name: accepted(h) for h in hosts}
    walls, per_server = [], {h.name: [] for h in hosts}
    for _ in range(cycles):
        result = cycle(servers)
        walls.append(result["wall"])
        for report in result["reports"]:
            name = next(n for n, s in servers.items() if s.pk == report.server_id)
            per_server[name].append(report.seconds)
    opened = {h.name: accepted(h) - logins[h.name] for h in hosts}
    rtt = {name: bare_round_trip(server) for name, server in servers.items()}
    return {
        "servers": servers,
        "states": states,
        "wall": statistics.median(walls),
        "per_server": {name: statistics.median(values) for name, values in per_server.items()},
        "rtt": rtt,
        "opened": opened,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-host", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args()
    lab.ensure_up()
    hosts = [lab.make_host(spec) for spec in lab.HOST_SPECS]
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        with lab.exclusive_use():
            try:
                small = measure(hosts, 1, args.cycles)
                small_queries = queries_of_one_cycle(small["servers"]["lab1"], with_observe=True)
                small_own = queries_of_one_cycle(small["servers"]["lab1"], with_observe=False)
                big = measure(hosts, args.per_host, args.cycles)
                big_queries = queries_of_one_cycle(big["servers"]["lab1"], with_observe=True)
                big_own = queries_of_one_cycle(big["servers"]["lab1"], with_observe=False)
            finally:
                for host in hosts:
                    remove_containers(host)
    finally:
        connections.close_all()
        connection.creation.destroy_test_db(old_name, verbosity=0)
    environments = args.per_host * len(hosts)
    report = {
        "environments": environments,
        "states_after_warm_up": big["states"],
        "cycle_wall_s": round(big["wall"], 3),
        "cycle_s_per_server": {k: round(v, 3) for k, v in big["per_server"].items()},
        "bare_ssh_round_trip_ms": {k: round(v * 1000, 2) for k, v in big["rtt"].items()},
        "ratio_cycle_to_round_trip": {k: round(big["per_server"][k] / big["rtt"][k], 1) for k in big["rtt"]},
        "ssh_connections_opened_per_cycle_after_first": {
            k: round(v / args.cycles, 2) for k, v in big["opened"].items()
        },
        "cycle_s_per_server_with_1_environment_each": {k: round(v, 3) for k, v in small["per_server"].items()},
        "cycle_growth_1_to_per_host": {k: round(big["per_server"][k] / small["per_server"][k], 2) for k in big["rtt"]},
        "sql_queries_per_server_cycle": {
            "poller_only_1_env": small_own,
            f"poller_only_{args.per_host}_envs": big_own,
            "with_observe_1_env": small_queries,
            f"with_observe_{args.per_host}_envs": big_queries,
        },
        "cycles_measured": args.cycles,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "poll.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
