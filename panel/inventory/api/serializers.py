"""Serializers of servers, projects and environments.

Secrets are write-only at every depth: a server's ``private_key``, a project's ``deploy_key`` and an environment's
``secrets`` values are accepted on input and never rendered; an environment shows only ``secret_names``.
Every field is validated (model validators from ``panel.validators``) before any service runs, so a bad host is
refused before the panel connects anywhere. Feature apps add read-only fields to projects and environments
(``webhook_url``) through ``panel.extensions``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from panel import extensions
from panel.accounts.api.serializers import (
    CustomerViewMixin,
    PanelModelSerializer,
    ScopedRelatedField,
    api_validation_error,
    request_user,
)
from panel.accounts.models import Organization
from panel.accounts.services import record
from panel.inventory import services
from panel.inventory.choices import DeleteChoice, EnvironmentState
from panel.inventory.models import PROXY_FIELDS, Environment, Project, Server
from panel.remote import RemoteError
from panel.remote.ssh import public_line_of
from panel.validators import (
    MAX_ALIASES,
    MAX_ALLOWED_NETWORKS,
    normalize_domain,
    normalize_network,
    validate_domain,
    validate_domain_list,
    validate_env_name,
    validate_env_value,
    validate_name,
)

MAX_KEY_CHARS = 16_384
MAX_KNOWN_HOSTS_CHARS = 65_536
MAX_LABELS = 20


def validate_private_key(value: str) -> None:
    """An unencrypted OpenSSH/PEM private key the panel can load (the error never echoes the key)."""
    if len(value) > MAX_KEY_CHARS:
        raise serializers.ValidationError("This key is too long.")
    try:
        public_line_of(value)
    except RemoteError as exc:
        raise serializers.ValidationError(
            "Paste an unencrypted OpenSSH private key (Ed25519, ECDSA or RSA), or leave it empty to generate one."
        ) from exc


def key_field(help_text: str) -> serializers.CharField:
    """A write-only private key input."""
    return serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        style={"input_type": "password"},
        validators=[validate_private_key],
        help_text=help_text,
    )


def save_changes(instance: Any, validated_data: dict[str, Any], *, actor: Any, action: str) -> Any:
    """Apply an update, run the model's validation, save and record which fields changed (never their values)."""
    changed = sorted(name for name, value in validated_data.items() if getattr(instance, name) != value)
    for name, value in validated_data.items():
        setattr(instance, name, value)
    try:
        instance.full_clean()
    except DjangoValidationError as exc:
        raise api_validation_error(exc) from exc
    instance.save()
    if changed:
        record(action=action, actor=actor, obj=instance, detail={"fields": changed})
    return instance


# What the panel itself sets on a server: its public key, status and what validation found.
SERVER_READ_ONLY_FIELDS = [
    "public_key",
    "status",
    "status_message",
    "host_key_type",
    "host_key_fingerprint",
    "host_key_confirmed_at",
    "os_name",
    "architecture",
    "docker_version",
    "compose_version",
    "disk_free_bytes",
    "docker_access",
    "last_validated_at",
    "created_at",
]


class ServerSerializer(PanelModelSerializer):
    """A Docker host. ``host`` and ``port`` are fixed once created (the pinned host key belongs to them)."""

    organization = ScopedRelatedField(Organization)
    private_key = key_field("OpenSSH private key the panel logs in with; generated when left empty. Never returned.")
    labels = serializers.ListField(
        child=serializers.CharField(max_length=63, trim_whitespace=False, validators=[validate_name]),
        max_length=MAX_LABELS,
        required=False,
    )

    class Meta:
        model = Server
        fields = [
            "id",
            "organization",
            "name",
            "host",
            "port",
            "username",
            "labels",
            "private_key",
            *PROXY_FIELDS,
            *SERVER_READ_ONLY_FIELDS,
        ]
        read_only_fields = SERVER_READ_ONLY_FIELDS
        create_only = ["organization", "host", "port"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Run every model validator and constraint now, before ``create_server`` connects to the host."""
        if self.instance is None:
            candidate = Server(**{k: v for k, v in attrs.items() if k != "private_key"})
            try:
                candidate.full_clean(exclude=["private_key", "public_key"])
            except DjangoValidationError as exc:
                raise api_validation_error(exc) from exc
        return attrs

    def create(self, validated_data: dict[str, Any]) -> Server:
        validated_data.setdefault("port", Server._meta.get_field("port").default)
        proxy = {name: validated_data.pop(name) for name in PROXY_FIELDS if name in validated_data}
        try:
            server = services.create_server(actor=request_user(self), **validated_data)
        except DjangoValidationError as exc:
            raise api_validation_error(exc) from exc
        if proxy:  # validated above with the whole candidate
            Server.objects.filter(pk=server.pk).update(**proxy)
            server.refresh_from_db()
        return server

    def update(self, instance: Server, validated_data: dict[str, Any]) -> Server:
        private_key = validated_data.pop("private_key", "")
        with transaction.atomic():
            if private_key:
                instance.private_key = private_key
                instance.public_key = public_line_of(private_key, f"doodba-panel@{instance.name}")
                record(action="server.key_replaced", actor=request_user(self), obj=instance)
            return save_changes(instance, validated_data, actor=request_user(self), action="server.updated")  # type: ignore[no-any-return]


class ConfirmHostKeySerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The fingerprint a person checked out of band (``ssh-keyscan`` / the server console)."""

    fingerprint = serializers.CharField(max_length=80)


class ContributedFieldsMixin:
    """Adds the fields feature apps contribute to ``extension_model`` (``panel.extensions``), before ``created_at``;
    those the contributions name as customer fields are shown to customers too."""

    extension_model: ClassVar[str]
    customer_fields: ClassVar[tuple[str, ...]]

    def get_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = super().get_fields()  # type: ignore[misc]
        contributed = extensions.serializer_fields(self.extension_model)
        clash = sorted(set(contributed) & set(fields))
        if clash:
            raise ImproperlyConfigured(f"Contributed fields {clash} already exist on {type(self).__name__}.")
        tail = {name: fields.pop(name) for name in ("created_at",) if name in fields}
        return {**fields, **contributed, **tail}

    def customer_view_fields(self) -> tuple[str, ...]:
        return (*self.customer_fields, *extensions.customer_fields(self.extension_model))


class ProjectSerializer(ContributedFieldsMixin, CustomerViewMixin, PanelModelSerializer):
    """A Doodba project. Customers see only ``customer_fields``; the deploy key is write-only for everyone.

    ``webhook_url`` is where GitHub/GitLab send pushes; the webhook secret is never part of this representation
    (``POST /projects/{id}/webhook-secret/`` rotates it and shows the new value once).
    """

    extension_model = "project"
    customer_fields = ("id", "name", "organization", "odoo_version")

    organization = ScopedRelatedField(Organization)
    deploy_key = key_field("Private key the server fetches the repository with; generated when left empty.")

    class Meta:
        model = Project
        fields = [
            "id",
            "organization",
            "name",
            "slug",
            "git_url",
            "default_branch",
            "odoo_version",
            "postgres_version",
            "copier_answers",
            "deploy_key",
            "deploy_public_key",
            "git_known_hosts",
            "created_at",
        ]
        read_only_fields = ["deploy_public_key", "copier_answers", "created_at"]
        extra_kwargs = {"git_known_hosts": {"max_length": MAX_KNOWN_HOSTS_CHARS}}
        create_only = ["organization", "slug"]

    def create(self, validated_data: dict[str, Any]) -> Project:
        deploy_key = validated_data.pop("deploy_key", "")
        if deploy_key:
            validated_data["deploy_key"] = deploy_key
            validated_data["deploy_public_key"] = public_line_of(
                deploy_key, f"doodba-panel-deploy@{validated_data['slug']}"
            )
        try:
            return services.create_project(actor=request_user(self), **validated_data)
        except DjangoValidationError as exc:
            raise api_validation_error(exc) from exc

    def update(self, instance: Project, validated_data: dict[str, Any]) -> Project:
        deploy_key = validated_data.pop("deploy_key", "")
        with transaction.atomic():
            if deploy_key:
                instance.deploy_key = deploy_key
                instance.deploy_public_key = public_line_of(deploy_key, f"doodba-panel-deploy@{instance.slug}")
                record(action="project.deploy_key_replaced", actor=request_user(self), obj=instance)
            return save_changes(instance, validated_data, actor=request_user(self), action="project.updated")  # type: ignore[no-any-return]


class CurrentDeploymentSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The deployment live on an environment: its id and commit."""

    id = serializers.IntegerField()
    commit = serializers.CharField()


class SecretsField(serializers.DictField):  # type: ignore[type-arg]
    """Write-only ``NAME → value`` mapping; a ``null`` value removes that secret on update."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault(
            "child", serializers.CharField(allow_null=True, allow_blank=True, trim_whitespace=False, max_length=4096)
        )
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> dict[str, str | None]:
        value: dict[str, str | None] = super().to_internal_value(data)
        errors: dict[str, list[str]] = {}
        for name, item in value.items():
            try:
                validate_env_name(name)
                if item is not None:
                    validate_env_value(item)
            except DjangoValidationError as exc:
                errors[name[:40]] = exc.messages
        if errors:
            raise serializers.ValidationError(errors)
        return value


class DomainField(serializers.CharField):
    """A domain name: trimmed, lowercased and IDN-to-punycode (``normalize_domain``) before the validators run."""

    def to_internal_value(self, data: Any) -> str:
        text = super().to_internal_value(data)
        if not text:
            return ""
        try:
            domain = normalize_domain(text)
            validate_domain(domain)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from exc
        return domain


class NetworkField(serializers.CharField):
    """A network (CIDR) or single address, stored in canonical form."""

    def to_internal_value(self, data: Any) -> str:
        try:
            return normalize_network(super().to_internal_value(data))
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from exc


def check_aliases(value: list[str]) -> None:
    """Distinct aliases (each already a valid domain)."""
    try:
        validate_domain_list(value)
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.messages) from exc


class EnvironmentDeleteQuerySerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Query of ``DELETE /environments/{id}/``: what happens on the server (required)."""

    choice = serializers.ChoiceField(
        choices=DeleteChoice.choices,
        help_text="destroyed: the environment's Destroy job succeeded (POST .../destroy/ first); leave_running: "
        "its containers and volumes stay on the server, unwatched (the audit entry lists them).",
    )


class EnvironmentDeletedSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """What the audit entry of a removal records."""

    choice = serializers.ChoiceField(choices=DeleteChoice.choices)
    left = serializers.JSONField(
        required=False, help_text="leave_running: server, compose project, directory, containers, volumes."
    )
    destroyed = serializers.JSONField(required=False, help_text="destroyed: what the Destroy job found and removed.")


class EnvironmentSerializer(ContributedFieldsMixin, CustomerViewMixin, PanelModelSerializer):
    """An environment. Staff see everything but secret values; customers see ``customer_fields`` only.

    ``secrets`` is merged on update: names given are set, a ``null`` value removes a name, others stay.
    ``project``, ``server`` and ``compose_project`` are fixed once created (moving an environment is a job).
    """

    extension_model = "environment"
    customer_fields = ("id", "name", "kind", "domain", "project", "state", "state_detail")

    project = ScopedRelatedField(Project)
    server = ScopedRelatedField(Server)
    secrets = SecretsField(write_only=True, required=False, help_text="NAME → value; never returned.")
    secret_names = serializers.SerializerMethodField()
    current_deployment = CurrentDeploymentSerializer(read_only=True, allow_null=True)
    state = serializers.SerializerMethodField()
    state_detail = serializers.SerializerMethodField()
    domain = DomainField(
        max_length=300, required=False, allow_blank=True, help_text="Main domain name; IDNs are stored as punycode."
    )
    aliases = serializers.ListField(
        child=DomainField(max_length=300),
        max_length=MAX_ALIASES,
        required=False,
        validators=[check_aliases],
        help_text="More domain names, redirected to the main domain.",
    )
    ip_allowlist = serializers.ListField(
        child=NetworkField(max_length=64),
        max_length=MAX_ALLOWED_NETWORKS,
        required=False,
        help_text="Networks (CIDR) allowed through the proxy; empty for everyone. Refused on production.",
    )

    class Meta:
        model = Environment
        fields = [
            "id",
            "project",
            "server",
            "name",
            "kind",
            "compose_files",
            "compose_project",
            "git_ref",
            "domain",
            "aliases",
            "ip_allowlist",
            "env_vars",
            "secrets",
            "secret_names",
            "workers",
            "cron_threads",
            "cpu_limit",
            "memory_limit",
            "backup_keep_daily",
            "auto_deploy",
            "degraded",
            "current_deployment",
            "state",
            "state_detail",
            "lifecycle_facts",
            "created_at",
        ]
        read_only_fields = ["degraded", "lifecycle_facts", "created_at"]
        extra_kwargs = {"compose_project": {"required": False}, "compose_files": {"required": False}}
        create_only = ["project", "server", "compose_project"]
        # Uniqueness is checked by full_clean in the service, once compose_project has its default.
        validators: list[Any] = []

    def organization_id_of(self, instance: Environment) -> int:
        return int(instance.project.organization_id)

    def get_secret_names(self, environment: Environment) -> list[str]:
        """Names of the secret variables (their values are never returned)."""
        return sorted(environment.get_secrets())

    def _state(self, environment: Environment) -> services.State:
        cached: services.State | None = getattr(environment, "_api_state", None)
        if cached is None:
            prefetched = getattr(environment, "active_deploy_jobs", None)
            if prefetched is None:
                cached = services.environment_state(environment)
            else:
                cached = services.environment_state(environment, active_job=prefetched[0] if prefetched else None)
            environment._api_state = cached  # type: ignore[attr-defined]
        return cached

    @extend_schema_field(serializers.ChoiceField(choices=EnvironmentState.values))
    def get_state(self, environment: Environment) -> str:
        """not deployed, deploying (a deploy or rollback job is queued or running), restoring, changing (a stop,
        start, restart or destroy job is queued or running), running, stopped (stopped on purpose: the stop job
        found its containers stopped), destroyed (a destroy job took it down), needs attention (a change ended
        uncleanly: what runs is not known), or degraded (a deploy and its rollback failed)."""
        return self._state(environment).code

    @extend_schema_field(OpenApiTypes.STR)
    def get_state_detail(self, environment: Environment) -> str:
        """Why the environment is in its state, in words a person can act on (customers get their own wording)."""
        state = self._state(environment)
        return state.detail if self.shows_details(environment) else state.customer_detail

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Secret names must not shadow plain env var names."""
        env_vars = attrs.get("env_vars", getattr(self.instance, "env_vars", {}) or {})
        secrets = attrs.get("secrets") or {}
        clash = sorted(set(env_vars) & {name for name, value in secrets.items() if value is not None})
        if clash:
            raise serializers.ValidationError({"secrets": [f"Also set as a plain env var: {', '.join(clash)}."]})
        return attrs

    def create(self, validated_data: dict[str, Any]) -> Environment:
        secrets = {k: v for k, v in (validated_data.pop("secrets", None) or {}).items() if v is not None}
        try:
            return services.create_environment(actor=request_user(self), secrets=secrets, **validated_data)
        except DjangoValidationError as exc:
            raise api_validation_error(exc) from exc

    def update(self, instance: Environment, validated_data: dict[str, Any]) -> Environment:
        changes = validated_data.pop("secrets", None)
        with transaction.atomic():
            if changes:
                merged = instance.get_secrets()
                for name, value in changes.items():
                    if value is None:
                        merged.pop(name, None)
                    else:
                        merged[name] = value
                instance.set_secrets(merged)
                record(
                    action="environment.secrets_changed",
                    actor=request_user(self),
                    obj=instance,
                    detail={"names": sorted(changes)},
                )
            return save_changes(instance, validated_data, actor=request_user(self), action="environment.updated")  # type: ignore[no-any-return]
