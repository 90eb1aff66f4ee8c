"""Forms of the inventory pages. Every value is checked by the model's allowlist validators (panel/validators.py)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from panel.accounts.models import Organization
from panel.inventory.choices import DeleteChoice
from panel.inventory.models import PROXY_FIELDS, Environment, Project, Server
from panel.remote import RemoteError
from panel.remote.ssh import load_private_key
from panel.validators import (
    MAX_ALIASES,
    MAX_ALLOWED_NETWORKS,
    normalize_domain,
    normalize_network,
    validate_compose_file,
    validate_domain_list,
    validate_env_name,
    validate_env_value,
    validate_name,
)

MAX_LABELS = 20


class WriteOnlyTextarea(forms.Textarea):
    """A textarea that never renders a value, not even the one just submitted (secrets, private keys)."""

    def format_value(self, value: Any) -> str | None:
        return None


def apply_validation_error(form: forms.BaseForm, error: ValidationError) -> None:
    """Show a model ``ValidationError`` on the form: on its field when the form has it, else above the form."""
    if hasattr(error, "error_dict"):
        for field, errors in error.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error)


def parse_variables(text: str, label: str) -> dict[str, str]:
    """``NAME=value`` lines into a mapping; blank lines and ``#`` comments are skipped; names must be unique.

    The value is everything after the first ``=``, spaces at either end included, so it reaches the container as
    typed. Lines end at ``\n`` only (browsers send ``\r\n``): ``str.splitlines`` would also split a value at
    U+2028, U+0085 and other characters a value may hold.
    """
    values: dict[str, str] = {}
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep:
            raise ValidationError(f"{label}, line {number}: write NAME=value.")
        try:
            validate_env_name(name)
            validate_env_value(value)
        except ValidationError as exc:
            raise ValidationError(f"{label}, line {number}: {' '.join(exc.messages)}") from exc
        if name in values:
            raise ValidationError(f"{label}, line {number}: {name} is set twice.")
        values[name] = value
    return values


def format_variables(values: dict[str, str]) -> str:
    """A mapping as ``NAME=value`` lines (for env vars only, never for secrets)."""
    return "\n".join(f"{name}={value}" for name, value in sorted(values.items()))


def parse_labels(text: str) -> list[str]:
    """Comma-separated labels, each a display name."""
    labels = [label.strip() for label in text.split(",") if label.strip()]
    if len(labels) > MAX_LABELS:
        raise ValidationError(f"At most {MAX_LABELS} labels.")
    for label in labels:
        try:
            validate_name(label)
        except ValidationError as exc:
            raise ValidationError(f"Label {label[:40]!r}: {' '.join(exc.messages)}") from exc
    return list(dict.fromkeys(labels))


def split_items(text: str) -> list[str]:
    """Items of a list typed one a line or comma-separated."""
    return [item.strip() for line in text.replace("\r\n", "\n").split("\n") for item in line.split(",") if item.strip()]


def parse_domains(text: str, *, limit: int = MAX_ALIASES) -> list[str]:
    """Aliases as typed: normalized (``normalize_domain``); the model's validators check each one."""
    items = split_items(text)
    if len(items) > limit:
        raise ValidationError(f"Enter at most {limit} aliases.")
    domains = []
    for item in items:
        try:
            domains.append(normalize_domain(item))
        except ValidationError as exc:
            raise ValidationError(f"{item[:80]!r}: {' '.join(exc.messages)}") from exc
    validate_domain_list(domains)
    return domains


def parse_networks(text: str) -> list[str]:
    """An IP allow-list as typed, in canonical CIDR form."""
    items = split_items(text)
    if len(items) > MAX_ALLOWED_NETWORKS:
        raise ValidationError(f"Enter at most {MAX_ALLOWED_NETWORKS} networks.")
    return [normalize_network(item) for item in items]


class ServerCreateForm(forms.ModelForm):
    """Register a server; the host key is read on submit and must be confirmed on the next page."""

    private_key = forms.CharField(
        required=False,
        widget=WriteOnlyTextarea(attrs={"rows": 4, "autocomplete": "off", "spellcheck": "false"}),
        help_text="Optional OpenSSH private key (without passphrase). Leave blank and the panel generates a key pair.",
    )

    class Meta:
        model = Server
        fields = ["organization", "name", "host", "port", "username"]
        help_texts = {"host": "DNS name or IP address.", "username": "The Unix user the panel logs in as."}

    def __init__(self, *args: Any, organizations: QuerySet[Organization], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["organization"].queryset = organizations  # type: ignore[attr-defined]
        self.fields["organization"].empty_label = None  # type: ignore[attr-defined]

    def clean_private_key(self) -> str:
        text = self.cleaned_data["private_key"].replace("\r\n", "\n").strip()
        if not text:
            return ""
        try:
            load_private_key(text + "\n")
        except RemoteError as exc:
            raise ValidationError(
                "This private key cannot be read: paste an unencrypted OpenSSH or PEM key (Ed25519, ECDSA or RSA)."
            ) from exc
        return text + "\n"


class ServerEditForm(forms.ModelForm):
    """Change a server's name, labels, port and login user (the host and its pinned key stay)."""

    labels_text = forms.CharField(label="Labels", required=False, help_text="Comma-separated.")

    class Meta:
        model = Server
        fields = [
            "name",
            "port",
            "username",
            *PROXY_FIELDS,
        ]
        widgets = {"acme_ca_certificate": forms.Textarea(attrs={"rows": 3, "spellcheck": "false"})}
        labels = {
            "proxy_bind_address": "Proxy address",
            "proxy_http_port": "Proxy HTTP port",
            "proxy_https_port": "Proxy HTTPS port",
            "acme_email": "ACME e-mail",
            "acme_directory_url": "ACME directory URL",
            "acme_ca_certificate": "ACME server's CA certificate",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["labels_text"].initial = ", ".join(self.instance.labels or [])
        for name in ("proxy_http_port", "proxy_https_port"):
            self.fields[name].required = False  # left out: kept as they are

    def clean_proxy_http_port(self) -> int:
        return self.cleaned_data["proxy_http_port"] or self.instance.proxy_http_port

    def clean_proxy_https_port(self) -> int:
        return self.cleaned_data["proxy_https_port"] or self.instance.proxy_https_port

    def clean_labels_text(self) -> list[str]:
        return parse_labels(self.cleaned_data["labels_text"])

    def clean_name(self) -> str:
        # The organization is not a field of this form, so ModelForm skips the (organization, name) constraint.
        name: str = self.cleaned_data["name"]
        taken = Server.objects.filter(organization_id=self.instance.organization_id, name=name)
        if taken.exclude(pk=self.instance.pk).exists():
            raise ValidationError(f"Another server of this organization is already named {name}.")
        return name

    def save(self, commit: bool = True) -> Server:
        self.instance.labels = self.cleaned_data["labels_text"]
        return super().save(commit=commit)


class ProjectForm(forms.ModelForm):
    """Create or edit a project (its organization and slug are fixed once created)."""

    class Meta:
        model = Project
        fields = ["organization", "name", "slug", "git_url", "default_branch", "odoo_version", "git_known_hosts"]
        labels = {"git_url": "Git URL", "git_known_hosts": "Git server host keys"}
        help_texts = {
            "slug": "Lowercase machine name, used in compose project names; cannot be changed later.",
            "git_url": "ssh://, https://, user@host:path, or an absolute path on the server.",
            "git_known_hosts": (
                "known_hosts lines of the git server, needed for ssh:// and user@host: URLs: the server checks the "
                "git host's key against them (for example the output of ssh-keyscan, verified)."
            ),
        }
        widgets = {"git_known_hosts": forms.Textarea(attrs={"rows": 3, "spellcheck": "false"})}

    def __init__(self, *args: Any, organizations: QuerySet[Organization] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            del self.fields["organization"]
            del self.fields["slug"]
        else:
            self.fields["organization"].queryset = organizations  # type: ignore[attr-defined]
            self.fields["organization"].empty_label = None  # type: ignore[attr-defined]
            self.fields["name"].required = False
            self.fields["name"].help_text = (
                "Blank: the slug, until the repository's .copier-answers.yml names the project (Read from the "
                "repository, on the project page)."
            )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not self.instance.pk and "name" not in self.errors and not data.get("name") and data.get("slug"):
            data["name"] = data["slug"]  # left blank: the slug names it until .copier-answers.yml does
        return data


class EnvironmentForm(forms.ModelForm):
    """Create or edit an environment. Secrets are write-only: a blank field keeps the stored ones."""

    compose_files_text = forms.CharField(
        label="Compose files",
        initial="prod.yaml",
        help_text="Comma-separated file names inside the project, such as prod.yaml.",
    )
    env_vars_text = forms.CharField(
        label="Environment variables",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        help_text="One NAME=value per line.",
    )
    secrets_text = forms.CharField(
        label="Secret variables",
        required=False,
        strip=False,
        widget=WriteOnlyTextarea(attrs={"rows": 3, "autocomplete": "off", "spellcheck": "false"}),
        help_text="One NAME=value per line. Stored encrypted and never shown again.",
    )
    clear_secrets = forms.BooleanField(label="Remove all stored secrets", required=False)
    aliases_text = forms.CharField(
        label="Aliases",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        help_text="More domain names, one a line; they redirect to the main domain.",
    )
    ip_allowlist_text = forms.CharField(
        label="IP allow-list",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        help_text="Networks such as 203.0.113.0/24, one a line; only they reach the site. Staging and test only.",
    )

    class Meta:
        model = Environment
        fields = [
            "name",
            "kind",
            "server",
            "git_ref",
            "domain",
            "workers",
            "cron_threads",
            "cpu_limit",
            "memory_limit",
            "backup_keep_daily",
            "auto_deploy",
        ]
        labels = {
            "git_ref": "Git branch, tag or commit",
            "cpu_limit": "CPU limit",
            "backup_keep_daily": "Daily backups kept",
            "auto_deploy": "Deploy automatically on git push",
        }
        help_texts = {
            "backup_keep_daily": (
                "Retention keeps the newest verified backup of each of this many recent days (weekly and monthly "
                "counts: BACKUP_KEEP_WEEKLY, BACKUP_KEEP_MONTHLY)."
            ),
            "cpu_limit": "Such as 1.5; blank for no limit.",
            "memory_limit": "Such as 4g; blank for no limit.",
            "auto_deploy": (
                "Off by default. When on, every push to this environment's branch (through the project's webhook) "
                "deploys it. Keep it off for production: deploy production with the button or by promotion."
            ),
        }

    def __init__(self, *args: Any, servers: QuerySet[Server], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["server"].queryset = servers  # type: ignore[attr-defined]
        if self.instance.pk:
            # Renaming or moving an environment is a migration, not an edit.
            del self.fields["name"]
            del self.fields["server"]
            self.fields["compose_files_text"].initial = ", ".join(self.instance.compose_files)
            self.fields["env_vars_text"].initial = format_variables(self.instance.env_vars)
            self.fields["aliases_text"].initial = "\n".join(self.instance.aliases or [])
            self.fields["ip_allowlist_text"].initial = "\n".join(self.instance.ip_allowlist or [])
            names = sorted(self.instance.get_secrets())
            if names:
                self.fields[
                    "secrets_text"
                ].help_text = (
                    f"Stored: {', '.join(names)}. Leave blank to keep them; lines entered here replace all of them."
                )
            else:
                del self.fields["clear_secrets"]
        else:
            del self.fields["clear_secrets"]
            only = list(servers[:2])
            if len(only) == 1:  # the usual first environment: nothing to choose
                self.fields["server"].initial = only[0].pk

    def clean_compose_files_text(self) -> list[str]:
        files = [name.strip() for name in self.cleaned_data["compose_files_text"].split(",") if name.strip()]
        if not files or len(files) > 10:
            raise ValidationError("Enter between one and ten compose files.")
        for name in files:
            try:
                validate_compose_file(name)
            except ValidationError as exc:
                raise ValidationError(f"{name[:40]!r}: {' '.join(exc.messages)}") from exc
        return files

    def clean_domain(self) -> str:
        return normalize_domain(self.cleaned_data["domain"]) if self.cleaned_data["domain"] else ""

    def clean_aliases_text(self) -> list[str]:
        return parse_domains(self.cleaned_data["aliases_text"])

    def clean_ip_allowlist_text(self) -> list[str]:
        return parse_networks(self.cleaned_data["ip_allowlist_text"])

    def _post_clean(self) -> None:
        # The model's clean() (aliases need a domain, no allow-list on production) sees the parsed lists.
        if "aliases_text" in self.cleaned_data:
            self.instance.aliases = self.cleaned_data["aliases_text"]
        if "ip_allowlist_text" in self.cleaned_data:
            self.instance.ip_allowlist = self.cleaned_data["ip_allowlist_text"]
        super()._post_clean()  # type: ignore[misc]

    def _update_errors(self, errors: ValidationError) -> None:
        # Model errors on the list fields belong to their text inputs.
        if hasattr(errors, "error_dict"):
            for name in ("aliases", "ip_allowlist"):
                if name in errors.error_dict:
                    errors.error_dict[f"{name}_text"] = errors.error_dict.pop(name)
        super()._update_errors(errors)  # type: ignore[misc]

    def clean_env_vars_text(self) -> dict[str, str]:
        return parse_variables(self.cleaned_data["env_vars_text"], "Environment variables")

    def clean_secrets_text(self) -> dict[str, str]:
        return parse_variables(self.cleaned_data["secrets_text"], "Secret variables")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        both = set(cleaned.get("env_vars_text") or {}) & set(cleaned.get("secrets_text") or {})
        if both:
            raise ValidationError(f"Set {', '.join(sorted(both))} either as a variable or as a secret, not both.")
        return cleaned

    def model_fields(self) -> dict[str, Any]:
        """The cleaned values of model fields, for ``create_environment``."""
        fields = {name: self.cleaned_data[name] for name in self._meta.fields or [] if name in self.cleaned_data}
        fields["compose_files"] = self.cleaned_data["compose_files_text"]
        fields["env_vars"] = self.cleaned_data["env_vars_text"]
        fields["aliases"] = self.cleaned_data["aliases_text"]
        fields["ip_allowlist"] = self.cleaned_data["ip_allowlist_text"]
        return fields

    def save(self, commit: bool = True) -> Environment:
        """Apply an edit: variables always, secrets only when entered (or cleared on request)."""
        environment: Environment = self.instance
        environment.compose_files = self.cleaned_data["compose_files_text"]
        environment.env_vars = self.cleaned_data["env_vars_text"]
        if self.cleaned_data.get("secrets_text"):
            environment.set_secrets(self.cleaned_data["secrets_text"])
        elif self.cleaned_data.get("clear_secrets"):
            environment.set_secrets({})
        return super().save(commit=commit)


class EnvironmentDeleteForm(forms.Form):
    """What removing an environment from the panel does with what runs on its server (a choice is required)."""

    choice = forms.ChoiceField(
        label="What happens on the server",
        choices=DeleteChoice.choices,
        widget=forms.RadioSelect,
        error_messages={"required": "Choose what happens on the server: nothing is removed without a choice."},
    )

    def __init__(self, *args: Any, environment: Environment, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.environment = environment
        self.fields["choice"].choices = [  # type: ignore[attr-defined]
            (DeleteChoice.DESTROYED, "It was destroyed: its Destroy job took down its containers"),
            (DeleteChoice.LEAVE_RUNNING, "Leave it running on the server, unwatched by the panel"),
        ]
