"""HTML views of two-factor login: the code step of the login, enrolment, recovery codes, turning it off, and the
organization switch. The rules are in ``panel.accounts.two_factor``; these views only ask and show.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from panel.accounts import two_factor
from panel.accounts.choices import Action
from panel.accounts.context import start_in_organization
from panel.accounts.forms import TwoFactorCodeForm, TwoFactorDisableForm, TwoFactorEnrollForm
from panel.accounts.models import Organization
from panel.accounts.scoping import get_for_user
from panel.accounts.two_factor import InvalidCode, TwoFactorRequired

EXPIRED_MESSAGE = "Your login took too long; log in again."


def _recovery_codes_page(request: HttpRequest, codes: list[str], *, next_url: str, fresh: bool) -> HttpResponse:
    """The one response that shows recovery codes (only their hashes are stored)."""
    return render(
        request,
        "accounts/two_factor_recovery_codes.html",
        {"codes": codes, "next_url": next_url, "fresh": fresh},
    )


@never_cache
@require_http_methods(["GET", "POST"])
def two_factor_login(request: HttpRequest) -> HttpResponse:
    """The second step of a login: a code from the authenticator app, or a recovery code (once)."""
    pending = two_factor.pending_login(request)
    if pending is None:
        messages.info(request, EXPIRED_MESSAGE)
        return redirect("login")
    user, data = pending
    device = two_factor.confirmed_device(user)
    if device is None:
        return redirect("two_factor_enroll")
    form = TwoFactorCodeForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            method = two_factor.check_code(user=user, code=form.cleaned_data["code"], request=request, purpose="login")
        except InvalidCode as exc:
            form.add_error("code", str(exc))
        else:
            next_url = two_factor.complete_login(request, user, data, device)
            start_in_organization(request, user)
            if method == "recovery":
                left = two_factor.unused_recovery_codes(user)
                messages.warning(
                    request,
                    f"You logged in with a recovery code; {left} left. Each works once: generate new ones on the "
                    "Two-factor login page if you run short.",
                )
            return redirect(next_url)
    return render(request, "accounts/two_factor_code.html", {"form": form, "username": user.get_username()})


@never_cache
@require_http_methods(["GET", "POST"])
def two_factor_enroll(request: HttpRequest) -> HttpResponse:
    """Set up an authenticator: scan the QR code (or type the secret), confirm with a code, keep the recovery codes.

    Reached signed in (by choice, or sent here because an organization requires it) or right after the password,
    when an organization requires a second factor the user does not have yet: then confirming finishes the login.
    """
    pending = None if request.user.is_authenticated else two_factor.pending_login(request)
    if request.user.is_authenticated:
        user: Any = request.user
    elif pending is not None:
        user = pending[0]
    else:
        messages.info(request, EXPIRED_MESSAGE)
        return redirect("login")
    if two_factor.confirmed_device(user) is not None:
        if pending is not None:
            return redirect("two_factor_login")
        messages.info(request, "Two-factor login is already on.")
        return redirect("two_factor_settings")
    device = two_factor.start_enrollment(user)
    form = TwoFactorEnrollForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            codes = two_factor.confirm_enrollment(device=device, code=form.cleaned_data["code"], request=request)
        except InvalidCode as exc:
            form.add_error("code", str(exc))
        else:
            if pending is not None:
                next_url = two_factor.complete_login(request, user, pending[1], device)
                start_in_organization(request, user)
            else:
                two_factor.mark_verified(request, device)
                next_url = "/"
            messages.success(request, "Two-factor login is on.")
            return _recovery_codes_page(request, codes, next_url=next_url, fresh=True)
    uri = two_factor.otpauth_uri(device)
    context = {
        "form": form,
        "otpauth_uri": uri,
        # segno's own markup of a URI we built: no user input reaches it unescaped (names are URL-quoted).
        "qr_svg": mark_safe(two_factor.qr_svg(uri)),  # noqa: S308
        "secret": " ".join(two_factor.secret_base32(device)[i : i + 4] for i in range(0, 32, 4)),
        "required_by": list(two_factor.requiring_organizations(user)),
        "pending": pending is not None,
    }
    return render(request, "accounts/two_factor_enroll.html", context)


@never_cache
@require_http_methods(["GET"])
@login_required
def two_factor_settings(request: HttpRequest) -> HttpResponse:
    """Whether two-factor login is on, who requires it, recovery codes left; regenerate them or turn it off."""
    device = two_factor.confirmed_device(request.user)
    context = {
        "device": device,
        "required_by": list(two_factor.requiring_organizations(request.user)),
        "recovery_left": two_factor.unused_recovery_codes(request.user) if device else 0,
        "code_form": TwoFactorCodeForm(),
        "disable_form": TwoFactorDisableForm(),
    }
    return render(request, "accounts/two_factor_settings.html", context)


@never_cache
@require_POST
@login_required
def two_factor_recovery_codes(request: HttpRequest) -> HttpResponse:
    """New recovery codes, for a current code; shown in this one response, the old ones stop working."""
    if two_factor.confirmed_device(request.user) is None:
        return redirect("two_factor_settings")
    form = TwoFactorCodeForm(request.POST)
    if form.is_valid():
        try:
            codes = two_factor.regenerate_recovery_codes(
                user=request.user, code=form.cleaned_data["code"], request=request
            )
        except InvalidCode as exc:
            messages.error(request, str(exc))
        else:
            return _recovery_codes_page(request, codes, next_url="", fresh=False)
    else:
        messages.error(request, "Type a code from your authenticator app.")
    return redirect("two_factor_settings")


@require_POST
@login_required
def two_factor_disable(request: HttpRequest) -> HttpResponse:
    """Turn two-factor login off, with the password and a code; a required user is sent to enrol again."""
    if two_factor.confirmed_device(request.user) is None:
        return redirect("two_factor_settings")
    form = TwoFactorDisableForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Type your password and a code.")
        return redirect("two_factor_settings")
    try:
        two_factor.disable(
            user=request.user, password=form.cleaned_data["password"], code=form.cleaned_data["code"], request=request
        )
    except InvalidCode as exc:
        messages.error(request, str(exc))
        return redirect("two_factor_settings")
    if two_factor.two_factor_required(request.user):
        messages.warning(request, "Two-factor login is off; your organization requires it: set up a new authenticator.")
        return redirect("two_factor_enroll")
    messages.success(request, "Two-factor login is off.")
    return redirect("two_factor_settings")


@require_POST
@login_required
def organization_two_factor(request: HttpRequest, organization_id: int) -> HttpResponse:
    """Owners switch the organization's requirement of a second factor for its staff on or off."""
    organization = get_for_user(Organization, request.user, Action.ADMIN, pk=organization_id)
    required = request.POST.get("required") == "on"
    try:
        two_factor.set_organization_requirement(
            actor=request.user, organization=organization, required=required, request=request
        )
    except TwoFactorRequired as exc:
        messages.error(request, str(exc))
    except PermissionDenied:
        messages.error(request, "Only owners may change this.")
    else:
        if required:
            messages.success(
                request, f"{organization.name} now requires two-factor login of its staff (customers are not asked)."
            )
        else:
            messages.success(request, f"{organization.name} no longer requires two-factor login.")
    return redirect("organization_members", organization_id=organization.pk)
