"""Serializers of deployments and of the deploy, promote and rollback actions.

Staff (``view_details``) see a deployment whole: images, the configuration snapshot (names of secrets, never values),
the commits it brought, the rollback outcome, its job and the job's steps. Customers of the environment's
organization see only ``customer_fields``, with the commit shortened: no logs, configuration, images or job id.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from deployments.models import Deployment
from deployments.webhooks import webhook_url
from panel.accounts.api.serializers import CustomerViewMixin
from panel.jobs.api.serializers import JobSerializer
from panel.validators import validate_git_ref


class StepSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """One pipeline step of the deployment's job, with its duration and the range of its log lines."""

    name = serializers.CharField()
    status = serializers.CharField()
    seconds = serializers.FloatField(required=False)
    first_seq = serializers.IntegerField(required=False)
    last_seq = serializers.IntegerField(required=False)


class DeploymentSerializer(CustomerViewMixin, serializers.ModelSerializer):  # type: ignore[type-arg]
    """A deployment (see the module docstring for who sees what)."""

    customer_fields = (
        "id",
        "environment",
        "kind",
        "status",
        "commit",
        "commit_subject",
        "trigger",
        "created_at",
        "finished_at",
    )

    status = serializers.CharField(
        source="effective_status",
        read_only=True,
        help_text="succeeded, failed (previous version restored), failed_no_rollback, degraded, canceled, "
        "interrupted, or running; the job's end state when the worker died before recording an outcome.",
    )
    # null for webhook deploys and after the user was deleted.
    triggered_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    steps = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = [
            "id",
            "environment",
            "kind",
            "status",
            "ref",
            "commit",
            "commit_subject",
            "previous",
            "source",
            "images",
            "config",
            "changes",
            "rollback",
            "db_snapshot",
            "images_pruned_at",
            "trigger",
            "triggered_by",
            "created_at",
            "finished_at",
            "job",
            "steps",
        ]
        read_only_fields = fields

    def organization_id_of(self, instance: Deployment) -> int:
        return int(instance.environment.project.organization_id)

    @extend_schema_field(StepSerializer(many=True))
    def get_steps(self, deployment: Deployment) -> list[dict[str, Any]]:
        """The job's steps so far (name, status, seconds, log line range)."""
        steps = (deployment.job.result or {}).get("steps", [])
        return [step for step in steps if isinstance(step, dict)]

    def to_representation(self, instance: Deployment) -> dict[str, Any]:
        data = super().to_representation(instance)
        if not self.shows_details(instance):
            data["commit"] = instance.short_commit
        return data


class DeployRequestSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """What to deploy: a branch, tag or commit; the environment's git ref when left out."""

    ref = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=200,
        trim_whitespace=False,
        help_text="Branch, tag or commit sha; default: the environment's git_ref.",
    )

    def validate_ref(self, value: str) -> str:
        """``git check-ref-format`` rules, stricter (no shell characters, no leading '-')."""
        if value:
            try:
                validate_git_ref(value)
            except DjangoValidationError as exc:
                raise serializers.ValidationError(exc.messages) from exc
        return value


class DeploymentStartedSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """202: the deployment record and the queued job that runs it."""

    deployment = DeploymentSerializer(read_only=True)
    job = JobSerializer(read_only=True)


class CompareQuerySerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Query parameters of the compare endpoint (``with`` is a Python keyword, hence ``get_fields``)."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        return {"with": serializers.IntegerField(min_value=1, help_text="The other deployment of the environment.")}


class DeploymentRefSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A deployment's id and commit."""

    id = serializers.IntegerField()
    commit = serializers.CharField()


class ConfigChangeSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """One configuration key's value before and after (names of secrets only, never values)."""

    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)


class CompareSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """What changed from the older deployment to the newer one."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        return {
            "from": DeploymentRefSerializer(),
            "to": DeploymentRefSerializer(),
            "commits": serializers.ListField(child=serializers.CharField(), help_text="``sha subject`` lines."),
            "config": serializers.DictField(child=ConfigChangeSerializer()),
        }


class DeploymentFilterSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Query parameters of the deployment list."""

    environment = serializers.IntegerField(min_value=1, required=False, help_text="Only this environment's.")


class WebhookSecretSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The new webhook secret, shown once, and the URL to configure with it."""

    webhook_url = serializers.CharField()
    webhook_secret = serializers.CharField(help_text="Shown once; stored encrypted. GitHub secret / GitLab token.")


@extend_schema_field(OpenApiTypes.STR)
class WebhookUrlField(serializers.Field):  # type: ignore[type-arg]
    """Read-only: the git webhook URL of the object's project, absolute when the request tells the panel's address.

    Added to the project and environment representations through ``panel.extensions``.
    """

    def __init__(self, *, project_of: Any, **kwargs: Any) -> None:
        self.project_of = project_of
        super().__init__(read_only=True, source="*", **kwargs)

    def to_representation(self, value: Any) -> str:
        return webhook_url(self.project_of(value), self.context.get("request"))


class ReadAnswersRequestSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """``POST /projects/{id}/read-answers/``."""

    server = serializers.IntegerField(
        min_value=1,
        help_text="The server that fetches the repository (with the project's deploy key): one the project's "
        "environments may use, with a confirmed host key.",
    )
