"""Keep a signed-in session that still owes its second factor away from the panel.

Such a session exists only when the user came to need a second factor after it was signed in: an organization
switched the requirement on, or the user enrolled from another browser. (A fresh login is not signed in before the
code step: see ``panel.accounts.two_factor``.) The user is sent to enrol, when they have no authenticator, or logged
out, to sign in again with a code. The API refuses such a session itself (``TwoFactorSessionAuthentication``);
webhooks authenticate by signature.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import Resolver404, resolve

from panel.accounts import two_factor

# What a session that owes its second factor may still reach.
ENROLMENT_VIEWS = frozenset({"two_factor_enroll", "logout"})
OWN_AUTHENTICATION_PREFIXES = ("/api/", "/hooks/")


class TwoFactorMiddleware:
    """Send a signed-in user who owes a second factor to enrolment, or log out their unverified session."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if (
            user.is_authenticated
            and not request.path.startswith(OWN_AUTHENTICATION_PREFIXES)
            and not two_factor.is_fully_authenticated(user, request.session)
        ):
            if two_factor.confirmed_device(user) is not None:
                logout(request)
                messages.info(request, "Log in again with a code from your authenticator app.")
                return redirect("login")
            try:
                view_name = resolve(request.path_info).url_name
            except Resolver404:
                view_name = None
            if view_name not in ENROLMENT_VIEWS:
                messages.warning(
                    request, "Your organization requires two-factor login: set up an authenticator app to continue."
                )
                return redirect("two_factor_enroll")
        return self.get_response(request)
