"""Fleet polling: one cycle per server, one SSH round trip per cycle, whatever the number of environments.

A cycle sends one bash script over the server's pooled SSH connection (``panel.remote.ssh``: one connection per
server per worker process, reused by every cycle). The script, with only what a fresh Debian server has (bash,
coreutils, docker):

- reads the host's load, memory and disk (``/proc``, ``df``);
- inspects every compose container (``docker ps -a`` + one ``docker inspect``): project and service labels, state,
  Docker health, restart count, addresses, and Odoo's ``PGDATABASE`` (filtered by the template on the server: no
  other variable, no secret, leaves it);
- reads each running container's CPU time and memory from its cgroup files (``/proc/<pid>/cgroup``, v1 or v2;
  CPU % is the CPU time used since the last cycle); ``docker stats --no-stream`` for any container whose files
  cannot be read (it waits for two samples a second apart, and more with many containers);
- in parallel, each bounded by ``MONITOR_PROBE_TIMEOUT``: for every environment Odoo's ``/web/health`` on 8069 and
  a websocket handshake on 8072 (``/websocket``, Odoo 16+) or ``/longpolling/poll`` (before), over bash's
  ``/dev/tcp`` to the odoo container's address, timed with ``$EPOCHREALTIME``; every ``MONITOR_ODOO_CHECK_EVERY``
  cycles also ``psql`` in each db container (``monitoring.odoo_checks``);
- prints it all in sections (``@@host``, ``@@containers``, ``@@stats``, ``@@cgroup``, ``@@probes``,
  ``@@odoo <project>``, ``@@end``).

The whole cycle is bounded by ``MONITOR_SERVER_TIMEOUT``. A server that cannot be reached (refused, timed out, host
key changed) makes its environments *unknown*, never *down*: every check is observed as unknown, which opens and
closes no incident. Each server is its own Celery task (``monitoring.tasks.poll_server``), so a slow server never
delays another one; an advisory lock keeps two cycles of one server from overlapping.

The database work of a cycle is a fixed number of bulk reads and writes (the server, its environments, their
health, check states and maintenance windows; one upsert of ``EnvironmentHealth``, one insert of ``Sample`` rows),
plus ``monitoring.incidents.observe`` once per check per environment.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from monitoring import checks, live, logs, odoo_checks
from monitoring.checks import CheckResult, unknown
from monitoring.models import (
    CheckState,
    CheckStatus,
    EnvironmentHealth,
    HealthState,
    MaintenanceWindow,
    Sample,
    ServerHealth,
    ServerSample,
)
from panel.inventory.choices import Lifecycle
from panel.inventory.models import Environment, Server
from panel.remote import RemoteError, Target, run_capture
from panel.validators import SLUG_RE

logger = logging.getLogger(__name__)

SEP = "\x1f"  # between fields of the container lines: never in a label, state, address or database name we accept
ADVISORY_LOCK_CLASS = 0x504F4C4C  # "POLL": pg_try_advisory_lock(class, server id)

# docker inspect's template: one line per container. PGDATABASE is cut out of the environment by the template
# itself, so no other variable (passwords) ever leaves the server.
INSPECT_FORMAT = SEP.join(
    [
        "{{.Id}}",
        '{{index .Config.Labels "com.docker.compose.project"}}',
        '{{index .Config.Labels "com.docker.compose.service"}}',
        '{{index .Config.Labels "com.docker.compose.oneoff"}}',
        "{{.State.Status}}",
        '{{with index .State "Health"}}{{.Status}}{{end}}',
        "{{.RestartCount}}",
        "{{.State.ExitCode}}",
        "{{.HostConfig.NetworkMode}}",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        "{{.Name}}",
        "{{.State.Pid}}",
        '{{range .Config.Env}}{{if ge (len .) 11}}{{if eq (slice . 0 11) "PGDATABASE="}}{{slice . 11}}{{end}}{{end}}'
        "{{end}}",
    ]
)
STATS_FORMAT = SEP.join(["{{.ID}}", "{{.CPUPerc}}", "{{.MemUsage}}"])

POLL_SCRIPT = r"""set -u
export LC_ALL=C
probe_timeout=$1 sql=$2 sql_timeout=$3 inspect_format=$4 stats_format=$5
shift 5
S=$'\x1f'
d=$(mktemp -d) || exit 1
trap 'rm -rf -- "$d"' EXIT

probe() {
    # probe PROJECT KIND ADDRESS PORT PATH: one line "project kind status micros body-ok"
    local project=$1 kind=$2 a=$3 port=$4 path=$5 t0 t1 code=refused body= line= ok=-
    t0=${EPOCHREALTIME/./}
    {
        if [ "$kind" = websocket ]; then
            printf 'GET %s HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nOrigin: http://%s:%s\r\n\r\n' "$path" "$a" "$port" "$WS_KEY" "$a" "$port" >&3
        else
            printf 'GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$path" "$a" "$port" >&3
        fi
        IFS=' ' read -r _ code _ <&3 || code=closed
        if [ "$kind" = http ]; then
            # The rest of the answer up to its end (Connection: close), builtins only; the last line has no newline.
            while IFS= read -r line <&3 || { body+=$line; false; }; do
                body+=$line
                [ "${#body}" -lt 65536 ] || break
            done
            case $body in *'"pass"'*) ok=pass ;; esac
        fi
    } 3<>"/dev/tcp/$a/$port" 2>/dev/null
    t1=${EPOCHREALTIME/./}
    printf '%s %s %s %s %s\n' "$project" "$kind" "${code:-closed}" "$((t1 - t0))" "$ok"
}
WS_KEY=cGFuZWwtd3MtcHJvYmUhIQ==  # base64 of 16 bytes, as RFC 6455 wants

cg_read() {
    # cg_read ID PID: "id cpu_ns memory_bytes" from the container's cgroup (v1 or v2, world-readable files; memory
    # without the inactive page cache, as docker stats counts it); fails when a file cannot be read
    local id=$1 ctrl path v2= cpath= mpath= cpu= usage= inactive=0 k v dir
    while IFS=: read -r _ ctrl path; do
        case $ctrl in
            '') v2=$path ;;
            *cpuacct*) cpath=$path ;;
            *memory*) mpath=$path ;;
        esac
    done <"/proc/$2/cgroup" || return 1
    if [ -n "$cpath" ] && [ -n "$mpath" ]; then
        dir=/sys/fs/cgroup/cpuacct$cpath
        [ -r "$dir/cpuacct.usage" ] || dir=/sys/fs/cgroup/cpu,cpuacct$cpath
        read -r cpu <"$dir/cpuacct.usage" || return 1
        dir=/sys/fs/cgroup/memory$mpath
        read -r usage <"$dir/memory.usage_in_bytes" || return 1
        while read -r k v; do [ "$k" = total_inactive_file ] && inactive=$v; done <"$dir/memory.stat"
    else
        dir=/sys/fs/cgroup$v2
        while read -r k v; do [ "$k" = usage_usec ] && cpu=$((v * 1000)); done <"$dir/cpu.stat" || return 1
        read -r usage <"$dir/memory.current" || return 1
        while read -r k v; do [ "$k" = inactive_file ] && inactive=$v; done <"$dir/memory.stat"
    fi
    [ -n "$cpu" ] && [ -n "$usage" ] || return 1
    echo "$id $cpu $((usage - inactive))"
}

: >"$d/inspect"
if ids=$(docker ps -aq --no-trunc --filter label=com.docker.compose.project 2>"$d/docker-err"); then
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086 # one word per id
        timeout -k 2 "$sql_timeout" docker inspect --format "$inspect_format" $ids >"$d/inspect" 2>/dev/null
    fi
    docker_ok=1
else
    docker_ok=0
fi

declare -A odoo_ip=() pgdb=() db_id=()
running=()
echo "at ${EPOCHREALTIME/./}" >"$d/cgroup"
while IFS=$S read -r id project service oneoff state health restarts code netmode ips name pid db; do
    [ -n "$id" ] || continue
    # CPU and memory from the cgroup files (no waiting); docker stats (two samples a second apart) for the rest.
    if [ "$state" = running ] && ! { [ "${pid:-0}" -gt 0 ] && cg_read "$id" "$pid" >>"$d/cgroup" 2>/dev/null; }; then
        running+=("$id")
    fi
    [ "$oneoff" = True ] && continue
    case $service in
        odoo)
            pgdb[$project]=$db
            if [ "$state" = running ]; then
                ip=${ips%% *}
                [ -z "$ip" ] && [ "$netmode" = host ] && ip=127.0.0.1
                odoo_ip[$project]=$ip
            fi ;;
        db) [ "$state" = running ] && db_id[$project]=$id ;;
    esac
done <"$d/inspect"

if [ "${#running[@]}" -gt 0 ]; then
    timeout -k 2 "$sql_timeout" docker stats --no-stream --no-trunc --format "$stats_format" "${running[@]}" \
        >"$d/stats" 2>/dev/null &
fi

# Probes are forks of this shell (no process to start each); a watchdog ends those still running after the probe
# timeout (its wait is bash's own read on a FIFO: nothing outlives the script), and their empty files say timeout.
mkfifo "$d/fifo" || exit 1
probes=()
for spec in "$@"; do
    project=${spec%%=*} ws=${spec#*=}
    a=${odoo_ip[$project]:-}
    if [ -n "$a" ]; then
        probe "$project" http "$a" 8069 /web/health >"$d/p.$project.http" 2>/dev/null &
        probes+=($!)
        case $ws in
            ws) probe "$project" websocket "$a" 8072 /websocket >"$d/p.$project.ws" 2>/dev/null & probes+=($!) ;;
            lp) probe "$project" longpolling "$a" 8072 /longpolling/poll >"$d/p.$project.ws" 2>/dev/null &
                probes+=($!) ;;
        esac
    fi
    if [ -n "$sql" ] && [ -n "${db_id[$project]:-}" ]; then
        {
            printf '%s\n' "$sql" | timeout -k 2 "$sql_timeout" docker exec -i "${db_id[$project]}" sh -c \
                'exec psql -X -q -U "${POSTGRES_USER:-postgres}" -d "${1:-${POSTGRES_DB:-${POSTGRES_USER:-postgres}}}"' \
                sh "${pgdb[$project]:-}"
            echo "@@rc $?"
        } >"$d/o.$project" 2>&1 &
    fi
done
if [ "${#probes[@]}" -gt 0 ]; then
    { read -rt "$probe_timeout" -u 9 _; kill "${probes[@]}"; } 9<>"$d/fifo" >/dev/null 2>&1 &
    watchdog=$!
    wait "${probes[@]}" 2>/dev/null
    kill "$watchdog" 2>/dev/null
fi
wait

echo "@@host"
cat /proc/loadavg
nproc
grep -E '^(MemTotal|MemAvailable):' /proc/meminfo
df -PB1 / "$HOME" 2>/dev/null | tail -n +2
if [ "$docker_ok" = 1 ]; then
    echo "@@containers"
    cat "$d/inspect"
    echo "@@stats"
    cat "$d/stats" 2>/dev/null
    echo "@@cgroup"
    cat "$d/cgroup"
else
    echo "@@docker-down"
    head -c 1000 "$d/docker-err"
    echo
fi
echo "@@probes"
for f in "$d"/p.*; do
    [ -e "$f" ] || continue
    if [ -s "$f" ]; then
        cat "$f"
    else
        name=${f##*/p.}
        kind=websocket
        [ "${name##*.}" = http ] && kind=http
        printf '%s %s timeout - -\n' "${name%.*}" "$kind"
    fi
done
for f in "$d"/o.*; do
    [ -e "$f" ] || continue
    echo "@@odoo ${f##*/o.}"
    head -c 200000 "$f"
    echo
done
echo "@@end"
"""


# -- what the script prints ------------------------------------------------------------------------------------------


@dataclass
class Container:
    """One compose container as ``docker inspect`` (and ``docker stats``) described it."""

    id: str
    project: str
    service: str
    oneoff: bool
    state: str
    health: str
    restarts: int
    exit_code: int | None
    addresses: list[str]
    name: str
    database: str
    pid: int | None = None
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    cpu_ns: int | None = None  # cumulative CPU time from the cgroup (CPU % is its growth since the last cycle)


@dataclass
class Probe:
    """One HTTP or websocket request from the server to an odoo container."""

    kind: str  # http, websocket, longpolling
    status: str  # the HTTP status code, or refused / closed / timeout
    micros: int | None
    body_ok: bool

    @property
    def ms(self) -> float | None:
        """The response time in milliseconds (None when the probe timed out)."""
        return None if self.micros is None else round(self.micros / 1000, 2)

    @property
    def code(self) -> int | None:
        """The HTTP status code, None when there was no HTTP answer."""
        return int(self.status) if self.status.isdigit() else None


@dataclass
class Disk:
    """One filesystem of ``df -P``."""

    mount: str
    total: int
    used: int
    available: int

    @property
    def percent(self) -> float:
        """Used share as ``df`` computes its capacity column (reserved blocks excluded)."""
        usable = self.used + self.available
        return 100.0 * self.used / usable if usable else 0.0


@dataclass
class HostFacts:
    """The server's load, memory and disks."""

    load1: float | None = None
    load5: float | None = None
    cpus: int | None = None
    memory_total: int | None = None
    memory_available: int | None = None
    disks: list[Disk] = field(default_factory=list)


@dataclass
class PollOutput:
    """Everything one cycle's script printed, parsed."""

    host: HostFacts = field(default_factory=HostFacts)
    containers: list[Container] = field(default_factory=list)
    probes: dict[tuple[str, str], Probe] = field(default_factory=dict)
    odoo: dict[str, str] = field(default_factory=dict)
    docker_error: str | None = None
    complete: bool = False
    sampled_us: int | None = None  # the server's clock when the cgroup files were read (microseconds)


_SIZE_RE = re.compile(r"^\s*([0-9.]+)\s*([KMGTP]?i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(text: str) -> int | None:
    """``12.5MiB`` / ``1.2GB`` / ``0B`` (docker stats) in bytes; None when unreadable."""
    match = _SIZE_RE.match(text)
    if not match:
        return None
    unit = (match.group(2) or "B").lower()
    try:
        return int(float(match.group(1)) * _SIZE_UNITS.get(unit, 1))
    except ValueError:
        return None


def _int(text: str) -> int | None:
    return int(text) if text.strip().lstrip("-").isdigit() else None


def _parse_host(lines: list[str], host: HostFacts) -> None:
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 5 and "/" in parts[3] and host.load1 is None:
            try:
                host.load1, host.load5 = float(parts[0]), float(parts[1])
            except ValueError:
                pass
        elif len(parts) == 1 and parts[0].isdigit() and host.cpus is None:
            host.cpus = int(parts[0])
        elif parts[0] == "MemTotal:" and len(parts) >= 2 and parts[1].isdigit():
            host.memory_total = int(parts[1]) * 1024
        elif parts[0] == "MemAvailable:" and len(parts) >= 2 and parts[1].isdigit():
            host.memory_available = int(parts[1]) * 1024
        elif len(parts) >= 6 and parts[1].isdigit() and parts[2].isdigit() and parts[3].isdigit():
            mount = " ".join(parts[5:])
            if all(disk.mount != mount for disk in host.disks):
                host.disks.append(Disk(mount, int(parts[1]), int(parts[2]), int(parts[3])))


def _parse_container(line: str) -> Container | None:
    parts = line.split(SEP)
    if len(parts) != 13 or not parts[0]:
        return None
    cid, project, service, oneoff, state, health, restarts, code, _netmode, ips, name, pid, database = parts
    return Container(
        id=cid,
        project=project,
        service=service,
        oneoff=oneoff.lower() == "true",
        state=state,
        health=health,
        restarts=_int(restarts) or 0,
        exit_code=_int(code),
        addresses=ips.split(),
        name=name.lstrip("/"),
        database=database,
        pid=_int(pid),
    )


def _parse_probe(line: str) -> tuple[str, Probe] | None:
    parts = line.split()
    if len(parts) != 5 or parts[1] not in ("http", "websocket", "longpolling"):
        return None
    project, kind, status, micros, ok = parts
    return project, Probe(kind=kind, status=status, micros=_int(micros), body_ok=ok == "pass")


def parse_poll_output(text: str) -> PollOutput:
    """Parse the sections the poll script prints (pure: no database, no network)."""
    output = PollOutput()
    section, current_odoo = "", ""
    host_lines: list[str] = []
    stats: dict[str, tuple[float | None, int | None]] = {}
    cgroups: dict[str, tuple[int, int]] = {}
    odoo_lines: dict[str, list[str]] = {}
    docker_lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("@@") and not line.startswith("@@rc "):
            section, _, argument = line[2:].partition(" ")
            if section == "odoo":
                current_odoo = argument.strip()
                odoo_lines[current_odoo] = []
            elif section == "end":
                output.complete = True
            elif section == "docker-down":
                output.docker_error = ""
            continue
        if section == "host":
            host_lines.append(line)
        elif section == "containers":
            container = _parse_container(line)
            if container is not None:
                output.containers.append(container)
        elif section == "stats":
            parts = line.split(SEP)
            if len(parts) == 3:
                cpu = parts[1].strip().rstrip("%")
                try:
                    cpu_value: float | None = float(cpu)
                except ValueError:
                    cpu_value = None
                stats[parts[0].strip()] = (cpu_value, parse_size(parts[2].split("/")[0]))
        elif section == "cgroup":
            parts = line.split()
            if len(parts) == 2 and parts[0] == "at" and parts[1].isdigit():
                output.sampled_us = int(parts[1])
            elif len(parts) == 3 and parts[1].isdigit() and parts[2].lstrip("-").isdigit():
                cgroups[parts[0]] = (int(parts[1]), max(0, int(parts[2])))
        elif section == "probes":
            parsed = _parse_probe(line)
            if parsed is not None:
                project, probe = parsed
                output.probes[(project, "http" if probe.kind == "http" else "websocket")] = probe
        elif section == "odoo":
            odoo_lines[current_odoo].append(line)
        elif section == "docker-down":
            docker_lines.append(line)
    _parse_host(host_lines, output.host)
    for container in output.containers:
        if container.id in cgroups:
            container.cpu_ns, container.memory_bytes = cgroups[container.id]
            continue
        for sid, (cpu_value, memory) in stats.items():
            if sid and (container.id.startswith(sid) or sid.startswith(container.id)):
                container.cpu_percent, container.memory_bytes = cpu_value, memory
                break
    output.odoo = {project: "\n".join(lines) for project, lines in odoo_lines.items()}
    if output.docker_error is not None:
        output.docker_error = " ".join(line.strip() for line in docker_lines if line.strip())[:500] or "no answer"
    return output


# -- what it means ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Watched:
    """What the cycle needs to know about one environment."""

    id: int
    label: str
    compose_project: str
    odoo_major: int
    deployed: bool
    workers: int
    previous_restarts: int | None = None
    #: (container id, cumulative CPU ns, when sampled in µs) of the last cycle, for CPU % from the cgroup files.
    previous_cpu: tuple[tuple[str, int, int], ...] = ()

    @property
    def websocket_mode(self) -> str:
        """``ws`` (Odoo 16+: /websocket) or ``lp`` (/longpolling/poll)."""
        return "ws" if self.odoo_major >= 16 else "lp"


@dataclass
class Assessment:
    """What one cycle says about one environment: its checks and the health fields they give."""

    checks: list[CheckResult]
    http_ok: bool | None = None
    http_ms: float | None = None
    websocket_ok: bool | None = None
    websocket_ms: float | None = None
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    restarts: int | None = None
    containers: list[dict[str, Any]] = field(default_factory=list)


def _major(version: str) -> int:
    head = version.split(".")[0]
    return int(head) if head.isdigit() else 0


def _availability(watched: Watched, own: list[Container], output: PollOutput, server_name: str) -> CheckResult:
    if output.docker_error is not None:
        return CheckResult(
            checks.AVAILABILITY,
            CheckStatus.FAILING,
            f"Docker does not answer on {server_name} ({output.docker_error}): no container can run. Start the "
            "Docker daemon on the server.",
        )
    if not own:
        if not watched.deployed:
            return unknown(checks.AVAILABILITY, "Not deployed yet: no container of this environment on the server.")
        return CheckResult(
            checks.AVAILABILITY,
            CheckStatus.FAILING,
            f"No container of compose project {watched.compose_project} exists on {server_name}: deploy the "
            "environment again.",
        )
    stopped = [c for c in own if c.state != "running"]
    essential = [c for c in stopped if c.service in ("odoo", "db")]
    if essential:
        parts = [
            f"the {c.service} container is {c.state}" + (f" (exit code {c.exit_code})" if c.exit_code else "")
            for c in essential
        ]
        return CheckResult(
            checks.AVAILABILITY,
            CheckStatus.FAILING,
            f"{'; '.join(parts).capitalize()}: start the environment again and read the container's logs.",
        )
    odoo = [c for c in own if c.service == "odoo"]
    if not odoo:
        return CheckResult(checks.AVAILABILITY, CheckStatus.FAILING, "The environment has no odoo container.")
    probe = output.probes.get((watched.compose_project, "http"))
    if probe is None:
        return CheckResult(
            checks.AVAILABILITY, CheckStatus.FAILING, "The odoo container has no network address to reach it on."
        )
    if probe.status == "timeout":
        message = f"Odoo's /web/health did not answer within {settings.MONITOR_PROBE_TIMEOUT:g} s (port 8069)."
        return CheckResult(checks.AVAILABILITY, CheckStatus.FAILING, message, None, {"probe": probe.status})
    if probe.code is None:
        message = f"Odoo refused the connection on port 8069 ({probe.status}): it is not serving HTTP."
        return CheckResult(checks.AVAILABILITY, CheckStatus.FAILING, message, None, {"probe": probe.status})
    if probe.code != 200 or not probe.body_ok:
        message = f'Odoo\'s /web/health answered HTTP {probe.code} without "pass" in {probe.ms:g} ms.'
        return CheckResult(checks.AVAILABILITY, CheckStatus.FAILING, message, probe.ms, {"probe": probe.status})
    running = len(own) - len(stopped)
    text = f"Odoo answers /web/health in {probe.ms:g} ms; {running} of {len(own)} containers running"
    unhealthy = [c.name for c in own if c.health == "unhealthy"]
    problems = [f"{c.name} is {c.state}" for c in stopped]
    if unhealthy:
        problems.append(f"Docker reports {', '.join(unhealthy)} unhealthy")
    restarts = sum(c.restarts for c in own)
    if watched.previous_restarts is not None and restarts > watched.previous_restarts:
        problems.append(f"containers restarted {restarts - watched.previous_restarts} times since the last cycle")
    if problems:
        return CheckResult(checks.AVAILABILITY, CheckStatus.WARNING, f"{text}, but {'; '.join(problems)}.", probe.ms)
    return CheckResult(checks.AVAILABILITY, CheckStatus.OK, text + ".", probe.ms)


def _websocket(watched: Watched, availability: CheckResult, output: PollOutput) -> CheckResult:
    path = "/websocket" if watched.websocket_mode == "ws" else "/longpolling/poll"
    probe = output.probes.get((watched.compose_project, "websocket"))
    if probe is None:
        return unknown(checks.WEBSOCKET, f"Not probed: Odoo is not running ({availability.message})")
    if availability.status == CheckStatus.FAILING:
        # One outage, one incident: 8072 is judged on its own only while 8069 answers.
        return unknown(checks.WEBSOCKET, f"Not judged while Odoo is down ({availability.message})")
    details = {"probe": probe.status, "path": path}
    if watched.websocket_mode == "ws":
        ok = probe.code == 101
        expected = "a websocket handshake (101)"
    else:
        ok = probe.code is not None and probe.code < 500
        expected = "an HTTP answer"
    if ok:
        return CheckResult(
            checks.WEBSOCKET, CheckStatus.OK, f"Port 8072 answers {path} in {probe.ms:g} ms.", probe.ms, details
        )
    if probe.status == "timeout":
        got = f"no answer within {settings.MONITOR_PROBE_TIMEOUT:g} s"
    elif probe.code is None:
        got = f"the connection was {probe.status}"
    else:
        got = f"HTTP {probe.code}"
    message = (
        f"Port 8072 fails ({got} to {path}, expected {expected}) while 8069 answers: live updates, chat and "
        "notifications do not reach the browsers. Check Odoo's gevent worker (started with --workers > 0) and the "
        "proxy route to 8072."
    )
    return CheckResult(checks.WEBSOCKET, CheckStatus.FAILING, message, probe.ms, details)


def _server_disk(host: HostFacts, server_name: str) -> CheckResult:
    if not host.disks:
        return unknown(checks.SERVER_DISK, "df did not answer.")
    fullest = max(host.disks, key=lambda disk: disk.percent)
    free_gib = fullest.available / 1024**3
    text = f"{fullest.mount} on {server_name} is {fullest.percent:.0f} % full ({free_gib:.1f} GiB free)"
    details = {
        "disks": [{"mount": d.mount, "percent": round(d.percent, 1), "available": d.available} for d in host.disks]
    }
    if fullest.percent >= settings.MONITOR_DISK_PERCENT:
        message = (
            f"{text}, at or above {settings.MONITOR_DISK_PERCENT} %: free space (old images, dumps) before it fills."
        )
        return CheckResult(checks.SERVER_DISK, CheckStatus.FAILING, message, fullest.percent, details)
    return CheckResult(checks.SERVER_DISK, CheckStatus.OK, text + ".", fullest.percent, details)


def _previous_cpu(health: EnvironmentHealth | None) -> tuple[tuple[str, int, int], ...]:
    found = []
    for entry in (health.containers or []) if health is not None else []:
        cid, cpu_ns, at = entry.get("id"), entry.get("cpu_ns"), entry.get("sampled_us")
        if isinstance(cid, str) and isinstance(cpu_ns, int) and isinstance(at, int):
            found.append((cid, cpu_ns, at))
    return tuple(found)


def _cpu_from_cgroups(watched: Watched, own: list[Container], sampled_us: int | None) -> None:
    """CPU % of containers read from their cgroup: CPU time used since the last cycle ÷ the time between (as
    docker stats: 100 % = one CPU)."""
    previous = {cid: (cpu_ns, at) for cid, cpu_ns, at in watched.previous_cpu}
    for container in own:
        before = previous.get(container.id[:12])
        if container.cpu_ns is None or before is None or sampled_us is None:
            continue
        elapsed_ns = (sampled_us - before[1]) * 1000
        used = container.cpu_ns - before[0]
        if elapsed_ns > 0 and used >= 0:
            container.cpu_percent = round(100.0 * used / elapsed_ns, 2)


def assess(watched: Watched, output: PollOutput, server_name: str) -> Assessment:
    """The every-cycle checks of one environment from the script's output (pure)."""
    own = [c for c in output.containers if c.project == watched.compose_project and not c.oneoff]
    _cpu_from_cgroups(watched, own, output.sampled_us)
    availability = _availability(watched, own, output, server_name)
    websocket = _websocket(watched, availability, output)
    disk = _server_disk(output.host, server_name)
    http = output.probes.get((watched.compose_project, "http"))
    ws = output.probes.get((watched.compose_project, "websocket"))
    cpus = [c.cpu_percent for c in own if c.cpu_percent is not None]
    memories = [c.memory_bytes for c in own if c.memory_bytes is not None]
    return Assessment(
        checks=[availability, websocket, disk],
        http_ok=None
        if availability.status == CheckStatus.UNKNOWN
        else bool(http and http.code == 200 and http.body_ok),
        http_ms=http.ms if http else None,
        websocket_ok=None if websocket.status == CheckStatus.UNKNOWN else websocket.status == CheckStatus.OK,
        websocket_ms=ws.ms if ws else None,
        cpu_percent=round(sum(cpus), 2) if cpus else None,
        memory_bytes=sum(memories) if memories else None,
        restarts=sum(c.restarts for c in own) if own else None,
        containers=[
            {
                "service": c.service,
                "name": c.name,
                "state": c.state,
                "health": c.health,
                "restarts": c.restarts,
                "cpu_percent": c.cpu_percent,
                "memory_bytes": c.memory_bytes,
                "id": c.id[:12],
                "cpu_ns": c.cpu_ns,
                "sampled_us": output.sampled_us if c.cpu_ns is not None else None,
            }
            for c in sorted(own, key=lambda c: (c.service, c.name))
        ],
    )


def state_of(results: Iterable[CheckResult], *, maintenance: bool = False) -> tuple[str, str]:
    """The environment's state and its message from its newest check results (COMMON's rules): maintenance during
    a window; down when availability fails; unknown when availability is unknown; degraded when another check
    fails; else up (warnings are named in the message)."""
    by_name = {r.name: r for r in results}
    availability = by_name.get(checks.AVAILABILITY)
    failing = [r for r in by_name.values() if r.status == CheckStatus.FAILING and r.name != checks.AVAILABILITY]
    warnings = [r for r in by_name.values() if r.status == CheckStatus.WARNING]
    if availability is None or availability.status == CheckStatus.UNKNOWN:
        state, message = HealthState.UNKNOWN, availability.message if availability else "Never polled."
    elif availability.status == CheckStatus.FAILING:
        state, message = HealthState.DOWN, availability.message
    elif failing:
        state, message = HealthState.DEGRADED, " ".join(r.message for r in failing)
    else:
        state = HealthState.UP
        message = " ".join([availability.message, *(r.message for r in warnings if r is not availability)])
    if maintenance:
        return HealthState.MAINTENANCE, f"Maintenance window. {message}"
    return state, message


# -- the cycle -------------------------------------------------------------------------------------------------------


@dataclass
class CycleReport:
    """How one server's cycle went."""

    server_id: int
    reachable: bool | None = None
    seconds: float = 0.0
    error: str = ""
    odoo_checks: bool = False
    states: dict[int, str] = field(default_factory=dict)
    changed: list[int] = field(default_factory=list)
    skipped: bool = False


def servers_to_poll() -> list[int]:
    """Servers whose host key a person confirmed and that have environments (the fan-out's list)."""
    return list(
        Server.objects.filter(host_key_confirmed_at__isnull=False, environments__isnull=False)
        .exclude(host_key_base64="")
        .distinct()
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def _lock_name(server_id: int) -> str:
    return f"panel:monitoring:poll-lock:{server_id}"


def _try_lock(server_id: int) -> Any:
    """The server's cycle lock, or None when another cycle holds it. On PostgreSQL a session advisory lock (it ends
    with the worker's connection); elsewhere (SQLite, one machine) a Redis lock that lapses after twice a cycle's
    bound should its worker die."""
    if connection.vendor != "postgresql":
        lock = logs.redis_client().lock(_lock_name(server_id), timeout=2 * settings.MONITOR_SERVER_TIMEOUT + 30)
        return lock if lock.acquire(blocking=False) else None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [ADVISORY_LOCK_CLASS, server_id])
        return server_id if cursor.fetchone()[0] else None


def _unlock(lock: Any) -> None:
    if connection.vendor != "postgresql":
        with contextlib.suppress(redis.exceptions.LockError):  # it lapsed; whoever holds it now keeps it
            lock.release()
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [ADVISORY_LOCK_CLASS, lock])


def poll_argv(watched: Iterable[Watched], *, with_odoo: bool) -> list[str]:
    """The cycle's one remote command: ``bash -c SCRIPT`` with the thresholds, formats and ``project=mode``
    arguments (compose project names are checked against the slug pattern; others are left out)."""
    specs = [f"{w.compose_project}={w.websocket_mode}" for w in watched if SLUG_RE.fullmatch(w.compose_project)]
    sql = odoo_checks.odoo_sql() if with_odoo else ""
    probe_timeout = f"{float(settings.MONITOR_PROBE_TIMEOUT):g}"
    sql_timeout = f"{float(settings.MONITOR_SQL_TIMEOUT):g}"
    return [
        "bash",
        "-c",
        POLL_SCRIPT,
        "panel-poll",
        probe_timeout,
        sql,
        sql_timeout,
        INSPECT_FORMAT,
        STATS_FORMAT,
        *specs,
    ]


def poll_server(server_id: int, *, with_odoo: bool | None = None, now: datetime | None = None) -> CycleReport:
    """Run one poll cycle of a server (see the module docstring) and record it: ``ServerHealth`` and a
    ``ServerSample``, each environment's ``EnvironmentHealth`` and ``Sample``, one ``observe`` per check, then
    ``live.environments_changed``. ``with_odoo`` forces the Odoo checks on or off (default: every
    ``MONITOR_ODOO_CHECK_EVERY`` cycles, the first one included). A cycle of the same server that is still running
    elsewhere makes this one a no-op (``skipped``)."""
    report = CycleReport(server_id=server_id)
    lock = _try_lock(server_id)
    if lock is None:
        report.skipped = True
        return report
    try:
        _poll_locked(server_id, report, with_odoo, now)
    finally:
        _unlock(lock)
    return report


def _poll_locked(server_id: int, report: CycleReport, with_odoo: bool | None, now: datetime | None) -> None:
    server = Server.objects.filter(pk=server_id).first()
    if server is None:
        report.skipped = True
        return
    health, _ = ServerHealth.objects.get_or_create(server=server)
    environments = list(Environment.objects.filter(server=server).select_related("project").order_by("pk"))
    env_ids = [e.pk for e in environments]
    previous = {h.environment_id: h for h in EnvironmentHealth.objects.filter(environment_id__in=env_ids)}
    watched = [
        Watched(
            id=e.pk,
            label=str(e),
            compose_project=e.compose_project,
            odoo_major=_major(e.project.odoo_version),
            deployed=e.current_deployment_id is not None,
            workers=e.workers,
            previous_restarts=previous[e.pk].restarts if e.pk in previous else None,
            previous_cpu=_previous_cpu(previous.get(e.pk)),
        )
        for e in environments
    ]
    report.odoo_checks = (
        bool(with_odoo) if with_odoo is not None else health.cycles % settings.MONITOR_ODOO_CHECK_EVERY == 0
    )
    started = time.monotonic()
    output: PollOutput | None = None
    try:
        target = Target.for_server(server)
        result = run_capture(
            target, poll_argv(watched, with_odoo=report.odoo_checks), timeout=settings.MONITOR_SERVER_TIMEOUT
        )
        output = parse_poll_output(result.stdout)
        if not output.complete:
            output = None
            report.error = f"The poll script ended early (exit code {result.exit_code}): {result.stderr.strip()[-300:]}"
    except RemoteError as exc:
        report.error = str(exc)
    report.seconds = round(time.monotonic() - started, 3)
    report.reachable = output is not None
    now = now or timezone.now()
    _record(server, health, environments, watched, previous, output, report, now)


def _record(
    server: Server,
    health: ServerHealth,
    environments: list[Environment],
    watched: list[Watched],
    previous: dict[int, EnvironmentHealth],
    output: PollOutput | None,
    report: CycleReport,
    now: datetime,
) -> None:
    from monitoring import incidents

    env_ids = [e.pk for e in environments]
    stored = {
        (env_id, name): (status, message, details)
        for env_id, name, status, message, details in CheckState.objects.filter(environment_id__in=env_ids).values_list(
            "environment_id", "name", "status", "message", "details"
        )
    }
    maintenance = _in_maintenance(environments, now)
    backup_results = odoo_checks.backup_age(env_ids, now) if report.odoo_checks and env_ids else {}
    rows: list[EnvironmentHealth] = []
    samples: list[Sample] = []
    observed: list[tuple[Environment, CheckResult]] = []
    for environment, item in zip(environments, watched, strict=True):
        if output is None:
            message = f"{server.name} could not be polled: {report.error}"
            results = [unknown(name, message) for name in checks.EVERY_CYCLE]
            if report.odoo_checks:
                results += [unknown(name, message) for name in checks.ODOO]
            assessment = Assessment(checks=results)
        else:
            assessment = assess(item, output, server.name)
            if report.odoo_checks:
                assessment.checks += _odoo_results(item, output, stored, backup_results.get(item.id), now)
        on_purpose = stopped_on_purpose(environment)
        if not on_purpose:  # stopped or destroyed by an operator: no incident opens, nothing is alerted
            observed += [(environment, result) for result in assessment.checks]
        # The state uses this cycle's results and, for checks not run this cycle, their stored status.
        fresh = {r.name for r in assessment.checks}
        carried = [
            CheckResult(name, CheckStatus(status), message)
            for (env_id, name), (status, message, _details) in stored.items()
            if env_id == item.id and name not in fresh and output is not None
        ]
        state, message = state_of(assessment.checks + carried, maintenance=item.id in maintenance)
        if on_purpose:
            state, message = HealthState.MAINTENANCE, f"{on_purpose} {message}"
        before = previous.get(item.id)
        since = before.since if before is not None and before.state == state else now
        row = EnvironmentHealth(
            environment_id=item.id,
            state=state,
            since=since,
            message=message[:2000],
            polled_at=now,
            http_ok=assessment.http_ok,
            http_ms=assessment.http_ms,
            websocket_ok=assessment.websocket_ok,
            websocket_ms=assessment.websocket_ms,
            cpu_percent=assessment.cpu_percent,
            memory_bytes=assessment.memory_bytes,
            restarts=assessment.restarts,
            containers=assessment.containers,
            database_bytes=before.database_bytes if before else None,
            filestore_bytes=before.filestore_bytes if before else None,
            odoo_checked_at=before.odoo_checked_at if before else None,
        )
        if report.odoo_checks and output is not None:
            by_name = {r.name: r for r in assessment.checks}
            database, filestore = by_name.get(checks.DATABASE_SIZE), by_name.get(checks.FILESTORE_SIZE)
            if database is not None and database.value is not None:
                row.database_bytes = int(database.value)
            if filestore is not None and filestore.value is not None:
                row.filestore_bytes = int(filestore.value)
            row.odoo_checked_at = now
        if output is None and before is not None:
            # Unknown is not "nothing": the last known containers and sizes stay visible.
            row.containers = before.containers
        rows.append(row)
        samples.append(
            Sample(
                environment_id=item.id,
                at=now,
                state=state,
                http_ms=assessment.http_ms,
                websocket_ms=assessment.websocket_ms,
                cpu_percent=assessment.cpu_percent,
                memory_bytes=assessment.memory_bytes,
            )
        )
        report.states[item.id] = state
        if before is None or _visible(before) != _visible(row):
            report.changed.append(item.id)
    EnvironmentHealth.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["environment"],
        update_fields=[
            "state",
            "since",
            "message",
            "polled_at",
            "http_ok",
            "http_ms",
            "websocket_ok",
            "websocket_ms",
            "cpu_percent",
            "memory_bytes",
            "restarts",
            "containers",
            "database_bytes",
            "filestore_bytes",
            "odoo_checked_at",
        ],
    )
    Sample.objects.bulk_create(samples)
    _record_server(server, health, output, report, now)
    for environment, result in observed:
        try:
            incidents.observe(
                environment,
                result.name,
                result.status,
                result.message,
                value=result.value,
                details=result.details or None,
                at=now,
            )
        except Exception:  # a bug in one observer must not lose the other environments' results
            logger.exception("observe(%s, %s) failed", environment.pk, result.name)
    if report.changed:
        try:
            live.environments_changed(report.changed)
        except Exception:
            logger.exception("live.environments_changed failed for server %s", server.pk)


def _odoo_results(
    item: Watched,
    output: PollOutput,
    stored: dict[tuple[int, str], tuple[str, str, dict[str, Any]]],
    backup: CheckResult | None,
    now: datetime,
) -> list[CheckResult]:
    raw = output.odoo.get(item.compose_project)
    if raw is None:
        own = [c for c in output.containers if c.project == item.compose_project and c.service == "db" and not c.oneoff]
        reason = "the environment has no db container" if not own else f"the db container is {own[0].state}"
        results = [unknown(name, f"Not checked: {reason}.") for name in checks.ODOO if name != checks.BACKUP_AGE]
    else:
        facts = odoo_checks.parse_odoo_output(raw)
        previous = {name: details for (env_id, name), (_s, _m, details) in stored.items() if env_id == item.id}
        results = odoo_checks.evaluate(
            odoo_checks.OdooEnvironment(label=item.label, odoo_major=item.odoo_major, workers=item.workers),
            facts,
            previous,
            now,
        )
    results.append(backup or unknown(checks.BACKUP_AGE, "No backup schedule."))
    return results


def _visible(row: EnvironmentHealth) -> tuple[Any, ...]:
    """What the dashboard shows of an environment's health besides metrics (a change is pushed to the pages)."""
    containers = tuple((c.get("name"), c.get("state"), c.get("health")) for c in row.containers or [])
    return (row.state, row.message, row.http_ok, row.websocket_ok, row.restarts, containers)


def stopped_on_purpose(environment: Environment) -> str:
    """Why the environment is not expected to serve (an operator stopped or destroyed it: ``deployments.lifecycle``
    recorded what its job found), or "" when it is. Such an environment counts as maintenance: left out of uptime,
    no incident, no alert."""
    facts = environment.lifecycle_facts or {}
    if environment.lifecycle == Lifecycle.STOPPED:
        stopped = ", ".join(facts.get("stopped") or []) or "its containers"
        return f"Stopped on purpose ({stopped}) by {facts.get('job_label', 'a Stop job')}."
    if environment.lifecycle == Lifecycle.DESTROYED:
        return f"Destroyed by {facts.get('job_label', 'a Destroy job')}."
    return ""


def _in_maintenance(environments: list[Environment], now: datetime) -> set[int]:
    """Environments covered by a maintenance window at ``now`` (one query)."""
    org_ids = {e.project.organization_id for e in environments}
    windows = MaintenanceWindow.objects.filter(organization_id__in=org_ids, starts_at__lte=now, ends_at__gt=now).filter(
        Q(environment__isnull=True) | Q(environment_id__in=[e.pk for e in environments])
    )
    whole = set()
    single = set()
    for org_id, env_id in windows.values_list("organization_id", "environment_id"):
        (single.add(env_id) if env_id else whole.add(org_id))
    return {e.pk for e in environments if e.pk in single or e.project.organization_id in whole}


def _record_server(
    server: Server, health: ServerHealth, output: PollOutput | None, report: CycleReport, now: datetime
) -> None:
    fields: dict[str, Any] = {
        "reachable": output is not None,
        "error": report.error[:2000],
        "polled_at": now,
        "cycle_seconds": report.seconds,
        "cycles": health.cycles + 1,
    }
    sample = ServerSample(server=server, at=now, reachable=output is not None, cycle_seconds=report.seconds)
    if output is not None:
        host = output.host
        used = host.memory_total - host.memory_available if host.memory_total and host.memory_available else None
        root = next((d for d in host.disks if d.mount == "/"), host.disks[0] if host.disks else None)
        fields.update(
            load1=host.load1,
            load5=host.load5,
            cpus=host.cpus,
            memory_used_bytes=used,
            memory_total_bytes=host.memory_total,
            disk_used_bytes=root.used if root else None,
            disk_total_bytes=(root.used + root.available) if root else None,
        )
        if output.docker_error is not None:
            fields["error"] = f"Docker does not answer: {output.docker_error}"[:2000]
        sample.load1, sample.memory_used_bytes = host.load1, used
        sample.disk_used_bytes = root.used if root else None
    ServerHealth.objects.filter(pk=health.pk).update(**fields)
    ServerSample.objects.bulk_create([sample])
