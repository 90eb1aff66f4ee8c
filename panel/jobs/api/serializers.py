"""Serializers of jobs and their log lines."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from panel.accounts.api.serializers import CustomerViewMixin
from panel.jobs.choices import JobStatus, LogStream
from panel.jobs.models import Job


class JobSerializer(CustomerViewMixin, serializers.ModelSerializer):  # type: ignore[type-arg]
    """A job. Staff see every field; customers see its kind, status and timestamps only."""

    customer_fields = ("id", "kind", "status", "created_at", "started_at", "finished_at")

    # null for jobs nobody started by hand (a webhook push) and after the user was deleted.
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "organization",
            "kind",
            "status",
            "server",
            "environment",
            "params",
            "result",
            "reason",
            "created_by",
            "trigger",
            "created_at",
            "started_at",
            "finished_at",
            "heartbeat_at",
            "duration_seconds",
            "worker",
            "cancel_requested",
            "last_seq",
            "progress",
        ]
        read_only_fields = fields


class JobStartedSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The answer to an action that queued a job (202)."""

    job = JobSerializer(read_only=True)


class JobBusySerializer(serializers.Serializer):  # type: ignore[type-arg]
    """409: another job holds the target (``job`` is its id, null when it ended meanwhile), or another conflict
    with the target's state, in words only (``detail`` without ``job``). 503: the broker could not take the new
    job ``job``, which was ended at once (it holds nothing)."""

    detail = serializers.CharField()
    job = serializers.IntegerField(allow_null=True, required=False)


class JobLineSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """One log line, as ``panel.jobs.services.serialize_line`` makes it (the websocket sends the same)."""

    seq = serializers.IntegerField()
    ts = serializers.DateTimeField()
    stream = serializers.ChoiceField(choices=LogStream.choices)
    text = serializers.CharField()


class JobLinesSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A page of log lines: ask again with ``after=last_seq`` while ``more`` is true or the job is active."""

    lines = JobLineSerializer(many=True)
    last_seq = serializers.IntegerField(help_text="The seq of the last line returned (or ``after``): the next after.")
    status = serializers.CharField()
    more = serializers.BooleanField(help_text="More lines are stored already; fetch again at once.")


class JobLinesQuerySerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Query parameters of the lines endpoint."""

    after = serializers.IntegerField(min_value=0, default=0)
    limit = serializers.IntegerField(min_value=1, required=False)


class JobFilterSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Query parameters of the job list."""

    server = serializers.IntegerField(min_value=1, required=False)
    environment = serializers.IntegerField(min_value=1, required=False)
    status = serializers.ChoiceField(choices=JobStatus.choices, required=False)

    def filters(self) -> dict[str, Any]:
        """ORM lookups for the validated parameters."""
        lookups = {"server": "server_id", "environment": "environment_id", "status": "status"}
        return {lookups[name]: value for name, value in self.validated_data.items()}
