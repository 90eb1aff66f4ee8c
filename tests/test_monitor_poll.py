"""Fleet polling without the lab: the parsing of what a cycle's script prints, the checks and states it gives, the
remote command it sends, the Odoo checks' thresholds, and a server that cannot be reached (real sockets, real
database)."""

from __future__ import annotations

import shlex
import socket
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from monitoring import checks, odoo_checks, poller
from monitoring.checks import CheckResult
from monitoring.models import (
    CheckState,
    CheckStatus,
    EnvironmentHealth,
    HealthState,
    Incident,
    MaintenanceWindow,
    Sample,
    ServerHealth,
    ServerSample,
)

S = poller.SEP
PROJECT = "shop-16-0-prod"


def container_line(service: str, state: str = "running", *, project: str = PROJECT, **extra: str) -> str:
    fields = {
        "id": f"{service}0123456789abcdef", "project": project, "service": service, "oneoff": "False",
        "state": state, "health": "", "restarts": "0", "code": "0", "netmode": f"{project}_default",
        "ips": "10.1.0.2 10.2.0.3 ", "name": f"/{project}-{service}-1", "pid": "4242",
        "db": "prod" if service == "odoo" else "",
    } | extra  # fmt: skip
    return S.join(fields.values())


def output(
    *,
    containers: list[str],
    probes: list[str],
    odoo: str | None = None,
    stats: tuple[str, ...] = (),
    cgroup: tuple[str, ...] = (),
) -> str:
    lines = [
        "@@host", "0.52 0.58 0.59 1/467 12345", "4", "MemTotal:       8000000 kB", "MemAvailable:   2000000 kB",
        "/dev/vda       100000000000 93000000000 5000000000      95% /",
        "/dev/vda       100000000000 93000000000 5000000000      95% /",
        "@@containers", *containers, "@@stats", *stats, "@@cgroup", *cgroup, "@@probes", *probes,
    ]  # fmt: skip
    if odoo is not None:
        lines += [f"@@odoo {PROJECT}", odoo, "@@rc 0"]
    return "\n".join([*lines, "@@end"])


WATCHED = poller.Watched(id=1, label="Shop / prod", compose_project=PROJECT, odoo_major=16, deployed=True, workers=2)


def test_it_parses_the_host_containers_stats_and_probes() -> None:
    text = output(
        containers=[container_line("odoo", restarts="2"), container_line("db", health="healthy")],
        stats=(f"odoo0123456789abcdef{S}12.5%{S}100MiB / 7.6GiB", f"db0123456789abcdef{S}0.40%{S}1.5GiB / 7.6GiB"),
        probes=[f"{PROJECT} http 200 12345 pass", f"{PROJECT} websocket 101 2500 -"],
    )
    parsed = poller.parse_poll_output(text)
    assert parsed.complete and parsed.docker_error is None
    assert (parsed.host.load1, parsed.host.load5, parsed.host.cpus) == (0.52, 0.58, 4)
    assert parsed.host.memory_total == 8000000 * 1024 and parsed.host.memory_available == 2000000 * 1024
    assert len(parsed.host.disks) == 1 and round(parsed.host.disks[0].percent) == 95  # / and $HOME: one disk
    odoo, db = parsed.containers
    assert (odoo.service, odoo.restarts, odoo.addresses, odoo.database, odoo.name) == (
        "odoo",
        2,
        ["10.1.0.2", "10.2.0.3"],
        "prod",
        f"{PROJECT}-odoo-1",
    )
    assert (odoo.cpu_percent, odoo.memory_bytes) == (12.5, 100 * 1024**2)
    assert db.health == "healthy" and db.memory_bytes == int(1.5 * 1024**3)
    http, ws = parsed.probes[(PROJECT, "http")], parsed.probes[(PROJECT, "websocket")]
    assert (http.code, http.ms, http.body_ok) == (200, 12.35, True)
    assert (ws.code, ws.ms) == (101, 2.5)


def test_it_takes_cpu_and_memory_from_the_cgroup_files_and_cpu_percent_from_the_last_cycle() -> None:
    text = output(
        containers=[container_line("odoo"), container_line("db")],
        cgroup=("at 1700000002000000", "odoo0123456789abcdef 5500000000 104857600"),
        probes=[f"{PROJECT} http 200 1000 pass", f"{PROJECT} websocket 101 1000 -"],
    )
    parsed = poller.parse_poll_output(text)
    assert parsed.sampled_us == 1700000002000000
    odoo = parsed.containers[0]
    assert (odoo.cpu_ns, odoo.memory_bytes, odoo.pid) == (5500000000, 100 * 1024**2, 4242)
    # 0.5 s of CPU over the 2 s since the last cycle: 25 % (of one CPU, as docker stats counts).
    watched = poller.Watched(
        id=1, label="x", compose_project=PROJECT, odoo_major=16, deployed=True, workers=2,
        previous_cpu=(("odoo01234567", 5000000000, 1700000000000000),),
    )  # fmt: skip
    assessment = poller.assess(watched, parsed, "alpha-1")
    assert assessment.cpu_percent == 25.0 and assessment.memory_bytes == 100 * 1024**2
    stored = {c["service"]: c for c in assessment.containers}
    assert stored["odoo"]["cpu_ns"] == 5500000000 and stored["odoo"]["sampled_us"] == 1700000002000000
    assert stored["odoo"]["id"] == "odoo01234567" and stored["db"]["cpu_ns"] is None
    # The first cycle (no previous sample) has no CPU figure yet.
    assert poller.assess(WATCHED, poller.parse_poll_output(text), "alpha-1").cpu_percent is None


def test_it_treats_a_cut_output_as_no_answer_and_ignores_garbage() -> None:
    text = output(containers=[container_line("odoo"), "garbage\x1fline", ""], probes=["nonsense", f"{PROJECT} http"])
    parsed = poller.parse_poll_output(text)
    assert len(parsed.containers) == 1 and parsed.probes == {}
    assert not poller.parse_poll_output(text.replace("@@end", "")).complete


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100MiB", 100 * 1024**2), ("1.5GiB", int(1.5 * 1024**3)), ("0B", 0), ("12kB", 12000), ("--", None)],
)
def test_it_reads_docker_sizes(text: str, expected: int | None) -> None:
    assert poller.parse_size(text) == expected


def assessed(**kwargs: Any) -> tuple[poller.Assessment, str, str]:
    watched = kwargs.pop("watched", WATCHED)
    assessment = poller.assess(watched, poller.parse_poll_output(output(**kwargs)), "alpha-1")
    state, message = poller.state_of(assessment.checks)
    return assessment, state, message


def by_name(assessment: poller.Assessment) -> dict[str, CheckResult]:
    return {r.name: r for r in assessment.checks}


def test_it_calls_an_environment_up_when_8069_and_8072_answer_and_degraded_by_a_full_disk() -> None:
    assessment, state, message = assessed(
        containers=[container_line("odoo"), container_line("db")],
        probes=[f"{PROJECT} http 200 9000 pass", f"{PROJECT} websocket 101 2000 -"],
    )
    results = by_name(assessment)
    assert results[checks.AVAILABILITY].status == CheckStatus.OK
    assert results[checks.WEBSOCKET].status == CheckStatus.OK
    # The fixture's disk is 95 % full (MONITOR_DISK_PERCENT 90): the environment answers but is degraded.
    assert results[checks.SERVER_DISK].status == CheckStatus.FAILING
    assert "/ on alpha-1 is 95 % full (4.7 GiB free)" in results[checks.SERVER_DISK].message
    assert state == HealthState.DEGRADED and "95 % full" in message
    assert assessment.http_ok is True and assessment.websocket_ok is True and assessment.http_ms == 9.0


def test_it_reports_8072_alone_when_8069_answers(settings: Any) -> None:
    settings.MONITOR_DISK_PERCENT = 99
    assessment, state, _message = assessed(
        containers=[container_line("odoo"), container_line("db")],
        probes=[f"{PROJECT} http 200 9000 pass", f"{PROJECT} websocket refused 300 -"],
    )
    results = by_name(assessment)
    assert results[checks.AVAILABILITY].status == CheckStatus.OK
    assert results[checks.WEBSOCKET].status == CheckStatus.FAILING
    assert "Port 8072 fails (the connection was refused to /websocket" in results[checks.WEBSOCKET].message
    assert state == HealthState.DEGRADED and assessment.websocket_ok is False and assessment.http_ok is True


def test_it_probes_longpolling_before_odoo_16(settings: Any) -> None:
    settings.MONITOR_DISK_PERCENT = 99
    odoo15 = poller.Watched(id=1, label="x", compose_project=PROJECT, odoo_major=15, deployed=True, workers=2)
    assert odoo15.websocket_mode == "lp"
    assessment, state, _ = assessed(
        watched=odoo15,
        containers=[container_line("odoo"), container_line("db")],
        probes=[f"{PROJECT} http 200 9000 pass", f"{PROJECT} longpolling 404 2000 -"],
    )
    assert by_name(assessment)[checks.WEBSOCKET].status == CheckStatus.OK and state == HealthState.UP


@pytest.mark.parametrize(
    ("containers", "probes", "reason"),
    [
        ([container_line("odoo", "exited", code="137"), container_line("db")], [], "The odoo container is exited (exit code 137)"),
        ([container_line("odoo"), container_line("db", "restarting")], [f"{PROJECT} http 200 1 pass"], "The db container is restarting"),
        ([container_line("odoo"), container_line("db")], [f"{PROJECT} http timeout - -"], "did not answer within 5 s"),
        ([container_line("odoo"), container_line("db")], [f"{PROJECT} http 500 3000 -"], "answered HTTP 500 without"),
        ([container_line("odoo"), container_line("db")], [f"{PROJECT} http refused 100 -"], "refused the connection on port 8069"),
        ([container_line("db", project="other")], [], f"No container of compose project {PROJECT} exists on alpha-1"),
    ],
)  # fmt: skip
def test_it_calls_an_environment_down_with_the_reason(containers: list[str], probes: list[str], reason: str) -> None:
    assessment, state, message = assessed(containers=containers, probes=probes)
    assert state == HealthState.DOWN and reason in message, message
    assert by_name(assessment)[checks.WEBSOCKET].status in (CheckStatus.UNKNOWN, CheckStatus.FAILING)


def test_it_leaves_a_never_deployed_environment_unknown_and_ignores_one_off_containers() -> None:
    never = poller.Watched(id=1, label="x", compose_project=PROJECT, odoo_major=16, deployed=False, workers=2)
    _, state, message = assessed(watched=never, containers=[container_line("odoo", oneoff="True")], probes=[])
    assert state == HealthState.UNKNOWN and "Not deployed yet" in message


def test_it_warns_about_unhealthy_and_restarting_containers_without_calling_them_down(settings: Any) -> None:
    settings.MONITOR_DISK_PERCENT = 99
    watched = poller.Watched(
        id=1, label="x", compose_project=PROJECT, odoo_major=16, deployed=True, workers=2, previous_restarts=1
    )
    assessment, state, message = assessed(
        watched=watched,
        containers=[container_line("odoo", health="unhealthy", restarts="3"), container_line("db")],
        probes=[f"{PROJECT} http 200 9000 pass", f"{PROJECT} websocket 101 2000 -"],
    )
    assert by_name(assessment)[checks.AVAILABILITY].status == CheckStatus.WARNING
    assert state == HealthState.UP and "unhealthy" in message and "restarted 2 times since the last cycle" in message


def test_it_says_docker_is_down_when_the_server_answers_but_docker_does_not() -> None:
    text = "\n".join(
        ["@@host", "0.1 0.1 0.1 1/1 1", "@@docker-down", "Cannot connect to the Docker daemon", "@@probes", "@@end"]
    )
    assessment = poller.assess(WATCHED, poller.parse_poll_output(text), "alpha-1")
    assert by_name(assessment)[checks.AVAILABILITY].status == CheckStatus.FAILING
    assert "Docker does not answer on alpha-1 (Cannot connect to the Docker daemon)" in assessment.checks[0].message


def test_it_lets_maintenance_win_and_unknown_stay_unknown() -> None:
    ok = CheckResult(checks.AVAILABILITY, CheckStatus.OK, "fine")
    down = CheckResult(checks.AVAILABILITY, CheckStatus.FAILING, "down")
    cron = CheckResult(checks.CRON_OVERDUE, CheckStatus.FAILING, "cron “X” late")
    assert poller.state_of([ok, cron]) == (HealthState.DEGRADED, "cron “X” late")
    assert poller.state_of([down, cron])[0] == HealthState.DOWN
    assert poller.state_of([down], maintenance=True)[0] == HealthState.MAINTENANCE
    assert poller.state_of([checks.unknown(checks.AVAILABILITY, "unreachable")])[0] == HealthState.UNKNOWN


def test_it_sends_one_command_with_only_valid_project_names() -> None:
    bad = poller.Watched(id=2, label="x", compose_project="x;reboot", odoo_major=16, deployed=True, workers=2)
    old = poller.Watched(id=3, label="y", compose_project="erp-14-0-prod", odoo_major=14, deployed=True, workers=2)
    argv = poller.poll_argv([WATCHED, bad, old], with_odoo=False)
    assert argv[:3] == ["bash", "-c", poller.POLL_SCRIPT]
    assert argv[-2:] == [f"{PROJECT}=ws", "erp-14-0-prod=lp"] and not any("reboot" in a for a in argv)
    assert argv[4:6] == ["5", ""]  # the probe timeout, no SQL this cycle
    assert "\\set cron_overdue_minutes 30" in poller.poll_argv([WATCHED], with_odoo=True)[5]
    assert len(shlex.join(argv)) < 20000


# -- the Odoo checks -------------------------------------------------------------------------------------------------

NOW = timezone.now()
ODOO = odoo_checks.OdooEnvironment(label="Shop / prod", odoo_major=16, workers=4)


def odoo_output(**sections: str) -> str:
    base = {
        "server": '{"connections": 93, "max_connections": 100, "database_bytes": 5368709120}',
        "activity": '{"long_queries": [], "idle_in_transaction": [], "lock_waits": [], "busy_workers": 4}',
        "crons": '{"active": 12, "overdue_count": 0, "overdue": []}',
    } | sections
    return "\n".join(f"{key}\t{value}" for key, value in base.items()) + "\n@@rc 0"


def evaluated(text: str, previous: dict[str, Any] | None = None) -> dict[str, CheckResult]:
    facts = odoo_checks.parse_odoo_output(text)
    return {r.name: r for r in odoo_checks.evaluate(ODOO, facts, previous or {}, NOW)}


def test_it_names_overdue_crons_and_says_what_odoo_16_cannot_tell() -> None:
    results = evaluated(
        odoo_output(
            crons='{"active": 5, "overdue_count": 4, "overdue": [{"id": 7, "name": "Mail: Email Queue Manager", '
            '"late_seconds": 5400, "nextcall": "2026-12-01 10:00"}, {"id": 8, "name": "B", "late_seconds": 4000}, '
            '{"id": 9, "name": "C", "late_seconds": 3000}, {"id": 10, "name": "D", "late_seconds": 2000}]}'
        )
    )
    overdue = results[checks.CRON_OVERDUE]
    assert overdue.status == CheckStatus.FAILING and overdue.value == 4
    assert overdue.message.startswith(
        "4 crons past their next run by more than 30 min: “Mail: Email Queue Manager” (due 2026-12-01 10:00 UTC, "
        "90 min late), “B” (66 min late)"
    ), overdue.message
    assert "and 1 more" in overdue.message and "“D”" not in overdue.message
    failures = results[checks.CRON_FAILURES]
    assert failures.status == CheckStatus.UNKNOWN and "Odoo 16 does not record cron failures" in failures.message
    assert results[checks.QUEUE_JOB].status == CheckStatus.UNKNOWN  # not installed


def test_it_fails_on_connections_and_busy_workers_and_passes_what_is_fine() -> None:
    results = evaluated(odoo_output())
    assert results[checks.CONNECTIONS].status == CheckStatus.FAILING
    assert "93 of 100 connections in use (93 %)" in results[checks.CONNECTIONS].message
    assert (
        results[checks.WORKERS].status == CheckStatus.FAILING
        and "4 of 4 workers busy" in results[checks.WORKERS].message
    )
    assert results[checks.CRON_OVERDUE].status == CheckStatus.OK
    assert results[checks.LONG_QUERIES].status == CheckStatus.OK
    assert results[checks.DATABASE_SIZE].message == "The database uses 5.0 GiB."


def test_it_measures_growth_against_a_baseline_and_warns_above_the_limit(settings: Any) -> None:
    settings.MONITOR_DATABASE_GROWTH_WARN_MB_PER_DAY = 1024
    two_hours_ago = (NOW - timedelta(hours=2)).isoformat()
    previous = {checks.DATABASE_SIZE: {"baseline_bytes": 5368709120 - 200 * 1024**2, "baseline_at": two_hours_ago}}
    result = evaluated(odoo_output(), previous)[checks.DATABASE_SIZE]
    assert result.status == CheckStatus.WARNING and "growing 2.3 GiB a day" in result.message, result.message
    assert result.details["baseline_at"] == two_hours_ago  # the baseline stays until it is a day old
    old = {checks.DATABASE_SIZE: {"baseline_bytes": 1, "baseline_at": (NOW - timedelta(days=2)).isoformat()}}
    assert evaluated(odoo_output(), old)[checks.DATABASE_SIZE].details["baseline_at"] == NOW.isoformat()


def test_it_reports_queue_job_backlog_by_channel() -> None:
    queue = (
        '{"counts": [{"channel": "root.mail", "state": "pending", "jobs": 40}, {"channel": "root", "state": "failed", '
        '"jobs": 2}], "oldest_pending_seconds": 7200, "oldest_pending_channel": "root.mail"}'
    )
    result = evaluated(odoo_output(queue_job=queue))[checks.QUEUE_JOB]
    assert result.status == CheckStatus.FAILING and result.value == 7200
    assert "The oldest pending job (channel root.mail) waits for 2 h 0 min" in result.message
    assert "failed 2, pending 40" in result.message
    calm = '{"counts": [{"channel": "root", "state": "failed", "jobs": 2}], "oldest_pending_seconds": null}'
    assert evaluated(odoo_output(queue_job=calm))[checks.QUEUE_JOB].status == CheckStatus.WARNING


def test_it_makes_every_odoo_check_unknown_when_psql_did_not_run() -> None:
    facts = odoo_checks.parse_odoo_output("Error response from daemon: container abc is not running\n@@rc 1")
    results = odoo_checks.evaluate(ODOO, facts, {}, NOW)
    assert results and all(r.status == CheckStatus.UNKNOWN for r in results)
    assert "container abc is not running" in results[0].message


def test_it_keeps_sql_thresholds_integers(settings: Any) -> None:
    settings.MONITOR_CRON_OVERDUE_MINUTES = 45
    sql = odoo_checks.odoo_sql()
    assert "\\set cron_overdue_minutes 45\n" in sql and "{" not in sql.split("\\pset")[0]


# -- a server that cannot be reached ---------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_it_marks_an_unreachable_servers_environments_unknown_without_an_incident(
    inventory: dict[str, Any], settings: Any
) -> None:
    server, environment = inventory["server_a"], inventory["env_a"]
    server.host, server.port, server.host_key_confirmed_at = "127.0.0.1", closed_port(), timezone.now()
    server.save()
    assert poller.servers_to_poll() == [server.pk]
    EnvironmentHealth.objects.create(environment=environment, state=HealthState.UP, since=NOW - timedelta(days=1))

    for _ in range(settings.MONITOR_FAIL_THRESHOLD + 1):
        report = poller.poll_server(server.pk)

    assert report.reachable is False and "refused the connection" in report.error
    health = EnvironmentHealth.objects.get(environment=environment)
    assert health.state == HealthState.UNKNOWN and "alpha-1 could not be polled" in health.message
    assert health.http_ok is None and health.since > NOW
    availability = CheckState.objects.get(environment=environment, name=checks.AVAILABILITY)
    assert availability.status == CheckStatus.UNKNOWN and availability.consecutive_failures == 0
    assert not Incident.objects.exists()
    # The first cycle ran the Odoo checks too (unknown as well); the others only the every-cycle ones.
    assert CheckState.objects.filter(environment=environment).count() == len(checks.ALL)
    server_health = ServerHealth.objects.get(server=server)
    assert server_health.reachable is False and server_health.cycles == settings.MONITOR_FAIL_THRESHOLD + 1
    assert ServerSample.objects.filter(server=server, reachable=False).count() == server_health.cycles
    assert set(Sample.objects.filter(environment=environment).values_list("state", flat=True)) == {"unknown"}


def test_it_shows_maintenance_and_polls_only_confirmed_servers(inventory: dict[str, Any]) -> None:
    server, environment = inventory["server_a"], inventory["env_a"]
    assert poller.servers_to_poll() == []  # host keys of the fixture's servers are not confirmed
    server.host, server.port, server.host_key_confirmed_at = "127.0.0.1", closed_port(), timezone.now()
    server.save()
    MaintenanceWindow.objects.create(
        organization=environment.project.organization,
        starts_at=NOW - timedelta(hours=1),
        ends_at=NOW + timedelta(hours=1),
    )
    poller.poll_server(server.pk)
    assert EnvironmentHealth.objects.get(environment=environment).state == HealthState.MAINTENANCE
