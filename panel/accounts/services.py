"""Domain actions of tenancy: audit, login lockout, API tokens, first-run bootstrap, organizations, members and
invitations."""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db import models, transaction
from django.http import HttpRequest
from django.utils import timezone

from panel.accounts.choices import Action, Role, TokenScope
from panel.accounts.models import ApiToken, AuditEvent, Invitation, Membership, Organization

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "dp"


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.cache
def trusted_proxies() -> tuple[IPNetwork, ...]:
    """The networks of ``PANEL_TRUSTED_PROXIES`` (single addresses become /32 or /128); ``none`` trusts nobody.

    Parsed once, at start-up (``AccountsConfig.ready``), so a typo stops the panel instead of trusting nobody or
    everybody by accident.
    """
    networks: list[IPNetwork] = []
    for entry in settings.PANEL_TRUSTED_PROXIES:
        if entry.lower() == "none":
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"PANEL_TRUSTED_PROXIES holds {entry!r}, which is neither an IP address nor a network (CIDR)."
            ) from exc
    return tuple(networks)


def _is_trusted_proxy(address: IPAddress) -> bool:
    return any(address in network for network in trusted_proxies())


def _forwarded_address(value: str) -> IPAddress | None:
    """An address as proxies and ASGI servers write it: bare, ``v4:port`` or ``[v6]:port``; None if it is none."""
    value = value.strip()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else value
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; compare and record them as IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_ip(request: HttpRequest | None) -> str | None:
    """The address of the person behind a request: the one place that decides it (audit log, login lockout).

    ``X-Forwarded-For`` is believed only when the connecting peer is a trusted proxy (``PANEL_TRUSTED_PROXIES``):
    walking it from the right (each proxy appends the address it saw), trusted proxies are skipped and the first
    untrusted address is the client. A header sent by anyone else is ignored, so it cannot be spoofed.
    When every hop is trusted, the leftmost one is the client. An unreadable hop where the client should be gives
    None (unknown) rather than a guess.

    uvicorn (``--proxy-headers --forwarded-allow-ips``) applies the same rule before Django sees the request and
    puts its answer in ``REMOTE_ADDR``; that answer is then an untrusted address and is taken as it is, so the two
    layers agree as long as uvicorn trusts no more proxies than this setting does (docker-compose.yml and the
    launcher pass it the same list).
    """
    if request is None:
        return None
    peer = _forwarded_address(request.META.get("REMOTE_ADDR") or "")
    if peer is None:
        return None
    if not _is_trusted_proxy(peer):
        return str(peer)
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR") or ""
    client = peer
    for hop in reversed(forwarded.split(",") if forwarded.strip() else []):
        address = _forwarded_address(hop)
        if address is None:
            return None
        client = address
        if not _is_trusted_proxy(address):
            break
    return str(client)


def is_fully_authenticated(user: Any, session: Any) -> bool:
    """Whether a signed-in user's session passed every login step they owe (the second factor, when needed).

    For callers outside this app (websocket consumers); the rule is ``panel.accounts.two_factor``'s.
    """
    from panel.accounts.two_factor import is_fully_authenticated as passed_every_factor

    return passed_every_factor(user, session)


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


# Refused passwords and refused two-factor codes both count toward the lockout.
FAILED_LOGIN_ACTIONS = ("login.failed", "two_factor.failed")


def login_is_locked(*, username: str, ip: str | None) -> bool:
    """True after too many failed logins for this user name or from this address within the lockout window.

    A user name is locked after ``LOGIN_LOCKOUT_ATTEMPTS`` failures from anywhere; an address after four times as
    many, whatever names it tried. The address is the client's (``client_ip``), never a trusted proxy's, so a flood
    of made-up names locks out that address only, and other addresses and real users elsewhere log in as usual.
    """
    since = timezone.now() - timedelta(seconds=settings.LOGIN_LOCKOUT_SECONDS)
    failures = AuditEvent.objects.filter(action__in=FAILED_LOGIN_ACTIONS, created_at__gte=since)
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


# Organizations, members and invitations ------------------------------------------------------------------------------
#
# Who may do what (the views reach every object through ``scoping``; these functions check again):
#
# - Creating an organization: an owner of a *provider* (an organization managed by nobody) creates a customer
#   organization managed by it. The hierarchy stays two levels deep: a customer organization manages nothing, so
#   staff roles inside it never carry over anywhere else.
# - Renaming, members, invitations: ``Action.ADMIN`` on the organization, i.e. its owners and the owners of its
#   provider. The slug never changes (it names things on servers).
# - Roles: an administrator may grant any role in that organization, never more: a membership only ever concerns
#   one organization, so a customer organization's owner or operator has no role over the provider or its other
#   customers (structural, not a rule to forget). Granting owner or operator in a customer organization lets that
#   person change compose files and env vars of its environments, i.e. run code as root on their servers: the
#   pages default to ``customer`` there and say so.
# - An organization that has an owner always keeps at least one: the last owner can be neither removed nor demoted.

ROLE_RANK: dict[str, int] = {Role.CUSTOMER: 0, Role.VIEWER: 1, Role.OPERATOR: 2, Role.OWNER: 3}


class InvitationInvalid(Exception):
    """The invitation is unknown, expired, revoked or already used (the caller learns nothing more)."""


class LastOwner(Exception):
    """The change would leave an organization that has owners without any."""


def _require_admin(actor: Any, organization: Organization) -> None:
    from panel.accounts.scoping import organization_ids

    if organization.pk not in organization_ids(actor, Action.ADMIN):
        raise PermissionDenied("You do not administer this organization.")


def provider_organizations(actor: Any) -> models.QuerySet[Organization]:
    """Providers (organizations managed by nobody) the actor owns: where they may create customer organizations."""
    from panel.accounts.scoping import for_user

    return for_user(Organization, actor, Action.ADMIN).filter(managed_by__isnull=True)


def create_organization(
    *, actor: Any, name: str, slug: str, managed_by: Organization, request: HttpRequest | None = None
) -> Organization:
    """Create a customer organization managed by ``managed_by``, a provider the actor owns.

    Raises ``PermissionDenied`` otherwise, ``ValidationError`` for a bad or taken name or slug.
    """
    if not provider_organizations(actor).filter(pk=managed_by.pk).exists():
        raise PermissionDenied("Only an owner of a provider organization may create customer organizations.")
    organization = Organization(name=name, slug=slug, managed_by=managed_by)
    organization.full_clean()
    with transaction.atomic():
        organization.save()
        record(
            action="organization.created",
            actor=actor,
            obj=organization,
            request=request,
            detail={"name": name, "slug": slug, "managed_by": managed_by.pk},
        )
    return organization


def rename_organization(
    *, actor: Any, organization: Organization, name: str, request: HttpRequest | None = None
) -> Organization:
    """Give an organization the actor administers a new display name (its slug stays)."""
    _require_admin(actor, organization)
    old = organization.name
    organization.name = name
    organization.full_clean()
    with transaction.atomic():
        organization.save(update_fields=["name"])
        record(
            action="organization.renamed",
            actor=actor,
            obj=organization,
            request=request,
            detail={"from": old, "to": name},
        )
    return organization


def _lock_owners(organization: Organization) -> list[int]:
    """Lock the organization's row and return its owners' membership ids (serializes owner changes)."""
    Organization.objects.select_for_update().filter(pk=organization.pk).first()
    return list(
        Membership.objects.filter(organization=organization, role=Role.OWNER)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def change_role(*, actor: Any, membership: Membership, role: str, request: HttpRequest | None = None) -> Membership:
    """Give a member another role; the last owner cannot be demoted (not even by themself)."""
    role = Role(role)
    organization = membership.organization
    _require_admin(actor, organization)
    with transaction.atomic():
        owners = _lock_owners(organization)
        current = Membership.objects.select_for_update().get(pk=membership.pk)
        if current.role == role:
            return current
        if current.role == Role.OWNER and owners == [current.pk]:
            raise LastOwner(f"{current.user} is the last owner of {organization}; make someone else owner first.")
        old = current.role
        current.role = role
        current.save(update_fields=["role"])
        record(
            action="membership.role_changed",
            actor=actor,
            obj=current,
            request=request,
            detail={"user": current.user.get_username(), "from": old, "to": role},
        )
    return current


def remove_member(*, actor: Any, membership: Membership, request: HttpRequest | None = None) -> None:
    """Take a member out of an organization; never its last owner."""
    organization = membership.organization
    _require_admin(actor, organization)
    with transaction.atomic():
        owners = _lock_owners(organization)
        current = Membership.objects.select_for_update().filter(pk=membership.pk).first()
        if current is None:
            return
        if current.role == Role.OWNER and owners == [current.pk]:
            raise LastOwner(f"{current.user} is the last owner of {organization}; make someone else owner first.")
        record(
            action="membership.removed",
            actor=actor,
            obj=current,
            organization=organization,
            request=request,
            detail={"user": current.user.get_username(), "role": current.role},
        )
        current.delete()


def create_invitation(
    *, actor: Any, organization: Organization, email: str, role: str, request: HttpRequest | None = None
) -> tuple[Invitation, str]:
    """Invite someone by email and role; returns the invitation and its plain token (shown once, stored hashed).

    The panel sends no mail: the inviter passes the link on. It is valid for ``INVITATION_DAYS`` and only once.
    """
    _require_admin(actor, organization)
    token = secrets.token_urlsafe(32)
    invitation = Invitation(
        organization=organization,
        email=email,
        role=Role(role),
        token_hash=_hash_secret(token),
        created_by=actor,
        expires_at=timezone.now() + timedelta(days=settings.INVITATION_DAYS),
    )
    invitation.full_clean()
    with transaction.atomic():
        invitation.save()
        record(
            action="invitation.created",
            actor=actor,
            obj=invitation,
            request=request,
            detail={"email": email, "role": invitation.role, "expires_at": invitation.expires_at.isoformat()},
        )
    return invitation, token


def revoke_invitation(*, actor: Any, invitation: Invitation, request: HttpRequest | None = None) -> bool:
    """Revoke a pending invitation at once; False when it was no longer pending (accepted, revoked)."""
    _require_admin(actor, invitation.organization)
    now = timezone.now()
    with transaction.atomic():
        revoked = Invitation.objects.filter(pk=invitation.pk, accepted_at=None, revoked_at=None).update(revoked_at=now)
        if revoked:
            invitation.revoked_at = now
            record(action="invitation.revoked", actor=actor, obj=invitation, request=request)
    return bool(revoked)


def find_invitation(token: str) -> Invitation | None:
    """The invitation a token belongs to, usable or not; None for an unknown token."""
    if not token or len(token) > 200:
        return None
    return Invitation.objects.select_related("organization").filter(token_hash=_hash_secret(token)).first()


def usable_invitation(token: str, *, request: HttpRequest | None = None, actor: Any = None) -> Invitation:
    """The usable invitation of ``token``; otherwise a security event and ``InvitationInvalid``."""
    invitation = find_invitation(token)
    if invitation is None or not invitation.is_usable:
        record_invalid_invitation(invitation, request=request, actor=actor)
        raise InvitationInvalid
    return invitation


def record_invalid_invitation(invitation: Invitation | None, *, request: HttpRequest | None, actor: Any) -> None:
    """A security event for the use of an unknown, expired, revoked or already used invitation link."""
    record(
        action="invitation.invalid",
        actor=actor,
        obj=invitation,
        security=True,
        request=request,
        detail={"reason": invitation.status if invitation is not None else "unknown"},
    )


def accept_invitation(
    *,
    invitation: Invitation,
    user: Any = None,
    username: str = "",
    password: str = "",
    request: HttpRequest | None = None,
) -> Membership:
    """Accept an invitation into ``user``'s account, or into a new account (``username``/``password``).

    Single use: the invitation is claimed by one conditional ``UPDATE`` (not accepted, not revoked, not expired);
    a second use, or a concurrent one that loses the race, claims nothing and raises ``InvitationInvalid`` (and is
    recorded as a security event). The new account, the membership and the claim commit together or not at all.

    Already a member: the stronger of the two roles is kept. An invitation only ever adds access; lowering a role
    is an explicit change on the members page, never a side effect of a link.
    """
    membership, created_user = _claim_invitation(invitation, user=user, username=username, password=password)
    if membership is None:
        invitation.refresh_from_db()
        record_invalid_invitation(invitation, request=request, actor=user)
        raise InvitationInvalid
    record(
        action="invitation.accepted",
        actor=membership.user,
        obj=invitation,
        request=request,
        detail={
            "user": membership.user.get_username(),
            "role": invitation.role,
            "member_role": membership.role,
            "new_account": created_user,
        },
    )
    return membership


@transaction.atomic
def _claim_invitation(
    invitation: Invitation, *, user: Any, username: str, password: str
) -> tuple[Membership | None, bool]:
    now = timezone.now()
    usable = Invitation.objects.filter(pk=invitation.pk, accepted_at=None, revoked_at=None, expires_at__gt=now)
    if usable.update(accepted_at=now) != 1:
        return None, False
    created_user = user is None
    if user is None:
        user = get_user_model().objects.create_user(username=username, email=invitation.email, password=password)
    Invitation.objects.filter(pk=invitation.pk).update(accepted_by=user)
    invitation.accepted_at, invitation.accepted_by = now, user
    membership = (
        Membership.objects.select_for_update().filter(user=user, organization_id=invitation.organization_id).first()
    )
    if membership is None:
        membership = Membership.objects.create(
            user=user, organization_id=invitation.organization_id, role=invitation.role
        )
    elif ROLE_RANK[invitation.role] > ROLE_RANK[membership.role]:
        membership.role = invitation.role
        membership.save(update_fields=["role"])
    return membership, created_user
