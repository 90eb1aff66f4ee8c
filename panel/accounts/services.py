"""Domain actions of tenancy: audit, login lockout, API tokens, first-run bootstrap."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import models, transaction
from django.http import HttpRequest
from django.utils import timezone

from panel.accounts.choices import Role, TokenScope
from panel.accounts.models import ApiToken, AuditEvent, Membership, Organization

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "dp"


def client_ip(request: HttpRequest | None) -> str | None:
    """The caller's address as the ASGI server saw it."""
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def record(
    *,
    action: str,
    actor: Any = None,
    obj: models.Model | None = None,
    organization: Organization | None = None,
    security: bool = False,
    request: HttpRequest | None = None,
    detail: dict[str, Any] | None = None,
    actor_name: str = "",
) -> AuditEvent:
    """Append one audit event. ``detail`` must never carry secrets."""
    if organization is None and obj is not None:
        organization = _organization_of(obj)
    if actor is not None and not getattr(actor, "is_authenticated", False):
        actor = None
    event = AuditEvent.objects.create(
        organization=organization,
        actor=actor,
        actor_name=actor_name or (actor.get_username() if actor is not None else ""),
        action=action,
        object_type=(obj._meta.model_name or "") if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        object_repr=str(obj)[:200] if obj is not None else "",
        is_security=security,
        ip=client_ip(request),
        detail=detail or {},
    )
    if security:
        logger.warning("security event %s on %s by %s", action, event.object_repr or "-", event.actor_name or "-")
    return event


def _organization_of(obj: models.Model) -> Organization | None:
    if isinstance(obj, Organization):
        return obj
    path = getattr(obj, "scope_organization", None)
    if not path:
        return None
    current: Any = obj
    for part in path.split("__"):
        current = getattr(current, part, None)
        if current is None:
            return None
    return current if isinstance(current, Organization) else None


def login_is_locked(*, username: str, ip: str | None) -> bool:
    """True after too many failed logins for this user name or this address within the lockout window."""
    since = timezone.now() - timedelta(seconds=settings.LOGIN_LOCKOUT_SECONDS)
    failures = AuditEvent.objects.filter(action="login.failed", created_at__gte=since)
    by_name = failures.filter(detail__username=username.lower()[:150]).count()
    by_ip = failures.filter(ip=ip).count() if ip else 0
    limit = settings.LOGIN_LOCKOUT_ATTEMPTS
    return by_name >= limit or by_ip >= limit * 4


def record_failed_login(*, username: str, request: HttpRequest, locked: bool = False) -> None:
    """A security event for a refused login (the password is never recorded)."""
    record(
        action="login.locked" if locked else "login.failed",
        security=True,
        request=request,
        actor_name=username[:150],
        detail={"username": username.lower()[:150]},
    )


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    *, user: Any, name: str, scope: str = TokenScope.READ, days: int | None = None
) -> tuple[ApiToken, str]:
    """Create an API token; the plain value is returned once and only its hash is stored."""
    days = min(days or settings.API_TOKEN_DEFAULT_DAYS, settings.API_TOKEN_MAX_DAYS)
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=prefix,
        key_hash=_hash_secret(secret),
        scope=TokenScope(scope),
        expires_at=timezone.now() + timedelta(days=days),
    )
    record(action="token.created", actor=user, detail={"token": prefix, "scope": scope, "days": days})
    return token, f"{TOKEN_PREFIX}_{prefix}_{secret}"


def authenticate_token(raw: str) -> ApiToken | None:
    """The usable token matching ``raw``, or None. Constant-time comparison of the hash."""
    parts = raw.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        return None
    token = ApiToken.objects.select_related("user").filter(prefix=parts[1][:16]).first()
    if token is None or not hmac.compare_digest(token.key_hash, _hash_secret(parts[2])):
        return None
    if not token.is_usable or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


def revoke_token(*, token: ApiToken, actor: Any) -> None:
    """Revoke a token at once."""
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    record(action="token.revoked", actor=actor, detail={"token": token.prefix})


@transaction.atomic
def bootstrap_admin(*, username: str = "admin", organization_name: str = "Hosting") -> tuple[Any, str] | None:
    """On a fresh install, create the first owner with a random password; None when users already exist.

    There is no default password and no sign-up page, so a fresh install cannot be claimed by whoever comes first.
    """
    user_model = get_user_model()
    if user_model.objects.exists():
        return None
    password = secrets.token_urlsafe(15)
    user = user_model.objects.create_superuser(username=username, email="", password=password)
    organization = Organization.objects.create(name=organization_name, slug=organization_name.lower())
    Membership.objects.create(user=user, organization=organization, role=Role.OWNER)
    record(action="install.bootstrapped", actor=user, obj=organization)
    return user, password
