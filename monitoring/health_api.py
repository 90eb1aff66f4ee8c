"""API of an environment's health: fields on ``/api/v1/environments/`` and two routes of each environment.

- ``health_state`` and ``uptime`` (``{"24h", "7d", "30d", "365d"}``: 0..1, null without data) on every
  environment, customers included; ``health_message`` for staff. Batched: a page of environments costs the same
  few queries as one.
- ``GET /environments/{id}/health/``: the current state, since when and the uptimes (everyone who may see the
  environment); staff also get the message, response times, resources, containers, the named checks with their
  messages and the open incidents.
- ``GET /environments/{id}/health-history/?range=24h|7d|30d|365d`` (default 24h): the charts' series, oldest first,
  as parallel arrays (``t`` in Unix seconds): raw samples over 24 h, hourly rollups over 7 and 30 days, daily ones
  over 365 days; and the deploy, rollback, restore, copy and backup jobs of that range as ``events``. Customers
  get ``t``, ``uptime`` and the events; staff also the response times, CPU and memory. Any other ``range`` is 400.

Environments outside ``for_user(..., view)`` answer 404, like unknown ids.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Avg, Count, Max, Q, Sum
from django.db.models.functions import Coalesce, TruncDay, TruncHour
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from monitoring import history
from monitoring.live import state_label
from monitoring.models import CheckState, EnvironmentHealth, HealthState, Incident, Rollup, RollupPeriod, Sample
from monitoring.services import health_message, health_state, is_stale
from panel.accounts.api.serializers import DetailSerializer
from panel.accounts.choices import Action
from panel.accounts.scoping import can, for_user
from panel.inventory.models import Environment
from panel.jobs.choices import JobKind
from panel.jobs.models import Job

RANGES = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30), "365d": timedelta(days=365)}
EVENT_KINDS = (JobKind.DEPLOY, JobKind.ROLLBACK, JobKind.RESTORE, JobKind.COPY, JobKind.BACKUP)
# A chart has a few hundred pixels: more points than this are thinned (evenly) before they are sent.
MAX_POINTS = 1500
MAX_EVENTS = 500
UPTIME_SCHEMA = {
    "type": "object",
    "properties": {
        window: {"type": "number", "format": "double", "nullable": True, "minimum": 0, "maximum": 1}
        for window in ("24h", "7d", "30d", "365d")
    },
    "required": ["24h", "7d", "30d", "365d"],
}
UPTIME_HELP = "Uptime per window (24h, 7d, 30d, 365d): 0..1, null while nothing was measured."


# Uptime per window. The keys start with digits, so the class is built with ``type``, not a class statement.
UptimeSerializer = type(
    "UptimeSerializer",
    (serializers.Serializer,),
    {
        "__doc__": "Uptime per window: 0..1, null while nothing was measured.",
        "__module__": __name__,
        **{
            window: serializers.FloatField(allow_null=True, read_only=True, min_value=0, max_value=1)
            for window in history.WINDOWS
        },
    },
)


class CheckSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """One named check's newest result."""

    class Meta:
        model = CheckState
        fields = ["name", "status", "message", "value", "checked_at", "changed_at"]
        read_only_fields = fields


class OpenIncidentSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """An incident still open."""

    class Meta:
        model = Incident
        fields = ["id", "check_name", "title", "severity", "opened_at", "suppressed"]
        read_only_fields = fields


class HealthSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """An environment's current health. Customers get ``state``, ``state_label``, ``since`` and ``uptime``."""

    customer_fields = ("state", "state_label", "since", "uptime")

    state = serializers.ChoiceField(choices=HealthState.choices, read_only=True)
    state_label = serializers.CharField(read_only=True)
    since = serializers.DateTimeField(allow_null=True, read_only=True)
    uptime = UptimeSerializer(read_only=True, help_text=UPTIME_HELP)
    message = serializers.CharField(read_only=True)
    polled_at = serializers.DateTimeField(allow_null=True, read_only=True)
    http_ms = serializers.FloatField(allow_null=True, read_only=True, help_text="Odoo's /web/health on 8069.")
    websocket_ms = serializers.FloatField(allow_null=True, read_only=True, help_text="The 8072 handshake.")
    cpu_percent = serializers.FloatField(allow_null=True, read_only=True)
    memory_bytes = serializers.IntegerField(allow_null=True, read_only=True)
    restarts = serializers.IntegerField(allow_null=True, read_only=True)
    containers = serializers.ListField(child=serializers.DictField(), read_only=True)
    checks = CheckSerializer(many=True, read_only=True)
    open_incidents = OpenIncidentSerializer(many=True, read_only=True)


class HealthEventSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A job on the time axis."""

    t = serializers.IntegerField(read_only=True, help_text="Unix seconds (the job's start).")
    kind = serializers.ChoiceField(choices=JobKind.choices, read_only=True)
    status = serializers.CharField(read_only=True)
    title = serializers.CharField(read_only=True)
    job = serializers.IntegerField(read_only=True)


class HealthHistorySerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Series for the charts, as parallel arrays (oldest first). Customers get ``t``, ``uptime`` and ``events``."""

    customer_fields = ("range", "start", "end", "resolution", "t", "uptime", "events")

    range = serializers.ChoiceField(choices=list(RANGES), read_only=True)
    start = serializers.IntegerField(read_only=True, help_text="Unix seconds.")
    end = serializers.IntegerField(read_only=True, help_text="Unix seconds.")
    resolution = serializers.ChoiceField(choices=["sample", "hour", "day"], read_only=True)
    t = serializers.ListField(child=serializers.IntegerField(), read_only=True)
    uptime = serializers.ListField(
        child=serializers.FloatField(allow_null=True), read_only=True, help_text="0..1 per point; null: no data."
    )
    http_ms = serializers.ListField(child=serializers.FloatField(allow_null=True), read_only=True)
    cpu_percent = serializers.ListField(child=serializers.FloatField(allow_null=True), read_only=True)
    memory_bytes = serializers.ListField(child=serializers.FloatField(allow_null=True), read_only=True)
    events = HealthEventSerializer(many=True, read_only=True)


class HistoryQuerySerializer(serializers.Serializer):  # type: ignore[type-arg]
    range = serializers.ChoiceField(choices=list(RANGES), default="24h", required=False)


def current_health(environment: Environment, *, details: bool) -> dict[str, Any]:
    """An environment's current health (``HealthSerializer``'s shape); the checks and open incidents for staff."""
    health = EnvironmentHealth.objects.filter(environment=environment).first()
    state = health_state(health)
    data: dict[str, Any] = {
        "state": state,
        "state_label": state_label(state),
        "since": health.since if health is not None else None,
        "uptime": history.uptime([environment.pk]).get(environment.pk, dict.fromkeys(history.WINDOWS)),
    }
    if not details:
        return data
    data.update(
        {
            "message": health_message(health) if health else "",
            "polled_at": health.polled_at if health else None,
            "http_ms": health.http_ms if health else None,
            "websocket_ms": health.websocket_ms if health else None,
            "cpu_percent": health.cpu_percent if health else None,
            "memory_bytes": health.memory_bytes if health else None,
            "restarts": health.restarts if health else None,
            "containers": list(health.containers or []) if health else [],
            "checks": list(CheckState.objects.filter(environment=environment).order_by("name")),
            "open_incidents": list(Incident.objects.filter(environment=environment, closed_at__isnull=True)),
        }
    )
    return data


def _thin(rows: list[Any]) -> list[Any]:
    """At most ``MAX_POINTS`` rows, evenly spread, the newest always kept."""
    if len(rows) <= MAX_POINTS:
        return rows
    step = len(rows) / MAX_POINTS
    picked = [rows[int(i * step)] for i in range(MAX_POINTS - 1)]
    return [*picked, rows[-1]]


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _rollup_uptime(up: int, degraded: int, down: int) -> float | None:
    measured = up + degraded + down
    return up / measured if measured else None


Bucket = tuple[datetime, int, int, int, float | None, float | None, float | None]


def _buckets(environment: Environment, start: datetime, period: str) -> list[Bucket]:
    """``(start, up, degraded, down, http_ms, cpu_percent, memory_bytes)`` per hour or day since ``start``, oldest
    first: the rollups of that period, then what the rollup has not reached yet (the newest hours and days, from
    hourly rollups and raw samples), grouped the same way. Three queries at most."""
    rows: list[Bucket] = list(
        Rollup.objects.filter(environment=environment, period=period, start__gte=start)
        .order_by("start")
        .values_list("start", "up", "degraded", "down", "http_ms_avg", "cpu_percent_avg", "memory_bytes_avg")
    )
    step = timedelta(days=1) if period == RollupPeriod.DAY else timedelta(hours=1)
    covered = rows[-1][0] + step if rows else start
    trunc = TruncDay if period == RollupPeriod.DAY else TruncHour
    if period == RollupPeriod.DAY:
        hourly = (
            Rollup.objects.filter(environment=environment, period=RollupPeriod.HOUR, start__gte=covered)
            .annotate(bucket=trunc("start", tzinfo=UTC))
            .values("bucket")
            .annotate(
                n_up=Sum("up"), n_degraded=Sum("degraded"), n_down=Sum("down"), http=Avg("http_ms_avg"),
                cpu=Avg("cpu_percent_avg"), memory=Avg("memory_bytes_avg"), last=Max("start"),
            )
            .order_by("bucket")
        )  # fmt: skip
        hours = list(hourly)
        rows += [_bucket_row(row) for row in hours]
        if hours:
            covered = max(row["last"] for row in hours) + timedelta(hours=1)
    samples = (
        Sample.objects.filter(environment=environment, at__gte=covered)
        .annotate(bucket=trunc("at", tzinfo=UTC))
        .values("bucket")
        .annotate(
            n_up=Count("pk", filter=Q(state=HealthState.UP)),
            n_degraded=Count("pk", filter=Q(state=HealthState.DEGRADED)),
            n_down=Count("pk", filter=Q(state=HealthState.DOWN)),
            http=Avg("http_ms"), cpu=Avg("cpu_percent"), memory=Avg("memory_bytes"),
        )
        .order_by("bucket")
    )  # fmt: skip
    merged: dict[datetime, Bucket] = {row[0]: row for row in rows}
    for row in samples:
        bucket = _bucket_row(row)
        previous = merged.get(bucket[0])
        # A bucket both layers reach (the day of the newest daily rollup's tail): counts add up.
        merged[bucket[0]] = bucket if previous is None else _add(previous, bucket)
    return [merged[key] for key in sorted(merged)]


def _bucket_row(row: dict[str, Any]) -> Bucket:
    memory = row["memory"]
    return (
        row["bucket"], int(row["n_up"] or 0), int(row["n_degraded"] or 0), int(row["n_down"] or 0), row["http"],
        row["cpu"], None if memory is None else float(memory),
    )  # fmt: skip


def _add(a: Bucket, b: Bucket) -> Bucket:
    """Two buckets of the same instant as one (counts added; averages of the non-empty ones)."""

    def mean(x: float | None, y: float | None) -> float | None:
        values = [v for v in (x, y) if v is not None]
        return sum(values) / len(values) if values else None

    return (a[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], mean(a[4], b[4]), mean(a[5], b[5]), mean(a[6], b[6]))


def health_history(environment: Environment, range_name: str, *, user: Any, details: bool) -> dict[str, Any]:
    """The chart series of ``environment`` over ``range_name`` (a key of ``RANGES``) and the jobs on its time
    axis (those ``user`` may see). Raw samples for 24 h; per hour up to 30 days and per day beyond, from the
    rollups and, for the newest buckets the rollup has not reached yet, from the layers below."""
    end = timezone.now()
    start = end - RANGES[range_name]
    series: dict[str, list[Any]] = {"t": [], "uptime": [], "http_ms": [], "cpu_percent": [], "memory_bytes": []}
    if range_name == "24h":
        resolution = "sample"
        rows = list(
            Sample.objects.filter(environment=environment, at__gte=start)
            .order_by("at")
            .values_list("at", "state", "http_ms", "cpu_percent", "memory_bytes")
        )
        for at, state, http_ms, cpu, memory in _thin(rows):
            series["t"].append(_epoch(at))
            series["uptime"].append(
                1.0 if state == HealthState.UP else 0.0 if state in (HealthState.DEGRADED, HealthState.DOWN) else None
            )
            series["http_ms"].append(http_ms)
            series["cpu_percent"].append(cpu)
            series["memory_bytes"].append(None if memory is None else float(memory))
    else:
        resolution = RollupPeriod.DAY if range_name == "365d" else RollupPeriod.HOUR
        for moment, up, degraded, down, http_ms, cpu, memory in _thin(_buckets(environment, start, resolution)):
            series["t"].append(_epoch(moment))
            series["uptime"].append(_rollup_uptime(up, degraded, down))
            series["http_ms"].append(http_ms)
            series["cpu_percent"].append(cpu)
            series["memory_bytes"].append(memory)
    jobs = (
        for_user(Job, user, Action.VIEW)
        .filter(environment=environment, kind__in=EVENT_KINDS)
        .annotate(at=Coalesce("started_at", "created_at"))
        .filter(at__gte=start)
        .order_by("-at", "-pk")
        .values_list("pk", "kind", "status", "at")[:MAX_EVENTS]
    )
    events = [
        {"t": _epoch(at), "kind": kind, "status": status, "title": f"{JobKind(kind).label}: {status}", "job": pk}
        for pk, kind, status, at in reversed(list(jobs))
    ]
    data: dict[str, Any] = {
        "range": range_name,
        "start": _epoch(start),
        "end": _epoch(end),
        "resolution": str(resolution),
        **series,
        "events": events,
    }
    if not details:
        return {key: data[key] for key in HealthHistorySerializer.customer_fields}
    return data


def _shaped(serializer_class: type[serializers.Serializer], data: dict[str, Any]) -> dict[str, Any]:  # type: ignore[type-arg]
    """``data`` through its serializer, keeping only the keys ``data`` has (customers get fewer)."""
    shown = serializer_class(data).data
    return {key: shown[key] for key in data}


class EnvironmentHealthActions(viewsets.GenericViewSet):  # type: ignore[type-arg]
    """``health`` and ``health-history``, mixed into ``EnvironmentViewSet`` (``get_object`` keeps its scoping)."""

    @extend_schema(request=None, responses={200: HealthSerializer, 404: DetailSerializer})
    @action(detail=True, methods=["get"])
    def health(self, request: Request, pk: str | None = None) -> Response:
        """The environment's current health: state, since when, uptime; for staff also the checks with their
        messages, the open incidents, response times and resources."""
        environment = self.get_object()
        details = can(request.user, Action.VIEW_DETAILS, environment)
        return Response(_shaped(HealthSerializer, current_health(environment, details=details)))

    @extend_schema(
        request=None,
        parameters=[
            OpenApiParameter("range", str, enum=list(RANGES), required=False, description="How far back (default 24h).")
        ],
        responses={200: HealthHistorySerializer, 400: DetailSerializer, 404: DetailSerializer},
    )
    @action(detail=True, methods=["get"], url_path="health-history")
    def health_history(self, request: Request, pk: str | None = None) -> Response:
        """Series for the uptime, response time and resource charts, and the jobs on their time axis."""
        environment = self.get_object()
        query = HistoryQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        details = can(request.user, Action.VIEW_DETAILS, environment)
        data = health_history(environment, query.validated_data["range"], user=request.user, details=details)
        return Response(_shaped(HealthHistorySerializer, data))


class _Batched(serializers.Field):  # type: ignore[type-arg]
    """A read-only field computed for every environment of the response at once (the list's instances, or the one
    instance), cached on the root serializer: a page of environments costs the same queries as one."""

    cache_key = ""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["read_only"] = True
        super().__init__(source="*", **kwargs)

    def batch(self, ids: list[int]) -> dict[int, Any]:
        raise NotImplementedError

    def value_for(self, environment: Environment) -> Any:
        root = self.root
        cache: dict[str, dict[int, Any]] = root.__dict__.setdefault("_monitoring_batches", {})
        if self.cache_key not in cache:
            instance = root.instance
            if instance is None or isinstance(instance, Environment):
                ids = [environment.pk]
            else:
                ids = [obj.pk for obj in instance]
            cache[self.cache_key] = self.batch(ids)
        found = cache[self.cache_key]
        if environment.pk not in found:  # not part of the batch (a nested use): look it up alone
            found.update(self.batch([environment.pk]))
        return found.get(environment.pk)


class HealthStateField(_Batched):
    cache_key = "state"

    def batch(self, ids: list[int]) -> dict[int, Any]:
        rows = EnvironmentHealth.objects.filter(environment_id__in=ids).values_list(
            "environment_id", "state", "polled_at"
        )
        found = {pk: HealthState.UNKNOWN if is_stale(polled_at) else state for pk, state, polled_at in rows}
        return {pk: found.get(pk, HealthState.UNKNOWN) for pk in ids}

    def to_representation(self, value: Environment) -> str:
        return str(self.value_for(value))


class HealthMessageField(_Batched):
    cache_key = "message"

    def batch(self, ids: list[int]) -> dict[int, Any]:
        rows = EnvironmentHealth.objects.filter(environment_id__in=ids).only("environment_id", "message", "polled_at")
        found = {row.environment_id: health_message(row) for row in rows}
        return {pk: found.get(pk, "") for pk in ids}

    def to_representation(self, value: Environment) -> str:
        return str(self.value_for(value))


class UptimeField(_Batched):
    cache_key = "uptime"

    def batch(self, ids: list[int]) -> dict[int, Any]:
        return history.uptime(ids)

    def to_representation(self, value: Environment) -> dict[str, float | None]:
        uptime = self.value_for(value) or {}
        return {window: uptime.get(window) for window in history.WINDOWS}


def environment_fields() -> dict[str, Any]:
    """The health fields added to the environment representation (``serializer_fields``)."""
    from drf_spectacular.utils import extend_schema_field

    state = extend_schema_field(serializers.ChoiceField(choices=HealthState.choices))(HealthStateField)
    message = extend_schema_field(serializers.CharField())(HealthMessageField)
    uptime = extend_schema_field(UPTIME_SCHEMA)(UptimeField)
    return {
        "health_state": state(help_text="up, degraded, down, unknown (not polled / unreachable) or maintenance."),
        "health_message": message(help_text="Why, when not up."),
        "uptime": uptime(help_text=UPTIME_HELP),
    }
