"""Audit successful logins and logouts (failed ones are recorded by the login view with the lockout)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.dispatch import receiver

from panel.accounts.services import record


@receiver(user_logged_in)
def _logged_in(sender: Any, request: Any, user: Any, **_: Any) -> None:
    record(action="login.succeeded", actor=user, request=request)


@receiver(user_logged_out)
def _logged_out(sender: Any, request: Any, user: Any, **_: Any) -> None:
    if user is not None:
        record(action="logout", actor=user, request=request)
