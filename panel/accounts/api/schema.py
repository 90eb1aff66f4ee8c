"""OpenAPI description of the panel's bearer tokens and session (registered with drf-spectacular on import)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.authentication import SessionScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[misc]
    """``Authorization: Bearer dp_...``; read-scoped tokens may only use GET, HEAD and OPTIONS."""

    target_class = "panel.accounts.authentication.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token from POST /api/v1/tokens/ (read or write scope, expiring).",
        }


class TwoFactorSessionScheme(SessionScheme):  # type: ignore[misc]
    """The browser's session cookie, once the session passed its second factor."""

    target_class = "panel.accounts.authentication.TwoFactorSessionAuthentication"
