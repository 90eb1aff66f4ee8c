"""DRF authentication: API tokens (``Authorization: Bearer dp_...``, scope enforced per request method), and the
browser's session once it passed its second factor."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication, get_authorization_header
from rest_framework.request import Request

from panel.accounts import two_factor
from panel.accounts.choices import TokenScope
from panel.accounts.services import authenticate_token

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ApiTokenAuthentication(BaseAuthentication):
    """Bearer tokens created on the *API tokens* page; read-scoped tokens may only read."""

    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() not in (self.keyword, b"token"):
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Invalid Authorization header.")
        try:
            raw = header[1].decode()
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed("Invalid token.") from exc
        token = authenticate_token(raw)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or expired token.")
        if request.method not in SAFE_METHODS and token.scope != TokenScope.WRITE:
            raise exceptions.PermissionDenied("This token is read-only.")
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


class TwoFactorSessionAuthentication(SessionAuthentication):
    """Django's session (with its CSRF check), but a session that owes its second factor is anonymous here.

    Tokens are not affected: a token is created from a fully signed-in session and stands on its own.
    """

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        result = super().authenticate(request)
        if result is None or not two_factor.is_fully_authenticated(result[0], request._request.session):
            return None
        return result
