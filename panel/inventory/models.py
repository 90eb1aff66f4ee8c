"""Servers (Docker hosts reached over SSH), Doodba projects and their environments."""

from __future__ import annotations

import datetime
import json
import secrets
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator, URLValidator
from django.db import models
from django.utils import timezone

from panel.accounts.models import Organization
from panel.crypto import EncryptedTextField
from panel.inventory.choices import ODOO_VERSIONS, EnvironmentKind, Lifecycle, ServerStatus
from panel.validators import (
    validate_compose_files,
    validate_domain,
    validate_domain_list,
    validate_env_mapping,
    validate_git_ref,
    validate_git_url,
    validate_host,
    validate_known_hosts,
    validate_name,
    validate_network_list,
    validate_port,
    validate_postgres_version,
    validate_slug,
    validate_unix_user,
)


def default_keep_daily() -> int:
    """A new environment keeps as many daily backups as ``BACKUP_KEEP_DAILY`` says (at least one)."""
    return max(1, int(settings.BACKUP_KEEP_DAILY))


def new_webhook_id() -> str:
    """The unguessable part of a project's webhook URL."""
    return secrets.token_hex(16)


def new_webhook_secret() -> str:
    """The shared secret a git host signs webhooks with."""
    return secrets.token_urlsafe(32)


validate_memory = RegexValidator(r"^[1-9][0-9]{0,5}[mMgG]$", "Enter a memory limit such as 512m or 4g.")
validate_cpus = RegexValidator(r"^(?:[1-9][0-9]?|0)(?:\.[0-9]{1,2})?$", "Enter a CPU limit such as 1.5.")


# The server's inverse proxy (panel.inventory.proxy): where it listens and its ACME account (form and API alike).
PROXY_FIELDS = [
    "proxy_bind_address",
    "proxy_http_port",
    "proxy_https_port",
    "acme_email",
    "acme_directory_url",
    "acme_ca_certificate",
]


class Server(models.Model):
    """A Docker host the panel reaches over SSH with a pinned host key."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="servers")
    name = models.CharField(max_length=63, validators=[validate_name])
    host = models.CharField(max_length=253, validators=[validate_host])
    port = models.PositiveIntegerField(default=22, validators=[validate_port])
    username = models.CharField(max_length=32, validators=[validate_unix_user])
    private_key = EncryptedTextField(blank=True, help_text="OpenSSH private key, encrypted at rest.")
    public_key = models.TextField(blank=True, help_text="The public key to install in authorized_keys.")
    host_key_type = models.CharField(max_length=64, blank=True)
    host_key_base64 = models.TextField(blank=True)
    host_key_fingerprint = models.CharField(max_length=80, blank=True)
    host_key_confirmed_at = models.DateTimeField(null=True, blank=True)
    host_key_confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=ServerStatus.choices, default=ServerStatus.UNCONFIRMED)
    status_message = models.TextField(blank=True)
    os_name = models.CharField(max_length=200, blank=True)
    architecture = models.CharField(max_length=32, blank=True)
    docker_version = models.CharField(max_length=64, blank=True)
    compose_version = models.CharField(max_length=64, blank=True)
    disk_free_bytes = models.BigIntegerField(null=True, blank=True)
    docker_access = models.BooleanField(null=True, blank=True)
    labels = models.JSONField(default=list, blank=True)
    # The panel-managed inverse proxy (Traefik, ``panel.inventory.proxy``): where it listens and its ACME account.
    proxy_bind_address = models.GenericIPAddressField(
        null=True,
        blank=True,
        help_text="Address the proxy's ports are published on; blank for all addresses (a real server).",
    )
    proxy_http_port = models.PositiveIntegerField(default=80, validators=[validate_port])
    proxy_https_port = models.PositiveIntegerField(default=443, validators=[validate_port])
    acme_email = models.EmailField(
        max_length=254, blank=True, help_text="E-mail of the ACME account (expiry notices); blank for ACME_EMAIL."
    )
    acme_directory_url = models.CharField(
        max_length=500,
        blank=True,
        validators=[URLValidator(schemes=["https"])],
        help_text="ACME directory the proxy asks for certificates; blank for ACME_DIRECTORY_URL (Let's Encrypt).",
    )
    acme_ca_certificate = models.TextField(
        blank=True,
        max_length=65536,
        validators=[
            RegexValidator(
                r"^\s*-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s-]*-----END CERTIFICATE-----\s*$",
                "Paste PEM certificates (-----BEGIN CERTIFICATE----- ...).",
            )
        ],
        help_text="PEM certificates of a private ACME server's TLS (a company CA, the test CA Pebble); "
        "blank for a public one such as Let's Encrypt.",
    )
    last_validated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    scope_organization = "organization"
    scope_min_action = "view_details"

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="server_name_unique_per_org")]

    def __str__(self) -> str:
        return self.name

    @property
    def host_key_pinned(self) -> bool:
        """A person confirmed the host key's fingerprint."""
        return bool(self.host_key_base64 and self.host_key_confirmed_at)


class Project(models.Model):
    """A Doodba project: a git repository generated from doodba-copier-template."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="projects")
    name = models.CharField(max_length=63, validators=[validate_name])
    slug = models.CharField(max_length=40, validators=[validate_slug])
    git_url = models.CharField(max_length=500, validators=[validate_git_url])
    default_branch = models.CharField(max_length=200, default="main", validators=[validate_git_ref])
    odoo_version = models.CharField(max_length=8, default="16.0", choices=[(v, v) for v in ODOO_VERSIONS])
    postgres_version = models.CharField(
        max_length=4,
        blank=True,
        validators=[validate_postgres_version],
        help_text="The PostgreSQL major version of the project's db service (doodba-copier-template's postgres_version).",
    )
    # What the repository's .copier-answers.yml said when the panel last read it (panel.inventory.copier).
    copier_answers = models.JSONField(default=dict, blank=True, editable=False)
    deploy_key = EncryptedTextField(blank=True, help_text="Private key the server uses to fetch the repository.")
    deploy_public_key = models.TextField(blank=True)
    git_known_hosts = models.TextField(
        blank=True,
        validators=[validate_known_hosts],
        help_text="known_hosts lines of the git server (for ssh:// and user@host: URLs); host keys are checked.",
    )
    webhook_id = models.CharField(max_length=32, unique=True, default=new_webhook_id, editable=False)
    webhook_secret = EncryptedTextField(default=new_webhook_secret, help_text="GitHub secret / GitLab token.")
    created_at = models.DateTimeField(default=timezone.now)

    scope_organization = "organization"

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["organization", "slug"], name="project_slug_unique_per_org")]

    def __str__(self) -> str:
        return self.name


class Environment(models.Model):
    """One deployment target of a project (production, staging, ...) on one server."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="environments")
    server = models.ForeignKey(Server, on_delete=models.PROTECT, related_name="environments")
    name = models.CharField(max_length=40, validators=[validate_slug])
    kind = models.CharField(max_length=16, choices=EnvironmentKind.choices, default=EnvironmentKind.PRODUCTION)
    compose_files = models.JSONField(default=list, validators=[validate_compose_files])
    compose_project = models.CharField(max_length=63, validators=[validate_slug])
    git_ref = models.CharField(max_length=200, default="main", validators=[validate_git_ref])
    domain = models.CharField(max_length=253, blank=True, validators=[validate_domain])
    aliases = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_domain_list],
        help_text="More domain names; the proxy redirects them to the main domain.",
    )
    ip_allowlist = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_network_list],
        help_text="Networks (CIDR) allowed through the proxy; empty for everyone. Not for production.",
    )
    tls_certificate = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        help_text="The certificate the server's proxy served for the main domain when last checked.",
    )
    env_vars = models.JSONField(default=dict, blank=True, validators=[validate_env_mapping])
    secrets = EncryptedTextField(blank=True, help_text="JSON mapping of secret variables, encrypted at rest.")
    workers = models.PositiveSmallIntegerField(default=2, validators=[MaxValueValidator(64)])
    cron_threads = models.PositiveSmallIntegerField(default=1, validators=[MaxValueValidator(16)])
    cpu_limit = models.CharField(max_length=8, blank=True, validators=[validate_cpus])
    memory_limit = models.CharField(max_length=8, blank=True, validators=[validate_memory])
    backup_keep_daily = models.PositiveSmallIntegerField(
        default=default_keep_daily,
        validators=[MinValueValidator(1)],
        help_text="How many recent days keep their newest verified backup (grandfather-father-son retention).",
    )
    auto_deploy = models.BooleanField(
        default=False, help_text="Deploy when a git push to this environment's branch arrives (webhook)."
    )
    current_deployment = models.ForeignKey(
        "deployments.Deployment", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    degraded = models.BooleanField(default=False, help_text="A deploy failed and so did its rollback.")
    changing_job = models.ForeignKey(
        "jobs.Job",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The job changing what runs on the server; set before it changes anything, cleared when it "
        "finishes cleanly. Still set once that job has ended: it ended uncleanly.",
    )
    attention = models.TextField(
        blank=True, help_text="Why the environment needs attention, until a deploy or a health check proves it runs."
    )
    lifecycle = models.CharField(
        max_length=16,
        blank=True,
        default="",
        choices=Lifecycle.choices,
        help_text="Stopped or destroyed on purpose (by a lifecycle job that checked the containers afterwards).",
    )
    lifecycle_facts = models.JSONField(
        default=dict,
        blank=True,
        help_text="What the last lifecycle job found on the server after acting: containers and their states, "
        "stopped services, volumes, what it removed.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    scope_organization = "project__organization"

    class Meta:
        ordering = ["project__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="environment_name_unique_per_project"),
            models.UniqueConstraint(fields=["server", "compose_project"], name="compose_project_unique_per_server"),
        ]

    def __str__(self) -> str:
        return f"{self.project.name} / {self.name}"

    def clean(self) -> None:
        """Aliases need a main domain and differ from it; an allow-list is for non-production environments; no
        domain is routed twice by one server's proxy."""
        errors: dict[str, str] = {}
        aliases = self.aliases if isinstance(self.aliases, list) else []
        if aliases and not self.domain:
            errors["aliases"] = "Set a main domain first: aliases redirect to it."
        elif self.domain and self.domain in aliases:
            errors["aliases"] = "An alias cannot be the main domain itself."
        if self.ip_allowlist and self.kind == EnvironmentKind.PRODUCTION:
            # A production site is public; an allow-list there would lock customers out by a typo.
            errors["ip_allowlist"] = "An IP allow-list is for staging, test and development, not for production."
        names = {self.domain, *aliases} - {""}
        if names and self.server_id and not errors:
            others = Environment.objects.filter(server_id=self.server_id).exclude(pk=self.pk)
            for other in others.only("id", "domain", "aliases", "name", "project__name").select_related("project"):
                taken = names & {other.domain, *(other.aliases or [])}
                if taken:
                    errors["domain" if self.domain in taken else "aliases"] = (
                        f"{sorted(taken)[0]} is already served by {other} on this server."
                    )
                    break
        if errors:
            raise ValidationError(errors)

    def certificate_facts(self) -> dict[str, Any]:
        """The last certificate check (``panel.inventory.proxy``) with its dates as datetimes, for the page."""
        facts: dict[str, Any] = dict(self.tls_certificate or {})
        for key in ("not_after", "checked_at"):
            try:
                facts[key] = datetime.datetime.fromisoformat(facts[key])
            except (KeyError, TypeError, ValueError):
                facts.pop(key, None)
        return facts

    def all_domains(self) -> list[str]:
        """The main domain, then the aliases."""
        return [self.domain, *self.aliases] if self.domain else []

    def get_secrets(self) -> dict[str, str]:
        """The decrypted secret variables."""
        return json.loads(self.secrets) if self.secrets else {}

    def set_secrets(self, values: dict[str, Any]) -> None:
        """Replace the secret variables (validated like env vars)."""
        validate_env_mapping(values)
        self.secrets = json.dumps(values, sort_keys=True) if values else ""

    @staticmethod
    def default_compose_project(project: Project, name: str) -> str:
        """Doodba's compose project key: ``{project}-{odoo version}-{env}`` with dots as dashes."""
        return f"{project.slug}-{project.odoo_version}-{name}".replace(".", "-").lower()[:63]
