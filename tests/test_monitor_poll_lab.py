"""Fleet polling against the lab (real sshd + dockerd, the Odoo stand-in and PostgreSQL, no deploy): a stuck cron, port
8072 failing alone, an unreachable server, and the cycle's SSH connection being reused.

Cycles run in the test process (``monitoring.poller.poll_server``), except for the unreachable server, where a
monitoring worker of the test's own, with beat and a 2 s interval, polls both lab hosts as in production.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from monitoring import checks
from monitoring.models import CheckState, CheckStatus, EnvironmentHealth, HealthState, Incident, ServerHealth
from monitoring.poller import poll_server
from tests.conftest import ManagedProcess, wait_for_log
from tests.monitoring_fixtures import RunningEnv


def accepted(host: Any) -> int:
    """SSH logins the host's sshd accepted so far."""
    return host.sshd_log_text().count(f"Accepted publickey for {host.username} ")


def check(environment: Any, name: str) -> CheckState:
    return CheckState.objects.get(environment=environment, name=name)


def test_it_reports_a_stuck_cron_by_name_and_the_other_odoo_checks(running_env: RunningEnv, settings: Any) -> None:
    settings.MONITOR_LONG_QUERY_SECONDS = settings.MONITOR_IDLE_IN_TRANSACTION_SECONDS = 1
    settings.MONITOR_LOCK_WAIT_SECONDS = 1
    environment = running_env.environment
    running_env.sql(
        "UPDATE ir_cron SET nextcall = (now() AT TIME ZONE 'UTC') - interval '3 hours' "
        "WHERE name = 'Mail: Email Queue Manager';"
        "UPDATE ir_cron SET failure_count = 4, first_failure_date = (now() AT TIME ZONE 'UTC') - interval '1 day' "
        "WHERE name = 'Panel demo: nightly job';"
    )
    running_env.install_queue_job()
    running_env.sql(
        "INSERT INTO queue_job (uuid, name, state, channel, date_created) VALUES "
        "('a1', 'stuck export', 'pending', 'root.export', (now() AT TIME ZONE 'UTC') - interval '2 hours'), "
        "('a2', 'fresh mail', 'enqueued', 'root', now() AT TIME ZONE 'UTC'), "
        "('a3', 'broken', 'failed', 'root', now() AT TIME ZONE 'UTC');"
    )

    # Three sessions: one holds a lock on res_users in a long query, one waits for it, one idles in a transaction.
    holder = running_env.psql_session("BEGIN; LOCK TABLE res_users; SELECT pg_sleep(30);")
    time.sleep(0.3)
    waiter = running_env.psql_session("SELECT count(*) FROM res_users;")
    idle = running_env.psql_session("BEGIN; SELECT 1;")
    try:
        time.sleep(2)
        report = poll_server(running_env.server.pk, with_odoo=True)
    finally:
        for session in (holder, waiter, idle):
            session.kill()
        running_env.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND application_name = 'psql' AND datname = current_database();"
        )

    assert report.reachable and report.odoo_checks, report
    overdue = check(environment, checks.CRON_OVERDUE)
    assert overdue.status == CheckStatus.FAILING
    assert "“Mail: Email Queue Manager”" in overdue.message and "3 h" in overdue.message, overdue.message
    assert "Auto-vacuum" not in overdue.message
    failures = check(environment, checks.CRON_FAILURES)
    assert failures.status == CheckStatus.FAILING and "“Panel demo: nightly job” (4 failures" in failures.message
    queue = check(environment, checks.QUEUE_JOB)
    assert queue.status == CheckStatus.FAILING and "channel root.export" in queue.message, queue.message
    assert {"channel": "root.export", "state": "pending", "jobs": 1} in queue.details["counts"]
    locks = check(environment, checks.LOCKS)
    assert locks.status == CheckStatus.FAILING and "1 session waiting on a lock" in locks.message, locks.message
    blocker = locks.details["sessions"][0]["blocked_by"][0]
    assert f"blocked by pid {blocker}" in locks.message
    long_queries = check(environment, checks.LONG_QUERIES)
    assert long_queries.status == CheckStatus.FAILING and f"pid {blocker} (psql" in long_queries.message
    idle_check = check(environment, checks.IDLE_IN_TRANSACTION)
    assert idle_check.status == CheckStatus.FAILING and "1 session idle in a transaction" in idle_check.message
    assert check(environment, checks.CONNECTIONS).status == CheckStatus.OK
    database = check(environment, checks.DATABASE_SIZE)
    assert database.status == CheckStatus.OK and database.value and database.value > 1_000_000
    health = EnvironmentHealth.objects.get(environment=environment)
    assert health.state == HealthState.DEGRADED and "Mail: Email Queue Manager" in health.message
    assert health.http_ok is True and health.database_bytes == int(database.value)
    assert health.odoo_checked_at is not None

    # A cycle without the Odoo checks keeps the environment degraded by the stored result; once the cron ran
    # (nextcall ahead) the next Odoo check clears it.
    assert poll_server(running_env.server.pk, with_odoo=False).states[environment.pk] == HealthState.DEGRADED
    running_env.sql(
        "UPDATE ir_cron SET nextcall = (now() AT TIME ZONE 'UTC') + interval '1 hour', failure_count = 0; "
        "DELETE FROM queue_job;"
    )
    assert poll_server(running_env.server.pk, with_odoo=True).states[environment.pk] == HealthState.UP
    assert check(environment, checks.CRON_OVERDUE).status == CheckStatus.OK


def test_it_reports_port_8072_failing_while_8069_answers_over_one_reused_connection(
    running_env: RunningEnv, settings: Any
) -> None:
    settings.MONITOR_PROBE_TIMEOUT = 1
    environment, host = running_env.environment, running_env.host
    first = poll_server(running_env.server.pk, with_odoo=False)
    assert first.states[environment.pk] == HealthState.UP, EnvironmentHealth.objects.get(
        environment=environment
    ).message
    assert check(environment, checks.WEBSOCKET).status == CheckStatus.OK
    logins = accepted(host)

    running_env.break_websocket()
    broken = poll_server(running_env.server.pk, with_odoo=False)

    health = EnvironmentHealth.objects.get(environment=environment)
    assert broken.states[environment.pk] == HealthState.DEGRADED
    assert health.http_ok is True and health.websocket_ok is False
    assert check(environment, checks.AVAILABILITY).status == CheckStatus.OK
    websocket = check(environment, checks.WEBSOCKET)
    assert websocket.status == CheckStatus.FAILING
    assert "Port 8072 fails" in websocket.message and "while 8069 answers" in websocket.message
    assert websocket.message in health.message

    running_env.heal_websocket()
    healed = poll_server(running_env.server.pk, with_odoo=False)
    assert healed.states[environment.pk] == HealthState.UP
    assert EnvironmentHealth.objects.get(environment=environment).websocket_ok is True
    # Three cycles, one SSH login: the first cycle's connection carried the next ones.
    assert accepted(host) == logins
    # The figures a person sees: response times, containers with their resources, the host.
    health.refresh_from_db()
    assert health.http_ms and health.websocket_ms and health.memory_bytes
    assert {c["service"] for c in health.containers} == {"odoo", "db"}
    assert all(c["state"] == "running" for c in health.containers)
    assert health.cpu_percent is not None  # from the cgroup's CPU time since the previous cycle
    server = ServerHealth.objects.get(server=running_env.server)
    assert server.reachable and server.cycles == 3 and server.load1 is not None and server.disk_total_bytes

    # A frozen Odoo (its container paused: nothing answers) is down, said in words that name the cause, and the
    # cycle still ends within about the probe timeout.
    running_env.host.docker("pause", running_env.container("odoo"), check=True)
    try:
        frozen = poll_server(running_env.server.pk, with_odoo=False)
    finally:
        running_env.host.docker("unpause", running_env.container("odoo"), check=True)
    assert frozen.states[environment.pk] == HealthState.DOWN and frozen.seconds < 4, frozen
    availability = check(environment, checks.AVAILABILITY)
    assert "odoo container is paused" in availability.message, availability.message
    assert check(environment, checks.WEBSOCKET).status == CheckStatus.UNKNOWN  # one outage, one failing check


def test_it_marks_an_unreachable_servers_environments_unknown_and_the_other_server_keeps_its_pace(
    running_env: RunningEnv, running_env2: RunningEnv, process_logs: Path, transactional_db: Any
) -> None:
    near, far = running_env, running_env2
    worker = ManagedProcess(
        "monitoring-poll",
        [
            sys.executable, "-m", "celery", "-A", "panel", "worker", "-Q", "monitoring", "-n", "monitoring-poll@%h",
            "--concurrency", "2", "--without-gossip", "--without-mingle", "-l", "info",
            "-B", "-s", str(process_logs / "beat-schedule-poll"),
        ],
        process_logs / "monitoring-poll.log",
        env={"MONITOR_INTERVAL": "2", "MONITOR_SERVER_TIMEOUT": "10"},
    )  # fmt: skip
    worker.start()
    try:
        wait_for_log(worker, "ready.")
        wait_until(lambda: states(near, far) == (HealthState.UP, HealthState.UP), "both environments up", worker)

        far.host.stop_sshd()
        wait_until(lambda: states(near, far)[1] == HealthState.UNKNOWN, "the far environment unknown", worker)
        health = EnvironmentHealth.objects.get(environment=far.environment)
        assert "could not be polled" in health.message, health.message
        unreachable_since = ServerHealth.objects.get(server=far.server).cycles
        # Several cycles later (more than the failure threshold): still unknown, no counter moved, no incident.
        wait_until(
            lambda: ServerHealth.objects.get(server=far.server).cycles >= unreachable_since + 4,
            "four more cycles of the unreachable server", worker,
        )  # fmt: skip
        assert states(near, far) == (HealthState.UP, HealthState.UNKNOWN)
        availability = check(far.environment, checks.AVAILABILITY)
        assert availability.status == CheckStatus.UNKNOWN and availability.consecutive_failures == 0
        assert not Incident.objects.filter(environment=far.environment).exists()
        assert not ServerHealth.objects.get(server=far.server).reachable
        # The near server went on at the interval, each cycle short.
        before = ServerHealth.objects.get(server=near.server)
        wait_until(
            lambda: ServerHealth.objects.get(server=near.server).cycles >= before.cycles + 2,
            "two more cycles of the near server", worker, timeout=10,
        )  # fmt: skip
        after = ServerHealth.objects.get(server=near.server)
        assert after.reachable and after.cycle_seconds is not None and after.cycle_seconds < 8, after.cycle_seconds
    finally:
        far.host.start_sshd()
        worker.stop()


def states(*envs: RunningEnv) -> tuple[str | None, ...]:
    found = dict(
        EnvironmentHealth.objects.filter(environment__in=[e.environment for e in envs]).values_list(
            "environment_id", "state"
        )
    )
    return tuple(found.get(e.environment.pk) for e in envs)


def wait_until(predicate: Any, what: str, worker: ManagedProcess, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s\n{worker.log_text()[-3000:]}")
        time.sleep(0.2)
