"""Forms of the accounts pages: login with lockout, API tokens."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from panel.accounts.choices import TokenScope
from panel.accounts.services import client_ip, login_is_locked, record_failed_login
from panel.validators import validate_name

LOCKED_MESSAGE = "Too many failed attempts; try again later."


class LockoutAuthenticationForm(AuthenticationForm):
    """Django's login form, refusing without checking the password once a name or address is locked out.

    Every refusal (wrong password, inactive account, locked out) is recorded as a security event; the
    lockout counts those events, so the form itself holds no state.
    """

    error_messages = {
        **AuthenticationForm.error_messages,
        "locked": LOCKED_MESSAGE,
    }

    def clean(self) -> dict[str, Any]:
        username = (self.cleaned_data.get("username") or "").strip()
        if username and self.request is not None:
            if login_is_locked(username=username, ip=client_ip(self.request)):
                record_failed_login(username=username, request=self.request, locked=True)
                raise ValidationError(self.error_messages["locked"], code="locked")
        try:
            return super().clean()
        except ValidationError:
            if username and self.request is not None:
                record_failed_login(username=username, request=self.request)
            raise


class ApiTokenForm(forms.Form):
    """A new API token: a name, a scope and a lifetime in days."""

    name = forms.CharField(max_length=63, validators=[validate_name])
    scope = forms.ChoiceField(choices=TokenScope.choices, initial=TokenScope.READ)
    days = forms.IntegerField(
        min_value=1,
        max_value=settings.API_TOKEN_MAX_DAYS,
        initial=settings.API_TOKEN_DEFAULT_DAYS,
        help_text=f"At most {settings.API_TOKEN_MAX_DAYS} days.",
    )
