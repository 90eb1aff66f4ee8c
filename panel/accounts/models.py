"""Organizations, memberships, invitations, the audit log, API tokens and second factors (TOTP, recovery codes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone
from django_otp.models import Device

from panel.accounts.choices import Role, TokenScope
from panel.crypto import EncryptedTextField
from panel.validators import validate_name, validate_slug


class Organization(models.Model):
    """A tenant: the hosting company itself, or one of its customers (``managed_by`` the provider)."""

    name = models.CharField(max_length=63, unique=True, validators=[validate_name])
    slug = models.CharField(max_length=63, unique=True, validators=[validate_slug])
    managed_by = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="managed_organizations",
        help_text="The provider whose staff operate this organization's projects.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    require_two_factor = models.BooleanField(
        default=False,
        help_text="Its staff (owner, operator, viewer, also through its provider) must log in with a second factor.",
    )
    terminal_enabled = models.BooleanField(
        default=True,
        help_text="Owners and operators may open a terminal (shell, psql, odoo shell) on its environments.",
    )

    scope_organization = "pk"

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's role in one organization."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    # Memberships are seen and changed only by those who administer the organization (members page, API).
    scope_organization = "organization"
    scope_min_action = "admin"

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organization"], name="one_membership_per_org")]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.organization}"


class AuditEvent(models.Model):
    """Who did what to which object; security events (refused host key, failed login, denied access) too."""

    organization = models.ForeignKey(Organization, null=True, blank=True, on_delete=models.CASCADE)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    is_security = models.BooleanField(default=False)
    ip = models.GenericIPAddressField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    scope_organization = "organization"
    scope_min_action = "admin"

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["action", "created_at"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name or '-'} {self.action} {self.object_repr}"


class ApiToken(models.Model):
    """An API token: only a SHA-256 of the secret is stored; it is scoped and expires."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=63, validators=[validate_name])
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    scope = models.CharField(max_length=8, choices=TokenScope.choices, default=TokenScope.READ)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_usable(self) -> bool:
        """Not revoked and not expired."""
        return self.revoked_at is None and self.expires_at > timezone.now()


class Invitation(models.Model):
    """A single-use link that gives its holder a role in an organization.

    Only a SHA-256 of the random token is stored; the plain token appears once, in the link shown to the inviter.
    An invitation is usable while it is neither accepted nor revoked nor expired; accepting it is one conditional
    ``UPDATE`` (see ``services.accept_invitation``), so a second use or a concurrent one finds nothing to claim.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    scope_organization = "organization"
    scope_min_action = "admin"

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.email} as {self.role}"

    @property
    def status(self) -> str:
        """pending, accepted, revoked or expired."""
        if self.accepted_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "pending"

    @property
    def is_usable(self) -> bool:
        """Neither accepted, revoked nor expired."""
        return self.status == "pending"


class TotpDevice(Device):  # type: ignore[misc]
    """A user's authenticator app: a TOTP secret (RFC 6238, 6 digits, 30 s), encrypted at rest.

    A django-otp device (``user``, ``name``, ``confirmed``), one per user. It is unconfirmed while its user
    enrolls and counts only once they entered a code from it. ``last_t`` is the time step of the last accepted code:
    a code is never accepted twice.
    """

    # Annotated: django-otp ships no type information, so mypy's Django plugin cannot see these fields itself.
    user: models.OneToOneField[Any, Any] = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="totp_device"
    )
    key = EncryptedTextField(help_text="The shared secret, hex-encoded (encrypted at rest).")
    last_t: models.BigIntegerField[int, int] = models.BigIntegerField(default=-1)
    created_at: models.DateTimeField[Any, datetime] = models.DateTimeField(default=timezone.now)
    confirmed_at: models.DateTimeField[Any, datetime | None] = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "TOTP device"

    def __str__(self) -> str:
        return f"authenticator of {self.user}"


class RecoveryCode(models.Model):
    """A single-use code that stands in for the authenticator; only a SHA-256 of it is stored.

    Codes carry 80 random bits, so a plain hash is as safe as for API tokens. Using one is a conditional
    ``UPDATE`` of ``used_at``: it works once, even for two requests at the same instant.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="recovery_codes")
    code_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "code_hash"])]

    def __str__(self) -> str:
        return f"recovery code of {self.user} ({'used' if self.used_at else 'unused'})"
