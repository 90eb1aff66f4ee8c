"""Two-factor login: TOTP authenticators, recovery codes, the organization switch, and the half-done login.

Who needs a second factor: a user who enrolled one, and every staff member (owner, operator, viewer, directly or
through the provider) of an organization whose owner switched ``require_two_factor`` on. Customers are never forced
(they see status only) but may enroll.

The login is two steps. The password step does **not** log in a user who needs a second factor: it keeps their id
in the anonymous session (``PENDING_SESSION_KEY``, for ``TWO_FACTOR_LOGIN_SECONDS``), so until the code step (or,
for a required user without an authenticator, the enrolment) is done, the session is anonymous to every view, the
API and the websockets. Only then does ``complete_login`` call Django's ``login`` and mark the session verified
(django-otp's ``otp_device_id``).

A session that was signed in before its user needed a second factor (the switch went on later, or the user
enrolled in another browser) is caught by ``is_fully_authenticated``: the middleware, the API's session
authentication and the websocket consumers ask it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from binascii import unhexlify
from typing import Any
from urllib.parse import quote, urlencode

import django_otp
import segno
from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.contrib.sessions.backends.base import SessionBase
from django.db import models, transaction
from django.http import HttpRequest
from django.utils import timezone
from django_otp.oath import TOTP
from django_otp.util import random_hex

from panel.accounts.choices import Action
from panel.accounts.models import Membership, Organization, RecoveryCode, TotpDevice
from panel.accounts.services import _require_admin, client_ip, login_is_locked, record

TOTP_STEP = 30
TOTP_DIGITS = 6
# Accept the code of the previous and the next time step too (clock skew, a code typed as it changed).
TOTP_TOLERANCE = 1
RECOVERY_CODE_COUNT = 10
# 32 letters and digits without look-alikes (0/o, 1/l): 16 of them carry 80 bits.
RECOVERY_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
RECOVERY_CODE_LENGTH = 16

PENDING_SESSION_KEY = "panel_two_factor_pending"
VERIFIED_SESSION_KEY = django_otp.DEVICE_ID_SESSION_KEY


class InvalidCode(Exception):
    """The code is wrong, already used, or its user is locked out (the message says which, for people)."""


class TwoFactorRequired(Exception):
    """The change needs a second factor first (e.g. requiring it for others without having one)."""


# Who needs what -------------------------------------------------------------------------------------------------------


def confirmed_device(user: Any) -> TotpDevice | None:
    """The user's confirmed authenticator, or None."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return TotpDevice.objects.filter(user_id=user.pk, confirmed=True).first()


def requiring_organizations(user: Any) -> models.QuerySet[Organization]:
    """Organizations that require a second factor of ``user``: those with the switch on where the user is staff.

    Staff means a role that sees details (owner, operator, viewer), directly or through the provider; a
    customer's role does not count.
    """
    from panel.accounts.scoping import organization_ids

    return Organization.objects.filter(
        require_two_factor=True, pk__in=organization_ids(user, Action.VIEW_DETAILS)
    ).order_by("name")


def two_factor_required(user: Any) -> bool:
    """Whether an organization switch obliges the user to have a second factor."""
    return requiring_organizations(user).exists()


def two_factor_needed(user: Any) -> bool:
    """Whether logging in takes a second factor: the user has one, or an organization requires it."""
    return confirmed_device(user) is not None or two_factor_required(user)


def is_fully_authenticated(user: Any, session: SessionBase | dict[str, Any] | None) -> bool:
    """Whether a signed-in ``user`` with this ``session`` passed every factor they owe.

    True for a user who needs no second factor; otherwise the session must have been verified with the user's
    current authenticator (a login with a code or a recovery code, or the enrolment in this session). A user who
    is required to have one but has none is never fully authenticated. For websocket consumers: call it (through
    ``database_sync_to_async``) with ``scope["user"]`` and ``scope["session"]``, and treat False as anonymous.
    """
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    device = confirmed_device(user)
    if device is None:
        return not two_factor_required(user)
    return session is not None and session.get(VERIFIED_SESSION_KEY) == device.persistent_id


# Enrolment ------------------------------------------------------------------------------------------------------------


def start_enrollment(user: Any) -> TotpDevice:
    """The user's unconfirmed authenticator, created with a new random secret if there is none yet.

    The same secret is shown until it is confirmed (a reload keeps the QR code the user is scanning). Raises
    ``ValueError`` when the user already has a confirmed one.
    """
    device, _ = TotpDevice.objects.get_or_create(
        user=user, defaults={"name": "Authenticator app", "key": random_hex(20), "confirmed": False}
    )
    if device.confirmed:
        raise ValueError("Two-factor login is already on; turn it off first to set up another authenticator.")
    return device


def secret_base32(device: TotpDevice) -> str:
    """The secret as authenticator apps take it when typed in (base32, without padding)."""
    return base64.b32encode(unhexlify(device.key)).decode().rstrip("=")


def otpauth_uri(device: TotpDevice) -> str:
    """The ``otpauth://totp/...`` URI of the device (what the QR code holds)."""
    issuer = settings.TWO_FACTOR_ISSUER.replace(":", "")
    label = f"{issuer}:{device.user.get_username()}"
    params = urlencode(
        {"secret": secret_base32(device), "issuer": issuer, "algorithm": "SHA1", "digits": TOTP_DIGITS},
        quote_via=quote,
    )
    return f"otpauth://totp/{quote(label)}?{params}&period={TOTP_STEP}"


def qr_svg(uri: str) -> str:
    """The QR code of ``uri`` as inline SVG markup (presentation attributes only: the CSP allows no inline style)."""
    return str(segno.make(uri, error="m").svg_inline(scale=5, light="#fff", title="Scan with your authenticator app"))


def _totp_step(device: TotpDevice, code: str) -> int | None:
    """The time step whose code ``code`` is, within the tolerance and after the last accepted one; else None."""
    code = "".join(code.split())
    if len(code) != TOTP_DIGITS or not code.isascii() or not code.isdigit():
        return None
    totp = TOTP(unhexlify(device.key), step=TOTP_STEP, digits=TOTP_DIGITS)
    totp.time = time.time()
    now = totp.t()
    for step in range(now - TOTP_TOLERANCE, now + TOTP_TOLERANCE + 1):
        if step <= device.last_t:
            continue
        totp.drift = step - now
        if hmac.compare_digest(f"{totp.token():0{TOTP_DIGITS}d}", code):
            return step
    return None


def _accept_totp(device: TotpDevice, code: str) -> bool:
    """Check a code and consume its time step, so that neither it nor an earlier one works again."""
    step = _totp_step(device, code)
    if step is None:
        return False
    # Conditional: of two requests with the same code, one wins.
    if TotpDevice.objects.filter(pk=device.pk, last_t__lt=step).update(last_t=step) != 1:
        return False
    device.last_t = step
    return True


def _organizations_of(user: Any) -> list[Organization]:
    """Where an event about the user's own second factor belongs: each organization they are a direct member of."""
    return [m.organization for m in Membership.objects.filter(user_id=user.pk).select_related("organization")]


def _record_for_user(action: str, user: Any, request: HttpRequest | None, **detail: Any) -> None:
    """Record an event about a user's second factor in the audit log of each of their organizations."""
    organizations: list[Organization | None] = [*_organizations_of(user)] or [None]
    for organization in organizations:
        record(
            action=action,
            actor=user,
            organization=organization,
            security=True,
            request=request,
            detail={"user": user.get_username(), **detail},
        )


def confirm_enrollment(*, device: TotpDevice, code: str, request: HttpRequest | None = None) -> list[str]:
    """Confirm an authenticator with a code from it; returns the new recovery codes (plain, shown once).

    Raises ``InvalidCode`` for a wrong code.
    """
    if device.confirmed:
        raise ValueError("This authenticator is already confirmed.")
    if not _accept_totp(device, code):
        raise InvalidCode("That code is not right: check the time on your phone and type the current code.")
    with transaction.atomic():
        device.confirmed = True
        device.confirmed_at = timezone.now()
        device.save(update_fields=["confirmed", "confirmed_at"])
        codes = _replace_recovery_codes(device.user)
        _record_for_user("two_factor.enabled", device.user, request)
    return codes


# Recovery codes -------------------------------------------------------------------------------------------------------


def _normalize_recovery_code(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch not in " -\t")


def _hash_code(code: str) -> str:
    return hashlib.sha256(_normalize_recovery_code(code).encode()).hexdigest()


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, RECOVERY_CODE_LENGTH, 4))


def _replace_recovery_codes(user: Any) -> list[str]:
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    RecoveryCode.objects.filter(user_id=user.pk).delete()
    RecoveryCode.objects.bulk_create([RecoveryCode(user_id=user.pk, code_hash=_hash_code(code)) for code in codes])
    return codes


def unused_recovery_codes(user: Any) -> int:
    """How many of the user's recovery codes are left."""
    return RecoveryCode.objects.filter(user_id=user.pk, used_at__isnull=True).count()


def _use_recovery_code(user: Any, code: str) -> bool:
    normalized = _normalize_recovery_code(code)
    if len(normalized) != RECOVERY_CODE_LENGTH:
        return False
    used = RecoveryCode.objects.filter(user_id=user.pk, code_hash=_hash_code(normalized), used_at__isnull=True)
    return used.update(used_at=timezone.now()) == 1


def regenerate_recovery_codes(*, user: Any, code: str, request: HttpRequest | None = None) -> list[str]:
    """New recovery codes for a code from the authenticator (or a recovery code); the old ones stop working."""
    check_code(user=user, code=code, request=request, purpose="regenerate recovery codes")
    with transaction.atomic():
        codes = _replace_recovery_codes(user)
        _record_for_user("two_factor.recovery_codes_regenerated", user, request)
    return codes


# Checking a code ------------------------------------------------------------------------------------------------------

LOCKED_MESSAGE = "Too many failed attempts; try again later."


def record_failed_code(*, user: Any, request: HttpRequest | None, purpose: str) -> None:
    """A security event for a refused second factor; it counts toward the login lockout like a wrong password."""
    username = user.get_username()
    record(
        action="two_factor.failed",
        security=True,
        request=request,
        actor_name=username[:150],
        detail={"username": username.lower()[:150], "purpose": purpose},
    )


def check_code(*, user: Any, code: str, request: HttpRequest | None, purpose: str) -> str:
    """Check a second factor: a code from the user's authenticator, or one of their recovery codes (used up).

    Returns ``"totp"`` or ``"recovery"``. Raises ``InvalidCode`` when the user is locked out (without checking)
    or the code is wrong, already used or no longer valid; a wrong one is recorded and counts toward the lockout.
    """
    if login_is_locked(username=user.get_username(), ip=client_ip(request)):
        record(
            action="login.locked",
            security=True,
            request=request,
            actor_name=user.get_username()[:150],
            detail={"username": user.get_username().lower()[:150], "purpose": purpose},
        )
        raise InvalidCode(LOCKED_MESSAGE)
    device = confirmed_device(user)
    if device is not None and _accept_totp(device, code):
        return "totp"
    if device is not None and _use_recovery_code(user, code):
        _record_for_user(
            "two_factor.recovery_code_used", user, request, purpose=purpose, left=unused_recovery_codes(user)
        )
        return "recovery"
    record_failed_code(user=user, request=request, purpose=purpose)
    raise InvalidCode("That code is not right (a recovery code works only once).")


# Turning it off -------------------------------------------------------------------------------------------------------


def disable(*, user: Any, password: str, code: str, request: HttpRequest | None = None) -> None:
    """Turn two-factor login off: takes the password and a code (or a recovery code). Raises ``InvalidCode``.

    A user an organization requires it of is sent to enrol again right away (the middleware sees to it).
    """
    if not user.check_password(password):
        if login_is_locked(username=user.get_username(), ip=client_ip(request)):
            raise InvalidCode(LOCKED_MESSAGE)
        record_failed_code(user=user, request=request, purpose="disable (password)")
        raise InvalidCode("The password is not right.")
    check_code(user=user, code=code, request=request, purpose="disable")
    with transaction.atomic():
        TotpDevice.objects.filter(user_id=user.pk).delete()
        RecoveryCode.objects.filter(user_id=user.pk).delete()
        _record_for_user("two_factor.disabled", user, request)
    if request is not None:
        request.session.pop(VERIFIED_SESSION_KEY, None)


# The organization switch ----------------------------------------------------------------------------------------------


def set_organization_requirement(
    *, actor: Any, organization: Organization, required: bool, request: HttpRequest | None = None
) -> Organization:
    """Require (or stop requiring) a second factor of the organization's staff; owners of it or of its provider.

    Switching it on takes a second factor of the actor first, so that an owner does not lock themself into an
    enrolment they did not expect. Its staff without one are sent to enrol at their next request.
    """
    _require_admin(actor, organization)
    if required and confirmed_device(actor) is None:
        raise TwoFactorRequired("Turn on two-factor login for your own account first.")
    with transaction.atomic():
        changed = Organization.objects.filter(pk=organization.pk).exclude(require_two_factor=required)
        if changed.update(require_two_factor=required):
            record(
                action="organization.two_factor_required" if required else "organization.two_factor_optional",
                actor=actor,
                obj=organization,
                security=True,
                request=request,
                detail={"required": required},
            )
    organization.require_two_factor = required
    return organization


# The login in two steps -----------------------------------------------------------------------------------------------


def begin_login(request: HttpRequest, user: Any, *, next_url: str) -> None:
    """After a right password of a user who needs a second factor: remember them in the session, not logged in."""
    request.session.cycle_key()
    request.session[PENDING_SESSION_KEY] = {
        "user": user.pk,
        # The backend that checked the password (set by ``authenticate``), for the ``login`` after the code.
        "backend": user.backend,
        "since": time.time(),
        "next": next_url,
    }


def clear_pending(request: HttpRequest) -> None:
    """Forget a half-done login (a new password attempt starts over)."""
    request.session.pop(PENDING_SESSION_KEY, None)


def pending_login(request: HttpRequest) -> tuple[Any, dict[str, Any]] | None:
    """The user whose password was right and who still owes the second step, with the pending data; else None."""
    pending = request.session.get(PENDING_SESSION_KEY)
    if not isinstance(pending, dict):
        return None
    if time.time() - float(pending.get("since", 0)) > settings.TWO_FACTOR_LOGIN_SECONDS:
        clear_pending(request)
        return None
    user_id = pending.get("user")
    if not isinstance(user_id, int | str):
        clear_pending(request)
        return None
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        clear_pending(request)
        return None
    return user, pending


def complete_login(request: HttpRequest, user: Any, pending: dict[str, Any], device: TotpDevice) -> str:
    """Log the user in for real, the session verified with ``device``; returns where to go next."""
    clear_pending(request)
    login(request, user, backend=pending["backend"])
    mark_verified(request, device)
    return str(pending.get("next") or settings.LOGIN_REDIRECT_URL)


def mark_verified(request: HttpRequest, device: TotpDevice) -> None:
    """Remember in the session that it passed the second factor with ``device`` (django-otp's session key)."""
    request.session[VERIFIED_SESSION_KEY] = device.persistent_id
